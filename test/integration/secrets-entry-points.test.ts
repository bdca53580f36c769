import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { DecryptCommand, type KMSClient } from '@aws-sdk/client-kms';
import { HeadObjectCommand } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { encryptingWriter } from '../../agent/etcd/envelope.js';
import { makeAws } from '../../agent/host/aws.js';
import { Imds } from '../../agent/host/imds.js';
import { makePaths } from '../../agent/host/paths.js';
import { createLogger } from '../../agent/log/logger.js';
import { redact } from '../../agent/log/redact.js';
import { emptyState, writeState } from '../../agent/log/state.js';
import { buildEvent } from '../../agent/notify/events.js';
import { AgentError } from '../../agent/errors.js';
import { assumeSshRole } from '../../agent/ssh/credentials.js';
import { startFidelityProxy, type FidelityProxy } from '../testbed/fidelity-proxy.js';
import { startHttpTap } from '../testbed/http-tap.js';
import { startImds, type Imds as ImdsServer } from '../testbed/imds.js';
import { startMoto, type Moto } from '../testbed/moto.js';
import { REGION, awsConfig, makeKmsKey, testClients, useTestCredentials } from '../support/terminate-env.js';
import { resolveConfig } from '../../agent/config/load.js';

/**
 * Every secret the agent receives or derives is registered with the redactor where it enters
 * the process, through the real entry points: STS AssumeRole and KMS GenerateDataKey on moto,
 * the IMDSv2 session token and the instance role's credentials from amazon-ec2-metadata-mock.
 * Each is then replaced in any text, also in the encodings it may travel in, and reaches no
 * sink: the log at debug, the state file, an SNS event, an error's one line.
 */

const log = createLogger({ console: null });

/**
 * Writes each secret bare, at debug, into every sink the agent has (a log file, the state
 * file, an SNS event, an error's one line) and returns what the sinks hold.
 */
