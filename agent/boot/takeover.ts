import type { Address, EC2Client, Instance, NetworkInterface, RouteTable } from '@aws-sdk/client-ec2';
import { routingRoles, serviceRoles, type Config } from '../config/schema.js';
import { AgentError, asAgentError } from '../errors.js';
import { sdk } from '../host/aws.js';
import { waitFor } from '../host/retry.js';
import type { Logger } from '../log/logger.js';
import type { TakeoverRecord } from '../log/state.js';
import { buildEvent, publishEvent } from '../notify/events.js';
import { isRetryableEc2 } from './ebs.js';
import type { BootContext, BootPhase, NodeHost, PhaseOutcome } from './context.js';
import type { Identity } from '../host/identity.js';

/**
 * A service host (bastion, nat, vpngw) takes its function over from the instance it replaces
 * (docs/takeover.md): readiness first, then source/dest check off, the static ENI, the
 * Elastic IP, the routes; then everything is described again and must point here. The launch
 * lifecycle hook is completed by the signal phase after this one: CONTINUE only when this
 * phase verified, ABANDON when it failed, so the old instance keeps serving.
 *
 * Coordination without a lock: a resource is taken only from an instance launched earlier
 * than this one (LaunchTime; equal times: the smaller instance id counts as earlier). A
 * resource held by a later instance means a newer replacement won: this host stands down and
 * moves nothing more. Holders are read again right before each step, which narrows the window
 * in which two replacements can cross to one API call; the verification closes it (the earlier
 * of the two sees the later one and stands down, the later one takes the rest).
 */

export const takeoverPhase: BootPhase = {
  name: 'takeover',
  budgetMs: (config) => (config.takeover?.budget ?? 300) * 1000,
  run: async (ctx) => runTakeover(ctx),
};

/** One thing this host must hold. */
export interface Claim {
  kind: 'eni' | 'eip' | 'route';
  /** For the log and the event: "Elastic IP 203.0.113.7 (eipalloc-…)", "route 0.0.0.0/0 in rtb-…". */
  label: string;
  /** The instance holding it now, when one does. */
  holder: string | undefined;
  /** What else it points at (a gateway, a blackhole, nothing) when no instance holds it. */
  elsewhere: string | undefined;
  here: boolean;
  eni?: { id: string; attachmentId: string | undefined; status: string | undefined };
  eip?: { allocationId: string };
  route?: { tableId: string; destination: string; missing: boolean };
}

interface Launched {
  launchTime: Date | undefined;
  az: string | undefined;
  /** Terminated or not found: holds nothing any more. */
  gone: boolean;
}

export interface Survey {
  self: { instanceId: string; launchTime: Date; primaryEni: string; sourceDestCheck: boolean };
  /** Routes and the Elastic IP target this ENI: the static one when configured, else the primary. */
  targetEni: string;
  claims: Claim[];
  instances: Map<string, Launched>;
}

export interface Decision {
  claim: Claim;
  action: 'keep' | 'take' | 'stand-down';
  /** Whom it is taken from: an instance id, or what it points at now. */
  from: string;
}

type TakeoverSettings = NonNullable<Config['takeover']>;

const isRouting = (config: Config) => routingRoles.has(config.node.role);

export function takesOver(config: Config): boolean {
  return serviceRoles.has(config.node.role) && config.takeover !== undefined;
}

/** Launched earlier: LaunchTime, ties broken by the smaller instance id, so both sides agree. */
export function launchedBefore(a: { id: string; at: Date }, b: { id: string; at: Date }): boolean {
  const d = a.at.getTime() - b.at.getTime();
  return d !== 0 ? d < 0 : a.id < b.id;
}

export function decide(s: Survey, claim: Claim): Decision {
  if (claim.here) return { claim, action: 'keep', from: s.self.instanceId };
  const h = claim.holder;
  if (!h) return { claim, action: 'take', from: claim.elsewhere ?? 'nothing' };
  const l = s.instances.get(h);
  if (!l || l.gone || !l.launchTime) return { claim, action: 'take', from: `${h} (gone)` };
  if (h === s.self.instanceId) return { claim, action: 'take', from: h };
  return launchedBefore({ id: h, at: l.launchTime }, { id: s.self.instanceId, at: s.self.launchTime })
    ? { claim, action: 'take', from: h }
    : { claim, action: 'stand-down', from: h };
}

