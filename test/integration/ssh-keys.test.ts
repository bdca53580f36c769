import {
  AddUserToGroupCommand,
  CreateGroupCommand,
  CreateUserCommand,
  IAMClient,
  RemoveUserFromGroupCommand,
  UpdateSSHPublicKeyCommand,
  UploadSSHPublicKeyCommand,
} from '@aws-sdk/client-iam';
import { AssumeRoleCommand, STSClient } from '@aws-sdk/client-sts';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it, vi } from 'vitest';
import { stringify } from 'yaml';
import { runSshUsersSync } from '../../agent/commands/ssh-users.js';
import { makePaths } from '../../agent/host/paths.js';
import { cacheFile, readCache } from '../../agent/ssh/cache.js';
import { roleCredentialsFile } from '../../agent/ssh/credentials.js';
import { runSshKeysLookup } from '../../agent/ssh/lookup.js';
import { syncLockFile } from '../../agent/ssh/sync.js';
import { usersStateFile } from '../../agent/ssh/users.js';
import { answerFromCache } from '../../agent/ssh/warm.js';
import { metricsFile, readSamples } from '../../agent/log/metrics.js';
import { startFidelityProxy, type FidelityProxy } from '../testbed/fidelity-proxy.js';
import { startMoto, type Moto } from '../testbed/moto.js';
import { silentListener } from '../testbed/ports.js';
import { makeTempRoot, type TempRoot } from '../testbed/root.js';
import { startSyslogSink, tempKey, tmpdir, type SyslogSink } from '../testbed/sshd.js';

/**
 * ssh-keys and ssh-users sync against moto IAM and STS (behind the fidelity proxy, which
 * injects throttling and hangs): the group, members whose names need the mapping, active
 * and inactive keys, hostile key bodies, and a second account reached through AssumeRole.
 */

const REGION = 'us-east-1';
const CREDS = { accessKeyId: 'test', secretAccessKey: 'test' };
const CENTRAL_ROLE = 'arn:aws:iam::210987654321:role/bastion-key-reader';

let moto: Moto;
let proxy: FidelityProxy;
let keyDir: string;
const key: Record<string, { file: string; pub: string }> = {};
const keyIds: Record<string, string> = {};
const savedEnv = { ...process.env };

async function seed(iam: IAMClient, group: string, users: Array<{ name: string; member: boolean; bodies: string[] }>) {
  await iam.send(new CreateGroupCommand({ GroupName: group }));
  for (const u of users) {
    await iam.send(new CreateUserCommand({ UserName: u.name }));
    if (u.member) await iam.send(new AddUserToGroupCommand({ GroupName: group, UserName: u.name }));
    for (const body of u.bodies) {
      const out = await iam.send(new UploadSSHPublicKeyCommand({ UserName: u.name, SSHPublicKeyBody: body }));
      keyIds[`${u.name} ${body.slice(0, 40)}`] = out.SSHPublicKey?.SSHPublicKeyId as string;
    }
  }
}

beforeAll(async () => {
  Object.assign(process.env, { AWS_ACCESS_KEY_ID: CREDS.accessKeyId, AWS_SECRET_ACCESS_KEY: CREDS.secretAccessKey, AWS_REGION: REGION });
  delete process.env.AWS_PROFILE;
  moto = await startMoto();
  proxy = await startFidelityProxy({ target: moto.endpoint });
  keyDir = tmpdir('zdt-ssh-int-keys-');
  for (const name of ['alice', 'alice2', 'bob', 'carol', 'dave', 'eve', 'frank']) key[name] = tempKey(keyDir, name);

  const iam = new IAMClient({ region: REGION, endpoint: moto.endpoint, credentials: CREDS });
  await seed(iam, 'bastion-ops', [
    { name: 'alice', member: true, bodies: [key.alice!.pub, key.alice2!.pub] },
    { name: 'bob+ci@example.com', member: true, bodies: [key.bob!.pub] },
    { name: 'carol', member: true, bodies: [key.carol!.pub] }, // deactivated below
    { name: 'dave', member: false, bodies: [key.dave!.pub] },
    // A valid key between hostile ones: only it may come out.
    { name: 'eve', member: true, bodies: [`command="/bin/sh" ${key.eve!.pub}`, `${key.eve!.pub}\nssh-ed25519 ${key.dave!.pub.split(' ')[1]} dave`, key.eve!.pub, `ssh-dss ${key.eve!.pub.split(' ')[1]}`] },
  ]);
  const carolKey = Object.entries(keyIds).find(([k]) => k.startsWith('carol '))?.[1];
  await iam.send(new UpdateSSHPublicKeyCommand({ UserName: 'carol', SSHPublicKeyId: carolKey, Status: 'Inactive' }));

  // The central account: moto routes requests made with assumed-role credentials to the role's account.
  const sts = new STSClient({ region: REGION, endpoint: moto.endpoint, credentials: CREDS });
  const c = (await sts.send(new AssumeRoleCommand({ RoleArn: CENTRAL_ROLE, RoleSessionName: 'seed' }))).Credentials!;
  const central = new IAMClient({
    region: REGION,
    endpoint: moto.endpoint,
    credentials: { accessKeyId: c.AccessKeyId!, secretAccessKey: c.SecretAccessKey!, sessionToken: c.SessionToken! },
  });
  await seed(central, 'central-ops', [{ name: 'frank', member: true, bodies: [key.frank!.pub] }]);
}, 120_000);

