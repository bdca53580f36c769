import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { backupFamilies } from '../../agent/etcd/backup-metrics.js';
import type { BackupResult } from '../../agent/etcd/backup.js';
import { metricsFile, readSamples, renderExposition, runFamilies, writeMetrics } from '../../agent/log/metrics.js';
import type { RunRecord } from '../../agent/log/state.js';

/** The textfile exposition (agent/log/metrics.ts); node_exporter and promtool read it in test/integration/metrics-textfile.test.ts. */

const dirs: string[] = [];
const tmp = () => {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'zdt-metrics-'));
  dirs.push(d);
  return d;
};
afterEach(() => {
  for (const d of dirs.splice(0)) fs.rmSync(d, { recursive: true, force: true });
});

const bootRun: RunRecord = {
  startedAt: '2026-03-01T12:00:00.000Z',
  finishedAt: '2026-03-01T12:01:05.500Z',
  result: 'failed',
  phases: {
    identity: { result: 'ok', startedAt: '2026-03-01T12:00:00.000Z', durationMs: 31 },
    'etcd-volume': { result: 'failed', startedAt: '2026-03-01T12:00:00.031Z', durationMs: 377, error: 'X: y' },
  },
};

describe('textfile metrics', () => {
  it('writes HELP, TYPE and one sample a line, escaping label values', () => {
    const text = renderExposition([{ name: 'zdt_agent_x', type: 'gauge', help: 'a\\b\nc', samples: [{ labels: { b: 'q"\\\n', a: '1' }, value: 2 }] }]);
    expect(text).toBe('# HELP zdt_agent_x a\\\\b\\nc\n# TYPE zdt_agent_x gauge\nzdt_agent_x{a="1",b="q\\"\\\\\\n"} 2\n');
  });

  it('a boot run: start, duration, result, and each phase', () => {
    const text = renderExposition(runFamilies('boot', bootRun));
    expect(text).toContain('zdt_agent_boot_last_run_start_timestamp_seconds 1772366400\n');
    expect(text).toContain('zdt_agent_boot_last_run_duration_seconds 65.5\n');
    expect(text).toContain('zdt_agent_boot_last_run_success 0\n');
    expect(text).toContain('zdt_agent_boot_last_run_result{result="failed"} 1\n');
    expect(text).toContain('zdt_agent_boot_phase_duration_seconds{phase="etcd-volume"} 0.377\n');
    expect(text).toContain('zdt_agent_boot_phase_result{phase="etcd-volume",result="failed"} 1\n');
  });

  it('a backup of one kind keeps the other kind, and counts runs across writes', () => {
    const dir = tmp();
    const ok = { sizeBytes: 1048576, durationMs: 2500 } as BackupResult;
    writeMetrics(dir, 'etcd-backup', backupFamilies('hourly', { ok, at: new Date(1_000_000_000) }), { keep: true, increments: true });
    writeMetrics(dir, 'etcd-backup', backupFamilies('emergency', { failedAfterMs: 60_000, at: new Date(2_000_000_000) }), { keep: true, increments: true });
    writeMetrics(dir, 'etcd-backup', backupFamilies('hourly', { ok, at: new Date(3_000_000_000) }), { keep: true, increments: true });
    const s = readSamples(metricsFile(dir, 'etcd-backup'));
    const v = (name: string, labels: Record<string, string>) => s.get(name)?.find((x) => JSON.stringify(x.labels) === JSON.stringify(labels))?.value;
    expect(v('zdt_agent_etcd_backup_last_success_timestamp_seconds', { kind: 'hourly' })).toBe(3_000_000);
    expect(v('zdt_agent_etcd_backup_last_success_size_bytes', { kind: 'hourly' })).toBe(1048576);
    expect(v('zdt_agent_etcd_backup_last_failure_timestamp_seconds', { kind: 'emergency' })).toBe(2_000_000);
    expect(v('zdt_agent_etcd_backup_last_failure_duration_seconds', { kind: 'emergency' })).toBe(60);
    expect(v('zdt_agent_etcd_backup_runs_total', { kind: 'hourly', result: 'ok' })).toBe(2);
    expect(v('zdt_agent_etcd_backup_runs_total', { kind: 'emergency', result: 'failed' })).toBe(1);
    expect(fs.readdirSync(dir)).toEqual(['zdt_agent_etcd_backup.prom']); // no temp files left
  });

  it('a run replaces the previous one: no phase of an older boot lingers', () => {
    const dir = tmp();
    writeMetrics(dir, 'boot', runFamilies('boot', bootRun));
    writeMetrics(dir, 'boot', runFamilies('boot', { ...bootRun, result: 'ok', phases: { identity: bootRun.phases.identity! } }));
    const text = fs.readFileSync(metricsFile(dir, 'boot'), 'utf8');
    expect(text).not.toContain('etcd-volume');
    expect(text).toContain('zdt_agent_boot_last_run_success 1');
  });
});
