import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { HeadObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ConfigInput } from '../../agent/config/schema.js';
import { metricsFile, readSamples } from '../../agent/log/metrics.js';
import { readState } from '../../agent/log/state.js';
import type { AgentEvent } from '../../agent/notify/events.js';
import { Budget } from '../../agent/terminate/budget.js';
import { runTerminate } from '../../agent/terminate/run.js';
import { startEtcd, type EtcdMember } from '../testbed/etcd.js';
import { startFidelityProxy, type FidelityProxy } from '../testbed/fidelity-proxy.js';
import { startImds, type Imds } from '../testbed/imds.js';
import {
  applyNodeSelfDeleteRbac,
  createPod,
  ensureNamespace,
  kubeApiserverAvailable,
  startFakeKubelet,
  startKube,
  type FakeKubelet,
  type Kube,
} from '../testbed/kube.js';
import { startMoto, type Moto } from '../testbed/moto.js';
import { silentListener } from '../testbed/ports.js';
import { makeTempRoot, type TempRoot } from '../testbed/root.js';
import { REGION, awsConfig, contextFor, createAsgWithHook, makeBucket, makeKmsKey, startEventQueue, testClients, useTestCredentials, writeFakePki } from '../support/terminate-env.js';

/**
 * `zdt-agent terminate` end to end in-process: real kube-apiserver, etcd, moto behind the
 * fidelity proxy, AEMM for IMDS. The budget tests make S3, the API server and etcd hang and
 * check that the run still ends inside its budget and records what it could not finish.
 */

const available = await kubeApiserverAvailable();
const BUCKET = 'zdt-terminate';
const ASG = 'workers-asg';
const HOOK = 'drain-before-terminate';

let moto: Moto;
let proxy: FidelityProxy;
let s3: S3Client;
let topicArn: string;
let drainQueue: () => Promise<AgentEvent[]>;
let kmsKeyId: string;
let kube: Kube;
const kubelets: FakeKubelet[] = [];
const roots: TempRoot[] = [];
const imdses: Imds[] = [];
const stopped: number[] = [];

async function newRoot(): Promise<TempRoot> {
  const r = await makeTempRoot();
  roots.push(r);
  return r;
}

async function imdsFor(instanceId: string, o: { lifecycle?: 'Terminated'; asg?: boolean } = {}): Promise<Imds> {
  const imds = await startImds({
    instanceId,
    region: REGION,
    availabilityZone: `${REGION}a`,
    instanceType: 'm7i.large',
    privateIp: '10.0.1.5',
    tags: { Name: instanceId, ...(o.asg ? { 'aws:autoscaling:groupName': ASG } : {}) },
    ...(o.lifecycle ? { targetLifecycleState: o.lifecycle } : {}),
  });
  imdses.push(imds);
  return imds;
}

/** A worker node with its fake kubelet, its IMDS and a root holding its kubelet.conf. */
async function workerNode(nodeName: string, instanceId: string, o: { lifecycle?: 'Terminated'; asg?: boolean }): Promise<{ imds: Imds; root: TempRoot }> {
  kubelets.push(await startFakeKubelet(kube, nodeName));
  const imds = await imdsFor(instanceId, o);
  const root = await newRoot();
  await kube.writeNodeKubeconfig(nodeName, root.at('/etc/kubernetes/kubelet.conf'));
  return { imds, root };
}

function sigstop(pid: number): void {
  process.kill(pid, 'SIGSTOP');
  stopped.push(pid);
}

function sigcont(pid: number): void {
  process.kill(pid, 'SIGCONT');
  stopped.splice(stopped.indexOf(pid), 1);
}

beforeAll(async () => {
  useTestCredentials();
  moto = await startMoto();
  proxy = await startFidelityProxy({ target: moto.endpoint });
  let kms;
  ({ s3, kms } = testClients(proxy.endpoint));
  await makeBucket(s3, BUCKET);
  kmsKeyId = await makeKmsKey(kms);
  ({ topicArn, drain: drainQueue } = await startEventQueue(proxy.endpoint, 'zdt-events'));
  await createAsgWithHook(proxy.endpoint, ASG, HOOK);
  if (available) {
    kube = await startKube();
    await ensureNamespace(kube.admin, 'app');
    await applyNodeSelfDeleteRbac(kube.admin); // as controller 00 does at bootstrap (docs/terminate.md)
  }
});