function throughEverySink(secrets: string[]): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'zdt-sinks-'));
  try {
    const sink = createLogger({ file: path.join(dir, 'agent.log'), console: null, level: 'debug' });
    const state = emptyState('x');
    secrets.forEach((v, i) => {
      sink.debug(`saw ${v}`, { value: v, json: JSON.stringify({ v }) });
      state.facts[`f${i}`] = v;
    });
    writeState(path.join(dir, 'state.json'), state);
    const error = new AgentError('Planted', `failed with ${secrets.join(' ')}`);
    const event = buildEvent({
      event: 'boot.failed',
      config: resolveConfig([{ source: 'file', origin: 'test', data: { cluster: { name: 'prod' }, node: { role: 'worker' } } }]),
      identity: { instanceId: 'i-0', region: REGION, availabilityZone: `${REGION}a`, instanceType: 'm5.large', privateIp: '10.0.0.1', lifecycle: 'on-demand', tags: {} } as never,
      phases: { identity: { result: 'failed', startedAt: '', durationMs: 0, error: error.oneLine() } },
      failure: { phase: 'identity', error: error.oneLine() },
      log: sink,
    });
    return [fs.readFileSync(path.join(dir, 'agent.log'), 'utf8'), fs.readFileSync(path.join(dir, 'state.json'), 'utf8'), JSON.stringify(event), error.oneLine()].join('\n');
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

function expectInNoSink(secrets: string[]): void {
  const sinks = throughEverySink(secrets);
  for (const v of secrets) expect(sinks.includes(v), `a sink carries ${v.slice(0, 8)}…`).toBe(false);
}
let moto: Moto;
let proxy: FidelityProxy;
let kms: KMSClient;
let imds: ImdsServer;

const awsFor = (extra: Record<string, unknown> = {}) =>
  makeAws({ aws: resolveConfig([{ source: 'file', origin: 'test', data: { cluster: { name: 'prod' }, aws: { ...awsConfig(proxy.endpoint), ...extra } } }]).aws, region: async () => REGION });

beforeAll(async () => {
  useTestCredentials();
  moto = await startMoto();
  proxy = await startFidelityProxy({ target: moto.endpoint });
  ({ kms } = testClients(proxy.endpoint));
  imds = await startImds({ instanceId: 'i-05ec0e00000000001', region: REGION, availabilityZone: `${REGION}a`, instanceType: 'm5.large', privateIp: '10.0.0.9' });
});

afterAll(async () => {
  await imds?.stop();
  await proxy?.stop();
  await moto?.stop();
});

describe('secrets registered where they enter', () => {
  it('the credentials of an assumed role (STS AssumeRole on moto)', async () => {
    const creds = await assumeSshRole({
      aws: awsFor(),
      roleArn: 'arn:aws:iam::123456789012:role/central-ssh-keys',
      externalId: undefined,
      sessionName: async () => 'zdt-test',
      paths: makePaths('/nonexistent-root-for-test'),
      log,
      signal: AbortSignal.timeout(20_000),
    });
    expect(creds.secretAccessKey.length).toBeGreaterThan(8);
    expect(redact(`bare ${creds.secretAccessKey} and ${creds.sessionToken}`)).toBe('bare [REDACTED] and [REDACTED]');
    expect(redact(encodeURIComponent(creds.sessionToken!))).toBe('[REDACTED]');
    expectInNoSink([creds.secretAccessKey, creds.sessionToken!]);
  });

  it('a KMS data key (GenerateDataKey on moto), in base64 and hex', async () => {
    const keyId = await makeKmsKey(kms);
    const written: Buffer[] = [];
    const write = await encryptingWriter(awsFor(), { kmsKeyId: keyId, cluster: 'prod' }, async (w) => w.write(Buffer.from('etcd snapshot bytes')));
    await write({ write: (b) => void written.push(Buffer.from(b)), ready: () => undefined });
    const first = written[0]!;
    const header = JSON.parse(first.subarray(12, 12 + first.readUInt32BE(8)).toString()) as { encryptedDataKey: string; context: Record<string, string> };
    // The same key, as KMS gives it back to whoever may decrypt it.
    const key = Buffer.from((await kms.send(new DecryptCommand({ CiphertextBlob: Buffer.from(header.encryptedDataKey, 'base64'), EncryptionContext: header.context }))).Plaintext!);
    expect(key).toHaveLength(32);
    for (const form of [key.toString('base64'), key.toString('hex'), key.toString('hex').toUpperCase(), key.toString('base64url')]) {
      expect(redact(`key ${form} end`)).toBe('key [REDACTED] end');
    }
    expectInNoSink([key.toString('base64'), key.toString('hex')]);
  });

  it('the IMDSv2 session token (amazon-ec2-metadata-mock)', async () => {
    const tokens: string[] = [];
    const tap = await startHttpTap(imds.endpoint, (req) => {
      const t = req.headers['x-aws-ec2-metadata-token'];
      if (typeof t === 'string') tokens.push(t);
    });
    try {
      await new Imds({ endpoint: tap.endpoint, log }).identityDocument();
    } finally {
      await tap.stop();
    }
    expect(tokens.length).toBeGreaterThan(0);
    expect(redact(`token ${tokens[0]} end`)).toBe('token [REDACTED] end');
    expectInNoSink([tokens[0]!]);
  });

  it("the instance role's credentials the SDK reads from IMDS", async () => {
    // What AEMM serves as the role's credentials, read the way the SDK does.
    const token = await (await fetch(`${imds.endpoint}/latest/api/token`, { method: 'PUT', headers: { 'x-aws-ec2-metadata-token-ttl-seconds': '60' } })).text();
    const h = { 'x-aws-ec2-metadata-token': token };
    const role = (await (await fetch(`${imds.endpoint}/latest/meta-data/iam/security-credentials/`, { headers: h })).text()).trim();
    const served = (await (await fetch(`${imds.endpoint}/latest/meta-data/iam/security-credentials/${role}`, { headers: h })).json()) as { SecretAccessKey: string; Token: string };
    const saved = { ...process.env };
    for (const k of ['AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY', 'AWS_SESSION_TOKEN', 'AWS_PROFILE']) delete process.env[k];
    process.env.AWS_EC2_METADATA_SERVICE_ENDPOINT = imds.endpoint;
    process.env.AWS_CONFIG_FILE = '/nonexistent';
    process.env.AWS_SHARED_CREDENTIALS_FILE = '/nonexistent';
    try {
      const s3 = await awsFor({ s3ForcePathStyle: true }).s3();
      await s3.send(new HeadObjectCommand({ Bucket: 'none', Key: 'none' })).catch(() => undefined);
    } finally {
      process.env = saved;
    }
    expect(served.SecretAccessKey.length).toBeGreaterThanOrEqual(8);
    expect(redact(`${served.SecretAccessKey} ${served.Token}`)).toBe('[REDACTED] [REDACTED]');
    expectInNoSink([served.SecretAccessKey, served.Token]);
  });
});
