import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import type { ConfigInput } from '../../agent/config/schema.js';
import { readState, type AgentState } from '../../agent/log/state.js';
import type { AgentEvent } from '../../agent/notify/events.js';
import { startFidelityProxy, type FidelityProxy } from '../testbed/fidelity-proxy.js';
import { startImds, type Imds, type ImdsConfig } from '../testbed/imds.js';
import { applyNodeSelfDeleteRbac, createPod, ensureNamespace, kubeApiserverAvailable, startFakeKubelet, startKube, type FakeKubelet, type Kube } from '../testbed/kube.js';
import { startMoto, type Moto } from '../testbed/moto.js';
import { openrcAvailable, startOpenRc, type OpenRc } from '../testbed/openrc.js';
import { freePort } from '../testbed/ports.js';
import { makeTempRoot, type TempRoot } from '../testbed/root.js';
import { REGION, awsConfig, createAsgWithHook, startEventQueue } from '../support/terminate-env.js';

/**
 * The services of openrc/ under real OpenRC (Debian's openrc, supervise-daemon), in a private
 * mount and PID namespace, running the built binary against the testbed: boot before the
 * kubelet, the watcher respawned by supervise-daemon, a watcher SIGKILLed in the middle of a
 * drain resuming its retire and completing it once, a stop outside a shutdown retiring
 * nothing, and at shutdown the watcher stopping first, then zdt-agent's terminate (before
 * the kubelet) finding the retire done.
 */

const BIN = path.resolve(import.meta.dirname, '../../dist/zdt-agent');
const OPENRC = path.resolve(import.meta.dirname, '../../openrc');
const ready = openrcAvailable() && fs.existsSync(BIN) && (await kubeApiserverAvailable());
const ASG = 'openrc-asg';
const HOOK = 'drain-before-terminate';
const INSTANCE = 'i-0openrc000000001';
const NODE = 'ip-10-0-4-1.eu-central-1.compute.internal';
const EVENT_ID = 'asg:Terminated:boot'; // no /proc/sys/kernel/random/boot_id under the test root

let moto: Moto;
let proxy: FidelityProxy;
let kube: Kube;
let kubelet: FakeKubelet;
let events: Awaited<ReturnType<typeof startEventQueue>>;
let root: TempRoot;
let imds: Imds;
let imdsPort: number;
let rc: OpenRc;
const order = () => fs.readFileSync(root.at('/order'), 'utf8').trim().split('\n');
const state = (): AgentState => readState(root.at('/var/lib/zdt-agent/state.json'), 'x');

async function until<T>(what: string, check: () => T | undefined | Promise<T | undefined>, timeoutMs = 90_000): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await check();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > end) throw new Error(`gave up waiting for ${what}; log: ${fs.existsSync(root.at('/var/log/zdt-agent.log')) ? fs.readFileSync(root.at('/var/log/zdt-agent.log'), 'utf8').slice(-3000) : 'none'}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function serveImds(extra: Partial<ImdsConfig> = {}): Promise<void> {
  await imds?.stop();
  imds = await startImds({
    instanceId: INSTANCE,
    region: REGION,
    availabilityZone: `${REGION}a`,
    instanceType: 'm7i.large',
    privateIp: '10.0.4.1',
    tags: { Name: INSTANCE, 'aws:autoscaling:groupName': ASG },
    targetLifecycleState: 'InService',
    port: imdsPort,
    ...extra,
  });
}

/** A stand-in service that records its start and stop, as the kubelet's place in the order. */
const recorder = (name: string, deps: string) => `#!/sbin/openrc-run
depend() { ${deps}; }
start() { echo "start ${name}" >> "$order"; }
stop() { echo "stop ${name}" >> "$order"; }
`;

/** Runs what the services run, recording each call; boot is only recorded (its own tests cover it). */
const wrapper = `#!/bin/sh
echo "$RC_SVCNAME: zdt-agent $1 begins (going down: \${RC_GOINGDOWN:-NO})" >> "$order"
case "$1" in
  boot) exit 0 ;;
  watch) exec "$zdt_agent_real" "$@" ;;