afterAll(async () => {
  await proxy?.stop();
  await moto?.stop();
  if (keyDir) fs.rmSync(keyDir, { recursive: true, force: true });
  process.env = savedEnv;
});

let root: TempRoot;
let sink: SyslogSink;
let out: string[];

beforeEach(async () => {
  root = await makeTempRoot();
  sink = await startSyslogSink(root.at('/dev/log'));
  out = [];
  // ssh-users sync prints its summary through process.stdout; ssh-keys writes to `capture`.
  vi.spyOn(process.stdout, 'write').mockImplementation((chunk: string | Uint8Array) => {
    out.push(String(chunk));
    return true;
  });
});

afterEach(async () => {
  vi.restoreAllMocks();
  proxy.clearFaults();
  await sink.stop();
  await root.cleanup();
});

function configure(ssh: Record<string, unknown>, aws: Record<string, unknown> = {}, more: Record<string, unknown> = {}) {
  fs.mkdirSync(root.at('/etc/zdt-agent'), { recursive: true });
  const config = {
    ...more,
    node: { role: 'bastion' },
    ssh: { iamGroup: 'bastion-ops', ...ssh },
    aws: { region: REGION, endpoint: proxy.endpoint, maxAttempts: 2, ...aws },
    log: { level: 'debug' },
  };
  fs.writeFileSync(root.at('/etc/zdt-agent/config.yaml'), stringify(config));
}

const capture = (text: string) => void out.push(text);
const keysFor = (user: string, fingerprint?: string) => runSshKeysLookup({ user, fingerprint, root: root.dir }, capture);
const printed = () => out.join('');
const lineOf = (name: string, iamUser: string, options = '') => `${options ? `${options} ` : ''}${key[name]!.pub.split(' ').slice(0, 2).join(' ')} ${iamUser}`;
const agentLog = () => fs.readFileSync(root.at('/var/log/zdt-agent.log'), 'utf8');

/** The syslog lines once there are `n` (loggers run detached: their lines may arrive in any order). */
async function syslogLines(n: number): Promise<string[]> {
  for (let i = 0; i < 50 && sink.lines().length < n; i++) await new Promise((r) => setTimeout(r, 50));
  return sink.lines();
}

