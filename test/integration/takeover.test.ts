import { DescribeInstancesCommand } from '@aws-sdk/client-ec2';
import { CreateTopicCommand, SNSClient, SubscribeCommand } from '@aws-sdk/client-sns';
import { CreateQueueCommand, GetQueueAttributesCommand, ReceiveMessageCommand, SQSClient } from '@aws-sdk/client-sqs';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { runPlan } from '../../agent/commands/plan.js';
import type { AgentEvent } from '../../agent/notify/events.js';
import { runBoot } from '../../agent/boot/run.js';
import { takeoverPhase } from '../../agent/boot/takeover.js';
import type { ConfigInput } from '../../agent/config/schema.js';
import { AgentError } from '../../agent/errors.js';
import { formatState, readState } from '../../agent/log/state.js';
import { startImds, type Imds } from '../testbed/imds.js';
import { makeTempRoot, type TempRoot } from '../testbed/root.js';
import { contextFor } from '../support/terminate-env.js';
import { createSubnet, launchNat, predecessorHoldingEverything, whereNatPoints, type NatResources } from '../support/takeover-env.js';
import { AZ, REGION, awsSection, credentials, bootDepsFor, identityOf, phaseContext, startAwsWorld, type AwsWorld } from '../support/boot-env.js';

/**
 * NAT takeover (agent/boot/takeover.ts) against moto behind the fidelity proxy: a predecessor
 * instance holds the Elastic IP, the static ENI and the default route; a replacement launched
 * later takes them over, in the order, and verifies. Faults mid-way, the re-run
 * converging, two replacements racing, and a readiness command that never succeeds.
 */

let w: AwsWorld;
const roots: TempRoot[] = [];
const imdses: Imds[] = [];
let subnetId: string;
let topicArn: string;
let queueUrl: string;
let sqs: SQSClient;

beforeAll(async () => {
  w = await startAwsWorld();
  const common = { region: REGION, endpoint: w.proxy.endpoint, credentials };
  sqs = new SQSClient(common);
  const sns = new SNSClient(common);
  topicArn = (await sns.send(new CreateTopicCommand({ Name: 'takeover-events' }))).TopicArn!;
  queueUrl = (await sqs.send(new CreateQueueCommand({ QueueName: 'takeover-events' }))).QueueUrl!;
  const queueArn = (await sqs.send(new GetQueueAttributesCommand({ QueueUrl: queueUrl, AttributeNames: ['QueueArn'] }))).Attributes!.QueueArn!;
  await sns.send(new SubscribeCommand({ TopicArn: topicArn, Protocol: 'sqs', Endpoint: queueArn }));
  sns.destroy();
  subnetId = await createSubnet(w);
});
afterEach(async () => {
  w.proxy.clearFaults();
  w.proxy.setEniDetachDelayMs(0);
  for (const r of roots.splice(0)) await r.cleanup();
  for (const i of imdses.splice(0)) await i.stop();
});
afterAll(async () => {
  sqs?.destroy();
  await w?.stop();
});

function natConfig(r: NatResources, o: { staticEni?: boolean; takeover?: Record<string, unknown>; boot?: Record<string, unknown> } = {}): ConfigInput {
  return {
    node: { role: 'nat' },
    takeover: {
      elasticIp: { tags: { 'zdt:nat': r.tag } },
      routeTables: { tags: { 'zdt:nat': r.tag } },
      destinations: ['0.0.0.0/0', '10.99.0.0/16'],
      ...(o.staticEni ? { networkInterfaceId: r.eniId } : {}),
      readinessTimeout: 10,
      eniReleaseTimeout: 40,
      budget: 120,
      ...o.takeover,
    },
    boot: o.boot ?? {},
    aws: awsSection(w.proxy.endpoint),
  };
}

