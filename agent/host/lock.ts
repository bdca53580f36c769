import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { AgentError } from '../errors.js';
import { fileError } from './atomic.js';

/**
 * Lock files for work that must not overlap: `boot` (cloud-init and an operator running it by
 * hand must not both attach, format or kubeadm) and `ssh-users sync` (two syncs could each
 * read the account records, change accounts, and write their own records back, losing the
 * other's). Callers pass a node path mapped under the root prefix (`paths.at('/run/…')`).
 *
 * The file is created exclusively and holds the holder's PID and the start time of that
 * process (/proc/PID/stat), so that a PID the kernel reused after a crash is not taken for the
 * holder. A lock whose holder is gone (kill -9, power loss; /run is emptied at boot anyway) is
 * taken over. Within one process (the tests run two syncs side by side) a lock is held until
 * released; the PID alone cannot tell those holders apart.
 */

export type Release = () => void;

export interface LockHolder {
  pid: number;
  /** When the holder took the lock (the lock file's mtime). */
  since: Date | undefined;
}

export type LockAttempt = { release: Release; holder?: undefined } | { release?: undefined; holder: LockHolder };

/** Lock files this process holds: the PID in them does not say which call holds them. */
const heldHere = new Set<string>();

const TAKEOVER_ATTEMPTS = 3;

/** One attempt, without waiting: the release function, or who holds the lock. */
export function tryLock(file: string): LockAttempt {
  const abs = path.resolve(file);
  fs.mkdirSync(path.dirname(abs), { recursive: true });
  const content = `${process.pid} ${startTime(process.pid) ?? '-'}\n`;
  for (let attempt = 0; attempt < TAKEOVER_ATTEMPTS; attempt++) {
    if (!heldHere.has(abs)) {
      try {
        const fd = fs.openSync(abs, 'wx', 0o600);
        try {
          fs.writeSync(fd, content);
        } catch (err) {
          // An empty lock file (a full /run) would name no holder: remove it, say which file.
          fs.closeSync(fd);
          fs.rmSync(abs, { force: true });
          throw fileError(err, abs, 'write the lock');
        }
        fs.closeSync(fd);
        heldHere.add(abs);
        return { release: () => release(abs, content) };
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      }
    }
    const seen = readOr(abs);
    if (seen === undefined) continue; // released meanwhile: try again
    const holder = parseHolder(seen);
    if (holder && isAlive(abs, holder)) return { holder: { pid: holder.pid, since: mtime(abs) } };
    // The holder is gone. Remove the file only if it still names that holder: another process
    // may have taken the lock over between our read and now.
    if (readOr(abs) === seen) fs.rmSync(abs, { force: true });
  }
  const holder = parseHolder(readOr(abs) ?? '');
  if (holder) return { holder: { pid: holder.pid, since: mtime(abs) } };
  // Held here, though someone removed the file.
  if (heldHere.has(abs)) return { holder: { pid: process.pid, since: undefined } };
  throw new AgentError('LockFailed', `cannot take the lock ${abs}`, { hint: 'check the directory permissions' });
}

/**
 * Wait up to `waitMs` for the lock, trying every `pollMs`: the release function, or who still
 * holds it when the wait is over.
 */
export async function acquireLock(file: string, o: { waitMs: number; pollMs?: number }): Promise<LockAttempt> {
  const deadline = Date.now() + o.waitMs;
  const pollMs = o.pollMs ?? 200;
  for (;;) {
    const attempt = tryLock(file);
    const left = deadline - Date.now();
    if (attempt.release || left <= 0) return attempt;
    await sleep(Math.min(pollMs, left));
  }
}

/** boot's lock: taken at once or not at all (a second boot refuses; the first one does the work). */
export function acquireBootLock(file: string): Release {
  const attempt = tryLock(file);
  if (attempt.release) return attempt.release;
  const { pid } = attempt.holder;
  throw new AgentError('BootRunning', `another zdt-agent boot (PID ${pid}) is running`, {
    hint: `wait for it to finish ('zdt-agent status'); remove ${file} only if PID ${pid} is not zdt-agent`,
  });
}

function release(file: string, content: string): void {
  heldHere.delete(file);
  try {
    if (fs.readFileSync(file, 'utf8') === content) fs.rmSync(file);
  } catch {
    // Already gone.
  }
}

/** "PID [START]": START is the process start time in clock ticks since boot, or '-'. */
function parseHolder(text: string): { pid: number; start: string | undefined } | undefined {
  const [pidText, start] = text.trim().split(/\s+/);
  const pid = Number(pidText);
  if (!Number.isInteger(pid) || pid <= 0) return undefined;
  return { pid, start: start === undefined || start === '-' ? undefined : start };
}

function isAlive(file: string, holder: { pid: number; start: string | undefined }): boolean {
  if (holder.pid === process.pid) return heldHere.has(file);
  try {
    process.kill(holder.pid, 0);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EPERM') return false;
  }
  // Alive; the same process only if it started when the holder did (when both are known).
  const now = startTime(holder.pid);
  return holder.start === undefined || now === undefined || now === holder.start;
}

/** Field 22 of /proc/PID/stat (after the command name, which may hold spaces and parentheses). */
function startTime(pid: number): string | undefined {
  const stat = readOr(`/proc/${pid}/stat`);
  if (stat === undefined) return undefined;
  return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19];
}

function mtime(file: string): Date | undefined {
  try {
    return fs.statSync(file).mtime;
  } catch {
    return undefined;
  }
}

function readOr(file: string): string | undefined {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch {
    return undefined;
  }
}
