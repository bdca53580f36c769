import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { IMDS_MAX_ANSWER_BYTES, Imds, ImdsAnswerInvalid } from '../../agent/host/imds.js';
import { createLogger } from '../../agent/log/logger.js';
import { startImds, type Imds as ImdsServer, type ImdsConfig } from '../testbed/imds.js';
import { freePort } from '../testbed/ports.js';
import { startHttpTap, type TapAnswer } from '../testbed/http-tap.js';

const log = createLogger({ console: null });

const identity = {
  instanceId: 'i-0a1b2c3d4e5f67890',
  region: 'eu-central-1',
  availabilityZone: 'eu-central-1a',
  instanceType: 'm7g.large',
  privateIp: '10.20.1.17',
};
// gzip magic and bytes that are not UTF-8: user data must arrive byte for byte.
const userData = Uint8Array.from([0x1f, 0x8b, 0x08, 0x00, 0xff, 0xfe, 0x00, 0x41, 0x0a]);
const tags = { 'zdt:cluster': 'prod', 'zdt:role': 'controller', Name: 'prod-controller-a' };

/** A pass-through in front of IMDS that counts what the client sends, and can refuse tokens. */
async function startCountingProxy(target: string) {
  const seen = { tokenPuts: 0, gets: 0, tokenlessGets: 0 };
  let refuseTokens = false;
  const tap = await startHttpTap(target, (req) => {
    if (req.method === 'PUT' && req.url === '/latest/api/token') {
      seen.tokenPuts++;
      if (refuseTokens) return 403;
    } else {
      seen.gets++;
      if (!req.headers['x-aws-ec2-metadata-token']) seen.tokenlessGets++;
    }
    return undefined;
  });
  return { endpoint: tap.endpoint, seen, refuseTokens: (v: boolean) => void (refuseTokens = v), stop: tap.stop };
}

const stops: (() => Promise<void>)[] = [];
async function imdsServer(config: ImdsConfig): Promise<ImdsServer> {
  const s = await startImds(config);
  stops.push(s.stop);
  return s;
}
async function countingProxy(target: string) {
  const p = await startCountingProxy(target);
  stops.push(p.stop);
  return p;
}

let full: ImdsServer;
let bare: ImdsServer;

beforeAll(async () => {
  [full, bare] = await Promise.all([imdsServer({ ...identity, userData, tags }), imdsServer(identity)]);
});

afterAll(async () => {
  for (const stop of stops.reverse()) await stop();
});

describe('the agent reads IMDS with IMDSv2 session tokens', () => {
  it('reads the instance identity document', async () => {
    const doc = await new Imds({ endpoint: full.endpoint, log }).identityDocument();

    expect(doc).toMatchObject(identity);
  });

  it('fetches one token and reuses it for every read', async () => {
    const proxy = await countingProxy(full.endpoint);
    const imds = new Imds({ endpoint: proxy.endpoint, log });

    await imds.identityDocument();
    await imds.required('latest/meta-data/instance-id');
    await imds.optional('latest/meta-data/placement/availability-zone');
    await imds.userData();
    await imds.tags();

    expect(proxy.seen.tokenPuts).toBe(1);
    expect(proxy.seen.gets).toBeGreaterThanOrEqual(5);
    expect(proxy.seen.tokenlessGets).toBe(0);
  });

  it('reads user data byte for byte, and undefined when the instance has none', async () => {
    expect(await new Imds({ endpoint: full.endpoint, log }).userData()).toEqual(userData);
    expect(await new Imds({ endpoint: bare.endpoint, log }).userData()).toBeUndefined();
  });

  it('reads instance tags, and undefined when tags in metadata are off', async () => {
    expect(await new Imds({ endpoint: full.endpoint, log }).tags()).toEqual(tags);
    expect(await new Imds({ endpoint: bare.endpoint, log }).tags()).toBeUndefined();
  });

  it('answers an absent optional property with undefined at once', async () => {
    const started = Date.now();

    const state = await new Imds({ endpoint: bare.endpoint, log }).optional('latest/meta-data/autoscaling/target-lifecycle-state');

    expect(state).toBeUndefined();
    expect(Date.now() - started).toBeLessThan(1000);
  });

  it('gives up on a required property within its bound when IMDS does not answer', async () => {
    const closed = `http://127.0.0.1:${await freePort()}`;
    const started = Date.now();

    const read = new Imds({ endpoint: closed, log, requiredTimeoutMs: 1500, requestTimeoutMs: 500 }).identityDocument();

    await expect(read).rejects.toMatchObject({ code: 'ImdsUnavailable' });
    expect(Date.now() - started).toBeGreaterThanOrEqual(1500);
    expect(Date.now() - started).toBeLessThan(8000);
  });

  it('never falls back to IMDSv1 when no token can be had', async () => {
    const v1 = await imdsServer({ ...identity, allowImdsv1: true });
    const proxy = await countingProxy(v1.endpoint);
    proxy.refuseTokens(true);

    const read = new Imds({ endpoint: proxy.endpoint, log, requiredTimeoutMs: 1000 }).required('latest/meta-data/instance-id');

    await expect(read).rejects.toMatchObject({ code: 'ImdsUnavailable' });
    expect(proxy.seen.tokenPuts).toBeGreaterThanOrEqual(1);
    expect(proxy.seen.tokenlessGets).toBe(0);
  });

  it('fetches a new token when IMDS no longer knows the old one (401)', async () => {
    const port = await freePort();
    const first = await startImds({ ...identity, port });
    const proxy = await countingProxy(first.endpoint);
    const imds = new Imds({ endpoint: proxy.endpoint, log });
    await imds.required('latest/meta-data/instance-id');

    await first.stop(); // AEMM keeps tokens in memory: the restarted one rejects the old token
    await imdsServer({ ...identity, port });
    const id = await imds.required('latest/meta-data/instance-id');

    expect(id).toBe(identity.instanceId);
    expect(proxy.seen.tokenPuts).toBe(2);
  });
});