/** Runs the takeover phase on `instanceId` as the boot runner would. */
async function takeover(instanceId: string, config: ConfigInput) {
  const root = await makeTempRoot();
  roots.push(root);
  const ctx = phaseContext(await contextFor(root.dir, config), identityOf({ instanceId }));
  try {
    const outcome = await takeoverPhase.run(ctx);
    return { outcome, error: undefined, record: ctx.state.takeover! };
  } catch (err) {
    return { outcome: undefined, error: err as AgentError, record: ctx.state.takeover! };
  }
}

/** The SNS events of the given instance published so far (through the subscribed queue). */
async function eventsOf(instanceId: string, n: number): Promise<AgentEvent[]> {
  const out: AgentEvent[] = [];
  const deadline = Date.now() + 20_000;
  while (out.length < n && Date.now() < deadline) {
    const r = await sqs.send(new ReceiveMessageCommand({ QueueUrl: queueUrl, MaxNumberOfMessages: 10, WaitTimeSeconds: 1 }));
    for (const m of r.Messages ?? []) {
      const ev = JSON.parse((JSON.parse(m.Body!) as { Message: string }).Message) as AgentEvent;
      if (ev.instance.id === instanceId) out.push(ev);
    }
  }
  return out;
}

async function sourceDestCheck(instanceId: string): Promise<boolean | undefined> {
  return (await w.ec2.send(new DescribeInstancesCommand({ InstanceIds: [instanceId] }))).Reservations![0]!.Instances![0]!.SourceDestCheck;
}

describe('a NAT replacement takes over from its predecessor', () => {
  it('moves the ENI, the Elastic IP and the routes (replacing one, creating the missing one), turns source/dest check off, verifies; a re-run changes nothing', async () => {
    const r = await predecessorHoldingEverything(w, subnetId);
    const fresh = await launchNat(w, subnetId);
    const first = await takeover(fresh.id, natConfig(r, { staticEni: true }));
    expect(first.error).toBeUndefined();
    expect(first.outcome!.changed).toBe(true);
    expect(await whereNatPoints(w, r)).toEqual({ eip: fresh.id, eni: fresh.id, defaultRoute: fresh.id, otherRoute: fresh.id });
    expect(await sourceDestCheck(fresh.id)).toBe(false);
    // In the order: the ENI first, then the address, then the routes.
    expect(first.record.moved.map((m) => m.what.split(' ')[0])).toEqual(['ENI', 'Elastic', 'route', 'route']);
    expect(first.record.moved.map((m) => m.from)).toEqual([r.old.id, r.old.id, r.old.id, 'nothing (no route)']);
    expect(first.record.from).toEqual([r.old.id]);
    expect(first.record.interruptionMs).toBeGreaterThan(0);

    const again = await takeover(fresh.id, natConfig(r, { staticEni: true }));
    expect(again.error).toBeUndefined();
    expect(again.outcome!.changed).toBe(false);
    expect(again.record.moved).toEqual([]);
  });

  it('with the route target the primary ENI (no static ENI): routes point at the new instance', async () => {
    const r = await predecessorHoldingEverything(w, subnetId);
    const fresh = await launchNat(w, subnetId);
    const run = await takeover(fresh.id, natConfig(r));
    expect(run.error).toBeUndefined();
    const now = await whereNatPoints(w, r);
    expect(now).toMatchObject({ eip: fresh.id, defaultRoute: fresh.id, otherRoute: fresh.id });
    // The static ENI is not configured: it stays where it was.
    expect(now.eni).toBe(r.old.id);
  });
});

