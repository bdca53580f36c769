import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { AgentError, DeadlineError } from '../../agent/errors.js';
import { makeExec } from '../../agent/host/exec.js';
import { captureProcessWarnings, createLogger } from '../../agent/log/logger.js';
import { registerSecret, redact, redactDeep, registerSecretsPrintedIn, MIN_SECRET_LENGTH } from '../../agent/log/redact.js';

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
    registerSecret('s3cr3t-from-s3-value', 'other');
    expect(redactDeep({ a: ['x s3cr3t-from-s3-value y'], b: 1 })).toEqual({ a: ['x [REDACTED] y'], b: 1 });
  });
});

describe('redaction by value', () => {
  it('replaces a registered secret without any label, in the encodings it travels in', () => {
    const secret = 'Zq9/Xy+Lm3pQ8rT2vW5nB7cD1eF4gH6jK0sA=Uu';
    registerSecret(secret, 'aws-secret-access-key');
    const forms = [
      secret,
      JSON.stringify({ s: `${secret}"quoted"` }),
      encodeURIComponent(secret),
      Buffer.from(secret).toString('base64'),
      Buffer.from(secret).toString('base64url'),
    ];
    for (const form of forms) expect(redact(`bare: ${form} end`)).not.toMatch(/Zq9|WnE5|Xy%2B|WnE5L1h5/);
    expect(redact(`line one\n${secret}\nline three`)).toBe('line one\n[REDACTED]\nline three');
  });

  it('replaces key bytes in base64, base64url, hex (both cases) and spaced hex', () => {
    const key = Buffer.from('8f2e4c1a9b7d3e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7', 'hex');
    registerSecret(key, 'kms-data-key');
    for (const form of [key.toString('base64'), key.toString('base64url'), key.toString('hex'), key.toString('hex').toUpperCase(), key.toString('hex').replace(/(..)(?!$)/g, '$1 ')]) {
      expect(redact(`key=${form}`)).toBe('key=[REDACTED]');
    }
  });

  it('keeps the id half of a registered bootstrap token', () => {
    registerSecret('k7x2pq.m4n5b6v7c8x9z0a1', 'bootstrap-token');
    expect(redact('token k7x2pq.m4n5b6v7c8x9z0a1 and alone m4n5b6v7c8x9z0a1')).toBe('token k7x2pq.[REDACTED] and alone [REDACTED]');
  });

  it('does not register values too short to be told from ordinary words', () => {
    registerSecret('testing', 'aws-secret-access-key');
    expect('testing'.length).toBeLessThan(MIN_SECRET_LENGTH);
    expect(redact('integration testing')).toBe('integration testing');
  });

  it("catches kubeadm's certificate key on the line after its label, and registers it from the output", () => {
    const key = 'b2c4e6a8d0f1e3c5a7b9d1f3e5c7a9b1d3f5e7c9a1b3d5f7e9c1a3b5d7f9e1c3';
    const output = `[upload-certs] Storing the certificates in Secret "kubeadm-certs"\n[upload-certs] Using certificate key:\n${key}\n[mark-control-plane] done`;
    expect(redact(output)).not.toContain(key);
    expect(redact(JSON.stringify(output))).not.toContain(key);
    registerSecretsPrintedIn(output);
    expect(redact(`later, alone: ${key}`)).toBe('later, alone: [REDACTED]');
  });

  it('redacts keys of nested values too', () => {
    registerSecret('nested-secret-key-value', 'other');
    expect(redactDeep({ 'nested-secret-key-value': 1 })).toEqual({ '[REDACTED]': 1 });
  });
});

describe('Node warnings', () => {
  it('go to the log at debug, redacted, and Node no longer prints them on stderr', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'zdt-warn-'));
    const logFile = path.join(dir, 'agent.log');
    captureProcessWarnings();
    expect(process.listeners('warning')).toHaveLength(1); // Node's printer is gone, ours is left
    createLogger({ file: logFile, console: null, level: 'debug' });
    registerSecret('warned-secret-value-123', 'other');
    process.emitWarning('the source line quoted warned-secret-value-123', 'YAMLWarning');
    await new Promise((r) => setImmediate(r)); // warnings are emitted on the next tick
    const text = fs.readFileSync(logFile, 'utf8');
    expect(text).toMatch(/DEBUG node warning warning="YAMLWarning: the source line quoted \[REDACTED\]"/);
    fs.rmSync(dir, { recursive: true });
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

  it("leaves a failed command's last output lines in the log at the default level, redacted", async () => {
    const dir = tmp();
    const logFile = path.join(dir, 'agent.log');
    const exec = makeExec(createLogger({ file: logFile, console: null }));
    const key = 'c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00';
    const script = `echo "[upload-certs] Using certificate key:"; echo ${key}; echo "[preflight] port 6443 is in use" >&2; exit 1`;
    await expect(exec('sh', ['-c', script], { timeoutMs: 5000 })).rejects.toThrow(/exited 1: \[preflight\] port 6443 is in use/);
    const text = fs.readFileSync(logFile, 'utf8');
    expect(text).toMatch(/WARN +sh output: \[preflight\] port 6443 is in use/);
    expect(text).toMatch(/WARN +sh output: \[REDACTED\]/);
    expect(text).not.toContain(key);
    fs.rmSync(dir, { recursive: true });
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
