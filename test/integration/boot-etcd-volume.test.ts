import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { AttachVolumeCommand, DescribeVolumesCommand, StopInstancesCommand, TerminateInstancesCommand } from '@aws-sdk/client-ec2';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { etcdVolumePhase, VOLUME_IDENTITY_FILE, readVolumeIdentity } from '../../agent/boot/etcd-volume.js';
import type { ConfigInput } from '../../agent/config/schema.js';
import { AgentError } from '../../agent/errors.js';
import { mountAt } from '../../agent/host/blockdev.js';
import { createLoopDevice, type LoopDevice } from '../testbed/loop.js';
import { makeTempRoot, type TempRoot } from '../testbed/root.js';
import { contextFor } from '../support/terminate-env.js';
import { awsSection, createEtcdVolume, identityOf, launchInstance, phaseContext, startAwsWorld, type AwsWorld } from '../support/boot-env.js';

/**
 * The etcd volume phase against moto (behind the fidelity proxy) and real loop devices
 * exposed as NVMe EBS volumes under a temporary root: real blkid, mkfs, mount, resize2fs.
 */

let w: AwsWorld;
const loops: LoopDevice[] = [];
const roots: TempRoot[] = [];
let cluster = 0;

beforeAll(async () => {
  w = await startAwsWorld();
});
afterEach(async () => {
  w.proxy.clearFaults();
  w.proxy.setAttachDelayMs(0);
  for (const r of roots.splice(0)) await r.cleanup();
  for (const l of loops.splice(0)) await l.detach();
});
afterAll(async () => {
  await w?.stop();
});

/** Each test its own cluster name, so the tag filters of one test never see another's volumes. */
function nextCluster(): string {
  return `c${++cluster}-${process.pid}`;
}

function controllerConfig(name: string, volume: Record<string, unknown> = {}): ConfigInput {
  return {
    cluster: { name },
    node: { role: 'controller', controllerIndex: '00' },
    etcd: { volume: { attachTimeout: 20, detachTimeout: 3, deviceTimeout: 5, ...volume } },
    aws: awsSection(w.proxy.endpoint),
  };
}

async function node(o: { cluster: string; sizeMiB?: number; volume?: Record<string, unknown> }) {
  const root = await makeTempRoot();
  roots.push(root);
  const loop = await createLoopDevice(o.sizeMiB ?? 64);
  loops.push(loop);
  const cmd = await contextFor(root.dir, controllerConfig(o.cluster, o.volume));
  return { root, loop, cmd };
}

const blkid = (dev: string, tag: string) => execFileSync('blkid', ['-p', '-s', tag, '-o', 'value', dev], { encoding: 'utf8' }).trim();

async function attachedTo(volumeId: string): Promise<string | undefined> {
  const v = (await w.ec2.send(new DescribeVolumesCommand({ VolumeIds: [volumeId] }))).Volumes![0]!;
  return v.Attachments?.find((a) => a.State === 'attached')?.InstanceId;
}

/**
 * A volume some controller used before: ext4 labelled etcd with the agent's identity file
 * naming `cluster`, plus whatever `fill` writes; mounted at `scratch` only meanwhile.
 */
function usedVolume(device: string, scratch: string, cluster: string, fill?: (dir: string) => void): void {
  execFileSync('mkfs.ext4', ['-q', '-L', 'etcd', device]);
  fs.mkdirSync(scratch, { recursive: true });
  execFileSync('mount', [device, scratch]);
  try {
    fill?.(scratch);
    fs.writeFileSync(path.join(scratch, VOLUME_IDENTITY_FILE), JSON.stringify({ schema: 1, cluster, volumeId: 'vol-older', createdAt: 't0', createdBy: 'i-0' }));
  } finally {
    execFileSync('umount', [scratch]);
  }
}