describe('faults mid-way, and the re-run converging', () => {
  it('connections reset at the association, then route replace throttled a few times: retried with backoff, the same run converges', async () => {
    const r = await predecessorHoldingEverything(w, subnetId);
    const fresh = await launchNat(w, subnetId);
    w.proxy.inject({ action: 'AssociateAddress', kind: 'reset', times: 4 });
    w.proxy.inject({ action: 'ReplaceRoute', kind: 'throttle', times: 6 });
    const run = await takeover(fresh.id, natConfig(r));
    expect(run.error).toBeUndefined();
    expect(await whereNatPoints(w, r)).toMatchObject({ eip: fresh.id, defaultRoute: fresh.id });
  });

  it('answers lost after the ENI attach and the route create went through: the retries find them done, the same run converges', async () => {
    const r = await predecessorHoldingEverything(w, subnetId);
    const fresh = await launchNat(w, subnetId);
    w.proxy.inject({ action: 'AttachNetworkInterface', kind: 'lost', times: 1 });
    w.proxy.inject({ action: 'CreateRoute', kind: 'lost', times: 1 });
    const calls = () => ['AttachNetworkInterface', 'CreateRoute', 'ReplaceRoute'].map((a) => w.proxy.calls(a));
    const before = calls();
    const run = await takeover(fresh.id, natConfig(r, { staticEni: true }));
    expect(run.error).toBeUndefined();
    // Each lost call was sent again (attach: InUse by this instance; create: RouteAlreadyExists, then replaced).
    expect(calls().map((n, i) => n - before[i]!)).toEqual([2, 2, 2]);
    expect(await whereNatPoints(w, r)).toEqual({ eip: fresh.id, eni: fresh.id, defaultRoute: fresh.id, otherRoute: fresh.id });
  });

  it('association done, then route replace throttled without end: the phase fails with the address moved, the re-run moves only the routes', async () => {
    const r = await predecessorHoldingEverything(w, subnetId);
    const fresh = await launchNat(w, subnetId);
    w.proxy.inject({ action: 'ReplaceRoute', kind: 'throttle' });
    const failed = await takeover(fresh.id, natConfig(r, { takeover: { readinessTimeout: 5, eniReleaseTimeout: 5, budget: 20 } }));
    expect(failed.error?.code).toBe('TakeoverCallFailed');
    expect(failed.error?.message).toMatch(/RequestLimitExceeded|injected throttle/);
    expect(failed.record.result).toBe('failed');
    expect(await whereNatPoints(w, r)).toMatchObject({ eip: fresh.id, defaultRoute: r.old.id });

    w.proxy.clearFaults();
    const rerun = await takeover(fresh.id, natConfig(r));
    expect(rerun.error).toBeUndefined();
    expect(rerun.record.moved.map((m) => m.what)).toEqual([`route 0.0.0.0/0 in ${r.tableId}`, `route 10.99.0.0/16 in ${r.tableId}`]);
    expect(await whereNatPoints(w, r)).toMatchObject({ eip: fresh.id, defaultRoute: fresh.id, otherRoute: fresh.id });
  });

  it('the ENI stays attached to the old instance for 6 s after the detach: the replacement waits, never attaches while it is in use, then takes everything', async () => {
    const r = await predecessorHoldingEverything(w, subnetId);
    const fresh = await launchNat(w, subnetId);
    w.proxy.setEniDetachDelayMs(6_000);
    const attachesBefore = w.proxy.calls('AttachNetworkInterface');
    const run = await takeover(fresh.id, natConfig(r, { staticEni: true }));
    expect(run.error).toBeUndefined();
    expect(w.proxy.calls('AttachNetworkInterface') - attachesBefore).toBe(1);
    expect(await whereNatPoints(w, r)).toEqual({ eip: fresh.id, eni: fresh.id, defaultRoute: fresh.id, otherRoute: fresh.id });
  }, 120_000);

  it('an ENI release slower than eniReleaseTimeout fails before the address and routes move; the re-run converges', async () => {
    const r = await predecessorHoldingEverything(w, subnetId);
    const fresh = await launchNat(w, subnetId);
    w.proxy.setEniDetachDelayMs(20_000);
    const failed = await takeover(fresh.id, natConfig(r, { staticEni: true, takeover: { eniReleaseTimeout: 3 } }));
    expect(failed.error?.code).toBe('TakeoverEniNotReleased');
    expect(await whereNatPoints(w, r)).toMatchObject({ eip: r.old.id, defaultRoute: r.old.id });
    w.proxy.setEniDetachDelayMs(0);
    const rerun = await takeover(fresh.id, natConfig(r, { staticEni: true }));
    expect(rerun.error).toBeUndefined();
    expect(await whereNatPoints(w, r)).toEqual({ eip: fresh.id, eni: fresh.id, defaultRoute: fresh.id, otherRoute: fresh.id });
  }, 120_000);
});