describe('ssh-keys per-user against IAM', () => {
  it('a member gets exactly their active keys, with the options, and root caches the whole group', async () => {
    configure({ keyOptions: 'restrict,port-forwarding' });
    expect(await keysFor('alice')).toBe(0);
    expect(printed()).toBe(`${lineOf('alice', 'alice', 'restrict,port-forwarding')}\n${lineOf('alice2', 'alice', 'restrict,port-forwarding')}\n`);
    const cache = readCache(cacheFile(makePaths(root.dir))).cache!;
    expect(cache.snapshot.members.map((m) => [m.iamUser, m.keys?.length])).toEqual([
      ['alice', 2],
      ['bob+ci@example.com', 1],
      ['carol', 0],
      ['eve', 1],
    ]);
    expect(cache.settings.ssh.iamGroup).toBe('bastion-ops');
    const lines = await syslogLines(1);
    expect(lines[0]).toMatch(/^<(86|38)>.*zdt-agent: ssh-keys user=alice iam=alice result=keys keys=2 source=iam$/);
    expect(agentLog()).toMatch(/INFO  ssh-keys user=alice iam=alice result=keys keys=2 source=iam/);
  });

  it('the next call is answered from the cache (the hot path), naming the owner of the offered key', async () => {
    configure({});
    expect(await keysFor('alice')).toBe(0);
    out.length = 0;
    proxy.inject({ action: 'GetGroup', kind: '500' }); // the cache must not need IAM
    const fp = fingerprintOf('bob');
    expect(await answerFromCache({ user: 'bob.plus.ci.at.example.com', fingerprint: fp, root: root.dir }, { out: capture })).toBe(0);
    expect(printed()).toBe(`${lineOf('bob', 'bob+ci@example.com')}\n`);
    expect(await syslogLines(2)).toContainEqual(
      expect.stringMatching(`ssh-keys user=bob.plus.ci.at.example.com iam=bob\\+ci@example.com result=keys keys=1 offered=${fp.replace(/[+/]/g, '\\$&')} offered-by=bob\\+ci@example.com source=cache$`),
    );
  });

  it('outsiders, inactive keys and unmappable logins: no output, exit 0', async () => {
    configure({});
    for (const user of ['dave', 'carol', 'nobody-here']) expect(await keysFor(user)).toBe(0);
    expect(printed()).toBe('');
    const log = agentLog();
    expect(log).toMatch(/ssh-keys user=dave result=not-in-group source=iam/);
    expect(log).toMatch(/ssh-keys user=carol iam=carol result=no-keys keys=0 source=cache/);
    expect(log).toMatch(/ssh-keys user=nobody-here result=not-in-group source=cache/);
  });

  it('hostile key bodies in IAM never reach the output; the valid key next to them does', async () => {
    configure({});
    expect(await keysFor('eve')).toBe(0);
    expect(printed()).toBe(`${lineOf('eve', 'eve')}\n`);
    const log = agentLog();
    expect(log).toMatch(/ignoring an IAM SSH key user=eve keyId=\S+ why=options-or-unknown-type/);
    expect(log).toMatch(/why=several-lines/);
  });

  it('a bad login name is refused with an audit line and without any AWS call', async () => {
    configure({}, { endpoint: 'http://127.0.0.1:9' }); // nothing listens: any call would fail
    for (const user of ['../../etc/shadow', 'a'.repeat(33), 'al+ice', 'x\ny']) expect(await keysFor(user)).toBe(0);
    expect(printed()).toBe('');
    const lines = await syslogLines(4);
    expect(lines).toHaveLength(4);
    for (const l of lines) expect(l).toMatch(/result=invalid-user detail=/);
    expect(lines.join('\n')).toMatch(/user=x\\x0ay result=invalid-user/);
  });

  it('root and system accounts get no keys even when an IAM user has that name', async () => {
    configure({});
    fs.writeFileSync(root.at('/etc/passwd'), 'root:x:0:0::/root:/bin/sh\nalice:x:999:999::/:/bin/sh\n');
    expect(await keysFor('root')).toBe(0);
    expect(await keysFor('alice')).toBe(0);
    expect(printed()).toBe('');
    expect(agentLog()).toMatch(/user=alice result=system-user detail="uid 999 is below ssh.minUid 1000"/);
  });
});

describe('ssh-keys metrics', () => {
  it('every answer is counted by result and source in metrics.textfileDir, with the age of the cache it came from', async () => {
    // Under --root, like every configured path.
    const dir = root.at('/var/lib/prometheus/node-exporter');
    configure({}, {}, { metrics: { textfileDir: '/var/lib/prometheus/node-exporter' } });
    expect(await keysFor('alice')).toBe(0); // IAM; root writes the cache with the settings
    expect(await answerFromCache({ user: 'alice', root: root.dir }, { out: capture })).toBe(0);
    expect(await answerFromCache({ user: 'dave', root: root.dir }, { out: capture })).toBe(0);
    expect(await answerFromCache({ user: '../x', root: root.dir }, { out: capture })).toBe(0);
    const samples = readSamples(metricsFile(dir, 'ssh-keys'));
    const answers = Object.fromEntries((samples.get('zdt_agent_ssh_keys_answers_total') ?? []).map((s) => [`${s.labels!.result}/${s.labels!.source}`, s.value]));
    expect(answers).toEqual({ 'keys/iam': 1, 'keys/cache': 1, 'not-in-group/cache': 1, 'invalid-user/none': 1 });
    const age = samples.get('zdt_agent_ssh_keys_cache_age_seconds')![0]!.value;
    expect(age).toBeGreaterThanOrEqual(0);
    expect(age).toBeLessThan(60);
    expect(fs.statSync(metricsFile(dir, 'ssh-keys')).mode & 0o777).toBe(0o644);
  });
});

