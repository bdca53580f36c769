import type { S3Client } from '@aws-sdk/client-s3';
import type { Config } from '../config/schema.js';
import { ConfigError } from '../errors.js';
import type { BackupKind } from './manifest.js';
import { sdk } from '../host/aws.js';

/**
 * Where backups live in S3: `<prefix>/<cluster>/<kind>/<UTC timestamp>-<instance id>.tar`,
 * e.g. `etcd-backups/prod/hourly/20260101T100000Z-i-0abc.tar`. The timestamp sorts
 * lexically, so the newest backup is the greatest key of a kind.
 */

export interface BackupObject {
  key: string;
  kind: BackupKind;
  time: Date;
  instanceId: string;
  size: number;
}

export interface BackupLocation {
  bucket: string;
  prefix: string;
  cluster: string;
}

export function backupLocation(config: Config): BackupLocation {
  const bucket = config.etcd?.backup.bucket;
  if (!bucket) throw new ConfigError('BackupBucketMissing', 'no etcd.backup.bucket is configured', { hint: 'set etcd.backup.bucket in the config' });
  const cluster = config.cluster?.name;
  if (!cluster) throw new ConfigError('ClusterNameMissing', 'no cluster.name is configured', { hint: 'set cluster.name' });
  return { bucket, prefix: (config.etcd?.backup.prefix ?? 'etcd-backups').replace(/^\/+|\/+$/g, ''), cluster };
}

/** Every backup of this cluster is under this prefix. */
export const clusterPrefix = (loc: BackupLocation): string => `${loc.prefix ? `${loc.prefix}/` : ''}${loc.cluster}/`;
export const kindPrefix = (loc: BackupLocation, kind: BackupKind): string => `${clusterPrefix(loc)}${kind}/`;

/** 2026-01-01T10:00:00.123Z -> 20260101T100000Z */
export function stamp(d: Date): string {
  return d.toISOString().replace(/\.\d+Z$/, 'Z').replace(/[-:]/g, '');
}

export function backupKey(loc: BackupLocation, kind: BackupKind, time: Date, instanceId: string): string {
  return `${kindPrefix(loc, kind)}${stamp(time)}-${instanceId}.tar`;
}

const KEY_NAME = /^(\d{8}T\d{6}Z)-(.+)\.tar$/;

/** The backup a key names, or undefined for foreign objects under the prefix. */
export function parseBackupKey(loc: BackupLocation, key: string, size = 0): BackupObject | undefined {
  for (const kind of ['emergency', 'hourly'] as const) {
    const p = kindPrefix(loc, kind);
    if (!key.startsWith(p)) continue;
    const m = KEY_NAME.exec(key.slice(p.length));
    if (!m) return undefined;
    const s = m[1]!;
    const time = new Date(`${s.slice(0, 4)}-${s.slice(4, 6)}-${s.slice(6, 8)}T${s.slice(9, 11)}:${s.slice(11, 13)}:${s.slice(13, 15)}Z`);
    if (Number.isNaN(time.getTime())) return undefined;
    return { key, kind, time, instanceId: m[2]!, size };
  }
  return undefined;
}

/** Every backup of one kind (or both), newest first. */
export async function listBackups(s3: S3Client, loc: BackupLocation, kinds: readonly BackupKind[], signal?: AbortSignal): Promise<BackupObject[]> {
  const { ListObjectsV2Command } = await sdk.s3();
  const out: BackupObject[] = [];
  for (const kind of kinds) {
    let token: string | undefined;
    do {
      const page = await s3.send(new ListObjectsV2Command({ Bucket: loc.bucket, Prefix: kindPrefix(loc, kind), ContinuationToken: token }), { abortSignal: signal });
      for (const o of page.Contents ?? []) {
        const b = o.Key ? parseBackupKey(loc, o.Key, o.Size ?? 0) : undefined;
        if (b && b.size > 0) out.push(b);
      }
      token = page.IsTruncated ? page.NextContinuationToken : undefined;
    } while (token);
  }
  return out.sort((a, b) => b.time.getTime() - a.time.getTime() || (a.key < b.key ? 1 : -1));
}
