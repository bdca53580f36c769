import type { EC2Client, Volume } from '@aws-sdk/client-ec2';
import { AgentError } from '../errors.js';
import type { Logger } from '../log/logger.js';
import { waitFor } from '../host/retry.js';
import { sdk } from '../host/aws.js';

/**
 * The EC2 side of the etcd volume: find it by its tags, take it over from a predecessor that
 * is gone, attach it here. Every wait is bounded and names what it waits for.
 */

export interface VolumeFilter {
  clusterTagKey: string;
  cluster: string;
  roleTagKey: string;
  roleTagValue: string;
  availabilityZone: string;
}

export function describeFilter(f: VolumeFilter): string {
  return `${f.clusterTagKey}=${f.cluster}, ${f.roleTagKey}=${f.roleTagValue} in ${f.availabilityZone}`;
}

async function ec2Commands() {
  return sdk.ec2();
}

/** Errors worth another try: throttling, and attach/detach races EC2 reports as state errors. */
export function isRetryableEc2(err: unknown): boolean {
  const name = (err as { name?: string; Code?: string })?.name ?? '';
  return ['VolumeInUse', 'IncorrectState', 'RequestLimitExceeded', 'Throttling', 'ThrottlingException', 'InternalError', 'Unavailable', 'ServiceUnavailable'].includes(name);
}

export async function findEtcdVolume(ec2: EC2Client, f: VolumeFilter): Promise<Volume> {
  const { DescribeVolumesCommand } = await ec2Commands();
  const out = await ec2.send(
    new DescribeVolumesCommand({
      Filters: [
        { Name: `tag:${f.clusterTagKey}`, Values: [f.cluster] },
        { Name: `tag:${f.roleTagKey}`, Values: [f.roleTagValue] },
        { Name: 'availability-zone', Values: [f.availabilityZone] },
      ],
    }),
  );
  const volumes = (out.Volumes ?? []).filter((v) => v.State !== 'deleting' && v.State !== 'deleted');
  if (volumes.length === 0) {
    throw new AgentError('EtcdVolumeNotFound', `no EBS volume tagged ${describeFilter(f)}`, {
      hint: "check the stack's etcd volume resource, its tags (etcd.volume.clusterTagKey / roleTagKey) and its availability zone",
    });
  }
  if (volumes.length > 1) {
    throw new AgentError(
      'EtcdVolumeAmbiguous',
      `${volumes.length} EBS volumes are tagged ${describeFilter(f)}: ${volumes.map((v) => v.VolumeId).join(', ')}`,
      { hint: 'exactly one volume per cluster and availability zone may carry these tags; remove the tags from the stale ones' },
    );
  }
  return volumes[0]!;
}

export async function describeVolume(ec2: EC2Client, volumeId: string): Promise<Volume> {
  const { DescribeVolumesCommand } = await ec2Commands();
  const out = await ec2.send(new DescribeVolumesCommand({ VolumeIds: [volumeId] }));
  const v = out.Volumes?.[0];
  if (!v) throw new AgentError('EtcdVolumeGone', `${volumeId} no longer exists`, { hint: 'check whether someone deleted the etcd volume' });
  return v;
}

/** The attachment that holds the volume (attaching, attached or detaching), if any. */
export function currentAttachment(v: Volume): { instanceId: string; state: string } | undefined {
  const a = (v.Attachments ?? []).find((x) => x.State && x.State !== 'detached' && x.InstanceId);
  return a ? { instanceId: a.InstanceId!, state: a.State! } : undefined;
}

/** The EC2 state of an instance; 'gone' when EC2 no longer knows it. */
export async function instanceState(ec2: EC2Client, instanceId: string): Promise<string> {
  const { DescribeInstancesCommand } = await ec2Commands();
  try {
    const out = await ec2.send(new DescribeInstancesCommand({ InstanceIds: [instanceId] }));
    return out.Reservations?.[0]?.Instances?.[0]?.State?.Name ?? 'gone';
  } catch (err) {
    if ((err as { name?: string }).name === 'InvalidInstanceID.NotFound') return 'gone';
    throw err;
  }
}

