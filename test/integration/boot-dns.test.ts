import { CreateHostedZoneCommand, ListResourceRecordSetsCommand, Route53Client } from '@aws-sdk/client-route-53';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { resolveConfig } from '../../agent/config/load.js';
import { makeAws } from '../../agent/host/aws.js';
import { upsertStableName } from '../../agent/host/dns.js';
import { createLogger } from '../../agent/log/logger.js';
import { AgentError } from '../../agent/errors.js';
import { REGION, awsSection, credentials, startAwsWorld, type AwsWorld } from '../support/boot-env.js';

/** A controller's stable name in Route53 (moto): upserted, INSYNC, then awaited until it resolves. */

let w: AwsWorld;
let r53: Route53Client;
let zoneId: string;
const log = createLogger({ console: null });

beforeAll(async () => {
  w = await startAwsWorld();
  r53 = new Route53Client({ region: REGION, endpoint: w.proxy.endpoint, credentials });
  zoneId = (await r53.send(new CreateHostedZoneCommand({ Name: 'dns.internal', CallerReference: 'zdt-dns' }))).HostedZone!.Id!.replace('/hostedzone/', '');
});
afterAll(async () => {
  r53?.destroy();
  await w?.stop();
});

const aws = () => {
  const config = resolveConfig([{ source: 'file', origin: 'test', data: { node: { role: 'nat' }, aws: awsSection(w.proxy.endpoint) } }]);
  return makeAws({ aws: config.aws, region: async () => REGION });
};
const records = async () => (await r53.send(new ListResourceRecordSetsCommand({ HostedZoneId: zoneId }))).ResourceRecordSets!.filter((r) => r.Type === 'A');

describe('stable name', () => {
  it('upserts the A record to the private IP and waits until the name resolves to it', async () => {
    let resolvable = false;
    setTimeout(() => (resolvable = true), 800);
    const t0 = Date.now();
    const r = await upsertStableName({
      aws: aws(),
      zoneId,
      name: 'etcd00.dns.internal',
      ip: '10.0.0.7',
      resolveWaitMs: 10_000,
      log,
      resolve: async () => (resolvable ? ['10.0.0.7'] : ['10.0.0.99']),
    });
    expect(r.changed).toBe(true);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(700);
    expect((await records()).map((x) => [x.Name, x.ResourceRecords?.[0]?.Value])).toEqual([['etcd00.dns.internal.', '10.0.0.7']]);
  });

  it('leaves a record that is right alone, and moves one that names the predecessor', async () => {
    const same = await upsertStableName({ aws: aws(), zoneId, name: 'etcd00.dns.internal', ip: '10.0.0.7', resolveWaitMs: 0, log });
    expect(same.changed).toBe(false);
    const moved = await upsertStableName({ aws: aws(), zoneId, name: 'etcd00.dns.internal', ip: '10.0.0.8', resolveWaitMs: 0, log });
    expect(moved.changed).toBe(true);
    expect((await records())[0]!.ResourceRecords).toEqual([{ Value: '10.0.0.8' }]);
  });

  it('gives up with a clear error when the name does not resolve in time', async () => {
    const err = (await upsertStableName({ aws: aws(), zoneId, name: 'etcd01.dns.internal', ip: '10.0.0.9', resolveWaitMs: 1000, log, resolve: async () => [] }).catch((e: unknown) => e)) as AgentError;
    expect(err.code).toBe('StableNameUnresolved');
    expect(err.message).toContain('etcd01.dns.internal to resolve to 10.0.0.9');
    expect(err.hint).toContain('private zone');
  });
});