afterAll(async () => {
  for (const pid of [...stopped]) sigcont(pid);
  for (const k of kubelets) await k.stop();
  await kube?.stop();
  for (const i of imdses) await i.stop();
  await proxy?.stop();
  await moto?.stop();
  for (const r of roots) await r.cleanup();
});

function workerConfig(imds: Imds, terminate: Record<string, unknown> = {}): ConfigInput {
  return {
    cluster: { name: 'prod' },
    node: { role: 'worker' },
    notify: { snsTopicArn: topicArn },
    terminate: { budget: 40, drainTimeout: 25, hookTimeout: 5, heartbeatInterval: 1, ...terminate },
    aws: { ...awsConfig(proxy.endpoint), imdsEndpoint: imds.endpoint },
  };
}

function hook(root: TempRoot, event: string, name: string, script: string): void {
  const dir = root.at(`/etc/zdt-agent/hooks/${event}.d`);
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, name), `#!/bin/sh\n${script}\n`, { mode: 0o755 });
}

describe('a worker whose API server accepts connections and never answers', () => {
  it('records the drain as a deadline, lists it as unfinished, and does not claim 0 pods left', async () => {
    const apiserver = await silentListener();
    try {
      const imds = await imdsFor('i-0b0b0000000000009', { lifecycle: 'Terminated' });
      const root = await newRoot();
      const server = apiserver.endpoint.replace('http:', 'https:');
      fs.mkdirSync(root.at('/etc/kubernetes'), { recursive: true });
      fs.writeFileSync(
        root.at('/etc/kubernetes/kubelet.conf'),
        `apiVersion: v1\nkind: Config\nclusters: [{name: k, cluster: {server: ${server}}}]\nusers: [{name: u, user: {token: node-token}}]\ncontexts: [{name: c, context: {cluster: k, user: u}}]\ncurrent-context: c\n`,
      );
      await drainQueue();
      // The drain's window (about 11 s) outlasts one request's 10 s timeout: the request, not
      // the window, is what runs out.
      const ctx = await contextFor(root.dir, workerConfig(imds, { budget: 14, drainTimeout: 13, hookTimeout: 2 }));
      const out = await runTerminate({ ctx, budget: new Budget(14_000), env: {} });
      expect(out.record.phases.drain).toMatchObject({ result: 'deadline', detail: 'the pods on the node were never listed' });
      expect(out.record.phases.drain!.error).toMatch(/^KubeApiTimeout: PATCH \/api\/v1\/nodes\/\S+: the API server did not answer within 10000 ms/);
      expect(out.unfinished).toContain('drain');
      expect(out.exitCode).toBe(3);
      const finished = (await drainQueue()).find((m) => m.event === 'terminate.finished')!;
      expect(finished.details).toMatchObject({ result: 'deadline', podsEvicted: 0, podsLeft: 'unknown' });
      expect(String(finished.details.unfinished).split(',')).toContain('drain');
      expect(readState(root.at('/var/lib/zdt-agent/state.json'), 'x').terminate?.phases.drain?.result).toBe('deadline');
    } finally {
      apiserver.close();
    }
  });
});