describe('ssh-keys shared mode', () => {
  it("the shared login gets every member's active keys, each commented with its owner; other logins nothing", async () => {
    configure({ mode: 'shared', sharedUser: 'ops' });
    expect(await keysFor('alice')).toBe(0);
    expect(printed()).toBe('');
    expect(await keysFor('ops', fingerprintOf('eve'))).toBe(0);
    expect(printed()).toBe(
      [lineOf('alice', 'alice'), lineOf('alice2', 'alice'), lineOf('bob', 'bob+ci@example.com'), lineOf('eve', 'eve'), ''].join('\n'),
    );
    expect(agentLog()).toMatch(/ssh-keys user=ops iam=3-members result=keys keys=4 offered=SHA256:\S+ offered-by=eve source=iam/);
  });
});

describe('ssh-keys across accounts', () => {
  it('reads the central account through AssumeRole and keeps the role credentials 0600 for their lifetime', async () => {
    configure({ iamGroup: 'central-ops', roleArn: CENTRAL_ROLE, externalId: 'bastion-eu' });
    expect(await keysFor('frank')).toBe(0);
    expect(printed()).toBe(`${lineOf('frank', 'frank')}\n`);
    const credFile = roleCredentialsFile(makePaths(root.dir));
    const st = fs.statSync(credFile);
    expect(st.mode & 0o777).toBe(0o600);
    const first = fs.readFileSync(credFile, 'utf8');
    expect(JSON.parse(first).roleArn).toBe(CENTRAL_ROLE);

    // A cold lookup later reuses them: no second AssumeRole (the file stays as it was).
    fs.rmSync(cacheFile(makePaths(root.dir)));
    out.length = 0;
    expect(await keysFor('frank')).toBe(0);
    expect(printed()).toBe(`${lineOf('frank', 'frank')}\n`);
    expect(fs.readFileSync(credFile, 'utf8')).toBe(first);
    // The default account's group is not what it read.
    expect(await keysFor('alice')).toBe(0);
    expect(printed()).toBe(`${lineOf('frank', 'frank')}\n`);
  });
});

