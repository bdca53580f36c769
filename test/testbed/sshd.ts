import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { freePort } from './ports.js';
import { startServer } from './process.js';

/**
 * Debian's OpenSSH server on a loopback port with a config, host key and AuthorizedKeysCommand
 * of its own (nothing of /etc/ssh is read or changed), a syslog socket to catch the audit
 * lines, and the ssh client to log in with. Every process is ended by its PID.
 */

export interface Sshd {
  port: number;
  /** sshd's own log (-e), for failure messages. */
  output(): string;
  stop(): Promise<void>;
}

const SSHD = '/usr/sbin/sshd';
/** sshd's privilege separation directory; made (and removed again) only when missing. */
const PRIVSEP_DIR = '/run/sshd';

export function sshdAvailable(): string | undefined {
  if (process.geteuid?.() !== 0) return 'needs root (sshd, AuthorizedKeysCommandUser, local accounts)';
  if (!fs.existsSync(SSHD)) return `${SSHD} is missing: apt-get install openssh-server`;
  if (spawnSync('ssh', ['-V']).error) return 'the ssh client is missing: apt-get install openssh-client';
  return undefined;
}

/**
 * A directory for the AuthorizedKeysCommand: sshd refuses a command unless the file and every
 * directory above it are root's and not group- or world-writable, which rules out /tmp. So
 * it goes under /run (root, 0755).
 */
export function makeCommandDir(): { dir: string; remove(): void } {
  const dir = fs.mkdtempSync('/run/zdt-e2e-');
  fs.chmodSync(dir, 0o755);
  return { dir, remove: () => fs.rmSync(dir, { recursive: true, force: true }) };
}

/** A root-owned 0755 shell wrapper: sshd passes no environment, so it sets what the agent needs. */
export function writeKeyCommand(file: string, o: { binary: string; args?: string[]; env: Record<string, string> }): void {
  const q = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;
  const env = Object.entries(o.env).map(([k, v]) => `${k}=${q(v)}`);
  fs.writeFileSync(file, `#!/bin/sh\nexec env -i ${env.join(' ')} ${q(o.binary)} ssh-keys ${(o.args ?? []).map(q).join(' ')} "$@"\n`, { mode: 0o755 });
  fs.chmodSync(file, 0o755);
}

export async function startSshd(o: { dir: string; keyCommand: string; commandUser: string; extraConfig?: string[] }): Promise<Sshd> {
  const port = await freePort();
  const hostKey = path.join(o.dir, 'ssh_host_ed25519_key');
  if (!fs.existsSync(hostKey)) execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', hostKey]);
  const config = path.join(o.dir, 'sshd_config');
  fs.writeFileSync(
    config,
    [
      `Port ${port}`,
      'ListenAddress 127.0.0.1',
      `HostKey ${hostKey}`,
      `PidFile ${path.join(o.dir, 'sshd.pid')}`,
      'AuthorizedKeysFile none',
      `AuthorizedKeysCommand ${o.keyCommand} %u %f`,
      `AuthorizedKeysCommandUser ${o.commandUser}`,
      'PubkeyAuthentication yes',
      'PasswordAuthentication no',
      'KbdInteractiveAuthentication no',
      // Without PAM, as on Alpine: a locked account ('!' password) would be refused.
      'UsePAM no',
      'PermitRootLogin no',
      'LogLevel VERBOSE',
      ...(o.extraConfig ?? []),
      '',
    ].join('\n'),
  );
  const madePrivsep = !fs.existsSync(PRIVSEP_DIR);
  if (madePrivsep) fs.mkdirSync(PRIVSEP_DIR, { mode: 0o755 });
  const check = spawnSync(SSHD, ['-t', '-f', config], { encoding: 'utf8' });
  if (check.status !== 0) throw new Error(`sshd -t rejects ${config}: ${check.stderr}`);
  const server = await startServer({
    what: 'sshd',
    file: SSHD,
    args: ['-D', '-e', '-f', config],
    ready: () => sshBanner(port),
    timeoutMs: 20_000,
  });
  return {
    port,
    output: server.output,
    stop: async () => {
      await server.stop();
      if (madePrivsep) fs.rmSync(PRIVSEP_DIR, { recursive: true, force: true });
    },
  };
}

