import type { S3Client } from '@aws-sdk/client-s3';
import type { Logger } from '../log/logger.js';
import { listBackups, type BackupLocation, type BackupObject } from './store.js';
import { sdk } from '../host/aws.js';

/**
 * Retention of the hourly backups, restic-style: keep the newest backup of each of the last
 * `hourly` hours that have one, and the newest of each of the last `daily` days that have
 * one (UTC). Emergency backups are never deleted here. The newest verified backup (the one
 * just written) is always kept, whatever the numbers say.
 */

export interface RetentionPolicy {
  hourly: number;
  daily: number;
}

/** The backups to delete from a newest-first list. */
export function selectExpired(backups: readonly BackupObject[], policy: RetentionPolicy, protect: string | undefined): BackupObject[] {
  const keep = new Set<string>();
  const newestPer = (bucketOf: (d: Date) => string, count: number) => {
    const seen = new Set<string>();
    for (const b of backups) {
      const bucket = bucketOf(b.time);
      if (seen.has(bucket)) continue;
      if (seen.size >= count) break;
      seen.add(bucket);
      keep.add(b.key);
    }
  };
  newestPer((d) => d.toISOString().slice(0, 13), policy.hourly);
  newestPer((d) => d.toISOString().slice(0, 10), policy.daily);
  if (protect) keep.add(protect);
  if (backups[0]) keep.add(backups[0].key);
  return backups.filter((b) => !keep.has(b.key));
}

export async function applyRetention(o: {
  s3: S3Client;
  loc: BackupLocation;
  policy: RetentionPolicy;
  /** The backup just uploaded and verified: never deleted. */
  protect: string;
  log: Logger;
  signal?: AbortSignal | undefined;
}): Promise<{ kept: number; deleted: string[] }> {
  const { DeleteObjectsCommand } = await sdk.s3();
  const all = await listBackups(o.s3, o.loc, ['hourly'], o.signal);
  if (!all.some((b) => b.key === o.protect)) {
    // The listing does not show the backup just written (a stale listing): delete nothing.
    o.log.warn('retention skipped: the new backup is not listed yet', { key: o.protect });
    return { kept: all.length, deleted: [] };
  }
  const expired = selectExpired(all, o.policy, o.protect);
  for (let i = 0; i < expired.length; i += 1000) {
    const batch = expired.slice(i, i + 1000);
    const out = await o.s3.send(
      new DeleteObjectsCommand({ Bucket: o.loc.bucket, Delete: { Objects: batch.map((b) => ({ Key: b.key })), Quiet: true } }),
      { abortSignal: o.signal },
    );
    for (const e of out.Errors ?? []) o.log.warn('could not delete an expired backup', { key: e.Key, err: e.Message });
  }
  if (expired.length) o.log.info('retention applied', { kept: all.length - expired.length, deleted: expired.length });
  return { kept: all.length - expired.length, deleted: expired.map((b) => b.key) };
}