const CONNECTION_ERRORS = ['ECONNRESET', 'ECONNREFUSED', 'EPIPE', 'ETIMEDOUT'];

/** Worth another try: throttling and server errors (isRetryableEc2), and a connection that failed or timed out. */
function isTransient(err: unknown): boolean {
  const e = err as { name?: string; code?: string; $metadata?: { httpStatusCode?: number } } | undefined;
  return (
    isRetryableEc2(err) ||
    ['TimeoutError', 'RequestTimeout', ...CONNECTION_ERRORS].includes(e?.name ?? '') ||
    CONNECTION_ERRORS.includes(e?.code ?? '') ||
    (e?.$metadata?.httpStatusCode ?? 0) >= 500
  );
}

const errorName = (err: unknown): string => (err as { name?: string } | undefined)?.name ?? '';

interface Ec2 {
  client: EC2Client;
  commands: Awaited<ReturnType<typeof sdk.ec2>>;
  /** One EC2 call, retried with jittered backoff on throttling and server errors, bounded. */
  call<T>(what: string, fn: (signal: AbortSignal) => Promise<T>): Promise<T>;
}

async function ec2For(host: NodeHost, log: Logger, signal: AbortSignal, retryMs: number): Promise<Ec2> {
  const client = await host.aws.ec2();
  const commands = await sdk.ec2();
  return {
    client,
    commands,
    call: async (what, fn) => {
      const box = await waitFor({
        what,
        timeoutMs: retryMs,
        initialDelayMs: 250,
        maxDelayMs: 4000,
        progressEveryMs: 10_000,
        code: 'TakeoverCallFailed',
        hint: 'check the EC2 endpoint, API throttling, and the instance role (docs/takeover.md lists the permissions)',
        log,
        signal,
        retryable: isTransient,
        check: async () => ({ v: await fn(signal) }),
      });
      return box.v;
    },
  };
}

