import type { CommandContext } from '../context.js';
import { cacheFile, writeCache, type GroupSnapshot } from './cache.js';
import { clientsFor, readGroup } from './read.js';
import { settingsFromConfig } from './settings.js';
import { reconcileUsers, type UserSyncResult } from './users.js';

/**
 * `ssh-users sync` (root, periodic): read the group in full, store it with the resolved
 * settings as the key cache that ssh-keys answers from, and in per-user mode bring the
 * local accounts in line. Any IAM error stops it before anything changes: the old cache
 * stays (and ages into its stale window), and no account is created or removed.
 */

/** Bound for the whole IAM read; a sync is not on a login's path, but must not pile up under cron. */
const SYNC_READ_TIMEOUT_MS = 60_000;

export interface SyncReport {
  snapshot: GroupSnapshot;
  cacheFile: string;
  users: UserSyncResult | undefined;
}

export async function syncSsh(ctx: CommandContext, configArg: string | null): Promise<SyncReport> {
  const base = settingsFromConfig(ctx.config);
  const clients = clientsFor(base, ctx.log);
  // Stored for the unprivileged reader, who may have no IMDS answer in time.
  const settings = { ...base, region: await clients.aws.region(), instanceId: base.ssh.roleArn ? (await clients.facts()).instanceId : undefined };
  const snapshot = await readGroup({ settings, paths: ctx.paths, log: ctx.log, signal: AbortSignal.timeout(SYNC_READ_TIMEOUT_MS), keysOf: 'all', clients });
  const file = cacheFile(ctx.paths);
  writeCache(file, { schema: 1, writtenAt: new Date().toISOString(), configArg, settings, snapshot });
  const keys = snapshot.members.reduce((n, m) => n + (m.keys?.length ?? 0), 0);
  ctx.log.info('key cache written', { file, group: settings.ssh.iamGroup, members: snapshot.members.length, keys });
  const users = settings.ssh.mode === 'per-user' ? await reconcileUsers({ snapshot, settings, paths: ctx.paths, exec: ctx.exec, log: ctx.log }) : undefined;
  return { snapshot, cacheFile: file, users };
}
