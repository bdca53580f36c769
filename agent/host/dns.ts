import dnsPromises from 'node:dns/promises';
import { sdk, type Aws } from './aws.js';
import type { Logger } from '../log/logger.js';
import { waitFor } from './retry.js';

/**
 * A controller's stable name: upserted in the private hosted zone to the instance's private
 * IP (what kubecfn did with a Lambda), then awaited until Route53 reports the change INSYNC
 * and the name resolves to that IP here.
 */
export async function upsertStableName(o: {
  aws: Aws;
  zoneId: string;
  name: string;
  ip: string;
  resolveWaitMs: number;
  log: Logger;
  signal?: AbortSignal | undefined;
  resolve?: (name: string) => Promise<string[]>;
}): Promise<{ changed: boolean }> {
  const { ChangeResourceRecordSetsCommand, GetChangeCommand, ListResourceRecordSetsCommand } = await sdk.route53();
  const r53 = await o.aws.route53();
  const fqdn = o.name.endsWith('.') ? o.name : `${o.name}.`;
  const existing = await r53.send(
    new ListResourceRecordSetsCommand({ HostedZoneId: o.zoneId, StartRecordName: fqdn, StartRecordType: 'A', MaxItems: 1 }),
    { abortSignal: o.signal },
  );
  const rec = existing.ResourceRecordSets?.find((r) => r.Name === fqdn && r.Type === 'A');
  const current = rec?.ResourceRecords?.map((r) => r.Value);
  let changed = false;
  if (!(current?.length === 1 && current[0] === o.ip)) {
    o.log.info('upserting the stable name', { name: o.name, ip: o.ip, was: current?.join(',') });
    const out = await r53.send(
      new ChangeResourceRecordSetsCommand({
        HostedZoneId: o.zoneId,
        ChangeBatch: {
          Comment: 'zdt-agent: controller stable name',
          Changes: [{ Action: 'UPSERT', ResourceRecordSet: { Name: fqdn, Type: 'A', TTL: 30, ResourceRecords: [{ Value: o.ip }] } }],
        },
      }),
      { abortSignal: o.signal },
    );
    changed = true;
    const changeId = out.ChangeInfo?.Id;
    if (changeId) {
      await waitFor({
        what: `Route53 change ${changeId} for ${o.name}`,
        timeoutMs: 300_000,
        initialDelayMs: 1000,
        maxDelayMs: 10_000,
        log: o.log,
        signal: o.signal,
        code: 'Route53ChangeTimeout',
        hint: 'check the hosted zone in the Route53 console',
        check: async () => ((await r53.send(new GetChangeCommand({ Id: changeId }))).ChangeInfo?.Status === 'INSYNC' ? true : undefined),
      });
    }
  }
  if (o.resolveWaitMs > 0) {
    const resolve = o.resolve ?? (async (n: string) => (await dnsPromises.lookup(n, { all: true, family: 4 })).map((a) => a.address));
    await waitFor({
      what: `${o.name} to resolve to ${o.ip}`,
      timeoutMs: o.resolveWaitMs,
      initialDelayMs: 500,
      maxDelayMs: 5000,
      progressEveryMs: 30_000,
      log: o.log,
      signal: o.signal,
      code: 'StableNameUnresolved',
      hint: 'check that the VPC uses the Route53 resolver and the private zone is associated with the VPC; negative answers may be cached for the SOA TTL',
      retryable: () => true,
      check: async () => ((await resolve(o.name)).includes(o.ip) ? true : undefined),
    });
  }
  return { changed };
}
