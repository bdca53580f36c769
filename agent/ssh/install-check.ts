import fs from 'node:fs';
import path from 'node:path';
import type { Paths } from '../host/paths.js';
import { isSshKeysUsage, parseSshKeysArgv } from './warm.js';

/**
 * Checks for `zdt-agent plan` on a bastion: is sshd really going to run our ssh-keys, and will
 * it agree to? Two ways a bastion silently ends up without IAM logins:
 *
 * - sshd takes the FIRST value it reads for most keywords, AuthorizedKeysCommand included,
 *   and an `Include` (Debian and Alpine include sshd_config.d/*.conf at the top) is read where
 *   it stands. A drop-in sorted before ours (01-zdt-agent.conf), or a line in sshd_config above
 *   the Include, wins; without the Include our drop-in is not read at all.
 * - sshd refuses to run the command unless the file and every directory up to / (after
 *   resolving symlinks) is owned by root and not writable by group or others.
 */

export interface InstallCheck {
  name: string;
  ok: boolean;
  detail: string;
}

interface Directive {
  keyword: string;
  args: string[];
  file: string;
  line: number;
  inMatch: boolean;
}

const MAX_INCLUDE_DEPTH = 16;

/** Where the Alpine package installs the drop-in (alpine/sshd_config.d/01-zdt-agent.conf). */
export const SSHD_DROP_IN = '/etc/ssh/sshd_config.d/01-zdt-agent.conf';
const SSHD_CONFIG = '/etc/ssh/sshd_config';

interface SshdConfig {
  directives: Directive[];
  /** The files read, in order (node paths). */
  files: string[];
  /** Files that could not be read: node path -> error code. */
  unreadable: Map<string, string>;
}

/** The directives of sshd_config in the order sshd reads them, Includes expanded. */
export function readSshdConfig(paths: Paths, file = SSHD_CONFIG): Directive[] {
  return readSshdConfigFiles(paths, file).directives;
}

function readSshdConfigFiles(paths: Paths, file: string): SshdConfig {
  const out: Directive[] = [];
  const files: string[] = [];
  const unreadable = new Map<string, string>();
  const read = (nodeFile: string, depth: number, inMatch: boolean) => {
    if (depth > MAX_INCLUDE_DEPTH) return;
    let text: string;
    try {
      text = fs.readFileSync(paths.at(nodeFile), 'utf8');
    } catch (err) {
      unreadable.set(nodeFile, (err as NodeJS.ErrnoException).code ?? (err as Error).message);
      return;
    }
    files.push(nodeFile);
    let match = inMatch;
    text.split('\n').forEach((raw, i) => {
      const line = raw.trim();
      if (!line || line.startsWith('#')) return;
      const m = /^(\S+?)(?:\s*=\s*|\s+)(.*)$/.exec(line);
      const keyword = (m?.[1] ?? line).toLowerCase();
      const args = splitArgs(m?.[2] ?? '');
      if (keyword === 'match') {
        match = !(args.length === 1 && args[0]?.toLowerCase() === 'all');
        return;
      }
      if (keyword === 'include') {
        for (const pattern of args) for (const f of expandInclude(paths, pattern)) read(f, depth + 1, match);
        return;
      }
      out.push({ keyword, args, file: nodeFile, line: i + 1, inMatch: match });
    });
  };
  read(file, 0, false);
  return { directives: out, files, unreadable };
}

function splitArgs(s: string): string[] {
  const args: string[] = [];
  for (const m of s.matchAll(/"([^"]*)"|(\S+)/g)) args.push((m[1] ?? m[2]) as string);
  return args;
}

