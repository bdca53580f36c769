import { execFile } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

/** A real block device for tests that need an EBS volume (tests run as root). */
export interface LoopDevice {
  /** `/dev/loopN` */
  device: string;
  /** The sparse backing file. */
  file: string;
  /** Unmounts everything mounted from the device, detaches it, removes the backing file. Safe to call twice. */
  detach(): Promise<void>;
}

export async function createLoopDevice(sizeMiB: number): Promise<LoopDevice> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'zdt-loop-'));
  const file = path.join(dir, 'volume.img');
  await fs.writeFile(file, '');
  await fs.truncate(file, sizeMiB * 1024 * 1024);
  const device = (await run('losetup', ['--find', '--show', file])).stdout.trim();
  let detached = false;
  return {
    device,
    file,
    detach: async () => {
      // Once only: after losetup -d the device name may already belong to another test's file.
      if (detached) return;
      detached = true;
      await unmount(await mountpoints(['--source', device]));
      await run('losetup', ['--detach', device]);
      await fs.rm(dir, { recursive: true, force: true });
    },
  };
}

/** Mount points findmnt lists for these arguments (none: every mount); [] when there are none. */
export async function mountpoints(findmntArgs: readonly string[] = []): Promise<string[]> {
  try {
    const { stdout } = await run('findmnt', ['--raw', '--noheadings', '--output', 'TARGET', ...findmntArgs]);
    // --raw writes spaces and other unsafe characters as \xNN.
    return stdout
      .split('\n')
      .filter(Boolean)
      .map((t) => t.replace(/\\x([0-9a-f]{2})/gi, (_, hex: string) => String.fromCharCode(parseInt(hex, 16))));
  } catch (err) {
    if ((err as { code?: number }).code === 1) return []; // findmnt: nothing found
    throw err;
  }
}

/** Unmounts each target, deepest first, so that nested mounts come off before their parents. */
export async function unmount(targets: readonly string[]): Promise<void> {
  for (const target of [...targets].sort((a, b) => b.length - a.length)) await run('umount', [target]);
}
