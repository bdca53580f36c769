import fs from 'node:fs';
import path from 'node:path';
import { AgentError } from '../errors.js';

/**
 * An fs error as an AgentError that names its file. Node names the path for `open` and
 * `rename` but not for a write or fsync on a descriptor (`ENOSPC: no space left on device,
 * write`), and an operator cannot act on a full disk without knowing which one.
 */
export function fileError(err: unknown, file: string, action: string): AgentError {
  if (err instanceof AgentError) return err;
  const e = err as NodeJS.ErrnoException;
  const hint =
    e.code === 'ENOSPC' || e.code === 'EDQUOT'
      ? `the filesystem holding ${path.dirname(file)} is full; free space there`
      : e.code === 'EROFS'
        ? `the filesystem holding ${path.dirname(file)} is read-only`
        : e.code === 'EACCES' || e.code === 'EPERM'
          ? 'the agent runs as root; check the mount options and attributes (chattr) of that path'
          : 'check the disk and the filesystem holding that path (dmesg)';
  return new AgentError('FileWriteFailed', `cannot ${action} ${file}: ${e.code ?? 'error'}: ${(e.message ?? String(err)).replace(/^[A-Z]+: /, '')}`, { hint, cause: err });
}

/** Our temp files: `.<name>.<pid>.<ms>.tmp` beside the target. */
const tempName = (base: string, pid: number, ms: number) => `.${base}.${pid}.${ms}.tmp`;
/** A temp file of a live process younger than this may be another writer's: left alone. */
const LIVE_WRITER_GRACE_MS = 10 * 60_000;

function processIsAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * Removes temp files an earlier writer of `file` left behind (a SIGKILL between write and
 * rename): only names of our own pattern for this target, of a process that is gone, this
 * process (its writes are synchronous: none is in flight), or old enough that the pid has been
 * reused. Best effort: a failure here must not stop the write.
 */
function removeStaleTempFiles(dir: string, base: string, now: number): void {
  let names: string[];
  try {
    names = fs.readdirSync(dir);
  } catch {
    return;
  }
  const prefix = `.${base}.`;
  for (const name of names) {
    if (!name.startsWith(prefix) || !name.endsWith('.tmp')) continue;
    const m = /^(\d+)\.(\d+)\.tmp$/.exec(name.slice(prefix.length));
    if (!m) continue;
    const pid = Number(m[1]);
    const ms = Number(m[2]);
    if (pid !== process.pid && processIsAlive(pid) && now - ms < LIVE_WRITER_GRACE_MS) continue;
    fs.rmSync(path.join(dir, name), { force: true });
  }
}

/**
 * Write a file so that readers see the old content or the new, never half of one:
 * temp file in the same directory, fsync, rename, fsync of the directory. A failure at any
 * step removes the temp file (a full disk must not fill up further with halves), and raises
 * an error naming the file.
 */
export function writeFileAtomic(file: string, data: string | Uint8Array, mode = 0o644): void {
  const dir = path.dirname(file);
  const base = path.basename(file);
  const now = Date.now();
  try {
    fs.mkdirSync(dir, { recursive: true });
  } catch (err) {
    throw fileError(err, dir, 'create the directory');
  }
  removeStaleTempFiles(dir, base, now);
  const tmp = path.join(dir, tempName(base, process.pid, now));
  let fd: number;
  try {
    fd = fs.openSync(tmp, 'wx', mode);
  } catch (err) {
    throw fileError(err, file, 'write');
  }
  try {
    try {
      const bytes = typeof data === 'string' ? Buffer.from(data) : data;
      for (let off = 0; off < bytes.length; ) off += fs.writeSync(fd, bytes, off);
      fs.fchmodSync(fd, mode);
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    fs.renameSync(tmp, file);
  } catch (err) {
    fs.rmSync(tmp, { force: true });
    throw fileError(err, file, 'write');
  }
  try {
    const dfd = fs.openSync(dir, 'r');
    try {
      fs.fsyncSync(dfd);
    } finally {
      fs.closeSync(dfd);
    }
  } catch {
    // Some filesystems refuse fsync on a directory; the rename has happened either way.
  }
}