/** sshd's Include: relative to /etc/ssh, glob(3) with `*` and `?` in the last component, sorted. */
function expandInclude(paths: Paths, pattern: string): string[] {
  const abs = path.isAbsolute(pattern) ? pattern : path.join('/etc/ssh', pattern);
  const dir = path.dirname(abs);
  const base = path.basename(abs);
  if (!/[*?[]/.test(base)) return [abs];
  const re = new RegExp(`^${base.replace(/[.+^${}()|\\]/g, '\\$&').replace(/\*/g, '[^/]*').replace(/\?/g, '[^/]')}$`);
  let names: string[];
  try {
    names = fs.readdirSync(paths.at(dir));
  } catch {
    return [];
  }
  return names
    .filter((n) => re.test(n) && !n.startsWith('.'))
    .sort()
    .map((n) => path.join(dir, n));
}

/** Every component of `nodePath` (symlinks resolved, as sshd does) is root's and not group/world-writable. */
export function unsafePathComponents(paths: Paths, nodePath: string): string[] {
  let real: string;
  try {
    real = fs.realpathSync(paths.at(nodePath));
  } catch (err) {
    return [`${nodePath}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`];
  }
  const problems: string[] = [];
  // Below the root prefix only: a test root's own parents (/tmp) are not the node's.
  const stop = paths.root === '/' ? '/' : paths.root;
  for (let p = real; ; p = path.dirname(p)) {
    const st = fs.statSync(p);
    const shown = paths.root === '/' ? p : `/${path.relative(paths.root, p)}`;
    if (st.uid !== 0) problems.push(`${shown} is owned by uid ${st.uid}, not root`);
    if (st.mode & 0o022) problems.push(`${shown} has mode ${(st.mode & 0o7777).toString(8)} (group or others may write)`);
    if (p === stop || p === path.dirname(p)) break;
  }
  return problems;
}

export function checkSshdInstall(paths: Paths, o: { sshdConfig?: string } = {}): InstallCheck[] {
  const main = o.sshdConfig ?? SSHD_CONFIG;
  const { directives, files, unreadable } = readSshdConfigFiles(paths, main);
  const first = (keyword: string) => directives.find((d) => d.keyword === keyword && !d.inMatch);
  const where = (d: Directive) => `${d.file}:${d.line}`;
  const checks: InstallCheck[] = [];

  if (unreadable.has(main)) checks.push({ name: 'sshd_config readable', ok: false, detail: `${main}: ${unreadable.get(main)}` });
  // The package's drop-in counts only where sshd_config Includes it.
  if (!files.includes(SSHD_DROP_IN) && fs.existsSync(paths.at(SSHD_DROP_IN))) {
    checks.push({
      name: 'sshd reads the zdt-agent drop-in',
      ok: false,
      detail: `${SSHD_DROP_IN} is installed but ${main} does not include it: add 'Include /etc/ssh/sshd_config.d/*.conf' near the top of ${main}`,
    });
  }

  const cmd = first('authorizedkeyscommand');
  // The command line as main.ts reads it: global options, then `ssh-keys %u %f`.
  const parsed = cmd === undefined ? undefined : parseSshKeysArgv(cmd.args.slice(1));
  const ours = cmd !== undefined && /(^|\/)zdt-agent$/.test(cmd.args[0] ?? '') && parsed !== undefined;
  const later = directives.filter((d) => d.keyword === 'authorizedkeyscommand' && d !== cmd);
  checks.push({
    name: 'sshd runs zdt-agent ssh-keys',
    ok: ours,
    detail: !cmd
      ? 'no AuthorizedKeysCommand in sshd_config or its includes: install the zdt-agent sshd drop-in'
      : ours
        ? `${where(cmd)}: ${cmd.args.join(' ')}${later.length ? ` (later ones are ignored by sshd: ${later.map(where).join(', ')})` : ''}`
        : `sshd uses the first AuthorizedKeysCommand it reads, ${where(cmd)}: ${cmd.args.join(' ')}; remove it, or have ${SSHD_DROP_IN} read before it (drop-ins are read in name order where sshd_config Includes them)`,
  });
  if (cmd && ours) {
    if (parsed && isSshKeysUsage(parsed)) {
      checks.push({ name: 'ssh-keys arguments', ok: false, detail: `${where(cmd)}: ${parsed.usage}` });
    } else {
      const given = [parsed?.user, parsed?.fingerprint];
      const missing = ['%u', '%f'].filter((t) => !given.includes(t));
      if (missing.length > 0) checks.push({ name: 'ssh-keys arguments', ok: false, detail: `${where(cmd)} lacks ${missing.join(' and ')} (use 'ssh-keys %u %f')` });
    }
    const problems = unsafePathComponents(paths, cmd.args[0] as string);
    checks.push({
      name: 'sshd accepts the command path',
      ok: problems.length === 0,
      detail: problems.length === 0 ? `${cmd.args[0]} and its directories are root's and not group/world-writable` : `sshd will refuse it: ${problems.join('; ')}`,
    });
  }
  const inMatch = directives.filter((d) => d.keyword === 'authorizedkeyscommand' && d.inMatch);
  if (inMatch.length > 0) {
    checks.push({ name: 'no AuthorizedKeysCommand in Match blocks', ok: false, detail: `${inMatch.map(where).join(', ')}: a Match block changes the command for some logins` });
  }

  const user = first('authorizedkeyscommanduser');
  checks.push({
    name: 'AuthorizedKeysCommandUser is unprivileged',
    ok: user !== undefined && user.args[0] !== 'root' && user.args[0] !== undefined,
    detail: !user ? 'not set: sshd will not run the command' : `${where(user)}: ${user.args[0]}${user.args[0] === 'root' ? ' (must not be root)' : ''}`,
  });
  return checks;
}

/** For `zdt-agent plan` on a bastion: one line per check, as the phase tables print. */
export function formatInstallChecks(checks: readonly InstallCheck[]): string {
  return ['bastion checks:', ...checks.map((c) => `  ${c.ok ? 'ok  ' : 'FAIL'}  ${c.name}: ${c.detail}`)].join('\n');
}