esac
"$zdt_agent_real" "$@"
rc=$?
echo "$RC_SVCNAME: zdt-agent $1 ends ($rc)" >> "$order"
exit $rc
`;

beforeAll(async () => {
  if (!ready) return;
  moto = await startMoto();
  proxy = await startFidelityProxy({ target: moto.endpoint });
  events = await startEventQueue(proxy.endpoint, 'zdt-openrc-events');
  await createAsgWithHook(proxy.endpoint, ASG, HOOK);
  kube = await startKube();
  await ensureNamespace(kube.admin, 'app');
  await applyNodeSelfDeleteRbac(kube.admin);
  // The kubelet finishes evicted pods only after 6 s: the drain is long enough to be killed in.
  kubelet = await startFakeKubelet(kube, NODE, { finaliseAfterMs: 6000 });
  await createPod(kube.admin, { namespace: 'app', name: 'web-1', node: NODE, owner: { kind: 'ReplicaSet', name: 'web' } });
  imdsPort = await freePort();
  await serveImds();

  root = await makeTempRoot();
  await kube.writeNodeKubeconfig(NODE, root.at('/etc/kubernetes/kubelet.conf'));
  const config: ConfigInput = {
    cluster: { name: 'prod' },
    node: { role: 'worker' },
    notify: { snsTopicArn: events.topicArn },
    terminate: { budget: 60, drainTimeout: 40, heartbeatInterval: 2 },
    aws: { ...awsConfig(proxy.endpoint), imdsEndpoint: imds.endpoint },
    watch: { interval: 0.5, backoffMax: 2 },
  };
  fs.mkdirSync(root.at('/etc/zdt-agent'), { recursive: true });
  fs.writeFileSync(root.at('/etc/zdt-agent/config.yaml'), stringify(config));
  fs.writeFileSync(root.at('/order'), '');
  fs.writeFileSync(root.at('/zdt-agent'), wrapper, { mode: 0o755 });

  const rcConf = `# The test's rc.conf (bind-mounted over /etc/rc.conf in the namespace).