/** Reads who holds what; changes nothing (shared by the phase and `zdt-agent plan`). */
export async function surveyTakeover(ec2: Ec2, t: TakeoverSettings, identity: Identity): Promise<Survey> {
  const c = ec2.commands;
  const send = ec2.client.send.bind(ec2.client);
  const selfOut = await ec2.call('DescribeInstances (this instance)', (abortSignal) =>
    send(new c.DescribeInstancesCommand({ InstanceIds: [identity.instanceId] }), { abortSignal }),
  );
  const me = selfOut.Reservations?.[0]?.Instances?.[0];
  const primaryEni = me?.NetworkInterfaces?.find((n) => n.Attachment?.DeviceIndex === 0)?.NetworkInterfaceId;
  if (!me?.LaunchTime || !primaryEni) {
    throw new AgentError('TakeoverSelfUnknown', `EC2 does not describe ${identity.instanceId} with a launch time and a primary network interface`, {
      hint: 'check ec2:DescribeInstances on the instance role',
    });
  }
  const self = { instanceId: identity.instanceId, launchTime: me.LaunchTime, primaryEni, sourceDestCheck: me.SourceDestCheck !== false };
  const targetEni = t.networkInterfaceId ?? primaryEni;

  let addresses: Address[] = [];
  if (t.elasticIp) {
    const filter = t.elasticIp.allocationId
      ? { AllocationIds: [t.elasticIp.allocationId] }
      : { Filters: Object.entries(t.elasticIp.tags ?? {}).map(([k, v]) => ({ Name: `tag:${k}`, Values: [v] })) };
    addresses = (await ec2.call('DescribeAddresses', (abortSignal) => send(new c.DescribeAddressesCommand(filter), { abortSignal }))).Addresses ?? [];
    if (addresses.length === 0) {
      throw new AgentError('TakeoverAddressNotFound', `no Elastic IP ${t.elasticIp.allocationId ?? `tagged ${tagText(t.elasticIp.tags)}`}`, {
        hint: 'check takeover.elasticIp and the address in the stack',
      });
    }
  }
  let eni: NetworkInterface | undefined;
  if (t.networkInterfaceId) {
    const out = await ec2.call('DescribeNetworkInterfaces (static ENI)', (abortSignal) =>
      send(new c.DescribeNetworkInterfacesCommand({ NetworkInterfaceIds: [t.networkInterfaceId!] }), { abortSignal }),
    );
    eni = out.NetworkInterfaces?.[0];
  }
  let tables: RouteTable[] = [];
  if (t.routeTables) {
    const filter = t.routeTables.ids
      ? { RouteTableIds: t.routeTables.ids }
      : { Filters: Object.entries(t.routeTables.tags ?? {}).map(([k, v]) => ({ Name: `tag:${k}`, Values: [v] })) };
    tables = (await ec2.call('DescribeRouteTables', (abortSignal) => send(new c.DescribeRouteTablesCommand(filter), { abortSignal }))).RouteTables ?? [];
    if (tables.length === 0) {
      throw new AgentError('TakeoverRouteTablesNotFound', `no route table ${t.routeTables.ids?.join(', ') ?? `tagged ${tagText(t.routeTables.tags)}`}`, {
        hint: 'check takeover.routeTables',
      });
    }
  }

  // Which instance each foreign ENI (of an address or a route) is attached to.
  const eniIds = new Set<string>();
  for (const a of addresses) if (a.NetworkInterfaceId && !a.InstanceId) eniIds.add(a.NetworkInterfaceId);
  for (const rt of tables) for (const r of rt.Routes ?? []) if (r.NetworkInterfaceId && !r.InstanceId) eniIds.add(r.NetworkInterfaceId);
  eniIds.delete(targetEni);
  const eniOwner = new Map<string, string>();
  if (eniIds.size) {
    const out = await ec2.call('DescribeNetworkInterfaces (route targets)', (abortSignal) =>
      send(new c.DescribeNetworkInterfacesCommand({ Filters: [{ Name: 'network-interface-id', Values: [...eniIds] }] }), { abortSignal }),
    );
    for (const n of out.NetworkInterfaces ?? []) if (n.NetworkInterfaceId && n.Attachment?.InstanceId) eniOwner.set(n.NetworkInterfaceId, n.Attachment.InstanceId);
  }
  const ownerOf = (instanceId: string | undefined, eniId: string | undefined) =>
    instanceId || (eniId === targetEni && t.networkInterfaceId ? eni?.Attachment?.InstanceId : eniId === primaryEni ? self.instanceId : eniId ? eniOwner.get(eniId) : undefined);

  const claims: Claim[] = [];
  if (eni) {
    const a = eni.Attachment;
    const status = a?.Status;
    claims.push({
      kind: 'eni',
      label: `ENI ${eni.NetworkInterfaceId}`,
      holder: a?.InstanceId,
      elsewhere: a?.InstanceId ? undefined : 'nothing (available)',
      here: a?.InstanceId === self.instanceId && status === 'attached',
      eni: { id: eni.NetworkInterfaceId!, attachmentId: a?.AttachmentId, status },
    });
  } else if (t.networkInterfaceId) {
    throw new AgentError('TakeoverEniNotFound', `no network interface ${t.networkInterfaceId}`, { hint: 'check takeover.networkInterfaceId' });
  }
  const addressClaims = addresses.map((a): Claim => {
    const holder = ownerOf(a.InstanceId, a.NetworkInterfaceId);
    return {
      kind: 'eip',
      label: `Elastic IP ${a.PublicIp} (${a.AllocationId})`,
      holder,
      elsewhere: holder ? undefined : 'nothing (unassociated)',
      here: holder === self.instanceId && (!t.networkInterfaceId || a.NetworkInterfaceId === targetEni),
      eip: { allocationId: a.AllocationId! },
    };
  });
  for (const rt of tables) {
    for (const destination of t.destinations) {
      const r = rt.Routes?.find((x) => x.DestinationCidrBlock === destination || x.DestinationIpv6CidrBlock === destination);
      const holder = r ? ownerOf(r.InstanceId, r.NetworkInterfaceId) : undefined;
      const gateway = r?.GatewayId ?? r?.NatGatewayId ?? r?.TransitGatewayId ?? r?.VpcPeeringConnectionId;
      claims.push({
        kind: 'route',
        label: `route ${destination} in ${rt.RouteTableId}`,
        holder,
        elsewhere: holder ? undefined : !r ? 'nothing (no route)' : gateway ?? (r.State === 'blackhole' ? 'a blackhole' : 'nothing'),
        here: r?.NetworkInterfaceId === targetEni && r.State !== 'blackhole',
        route: { tableId: rt.RouteTableId!, destination, missing: !r },
      });
    }
  }

  const holderIds = new Set<string>();
  for (const cl of [...claims, ...addressClaims]) if (cl.holder && cl.holder !== self.instanceId) holderIds.add(cl.holder);
  const instances = new Map<string, Launched>();
  if (holderIds.size) {
    const out = await ec2.call('DescribeInstances (holders)', (abortSignal) =>
      send(new c.DescribeInstancesCommand({ Filters: [{ Name: 'instance-id', Values: [...holderIds] }] }), { abortSignal }),
    );
    for (const i of (out.Reservations ?? []).flatMap((r) => r.Instances ?? []) as Instance[]) {
      instances.set(i.InstanceId!, {
        launchTime: i.LaunchTime,
        az: i.Placement?.AvailabilityZone,
        gone: ['terminated', 'shutting-down'].includes(i.State?.Name ?? ''),
      });
    }
  }
  const s: Survey = { self, targetEni, claims, instances };
  if (addressClaims.length) s.claims.splice(eni ? 1 : 0, 0, pickAddress(s, addressClaims, identity.availabilityZone, t));
  return s;
}

