import { execFile } from 'node:child_process';
import fs from 'node:fs';
import { promisify } from 'node:util';

const run = promisify(execFile);

export interface FullDisk {
  dir: string;
  /** Unmounts the file system (what was in `dir` before shows again). Safe to call twice. */
  unmount(): Promise<void>;
}

/**
 * A real full disk for tests (they run as root): a tmpfs of `sizeKiB` mounted at `dir` (made
 * when missing) and filled until the kernel answers ENOSPC, so that the next write there
 * fails as it does on a full node. Creating an empty file still works (tmpfs has inodes left),
 * as on most full ext4 volumes. `keep` files are written first, before it fills up.
 */
export async function mountFullDisk(dir: string, o: { sizeKiB?: number; keep?: Record<string, string> } = {}): Promise<FullDisk> {
  fs.mkdirSync(dir, { recursive: true });
  await run('mount', ['-t', 'tmpfs', '-o', `size=${o.sizeKiB ?? 64}k,mode=0755`, 'zdt-full-disk', dir]);
  let mounted = true;
  const unmount = async () => {
    if (!mounted) return;
    mounted = false;
    await run('umount', [dir]);
  };
  try {
    for (const [name, text] of Object.entries(o.keep ?? {})) fs.writeFileSync(`${dir}/${name}`, text);
    fillUp(dir);
  } catch (err) {
    await unmount();
    throw err;
  }
  return { dir, unmount };
}

/** Writes `dir/.filler` until the file system answers ENOSPC, and syncs it (what is left is full). */
export function fillUp(dir: string): void {
  const fd = fs.openSync(`${dir}/.filler`, 'w');
  const chunk = Buffer.alloc(64 * 1024);
  try {
    for (;;) fs.writeSync(fd, chunk);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOSPC') throw err;
  }
  // The last partial blocks, then what delayed allocation still holds.
  try {
    for (;;) fs.writeSync(fd, chunk.subarray(0, 512));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOSPC') throw err;
  } finally {
    fs.fsyncSync(fd);
    fs.closeSync(fd);
  }
}
