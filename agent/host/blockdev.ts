import fs from 'node:fs';
import path from 'node:path';
import { AgentError } from '../errors.js';
import type { Logger } from '../log/logger.js';
import type { Exec } from './exec.js';
import type { Paths } from './paths.js';
import { waitFor } from './retry.js';

/**
 * Block devices, filesystems and mounts: what the etcd volume phase needs, with the real
 * tools (blkid, mkfs, mount, resize2fs, xfs_growfs) and the kernel's own view.
 *
 * Paths: udev's /dev/disk/by-id links and mount points are node paths (under the root
 * prefix, so tests build them in a temporary root); the device nodes they point to, /proc
 * and /sys are the kernel's and are read as they are.
 */

export type FilesystemType = 'ext4' | 'xfs';

/** Nitro shows an EBS volume as an NVMe controller whose serial is the volume id without its dash. */
export function nvmeSerialOf(volumeId: string): string {
  return volumeId.replace(/^vol-/, 'vol');
}

/** The udev names of an EBS volume, in the order they are tried. */
export function ebsDeviceLinks(paths: Paths, volumeId: string): string[] {
  const serial = nvmeSerialOf(volumeId);
  return [
    paths.at(`/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_${serial}`),
    // udev 252+ also names the namespace.
    paths.at(`/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_${serial}-ns-1`),
  ];
}

/**
 * Without udev (mdev on a minimal Alpine) there are no by-id links: the serial is in sysfs
 * (/sys/class/nvme/nvme1/serial), the namespace is /dev/nvme1n1.
 */
function deviceFromSysfs(volumeId: string, sysRoot = '/sys'): string | undefined {
  const serial = nvmeSerialOf(volumeId);
  let controllers: string[];
  try {
    controllers = fs.readdirSync(path.join(sysRoot, 'class/nvme'));
  } catch {
    return undefined;
  }
  for (const c of controllers) {
    let s: string;
    try {
      s = fs.readFileSync(path.join(sysRoot, 'class/nvme', c, 'serial'), 'utf8').trim();
    } catch {
      continue;
    }
    if (s !== serial) continue;
    const ns = fs.readdirSync(path.join(sysRoot, 'class/nvme', c)).find((n) => new RegExp(`^${c}n\\d+$`).test(n));
    if (ns && fs.existsSync(`/dev/${ns}`)) return `/dev/${ns}`;
  }
  return undefined;
}

/** The block device of the volume now, or undefined while it has not appeared. */
export function findDeviceByVolumeId(paths: Paths, volumeId: string): { device: string; via: string } | undefined {
  for (const link of ebsDeviceLinks(paths, volumeId)) {
    let target: string;
    try {
      target = fs.realpathSync(link);
    } catch {
      continue;
    }
    if (isBlockDevice(target)) return { device: target, via: link };
  }
  const dev = deviceFromSysfs(volumeId);
  return dev ? { device: dev, via: '/sys/class/nvme/*/serial' } : undefined;
}

/** Waits (bounded) until the attached volume shows up as a block device; never trusts the requested device name. */
export function resolveDeviceByVolumeId(o: {
  paths: Paths;
  volumeId: string;
  timeoutMs: number;
  log: Logger;
  signal?: AbortSignal | undefined;
}): Promise<{ device: string; via: string }> {
  return waitFor({
    what: `the block device of ${o.volumeId} (NVMe serial ${nvmeSerialOf(o.volumeId)})`,
    timeoutMs: o.timeoutMs,
    initialDelayMs: 100,
    maxDelayMs: 2000,
    progressEveryMs: 10_000,
    log: o.log,
    signal: o.signal,
    code: 'EtcdVolumeDeviceMissing',
    hint: `check that ${ebsDeviceLinks(o.paths, o.volumeId)[0]} appears (udev/mdev rules for NVMe EBS volumes) and that the instance type is Nitro-based`,
    check: async () => findDeviceByVolumeId(o.paths, o.volumeId),
  });
}

function isBlockDevice(p: string): boolean {
  try {
    return fs.statSync(p).isBlockDevice();
  } catch {
    return false;
  }
}

export interface Probe {
  /** Filesystem type (ext4, xfs, …) when blkid found one. */
  type?: string | undefined;
  label?: string | undefined;
  uuid?: string | undefined;
  /** Partition table type when the device holds one. */
  ptType?: string | undefined;
}

/**
 * What is on the device, from blkid's low-level probe (`-p`: reads the device, no cache).
 * `undefined` means blkid found no signature at all: the only state in which a volume may be
 * formatted.
 */
export async function probeDevice(exec: Exec, device: string): Promise<Probe | undefined> {
  const r = await exec('blkid', ['-p', '-o', 'export', device], {
    timeoutMs: 30_000,
    okExitCodes: [2],
    hint: `check ${device} with 'blkid -p ${device}'`,
  });
  if (r.exitCode === 2) return undefined;
  const kv: Record<string, string> = {};
  for (const line of r.stdout.split('\n')) {
    const i = line.indexOf('=');
    if (i > 0) kv[line.slice(0, i)] = line.slice(i + 1);
  }
  return { type: kv.TYPE, label: kv.LABEL, uuid: kv.UUID, ptType: kv.PTTYPE };
}

export async function makeFilesystem(exec: Exec, device: string, type: FilesystemType, label: string): Promise<void> {
  // No force flags: both tools refuse a device that is mounted or (xfs) already holds a
  // filesystem, a second guard behind the blkid check.
  const [file, args] =
    type === 'ext4'
      ? ['mkfs.ext4', ['-q', '-L', label, '-E', 'lazy_itable_init=1,lazy_journal_init=1', device]]
      : ['mkfs.xfs', ['-q', '-L', label, device]];
  await exec(file, args as string[], { timeoutMs: 300_000, hint: `check ${device} and that ${file} is installed` });
}

