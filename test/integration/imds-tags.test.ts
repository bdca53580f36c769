import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Imds } from '../../agent/host/imds.js';
import { createLogger } from '../../agent/log/logger.js';
import { startHttpTap, type HttpTap } from '../testbed/http-tap.js';
import { startImds, type Imds as ImdsServer } from '../testbed/imds.js';

/**
 * Instance tags whose value read fails once (a busy boot: 200 workers at once in
 * bench/herd.mjs lost `aws:cloudformation:logical-id` this way and never signalled their
 * stack): the value is read again, not dropped. A tag gone between the listing and its read
 * (404) is left out.
 */

const log = createLogger({ level: 'error', console: null });
const tags = { 'aws:cloudformation:stack-name': 'prod', 'aws:cloudformation:logical-id': 'WorkerGroup', 'zdt:role': 'worker' };
const tagPath = (k: string) => `/latest/meta-data/tags/instance/${encodeURIComponent(k)}`;

let aemm: ImdsServer;
const taps: HttpTap[] = [];

beforeAll(async () => {
  aemm = await startImds({ instanceId: 'i-0123456789abcdef0', region: 'eu-central-1', availabilityZone: 'eu-central-1a', instanceType: 'm7i.large', privateIp: '10.0.0.7', tags });
}, 60_000);

afterAll(async () => {
  for (const t of taps) await t.stop();
  await aemm?.stop();
});

/** AEMM behind a tap that answers the first `first` reads of `path` with `status`; counts the reads. */
async function flaky(path: string, status: number, first = 1): Promise<{ endpoint: string; reads: () => number }> {
  let reads = 0;
  const tap = await startHttpTap(aemm.endpoint, (req) => {
    if (req.url !== path) return undefined;
    reads++;
    return reads <= first ? status : undefined;
  });
  taps.push(tap);
  return { endpoint: tap.endpoint, reads: () => reads };
}

describe('instance tags from IMDS', () => {
  it('reads a listed tag again when its first read fails, instead of leaving it out', async () => {
    const t = await flaky(tagPath('aws:cloudformation:logical-id'), 503);
    expect(await new Imds({ endpoint: t.endpoint, log }).tags()).toEqual(tags);
    expect(t.reads()).toBe(2);
  }, 60_000);

  it('leaves out a listed tag that is gone when it is read (404)', async () => {
    const t = await flaky(tagPath('zdt:role'), 404, 100);
    const { 'zdt:role': _gone, ...rest } = tags;
    expect(await new Imds({ endpoint: t.endpoint, log }).tags()).toEqual(rest);
    expect(t.reads()).toBe(1);
  }, 60_000);
});
