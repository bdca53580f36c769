#!/usr/bin/env node
// 200 nodes at once: workers of one cluster booting together while the control plane appears
// only after 60 s. Each node has its own --root, config and IMDSv2 stand-in, and every request
// to the kube-apiserver, the AWS endpoints and IMDS is counted per node (test/support/herd-env.ts
// says how the testbed is wired). Up to 50 nodes run as processes of the built binary
// (dist/zdt-agent); more run as boot runners in one Node process (test/support/herd-node.ts),
// because 200 processes need about 100 CPU-seconds to start, longer than the wait on two cores
// (docs/boot.md, "Many nodes at once"); --mode= chooses.
//
// Prints the peak (per second) and mean request rate per endpoint, the join-time distribution,
// and beside them what kubeadm join and kubelet would put on the API server with their own retry
// policies (the anchors, from the k8s.io/kubernetes v1.34 source, in docs/boot.md).
//
//   node bench/herd.mjs [--nodes=200] [--after=60] [--ca=late|early|both] [--mode=process|in-process]
//
// --after: seconds until the API server starts; --ca=late: the cluster CA and the join token
// reach S3 when it answers (controller 00 publishing what kubeadm init made), early: they are
// there from the start (a pre-generated PKI), so the waiting nodes poll the API endpoint.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { importTs } from './lib/bundle.mjs';
import { report } from './lib/report.mjs';

const ROOT = path.resolve(import.meta.dirname, '..');
const BIN = path.join(ROOT, 'dist/zdt-agent');
const arg = (name, dflt) => process.argv.find((a) => a.startsWith(`--${name}=`))?.split('=')[1] ?? dflt;
const NODES = Number(arg('nodes', 200));
const AFTER_S = Number(arg('after', 60));
const CA = arg('ca', 'both');
// 200 processes of the binary need about 100 CPU-seconds to start (measured: 505 ms per node
// with its stand-ins), more than the 60 s wait on this 2-core machine; see docs/boot.md.
const MODE = arg('mode', NODES > 50 ? 'in-process' : 'process');
if (MODE === 'process' && !fs.existsSync(BIN)) throw new Error(`${BIN} is missing: build it with node scripts/build-binary.mjs`);

const { startHerd, rates, maxAttempts, percentile } = await importTs('herd', ["export * from './test/support/herd-env.ts';"]);
const { CONTROL_PLANE_BACKOFF } = await importTs('herd-backoff', ["export { CONTROL_PLANE_BACKOFF } from './agent/boot/cluster.ts';"]);

/**
 * The anchors: what the API server sees from N nodes waiting `waitS` for it with the retry
 * policies of kubeadm join and kubelet (k8s.io/kubernetes v1.34.12). None of them is jittered,
 * so nodes started in the same second stay in step: the peak is one request per node.
 */
function anchors(n, waitS) {
  const fixed = (intervalS) => Math.floor(waitS / intervalS) + 1; // immediate first try, then every interval
  const doubling = (firstS, maxS) => {
    // kubelet registerWithAPIServer: sleep 100 ms, double, cap 7 s, then try
    let t = 0;
    let step = firstS;
    let k = 0;
    for (;;) {
      t += step;
      if (t > waitS) return k;
      k++;
      step = Math.min(step * 2, maxS);
    }
  };
  return [
    {
      who: 'kubeadm join, token discovery (GET cluster-info every DiscoveryRetryInterval 5 s, no jitter, DiscoveryTimeout 5 min)',
      perNode: fixed(5),
      steady: n / 5,
      peak: n,
    },
    {
      who: 'kubeadm join, TLS bootstrap wait (kubelet.conf checked every TLSBootstrapRetryInterval 1 s, TLSBootstrapTimeout 5 min)',
      perNode: 0,
      steady: 0,
      peak: 0,
      note: 'reads a local file: no API request',
    },
    {
      who: 'kubelet node registration (POST Node, 100 ms doubling to 7 s, no jitter, no bound)',
      perNode: doubling(0.1, 7),
      steady: n / 7,
      peak: n,
    },
    {
      who: 'kubelet once joined (node status every 10 s, jitter 4 %; lease renewed every 10 s = 40 s x 0.25)',
      perNode: 2 * Math.floor(waitS / 10),
      steady: (2 * n) / 10,
      peak: 2 * n,
      note: 'per joined node, for ever; the peak only if all were in step',
    },
  ];
}

