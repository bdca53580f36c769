import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { configSchema } from '../../agent/config/schema.js';
import { makePaths, type Paths } from '../../agent/host/paths.js';
import { answerFrom, checkLogin } from '../../agent/ssh/answer.js';
import { auditMessage, loggerArgs } from '../../agent/ssh/audit.js';
import { cacheFile, freshness, readCache, writeCache, type GroupSnapshot, type KeyCache } from '../../agent/ssh/cache.js';
import { withFingerprint, type PublicKey } from '../../agent/ssh/keys.js';
import { settingsFromConfig, type SshSettings } from '../../agent/ssh/settings.js';

const ED_A = { type: 'ssh-ed25519', blob: 'AAAAC3NzaC1lZDI1NTE5AAAAIGyDfpCdRpVCYxKxygw5uOBNnofRgZtNdCZmjjjSNLks' } as const;
const ED_B = { type: 'ssh-ed25519', blob: 'AAAAC3NzaC1lZDI1NTE5AAAAIJbRiv2mx6Xe0ahCwT5WOipmIu98ZINQkvbJv9mRKS+H' } as const;

function settings(ssh: Record<string, unknown> = {}): SshSettings {
  return settingsFromConfig(configSchema.parse({ node: { role: 'bastion' }, ssh: { iamGroup: 'ops', ...ssh }, aws: { region: 'eu-central-1' } }));
}

const snapshot = (members: GroupSnapshot['members'], fetchedAt = Date.now()): GroupSnapshot => ({ group: 'ops', roleArn: null, fetchedAt, members });

let root: string;
let paths: Paths;

beforeEach(() => {
  root = fs.mkdtempSync(path.join(os.tmpdir(), 'zdt-ssh-cache-'));
  paths = makePaths(root);
});
afterEach(() => fs.rmSync(root, { recursive: true, force: true }));

function writeGood(): string {
  const file = cacheFile(paths);
  const cache: KeyCache = { schema: 1, writtenAt: new Date().toISOString(), configArg: null, settings: settings(), snapshot: snapshot([{ iamUser: 'alice', keys: [ED_A] }]) };
  writeCache(file, cache);
  return file;
}

describe('the key cache file', () => {
  it('is written 0644 in a 0755 directory and read back', () => {
    const file = writeGood();
    expect(fs.statSync(file).mode & 0o777).toBe(0o644);
    expect(fs.statSync(path.dirname(file)).mode & 0o777).toBe(0o755);
    const r = readCache(file);
    expect(r.refused).toBeUndefined();
    expect(r.cache?.snapshot.members[0]?.iamUser).toBe('alice');
  });

  it('is quietly absent when missing', () => {
    expect(readCache(cacheFile(paths))).toEqual({ refused: 'missing' });
  });

  // Whoever can replace the file decides who logs in: each of these is ignored.
  const poisoned: Array<[string, (file: string) => void, RegExp]> = [
    ['owned by another user', (f) => fs.chownSync(f, 65534, 65534), /owner is uid 65534/],
    ['world-writable', (f) => fs.chmodSync(f, 0o666), /mode 666 lets group or others write/],
    ['group-writable', (f) => fs.chmodSync(f, 0o664), /mode 664/],
    [
      'a symlink to a root-owned copy',
      (f) => {
        fs.renameSync(f, `${f}.real`);
        fs.symlinkSync(`${f}.real`, f);
      },
      /symlink/,
    ],
    [
      'a FIFO (must not hang the reader)',
      (f) => {
        fs.rmSync(f);
        execFileSync('mkfifo', [f]);
      },
      /not a regular file/,
    ],
    ['a directory', (f) => {
      fs.rmSync(f);
      fs.mkdirSync(f);
    }, /not a regular file/],
    ['in a world-writable directory', (f) => fs.chmodSync(path.dirname(f), 0o777), /directory mode 777/],
    ['in a directory owned by another user', (f) => fs.chownSync(path.dirname(f), 65534, 65534), /directory owner is uid 65534/],
    ['not JSON', (f) => fs.writeFileSync(f, 'ssh-ed25519 AAAA evil'), /not a key cache/],
    ['another schema', (f) => fs.writeFileSync(f, JSON.stringify({ schema: 2 })), /not a key cache/],
  ];
  it.each(poisoned)('is refused when %s', (_name, poison, why) => {
    const file = writeGood();
    poison(file);
    const r = readCache(file);
    expect(r.cache).toBeUndefined();
    expect(r.refused).toMatch(why);
  });

  it('is fresh for cacheTtl, then stale for staleMax, then expired; a future date beyond skew is expired', () => {
    const s = settings({ cacheTtl: 60, staleMax: 600 });
    const now = 1_000_000_000;
    expect(freshness(snapshot([], now - 59_000), s, now)).toBe('fresh');
    expect(freshness(snapshot([], now - 61_000), s, now)).toBe('stale');
    expect(freshness(snapshot([], now - 659_000), s, now)).toBe('stale');
    expect(freshness(snapshot([], now - 661_000), s, now)).toBe('expired');
    expect(freshness(snapshot([], now + 60_000), s, now)).toBe('expired');
    expect(freshness(snapshot([], now - 61_000), settings({ staleMax: 0 }), now)).toBe('expired');
  });
});