export interface MountEntry {
  mountPoint: string;
  majorMinor: string;
  fsType: string;
  source: string;
}

const unescapeMount = (s: string) => s.replace(/\\([0-7]{3})/g, (_m, o: string) => String.fromCharCode(parseInt(o, 8)));

/** The kernel's mount table (this process's namespace). */
export function readMounts(mountinfo = '/proc/self/mountinfo'): MountEntry[] {
  const out: MountEntry[] = [];
  for (const line of fs.readFileSync(mountinfo, 'utf8').split('\n')) {
    if (!line) continue;
    const [pre, post] = line.split(' - ');
    const f = pre?.split(' ') ?? [];
    const g = post?.split(' ') ?? [];
    if (f.length < 5 || g.length < 2) continue;
    out.push({ majorMinor: f[2]!, mountPoint: unescapeMount(f[4]!), fsType: g[0]!, source: unescapeMount(g[1]!) });
  }
  return out;
}

/** The last mount on `mountPoint` (the one visible there), if any. */
export function mountAt(mountPoint: string): MountEntry | undefined {
  const p = path.resolve(mountPoint);
  return readMounts()
    .filter((m) => m.mountPoint === p)
    .at(-1);
}

/** "major:minor" of a block device node. */
export function majorMinorOf(device: string): string {
  const rdev = fs.statSync(device, { bigint: true }).rdev;
  const major = ((rdev >> 8n) & 0xfffn) | ((rdev >> 32n) & ~0xfffn);
  const minor = (rdev & 0xffn) | ((rdev >> 12n) & ~0xffn);
  return `${major}:${minor}`;
}

export async function mountDevice(exec: Exec, device: string, mountPoint: string, type: string): Promise<void> {
  fs.mkdirSync(mountPoint, { recursive: true, mode: 0o700 });
  await exec('mount', ['-t', type, '-o', 'noatime', device, mountPoint], {
    timeoutMs: 120_000,
    hint: `check 'dmesg' for ${device}; the filesystem may need a repair (fsck)`,
  });
}

export async function unmount(exec: Exec, mountPoint: string): Promise<void> {
  await exec('umount', [mountPoint], { timeoutMs: 60_000, hint: `check what holds ${mountPoint} open (fuser -m)` });
}

/** Size of the block device in bytes, from sysfs. */
export function deviceBytes(device: string): number {
  const sectors = fs.readFileSync(`/sys/dev/block/${majorMinorOf(device)}/size`, 'utf8').trim();
  return Number(sectors) * 512;
}

/**
 * Size of the filesystem in bytes, read from its superblock on the device: cheap enough to
 * check at every boot whether the volume was enlarged, without running a tool.
 */
export function filesystemBytes(device: string, type: string): number | undefined {
  const buf = Buffer.alloc(4096);
  const fd = fs.openSync(device, 'r');
  try {
    fs.readSync(fd, buf, 0, buf.length, 0);
  } finally {
    fs.closeSync(fd);
  }
  if (type === 'ext4' || type === 'ext3' || type === 'ext2') {
    const sb = buf.subarray(1024);
    if (sb.readUInt16LE(0x38) !== 0xef53) return undefined;
    const blockSize = 1024 * 2 ** sb.readUInt32LE(0x18);
    const is64 = (sb.readUInt32LE(0x60) & 0x80) !== 0; // INCOMPAT_64BIT
    const blocks = sb.readUInt32LE(0x04) + (is64 ? sb.readUInt32LE(0x150) * 2 ** 32 : 0);
    return blocks * blockSize;
  }
  if (type === 'xfs') {
    if (buf.toString('latin1', 0, 4) !== 'XFSB') return undefined;
    return buf.readUInt32BE(4) * Number(buf.readBigUInt64BE(8));
  }
  return undefined;
}

/** An enlarged EBS volume grows by at least 1 GiB; smaller gaps are alignment slack. */
const GROW_THRESHOLD = 16 * 1024 * 1024;

/**
 * Grows a mounted filesystem to its device when the volume was enlarged. `checkedBytes` is the
 * device size at which the filesystem was last known to fill the device: while the device has
 * that size nothing is read (the superblock on the block device may be stale in the page cache
 * after an online grow, which writes through the filesystem's own buffers).
 */
export async function growIfEnlarged(o: {
  exec: Exec;
  device: string;
  mountPoint: string;
  type: string;
  log: Logger;
  checkedBytes?: number | undefined;
}): Promise<{ grew: boolean; deviceBytes: number }> {
  const dev = deviceBytes(o.device);
  if (o.checkedBytes === dev) return { grew: false, deviceBytes: dev };
  const fsb = filesystemBytes(o.device, o.type);
  if (fsb === undefined) {
    o.log.warn('cannot read the filesystem size; not growing', { device: o.device, type: o.type });
    return { grew: false, deviceBytes: dev };
  }
  if (dev - fsb <= GROW_THRESHOLD) return { grew: false, deviceBytes: dev };
  o.log.info('the volume was enlarged; growing the filesystem', { device: o.device, deviceBytes: dev, filesystemBytes: fsb });
  if (o.type === 'xfs') {
    await o.exec('xfs_growfs', [o.mountPoint], { timeoutMs: 300_000 });
  } else if (o.type.startsWith('ext')) {
    await o.exec('resize2fs', [o.device], { timeoutMs: 300_000, hint: 'online ext4 growth needs CAP_SYS_RESOURCE and a kernel with online resize' });
  } else {
    throw new AgentError('FilesystemNotGrowable', `cannot grow a ${o.type} filesystem on ${o.device}`, { hint: 'grow it by hand' });
  }
  return { grew: true, deviceBytes: dev };
}