describe.skipIf(!available)('a worker is terminated by its Auto Scaling group', () => {
  it('classifies from IMDS, runs the hooks, drains, deletes its Node, completes the lifecycle hook and reports over SNS', async () => {
    const nodeName = 'ip-10-0-1-5.eu-central-1.compute.internal';
    kubelets.push(await startFakeKubelet(kube, nodeName));
    await createPod(kube.admin, { namespace: 'app', name: 'shop-1', node: nodeName, owner: { kind: 'ReplicaSet', name: 'shop' } });
    await createPod(kube.admin, { namespace: 'app', name: 'shop-2', node: nodeName, owner: { kind: 'ReplicaSet', name: 'shop' } });
    await createPod(kube.admin, { namespace: 'app', name: 'logs-x', node: nodeName, owner: { kind: 'DaemonSet', name: 'logs' } });

    const imds = await imdsFor('i-0b0b0000000000001', { lifecycle: 'Terminated', asg: true });
    const root = await newRoot();
    await kube.writeNodeKubeconfig(nodeName, root.at('/etc/kubernetes/kubelet.conf'));
    const envFile = root.at('/tmp/hook-env');
    hook(root, 'terminate', '10-env', `mkdir -p ${path.dirname(envFile)}; env | grep ^ZDT_ | sort > ${envFile}; echo saved the environment`);
    hook(root, 'terminate', '20-broken', 'echo about to fail >&2; exit 7');
    hook(root, 'terminate', '30-after', `touch ${root.at('/tmp/after-broken')}`);
    await drainQueue();

    const ctx = await contextFor(root.dir, { ...workerConfig(imds), metrics: { textfileDir: '/var/lib/prometheus/node-exporter' } });
    const out = await runTerminate({ ctx, budget: new Budget(40_000), env: {} });

    expect(out.event).toBe('terminate');
    expect(out.classification.source).toBe('imds autoscaling/target-lifecycle-state=Terminated');
    // The run as metrics for node_exporter (docs/metrics.md), under the root.
    const metrics = readSamples(metricsFile(root.at('/var/lib/prometheus/node-exporter'), 'terminate'));
    expect(metrics.get('zdt_agent_terminate_last_run_result')).toEqual([{ labels: { event: 'terminate', result: 'ok' }, value: 1 }]);
    expect(metrics.get('zdt_agent_terminate_phase_result')).toContainEqual({ labels: { phase: 'drain', result: 'ok' }, value: 1 });
    const p = out.record.phases;
    expect(p.hooks).toMatchObject({ result: 'ok', detail: '10-env=ok 20-broken=failed 30-after=ok' });
    expect(p.hooks!.error).toMatch(/20-broken/);
    expect(fs.readFileSync(envFile, 'utf8')).toBe('ZDT_CLUSTER=prod\nZDT_EVENT=terminate\nZDT_INSTANCE_ID=i-0b0b0000000000001\nZDT_ROLE=worker\n');
    expect(fs.existsSync(root.at('/tmp/after-broken'))).toBe(true);
    expect(p.drain).toMatchObject({ result: 'ok' });
    expect(p.drain!.detail).toMatch(/evicted 2; skipped 1 DaemonSet/);
    expect(p['self-delete']).toMatchObject({ result: 'ok', detail: `deleted Node ${nodeName}` });
    expect((await kube.admin.raw('GET', `/api/v1/nodes/${nodeName}`)).status).toBe(404);
    expect(p['etcd-backup']).toMatchObject({ result: 'skipped', detail: 'not a controller' });
    expect(p.lifecycle).toMatchObject({ result: 'ok' });
    const completes = proxy.recorded('CompleteLifecycleAction').filter((c) => c.params.InstanceId === 'i-0b0b0000000000001');
    expect(completes).toHaveLength(1);
    expect(completes[0]!.params).toMatchObject({ AutoScalingGroupName: ASG, LifecycleHookName: HOOK, LifecycleActionResult: 'CONTINUE' });
    expect(proxy.recorded('RecordLifecycleActionHeartbeat').filter((c) => c.params.InstanceId === 'i-0b0b0000000000001').length).toBeGreaterThan(0);
    expect(out.exitCode).toBe(0);
    expect(out.record.result).toBe('ok'); // the broken hook is reported (above, and in SNS), not fatal

    const messages = await drainQueue();
    expect(messages.map((m) => m.event)).toEqual(['terminate.started', 'terminate.finished']);
    const finished = messages[1]!;
    expect(finished.details).toMatchObject({ event: 'terminate', result: 'ok', unfinished: '', podsEvicted: 2, podsLeft: 0 });
    expect(finished.failure).toBeUndefined();
    expect(finished.phases.find((x) => x.name === 'hooks')!.error).toMatch(/20-broken/);
    expect(finished.phases.map((x) => x.name)).toEqual(expect.arrayContaining(['drain', 'self-delete', 'lifecycle', 'hooks']));

    const state = readState(root.at('/var/lib/zdt-agent/state.json'), 'x');
    expect(state.terminate?.event).toBe('terminate');
    expect(state.terminate?.phases.drain?.result).toBe('ok');
  });

  it('a reboot drains without deleting the Node, and completes no lifecycle hook', async () => {
    const nodeName = 'ip-10-0-1-6.eu-central-1.compute.internal';
    kubelets.push(await startFakeKubelet(kube, nodeName));
    await createPod(kube.admin, { namespace: 'app', name: 'cart-1', node: nodeName, owner: { kind: 'ReplicaSet', name: 'cart' } });
    const imds = await imdsFor('i-0b0b0000000000002', { asg: true });
    const root = await newRoot();
    await kube.writeNodeKubeconfig(nodeName, root.at('/etc/kubernetes/kubelet.conf'));
    const ctx = await contextFor(root.dir, workerConfig(imds));
    const out = await runTerminate({ ctx, budget: new Budget(40_000), env: { RC_REBOOT: 'YES' } });
    expect(out.event).toBe('reboot');
    expect(out.record.phases.drain?.result).toBe('ok');
    expect(out.record.phases['self-delete']).toMatchObject({ result: 'skipped', detail: 'a reboot comes back: the Node object is kept' });
    expect(out.record.phases.lifecycle?.result).toBe('skipped');
    const n = await kube.admin.call<{ spec: { unschedulable?: boolean } }>('GET', `/api/v1/nodes/${nodeName}`);
    expect(n.body.spec.unschedulable).toBe(true);
    expect(proxy.recorded('CompleteLifecycleAction').filter((c) => c.params.InstanceId === 'i-0b0b0000000000002')).toHaveLength(0);
  });

  it('a lifecycle action that is gone (the hook timed out) skips the lifecycle step and fails nothing', async () => {
    const nodeName = 'ip-10-0-1-8.eu-central-1.compute.internal';
    const { imds, root } = await workerNode(nodeName, 'i-0b0b0000000000004', { lifecycle: 'Terminated', asg: true });
    await drainQueue();
    // What AWS answers to both calls once no lifecycle action holds the instance.
    const noAction = { kind: 'error', status: 400, code: 'ValidationError', message: 'No active Lifecycle Action found with instance ID i-0b0b0000000000004' } as const;
    for (const action of ['RecordLifecycleActionHeartbeat', 'CompleteLifecycleAction']) proxy.inject({ action, ...noAction });
    try {
      const ctx = await contextFor(root.dir, workerConfig(imds));
      const out = await runTerminate({ ctx, budget: new Budget(40_000), env: {} });
      expect(out.record.phases.lifecycle).toMatchObject({ result: 'skipped', detail: `no lifecycle action of ${HOOK} holds this instance` });
      expect(out.record.phases['self-delete']).toMatchObject({ result: 'ok', detail: `deleted Node ${nodeName}` });
      expect(out.record.result).toBe('ok');
      expect(out.exitCode).toBe(0);
      const finished = (await drainQueue()).find((m) => m.event === 'terminate.finished')!;
      expect(finished.details.result).toBe('ok');
      expect(finished.failure).toBeUndefined();
    } finally {
      proxy.clearFaults();
    }
  });
});

