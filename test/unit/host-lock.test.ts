import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { acquireBootLock, acquireLock, tryLock } from '../../agent/host/lock.js';

/** agent/host/lock.ts: one holder at a time, bounded waits, takeover of a dead holder's lock. */

let dir: string;
let file: string;
beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'zdt-lock-'));
  file = path.join(dir, 'run/zdt-agent/test.lock');
});
afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

/** This process's start time as the lock file records it (field 22 of /proc/PID/stat). */
const startOf = (pid: number) => {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19];
};

describe('lock files', () => {
  it('one holder at a time, also within one process; released, the next one gets it', () => {
    const first = tryLock(file);
    expect(first.release).toBeDefined();
    expect(fs.readFileSync(file, 'utf8')).toBe(`${process.pid} ${startOf(process.pid)}\n`);
    expect(fs.statSync(file).mode & 0o777).toBe(0o600);
    const second = tryLock(file);
    expect(second.holder).toMatchObject({ pid: process.pid, since: expect.any(Date) });
    first.release!();
    expect(fs.existsSync(file)).toBe(false);
    const third = tryLock(file);
    expect(third.release).toBeDefined();
    third.release!();
  });

  it('waits for a holder that finishes within the wait', async () => {
    const first = tryLock(file);
    setTimeout(() => first.release!(), 300);
    const started = Date.now();
    const second = await acquireLock(file, { waitMs: 5000, pollMs: 50 });
    expect(second.release).toBeDefined();
    expect(Date.now() - started).toBeGreaterThanOrEqual(250);
    expect(Date.now() - started).toBeLessThan(2000);
    second.release!();
  });

  it('gives up after a bounded wait while another live process holds it, and names that process', async () => {
    const child = spawn('sleep', ['30'], { stdio: 'ignore' });
    try {
      await new Promise((r) => child.once('spawn', r));
      fs.mkdirSync(path.dirname(file), { recursive: true });
      fs.writeFileSync(file, `${child.pid} ${startOf(child.pid!)}\n`);
      const started = Date.now();
      const r = await acquireLock(file, { waitMs: 400, pollMs: 50 });
      expect(r.release).toBeUndefined();
      expect(r.holder?.pid).toBe(child.pid);
      expect(Date.now() - started).toBeGreaterThanOrEqual(390);
      expect(Date.now() - started).toBeLessThan(1500);
      // Still the holder's: a waiter that gave up removes nothing.
      expect(fs.readFileSync(file, 'utf8')).toMatch(new RegExp(`^${child.pid} `));
    } finally {
      child.kill('SIGKILL');
    }
  });

  it("takes over the lock of a process that is gone, and of a PID reused by another process", () => {
    fs.mkdirSync(path.dirname(file), { recursive: true });
    fs.writeFileSync(file, '999999999 12345\n');
    const a = tryLock(file);
    expect(a.release).toBeDefined();
    a.release!();
    // The parent runs, but started at another time than the process that wrote the lock.
    fs.writeFileSync(file, `${process.ppid} 1\n`);
    const b = tryLock(file);
    expect(b.release).toBeDefined();
    b.release!();
    // A lock without a start time (older agents) counts as held while its PID runs.
    fs.writeFileSync(file, `${process.ppid}\n`);
    expect(tryLock(file).holder?.pid).toBe(process.ppid);
  });

  it("boot's lock refuses at once while held", () => {
    const release = acquireBootLock(file);
    expect(() => acquireBootLock(file)).toThrow(expect.objectContaining({ code: 'BootRunning' }));
    release();
    acquireBootLock(file)();
  });
});
