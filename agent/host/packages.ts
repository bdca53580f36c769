import fs from 'node:fs';
import { AgentError } from '../errors.js';
import type { Exec } from './exec.js';
import type { Paths } from './paths.js';

/**
 * Packages through Alpine's apk. Which versions the package source offers comes from
 * `apk policy` (every version of every configured repository, as apk-tools 2 prints it);
 * what is installed comes from apk's own database file, read directly (no process).
 */

/** `1.31.4-r0` -> `1.31.4`. */
export function upstreamVersion(apkVersion: string): string {
  return apkVersion.replace(/-r\d+$/, '');
}

/** Parses `apk policy PKG...`: package -> versions offered (as apk prints them, e.g. 1.31.4-r0). */
export function parseApkPolicy(text: string): Map<string, string[]> {
  const out = new Map<string, string[]>();
  let current: string[] | undefined;
  for (const line of text.split('\n')) {
    const head = /^(\S+) policy:\s*$/.exec(line);
    if (head) {
      current = [];
      out.set(head[1]!, current);
      continue;
    }
    const version = /^ {2}(\S+):\s*$/.exec(line);
    if (version && current) current.push(version[1]!);
  }
  return out;
}

export async function offeredVersions(exec: Exec, packages: readonly string[]): Promise<Map<string, string[]>> {
  const r = await exec('apk', ['policy', ...packages], { timeoutMs: 120_000, hint: 'check /etc/apk/repositories and the network' });
  return parseApkPolicy(r.stdout);
}

/**
 * The installed version of each package from apk's database (`P:` name, `V:` version
 * blocks); `undefined` when the system has no apk database.
 */
export function installedVersions(paths: Paths): Map<string, string> | undefined {
  let text: string;
  try {
    text = fs.readFileSync(paths.at('/lib/apk/db/installed'), 'utf8');
  } catch {
    return undefined;
  }
  const out = new Map<string, string>();
  for (const block of text.split('\n\n')) {
    const name = /^P:(.+)$/m.exec(block)?.[1];
    const version = /^V:(.+)$/m.exec(block)?.[1];
    if (name && version) out.set(name, version);
  }
  return out;
}

export async function installExact(exec: Exec, pkgs: ReadonlyArray<{ name: string; version: string }>): Promise<void> {
  if (pkgs.length === 0) return;
  await exec('apk', ['add', ...pkgs.map((p) => `${p.name}=${p.version}`)], {
    timeoutMs: 600_000,
    hint: 'check that the package repository offers these exact versions (apk policy)',
  });
}

export class PackageVersionMissing extends AgentError {
  constructor(pkg: string, version: string, offered: readonly string[]) {
    super('KubernetesVersionNotOffered', `the package source offers no ${pkg} ${version} (offered: ${offered.join(', ') || 'none'})`, {
      hint: 'add the repository that carries this Kubernetes version to /etc/apk/repositories, or change cluster.kubernetesVersion',
    });
  }
}