describe('ssh-keys when IAM fails: fail closed', () => {
  it('throttling without a cache: no output, exit 1, one error line; never an empty group', async () => {
    configure({});
    proxy.inject({ action: 'GetGroup', kind: 'throttle' });
    expect(await keysFor('alice')).toBe(1);
    expect(printed()).toBe('');
    const errors = agentLog().split('\n').filter((l) => l.includes('ERROR'));
    expect(errors).toHaveLength(1);
    expect(errors[0]).toMatch(/ssh-keys user=alice result=error detail="IamUnavailable: GetGroup bastion-ops: Throttling/);
    expect((await syslogLines(1))[0]).toMatch(/^<83>.*result=error/);
    expect(fs.existsSync(cacheFile(makePaths(root.dir)))).toBe(false);
  });

  it('a group that does not exist is an error, not an empty group', async () => {
    configure({ iamGroup: 'no-such-group' });
    expect(await keysFor('alice')).toBe(1);
    expect(agentLog()).toMatch(/result=error detail="IamGroupNotFound: IAM group no-such-group does not exist/);
  });

  it('a stale cache answers during an outage, for at most staleMax past the TTL', async () => {
    configure({ cacheTtl: 60, staleMax: 600 });
    expect(await keysFor('alice')).toBe(0);
    const file = cacheFile(makePaths(root.dir));
    const age = (seconds: number) => {
      const c = JSON.parse(fs.readFileSync(file, 'utf8'));
      c.snapshot.fetchedAt = Date.now() - seconds * 1000;
      fs.writeFileSync(file, JSON.stringify(c));
    };
    proxy.inject({ action: 'GetGroup', kind: '503' });
    age(120);
    out.length = 0;
    expect(await keysFor('alice')).toBe(0);
    expect(printed()).toBe(`${lineOf('alice', 'alice')}\n${lineOf('alice2', 'alice')}\n`);
    expect(agentLog()).toMatch(/result=keys keys=2 source=stale-cache detail="IAM unreadable, cache 12\ds old: IamUnavailable: GetGroup bastion-ops: ServiceUnavailable/);

    age(60 + 600 + 5);
    out.length = 0;
    expect(await keysFor('alice')).toBe(1);
    expect(printed()).toBe('');
  });

  it('a hanging IAM hits ssh.deadline: no output, exit 3, within the deadline', async () => {
    configure({ deadline: 2, staleMax: 0 });
    proxy.inject({ action: 'GetGroup', kind: 'hang' });
    const started = Date.now();
    expect(await keysFor('alice')).toBe(3);
    const took = Date.now() - started;
    expect(took).toBeGreaterThan(1400);
    expect(took).toBeLessThan(3000);
    expect(printed()).toBe('');
    expect(agentLog()).toMatch(/ERROR ssh-keys user=alice result=deadline detail="SshKeysDeadline: GetGroup bastion-ops did not answer in time/);
  });

  it('an endpoint that accepts and never answers also ends at the deadline', async () => {
    const holder = await silentListener();
    try {
      configure({ deadline: 1 }, { endpoint: holder.endpoint });
      const started = Date.now();
      expect(await keysFor('alice')).toBe(3);
      expect(Date.now() - started).toBeLessThan(2000);
      expect(printed()).toBe('');
    } finally {
      holder.close();
    }
  });
});

describe('ssh-users sync', () => {
  function prepareAccounts() {
    for (const f of ['passwd', 'group', 'shadow', 'gshadow', 'login.defs']) fs.copyFileSync(`/etc/${f}`, root.at(`/etc/${f}`));
    fs.mkdirSync(root.at('/home'), { recursive: true });
    // An account that exists already and is not the agent's: a member's login, never touched.
    fs.appendFileSync(root.at('/etc/passwd'), 'eve:x:1500:1500::/home/eve:/bin/sh\n');
  }
  const accounts = () => fs.readFileSync(root.at('/etc/passwd'), 'utf8');
  const sync = async () => {
    const stdout = out.length;
    const code = await runSshUsersSync({ root: root.dir, logLevel: 'error' });
    return { code, text: out.slice(stdout).join('') };
  };

  it('creates accounts for members, records them, leaves others alone, removes those whose user left', async () => {
    configure({ sudoGroup: 'sudo', shell: '/bin/sh' });
    prepareAccounts();
    const first = await sync();
    expect(first.code).toBe(0);
    expect(first.text).toMatch(/^group bastion-ops: 4 members, 4 active keys; cache \S+ssh-keys.json\naccounts: created alice bob.plus.ci.at.example.com carol; removed -; not ours, left alone eve\n$/);
    expect(accounts()).toMatch(/^alice:x:\d+:\d+:zdt-agent:\/home\/alice:\/bin\/sh$/m);
    expect(accounts()).toMatch(/^bob\.plus\.ci\.at\.example\.com:x:/m);
    expect(fs.readFileSync(root.at('/etc/group'), 'utf8')).toMatch(/^sudo:x:27:.*alice/m);
    expect(fs.readFileSync(root.at('/etc/shadow'), 'utf8')).toMatch(/^alice:\*:/m); // not locked ('!')
    const state = JSON.parse(fs.readFileSync(usersStateFile(makePaths(root.dir)), 'utf8'));
    expect(Object.keys(state.users).sort()).toEqual(['alice', 'bob.plus.ci.at.example.com', 'carol']);
    expect(fs.statSync(usersStateFile(makePaths(root.dir))).mode & 0o777).toBe(0o600);

    // The cache is fresh now: the hot path answers.
    out.length = 0;
    expect(await answerFromCache({ user: 'alice', root: root.dir }, { out: capture })).toBe(0);
    expect(printed()).toMatch(/alice\n.*alice\n$/);

    // Again: nothing to do.
    expect((await sync()).text).toMatch(/created -; removed -; not ours, left alone eve/);

    // Carol leaves the group; an IAM error first must change nothing.
    const iam = new IAMClient({ region: REGION, endpoint: moto.endpoint, credentials: CREDS });
    await iam.send(new RemoveUserFromGroupCommand({ GroupName: 'bastion-ops', UserName: 'carol' }));
    proxy.inject({ action: 'GetGroup', kind: 'throttle' });
    await expect(runSshUsersSync({ root: root.dir, logLevel: 'error' })).rejects.toMatchObject({ code: 'IamUnavailable' });
    expect(accounts()).toMatch(/^carol:/m);
    proxy.clearFaults();
    try {
      expect((await sync()).text).toMatch(/created -; removed carol; not ours, left alone eve/);
      expect(accounts()).not.toMatch(/^carol:/m);
      expect(accounts()).toMatch(/^eve:/m);
    } finally {
      await iam.send(new AddUserToGroupCommand({ GroupName: 'bastion-ops', UserName: 'carol' }));
    }
  });

  it('one sync at a time: a second waits for the first, or gives up after its bounded wait and exits 0', async () => {
    configure({});
    prepareAccounts();
    const lock = syncLockFile(makePaths(root.dir));
    // The first sync holds the lock for the 1.5 s its GetGroup takes.
    proxy.inject({ action: 'GetGroup', kind: 'latency', ms: 1500, times: 1 });
    const first = runSshUsersSync({ root: root.dir, logLevel: 'error' });
    for (let i = 0; i < 100 && !fs.existsSync(lock); i++) await new Promise((r) => setTimeout(r, 10));
    expect(fs.existsSync(lock)).toBe(true);

    // A periodic run meanwhile: waits its bound, logs, changes nothing, exits 0.
    const started = Date.now();
    expect(await runSshUsersSync({ root: root.dir, logLevel: 'warn' }, { lockWaitMs: 300 })).toBe(0);
    expect(Date.now() - started).toBeGreaterThanOrEqual(290);
    expect(agentLog()).toMatch(new RegExp(`WARN  another sync is running: this one did nothing pid=${process.pid} since=\\S+ lock=\\S+/run/zdt-agent/ssh-users.lock`));
    // One that may wait long enough runs after the first, on the records the first wrote.
    const third = runSshUsersSync({ root: root.dir, logLevel: 'error' }, { lockWaitMs: 20_000 });
    expect(await first).toBe(0);
    expect(await third).toBe(0);
    expect(out.join('')).toMatch(/created alice bob.plus.ci.at.example.com carol;[^\n]*\n.*\naccounts: created -; removed -;/);
    const state = JSON.parse(fs.readFileSync(usersStateFile(makePaths(root.dir)), 'utf8'));
    expect(Object.keys(state.users).sort()).toEqual(['alice', 'bob.plus.ci.at.example.com', 'carol']);
    expect(fs.existsSync(lock)).toBe(false);
  });

  it('does nothing and exits 0 on a node without an ssh section (the periodic job runs on every node)', async () => {
    fs.mkdirSync(root.at('/etc/zdt-agent'), { recursive: true });
    fs.writeFileSync(root.at('/etc/zdt-agent/config.yaml'), stringify({ node: { role: 'nat' } }));
    expect(await sync()).toEqual({ code: 0, text: '' });
    expect(fs.existsSync(cacheFile(makePaths(root.dir)))).toBe(false);
  });

  it('shared mode refreshes the cache and creates no accounts', async () => {
    configure({ mode: 'shared', sharedUser: 'ops' });
    prepareAccounts();
    const before = accounts();
    const r = await sync();
    expect(r.text).toMatch(/^group bastion-ops: 4 members, 4 active keys; cache \S+\n$/);
    expect(accounts()).toBe(before);
  });
});

/** What sshd passes as %f: ssh-keygen -l prints "256 SHA256:… comment (ED25519)". */
function fingerprintOf(name: string): string {
  return execFileSync('ssh-keygen', ['-l', '-f', `${key[name]!.file}.pub`], { encoding: 'utf8' }).split(' ')[1] as string;
}