describe('the answer for a login', () => {
  const members = () => [
    { iamUser: 'alice', keys: [withFingerprint(ED_A)] },
    { iamUser: 'bob+ci@x', keys: [withFingerprint(ED_B)] },
    { iamUser: 'carol', keys: [] },
  ];

  it('per-user: the mapped member gets their own keys, with the options and the IAM name as comment', () => {
    const a = answerFrom(snapshot(members()), settings({ keyOptions: 'restrict,port-forwarding' }), { user: 'bob.plus.ci.at.x' }, 'cache');
    expect(a.lines).toEqual([`restrict,port-forwarding ${ED_B.type} ${ED_B.blob} bob+ci@x`]);
    expect(a.record).toMatchObject({ outcome: 'keys', iamUser: 'bob+ci@x', keys: 1, source: 'cache' });
  });

  it('per-user: the audit names the owner of the offered key, also when it is another member', () => {
    const fpA = withFingerprint(ED_A).sha256;
    expect(answerFrom(snapshot(members()), settings(), { user: 'alice', fingerprint: fpA }, 'cache').record.offeredBy).toBe('alice');
    const other = answerFrom(snapshot(members()), settings(), { user: 'bob.plus.ci.at.x', fingerprint: fpA }, 'cache');
    expect(other.record).toMatchObject({ outcome: 'keys', offeredBy: 'alice' });
    expect(answerFrom(snapshot(members()), settings(), { user: 'alice', fingerprint: `SHA256:${'A'.repeat(43)}` }, 'cache').record.offeredBy).toBe('none');
    expect(answerFrom(snapshot(members()), settings(), { user: 'alice', fingerprint: 'garbage' }, 'cache').record.offeredBy).toBe('unreadable-fingerprint');
  });

  it('per-user: outsiders, members without keys and ambiguous logins get nothing', () => {
    expect(answerFrom(snapshot(members()), settings(), { user: 'mallory' }, 'cache')).toMatchObject({ lines: [], record: { outcome: 'not-in-group' } });
    expect(answerFrom(snapshot(members()), settings(), { user: 'carol' }, 'cache')).toMatchObject({ lines: [], record: { outcome: 'no-keys', iamUser: 'carol' } });
    const clash = snapshot([...members(), { iamUser: 'bob.plus.ci@x', keys: [ED_A] }]);
    expect(answerFrom(clash, settings(), { user: 'bob.plus.ci.at.x' }, 'cache')).toMatchObject({ lines: [], record: { outcome: 'ambiguous' } });
  });

  it("shared: the shared login gets every member's keys, each commented with its owner", () => {
    const s = settings({ mode: 'shared', sharedUser: 'ops' });
    const a = answerFrom(snapshot(members()), s, { user: 'ops' }, 'iam');
    expect(a.lines).toEqual([`${ED_A.type} ${ED_A.blob} alice`, `${ED_B.type} ${ED_B.blob} bob+ci@x`]);
    expect(a.record).toMatchObject({ outcome: 'keys', keys: 2, source: 'iam' });
    expect(checkLogin({ user: 'alice' }, s, paths)).toMatchObject({ outcome: 'not-shared-user' });
    expect(checkLogin({ user: 'ops' }, s, paths)).toBeUndefined();
  });

  it('a key that no longer passes the checks is dropped even from a trusted cache', () => {
    const bad: PublicKey = { type: 'ssh-ed25519', blob: `${ED_A.blob.slice(0, -8)}AAAA` };
    const evil = { type: 'ssh-ed25519', blob: `${ED_A.blob} command="sh"` } as PublicKey;
    const a = answerFrom(snapshot([{ iamUser: 'alice', keys: [bad, evil, ED_B] }]), settings(), { user: 'alice' }, 'cache');
    expect(a.lines).toEqual([`${ED_B.type} ${ED_B.blob} alice`]);
  });

  it('per-user: root and accounts below minUid are refused before any lookup', () => {
    fs.mkdirSync(paths.at('/etc'), { recursive: true });
    fs.writeFileSync(paths.at('/etc/passwd'), 'root:x:0:0::/root:/bin/sh\nsshd:x:103:65534::/run/sshd:/usr/sbin/nologin\nalice:x:1001:1001::/home/alice:/bin/sh\n');
    expect(checkLogin({ user: 'sshd' }, settings(), paths)).toMatchObject({ outcome: 'system-user' });
    expect(checkLogin({ user: 'root' }, settings({ minUid: 0 }), makePaths(fs.mkdtempSync(path.join(root, 'x'))))).toMatchObject({ outcome: 'system-user' });
    expect(checkLogin({ user: 'alice' }, settings(), paths)).toBeUndefined();
    expect(checkLogin({ user: 'sshd' }, settings({ minUid: 100 }), paths)).toBeUndefined();
    expect(checkLogin({ user: 'a/b' }, undefined, paths)).toMatchObject({ outcome: 'invalid-user', detail: 'characters' });
  });
});

describe('the audit line', () => {
  it('is one line of printable ASCII whatever the input, at authpriv', () => {
    const msg = auditMessage({ user: 'x\ny z', outcome: 'invalid-user', detail: 'characters', offered: 'SHA256:\u0007' });
    expect(msg).toBe('ssh-keys user="x\\x0ay z" result=invalid-user offered=SHA256:\\x07 detail=characters');
    expect(auditMessage({ user: 'a"b\\', outcome: 'error', detail: 'x=y z' })).toBe('ssh-keys user=a\\x22b\\x5c result=error detail="x=y z"');
    const args = loggerArgs(paths, { user: 'alice', outcome: 'error', detail: 'IamUnavailable: throttled' });
    expect(args.slice(0, 4)).toEqual(['-p', 'authpriv.err', '-t', 'zdt-agent']);
    expect(args.slice(4, 6)).toEqual(['-u', paths.at('/dev/log')]);
    expect(loggerArgs(makePaths('/'), { user: 'alice', outcome: 'keys' })).not.toContain('-u');
  });
});
