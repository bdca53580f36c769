import fs from 'node:fs';
import { AddUserToGroupCommand, CreateGroupCommand, CreateUserCommand, IAMClient, UploadSSHPublicKeyCommand } from '@aws-sdk/client-iam';
import { AssumeRoleCommand, STSClient } from '@aws-sdk/client-sts';
import { afterAll, beforeAll, describe, expect } from 'vitest';
import { stringify } from 'yaml';
import { startFidelityProxy, type FidelityProxy } from '../testbed/fidelity-proxy.js';
import { mountFullDisk } from '../testbed/full-disk.js';
import { startMoto, type Moto } from '../testbed/moto.js';
import { freePort } from '../testbed/ports.js';
import { makeTempRoot, type TempRoot } from '../testbed/root.js';
import { tempKey, tmpdir } from '../testbed/sshd.js';
import { faultTable, runScenarioAgent, strayTempFiles, undoAfterEachScenario } from './scenario.js';

/**
 * Fault injection for `zdt-agent ssh-keys USER` as sshd runs it (a process; stdout is what
 * sshd reads as authorized_keys lines): IAM and STS behind the fidelity proxy throttled,
 * failing, resetting, slow and hung, a stale cache during an outage, a full cache directory.
 * Fail closed: no keys and a non-zero exit whenever IAM could not say, within ssh.deadline.
 */

const REGION = 'us-east-1';
const CREDS = { accessKeyId: 'test', secretAccessKey: 'test' };
const CENTRAL_ROLE = 'arn:aws:iam::210987654321:role/bastion-key-reader';

let moto: Moto;
let proxy: FidelityProxy;
let keyDir: string;
let alicePub: string;
let frankPub: string;
const undo = undoAfterEachScenario(() => proxy);

async function seed(iam: IAMClient, group: string, user: string, pub: string): Promise<void> {
  await iam.send(new CreateGroupCommand({ GroupName: group }));
  await iam.send(new CreateUserCommand({ UserName: user }));
  await iam.send(new AddUserToGroupCommand({ GroupName: group, UserName: user }));
  await iam.send(new UploadSSHPublicKeyCommand({ UserName: user, SSHPublicKeyBody: pub }));
}

beforeAll(async () => {
  moto = await startMoto();
  proxy = await startFidelityProxy({ target: moto.endpoint });
  keyDir = tmpdir('zdt-ssh-faults-');
  alicePub = tempKey(keyDir, 'alice').pub;
  frankPub = tempKey(keyDir, 'frank').pub;
  await seed(new IAMClient({ region: REGION, endpoint: moto.endpoint, credentials: CREDS }), 'bastion-ops', 'alice', alicePub);
  const sts = new STSClient({ region: REGION, endpoint: moto.endpoint, credentials: CREDS });
  const c = (await sts.send(new AssumeRoleCommand({ RoleArn: CENTRAL_ROLE, RoleSessionName: 'seed' }))).Credentials!;
  const central = new IAMClient({ region: REGION, endpoint: moto.endpoint, credentials: { accessKeyId: c.AccessKeyId!, secretAccessKey: c.SecretAccessKey!, sessionToken: c.SessionToken! } });
  await seed(central, 'central-ops', 'frank', frankPub);
}, 120_000);

afterAll(async () => {
  await proxy?.stop();
  await moto?.stop();
  if (keyDir) fs.rmSync(keyDir, { recursive: true, force: true });
});

/** A bastion's root with its config: IAM through the proxy (or `endpoint`), 2 s requests, 3 attempts. */
async function bastion(ssh: Record<string, unknown> = {}, endpoint?: string): Promise<TempRoot> {
  const root = await makeTempRoot();
  undo.later(() => root.cleanup());
  fs.mkdirSync(root.at('/etc/zdt-agent'), { recursive: true });
  const config = {
    node: { role: 'bastion' },
    ssh: { iamGroup: 'bastion-ops', deadline: 4, ...ssh },
    aws: { region: REGION, endpoint: endpoint ?? proxy.endpoint, maxAttempts: 3, requestTimeoutMs: 2000, connectTimeoutMs: 1000 },
  };
  fs.writeFileSync(root.at('/etc/zdt-agent/config.yaml'), stringify(config));
  return root;
}

