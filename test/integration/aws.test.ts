import { DescribeVolumesCommand } from '@aws-sdk/client-ec2';
import { HeadObjectCommand, ListBucketsCommand } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { awsSchema } from '../../agent/config/schema.js';
import { asAgentError } from '../../agent/errors.js';
import { makeAws } from '../../agent/host/aws.js';
import { Imds } from '../../agent/host/imds.js';
import { silentLogger } from '../../agent/log/logger.js';
import { startFidelityProxy, type FidelityProxy } from '../testbed/fidelity-proxy.js';
import { startImds, type Imds as ImdsServer } from '../testbed/imds.js';
import { startMoto, type Moto } from '../testbed/moto.js';

/** The AWS client factory against moto (behind the fidelity proxy) and the IMDS mock. */

let moto: Moto;
let proxy: FidelityProxy;
let imdsServer: ImdsServer;
beforeAll(async () => {
  process.env.AWS_ACCESS_KEY_ID = 'test';
  process.env.AWS_SECRET_ACCESS_KEY = 'test';
  // The environment's region comes before IMDS (the SDKs' order): none here.
  delete process.env.AWS_REGION;
  delete process.env.AWS_DEFAULT_REGION;
  [moto, imdsServer] = await Promise.all([
    startMoto(),
    startImds({ instanceId: 'i-0123456789abcdef0', region: 'ap-southeast-2', availabilityZone: 'ap-southeast-2a', instanceType: 'm6i.large', privateIp: '10.0.0.1' }),
  ]);
  proxy = await startFidelityProxy({ target: moto.endpoint });
});
afterAll(async () => {
  await proxy?.stop();
  await moto?.stop();
  await imdsServer?.stop();
});

const awsConfig = (extra: object) => awsSchema.parse({ maxAttempts: 3, ...extra });

describe('AWS client factory', () => {
  it('takes the region from IMDS when neither the config nor the environment names one, and creates each client once', async () => {
    const imds = new Imds({ endpoint: imdsServer.endpoint, log: silentLogger });
    let lookups = 0;
    const aws = makeAws({
      aws: awsConfig({ endpoint: proxy.endpoint }),
      region: async () => {
        lookups++;
        return (await imds.identityDocument()).region;
      },
    });
    const ec2 = await aws.ec2();
    expect(await ec2.config.region()).toBe('ap-southeast-2');
    expect(await aws.ec2()).toBe(ec2);
    await aws.s3();
    expect(lookups).toBe(1);
    const out = await ec2.send(new DescribeVolumesCommand({}));
    expect(out.Volumes).toEqual([]);
  });

  it('a per-service endpoint wins over the common one (VPC endpoints)', async () => {
    const aws = makeAws({
      aws: awsConfig({ region: 'eu-west-1', endpoint: 'http://127.0.0.1:9', endpoints: { s3: proxy.endpoint }, s3ForcePathStyle: true }),
      region: async () => 'unused',
    });
    const s3 = await aws.s3();
    expect((await s3.send(new ListBucketsCommand({}))).Buckets ?? []).toEqual([]);
  });

  it('retries throttling (standard mode: backoff with jitter) and succeeds', async () => {
    proxy.inject({ action: 'DescribeVolumes', kind: 'throttle', times: 2 });
    const aws = makeAws({ aws: awsConfig({ region: 'eu-west-1', endpoint: proxy.endpoint }), region: async () => 'unused' });
    const out = await (await aws.ec2()).send(new DescribeVolumesCommand({}));
    expect(out.Volumes).toEqual([]);
    proxy.clearFaults();
  });

  it('a failed call names its service and operation in the one line (an SDK error names neither)', async () => {
    proxy.inject({ action: 'DescribeVolumes', kind: '500' });
    proxy.inject({ action: 's3:HeadObject', kind: '503' });
    try {
      const aws = makeAws({ aws: awsConfig({ region: 'eu-west-1', endpoint: proxy.endpoint, maxAttempts: 1, s3ForcePathStyle: true }), region: async () => 'unused' });
      const ec2Err = await (await aws.ec2()).send(new DescribeVolumesCommand({})).catch((e: unknown) => e);
      expect(asAgentError(ec2Err).oneLine()).toMatch(/^AwsCallFailed: EC2 DescribeVolumes: InternalError: injected 500 by the fidelity proxy \(HTTP 500\); check the instance role/);
      // A HEAD error has no body: the SDK knows only the status.
      const s3Err = await (await aws.s3()).send(new HeadObjectCommand({ Bucket: 'b', Key: 'k' })).catch((e: unknown) => e);
      expect(asAgentError(s3Err).message).toBe('S3 HeadObject: HTTP 503');
    } finally {
      proxy.clearFaults();
    }
  });

  it('a hanging call ends at the request timeout instead of waiting forever', async () => {
    proxy.inject({ action: 'DescribeVolumes', kind: 'hang' });
    const aws = makeAws({ aws: awsConfig({ region: 'eu-west-1', endpoint: proxy.endpoint, requestTimeoutMs: 500, maxAttempts: 1 }), region: async () => 'unused' });
    const started = Date.now();
    const err = await (await aws.ec2()).send(new DescribeVolumesCommand({})).catch((e: unknown) => e);
    expect(Date.now() - started).toBeLessThan(20_000);
    expect(asAgentError(err).message).toBe('EC2 DescribeVolumes: TimeoutError: a request has exceeded the configured 500 ms requestTimeout.');
    proxy.clearFaults();
  });
});