const fmt = (x, d = 1) => (Number.isFinite(x) ? x.toFixed(d) : 'n/a');
const machine = () => `${os.cpus().length} cores, ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB RAM, load ${os.loadavg().map((l) => l.toFixed(2)).join(' ')}`;

function cpuTicks() {
  const f = fs.readFileSync('/proc/stat', 'utf8').split('\n')[0].split(/\s+/).slice(1).map(Number);
  return { busy: f[0] + f[1] + f[2] + f[5] + f[6], all: f.slice(0, 8).reduce((a, b) => a + b, 0) };
}
const memAvailableMb = () => Number(/MemAvailable:\s+(\d+)/.exec(fs.readFileSync('/proc/meminfo', 'utf8'))[1]) / 1024;

/** CPU seconds of this process's reaped children (the nodes and their stand-ins): /proc/self/stat cutime + cstime. */
function childCpuS() {
  const f = fs.readFileSync('/proc/self/stat', 'utf8').replace(/^.*\) /, '').split(' ');
  return (Number(f[13]) + Number(f[14])) / 100;
}

async function round(herd, ca) {
  const cpu0 = cpuTicks();
  const child0 = childCpuS();
  let memMin = memAvailableMb();
  const mem0 = memMin;
  let busiest = 0;
  let last = cpu0;
  const r = await herd.run({
    nodes: NODES,
    controlPlaneAfterMs: AFTER_S * 1000,
    ca,
    mode: MODE,
    deadlineMs: (AFTER_S + 600) * 1000,
    onSecond: () => {
      memMin = Math.min(memMin, memAvailableMb());
      const c = cpuTicks();
      busiest = Math.max(busiest, (c.busy - last.busy) / Math.max(1, c.all - last.all));
      last = c;
    },
  });
  const cpu1 = cpuTicks();
  const nodeCpuS = childCpuS() - child0;
  const spanMs = Math.max(...r.nodes.map((n) => n.exitedAt));
  const failed = r.nodes.filter((n) => n.code !== 0);
  const joins = r.nodes.map((n) => n.joinedAt).filter((x) => x !== undefined).sort((a, b) => a - b);
  const afterReady = joins.map((j) => j - r.controlPlaneReadyAt);
  const rss = r.nodes.map((n) => n.rssKb ?? 0).sort((a, b) => a - b);
  const pss = r.nodes.map((n) => n.pssKb ?? 0).sort((a, b) => a - b);

  console.log(`\n## ${NODES} workers, control plane started after ${AFTER_S} s, cluster CA ${ca === 'late' ? 'published when the API server answers' : 'in S3 from the start'}`);
  console.log(`machine: ${machine()}; ${MODE === 'process' ? `spawning the ${NODES} processes of dist/zdt-agent took ${fmt(r.spawnMs / 1000, 2)} s` : `all ${NODES} boots in one Node process (test/support/herd-node.ts); its peak RSS ${fmt((r.host?.rssKb ?? 0) / 1024, 0)} MB, PSS ${fmt((r.host?.pssKb ?? 0) / 1024, 0)} MB; its timers fired late by ${fmt(r.host?.lagP99Ms ?? NaN, 0)} ms at p99, ${fmt(r.host?.lagMaxMs ?? NaN, 0)} ms at most`}`);
  const starts = r.nodes.map((n) => n.startedAt).sort((a, b) => a - b);
  console.log(`node boots started between ${fmt(starts[0] / 1000, 2)} s and ${fmt(starts.at(-1) / 1000, 2)} s`);
  console.log(`API server started at ${fmt(r.controlPlaneStartedAt / 1000)} s, answered /readyz at ${fmt(r.controlPlaneReadyAt / 1000)} s${ca === 'late' ? `, CA and token in S3 at ${fmt(r.caPublishedAt / 1000)} s` : ''}; last node done at ${fmt(spanMs / 1000)} s`);
  console.log(`CPU busy ${fmt((100 * (cpu1.busy - cpu0.busy)) / (cpu1.all - cpu0.all), 0)} % over the run (busiest second ${fmt(100 * busiest, 0)} %); MemAvailable ${fmt(mem0 / 1024)} GiB before, ${fmt(memMin / 1024)} GiB at the lowest${MODE === 'process' ? `; node peak RSS median ${fmt(percentile(rss, 50) / 1024, 0)} MB (max ${fmt(rss.at(-1) / 1024, 0)}), PSS median ${fmt(percentile(pss, 50) / 1024, 0)} MB (max ${fmt(pss.at(-1) / 1024, 0)})` : ''}`);
  console.log(`CPU of the nodes (with their stand-ins): ${fmt(nodeCpuS)} s in all, ${fmt((1000 * nodeCpuS) / NODES, 0)} ms per node`);
  if (failed.length) console.log(`FAILED nodes: ${failed.length}: ${failed.slice(0, 3).map((n) => `node ${n.node} exit ${n.code}: ${n.stderr.trim().split('\n').at(-1)}`).join('; ')}`);

  console.log('\n| endpoint | requests | per node (max) | peak per second (at s) | mean per second |');
  console.log('|---|---|---|---|---|');
  const endpoints = [...new Set(r.requests.map((q) => q.endpoint))].sort((a, b) => (a === 'kube-apiserver' ? -1 : b === 'kube-apiserver' ? 1 : a.localeCompare(b)));
  const rows = [];
  for (const ep of endpoints) {
    const x = rates(r.requests, ep, spanMs);
    const per = new Map();
    for (const q of r.requests) if (q.endpoint === ep) per.set(q.node, (per.get(q.node) ?? 0) + 1);
    const refused = r.requests.filter((q) => q.endpoint === ep && q.refused).length;
    const label = ep === 'imds' ? 'IMDS (one per node, not shared)' : ep === 'kube-apiserver' ? 'kube-apiserver' : `AWS ${ep}`;
    console.log(`| ${label} | ${x.total}${refused ? ` (${refused} while down)` : ''} | ${Math.max(...per.values())} | ${x.peak} (${x.peakAt}) | ${fmt(x.mean)} |`);
    rows.push({ ep, label, ...x });
  }
  for (const ep of ['kube-apiserver', 's3']) {
    const buckets = [];
    for (const q of r.requests) if (q.endpoint === ep) buckets[Math.floor(q.t / 5000)] = (buckets[Math.floor(q.t / 5000)] ?? 0) + 1;
    console.log(`${ep} per 5 s from the start: ${Array.from(buckets, (n) => n ?? 0).join(' ')}`);
  }
  const ops = new Map();
  for (const q of r.requests) if (q.endpoint !== 'imds') ops.set(`${q.endpoint} ${q.what}`, (ops.get(`${q.endpoint} ${q.what}`) ?? 0) + 1);
  console.log(`\nby call: ${[...ops].sort((a, b) => b[1] - a[1]).map(([k, v]) => `${k} ${v}`).join(', ')}`);

  const dist = (xs) => `min ${fmt(xs[0] / 1000)} s, median ${fmt(percentile(xs, 50) / 1000)} s, p95 ${fmt(percentile(xs, 95) / 1000)} s, max ${fmt(xs.at(-1) / 1000)} s`;
  console.log(`\njoin time (kubeadm join run), ${joins.length}/${NODES} nodes, from the herd's start: ${dist(joins)}`);
  console.log(`join time after the API server answered: ${dist(afterReady)}`);
  // When each node's wait saw the control plane: its /version request (the last probe's second request).
  const seen = r.requests.filter((q) => q.endpoint === 'kube-apiserver' && q.what === '/version').map((q) => q.t - Math.max(r.controlPlaneReadyAt, r.caPublishedAt)).sort((a, b) => a - b);
  console.log(`control plane seen by the wait (its /version request) after the API server answered${ca === 'late' ? ' and the CA was in S3' : ''}: ${dist(seen)}`);
  const bound = CONTROL_PLANE_BACKOFF.maxDelayMs;
  console.log(`bound: the wait polls at least every ${bound / 1000} s, so a node joins within ${bound / 1000} s of the CA and API being there plus its own boot's remaining steps`);
  return { r, rows, joins, afterReady, seen, failed, spanMs };
}