const env = (root: TempRoot): NodeJS.ProcessEnv => ({
  PATH: process.env.PATH,
  ZDT_ROOT: root.dir,
  AWS_ACCESS_KEY_ID: CREDS.accessKeyId,
  AWS_SECRET_ACCESS_KEY: CREDS.secretAccessKey,
  AWS_EC2_METADATA_DISABLED: 'true',
});

/** ssh-keys as sshd runs it: `zdt-agent ssh-keys USER` (the root comes from ZDT_ROOT). */
const sshKeys = (root: TempRoot, user = 'alice', limitMs = 30_000) => runScenarioAgent({ root: root.dir, args: ['ssh-keys', user], env: env(root), limitMs });

const keyLine = (pub: string, iamUser: string) => `${pub.split(' ').slice(0, 2).join(' ')} ${iamUser}\n`;
const printed = (stdout: string) => (stdout === '' ? 'no output' : `${stdout.trim().split('\n').length} key line(s)`);

const scenario = faultTable('ssh-keys');

describe('ssh-keys under IAM and STS faults', () => {
  scenario('IAM GetGroup throttled twice, then answers', 'exit 0, alice\'s key printed', async (t) => {
    const root = await bastion();
    proxy.inject({ action: 'GetGroup', kind: 'throttle', times: 2 });
    const r = await sshKeys(root);
    t.observe(`${r.summary}; ${printed(r.stdout)}; GetGroup calls ${proxy.calls('GetGroup')}`);
    expect(r.code).toBe(0);
    expect(r.stdout).toBe(keyLine(alicePub, 'alice'));
  });

  scenario('IAM GetGroup answers 500 for good, no cache', 'exit 1, no output (fail closed)', async (t) => {
    const root = await bastion();
    proxy.inject({ action: 'GetGroup', kind: '500' });
    const r = await sshKeys(root);
    t.observe(`${r.summary}; ${printed(r.stdout)}`);
    expect(r.code).toBe(1);
    expect(r.stdout).toBe('');
  });

  scenario('IAM ListSSHPublicKeys resets the connection for good', 'exit 1, no output', async (t) => {
    const root = await bastion();
    proxy.inject({ action: 'ListSSHPublicKeys', kind: 'reset' });
    const r = await sshKeys(root);
    t.observe(`${r.summary}; ${printed(r.stdout)}`);
    expect(r.code).toBe(1);
    expect(r.stdout).toBe('');
  });

  scenario('IAM GetSSHPublicKey hangs past ssh.deadline (2 s)', 'exit 3 within the deadline, no output', async (t) => {
    const root = await bastion({ deadline: 2 });
    proxy.inject({ action: 'GetSSHPublicKey', kind: 'hang' });
    const r = await sshKeys(root);
    t.observe(`${r.summary}; ${printed(r.stdout)}; ${(r.ms / 1000).toFixed(1)}s`);
    expect(r.code).toBe(3);
    expect(r.stdout).toBe('');
    expect(r.ms).toBeLessThan(15_000);
  });

  scenario('IAM GetGroup slowed by 1 s (deadline 4 s)', 'exit 0, key printed', async (t) => {
    const root = await bastion();
    proxy.inject({ action: 'GetGroup', kind: 'latency', ms: 1000 });
    const r = await sshKeys(root);
    t.observe(`${r.summary}; ${printed(r.stdout)}`);
    expect(r.code).toBe(0);
    expect(r.stdout).toBe(keyLine(alicePub, 'alice'));
  });

  scenario('IAM hangs while the cache is stale but within ssh.staleMax', 'exit 0, keys from the stale cache', async (t) => {
    const root = await bastion({ cacheTtl: 60, staleMax: 600, deadline: 2 });
    expect((await sshKeys(root)).code).toBe(0); // root fills the cache
    const file = root.at('/var/cache/zdt-agent/ssh-keys.json');
    const cache = JSON.parse(fs.readFileSync(file, 'utf8'));
    cache.snapshot.fetchedAt = Date.now() - 120_000;
    fs.writeFileSync(file, JSON.stringify(cache));
    proxy.inject({ action: 'GetGroup', kind: 'hang' });
    const r = await sshKeys(root);
    const log = fs.readFileSync(root.at('/var/log/zdt-agent.log'), 'utf8');
    t.observe(`${r.summary}; ${printed(r.stdout)}; source=${/source=(\S+)/.exec(log.split('\n').filter(Boolean).at(-1) ?? '')?.[1]}`);
    expect(r.code).toBe(0);
    expect(r.stdout).toBe(keyLine(alicePub, 'alice'));
    expect(log).toMatch(/result=keys keys=1 source=stale-cache/);
  });

  scenario('STS AssumeRole of the central account hangs', 'exit 3 within the deadline, no output', async (t) => {
    const root = await bastion({ iamGroup: 'central-ops', roleArn: CENTRAL_ROLE, deadline: 2 });
    proxy.inject({ action: 'AssumeRole', kind: 'hang' });
    const r = await sshKeys(root, 'frank');
    t.observe(`${r.summary}; ${printed(r.stdout)}; ${(r.ms / 1000).toFixed(1)}s`);
    expect(r.code).toBe(3);
    expect(r.stdout).toBe('');
  });

  scenario('STS AssumeRole answers 503 for good', 'exit 1, no output', async (t) => {
    const root = await bastion({ iamGroup: 'central-ops', roleArn: CENTRAL_ROLE });
    proxy.inject({ action: 'AssumeRole', kind: '503' });
    const r = await sshKeys(root, 'frank');
    t.observe(`${r.summary}; ${printed(r.stdout)}`);
    expect(r.code).toBe(1);
    expect(r.stdout).toBe('');
  });

  scenario('STS AssumeRole throttled once, then IAM of the central account answers', 'exit 0, frank\'s key printed', async (t) => {
    const root = await bastion({ iamGroup: 'central-ops', roleArn: CENTRAL_ROLE });
    proxy.inject({ action: 'AssumeRole', kind: 'throttle', times: 1 });
    const r = await sshKeys(root, 'frank');
    t.observe(`${r.summary}; ${printed(r.stdout)}`);
    expect(r.code).toBe(0);
    expect(r.stdout).toBe(keyLine(frankPub, 'frank'));
  });

  scenario('the IAM endpoint refuses connections', 'exit 1, no output, well within the deadline', async (t) => {
    const root = await bastion({}, `http://127.0.0.1:${await freePort()}`);
    const r = await sshKeys(root);
    t.observe(`${r.summary}; ${printed(r.stdout)}; ${(r.ms / 1000).toFixed(1)}s`);
    expect(r.code).toBe(1);
    expect(r.stdout).toBe('');
  });

  scenario('the key cache directory is full (a real full tmpfs)', 'exit 0, key printed; the cache is not written', async (t) => {
    const root = await bastion();
    const disk = await mountFullDisk(root.at('/var/cache/zdt-agent'));
    try {
      const r = await sshKeys(root);
      const written = fs.existsSync(root.at('/var/cache/zdt-agent/ssh-keys.json'));
      t.observe(`${r.summary}; ${printed(r.stdout)}; cache ${written ? 'written' : 'not written'}`);
      expect(r.code).toBe(0);
      expect(r.stdout).toBe(keyLine(alicePub, 'alice'));
      expect(fs.readFileSync(root.at('/var/log/zdt-agent.log'), 'utf8')).toMatch(/cannot write the key cache/);
      // Waits for the `secrets` helper's fix (issue 11): writeFileAtomic leaves its temp file on ENOSPC.
      expect(strayTempFiles(root.at('/var/cache'))).toEqual([]);
    } finally {
      await disk.unmount();
    }
  });
});
