#!/usr/bin/env node
/**
 * Drain time of 100 pods against the real kube-apiserver (test/testbed/k8s): the agent's
 * drain (agent/terminate/drain.ts, with the node's own credentials: cordon, 100 evictions,
 * wait until the fake kubelet has finalised them) against `kubectl drain` (admin
 * credentials, --ignore-daemonsets --delete-emptydir-data --force) on the same API server,
 * runs interleaved, fresh node and pods each run. Prints the median and every run.
 * Target: the agent no slower than kubectl drain. Never asserts.
 *
 *   node bench/drain.mjs [--pods=100] [--runs=3]
 *
 * Needs: kube-apiserver in ~/.cache/zdt-agent/bin (test/testbed/k8s/build.sh), etcd, openssl,
 * kubectl. The TypeScript testbed helpers and the drain are bundled with esbuild on the fly.
 */
import { spawn } from 'node:child_process';
import { parseArgs } from 'node:util';
import { importTs } from './lib/bundle.mjs';
import { report } from './lib/report.mjs';

const { values } = parseArgs({ options: { pods: { type: 'string', default: '100' }, runs: { type: 'string', default: '3' } } });
const PODS = Number(values.pods);
const RUNS = Math.max(1, Number(values.runs));

const { startKube, startFakeKubelet, ensureNamespace, createPod, kubeApiserverAvailable, drainNode, silentLogger } = await importTs('drain-lib', [
  "export { startKube, startFakeKubelet, ensureNamespace, createPod, kubeApiserverAvailable } from './test/testbed/kube.ts';",
  "export { drainNode } from './agent/terminate/drain.ts';",
  "export { silentLogger } from './agent/log/logger.ts';",
]);

if (!(await kubeApiserverAvailable())) {
  console.log('kube-apiserver is not built (test/testbed/k8s/build.sh): skipped');
  process.exit(0);
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const run = (cmd, args) =>
  new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let err = '';
    child.stderr.on('data', (c) => (err = (err + c).slice(-4000)));
    child.on('error', reject);
    child.on('exit', (code) => (code === 0 ? resolve() : reject(new Error(`${cmd} exited ${code}: ${err}`))));
  });

async function pool(n, limit, fn) {
  let next = 0;
  await Promise.all(Array.from({ length: limit }, async () => {
    while (next < n) await fn(next++);
  }));
}

const kube = await startKube();
const kubelets = [];
try {
  await ensureNamespace(kube.admin, 'bench');
  const prepare = async (node) => {
    kubelets.push(await startFakeKubelet(kube, node, { pollMs: 100 }));
    await pool(PODS, 8, (i) => createPod(kube.admin, { namespace: 'bench', name: `${node}-p${i}`, node, owner: { kind: 'ReplicaSet', name: `${node}-rs` }, graceS: 30 }));
    await createPod(kube.admin, { namespace: 'bench', name: `${node}-ds`, node, owner: { kind: 'DaemonSet', name: 'ds' } });
  };
  const agent = [];
  const kubectl = [];
  for (let i = 0; i < RUNS; i++) {
    const a = `agent-${i}`;
    await prepare(a);
    const client = await kube.nodeClient(a);
    let t = performance.now();
    const report = await drainNode({ kube: client, nodeName: a, evictUntil: Date.now() + 120_000, deadline: Date.now() + 130_000, signal: AbortSignal.timeout(130_000), blockedPods: 'stop', log: silentLogger });
    agent.push(performance.now() - t);
    client.close();
    if (!report.complete || report.evicted.length !== PODS) throw new Error(`agent drain incomplete: ${JSON.stringify(report).slice(0, 300)}`);

    const k = `kubectl-${i}`;
    await prepare(k);
    t = performance.now();
    await run('kubectl', ['--kubeconfig', kube.adminKubeconfig, 'drain', k, '--ignore-daemonsets', '--delete-emptydir-data', '--force', '--timeout=120s']);
    kubectl.push(performance.now() - t);
  }
  const s = (ms) => `${(ms / 1000).toFixed(2)} s`;
  console.log(`drain of ${PODS} pods (+1 DaemonSet pod) on kube-apiserver ${(await kube.admin.version()).gitVersion}, fake kubelet finalising every 100 ms, ${RUNS} runs interleaved (median)`);
  console.log('');
  console.log('| drain | wall time | runs |');
  console.log('|---|---|---|');
  console.log(`| zdt-agent (node credentials, Eviction API, list every 0.5 s) | ${s(median(agent))} | ${agent.map(s).join(', ')} |`);
  console.log(`| kubectl drain (admin) | ${s(median(kubectl))} | ${kubectl.map(s).join(', ')} |`);
  console.log('');
  const ratio = median(kubectl) / median(agent);
  console.log(`ratio kubectl / zdt-agent: ${ratio.toFixed(2)}x (target >= 1.0x)`);
  const how = `median of ${RUNS} runs interleaved with the other drain, a fresh node and pods each run; fake kubelet finalising every 100 ms`;
  report('drain', [
    { section: 'Drain', name: `zdt-agent drain, ${PODS} pods (node credentials, Eviction API)`, value: s(median(agent)), note: `${how}; runs ${agent.map(s).join(', ')}` },
    { section: 'Drain', name: `kubectl drain, ${PODS} pods (admin)`, value: s(median(kubectl)), note: `--ignore-daemonsets --delete-emptydir-data --force; runs ${kubectl.map(s).join(', ')}` },
    { section: 'Drain', name: 'kubectl drain / zdt-agent drain', value: `${ratio.toFixed(2)}x`, target: '≥ 1.0x', met: ratio >= 1, note: 'ratio of the medians above' },
  ]);
} finally {
  for (const k of kubelets) await k.stop();
  await kube.stop();
}