describe('etcd volume', () => {
  it('attaches a blank volume, formats it once with the label, mounts it and writes the identity file', async () => {
    const name = nextCluster();
    const { root, loop, cmd } = await node({ cluster: name });
    const inst = await launchInstance(w);
    const volumeId = await createEtcdVolume(w, { cluster: name });
    await root.linkVolume(volumeId, loop.device);

    const ctx = phaseContext(cmd, identityOf(inst));
    const out = await etcdVolumePhase.run(ctx);
    expect(out.changed).toBe(true);
    expect(out.detail).toMatch(/attached, formatted ext4, mounted/);
    expect(await attachedTo(volumeId)).toBe(inst.instanceId);
    expect(blkid(loop.device, 'TYPE')).toBe('ext4');
    expect(blkid(loop.device, 'LABEL')).toBe('etcd');
    const mountPoint = root.at('/var/lib/etcd');
    expect(mountAt(mountPoint)?.source).toBe(loop.device);
    expect(readVolumeIdentity(mountPoint)).toMatchObject({ cluster: name, volumeId, createdBy: inst.instanceId });
    expect(fs.statSync(path.join(mountPoint, 'data')).mode & 0o777).toBe(0o700);
    expect(ctx.shared.volume).toMatchObject({ volumeId, device: loop.device, formatted: true });
    const uuid = blkid(loop.device, 'UUID');

    // Again on the same node: mounted from the recorded volume, so no AWS call at all (EC2 is
    // made to fail to prove it), nothing formatted.
    w.proxy.inject({ action: 'DescribeVolumes', kind: '500' });
    const again = phaseContext(cmd, identityOf(inst));
    again.state.facts = ctx.state.facts;
    const second = await etcdVolumePhase.run(again);
    expect(second.changed).toBe(false);
    expect(blkid(loop.device, 'UUID')).toBe(uuid);
  });

  it('replacement controller reattaches the volume held by its terminated predecessor and never formats it', async () => {
    const name = nextCluster();
    const { root, loop, cmd } = await node({ cluster: name });
    // The predecessor's volume: a filesystem with etcd data, attached to the old instance.
    usedVolume(loop.device, root.at('/mnt/old'), name, (dir) => {
      fs.mkdirSync(path.join(dir, 'data/member/snap'), { recursive: true });
      fs.writeFileSync(path.join(dir, 'data/member/snap/db'), 'etcd data of the predecessor');
    });
    const uuid = blkid(loop.device, 'UUID');

    const old = await launchInstance(w);
    const volumeId = await createEtcdVolume(w, { cluster: name });
    await w.ec2.send(new AttachVolumeCommand({ VolumeId: volumeId, InstanceId: old.instanceId, Device: '/dev/xvdz' }));
    // Terminated; EC2 takes its time to detach.
    w.proxy.setAttachDelayMs(1500);
    await w.ec2.send(new TerminateInstancesCommand({ InstanceIds: [old.instanceId] }));
    await root.linkVolume(volumeId, loop.device);

    const inst = await launchInstance(w);
    const ctx = phaseContext(cmd, identityOf(inst));
    const out = await etcdVolumePhase.run(ctx);
    expect(out.detail).toContain(`taken over from ${old.instanceId}`);
    expect(out.detail).not.toContain('formatted');
    expect(blkid(loop.device, 'UUID')).toBe(uuid);
    expect(fs.readFileSync(root.at('/var/lib/etcd/data/member/snap/db'), 'utf8')).toBe('etcd data of the predecessor');
    expect(await attachedTo(volumeId)).toBe(inst.instanceId);
    // The identity file follows the new volume id (it came from a snapshot), cluster unchanged.
    expect(readVolumeIdentity(root.at('/var/lib/etcd'))).toMatchObject({ cluster: name, volumeId, createdBy: 'i-0' });
  });

  it("refuses a volume whose identity file names another cluster, and leaves it unmounted and unformatted", async () => {
    const name = nextCluster();
    const { root, loop, cmd } = await node({ cluster: name });
    usedVolume(loop.device, root.at('/mnt/other'), 'someone-else');
    const uuid = blkid(loop.device, 'UUID');
    const inst = await launchInstance(w);
    const volumeId = await createEtcdVolume(w, { cluster: name });
    await root.linkVolume(volumeId, loop.device);

    const err = await etcdVolumePhase.run(phaseContext(cmd, identityOf(inst))).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(AgentError);
    expect((err as AgentError).code).toBe('EtcdVolumeWrongCluster');
    expect((err as AgentError).message).toContain('someone-else');
    expect(mountAt(root.at('/var/lib/etcd'))).toBeUndefined();
    expect(blkid(loop.device, 'UUID')).toBe(uuid);
  });

  it('refuses a volume attached to a running instance (two controllers for one AZ)', async () => {
    const name = nextCluster();
    const { cmd } = await node({ cluster: name });
    const holder = await launchInstance(w);
    const volumeId = await createEtcdVolume(w, { cluster: name });
    await w.ec2.send(new AttachVolumeCommand({ VolumeId: volumeId, InstanceId: holder.instanceId, Device: '/dev/xvdz' }));
    const inst = await launchInstance(w);
    const err = (await etcdVolumePhase.run(phaseContext(cmd, identityOf(inst))).catch((e: unknown) => e)) as AgentError;
    expect(err.code).toBe('EtcdVolumeHeldByRunningInstance');
    expect(err.message).toContain(holder.instanceId);
    expect(err.message).toContain('running');
    expect(await attachedTo(volumeId)).toBe(holder.instanceId);
  });

  it('force-detaches the volume from a stopped predecessor only after the detach wait', async () => {
    const name = nextCluster();
    const { root, loop, cmd } = await node({ cluster: name, volume: { detachTimeout: 1 } });
    const holder = await launchInstance(w);
    const volumeId = await createEtcdVolume(w, { cluster: name });
    await w.ec2.send(new AttachVolumeCommand({ VolumeId: volumeId, InstanceId: holder.instanceId, Device: '/dev/xvdz' }));
    await w.ec2.send(new StopInstancesCommand({ InstanceIds: [holder.instanceId] }));
    await root.linkVolume(volumeId, loop.device);
    const inst = await launchInstance(w);
    const t0 = Date.now();
    const out = await etcdVolumePhase.run(phaseContext(cmd, identityOf(inst)));
    expect(Date.now() - t0).toBeGreaterThanOrEqual(1000);
    expect(out.detail).toContain(`taken over from ${holder.instanceId}`);
    expect(await attachedTo(volumeId)).toBe(inst.instanceId);
  });

  it('retries a throttled attach with backoff until it goes through', async () => {
    const name = nextCluster();
    const { root, loop, cmd } = await node({ cluster: name });
    const volumeId = await createEtcdVolume(w, { cluster: name });
    await root.linkVolume(volumeId, loop.device);
    const inst = await launchInstance(w);
    // The SDK retries throttling itself (maxAttempts 3); more than that reaches the agent's backoff.
    w.proxy.inject({ action: 'AttachVolume', kind: 'throttle', times: 4 });
    const out = await etcdVolumePhase.run(phaseContext(cmd, identityOf(inst)));
    expect(out.detail).toMatch(/attached, formatted/);
    expect(await attachedTo(volumeId)).toBe(inst.instanceId);
  });

  it('names the filters when no volume or several volumes match', async () => {
    const name = nextCluster();
    const { cmd } = await node({ cluster: name });
    const inst = await launchInstance(w);
    let err = (await etcdVolumePhase.run(phaseContext(cmd, identityOf(inst))).catch((e: unknown) => e)) as AgentError;
    expect(err.code).toBe('EtcdVolumeNotFound');
    expect(err.message).toBe(`no EBS volume tagged zdt:cluster=${name}, zdt:role=etcd in eu-central-1a`);
    const a = await createEtcdVolume(w, { cluster: name });
    const b = await createEtcdVolume(w, { cluster: name });
    // One in another AZ does not count.
    await createEtcdVolume(w, { cluster: name, az: 'eu-central-1b' });
    err = (await etcdVolumePhase.run(phaseContext(cmd, identityOf(inst))).catch((e: unknown) => e)) as AgentError;
    expect(err.code).toBe('EtcdVolumeAmbiguous');
    expect(err.message).toContain(a);
    expect(err.message).toContain(b);
  });

  it('gives up with a clear error when the device never appears', async () => {
    const name = nextCluster();
    const { cmd } = await node({ cluster: name, volume: { deviceTimeout: 1 } });
    const volumeId = await createEtcdVolume(w, { cluster: name });
    const inst = await launchInstance(w);
    const err = (await etcdVolumePhase.run(phaseContext(cmd, identityOf(inst))).catch((e: unknown) => e)) as AgentError;
    expect(err.code).toBe('EtcdVolumeDeviceMissing');
    expect(err.message).toContain(`NVMe serial ${volumeId.replace('-', '')}`);
    expect(err.hint).toContain('nvme-Amazon_Elastic_Block_Store_');
  });

  // Online ext4 growth (resize2fs on a mounted filesystem) needs CAP_SYS_RESOURCE, which some
  // sandboxes drop; xfs_growfs needs only CAP_SYS_ADMIN.
  const capSysResource = (BigInt(`0x${/CapEff:\s*([0-9a-f]+)/.exec(fs.readFileSync('/proc/self/status', 'utf8'))?.[1] ?? '0'}`) >> 24n) & 1n;
  const growCases = [
    { filesystem: 'xfs', sizeMiB: 320, grownMiB: 700 },
    ...(capSysResource ? [{ filesystem: 'ext4', sizeMiB: 64, grownMiB: 160 }] : []),
  ];
  if (!capSysResource) it.skip('grows an ext4 filesystem online (needs CAP_SYS_RESOURCE, which this machine does not grant)', () => {});
  it.each(growCases)('grows the $filesystem filesystem when the volume was enlarged', async ({ filesystem, sizeMiB, grownMiB }) => {
    const name = nextCluster();
    const { root, loop, cmd } = await node({ cluster: name, sizeMiB, volume: { filesystem } });
    const volumeId = await createEtcdVolume(w, { cluster: name });
    await root.linkVolume(volumeId, loop.device);
    const inst = await launchInstance(w);
    const ctx = phaseContext(cmd, identityOf(inst));
    await etcdVolumePhase.run(ctx);
    const before = fs.statfsSync(root.at('/var/lib/etcd'));
    // EBS ModifyVolume, as the kernel sees it: the device is larger.
    fs.truncateSync(loop.file, grownMiB * 1024 * 1024);
    execFileSync('losetup', ['--set-capacity', loop.device]);
    const again = phaseContext(cmd, identityOf(inst));
    again.state.facts = ctx.state.facts;
    const out = await etcdVolumePhase.run(again);
    expect(out.detail).toContain('filesystem grown');
    const after = fs.statfsSync(root.at('/var/lib/etcd'));
    expect(after.blocks * after.bsize).toBeGreaterThan(before.blocks * before.bsize * 2);
    // Nothing more to grow the next time.
    expect((await etcdVolumePhase.run(again)).changed).toBe(false);
  });

  it('makes xfs when configured', async () => {
    const name = nextCluster();
    const { root, loop, cmd } = await node({ cluster: name, sizeMiB: 320, volume: { filesystem: 'xfs', label: 'etcdx' } });
    const volumeId = await createEtcdVolume(w, { cluster: name });
    await root.linkVolume(volumeId, loop.device);
    const inst = await launchInstance(w);
    await etcdVolumePhase.run(phaseContext(cmd, identityOf(inst)));
    expect(blkid(loop.device, 'TYPE')).toBe('xfs');
    expect(blkid(loop.device, 'LABEL')).toBe('etcdx');
    expect(mountAt(root.at('/var/lib/etcd'))?.fsType).toBe('xfs');
  });
});
