import fs from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { nodeActions } from '../../agent/commands/watch.js';
import type { CommandContext } from '../../agent/context.js';
import type { ConfigInput } from '../../agent/config/schema.js';
import { Imds as ImdsClient } from '../../agent/host/imds.js';
import { readBootId } from '../../agent/host/paths.js';
import { readState, type WatchedEvent } from '../../agent/log/state.js';
import type { AgentEvent } from '../../agent/notify/events.js';
import { Budget } from '../../agent/terminate/budget.js';
import { runTerminate } from '../../agent/terminate/run.js';
import { watch } from '../../agent/watch/run.js';
import { startFidelityProxy, type FidelityProxy } from '../testbed/fidelity-proxy.js';
import { startHttpTap, type HttpTap } from '../testbed/http-tap.js';
import { startImds, type Imds, type ImdsConfig } from '../testbed/imds.js';
import { createPod, ensureNamespace, applyNodeSelfDeleteRbac, kubeApiserverAvailable, startFakeKubelet, startKube, type FakeKubelet, type Kube } from '../testbed/kube.js';
import { startMoto, type Moto } from '../testbed/moto.js';
import { makeTempRoot, type TempRoot } from '../testbed/root.js';
import { REGION, awsConfig, contextFor, createAsgWithHook, startEventQueue, useTestCredentials } from '../support/terminate-env.js';

/**
 * `zdt-agent watch` in-process against the real parts: amazon-ec2-metadata-mock serving every
 * kind of notice (IMDSv2 only), the real kube-apiserver with fake kubelets for cordon, drain and
 * self-delete, moto behind the fidelity proxy for the lifecycle hook and SNS (read back
 * through SQS). No timed assertions: waits are generous deadlines.
 */

const available = await kubeApiserverAvailable();
const ASG = 'watch-asg';
const HOOK = 'drain-before-terminate';
const SPOT_TIME = '2030-01-01T00:02:00Z';
const SCHEDULED_ID = 'instance-event-1234567890abcdef0'; // AEMM's fixed EventId

let moto: Moto;
let proxy: FidelityProxy;
let topicArn: string;
let drainQueue: () => Promise<AgentEvent[]>;
let kube: Kube;
const kubelets: FakeKubelet[] = [];
const roots: TempRoot[] = [];
const servers: Array<{ stop(): Promise<void> }> = [];

beforeAll(async () => {
  useTestCredentials();
  moto = await startMoto();
  proxy = await startFidelityProxy({ target: moto.endpoint });
  ({ topicArn, drain: drainQueue } = await startEventQueue(proxy.endpoint, 'zdt-watch-events'));
  await createAsgWithHook(proxy.endpoint, ASG, HOOK);
  if (available) {
    kube = await startKube();
    await ensureNamespace(kube.admin, 'app');
    await applyNodeSelfDeleteRbac(kube.admin);
  }
});

afterAll(async () => {
  for (const k of kubelets) await k.stop();
  await kube?.stop();
  for (const s of servers) await s.stop();
  await proxy?.stop();
  await moto?.stop();
  for (const r of roots) await r.cleanup();
});

