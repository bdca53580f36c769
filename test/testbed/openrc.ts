import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

/**
 * Real OpenRC (Debian's `openrc` package: openrc, openrc-run, rc-service, supervise-daemon) in
 * a private mount and PID namespace (`unshare -m -p -f --mount-proc`), so that the machine's
 * own services are never seen or touched:
 *
 * - /run, /etc/init.d and /etc/runlevels are empty tmpfs mounts inside the namespace, holding
 *   only the scripts a test installs; /etc/rc.conf is a bind mount of the test's own file
 *   (OpenRC sources it for every service: it stands in for /etc/conf.d, which Debian lacks);
 * - the namespace's PID 1 is a shell that waits; commands run in the namespace with
 *   `nsenter`. Killing PID 1 (stop) ends every process in the namespace (supervise-daemon,
 *   the services) and drops its mounts: nothing is left behind.
 */

export interface OpenRc {
  /** Runs a shell command inside the namespace (without blocking the test's own servers). */
  sh(command: string, timeoutMs?: number): Promise<{ code: number | null; out: string }>;
  stop(): Promise<void>;
}

export function openrcAvailable(): boolean {
  return ['openrc', 'openrc-run', 'rc-service', 'supervise-daemon', 'unshare', 'nsenter'].every((c) => spawnSync('sh', ['-c', `command -v ${c}`]).status === 0);
}

export async function startOpenRc(o: { services: Record<string, string>; rcConf: string; runlevel: string[] }): Promise<OpenRc> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'zdt-openrc-'));
  fs.mkdirSync(path.join(dir, 'init.d'));
  for (const [name, script] of Object.entries(o.services)) fs.writeFileSync(path.join(dir, 'init.d', name), script, { mode: 0o755 });
  fs.writeFileSync(path.join(dir, 'rc.conf'), o.rcConf);
  const ready = path.join(dir, 'ready');
  const setup = [
    'set -e',
    'mount -t tmpfs tmpfs /run',
    'mkdir -p /run/openrc && touch /run/openrc/softlevel',
    'mount -t tmpfs tmpfs /etc/init.d',
    'mount -t tmpfs tmpfs /etc/runlevels',
    'mkdir -p /etc/runlevels/sysinit /etc/runlevels/boot /etc/runlevels/default /etc/runlevels/shutdown',
    `mount --bind '${dir}/rc.conf' /etc/rc.conf`,
    `cp -p '${dir}'/init.d/* /etc/init.d/`,
    ...o.runlevel.map((s) => `ln -s /etc/init.d/${s} /etc/runlevels/default/${s}`),
    `touch '${ready}'`,
    // PID 1 of the namespace: waits (and reaps) until the test kills it.
    'while :; do sleep 1 & wait $!; done',
  ].join('\n');
  const unshare: ChildProcess = spawn('unshare', ['-m', '-p', '-f', '--mount-proc', '--propagation', 'private', 'sh', '-c', setup], { stdio: 'ignore' });
  const deadline = Date.now() + 15_000;
  while (!fs.existsSync(ready)) {
    if (unshare.exitCode !== null || Date.now() > deadline) {
      unshare.kill('SIGKILL');
      fs.rmSync(dir, { recursive: true, force: true });
      throw new Error('startOpenRc: the namespace did not come up');
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  // The namespace's PID 1, as the host sees it: unshare's only child.
  const init = Number(fs.readFileSync(`/proc/${unshare.pid}/task/${unshare.pid}/children`, 'utf8').trim().split(/\s+/)[0]);
  return {
    sh: (command, timeoutMs = 120_000) =>
      new Promise((resolve, reject) => {
        const child = spawn('nsenter', ['-t', String(init), '-m', '-p', '--', 'sh', '-c', command], { stdio: ['ignore', 'pipe', 'pipe'] });
        let out = '';
        child.stdout.on('data', (c: Buffer) => (out += c.toString()));
        child.stderr.on('data', (c: Buffer) => (out += c.toString()));
        const killer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
        child.on('error', reject);
        child.on('exit', (code) => {
          clearTimeout(killer);
          resolve({ code, out });
        });
      }),
    stop: async () => {
      // The namespace's PID 1 dying ends every process in it.
      try {
        process.kill(init, 'SIGKILL');
      } catch {
        // gone already
      }
      await new Promise<void>((resolve) => (unshare.exitCode !== null ? resolve() : unshare.once('exit', () => resolve())));
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}
