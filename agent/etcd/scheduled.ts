import { takeBackup, type BackupResult } from './backup.js';
import { EtcdGateway, localEtcdEndpoint, type EtcdMember, type EtcdStatus } from './gateway.js';
import type { EtcdContext } from './restore.js';
import { applyRetention } from './retention.js';
import { backupLocation } from './store.js';

/**
 * `zdt-agent etcd backup`, run hourly on every controller: only the etcd leader (or the
 * single member) backs up, so a cluster writes one backup an hour; then retention.
 */

export type ScheduledOutcome =
  | { result: 'skipped'; reason: string }
  | { result: 'done'; backup: BackupResult; deleted: string[]; retentionError?: string | undefined };

export async function scheduledBackup(ctx: EtcdContext, o: { instanceId: string; signal?: AbortSignal | undefined; now?: Date }): Promise<ScheduledOutcome> {
  const gateway = new EtcdGateway(localEtcdEndpoint(ctx));
  let etcd: { status: EtcdStatus; members: EtcdMember[] };
  try {
    const [status, members] = await Promise.all([gateway.status(o.signal), gateway.members(o.signal)]);
    etcd = { status, members };
    const voters = members.filter((m) => !m.isLearner);
    if (voters.length > 1 && status.leaderId !== status.memberId) {
      const leader = members.find((m) => m.id === status.leaderId);
      return { result: 'skipped', reason: `this member is not the etcd leader (${leader?.name ?? status.leaderId} is); the leader backs up` };
    }
  } finally {
    gateway.close();
  }
  const backup = await takeBackup({ ctx, instanceId: o.instanceId, kind: 'hourly', signal: o.signal, now: o.now, etcd });
  const b = ctx.config.etcd!.backup;
  try {
    const r = await applyRetention({ s3: await ctx.aws.s3(), loc: backupLocation(ctx.config), policy: b.retention, protect: backup.key, log: ctx.log, signal: o.signal });
    return { result: 'done', backup, deleted: r.deleted };
  } catch (err) {
    // The backup is safe; a failed cleanup is reported and retried next hour.
    ctx.log.warn('retention failed', { err: (err as Error).message });
    return { result: 'done', backup, deleted: [], retentionError: (err as Error).message };
  }
}