/** Polls `check` until it returns a value; a generous deadline, never a timing assertion. */
async function until<T>(what: string, check: () => T | undefined | Promise<T | undefined>, timeoutMs = 90_000): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await check();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > end) throw new Error(`gave up waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function imdsFor(instanceId: string, privateIp: string, extra: Partial<ImdsConfig> = {}): Promise<Imds> {
  const imds = await startImds({
    instanceId,
    region: REGION,
    availabilityZone: `${REGION}a`,
    instanceType: 'm7i.large',
    privateIp,
    tags: { Name: instanceId, ...(extra.targetLifecycleState ? { 'aws:autoscaling:groupName': ASG } : {}) },
    ...extra,
  });
  servers.push(imds);
  return imds;
}

/** A worker: its fake kubelet with one ReplicaSet pod and one DaemonSet pod, its root with kubelet.conf. */
async function worker(nodeName: string, pods = true): Promise<TempRoot> {
  kubelets.push(await startFakeKubelet(kube, nodeName));
  if (pods) {
    const short = nodeName.split('.')[0]!;
    await createPod(kube.admin, { namespace: 'app', name: `web-${short}`, node: nodeName, owner: { kind: 'ReplicaSet', name: 'web' } });
    await createPod(kube.admin, { namespace: 'app', name: `logs-${short}`, node: nodeName, owner: { kind: 'DaemonSet', name: 'logs' } });
  }
  const root = await makeTempRoot();
  roots.push(root);
  await kube.writeNodeKubeconfig(nodeName, root.at('/etc/kubernetes/kubelet.conf'));
  return root;
}

function config(endpoint: string, watchSection: ConfigInput['watch'] = {}): ConfigInput {
  return {
    cluster: { name: 'prod' },
    node: { role: 'worker' },
    notify: { snsTopicArn: topicArn },
    terminate: { budget: 40, drainTimeout: 25, hookTimeout: 5, heartbeatInterval: 1 },
    aws: { ...awsConfig(proxy.endpoint), imdsEndpoint: endpoint },
    watch: { interval: 0.2, backoffMax: 0.5, ...watchSection },
  };
}

interface Watcher {
  polls: boolean[];
  stop(): Promise<void>;
  done: Promise<{ polls: number }>;
}

function startWatcher(ctx: CommandContext, maxPolls?: number): Watcher {
  const stop = new AbortController();
  const polls: boolean[] = [];
  const done = watch({
    imds: new ImdsClient({ endpoint: ctx.config.aws.imdsEndpoint, log: ctx.log, requestTimeoutMs: 2000 }),
    config: ctx.config.watch,
    stateFile: ctx.paths.stateFile,
    agentVersion: 'test',
    bootId: readBootId(ctx.paths),
    log: ctx.log,
    actions: nodeActions(ctx),
    signal: stop.signal,
    maxPolls,
    onPoll: (_n, ok) => polls.push(ok),
  });
  return {
    polls,
    done,
    stop: async () => {
      stop.abort();
      await done;
    },
  };
}

const watched = (root: TempRoot, id: string): WatchedEvent | undefined => readState(root.at('/var/lib/zdt-agent/state.json'), 'x').watch?.events[id];
const finished = (root: TempRoot, id: string) => until(`${id} to be acted on`, () => (watched(root, id)?.status === 'done' ? watched(root, id) : undefined));
const nodeOf = (name: string) => kube.admin.raw<{ spec?: { unschedulable?: boolean } }>('GET', `/api/v1/nodes/${name}`);
const pods = async (name: string) =>
  ((await kube.admin.call<{ items: Array<{ metadata: { name: string } }> }>('GET', `/api/v1/pods?fieldSelector=${encodeURIComponent(`spec.nodeName=${name}`)}`)).body.items ?? []).map(
    (p) => p.metadata.name,
  );
const completions = (instanceId: string) => proxy.recorded('CompleteLifecycleAction').filter((c) => c.params.InstanceId === instanceId);

describe.skipIf(!available)('the watcher acts on interruption notices before the shutdown', () => {
  it('ASG scale-in: drains, deletes the Node and CONTINUEs the lifecycle hook; the later shutdown terminate does not drain again', async () => {
    const name = 'ip-10-0-3-1.eu-central-1.compute.internal';
    const root = await worker(name);
    // InService first, Terminated a few seconds after the mock started (--asg-termination-delay-sec).
    const imds = await imdsFor('i-0abcdef0000000001', '10.0.3.1', { targetLifecycleState: { terminatedAfterS: 3 } });
    const ctx = await contextFor(root.dir, config(imds.endpoint));
    await drainQueue();
    const w = startWatcher(ctx);
    try {
      const e = await finished(root, 'asg:Terminated:boot');
      expect(e).toMatchObject({ kind: 'asgTerminate', action: 'retire', event: 'terminate', result: 'ok' });
      expect(w.polls.filter(Boolean).length).toBeGreaterThan(1); // it saw InService first
    } finally {
      await w.stop();
    }
    expect((await nodeOf(name)).status).toBe(404);
    expect(completions('i-0abcdef0000000001')).toHaveLength(1);
    expect(completions('i-0abcdef0000000001')[0]!.params).toMatchObject({ AutoScalingGroupName: ASG, LifecycleHookName: HOOK, LifecycleActionResult: 'CONTINUE' });
    const messages = await drainQueue();
    expect(messages.map((m) => m.event)).toEqual(['interruption.noticed', 'terminate.started', 'terminate.finished']);
    expect(messages[0]!.details).toMatchObject({ kind: 'asgTerminate', action: 'retire', eventId: 'asg:Terminated:boot' });
    expect(messages[2]!.details).toMatchObject({ event: 'terminate', result: 'ok', trigger: 'asg:Terminated:boot', podsEvicted: 1 });

    // The OS shutdown comes later: terminate classifies it from IMDS and finds the work done.
    const started = Date.now();
    const out = await runTerminate({ ctx, budget: new Budget(40_000), env: {} });
    const shutdownMs = Date.now() - started;
    expect(out.event).toBe('terminate');
    for (const step of ['drain', 'self-delete', 'lifecycle']) {
      expect(out.record.phases[step], step).toMatchObject({ result: 'ok' });
      expect(out.record.phases[step]!.detail, step).toMatch(/^done earlier by the watcher's run for asg:Terminated:boot/);
    }
    expect(out.record.phases['lifecycle-hook']).toBeUndefined(); // no second lookup, no heartbeats
    expect(completions('i-0abcdef0000000001')).toHaveLength(1);
    expect(out.exitCode).toBe(0);
    const again = await drainQueue();
    expect(again.map((m) => m.event)).toEqual(['terminate.started', 'terminate.finished']);
    expect(again[1]!.details).toMatchObject({ doneByWatcher: 'drain,self-delete,lifecycle' });
    process.stderr.write(`watch test: the shutdown terminate after the watcher's retire took ${shutdownMs} ms\n`);
  });

  it('a spot terminate notice seen on 100 consecutive polls is acted on once, with one IMDSv2 token', async () => {
    const name = 'ip-10-0-3-2.eu-central-1.compute.internal';
    const root = await worker(name);
    const imds = await imdsFor('i-0abcdef0000000002', '10.0.3.2', { spotInstanceAction: { action: 'terminate', time: SPOT_TIME } });
    const requests: string[] = [];
    const tap: HttpTap = await startHttpTap(imds.endpoint, (req) => void requests.push(`${req.method} ${req.url}`));
    servers.push(tap);
    const ctx = await contextFor(root.dir, config(tap.endpoint, { interval: 0.01 }));
    await drainQueue();
    const w = startWatcher(ctx, 100);
    const { polls } = await w.done;
    const id = `spot:terminate:${SPOT_TIME}`;
    const e = await finished(root, id);
    expect(polls).toBe(100);
    expect(e).toMatchObject({ kind: 'spotTerminate', action: 'retire', event: 'terminate', result: 'ok' });
    expect(requests.filter((r) => r === 'GET /latest/meta-data/spot/instance-action').length).toBeGreaterThanOrEqual(100);
    // The watcher's 400 polls share one token; the notice's identity read and the retire's identity step each make their own.
    expect(requests.filter((r) => r.startsWith('PUT /latest/api/token')).length).toBeLessThanOrEqual(3);
    expect((await nodeOf(name)).status).toBe(404);
    const messages = await drainQueue();
    expect(messages.filter((m) => m.event === 'interruption.noticed')).toHaveLength(1);
    expect(messages.filter((m) => m.event === 'terminate.started')).toHaveLength(1);
    expect(messages[0]!.details).toMatchObject({ kind: 'spotTerminate', noticeTime: SPOT_TIME, action: 'retire' });
    // A watcher started again (a restart) sees the same notice and leaves it alone.
    const again = startWatcher(ctx, 20);
    await again.done;
    expect((await drainQueue()).filter((m) => m.event === 'interruption.noticed')).toHaveLength(0);
  });

  it('a spot stop notice retires as a stop: drained and cordoned, the Node object kept', async () => {
    const name = 'ip-10-0-3-3.eu-central-1.compute.internal';
    const root = await worker(name);
    const imds = await imdsFor('i-0abcdef0000000003', '10.0.3.3', { spotInstanceAction: { action: 'stop', time: SPOT_TIME } });
    const ctx = await contextFor(root.dir, config(imds.endpoint));
    const w = startWatcher(ctx);
    try {
      expect(await finished(root, `spot:stop:${SPOT_TIME}`)).toMatchObject({ kind: 'spotStop', event: 'stop', result: 'ok', cordoned: true });
    } finally {
      await w.stop();
    }
    const node = await nodeOf(name);
    expect(node.status).toBe(200);
    expect(node.body.spec?.unschedulable).toBe(true);
    expect(await pods(name)).toEqual([`logs-ip-10-0-3-3`]);
  });

  it('a scheduled instance-stop retires as a stop', async () => {
    const name = 'ip-10-0-3-4.eu-central-1.compute.internal';
    const root = await worker(name);
    const imds = await imdsFor('i-0abcdef0000000004', '10.0.3.4', { scheduledEvent: { code: 'instance-stop', state: 'active' } });
    const ctx = await contextFor(root.dir, config(imds.endpoint));
    const w = startWatcher(ctx);
    try {
      expect(await finished(root, `scheduled:${SCHEDULED_ID}`)).toMatchObject({ kind: 'scheduledStop', action: 'retire', event: 'stop', result: 'ok' });
    } finally {
      await w.stop();
    }
    expect((await nodeOf(name)).body.spec?.unschedulable).toBe(true);
    expect(await pods(name)).toEqual([`logs-ip-10-0-3-4`]);
  });

  it('a scheduled reboot cordons without draining; the canceled event uncordons', async () => {
    const name = 'ip-10-0-3-5.eu-central-1.compute.internal';
    const root = await worker(name);
    const imds = await imdsFor('i-0abcdef0000000005', '10.0.3.5', { scheduledEvent: { code: 'system-reboot', state: 'active' } });
    const port = Number(new URL(imds.endpoint).port);
    const ctx = await contextFor(root.dir, config(imds.endpoint));
    await drainQueue();
    const w = startWatcher(ctx);
    try {
      expect(await finished(root, `scheduled:${SCHEDULED_ID}`)).toMatchObject({ kind: 'scheduledReboot', action: 'cordon', cordoned: true });
      expect((await nodeOf(name)).body.spec?.unschedulable).toBe(true);
      expect(await pods(name)).toHaveLength(2); // a cordon drains nothing
      // EC2 cancels the event: AEMM restarted on the same port serves it as canceled.
      await imds.stop();
      servers.push(await imdsFor('i-0abcdef0000000005', '10.0.3.5', { scheduledEvent: { code: 'system-reboot', state: 'canceled' }, port }));
      await until('the cordon to be undone', () => watched(root, `scheduled:${SCHEDULED_ID}`)?.undoneAt);
    } finally {
      await w.stop();
    }
    expect((await nodeOf(name)).body.spec?.unschedulable).toBeUndefined();
    const messages = await drainQueue();
    expect(messages.map((m) => m.event)).toEqual(['interruption.noticed']);
    expect(messages[0]!.details).toMatchObject({ kind: 'scheduledReboot', action: 'cordon', state: 'active' });
  });

  it('a rebalance recommendation is logged and notified by default, and cordons when watch.on.rebalance says so', async () => {
    const name = 'ip-10-0-3-6.eu-central-1.compute.internal';
    const root = await worker(name, false);
    // AEMM answers the request time as noticeTime unless pinned; EC2's stays fixed.
    const imds = await imdsFor('i-0abcdef0000000006', '10.0.3.6', { rebalance: { noticeTime: '2030-01-01T00:00:00Z' } });
    const id = 'rebalance:2030-01-01T00:00:00Z';
    await drainQueue();
    const logOnly = startWatcher(await contextFor(root.dir, config(imds.endpoint)), 10);
    await logOnly.done;
    expect(watched(root, id)).toMatchObject({ kind: 'rebalance', action: 'log', status: 'done' });
    expect((await nodeOf(name)).body.spec?.unschedulable).toBeUndefined();
    expect((await drainQueue()).map((m) => m.event)).toEqual(['interruption.noticed']);

    const root2 = await worker('ip-10-0-3-7.eu-central-1.compute.internal', false);
    const w = startWatcher(await contextFor(root2.dir, config(imds.endpoint, { on: { rebalance: 'cordon' } })));
    try {
      expect(await finished(root2, id)).toMatchObject({ action: 'cordon', cordoned: true });
    } finally {
      await w.stop();
    }
    expect((await nodeOf('ip-10-0-3-7.eu-central-1.compute.internal')).body.spec?.unschedulable).toBe(true);
  });

  it('IMDS down for a while, then back: the watcher backs off, records the outage, and acts on the notice it then finds', async () => {
    const name = 'ip-10-0-3-8.eu-central-1.compute.internal';
    const root = await worker(name, false);
    const imds = await imdsFor('i-0abcdef0000000008', '10.0.3.8');
    const port = Number(new URL(imds.endpoint).port);
    const ctx = await contextFor(root.dir, config(imds.endpoint, { backoffMax: 0.3 }));
    const w = startWatcher(ctx);
    try {
      await until('a first good poll', () => w.polls.includes(true) || undefined);
      await imds.stop();
      await until('the outage in the state file', () => readState(ctx.paths.stateFile, 'x').watch?.imdsDownSince);
      // Capped backoff: with a 0.3 s cap the watcher keeps trying several times a second.
      const failedBefore = w.polls.filter((ok) => !ok).length;
      await until('several more failed polls', () => w.polls.filter((ok) => !ok).length >= failedBefore + 5 || undefined);
      servers.push(await imdsFor('i-0abcdef0000000008', '10.0.3.8', { spotInstanceAction: { action: 'stop', time: SPOT_TIME }, port }));
      expect(await finished(root, `spot:stop:${SPOT_TIME}`)).toMatchObject({ result: 'ok' });
      await until('the outage to be cleared', () => (readState(ctx.paths.stateFile, 'x').watch?.imdsDownSince === undefined ? true : undefined));
    } finally {
      await w.stop();
    }
    expect((await nodeOf(name)).body.spec?.unschedulable).toBe(true);
  });
});