describe('a single controller is terminated', () => {
  let etcd: EtcdMember;
  let etcdDir: string;
  beforeAll(async () => {
    etcdDir = fs.mkdtempSync(path.join(os.tmpdir(), 'zdt-etcd-term-'));
    etcd = await startEtcd({ dir: path.join(etcdDir, 'data'), name: 'etcd00' });
  });
  afterAll(async () => {
    if (etcd && stopped.includes(etcd.pid)) sigcont(etcd.pid);
    await etcd?.stop();
    fs.rmSync(etcdDir, { recursive: true, force: true });
  });

  const controllerConfig = (imds: Imds, terminate: Record<string, unknown> = {}): ConfigInput => ({
    cluster: { name: 'solo' },
    node: { role: 'controller', controllerIndex: '00' },
    etcd: { clientUrl: etcd.clientUrl, backup: { bucket: BUCKET, kmsKeyId } },
    notify: { snsTopicArn: topicArn },
    terminate: { budget: 40, drainTimeout: 20, hookTimeout: 5, ...terminate },
    aws: { ...awsConfig(proxy.endpoint), imdsEndpoint: imds.endpoint },
  });

  // S3 stays on moto behind the fidelity proxy here: the next test hangs S3 with the proxy's
  // faults, and this one keeps a whole backup on moto. The backup tests on MinIO, which checks
  // the part checksums, are in etcd-backup.test.ts.
  it('uploads a verified emergency backup and names it in terminate.finished; etcd is not left', async () => {
    const imds = await imdsFor('i-0c0c0000000000001');
    const root = await newRoot();
    writeFakePki(root.dir);
    await drainQueue();
    const ctx = await contextFor(root.dir, controllerConfig(imds));
    const out = await runTerminate({ ctx, budget: new Budget(40_000), flag: 'terminate', env: {} });
    expect(out.record.phases['etcd-backup']).toMatchObject({ result: 'ok' });
    expect(out.backupKey).toMatch(/^etcd-backups\/solo\/emergency\/\d{8}T\d{6}Z-i-0c0c0000000000001\.tar$/);
    const head = await s3.send(new HeadObjectCommand({ Bucket: BUCKET, Key: out.backupKey!, ChecksumMode: 'ENABLED' }));
    expect(head.ServerSideEncryption).toBe('aws:kms');
    expect(out.record.phases['etcd-leave']).toMatchObject({ result: 'skipped', detail: 'etcd has a single member: it was backed up instead' });
    expect(out.record.phases.drain?.detail).toMatch(/kubelet\.conf/);
    const finished = (await drainQueue()).find((m) => m.event === 'terminate.finished')!;
    expect(finished.details.backupKey).toBe(out.backupKey);
  });

  it('S3 hanging: the run still ends inside its budget and records the unfinished backup in state and SNS', async () => {
    const imds = await imdsFor('i-0c0c0000000000002');
    const root = await newRoot();
    writeFakePki(root.dir);
    await drainQueue();
    for (const action of ['s3:PutObject', 's3:CreateMultipartUpload', 's3:UploadPart']) proxy.inject({ action, kind: 'hang' });
    try {
      // The SDK's own timeouts (as on a node: 15 s a request, 5 attempts) would outlast the budget.
      const cfg = controllerConfig(imds, { budget: 12, drainTimeout: 5, hookTimeout: 2, backupTimeout: 60 });
      cfg.aws = { ...cfg.aws, requestTimeoutMs: 15_000, maxAttempts: 5 };
      const ctx = await contextFor(root.dir, cfg);
      const started = Date.now();
      const out = await runTerminate({ ctx, budget: new Budget(12_000), flag: 'terminate', env: {} });
      expect(Date.now() - started).toBeLessThan(12_000);
      expect(out.record.phases['etcd-backup'], JSON.stringify(out.record.phases['etcd-backup'])).toMatchObject({ result: 'deadline' });
      expect(out.unfinished).toEqual(['etcd-backup']);
      expect(out.exitCode).toBe(3);
      const state = readState(root.at('/var/lib/zdt-agent/state.json'), 'x');
      expect(state.terminate?.result).toBe('deadline');
      expect(state.terminate?.phases['etcd-backup']?.detail).toMatch(/not finished within/);
      const finished = (await drainQueue()).find((m) => m.event === 'terminate.finished')!;
      expect(finished.details.unfinished).toBe('etcd-backup');
      expect(finished.failure?.phase).toBe('etcd-backup');
    } finally {
      proxy.clearFaults();
    }
  });

  it('etcd hanging (SIGSTOP): the backup step ends at its deadline and the run inside its budget', async () => {
    const imds = await imdsFor('i-0c0c0000000000003');
    const root = await newRoot();
    writeFakePki(root.dir);
    sigstop(etcd.pid);
    try {
      const ctx = await contextFor(root.dir, controllerConfig(imds, { budget: 10, drainTimeout: 5, hookTimeout: 2 }));
      const started = Date.now();
      const out = await runTerminate({ ctx, budget: new Budget(10_000), flag: 'stop', env: {} });
      expect(Date.now() - started).toBeLessThan(10_000);
      expect(out.record.phases['etcd-backup']?.result).toBe('deadline');
      expect(out.record.phases['etcd-leave']?.detail).toBe('never on stop');
    } finally {
      sigcont(etcd.pid);
    }
  });
});

