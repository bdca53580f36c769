import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { backupFamilies } from '../../agent/etcd/backup-metrics.js';
import type { BackupResult } from '../../agent/etcd/backup.js';
import { silentLogger } from '../../agent/log/logger.js';
import { recordMetrics, runFamilies, watchFamilies, writeMetrics } from '../../agent/log/metrics.js';
import type { RunRecord } from '../../agent/log/state.js';
import { countAnswer } from '../../agent/ssh/metrics.js';
import { freePort } from '../testbed/ports.js';
import { answersHttp, startServer, type ServerProcess } from '../testbed/process.js';

/**
 * The metrics files as the real consumers read them: Debian's prometheus-node-exporter with
 * the textfile collector on the directory, scraped over loopback, and promtool (Debian's
 * prometheus package) checking every file and docs/metrics.md's alert rules.
 */

const NODE_EXPORTER = '/usr/bin/prometheus-node-exporter';
const PROMTOOL = '/usr/bin/promtool';
const pending = [NODE_EXPORTER, PROMTOOL].filter((f) => !fs.existsSync(f)).map((f) => `${f} is missing; run 'make testbed-deps'`)[0];

let dir: string;
let exporter: ServerProcess | undefined;
let url: string;

const run = (result: RunRecord['result'], phases: RunRecord['phases']): RunRecord => ({
  startedAt: '2026-03-01T12:00:00.000Z',
  finishedAt: '2026-03-01T12:00:42.000Z',
  result,
  phases,
});
const phase = (result: 'ok' | 'skipped' | 'failed', durationMs: number) => ({ result, startedAt: '2026-03-01T12:00:00.000Z', durationMs });

beforeAll(async () => {
  if (pending) return;
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'zdt-textfile-'));
  // What the commands write, through the functions they write it with.
  recordMetrics(dir, 'boot', runFamilies('boot', run('failed', { identity: phase('ok', 31), 'etcd-volume': phase('failed', 377), signal: phase('ok', 298) })), silentLogger);
  recordMetrics(dir, 'terminate', runFamilies('terminate', run('ok', { classify: phase('ok', 40), drain: phase('ok', 31044) }), { event: 'terminate' }), silentLogger);
  const backup = { sizeBytes: 52_428_800, durationMs: 4200 } as BackupResult;
  writeMetrics(dir, 'etcd-backup', backupFamilies('hourly', { ok: backup, at: new Date() }), { keep: true, increments: true });
  writeMetrics(dir, 'etcd-backup', backupFamilies('emergency', { failedAfterMs: 60_000, at: new Date() }), { keep: true, increments: true });
  for (const outcome of ['keys', 'keys', 'not-in-group', 'error'] as const) {
    countAnswer(dir, { record: { user: 'alice', outcome, source: outcome === 'error' ? undefined : 'cache' }, cacheFetchedAt: Date.now() - 30_000 }, silentLogger);
  }
  recordMetrics(dir, 'watch', watchFamilies({ lastPollAt: Date.now() / 1000, polls: 3600, pollErrors: 4, eventsByKind: { rebalance: 1, spotTerminate: 1 } }), silentLogger);
  const port = await freePort();
  url = `http://127.0.0.1:${port}/metrics`;
  exporter = await startServer({
    what: 'node_exporter',
    file: NODE_EXPORTER,
    args: [`--web.listen-address=127.0.0.1:${port}`, '--collector.disable-defaults', '--collector.textfile', `--collector.textfile.directory=${dir}`],
    ready: () => answersHttp(url),
  });
}, 60_000);

