import fs from 'node:fs';
import path from 'node:path';
import { writeFileAtomic } from '../host/atomic.js';
import type { Paths } from '../host/paths.js';
import type { PublicKey } from './keys.js';
import type { SshSettings } from './settings.js';

/**
 * The key cache: the group's members and their checked keys, plus the ssh settings the writer
 * resolved, so that `ssh-keys` answers from one small file without reading the config sources
 * (some of which only root may read) or loading the AWS SDK.
 *
 * Root writes it (`ssh-users sync`, or `ssh-keys` run as root on a miss); sshd's unprivileged
 * AuthorizedKeysCommandUser reads it. Whoever can replace this file decides who logs in, so a
 * reader refuses it unless it is a regular file (not a symlink, not a FIFO) owned by root
 * and not writable by group or others, in a directory that is also root's alone.
 */

export const CACHE_SCHEMA = 1;
const MAX_BYTES = 8 * 1024 * 1024;
/** A cache written up to this far in the future (clock steps) still counts as current. */
const CLOCK_SKEW_MS = 5_000;

export interface Member {
  iamUser: string;
  /** Active, checked keys; undefined when not fetched (a partial snapshot of the cold path). */
  keys?: PublicKey[] | undefined;
}

export interface GroupSnapshot {
  group: string;
  /** The role assumed to read the group (another account), or null for the instance's own. */
  roleArn: string | null;
  /** When IAM was read (epoch ms). */
  fetchedAt: number;
  members: Member[];
}

export interface KeyCache {
  schema: typeof CACHE_SCHEMA;
  writtenAt: string;
  /** The --config file the writer read (absolute path), or null: readers given another one resolve the config themselves. */
  configArg: string | null;
  settings: SshSettings;
  snapshot: GroupSnapshot;
}

export function cacheFile(paths: Paths): string {
  return paths.at('/var/cache/zdt-agent/ssh-keys.json');
}

export type CacheRead = { cache: KeyCache; refused?: undefined } | { cache?: undefined; refused: string };

/** Read the cache, or say why it is not used ("missing" is the quiet case). Never throws. */
export function readCache(file: string, expectedOwner = 0): CacheRead {
  let fd: number;
  try {
    // O_NOFOLLOW: a symlink fails with ELOOP. O_NONBLOCK: a FIFO planted here must not hang us.
    fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW | fs.constants.O_NONBLOCK);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return { refused: 'missing' };
    if (code === 'ELOOP') return { refused: 'it is a symlink' };
    return { refused: `cannot open it (${code ?? (err as Error).message})` };
  }
  try {
    const st = fs.fstatSync(fd);
    const problem = ownershipProblem(st, expectedOwner, 'file');
    if (problem) return { refused: problem };
    const dir = path.dirname(file);
    const dst = fs.lstatSync(dir);
    const dirProblem = dst.isDirectory() ? ownershipProblem(dst, expectedOwner, 'directory') : `${dir} is not a directory`;
    if (dirProblem) return { refused: dirProblem };
    if (st.size > MAX_BYTES) return { refused: `it is larger than ${MAX_BYTES} bytes` };
    const text = fs.readFileSync(fd, 'utf8');
    const parsed = parseCache(text);
    return parsed ? { cache: parsed } : { refused: 'its content is not a key cache of this version' };
  } catch (err) {
    return { refused: `cannot read it (${(err as Error).message})` };
  } finally {
    fs.closeSync(fd);
  }
}

function ownershipProblem(st: fs.Stats, owner: number, what: 'file' | 'directory'): string | undefined {
  if (what === 'file' && !st.isFile()) return 'it is not a regular file';
  if (st.uid !== owner) return `its ${what === 'file' ? '' : 'directory '}owner is uid ${st.uid}, not ${owner}`;
  if (st.mode & 0o022) return `its ${what === 'file' ? '' : 'directory '}mode ${(st.mode & 0o7777).toString(8)} lets group or others write`;
  return undefined;
}

function parseCache(text: string): KeyCache | undefined {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    return undefined;
  }
  const c = v as Partial<KeyCache> | null;
  if (!c || c.schema !== CACHE_SCHEMA || typeof c.settings?.ssh?.iamGroup !== 'string') return undefined;
  const s = c.snapshot;
  if (!s || typeof s.group !== 'string' || typeof s.fetchedAt !== 'number' || !Array.isArray(s.members)) return undefined;
  for (const m of s.members) {
    if (typeof m?.iamUser !== 'string' || (m.keys !== undefined && !Array.isArray(m.keys))) return undefined;
  }
  return c as KeyCache;
}

/** Written by root only: atomic, 0644, in a 0755 directory. */
export function writeCache(file: string, cache: KeyCache): void {
  const dir = path.dirname(file);
  fs.mkdirSync(dir, { recursive: true, mode: 0o755 });
  writeFileAtomic(file, `${JSON.stringify(cache)}\n`, 0o644);
}

/** Does this snapshot answer for these settings (same group, same account)? */
export function snapshotMatches(s: GroupSnapshot, settings: SshSettings): boolean {
  return s.group === settings.ssh.iamGroup && s.roleArn === (settings.ssh.roleArn ?? null);
}

export type Freshness = 'fresh' | 'stale' | 'expired';

/**
 * fresh: younger than ssh.cacheTtl. stale: older, but by at most ssh.staleMax seconds; served
 * only when IAM cannot be read. expired: never served.
 */
export function freshness(s: GroupSnapshot, settings: SshSettings, now: number): Freshness {
  const age = now - s.fetchedAt;
  if (age < -CLOCK_SKEW_MS) return 'expired';
  const ttl = settings.ssh.cacheTtl * 1000;
  if (age < ttl) return 'fresh';
  return settings.ssh.staleMax > 0 && age < ttl + settings.ssh.staleMax * 1000 ? 'stale' : 'expired';
}
