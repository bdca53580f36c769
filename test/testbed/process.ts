import { spawn } from 'node:child_process';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

/** `<cache>/bin[/sub]`: where install.sh puts the Go-built test servers ($ZDT_CACHE_DIR or ~/.cache/zdt-agent). */
export function testbedBinDir(...sub: string[]): string {
  return path.join(process.env.ZDT_CACHE_DIR ?? path.join(os.homedir(), '.cache', 'zdt-agent'), 'bin', ...sub);
}

/** A server the testbed started: it is ended by its PID, never by name. */
export interface ServerProcess {
  readonly pid: number;
  /** The last output it wrote (stdout and stderr), for failure messages. */
  output(): string;
  /** SIGTERM, then SIGKILL after `graceMs`; resolves once it has exited. Safe to call twice. */
  stop(graceMs?: number): Promise<void>;
}

const OUTPUT_KEEP = 16_000;

/**
 * Starts `file` and waits until `ready()` answers true. When it exits first or does not get
 * ready within `timeoutMs`, it is stopped and the error carries the tail of its output.
 */
export async function startServer(o: {
  what: string;
  file: string;
  args: readonly string[];
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  ready: () => Promise<boolean>;
  timeoutMs?: number;
}): Promise<ServerProcess> {
  const child = spawn(o.file, [...o.args], { env: o.env ?? process.env, cwd: o.cwd, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  const keep = (chunk: Buffer) => {
    out = (out + chunk.toString('utf8')).slice(-OUTPUT_KEEP);
  };
  child.stdout.on('data', keep);
  child.stderr.on('data', keep);
  let exitedWith: string | undefined;
  const exited = new Promise<void>((resolve) => {
    child.once('exit', (code, signal) => {
      exitedWith = signal ? `signal ${signal}` : `code ${code}`;
      resolve();
    });
    child.once('error', (err: NodeJS.ErrnoException) => {
      exitedWith = err.code === 'ENOENT' ? `${o.file} not found; run 'make testbed-deps'` : err.message;
      resolve();
    });
  });

  const stop = async (graceMs = 5000): Promise<void> => {
    if (exitedWith !== undefined || child.pid === undefined) return;
    process.kill(child.pid, 'SIGTERM');
    const killer = setTimeout(() => {
      if (exitedWith === undefined && child.pid !== undefined) process.kill(child.pid, 'SIGKILL');
    }, graceMs);
    await exited;
    clearTimeout(killer);
  };

  const deadline = Date.now() + (o.timeoutMs ?? 30_000);
  for (;;) {
    if (exitedWith !== undefined) {
      throw new Error(`${o.what} exited (${exitedWith}) before it was ready: ${o.file} ${o.args.join(' ')}\n${out}`);
    }
    if (await o.ready().catch(() => false)) break;
    if (Date.now() > deadline) {
      await stop();
      throw new Error(`${o.what} was not ready within ${o.timeoutMs ?? 30_000} ms: ${o.file} ${o.args.join(' ')}\n${out}`);
    }
    await sleep(100);
  }
  return { pid: child.pid!, output: () => out, stop };
}

/** True once `url` answers any HTTP status (the server is listening and speaking HTTP). */
export async function answersHttp(url: string, init?: RequestInit): Promise<boolean> {
  const res = await fetch(url, { ...init, signal: AbortSignal.timeout(1000) });
  await res.arrayBuffer();
  return true;
}
