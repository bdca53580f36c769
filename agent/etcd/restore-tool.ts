import fs from 'node:fs';
import path from 'node:path';
import { AgentError } from '../errors.js';
import type { Exec } from '../host/exec.js';

/**
 * The program that turns a snapshot into a data dir, chosen by the version it reports (never
 * by running a restore and falling back):
 *
 * - `etcdutl snapshot restore` when etcdutl is on PATH (it ships with etcd 3.5 and later);
 * - `etcdctl snapshot restore` otherwise, which etcd 3.4 has, 3.5 deprecated and 3.6 removed:
 *   an etcdctl of 3.6 or later without etcdutl is `EtcdRestoreToolMissing`.
 *
 * `--bump-revision N --mark-compacted` (etcd-io/etcd#16029; 3.5.10 and later, both tools)
 * move the restored revision up by N and mark it compacted, so that every client holding a
 * revision of the lost future (Kubernetes informers hold resourceVersions) is answered
 * "compacted" (the API server's `410 Gone`) and relists, instead of waiting for revisions that
 * will come back with other contents. Older tools cannot: the restore goes on without, with a
 * warning (docs/etcd-backup.md).
 */

export interface RestoreTool {
  file: 'etcdutl' | 'etcdctl';
  /** The version it reports, e.g. 3.6.5. */
  version: string;
  /** It takes --bump-revision and --mark-compacted. */
  bumpsRevision: boolean;
}

/** The first release with --bump-revision and --mark-compacted (etcd CHANGELOG-3.5, PR #16165). */
const BUMP_SINCE: readonly number[] = [3, 5, 10];
/** etcdctl lost `snapshot restore` here. */
const ETCDCTL_RESTORE_UNTIL: readonly number[] = [3, 6, 0];

/** `etcdutl version: 3.6.5` / `etcdctl version: 3.4.23` (first line of `<tool> version`). */
export function parseToolVersion(text: string): string | undefined {
  return /^(?:etcdutl|etcdctl) version: v?(\d+\.\d+\.\d+)/m.exec(text)?.[1];
}

function atLeast(version: string, min: readonly number[]): boolean {
  const v = version.split('.').map(Number);
  for (let i = 0; i < min.length; i++) {
    if ((v[i] ?? 0) !== min[i]) return (v[i] ?? 0) > min[i]!;
  }
  return true;
}

/** An executable `name` in a directory of PATH (the PATH the agent's commands run with). */
export function onPath(name: string, pathVar = process.env.PATH ?? ''): boolean {
  return pathVar
    .split(path.delimiter)
    .filter(Boolean)
    .some((dir) => {
      try {
        fs.accessSync(path.join(dir, name), fs.constants.X_OK);
        return true;
      } catch {
        return false;
      }
    });
}

async function reportedVersion(exec: Exec, file: RestoreTool['file']): Promise<string> {
  const r = await exec(file, ['version'], { timeoutMs: 10_000, hint: `check the ${file} installation` });
  const version = parseToolVersion(r.stdout);
  if (!version) throw new AgentError('EtcdToolVersionUnknown', `${file} version printed no version: ${r.stdout.slice(0, 200)}`, { hint: `check the ${file} installation` });
  return version;
}

export async function chooseRestoreTool(exec: Exec, hasEtcdutl = onPath('etcdutl')): Promise<RestoreTool> {
  const file = hasEtcdutl ? 'etcdutl' : 'etcdctl';
  const version = await reportedVersion(exec, file);
  if (file === 'etcdctl' && atLeast(version, ETCDCTL_RESTORE_UNTIL)) {
    throw new AgentError('EtcdRestoreToolMissing', `etcdctl ${version} has no 'snapshot restore' (removed in etcd 3.6) and etcdutl is not on PATH`, {
      hint: 'install etcdutl of the etcd release the cluster runs (etcd 3.5 and later ship it beside etcdctl)',
    });
  }
  return { file, version, bumpsRevision: atLeast(version, BUMP_SINCE) };
}

/** The arguments of `<tool> snapshot restore`; the bump only when the tool takes it and it is not 0. */
export function restoreArgs(
  tool: RestoreTool,
  o: { snapshot: string; dataDir: string; name: string; peerUrl: string; initialCluster: string; clusterToken: string; revisionBump: number },
): string[] {
  return [
    'snapshot',
    'restore',
    o.snapshot,
    `--data-dir=${o.dataDir}`,
    `--name=${o.name}`,
    `--initial-advertise-peer-urls=${o.peerUrl}`,
    `--initial-cluster=${o.initialCluster}`,
    `--initial-cluster-token=${o.clusterToken}`,
    ...(tool.bumpsRevision && o.revisionBump > 0 ? [`--bump-revision=${o.revisionBump}`, '--mark-compacted'] : []),
  ];
}