function printAnchors(measured) {
  const waitS = AFTER_S;
  console.log(`\n## Anchors: ${NODES} nodes waiting ${waitS} s for the API server`);
  console.log('\n| retry policy | requests per node in the wait | mean per second, steady | peak per second |');
  console.log('|---|---|---|---|');
  const agentPerNode = maxAttempts(waitS * 1000, CONTROL_PLANE_BACKOFF);
  const mean = (2 * NODES) / ((CONTROL_PLANE_BACKOFF.maxDelayMs / 1000) * 1.5); // jittered in [d/2, d]: mean 0.75 d
  const all = [
    { who: 'zdt-agent control-plane wait (1 s doubling to 15 s, jittered to [d/2, d], bounded by boot.controlPlaneWait)', perNode: `at most ${agentPerNode}`, steady: mean, peak: `measured: ${measured}` },
    ...anchors(NODES, waitS),
  ];
  for (const a of all) console.log(`| ${a.who} | ${a.perNode} | ${fmt(a.steady)} | ${a.peak}${a.note ? ` (${a.note})` : ''} |`);
  // The same comparison in the report: computed from each retry policy, not measured (but the agent's peak).
  return all.map((a) => ({
    section: 'Herd: what the API server sees from each retry policy',
    name: a.who,
    value: `${a.perNode} requests per node in ${waitS} s; ${fmt(a.steady)}/s steady; peak ${a.peak}/s`,
    note: `${NODES} nodes waiting ${waitS} s; computed from the policy (k8s.io/kubernetes v1.34.12 source, docs/boot.md)${a.note ? `; ${a.note}` : ''}`,
  }));
}