describe('IMDS answers are bounded and checked', () => {
  /** AEMM behind a tap that replaces the answer to `path` (AEMM cannot serve malformed bodies). */
  async function imdsAnswering(path: string, answer: TapAnswer) {
    const tap = await startHttpTap(full.endpoint, (req) => (req.url === `/${path}` ? answer : undefined));
    stops.push(tap.stop);
    return new Imds({ endpoint: tap.endpoint, log, requiredTimeoutMs: 60_000 });
  }

  it('an answer past the cap is cut off at once, naming the path and the cap, and not retried', async () => {
    // Never ends: only the cap stops it (the request timeout is 2 s, the retry bound 60 s).
    let sent = 0;
    const imds = await imdsAnswering('latest/user-data', {
      status: 200,
      write: (res) => {
        const chunk = Buffer.alloc(64 * 1024, 0x41);
        const more = () => {
          while (!res.destroyed && res.write(chunk)) sent += chunk.length;
          if (!res.destroyed) res.once('drain', more);
        };
        more();
      },
    });
    const started = Date.now();
    const err = await imds.userData().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ImdsAnswerInvalid);
    expect((err as ImdsAnswerInvalid).oneLine()).toMatch(
      new RegExp(`^ImdsAnswerInvalid: IMDS GET latest/user-data answered more than ${IMDS_MAX_ANSWER_BYTES} bytes \\(the cap of an IMDS answer\\); check aws\\.imdsEndpoint`),
    );
    expect(Date.now() - started).toBeLessThan(20_000); // not the 60 s of retries
    expect(sent).toBeLessThan(64 * 1024 * 1024);
  });

  it('a Content-Length past the cap is refused before the body is read', async () => {
    const imds = await imdsAnswering('latest/dynamic/instance-identity/document', { status: 200, body: Buffer.alloc(IMDS_MAX_ANSWER_BYTES + 1, 0x20) });
    await expect(imds.identityDocument()).rejects.toMatchObject({ code: 'ImdsAnswerInvalid' });
  });

  it.each([
    ['null', 'the instance identity document is null, not a JSON object'],
    ['[]', 'the instance identity document is a list, not a JSON object'],
    ['"i-0123"', 'the instance identity document is "i-0123", not a JSON object'],
    ['{', 'IMDS answered an instance identity document that is not JSON'],
    [JSON.stringify({ ...identity, instanceId: 7 }), 'the instance identity document has no instanceId (got number)'],
    [JSON.stringify({ ...identity, instanceId: 'i-0a1b2c3d4e5f67890\r\nX-Evil: 1' }), "the instance identity document's instanceId \"i-0a1b2c3d4e5f67890\\r\\nX-Evil: 1\" is not in AWS's format"],
    [JSON.stringify({ ...identity, instanceId: '../../etc' }), "the instance identity document's instanceId \"../../etc\" is not in AWS's format"],
    [JSON.stringify({ ...identity, region: 'eu-central-1/..' }), "the instance identity document's region \"eu-central-1/..\" is not in AWS's format"],
    [JSON.stringify({ ...identity, availabilityZone: 'us-east-1a' }), "the instance identity document's availabilityZone \"us-east-1a\" is not in its region \"eu-central-1\""],
    [JSON.stringify({ ...identity, privateIp: '10.0.0.300' }), "the instance identity document's privateIp \"10.0.0.300\" is not in AWS's format"],
  ])('identity document %s: %s', async (body, message) => {
    const imds = await imdsAnswering('latest/dynamic/instance-identity/document', { status: 200, body });
    await expect(imds.identityDocument()).rejects.toMatchObject({ code: 'ImdsAnswerInvalid', message });
  });
});

describe('the testbed IMDS serves termination notices', () => {
  it('turns target-lifecycle-state to Terminated after the delay, and serves a spot notice', async () => {
    const time = '2030-01-01T00:02:00Z';
    // AEMM counts the delay in whole seconds from its own start: leave a margin of seconds.
    const notices = await imdsServer({ ...identity, targetLifecycleState: { terminatedAfterS: 3 }, spotInstanceAction: { action: 'terminate', time } });
    const started = Date.now();
    const imds = new Imds({ endpoint: notices.endpoint, log });
    const state = () => imds.optional('latest/meta-data/autoscaling/target-lifecycle-state');

    expect(await state()).toBe('InService');
    while ((await state()) !== 'Terminated' && Date.now() - started < 10_000) await sleep(200);

    expect(await state()).toBe('Terminated');
    expect(Date.now() - started).toBeGreaterThanOrEqual(1900);
    expect(JSON.parse((await imds.optional('latest/meta-data/spot/instance-action')) ?? '{}')).toEqual({ action: 'terminate', time });
  });
});