describe('coordination without a lock', () => {
  it('two replacements: the later-launched wins; the earlier one, interrupted mid-way, stands down on its re-run; the predecessor never takes anything back', async () => {
    const r = await predecessorHoldingEverything(w, subnetId);
    const earlier = await launchNat(w, subnetId);
    const later = await launchNat(w, subnetId);
    // The earlier replacement gets the address, then its route replace is refused.
    w.proxy.inject({ action: 'ReplaceRoute', kind: 'error', status: 400, code: 'UnauthorizedOperation', message: 'injected', times: 1 });
    const a1 = await takeover(earlier.id, natConfig(r));
    expect(a1.error?.message).toContain('injected');
    expect(await whereNatPoints(w, r)).toMatchObject({ eip: earlier.id, defaultRoute: r.old.id });

    // The later one takes the address from the earlier one and the routes from the predecessor.
    const b = await takeover(later.id, natConfig(r));
    expect(b.error).toBeUndefined();
    expect(b.record.from.sort()).toEqual([earlier.id, r.old.id].sort());

    const a2 = await takeover(earlier.id, natConfig(r));
    expect(a2.error?.code).toBe('TakeoverStoodDown');
    expect(a2.error?.message).toContain(`held by ${later.id}`);
    expect(a2.record).toMatchObject({ result: 'stood-down', moved: [] });

    const old = await takeover(r.old.id, natConfig(r));
    expect(old.error?.code).toBe('TakeoverStoodDown');
    expect(await whereNatPoints(w, r)).toMatchObject({ eip: later.id, defaultRoute: later.id, otherRoute: later.id });
  }, 120_000);

  it('run at the same time, the later-launched replacement ends up holding everything', async () => {
    const r = await predecessorHoldingEverything(w, subnetId);
    const earlier = await launchNat(w, subnetId);
    const later = await launchNat(w, subnetId);
    const [a, b] = await Promise.all([takeover(earlier.id, natConfig(r)), takeover(later.id, natConfig(r))]);
    expect(b.error).toBeUndefined();
    // The earlier one either finished before the later one began (and was then replaced by it) or stood down.
    if (a.error) expect(a.error.code).toBe('TakeoverStoodDown');
    expect(await whereNatPoints(w, r)).toMatchObject({ eip: later.id, defaultRoute: later.id, otherRoute: later.id });
  }, 120_000);
});