/**
 * The one Elastic IP of the configured id or pool: the one held here; else a free one; else
 * one an earlier instance in this AZ holds (a pool may serve NAT hosts in several AZs, which
 * must not take each other's addresses); else one a later instance holds (which makes this
 * host stand down).
 */
function pickAddress(s: Survey, claims: Claim[], az: string, t: TakeoverSettings): Claim {
  if (claims.length === 1 && t.elasticIp?.allocationId) return claims[0]!;
  const ranked = (cl: Claim): number => {
    if (cl.here) return 0;
    const d = decide(s, cl);
    if (d.action === 'take' && !cl.holder) return 1;
    const l = cl.holder ? s.instances.get(cl.holder) : undefined;
    if (d.action === 'take' && (l?.gone || l?.az === az)) return 2;
    if (d.action === 'stand-down' && l?.az === az) return 3;
    return 9;
  };
  const best = [...claims].sort((a, b) => ranked(a) - ranked(b))[0]!;
  if (ranked(best) === 9) {
    throw new AgentError('TakeoverNoAddress', `every Elastic IP tagged ${tagText(t.elasticIp?.tags)} is held by an instance in another availability zone`, {
      hint: `add an address to the pool for ${az}`,
    });
  }
  return best;
}

const tagText = (tags: Record<string, string> | undefined) =>
  Object.entries(tags ?? {})
    .map(([k, v]) => `${k}=${v}`)
    .join(', ');

/** Throws when a later instance holds anything: it won, this host moves nothing more. */
function standDownIfLater(s: Survey): Decision[] {
  const ds = s.claims.map((cl) => decide(s, cl));
  const later = ds.filter((d) => d.action === 'stand-down');
  if (later.length) {
    const by = [...new Set(later.map((d) => d.from))].join(', ');
    throw new AgentError(
      'TakeoverStoodDown',
      `${later.map((d) => d.claim.label).join(', ')} ${later.length === 1 ? 'is' : 'are'} held by ${by}, launched after ${s.self.instanceId}: it replaces this host, which stands down`,
      { hint: 'expected when two replacements race (the later-launched wins); this instance is abandoned and terminated by its Auto Scaling group' },
    );
  }
  return ds;
}

/** A takeover that has not moved anything yet; takeOver fills it in as it goes. */
export function newTakeoverRecord(): TakeoverRecord {
  return { at: new Date().toISOString(), result: 'failed', moved: [], from: [], totalMs: 0 };
}

/**
 * The takeover itself, filling `rec` as it goes, so that after a failure it still says what
 * had moved. Returns whether anything changed. Used by the phase, the bench and the tests.
 */
