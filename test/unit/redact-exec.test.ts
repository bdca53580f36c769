import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { AgentError, DeadlineError } from '../../agent/errors.js';
import { makeExec } from '../../agent/host/exec.js';
import { createLogger } from '../../agent/log/logger.js';
import { addSecret, redact, redactDeep } from '../../agent/log/redact.js';

const TOKEN = 'abcdef.0123456789abcdef';
const CERT_KEY = 'e6a2eb8581237ab72a4f494f30285ec12a9694d750b9785706a83bfcbbbd2204';
const SECRET = 'wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY';

describe('redaction', () => {
  it.each([
    ['a kubeadm join line', `kubeadm join k8s:6443 --token ${TOKEN} --discovery-token-ca-cert-hash sha256:abc`],
    ['a token in YAML', `bootstrapTokens:\n- token: "${TOKEN}"`],
    ['a certificate key flag', `kubeadm init phase upload-certs --certificate-key ${CERT_KEY}`],
    ['a certificate key in YAML', `certificateKey: ${CERT_KEY}`],
    ['an AWS secret in env form', `AWS_SECRET_ACCESS_KEY=${SECRET}`],
    ['an AWS secret in JSON', `{"SecretAccessKey":"${SECRET}"}`],
    ['an AWS secret next to its key id', `AKIAIOSFODNN7EXAMPLE ${SECRET}`],
  ])('removes the secret from %s', (_name, text) => {
    const out = redact(text);
    expect(out).toContain('[REDACTED]');
    for (const s of [TOKEN.split('.')[1]!, CERT_KEY, SECRET]) expect(out).not.toContain(s);
  });

  it('removes private key blocks, also truncated ones', () => {
    const pem = '-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\nabc\n-----END RSA PRIVATE KEY-----';
    expect(redact(`key:\n${pem}\nafter`)).toBe('key:\n-----BEGIN RSA PRIVATE KEY----- [REDACTED]\nafter');
    expect(redact('-----BEGIN PRIVATE KEY-----\nMIIEv')).not.toContain('MIIEv');
  });

  it('keeps what is not secret: the token id, CA hashes, ordinary words', () => {
    const out = redact(`--token ${TOKEN} --discovery-token-ca-cert-hash sha256:0123456789abcdef`);
    expect(out).toContain('sha256:0123456789abcdef');
    expect(redact('instance i-0123456789abcdef0 in eu-central-1a')).toBe('instance i-0123456789abcdef0 in eu-central-1a');
  });

  it('redacts secrets learned at run time and inside nested values', () => {
    addSecret('s3cr3t-from-s3-value');
    expect(redactDeep({ a: ['x s3cr3t-from-s3-value y'], b: 1 })).toEqual({ a: ['x [REDACTED] y'], b: 1 });
  });
});

describe('exec', () => {
  const tmp = () => fs.mkdtempSync(path.join(os.tmpdir(), 'zdt-exec-'));

  it('captures output and logs the command line redacted', async () => {
    const dir = tmp();
    const logFile = path.join(dir, 'agent.log');
    const log = createLogger({ file: logFile, console: null, level: 'debug' });
    const exec = makeExec(log);
    const r = await exec('sh', ['-c', `echo out; echo "joined with ${TOKEN}" >&2`, 'x', '--token', TOKEN], { timeoutMs: 5000 });
    expect(r.stdout).toBe('out');
    const text = fs.readFileSync(logFile, 'utf8');
    expect(text).not.toContain(TOKEN);
    expect(text).toContain('abcdef.[REDACTED]');
    fs.rmSync(dir, { recursive: true });
  });

  it('fails with the redacted stderr tail and the exit code', async () => {
    const exec = makeExec(createLogger({ console: null }));
    const err = await exec('sh', ['-c', `echo "bad token ${TOKEN}" >&2; exit 7`], { timeoutMs: 5000 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(AgentError);
    expect((err as AgentError).message).toMatch(/exited 7: bad token abcdef\.\[REDACTED\]/);
  });

  it('accepts documented exit codes', async () => {
    const exec = makeExec(createLogger({ console: null }));
    expect((await exec('sh', ['-c', 'exit 2'], { timeoutMs: 5000, okExitCodes: [2] })).exitCode).toBe(2);
  });

  it('kills a command that outlives its timeout, also one that ignores SIGTERM', async () => {
    const exec = makeExec(createLogger({ console: null }));
    const started = Date.now();
    const err = await exec('sh', ['-c', 'trap "" TERM; sleep 30'], { timeoutMs: 300, killGraceMs: 300 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(DeadlineError);
    expect(Date.now() - started).toBeLessThan(10_000);
  });

  it('says clearly when a program is missing', async () => {
    const exec = makeExec(createLogger({ console: null }));
    await expect(exec('zdt-no-such-program', [], { timeoutMs: 1000 })).rejects.toThrowError(/not found on PATH/);
  });
});
