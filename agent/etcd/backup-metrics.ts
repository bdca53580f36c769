import { METRIC_PREFIX, recordMetrics, textfileDirOf, type MetricFamily } from '../log/metrics.js';
import type { BackupResult } from './backup.js';
import type { BackupKind } from './manifest.js';
import type { EtcdContext } from './restore.js';

/**
 * The etcd backup metrics (docs/metrics.md): per kind, when the last backup succeeded, its
 * size and duration, and when the last one failed. One file for both kinds, so a backup of
 * one kind keeps the other kind's series: an alert on the age of the last hourly backup then
 * works on a controller that has taken an emergency backup since.
 */

const P = `${METRIC_PREFIX}etcd_backup`;

export type BackupAttempt = { ok: BackupResult; at: Date } | { failedAfterMs: number; at: Date };

export function backupFamilies(kind: BackupKind, a: BackupAttempt): MetricFamily[] {
  const labels = { kind };
  const at = a.at.getTime() / 1000;
  const ok = 'ok' in a ? a.ok : undefined;
  const success = (value: number) => (ok ? [{ labels, value }] : []);
  const failure = (value: number) => (ok ? [] : [{ labels, value }]);
  const failedMs = 'failedAfterMs' in a ? a.failedAfterMs : 0;
  return [
    { name: `${P}_last_success_timestamp_seconds`, type: 'gauge', help: 'When the last successful etcd backup of this kind finished (Unix time).', samples: success(at) },
    { name: `${P}_last_success_size_bytes`, type: 'gauge', help: 'Size of the last successful etcd backup of this kind as uploaded.', samples: success(ok?.sizeBytes ?? 0) },
    { name: `${P}_last_success_duration_seconds`, type: 'gauge', help: 'How long the last successful etcd backup of this kind took.', samples: success((ok?.durationMs ?? 0) / 1000) },
    { name: `${P}_last_failure_timestamp_seconds`, type: 'gauge', help: 'When the last failed etcd backup of this kind gave up (Unix time).', samples: failure(at) },
    { name: `${P}_last_failure_duration_seconds`, type: 'gauge', help: 'How long the last failed etcd backup of this kind ran before it failed.', samples: failure(failedMs / 1000) },
    { name: `${P}_runs_total`, type: 'counter', help: 'etcd backups of this kind by result (ok, failed).', samples: [{ labels: { kind, result: ok ? 'ok' : 'failed' }, value: 1 }] },
  ];
}

export function recordBackupMetrics(ctx: EtcdContext, kind: BackupKind, a: BackupAttempt): void {
  recordMetrics(textfileDirOf(ctx.paths, ctx.config.metrics), 'etcd-backup', backupFamilies(kind, a), ctx.log, { keep: true, increments: true });
}