export async function takeOver(host: NodeHost, identity: Identity, log: Logger, signal: AbortSignal, rec: TakeoverRecord): Promise<{ changed: boolean }> {
  const t = host.config.takeover!;
  const t0 = performance.now();
  const since = () => Math.round(performance.now() - t0);
  const moved = rec.moved;
  const noteMoved = (what: string, from: string) => {
    moved.push({ what, from, atMs: since() });
    const instance = from.replace(/ \(gone\)$/, '');
    if (instance.startsWith('i-') && instance !== identity.instanceId && !rec.from.includes(instance)) rec.from.push(instance);
  };
  try {
    return await steps();
  } catch (err) {
    const e = asAgentError(err);
    Object.assign(rec, { at: new Date().toISOString(), result: e.code === 'TakeoverStoodDown' ? 'stood-down' : 'failed', error: e.oneLine(), totalMs: since() });
    throw e;
  }

  async function steps(): Promise<{ changed: boolean }> {
    if (t.readinessCommand) {
      await waitUntilReady(host, t, log, signal);
      rec.readyMs = since();
    }
    const ec2 = await ec2For(host, log, signal, Math.min(60_000, (t.budget * 1000) / 4));
    const c = ec2.commands;
    const send = ec2.client.send.bind(ec2.client);
    let firstMoveMs: number | undefined;
    const move = async (d: Decision, what: string, fn: (abortSignal: AbortSignal) => Promise<unknown>) => {
      firstMoveMs ??= since();
      log.info(`taking over ${d.claim.label}`, { from: d.from });
      await ec2.call(what, fn);
      noteMoved(d.claim.label, d.from);
    };
    let sourceDestChanged = false;
    for (let round = 1; round <= 3; round++) {
      let s = await surveyTakeover(ec2, t, identity);
      standDownIfLater(s);
      if (isRouting(host.config) && s.self.sourceDestCheck) {
        await ec2.call('ModifyInstanceAttribute SourceDestCheck=false', (abortSignal) =>
          send(new c.ModifyInstanceAttributeCommand({ InstanceId: identity.instanceId, SourceDestCheck: { Value: false } }), { abortSignal }),
        );
        sourceDestChanged = true;
      }
      for (const kind of ['eni', 'eip', 'route'] as const) {
        // Read again right before each step: a later replacement may have taken over meanwhile.
        if (kind !== 'eni') s = await surveyTakeover(ec2, t, identity);
        for (const d of standDownIfLater(s).filter((x) => x.claim.kind === kind && x.action === 'take')) {
          if (kind === 'eni') await moveEni(d);
          if (kind === 'eip') {
            const target = t.networkInterfaceId ? { NetworkInterfaceId: s.targetEni } : { InstanceId: identity.instanceId };
            await move(d, `AssociateAddress ${d.claim.eip!.allocationId}`, (abortSignal) =>
              send(new c.AssociateAddressCommand({ AllocationId: d.claim.eip!.allocationId, AllowReassociation: true, ...target }), { abortSignal }),
            );
          }
          if (kind === 'route') {
            const r = d.claim.route!;
            const dest = r.destination.includes(':') ? { DestinationIpv6CidrBlock: r.destination } : { DestinationCidrBlock: r.destination };
            const input = { RouteTableId: r.tableId, NetworkInterfaceId: s.targetEni, ...dest };
            // A create whose answer was lost and is retried finds its own route: replaced then, as any other.
            await move(d, `${r.missing ? 'CreateRoute' : 'ReplaceRoute'} ${r.destination} in ${r.tableId}`, (abortSignal) =>
              r.missing
                ? send(new c.CreateRouteCommand(input), { abortSignal }).catch((err: unknown) => {
                    if (errorName(err) !== 'RouteAlreadyExists') throw err;
                    return send(new c.ReplaceRouteCommand(input), { abortSignal });
                  })
                : send(new c.ReplaceRouteCommand(input), { abortSignal }),
            );
          }
        }
      }
      const lastMoveMs = moved.length ? moved[moved.length - 1]!.atMs : undefined;
      const v = await surveyTakeover(ec2, t, identity);
      const ds = standDownIfLater(v);
      const missing = ds.filter((d) => d.action !== 'keep');
      const srcDst = isRouting(host.config) && v.self.sourceDestCheck;
      if (!missing.length && !srcDst) {
        const verifiedMs = since();
        Object.assign(rec, {
          at: new Date().toISOString(),
          result: 'ok',
          interruptionMs: firstMoveMs !== undefined ? verifiedMs - firstMoveMs : undefined,
          lastMoveMs,
          totalMs: verifiedMs,
        });
        log.info('takeover verified', { moved: moved.length, interruptionMs: rec.interruptionMs });
        return { changed: moved.length > 0 || sourceDestChanged };
      }
      log.warn('takeover not verified yet, another round', { round, pending: missing.map((d) => `${d.claim.label} (${d.from})`).join('; '), sourceDestCheck: srcDst });
    }
    throw new AgentError('TakeoverNotVerified', 'after 3 rounds not everything points at this instance', {
      hint: 'something else moves these resources too (another agent, a Lambda, a NAT script); see the log for what stayed elsewhere',
    });

    async function moveEni(d: Decision): Promise<void> {
      const e = d.claim.eni!;
      const describeEni = async () =>
        (await ec2.call('DescribeNetworkInterfaces (static ENI)', (abortSignal) =>
          send(new c.DescribeNetworkInterfacesCommand({ NetworkInterfaceIds: [e.id] }), { abortSignal }),
        )).NetworkInterfaces?.[0];
      firstMoveMs ??= since();
      if (d.claim.holder && d.claim.holder !== identity.instanceId) {
        if (e.status !== 'detaching') {
          log.info(`detaching ${d.claim.label} from ${d.claim.holder}`);
          await ec2.call(`DetachNetworkInterface ${e.id}`, (abortSignal) =>
            send(new c.DetachNetworkInterfaceCommand({ AttachmentId: e.attachmentId! }), { abortSignal }),
          );
        }
        await waitFor({
          what: `${d.claim.holder} to release ${e.id}`,
          timeoutMs: t.eniReleaseTimeout * 1000,
          initialDelayMs: 500,
          maxDelayMs: 3000,
          progressEveryMs: 10_000,
          code: 'TakeoverEniNotReleased',
          hint: `the previous holder ${d.claim.holder} did not release the ENI; it keeps serving (check the instance, or raise takeover.eniReleaseTimeout)`,
          log,
          signal,
          retryable: isRetryableEc2,
          check: async () => ((await describeEni())?.Status === 'available' ? true : undefined),
        });
      }
      // An attach whose answer was lost and is retried finds the ENI in use: by this instance, that is success.
      await move(d, `AttachNetworkInterface ${e.id}`, (abortSignal) =>
        send(new c.AttachNetworkInterfaceCommand({ NetworkInterfaceId: e.id, InstanceId: identity.instanceId, DeviceIndex: 1 }), { abortSignal }).catch(
          async (err: unknown) => {
            if ((await describeEni())?.Attachment?.InstanceId !== identity.instanceId) throw err;
          },
        ),
      );
      const now = await waitFor({
        what: `${e.id} to attach here`,
        timeoutMs: t.eniReleaseTimeout * 1000,
        initialDelayMs: 250,
        maxDelayMs: 2000,
        code: 'TakeoverEniNotAttached',
        hint: 'check the ENI in the console (it must be in this availability zone)',
        log,
        signal,
        retryable: isRetryableEc2,
        check: async () => {
          const n = await describeEni();
          return n?.Attachment?.InstanceId === identity.instanceId && n.Attachment.Status === 'attached' ? n : undefined;
        },
      });
      if (isRouting(host.config) && now.SourceDestCheck !== false) {
        await ec2.call(`ModifyNetworkInterfaceAttribute ${e.id} SourceDestCheck=false`, (abortSignal) =>
          send(new c.ModifyNetworkInterfaceAttributeCommand({ NetworkInterfaceId: e.id, SourceDestCheck: { Value: false } }), { abortSignal }),
        );
      }
    }
  }
}

