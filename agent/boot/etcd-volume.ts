import fs from 'node:fs';
import path from 'node:path';
import { etcdSchema, type Config } from '../config/schema.js';
import { AgentError, ConfigError } from '../errors.js';
import { writeFileAtomic } from '../host/atomic.js';
import {
  findDeviceByVolumeId,
  growIfEnlarged,
  majorMinorOf,
  makeFilesystem,
  mountAt,
  mountDevice,
  probeDevice,
  resolveDeviceByVolumeId,
  unmount,
  type FilesystemType,
} from '../host/blockdev.js';
import type { BootContext, BootPhase, MountedVolume, PhaseOutcome } from './context.js';
import { ensureAttached, findEtcdVolume, verifyBeforeFormat, type VolumeFilter } from './ebs.js';

/**
 * The etcd volume: find (tags), attach (taking it over from a predecessor that is gone),
 * resolve the device by its NVMe serial, format only when blkid finds nothing on it, mount,
 * grow when enlarged, and check the identity file that ties the volume to its cluster.
 *
 * Each step looks at the real state first, so a run interrupted anywhere (kill -9, power
 * loss) converges on the next one; a node that is already set up costs no AWS call.
 */

export const VOLUME_IDENTITY_FILE = 'zdt-agent-volume.json';

export interface VolumeIdentity {
  schema: 1;
  cluster: string;
  volumeId: string;
  createdAt: string;
  createdBy: string;
  /** The Kubernetes version this volume's cluster last ran (written by the control-plane phase). */
  kubernetesVersion?: string | undefined;
}

/** The etcd volume settings; a controller without an etcd section gets the defaults. */
export function volumeSettings(config: Config) {
  if (!config.cluster) throw new ConfigError('ClusterConfigMissing', 'a controller needs the cluster section', { hint: 'see docs/config.md' });
  return (config.etcd ?? etcdSchema.parse({})).volume;
}

export function readVolumeIdentity(mountPoint: string): VolumeIdentity | undefined {
  try {
    return JSON.parse(fs.readFileSync(path.join(mountPoint, VOLUME_IDENTITY_FILE), 'utf8')) as VolumeIdentity;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new AgentError('EtcdVolumeIdentityUnreadable', `cannot read ${path.join(mountPoint, VOLUME_IDENTITY_FILE)}: ${(err as Error).message}`, {
      hint: 'check the filesystem (fsck) or restore the file; it names the cluster the volume belongs to',
    });
  }
}

export function writeVolumeIdentity(mountPoint: string, id: VolumeIdentity): void {
  writeFileAtomic(path.join(mountPoint, VOLUME_IDENTITY_FILE), `${JSON.stringify(id, null, 2)}\n`, 0o600);
}

/** True when the data dir holds an etcd member (data worth keeping, or a restore done). */
export function holdsEtcdData(dataDir: string): boolean {
  return fs.existsSync(path.join(dataDir, 'member'));
}

export const etcdVolumePhase: BootPhase = {
  name: 'etcd-volume',
  budgetMs: (c) => {
    const v = c.etcd?.volume;
    return ((v?.detachTimeout ?? 180) * 2 + (v?.attachTimeout ?? 300) * 2 + (v?.deviceTimeout ?? 60) + 600) * 1000;
  },
  run: async (ctx) => setUpEtcdVolume(ctx),
};