const RELEASED_STATES = new Set(['shutting-down', 'terminated', 'stopping', 'stopped', 'gone']);
const FORCE_DETACH_STATES = new Set(['terminated', 'stopped', 'gone']);

export interface AttachOptions {
  ec2: EC2Client;
  volumeId: string;
  instanceId: string;
  device: string;
  attachTimeoutMs: number;
  detachTimeoutMs: number;
  log: Logger;
  signal?: AbortSignal | undefined;
}

/**
 * Ends with the volume attached to this instance. A volume held by a stopped or terminated
 * predecessor is waited for (it detaches by itself on terminate), then force-detached once
 * the wait is over and only if the holder is terminated or stopped. A running holder means
 * two controllers for one slot: refused.
 */
export async function ensureAttached(o: AttachOptions): Promise<{ changed: boolean; predecessor?: string | undefined }> {
  let v = await describeVolume(o.ec2, o.volumeId);
  let att = currentAttachment(v);
  if (att?.instanceId === o.instanceId && att.state === 'attached') return { changed: false };

  let predecessor: string | undefined;
  if (att && att.instanceId !== o.instanceId) {
    predecessor = att.instanceId;
    await releaseFromPredecessor(o, att.instanceId);
    v = await describeVolume(o.ec2, o.volumeId);
    att = currentAttachment(v);
  }

  if (!att) {
    const { AttachVolumeCommand } = await ec2Commands();
    o.log.info('attaching the etcd volume', { volume: o.volumeId, device: o.device });
    await waitFor({
      what: `EC2 to accept the attach of ${o.volumeId}`,
      timeoutMs: o.attachTimeoutMs,
      initialDelayMs: 500,
      maxDelayMs: 5000,
      progressEveryMs: 30_000,
      log: o.log,
      signal: o.signal,
      code: 'EtcdVolumeAttachFailed',
      hint: `check ${o.volumeId} in the EC2 console; another instance may keep attaching it`,
      retryable: isRetryableEc2,
      check: async () => {
        // After a VolumeInUse the volume may have become ours (an earlier attempt went through).
        const now = currentAttachment(await describeVolume(o.ec2, o.volumeId));
        if (now?.instanceId === o.instanceId) return true;
        if (now) {
          const e = new Error(`${o.volumeId} is ${now.state} on ${now.instanceId}`);
          e.name = 'VolumeInUse';
          throw e;
        }
        await o.ec2.send(new AttachVolumeCommand({ VolumeId: o.volumeId, InstanceId: o.instanceId, Device: o.device }));
        return true;
      },
    });
  }

  await waitFor({
    what: `${o.volumeId} to be attached to ${o.instanceId}`,
    timeoutMs: o.attachTimeoutMs,
    initialDelayMs: 250,
    maxDelayMs: 5000,
    progressEveryMs: 30_000,
    log: o.log,
    signal: o.signal,
    code: 'EtcdVolumeAttachTimeout',
    hint: `check the attachment state of ${o.volumeId} in the EC2 console`,
    retryable: isRetryableEc2,
    check: async () => {
      const a = currentAttachment(await describeVolume(o.ec2, o.volumeId));
      if (a && a.instanceId !== o.instanceId) {
        throw new AgentError('EtcdVolumeTaken', `${o.volumeId} was attached to ${a.instanceId} while this instance attached it`, {
          hint: 'two controllers claim one slot; check the Auto Scaling groups of the controllers',
        });
      }
      return a?.state === 'attached' ? true : undefined;
    },
  });
  return { changed: true, predecessor };
}