const herd = await startHerd();
const results = [];
try {
  for (const ca of CA === 'both' ? ['late', 'early'] : [CA]) results.push({ ca, ...(await round(herd, ca)) });
} finally {
  await herd.stop();
}
const early = results.find((x) => x.ca === 'early') ?? results[0];
const kubeRow = early.rows.find((x) => x.ep === 'kube-apiserver');
const anchorRows = printAnchors(kubeRow ? `${kubeRow.peak} (mean ${fmt(kubeRow.mean)} over the run)` : 'n/a');

const rowsOut = [];
for (const x of results) {
  const cond = `${NODES} nodes ${MODE}, control plane after ${AFTER_S} s, CA ${x.ca === 'late' ? 'published with it' : 'in S3 from the start'}`;
  for (const row of x.rows.filter((q) => q.ep !== 'imds')) {
    rowsOut.push({ section: 'Herd', name: `${row.label}: peak / mean requests per second (${cond})`, value: `${row.peak} / ${fmt(row.mean)}` });
  }
  rowsOut.push({
    section: 'Herd',
    name: `join time from the start: min / median / p95 / max (${cond})`,
    value: `${fmt(x.joins[0] / 1000)} / ${fmt(percentile(x.joins, 50) / 1000)} / ${fmt(percentile(x.joins, 95) / 1000)} / ${fmt(x.joins.at(-1) / 1000)} s`,
    target: `all ${NODES} join`,
    met: x.joins.length === NODES && x.failed.length === 0,
    note: `after the API server answered: median ${fmt(percentile(x.afterReady, 50) / 1000)} s, max ${fmt(x.afterReady.at(-1) / 1000)} s`,
  });
  rowsOut.push({
    section: 'Herd',
    name: `control plane seen by the wait after it answered: median / max (${cond})`,
    value: `${fmt(percentile(x.seen, 50) / 1000)} / ${fmt(x.seen.at(-1) / 1000)} s`,
    target: `<= ${CONTROL_PLANE_BACKOFF.maxDelayMs / 1000} s (the backoff's longest delay)`,
    met: x.seen.length === NODES && x.seen.at(-1) <= CONTROL_PLANE_BACKOFF.maxDelayMs,
    note: 'plus how late the busy machine fired the timers',
  });
}
report('herd', [...rowsOut, ...anchorRows]);