describe('boot with a launch lifecycle hook', () => {
  async function node(instanceId: string, config: ConfigInput) {
    const imds = await startImds({
      instanceId,
      region: REGION,
      availabilityZone: AZ,
      instanceType: 't3.micro',
      privateIp: '10.20.1.9',
      tags: { 'aws:autoscaling:groupName': 'nat-asg' },
    });
    imdses.push(imds);
    const root = await makeTempRoot();
    roots.push(root);
    return bootDepsFor(root.dir, { ...config, aws: { ...config.aws, imdsEndpoint: imds.endpoint } });
  }
  async function boot(instanceId: string, config: ConfigInput) {
    const deps = await node(instanceId, config);
    return { result: await runBoot(deps), state: readState(deps.paths.stateFile, 'test') };
  }
  async function planOf(instanceId: string, config: ConfigInput): Promise<string> {
    const deps = await node(instanceId, config);
    const out: string[] = [];
    const spy = vi.spyOn(process.stdout, 'write').mockImplementation((chunk: string | Uint8Array) => out.push(String(chunk)) > 0);
    try {
      expect(await runPlan({ root: deps.paths.root })).toBe(0);
    } finally {
      spy.mockRestore();
    }
    return out.join('');
  }
  const hookCalls = (instanceId: string) =>
    w.proxy
      .recorded('CompleteLifecycleAction')
      .filter((c) => c.params.InstanceId === instanceId)
      .map((c) => c.params.LifecycleActionResult);

  it('plan shows what would be taken over and from whom; boot completes CONTINUE after the verified takeover; SNS and status name what moved from which instance', async () => {
    const r = await predecessorHoldingEverything(w, subnetId);
    const fresh = await launchNat(w, subnetId);
    const config = { ...natConfig(r, { boot: { launchLifecycleHook: 'launching' } }), notify: { snsTopicArn: topicArn } };

    const plan = await planOf(fresh.id, config);
    expect(plan).toMatch(/run\s+takeover/);
    expect(plan).toContain(`take    Elastic IP`);
    expect(plan).toContain(`take from ${r.old.id}`);
    expect(plan).toContain(`route 10.99.0.0/16 in ${r.tableId}: take from nothing (no route)`);
    expect(await whereNatPoints(w, r)).toMatchObject({ eip: r.old.id, defaultRoute: r.old.id });

    const { result, state } = await boot(fresh.id, config);
    expect(result.ok).toBe(true);
    expect(hookCalls(fresh.id)).toEqual(['CONTINUE']);
    expect(state.boot!.phases.takeover!.result).toBe('ok');
    expect(state.takeover).toMatchObject({ result: 'ok', from: [r.old.id] });
    expect(formatState(state)).toContain(`takeover: ok at ${state.takeover!.at} from ${r.old.id}`);

    const events = await eventsOf(fresh.id, 2);
    expect(events.map((e) => e.event).sort()).toEqual(['boot.succeeded', 'takeover.succeeded']);
    const ev = events.find((e) => e.event === 'takeover.succeeded')!;
    expect(ev.role).toBe('nat');
    expect(ev.details.takeoverFrom).toBe(r.old.id);
    expect(ev.details.takeoverMoved).toContain(`route 0.0.0.0/0 in ${r.tableId} from ${r.old.id}`);
    expect(typeof ev.details.takeoverInterruptionMs).toBe('number');
  }, 120_000);

  it('a readiness command that never succeeds: nothing moves, ABANDON', async () => {
    const r = await predecessorHoldingEverything(w, subnetId);
    const fresh = await launchNat(w, subnetId);
    const calls = () => ['AssociateAddress', 'ReplaceRoute', 'CreateRoute', 'ModifyInstanceAttribute', 'DetachNetworkInterface'].map((a) => w.proxy.calls(a));
    const before = calls();
    const { result, state } = await boot(fresh.id, {
      ...natConfig(r, { staticEni: true, takeover: { readinessCommand: ['false'], readinessTimeout: 3 }, boot: { launchLifecycleHook: 'launching' } }),
      notify: { snsTopicArn: topicArn },
    });
    expect(result.ok).toBe(false);
    expect(result.failedPhase).toBe('takeover');
    expect(result.error?.code).toBe('TakeoverNotReady');
    expect(calls()).toEqual(before);
    expect(hookCalls(fresh.id)).toEqual(['ABANDON']);
    expect(state.takeover?.result).toBe('failed');
    const [ev] = (await eventsOf(fresh.id, 2)).filter((e) => e.event === 'takeover.failed');
    expect(ev?.failure?.error).toMatch(/^TakeoverNotReady/);
    expect(await whereNatPoints(w, r)).toEqual({ eip: r.old.id, eni: r.old.id, defaultRoute: r.old.id, otherRoute: undefined });
    expect(await sourceDestCheck(fresh.id)).not.toBe(false);
  }, 120_000);
});
