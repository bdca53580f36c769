import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { checkBlob, fingerprintMd5, fingerprintSha256, isFingerprint, keyLine, parsePublicKey, withFingerprint, type KeyProblem } from '../../agent/ssh/keys.js';

/** Key bodies as IAM might return them: real keys from ssh-keygen, and hostile ones. */

let dir: string;
const keys: Record<string, string> = {};

function keygen(name: string, args: string[]): string {
  const file = path.join(dir, name);
  execFileSync('ssh-keygen', ['-q', '-N', '', '-C', `${name}@laptop`, '-f', file, ...args]);
  return fs.readFileSync(`${file}.pub`, 'utf8');
}

/** An SSH wire string. */
const str = (b: Buffer | string) => {
  const body = typeof b === 'string' ? Buffer.from(b, 'latin1') : b;
  const len = Buffer.alloc(4);
  len.writeUInt32BE(body.length);
  return Buffer.concat([len, body]);
};
const blob = (...parts: Array<Buffer | string>) => Buffer.concat(parts.map(str)).toString('base64');

beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'zdt-ssh-keys-'));
  keys.ed25519 = keygen('ed25519', ['-t', 'ed25519']);
  keys.ecdsa256 = keygen('ecdsa256', ['-t', 'ecdsa', '-b', '256']);
  keys.ecdsa384 = keygen('ecdsa384', ['-t', 'ecdsa', '-b', '384']);
  keys.ecdsa521 = keygen('ecdsa521', ['-t', 'ecdsa', '-b', '521']);
  keys.rsa2048 = keygen('rsa2048', ['-t', 'rsa', '-b', '2048']);
  keys.rsa1024 = keygen('rsa1024', ['-t', 'rsa', '-b', '1024']);
});