order='${root.at('/order')}'
zdt_agent='${root.at('/zdt-agent')}'
zdt_agent_real='${BIN}'
zdt_agent_opts='--root ${root.dir}'
export order zdt_agent_real
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_REGION=${REGION}
`;
  const services: Record<string, string> = {
    stubnet: '#!/sbin/openrc-run\ndepend() { provide net; }\nstart() { return 0; }\nstop() { return 0; }\n',
    kubelet: recorder('kubelet', 'need net'),
  };
  for (const s of ['zdt-agent-boot', 'zdt-agent', 'zdt-agent-watch']) services[s] = fs.readFileSync(path.join(OPENRC, s), 'utf8');
  rc = await startOpenRc({ services, rcConf, runlevel: ['stubnet', 'kubelet', 'zdt-agent-boot', 'zdt-agent', 'zdt-agent-watch'] });
}, 180_000);

afterAll(async () => {
  await rc?.stop();
  await kubelet?.stop();
  await kube?.stop();
  await imds?.stop();
  await proxy?.stop();
  await moto?.stop();
  await root?.cleanup();
});

describe.skipIf(!ready)('the OpenRC services under real OpenRC (private namespace)', () => {
  it('zdt-agent-boot starts before the kubelet; the watcher starts after zdt-agent and polls', async () => {
    const r = await rc.sh('openrc default');
    expect(r.code, r.out).toBe(0);
    // supervise-daemon starts the watcher on its own time: openrc may return first.
    await until('the watcher to start', () => order().find((l) => l.startsWith('zdt-agent-watch: zdt-agent watch begins')));
    const o = order();
    expect(o.indexOf('zdt-agent-boot: zdt-agent boot begins (going down: NO)')).toBeGreaterThanOrEqual(0);
    expect(o.indexOf('zdt-agent-boot: zdt-agent boot begins (going down: NO)')).toBeLessThan(o.indexOf('start kubelet'));
    expect(o.indexOf('start kubelet')).toBeLessThan(o.indexOf('zdt-agent-watch: zdt-agent watch begins (going down: NO)'));
    await until('the watcher to poll', () => state().watch?.lastPollAt);
    expect((await rc.sh('rc-service zdt-agent-watch status')).out).toMatch(/started/);
  });

  it('supervise-daemon starts a killed watcher again', async () => {
    const before = state().watch!;
    const k = await rc.sh(`kill -9 ${before.pid}`);
    expect(k.code, k.out).toBe(0);
    const after = await until('a new watcher', () => (state().watch && state().watch!.pid !== before.pid ? state().watch : undefined));
    expect(after.startedAt > before.startedAt).toBe(true);
  });

  it('a stop outside a shutdown retires nothing', async () => {
    const r = await rc.sh('rc-service zdt-agent stop; rc-service zdt-agent-watch restart; rc-service zdt-agent start');
    expect(r.code, r.out).toBe(0);
    expect(r.out).toMatch(/not going down: this node was not retired/);
    expect(order().some((l) => l.includes('zdt-agent terminate'))).toBe(false);
    expect(state().terminate).toBeUndefined();
    expect((await kube.admin.raw('GET', `/api/v1/nodes/${NODE}`)).status).toBe(200);
  });

  it('a watcher SIGKILLed in the middle of a drain is restarted and completes the retire once', async () => {
    await events.drain();
    // Scale-in: the lifecycle state turns Terminated (AEMM restarted on the same port).
    await serveImds({ targetLifecycleState: 'Terminated' });
    // Mid-drain: the eviction was accepted and the pod is terminating (the kubelet waits 6 s).
    await until('the drain to be under way', async () => {
      const pod = await kube.admin.raw<{ metadata?: { deletionTimestamp?: string } }>('GET', '/api/v1/namespaces/app/pods/web-1');
      return pod.body.metadata?.deletionTimestamp;
    });
    const killed = state().watch!;
    expect(killed.events[EVENT_ID]).toMatchObject({ status: 'acting', action: 'retire' });
    expect(state().terminate?.phases.drain).toBeUndefined();
    expect((await rc.sh(`kill -9 ${killed.pid}`)).code).toBe(0);

    const done = await until('the resumed retire to finish', () => (state().watch?.events[EVENT_ID]?.status === 'done' ? state() : undefined));
    expect(done.watch!.pid).not.toBe(killed.pid);
    expect(done.watch!.events[EVENT_ID]).toMatchObject({ result: 'ok' });
    expect(done.terminate).toMatchObject({ result: 'ok', trigger: { eventId: EVENT_ID } });
    expect((await kube.admin.raw('GET', `/api/v1/nodes/${NODE}`)).status).toBe(404);
    expect(proxy.recorded('CompleteLifecycleAction').filter((c) => c.params.InstanceId === INSTANCE)).toHaveLength(1);
    const messages = await events.drain();
    expect(messages.filter((m: AgentEvent) => m.event === 'interruption.noticed')).toHaveLength(1);
    expect(messages.filter((m: AgentEvent) => m.event === 'terminate.finished').map((m) => m.details.result)).toEqual(['ok']);
  });

  it('at shutdown the watcher stops first; zdt-agent terminate, before the kubelet, finds the retire done', async () => {
    const r = await rc.sh('openrc shutdown');
    expect(r.code, r.out).toBe(0);
    const o = order();
    const terminateBegins = o.indexOf('zdt-agent: zdt-agent terminate begins (going down: YES)');
    const terminateEnds = o.indexOf('zdt-agent: zdt-agent terminate ends (0)');
    expect(terminateBegins).toBeGreaterThan(0);
    expect(terminateEnds).toBeGreaterThan(terminateBegins);
    expect(terminateEnds).toBeLessThan(o.indexOf('stop kubelet'));
    const s = state();
    // The watcher was gone before terminate began: its last write precedes terminate's start.
    expect(s.watch!.lastPollAt! <= s.terminate!.startedAt).toBe(true);
    expect(s.terminate!.trigger).toBeUndefined();
    expect(s.terminate).toMatchObject({ result: 'ok', event: 'terminate' });
    for (const step of ['drain', 'self-delete', 'lifecycle']) expect(s.terminate!.phases[step]!.detail, step).toMatch(/^done earlier by the watcher's run/);
    expect(proxy.recorded('CompleteLifecycleAction').filter((c) => c.params.InstanceId === INSTANCE)).toHaveLength(1);
    const ms = Date.parse(s.terminate!.finishedAt!) - Date.parse(s.terminate!.startedAt);
    process.stderr.write(`openrc test: the shutdown's terminate after the watcher's retire took ${ms} ms (in the run)\n`);
  });
});