async function setUpEtcdVolume(ctx: BootContext): Promise<PhaseOutcome> {
  const { config, paths, log, identity, exec } = ctx;
  const v = volumeSettings(config);
  const cluster = config.cluster!.name;
  const mountPoint = paths.at(v.mountPoint);
  const dataDir = path.join(mountPoint, v.dataDir);

  // Fast path: mounted here from the device of the volume an earlier boot recorded, and the
  // identity file agrees. No AWS call.
  const known = typeof ctx.state.facts.etcdVolumeId === 'string' ? ctx.state.facts.etcdVolumeId : undefined;
  if (known) {
    const dev = findDeviceByVolumeId(paths, known);
    const m = mountAt(mountPoint);
    if (dev && m && m.majorMinor === majorMinorOf(dev.device)) {
      checkIdentity(mountPoint, cluster, known, log, { instanceId: identity.instanceId });
      ensureDataDir(dataDir);
      const grew = await grow(ctx, dev.device, mountPoint, m.fsType);
      ctx.shared.volume = { volumeId: known, device: dev.device, mountPoint, dataDir, formatted: false };
      return { detail: `${known} mounted at ${v.mountPoint}${grew ? ' (filesystem grown)' : ''}`, changed: grew };
    }
  }

  const filter: VolumeFilter = {
    clusterTagKey: v.clusterTagKey,
    cluster,
    roleTagKey: v.roleTagKey,
    roleTagValue: v.roleTagValue,
    availabilityZone: identity.availabilityZone,
  };
  const ec2 = await ctx.aws.ec2();
  const volume = await findEtcdVolume(ec2, filter);
  const volumeId = volume.VolumeId!;
  log.info('found the etcd volume', { volume: volumeId, sizeGiB: volume.Size, state: volume.State });
  ctx.state.facts.etcdVolumeId = volumeId;

  const attach = await ensureAttached({
    ec2,
    volumeId,
    instanceId: identity.instanceId,
    device: v.device,
    attachTimeoutMs: v.attachTimeout * 1000,
    detachTimeoutMs: v.detachTimeout * 1000,
    log,
    signal: ctx.signal,
  });
  const { device, via } = await resolveDeviceByVolumeId({ paths, volumeId, timeoutMs: v.deviceTimeout * 1000, log, signal: ctx.signal });
  log.info('resolved the etcd volume device', { volume: volumeId, device, via });
  ctx.state.facts.etcdDevice = device;

  const mounted = mountAt(mountPoint);
  if (mounted && mounted.majorMinor !== majorMinorOf(device)) {
    throw new AgentError('EtcdMountPointBusy', `${v.mountPoint} is mounted from ${mounted.source}, not from ${device} (${volumeId})`, {
      hint: `unmount ${v.mountPoint} or set etcd.volume.mountPoint to a free directory`,
    });
  }

  let formatted = false;
  let fsType: string;
  if (mounted) {
    fsType = mounted.fsType;
  } else {
    const probe = await probeDevice(exec, device);
    if (probe === undefined) {
      // Blank: the only case in which the agent formats, after checking once more that this
      // is the volume it found (tags, AZ, attached here).
      await verifyBeforeFormat(ec2, volumeId, filter, identity.instanceId);
      log.info('the etcd volume is blank; formatting', { volume: volumeId, device, filesystem: v.filesystem, label: v.label });
      await makeFilesystem(exec, device, v.filesystem as FilesystemType, v.label);
      formatted = true;
      fsType = v.filesystem;
    } else if (probe.type) {
      log.info('the etcd volume holds a filesystem; never formatting it', { volume: volumeId, type: probe.type, label: probe.label, uuid: probe.uuid });
      fsType = probe.type;
    } else {
      throw new AgentError('EtcdVolumeNotBlank', `${volumeId} (${device}) holds ${probe.ptType ? `a ${probe.ptType} partition table` : 'an unknown signature'} and no filesystem`, {
        hint: 'the agent formats only blank volumes; wipe it by hand (wipefs) if its content is not needed',
      });
    }
    log.info('mounting the etcd volume', { device, mountPoint: v.mountPoint });
    await mountDevice(exec, device, mountPoint, fsType);
  }

  try {
    checkIdentity(mountPoint, cluster, volumeId, log, { instanceId: identity.instanceId });
  } catch (err) {
    // A volume of another cluster must not stay mounted where kubeadm would use it.
    await unmount(exec, mountPoint).catch((e: Error) => log.warn('cannot unmount the refused volume', { err: e.message }));
    throw err;
  }
  ensureDataDir(dataDir);
  const grew = await grow(ctx, device, mountPoint, fsType);

  const result: MountedVolume = { volumeId, device, mountPoint, dataDir, formatted };
  ctx.shared.volume = result;
  const what = [
    attach.predecessor ? `taken over from ${attach.predecessor}` : attach.changed ? 'attached' : 'already attached',
    formatted ? `formatted ${fsType}` : undefined,
    mounted ? 'already mounted' : 'mounted',
    grew ? 'filesystem grown' : undefined,
  ].filter(Boolean);
  return { detail: `${volumeId} ${what.join(', ')} at ${v.mountPoint}`, changed: attach.changed || formatted || !mounted || grew };
}

/**
 * The identity file ties the volume to its cluster: written on first use, and a volume whose
 * file names another cluster is refused. Another volume id is allowed (a volume restored from
 * an EBS snapshot has a new id) and recorded.
 */
function checkIdentity(mountPoint: string, cluster: string, volumeId: string, log: BootContext['log'], create?: { instanceId: string }): void {
  const id = readVolumeIdentity(mountPoint);
  if (id && id.cluster !== cluster) {
    throw new AgentError('EtcdVolumeWrongCluster', `${volumeId} belongs to cluster ${id.cluster}, not ${cluster} (${VOLUME_IDENTITY_FILE})`, {
      hint: `fix the volume's tags, or the cluster name; the agent never uses another cluster's etcd data`,
    });
  }
  if (id && id.volumeId === volumeId) return;
  if (!create) return;
  if (id) log.warn('the identity file names another volume id (restored from an EBS snapshot?); updating it', { was: id.volumeId, now: volumeId });
  writeVolumeIdentity(mountPoint, {
    ...(id ?? {}),
    schema: 1,
    cluster,
    volumeId,
    createdAt: id?.createdAt ?? new Date().toISOString(),
    createdBy: id?.createdBy ?? create.instanceId,
  });
}

async function grow(ctx: BootContext, device: string, mountPoint: string, type: string): Promise<boolean> {
  const checked = ctx.state.facts.etcdDeviceBytes;
  const r = await growIfEnlarged({ exec: ctx.exec, device, mountPoint, type, log: ctx.log, checkedBytes: typeof checked === 'number' ? checked : undefined });
  ctx.state.facts.etcdDeviceBytes = r.deviceBytes;
  return r.grew;
}

function ensureDataDir(dataDir: string): void {
  fs.mkdirSync(dataDir, { recursive: true, mode: 0o700 });
  // etcd refuses a data dir others can read.
  fs.chmodSync(dataDir, 0o700);
}