afterAll(() => {
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

const b64Of = (line: string) => line.split(' ')[1] as string;

describe('keys that are accepted', () => {
  it.each(['ed25519', 'ecdsa256', 'ecdsa384', 'ecdsa521', 'rsa2048'])('%s from ssh-keygen, re-serialised without its comment', (name) => {
    const body = keys[name] as string;
    const r = parsePublicKey(body);
    expect(r.ok).toBe(true);
    if (!r.ok) return;
    const [type, b64] = body.trim().split(' ');
    expect(r.key).toEqual({ type, blob: b64 });
    expect(keyLine(r.key, 'restrict', 'alice')).toBe(`restrict ${type} ${b64} alice`);
    expect(keyLine(r.key, '', 'alice')).toBe(`${type} ${b64} alice`);
  });

  it('security-key types (built by hand: no authenticator here)', () => {
    const pk = Buffer.alloc(32, 7);
    expect(parsePublicKey(`sk-ssh-ed25519@openssh.com ${blob('sk-ssh-ed25519@openssh.com', pk, 'ssh:')}`).ok).toBe(true);
    const point = Buffer.concat([Buffer.from([4]), Buffer.alloc(64, 9)]);
    expect(parsePublicKey(`sk-ecdsa-sha2-nistp256@openssh.com ${blob('sk-ecdsa-sha2-nistp256@openssh.com', 'nistp256', point, 'ssh:')}`).ok).toBe(true);
  });

  it('tolerates a trailing newline, CRLF and extra blanks between fields', () => {
    expect(parsePublicKey(`${keys.ed25519!.trim()}\n`).ok).toBe(true);
    expect(parsePublicKey(`${keys.ed25519!.trim()}\r\n`).ok).toBe(true);
    expect(parsePublicKey(keys.ed25519!.trim().replace(' ', ' \t ')).ok).toBe(true);
  });

  it('fingerprints match ssh-keygen -l (SHA256 and MD5), and the stored one is used as is', () => {
    for (const name of ['ed25519', 'rsa2048', 'ecdsa521']) {
      const r = parsePublicKey(keys[name] as string);
      if (!r.ok) throw new Error(r.problem);
      const file = path.join(dir, `${name}.pub`);
      const sha = execFileSync('ssh-keygen', ['-l', '-f', file], { encoding: 'utf8' }).split(' ')[1];
      const md5 = execFileSync('ssh-keygen', ['-l', '-E', 'md5', '-f', file], { encoding: 'utf8' }).split(' ')[1];
      expect(fingerprintSha256(r.key)).toBe(sha);
      expect(fingerprintMd5(r.key)).toBe(md5);
      expect(withFingerprint(r.key).sha256).toBe(sha);
      expect(isFingerprint(sha as string) && isFingerprint(md5 as string)).toBe(true);
      expect(fingerprintSha256({ ...r.key, sha256: 'SHA256:stored' })).toBe('SHA256:stored');
    }
  });
});

describe('hostile or broken key bodies are refused with the reason', () => {
  const ed = () => keys.ed25519!.trim();
  const edBlob = () => b64Of(keys.ed25519!);
  const rsaBlob = () => b64Of(keys.rsa2048!);
  const cases: Array<[string, () => string, KeyProblem]> = [
    ['empty', () => '', 'empty'],
    ['blank', () => ' \n', 'empty'],
    ['a second key on a second line', () => `${ed()}\n${keys.rsa2048!.trim()}`, 'several-lines'],
    ['a line break inside the comment', () => `${ed()} x\ncommand="sh" ${ed()}`, 'several-lines'],
    ['a carriage return', () => `${ed()}\rextra`, 'several-lines'],
    ['options before the key', () => `command="/bin/sh" ${ed()}`, 'options-or-unknown-type'],
    ['restrict option', () => `no-pty,restrict ${ed()}`, 'options-or-unknown-type'],
    ['DSA (not accepted)', () => `ssh-dss ${edBlob()}`, 'options-or-unknown-type'],
    ['a certificate type', () => `ssh-ed25519-cert-v01@openssh.com ${edBlob()}`, 'options-or-unknown-type'],
    ['PEM', () => '-----BEGIN PUBLIC KEY-----\nMIIB...\n-----END PUBLIC KEY-----', 'several-lines'],
    ['type without blob', () => 'ssh-ed25519', 'no-blob'],
    ['base64 with a bad character', () => `ssh-ed25519 ${edBlob().slice(0, 10)}*${edBlob().slice(11)}`, 'bad-base64'],
    ['base64 cut short', () => `ssh-ed25519 ${edBlob().slice(0, -3)}`, 'bad-base64'],
    ['base64 with a quote', () => `ssh-ed25519 "${edBlob()}"`, 'bad-base64'],
    ['declared ed25519, blob of RSA', () => `ssh-ed25519 ${rsaBlob()}`, 'type-mismatch'],
    ['declared RSA, blob of ed25519', () => `ssh-rsa ${edBlob()}`, 'type-mismatch'],
    ['RSA of 1024 bits', () => keys.rsa1024!, 'rsa-too-short'],
    ['ed25519 with trailing bytes in the blob', () => `ssh-ed25519 ${blob('ssh-ed25519', Buffer.alloc(32), 'x')}`, 'malformed-blob'],
    ['ed25519 with a short key', () => `ssh-ed25519 ${blob('ssh-ed25519', Buffer.alloc(31))}`, 'malformed-blob'],
    ['ecdsa with the wrong curve name', () => `ecdsa-sha2-nistp256 ${blob('ecdsa-sha2-nistp256', 'nistp384', Buffer.concat([Buffer.from([4]), Buffer.alloc(64)]))}`, 'malformed-blob'],
    ['ecdsa with a compressed point', () => `ecdsa-sha2-nistp256 ${blob('ecdsa-sha2-nistp256', 'nistp256', Buffer.concat([Buffer.from([2]), Buffer.alloc(32)]))}`, 'malformed-blob'],
    ['length field beyond the blob', () => `ssh-ed25519 ${Buffer.from([0, 0, 0, 99, 1, 2]).toString('base64')}`, 'malformed-blob'],
    ['sk key without application', () => `sk-ssh-ed25519@openssh.com ${blob('sk-ssh-ed25519@openssh.com', Buffer.alloc(32))}`, 'malformed-blob'],
    ['RSA with exponent 1', () => `ssh-rsa ${blob('ssh-rsa', Buffer.from([1]), Buffer.concat([Buffer.from([0x00, 0xc1]), Buffer.alloc(255, 0xff)]))}`, 'malformed-blob'],
    ['RSA with a negative modulus', () => `ssh-rsa ${blob('ssh-rsa', Buffer.from([1, 0, 1]), Buffer.concat([Buffer.from([0xc1]), Buffer.alloc(255, 0xff)]))}`, 'malformed-blob'],
    ['RSA of 2047 bits', () => `ssh-rsa ${blob('ssh-rsa', Buffer.from([1, 0, 1]), Buffer.concat([Buffer.from([0x41]), Buffer.alloc(255, 0xff)]))}`, 'rsa-too-short'],
  ];

  it.each(cases)('%s', (_name, body, problem) => {
    expect(parsePublicKey(body())).toEqual({ ok: false, problem });
  });

  it('an RSA modulus of exactly 2048 bits passes', () => {
    const n = Buffer.concat([Buffer.from([0x00, 0x81]), Buffer.alloc(255, 0xff)]);
    expect(parsePublicKey(`ssh-rsa ${blob('ssh-rsa', Buffer.from([1, 0, 1]), n)}`).ok).toBe(true);
  });

  it('cache lines are checked the same way (type and blob only)', () => {
    expect(checkBlob('ssh-ed25519', edBlob()).ok).toBe(true);
    expect(checkBlob('ssh-ed25519 restrict', edBlob()).ok).toBe(false);
    expect(checkBlob('ssh-ed25519', `${edBlob()}\n`).ok).toBe(false);
  });
});