async function releaseFromPredecessor(o: AttachOptions, holder: string): Promise<void> {
  const state = await instanceState(o.ec2, holder);
  if (!RELEASED_STATES.has(state)) {
    throw new AgentError('EtcdVolumeHeldByRunningInstance', `${o.volumeId} is attached to ${holder}, which is ${state}`, {
      hint: 'two controllers for one availability zone: terminate the old one, or check the controller Auto Scaling groups',
    });
  }
  o.log.info('the etcd volume is held by the predecessor; waiting for it to detach', { volume: o.volumeId, holder, holderState: state });
  const released = async () => {
    const a = currentAttachment(await describeVolume(o.ec2, o.volumeId));
    return !a || a.instanceId !== holder ? true : undefined;
  };
  try {
    await waitFor({
      what: `${o.volumeId} to be detached from ${holder} (${state})`,
      timeoutMs: o.detachTimeoutMs,
      initialDelayMs: 1000,
      maxDelayMs: 10_000,
      progressEveryMs: 30_000,
      log: o.log,
      signal: o.signal,
      code: 'EtcdVolumeDetachTimeout',
      hint: `check ${holder} in the EC2 console`,
      retryable: isRetryableEc2,
      check: released,
    });
    return;
  } catch (err) {
    if ((err as AgentError).code !== 'EtcdVolumeDetachTimeout') throw err;
  }
  const now = await instanceState(o.ec2, holder);
  if (!FORCE_DETACH_STATES.has(now)) {
    throw new AgentError('EtcdVolumeDetachTimeout', `${o.volumeId} is still attached to ${holder}, which is ${now}, after ${Math.round(o.detachTimeoutMs / 1000)}s`, {
      hint: `force-detach happens only when the holder is terminated or stopped; check why ${holder} is still ${now}`,
    });
  }
  o.log.warn('force-detaching the etcd volume from the predecessor', { volume: o.volumeId, holder, holderState: now });
  const { DetachVolumeCommand } = await ec2Commands();
  try {
    await o.ec2.send(new DetachVolumeCommand({ VolumeId: o.volumeId, InstanceId: holder, Force: true }));
  } catch (err) {
    // Detached meanwhile: what we wanted.
    if ((err as { name?: string }).name !== 'IncorrectState') throw err;
  }
  await waitFor({
    what: `${o.volumeId} to be force-detached from ${holder}`,
    timeoutMs: o.attachTimeoutMs,
    initialDelayMs: 500,
    maxDelayMs: 5000,
    log: o.log,
    signal: o.signal,
    code: 'EtcdVolumeDetachTimeout',
    hint: `check ${o.volumeId} in the EC2 console`,
    retryable: isRetryableEc2,
    check: released,
  });
}

/** Checks, just before a format, that the volume is still the one found: its tags, and attached here. */
export async function verifyBeforeFormat(ec2: EC2Client, volumeId: string, f: VolumeFilter, instanceId: string): Promise<void> {
  const v = await describeVolume(ec2, volumeId);
  const tags = Object.fromEntries((v.Tags ?? []).map((t) => [t.Key, t.Value]));
  const a = currentAttachment(v);
  const problems: string[] = [];
  if (tags[f.clusterTagKey] !== f.cluster) problems.push(`${f.clusterTagKey} is ${tags[f.clusterTagKey] ?? 'missing'}`);
  if (tags[f.roleTagKey] !== f.roleTagValue) problems.push(`${f.roleTagKey} is ${tags[f.roleTagKey] ?? 'missing'}`);
  if (v.AvailabilityZone !== f.availabilityZone) problems.push(`it is in ${v.AvailabilityZone}`);
  if (a?.instanceId !== instanceId || a.state !== 'attached') problems.push(`it is ${a ? `${a.state} on ${a.instanceId}` : 'not attached'}`);
  if (problems.length) {
    throw new AgentError('EtcdVolumeChanged', `refusing to format ${volumeId}: ${problems.join('; ')}`, {
      hint: `expected tags ${describeFilter(f)} and an attachment to ${instanceId}`,
    });
  }
}
