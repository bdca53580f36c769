import type { CommandContext } from '../context.js';
import type { Paths } from '../host/paths.js';
import { acquireLock, type LockHolder } from '../host/lock.js';
import { cacheFile, writeCache, type GroupSnapshot } from './cache.js';
import { clientsFor, readGroup } from './read.js';
import { settingsFromConfig } from './settings.js';
import { reconcileUsers, type UserSyncResult } from './users.js';

/**
 * `ssh-users sync` (root, periodic): read the group in full, store it with the resolved
 * settings as the key cache that ssh-keys answers from, and in per-user mode bring the
 * local accounts in line. Any IAM error stops it before anything changes: the old cache
 * stays (and ages into its stale window), and no account is created or removed.
 *
 * One sync at a time: two that overlap (the periodic one and one run by hand) would each
 * read /var/lib/zdt-agent/ssh-users.json, create or remove accounts, and write their own
 * records back, so an account one of them created could be lost from the records (and
 * never removed). A sync that finds another running waits up to `SYNC_LOCK_WAIT_MS`, then
 * does nothing: the next periodic run comes soon.
 */

/** Bound for the whole IAM read; a sync is not on a login's path, but must not hold the sync lock for long. */
const SYNC_READ_TIMEOUT_MS = 60_000;
/** How long a sync waits for one that is running (a sync normally takes a second or two). */
export const SYNC_LOCK_WAIT_MS = 30_000;

export function syncLockFile(paths: Paths): string {
  return paths.at('/run/zdt-agent/ssh-users.lock');
}

export interface SyncReport {
  ran: true;
  snapshot: GroupSnapshot;
  cacheFile: string;
  users: UserSyncResult | undefined;
}

/** Another sync held the lock for the whole wait; nothing was read or changed. */
export interface SyncSkipped {
  ran: false;
  holder: LockHolder;
}

export async function syncSsh(ctx: CommandContext, configArg: string | null, o: { lockWaitMs?: number } = {}): Promise<SyncReport | SyncSkipped> {
  const lockFile = syncLockFile(ctx.paths);
  const lock = await acquireLock(lockFile, { waitMs: o.lockWaitMs ?? SYNC_LOCK_WAIT_MS });
  if (!lock.release) {
    const { pid, since } = lock.holder;
    ctx.log.warn('another sync is running: this one did nothing', { pid, since: since?.toISOString() ?? 'unknown', lock: lockFile });
    return { ran: false, holder: lock.holder };
  }
  try {
    return await syncLocked(ctx, configArg);
  } finally {
    lock.release();
  }
}

async function syncLocked(ctx: CommandContext, configArg: string | null): Promise<SyncReport> {
  const base = settingsFromConfig(ctx.config, {}, ctx.paths.configFile);
  const clients = clientsFor(base, ctx.log);
  // Stored for the unprivileged reader, who may have no IMDS answer in time.
  const settings = { ...base, region: await clients.aws.region(), instanceId: base.ssh.roleArn ? (await clients.facts()).instanceId : undefined };
  const snapshot = await readGroup({ settings, paths: ctx.paths, log: ctx.log, signal: AbortSignal.timeout(SYNC_READ_TIMEOUT_MS), keysOf: 'all', clients });
  const file = cacheFile(ctx.paths);
  writeCache(file, { schema: 1, writtenAt: new Date().toISOString(), configArg, settings, snapshot });
  const keys = snapshot.members.reduce((n, m) => n + (m.keys?.length ?? 0), 0);
  ctx.log.info('key cache written', { file, group: settings.ssh.iamGroup, members: snapshot.members.length, keys });
  const users = settings.ssh.mode === 'per-user' ? await reconcileUsers({ snapshot, settings, paths: ctx.paths, exec: ctx.exec, log: ctx.log }) : undefined;
  return { ran: true, snapshot, cacheFile: file, users };
}