describe.skipIf(!available)('the API server hangs', () => {
  it('the drain ends at its deadline, the lifecycle hook is still completed, and the run ends inside its budget', async () => {
    const nodeName = 'ip-10-0-1-7.eu-central-1.compute.internal';
    const { imds, root } = await workerNode(nodeName, 'i-0b0b0000000000003', { lifecycle: 'Terminated', asg: true });
    const pid = kube.apiserverPid()!;
    sigstop(pid);
    try {
      const ctx = await contextFor(root.dir, workerConfig(imds, { budget: 12, drainTimeout: 6, hookTimeout: 2 }));
      const started = Date.now();
      const out = await runTerminate({ ctx, budget: new Budget(12_000), env: {} });
      expect(Date.now() - started).toBeLessThan(12_000);
      expect(out.event).toBe('terminate');
      expect(out.record.phases.drain?.result).toBe('deadline');
      expect(['deadline', 'failed']).toContain(out.record.phases['self-delete']?.result);
      expect(out.record.phases.lifecycle?.result).toBe('ok');
      expect(proxy.recorded('CompleteLifecycleAction').filter((c) => c.params.InstanceId === 'i-0b0b0000000000003')).toHaveLength(1);
      expect(out.unfinished).toContain('drain');
    } finally {
      sigcont(pid);
    }
  });
});