function sshBanner(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    s.setTimeout(1000);
    s.once('data', (d) => {
      s.destroy();
      resolve(d.toString('latin1').startsWith('SSH-2.0-'));
    });
    s.once('error', () => resolve(false));
    s.once('timeout', () => {
      s.destroy();
      resolve(false);
    });
  });
}

/** `ssh user@127.0.0.1 -p port cmd` with one identity, no agent, no known_hosts, no prompts. */
export function sshLogin(o: { port: number; user: string; identity: string; command: string }): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(
    'ssh',
    [
      '-F', '/dev/null',
      '-p', String(o.port),
      '-i', o.identity,
      '-o', 'IdentitiesOnly=yes',
      '-o', 'IdentityAgent=none',
      '-o', 'BatchMode=yes',
      '-o', 'StrictHostKeyChecking=no',
      '-o', 'UserKnownHostsFile=/dev/null',
      '-o', 'LogLevel=ERROR',
      '-o', 'ConnectTimeout=15',
      `${o.user}@127.0.0.1`,
      o.command,
    ],
    { encoding: 'utf8', timeout: 60_000, env: { ...process.env, SSH_AUTH_SOCK: '' } },
  );
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

export interface SyslogSink {
  /** The messages received so far, one per datagram. */
  lines(): string[];
  stop(): Promise<void>;
}

const SINK_PY = `
import os, socket, sys
path = sys.argv[1]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(path)
os.chmod(path, 0o666)
sys.stdout.write('ready\\n'); sys.stdout.flush()
while True:
    d = s.recv(65536)
    sys.stdout.write(d.decode('utf-8', 'replace').replace('\\n', ' ') + '\\n'); sys.stdout.flush()
`;

/**
 * A syslog datagram socket at `socketPath` (the agent's <root>/dev/log in tests) that keeps
 * what it receives. Writable by everyone, as /dev/log is, so that the unprivileged
 * AuthorizedKeysCommandUser's logger reaches it.
 */
export async function startSyslogSink(socketPath: string): Promise<SyslogSink> {
  fs.mkdirSync(path.dirname(socketPath), { recursive: true });
  fs.rmSync(socketPath, { force: true });
  const server = await startServer({
    what: 'syslog sink',
    file: 'python3',
    args: ['-u', '-c', SINK_PY, socketPath],
    ready: async () => fs.existsSync(socketPath),
    timeoutMs: 20_000,
  });
  return {
    lines: () =>
      server
        .output()
        .split('\n')
        .filter((l) => l && l !== 'ready'),
    stop: async () => {
      await server.stop();
      fs.rmSync(socketPath, { force: true });
    },
  };
}

/** A local account for a login test (real: sshd asks the system), removed by name afterwards. */
export function addLoginUser(name: string): { remove(): void } {
  // Password field '*': no password, but not locked ('!'), which sshd without PAM refuses.
  execFileSync('useradd', ['--no-create-home', '--home-dir', '/', '--shell', '/bin/sh', '--password', '*', '--comment', 'zdt-agent e2e', name]);
  return { remove: () => void spawnSync('userdel', [name]) };
}

export function tempKey(dir: string, name: string, type: 'ed25519' | 'rsa' | 'ecdsa' = 'ed25519'): { file: string; pub: string } {
  const file = path.join(dir, name);
  execFileSync('ssh-keygen', ['-q', '-t', type, '-N', '', '-C', name, '-f', file]);
  return { file, pub: fs.readFileSync(`${file}.pub`, 'utf8').trim() };
}

export const tmpdir = (prefix: string) => fs.mkdtempSync(path.join(os.tmpdir(), prefix));