afterAll(async () => {
  await exporter?.stop();
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

describe.skipIf(!!pending)(`textfile metrics${pending ? ` (${pending})` : ''}`, () => {
  it('every file passes promtool check metrics', () => {
    const files = fs.readdirSync(dir).sort();
    expect(files).toEqual(['zdt_agent_boot.prom', 'zdt_agent_etcd_backup.prom', 'zdt_agent_ssh_keys.prom', 'zdt_agent_terminate.prom', 'zdt_agent_watch.prom']);
    for (const f of files) {
      const r = spawnSync(PROMTOOL, ['check', 'metrics'], { input: fs.readFileSync(path.join(dir, f)), encoding: 'utf8', timeout: 30_000 });
      expect(`${f}: exit ${r.status} ${r.stdout}${r.stderr}`).toBe(`${f}: exit 0 `);
    }
  });

  it('node_exporter reads them without errors, and a scrape over loopback carries them', async () => {
    const text = await (await fetch(url, { signal: AbortSignal.timeout(10_000) })).text();
    expect(text).toMatch(/^node_textfile_scrape_error 0$/m);
    expect(text).toContain('zdt_agent_boot_last_run_success 0');
    expect(text).toContain('zdt_agent_boot_phase_result{phase="etcd-volume",result="failed"} 1');
    expect(text).toContain('zdt_agent_terminate_last_run_result{event="terminate",result="ok"} 1');
    expect(text).toContain('zdt_agent_watch_events_total{kind="spotTerminate"} 1');
    expect(text).toContain('zdt_agent_watch_poll_errors_total 4');
    expect(text).toMatch(/^zdt_agent_etcd_backup_last_success_size_bytes\{kind="hourly"\} 5\.24288e\+07$/m);
    expect(text).toContain('zdt_agent_etcd_backup_runs_total{kind="emergency",result="failed"} 1');
    expect(text).toContain('zdt_agent_ssh_keys_answers_total{result="keys",source="cache"} 2');
    expect(text).toContain('zdt_agent_ssh_keys_answers_total{result="error",source="none"} 1');
    expect(text).toMatch(/^zdt_agent_ssh_keys_cache_age_seconds 3\d(\.\d+)?$/m);
    // Each file's modification time: what a staleness alert on the files themselves would use.
    expect(text).toMatch(/node_textfile_mtime_seconds\{file="(\/.*\/)?zdt_agent_boot.prom"\}/);
  });

  it("docs/metrics.md's alert rules pass promtool check rules and fire as described", () => {
    const doc = fs.readFileSync(new URL('../../docs/metrics.md', import.meta.url), 'utf8');
    const rules = /<!-- BEGIN ALERT RULES -->\n```yaml\n([\s\S]*?)```\n<!-- END ALERT RULES -->/.exec(doc)?.[1];
    expect(rules, 'docs/metrics.md needs the alert rules block').toBeDefined();
    const rulesFile = path.join(dir, 'rules.yml');
    fs.writeFileSync(rulesFile, rules!);
    expect(execFileSync(PROMTOOL, ['check', 'rules', rulesFile], { encoding: 'utf8', timeout: 30_000 })).toMatch(/SUCCESS: 4 rules found/);

    // A backup that stopped at t=0 (the series keeps reporting that timestamp), a boot that
    // failed on one node and succeeded on another.
    const tests = `
rule_files: [rules.yml]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'zdt_agent_etcd_backup_last_success_timestamp_seconds{kind="hourly",instance="c0"}'
        values: '0x200'
      - series: 'zdt_agent_boot_last_run_success{instance="w1"}'
        values: '0x10'
      - series: 'zdt_agent_boot_last_run_success{instance="w2"}'
        values: '1x10'
    alert_rule_test:
      - eval_time: 1h
        alertname: ZdtEtcdBackupTooOld
        exp_alerts: []
      - eval_time: 2h15m
        alertname: ZdtEtcdBackupTooOld
        exp_alerts:
          - exp_labels: { severity: critical }
            exp_annotations:
              summary: "No successful hourly etcd backup for 2h 15m 0s"
              description: "Check \`zdt-agent etcd backup\` on the controllers (the leader backs up) and zdt_agent_etcd_backup_last_failure_timestamp_seconds."
      - eval_time: 5m
        alertname: ZdtBootFailed
        exp_alerts:
          - exp_labels: { severity: critical, instance: w1 }
            exp_annotations:
              summary: "zdt-agent boot failed on w1"
              description: "zdt_agent_boot_phase_result{result=~\\"failed|deadline\\"} names the phase; the SNS message has the log tail."
`;
    fs.writeFileSync(path.join(dir, 'rules.test.yml'), tests);
    const r = spawnSync(PROMTOOL, ['test', 'rules', 'rules.test.yml'], { cwd: dir, encoding: 'utf8', timeout: 60_000 });
    expect(`exit ${r.status}\n${r.stdout}${r.stderr}`).toMatch(/^exit 0\n[\s\S]*SUCCESS/);
  });
});