/** Runs the readiness command until it exits 0, bounded; nothing has moved when this fails. */
async function waitUntilReady(host: NodeHost, t: TakeoverSettings, log: Logger, signal: AbortSignal): Promise<void> {
  const [file, ...args] = t.readinessCommand!;
  await waitFor({
    what: `the readiness command (${t.readinessCommand!.join(' ')}) to succeed`,
    timeoutMs: t.readinessTimeout * 1000,
    initialDelayMs: 500,
    maxDelayMs: 5000,
    progressEveryMs: 15_000,
    code: 'TakeoverNotReady',
    hint: 'this host cannot serve its role yet, so nothing was moved and the old instance keeps serving; run the command by hand to see why',
    log,
    signal,
    retryable: () => true,
    check: async () => {
      await host.exec(file!, args, { timeoutMs: Math.min(30_000, t.readinessTimeout * 1000) });
      return true;
    },
  });
}

async function runTakeover(ctx: BootContext): Promise<PhaseOutcome> {
  const record = newTakeoverRecord();
  let outcome: PhaseOutcome | undefined;
  let failure: AgentError | undefined;
  try {
    const { changed } = await takeOver(ctx, ctx.identity, ctx.log, ctx.signal, record);
    outcome = {
      changed,
      detail: record.moved.length
        ? `took over ${record.moved.map((m) => `${m.what} from ${m.from}`).join(', ')}; verified, interruption ${record.interruptionMs} ms`
        : 'everything already points here (verified)',
    };
  } catch (err) {
    failure = asAgentError(err);
  }
  ctx.state.takeover = record;
  // A re-run that found everything in place sends nothing, like boot.succeeded.
  if (failure || record.moved.length) await publishTakeover(ctx, record, failure);
  if (failure) throw failure;
  return outcome!;
}

