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

/**
 * A root-owned 0755 shell wrapper: sshd passes no environment, so it sets what the agent needs.
 * The binary is copied beside it, as /usr/bin/zdt-agent is installed on a node: the
 * unprivileged AuthorizedKeysCommandUser must be able to reach it, and a checkout may sit in
 * a directory it cannot enter (mktemp -d makes 0700 ones).
 */
export function writeKeyCommand(file: string, o: { binary: string; args?: string[]; env: Record<string, string> }): void {
  const q = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;
  const env = Object.entries(o.env).map(([k, v]) => `${k}=${q(v)}`);
  const binary = path.join(path.dirname(file), 'zdt-agent');
  fs.copyFileSync(o.binary, binary);
  fs.chmodSync(binary, 0o755);
  fs.writeFileSync(file, `#!/bin/sh\nexec env -i ${env.join(' ')} ${q(binary)} ${(o.args ?? []).map(q).join(' ')} ssh-keys "$@"\n`, { mode: 0o755 });
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

/**
 * A bastion login for `make demo` (scripts/demo.ts): an IAM user of a group logs in over SSH
 * with the key they uploaded, through `binary` as sshd's AuthorizedKeysCommand; a user outside
 * the group is refused. Each step is reported through `note`; what it starts is added to
 * `cleanups` (sshd, the syslog sink, the login accounts, the directories).
 */
export async function demoSshLogin(o: {
  binary: string;
  iamEndpoint: string;
  region: string;
  note: (line: string) => void;
  cleanups: Array<() => Promise<void> | void>;
}): Promise<void> {
  const { IAMClient, CreateGroupCommand, CreateUserCommand, AddUserToGroupCommand, UploadSSHPublicKeyCommand } = await import('@aws-sdk/client-iam');
  const creds = { accessKeyId: 'test', secretAccessKey: 'test' };
  const iam = new IAMClient({ region: o.region, endpoint: o.iamEndpoint, credentials: creds });
  const work = tmpdir('zdt-demo-ssh-');
  fs.chmodSync(work, 0o755);
  o.cleanups.push(() => fs.rmSync(work, { recursive: true, force: true }));
  const jane = { iam: 'zdt.demo.jane@example.com', login: 'zdt.demo.jane.at.example.com', key: tempKey(work, 'jane') };
  const mallory = { iam: 'zdt-demo-mallory', login: 'zdt-demo-mallory', key: tempKey(work, 'mallory') };
  await iam.send(new CreateGroupCommand({ GroupName: 'bastion-demo' }));
  for (const u of [jane, mallory]) {
    await iam.send(new CreateUserCommand({ UserName: u.iam }));
    await iam.send(new UploadSSHPublicKeyCommand({ UserName: u.iam, SSHPublicKeyBody: u.key.pub }));
  }
  await iam.send(new AddUserToGroupCommand({ GroupName: 'bastion-demo', UserName: jane.iam }));
  o.note(`IAM: group bastion-demo = [${jane.iam}]; ${mallory.iam} has a key but is not in the group`);

  const root = path.join(work, 'root');
  fs.mkdirSync(path.join(root, 'etc/zdt-agent'), { recursive: true, mode: 0o755 });
  for (const f of ['passwd', 'group', 'shadow', 'gshadow', 'login.defs']) fs.copyFileSync(`/etc/${f}`, path.join(root, 'etc', f));
  fs.mkdirSync(path.join(root, 'home'));
  fs.writeFileSync(
    path.join(root, 'etc/zdt-agent/config.yaml'),
    `node: { role: bastion }\nssh: { iamGroup: bastion-demo, keyOptions: 'restrict,pty' }\naws: { region: ${o.region}, endpoint: '${o.iamEndpoint}' }\n`,
  );
  const sink = await startSyslogSink(path.join(root, 'dev/log'));
  fs.chmodSync(path.join(root, 'dev'), 0o755);
  o.cleanups.push(() => sink.stop());
  const env = { ...process.env, AWS_ACCESS_KEY_ID: creds.accessKeyId, AWS_SECRET_ACCESS_KEY: creds.secretAccessKey };

  const sync = spawnSync(o.binary, ['ssh-users', 'sync', '--root', root, '--log-level', 'warn'], { env, encoding: 'utf8' });
  o.note(`$ zdt-agent ssh-users sync  -> exit ${sync.status}: ${sync.stdout.trim().replace(/\n/g, ' | ')}`);

  for (const u of [jane, mallory]) {
    const account = addLoginUser(u.login);
    o.cleanups.push(() => account.remove());
  }
  const commandDir = makeCommandDir();
  o.cleanups.push(() => commandDir.remove());
  const command = path.join(commandDir.dir, 'zdt-agent-ssh-keys');
  writeKeyCommand(command, { binary: o.binary, env: { ZDT_ROOT: root, PATH: '/usr/bin:/bin', AWS_ACCESS_KEY_ID: creds.accessKeyId, AWS_SECRET_ACCESS_KEY: creds.secretAccessKey } });
  const sshd = await startSshd({ dir: commandDir.dir, keyCommand: command, commandUser: 'nobody' });
  o.cleanups.push(() => sshd.stop());
  o.note(`sshd on 127.0.0.1:${sshd.port}: AuthorizedKeysCommand ${command} %u %f (a wrapper of ${o.binary}), as nobody`);

  for (const u of [jane, mallory]) {
    const before = sink.lines().length;
    const r = sshLogin({ port: sshd.port, user: u.login, identity: u.key.file, command: 'echo "logged in as $(id -un)"' });
    o.note(`$ ssh -i ${path.basename(u.key.file)} ${u.login}@127.0.0.1  -> exit ${r.status}: ${(r.stdout || r.stderr).trim()}`);
    await new Promise((r2) => setTimeout(r2, 300)); // the audit lines come from detached loggers
    for (const l of sink.lines().slice(before)) o.note(`  syslog: ${l.replace(/^<\d+>/, '')}`);
  }
}
