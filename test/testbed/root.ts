import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { mountpoints, unmount } from './loop.js';

/** A temporary node root for the agent (`--root` / ZDT_ROOT), with the directories a node has. */
export interface TempRoot {
  dir: string;
  /** A node path (`/etc/kubernetes`) under this root. */
  at(nodePath: string): string;
  /**
   * Exposes a block device as the EBS volume `volumeId`, the way the NVMe udev rules name it:
   * dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol0123… -> device. Returns the link path.
   */
  linkVolume(volumeId: string, device: string): Promise<string>;
  /** Unmounts whatever is still mounted below the root, then removes it. */
  cleanup(): Promise<void>;
}

const NODE_DIRS = ['etc', 'var/lib', 'var/log', 'dev/disk/by-id', 'run'];

export async function makeTempRoot(): Promise<TempRoot> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'zdt-root-'));
  for (const d of NODE_DIRS) await fs.mkdir(path.join(dir, d), { recursive: true });
  const at = (nodePath: string) => path.join(dir, nodePath);
  return {
    dir,
    at,
    linkVolume: async (volumeId, device) => {
      const link = at(`/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_${volumeId.replace('-', '')}`);
      await fs.symlink(device, link);
      return link;
    },
    cleanup: async () => {
      // Never let rm -r walk into a mounted file system.
      await unmount((await mountpoints()).filter((m) => m.startsWith(`${dir}/`)));
      await fs.rm(dir, { recursive: true, force: true });
    },
  };
}