/** The event's details: what moved from which instance, and the timings. */
export function takeoverDetails(r: TakeoverRecord): Record<string, string | number | boolean> {
  const d: Record<string, string | number | boolean> = { takeoverResult: r.result, takeoverTotalMs: r.totalMs };
  if (r.moved.length) d.takeoverMoved = r.moved.map((m) => `${m.what} from ${m.from} at +${m.atMs} ms`).join('; ');
  if (r.from.length) d.takeoverFrom = r.from.join(', ');
  if (r.readyMs !== undefined) d.takeoverReadyMs = r.readyMs;
  if (r.interruptionMs !== undefined) d.takeoverInterruptionMs = r.interruptionMs;
  return d;
}

async function publishTakeover(ctx: BootContext, r: TakeoverRecord, failure: AgentError | undefined): Promise<void> {
  const ev = buildEvent({
    event: failure ? 'takeover.failed' : 'takeover.succeeded',
    config: ctx.config,
    identity: ctx.identity,
    phases: ctx.state.boot?.phases ?? {},
    failure: failure ? { phase: 'takeover', error: failure.oneLine() } : undefined,
    log: ctx.log,
    details: takeoverDetails(r),
  });
  await publishEvent(ctx.aws, ctx.config.notify, ev, ctx.identity, ctx.log);
}

/** `zdt-agent plan`: what would be taken over and from whom; describes only. */
export async function planTakeover(host: NodeHost, identity: Identity): Promise<string> {
  const t = host.config.takeover!;
  const lines = [`takeover would (${host.config.node.role}, this instance ${identity.instanceId}):`];
  if (t.readinessCommand) lines.push(`  first   wait up to ${t.readinessTimeout}s for: ${t.readinessCommand.join(' ')}`);
  try {
    const ec2 = await ec2For(host, host.log, AbortSignal.timeout(60_000), 20_000);
    const s = await surveyTakeover(ec2, t, identity);
    lines.push(`  launched ${s.self.instanceId} at ${s.self.launchTime.toISOString()}`);
    if (isRouting(host.config)) lines.push(`  ${s.self.sourceDestCheck ? 'change ' : 'keep   '} source/dest check off`);
    for (const d of s.claims.map((cl) => decide(s, cl))) {
      const l = d.claim.holder ? s.instances.get(d.claim.holder) : undefined;
      const when = l?.launchTime ? `, launched ${l.launchTime.toISOString()}` : '';
      const text = {
        keep: `${d.claim.label}: already here`,
        take: `${d.claim.label}: take from ${d.from}${when}`,
        'stand-down': `${d.claim.label}: held by ${d.from}${when}, launched later: stand down`,
      }[d.action];
      lines.push(`  ${d.action.padEnd(7)} ${text}`);
    }
  } catch (err) {
    lines.push(`  cannot tell: ${asAgentError(err).oneLine()}`);
  }
  return lines.join('\n');
}
