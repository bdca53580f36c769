import http from 'node:http';
import { AgentError } from '../errors.js';
import type { Logger } from '../log/logger.js';
import { registerSecret } from '../log/redact.js';
import { waitFor } from './retry.js';

/**
 * IMDSv2 only: a session token (PUT with a TTL) is fetched once, reused, and refreshed
 * before it expires or when IMDS answers 401. There is no IMDSv1 fallback: an instance
 * that requires tokens would answer 401 to it anyway, and one that does not should not be
 * trusted to.
 *
 * node:http with an agent of its own, not fetch: fetch's first use costs a boot about 12 ms
 * more (undici loads) and every request about 2 ms more. The own agent also never goes
 * through a proxy (NODE_USE_ENV_PROXY applies to the global agent only), so a node-wide
 * proxy setting cannot send IMDS traffic (and its tokens) elsewhere. (IMDS speaks plain HTTP;
 * an https:// endpoint, for a test double, loads node:https on first use.)
 */

const TOKEN_TTL_S = 21600;
const TOKEN_REFRESH_MARGIN_MS = 60_000;

export interface ImdsOptions {
  endpoint: string;
  log: Logger;
  /** How long required properties are retried (IMDS may come up late at early boot). */
  requiredTimeoutMs?: number;
  /** Per-request timeout. */
  requestTimeoutMs?: number;
}

export class ImdsError extends AgentError {
  constructor(message: string, hint = 'check that IMDS is enabled with HttpTokens=required and HttpPutResponseHopLimit >= 1 in the launch template', code = 'ImdsUnavailable') {
    super(code, message, { hint });
  }
}

/**
 * IMDS answered, but not what IMDS answers: too large, not the document or format AWS
 * documents. Not retried (the next answer is the same); exit 1.
 */
export class ImdsAnswerInvalid extends ImdsError {
  constructor(message: string) {
    super(message, 'check aws.imdsEndpoint in the local config: only IMDS itself (http://169.254.169.254) answers like IMDS', 'ImdsAnswerInvalid');
  }
}

/**
 * The most any IMDS answer may be. EC2 limits user data to 16 KiB and a tag value to 256
 * characters; the identity document is under 1 KiB. A larger answer is not IMDS, and reading
 * it whole (a 400 MB one took 1.7 GiB) would be the end of the agent.
 */
export const IMDS_MAX_ANSWER_BYTES = 64 * 1024;

class NotFound extends Error {}

const isOk = (status: number) => status >= 200 && status < 300;

export class Imds {
  private token: { value: string; expires: number } | undefined;
  private tokenRequest: Promise<string> | undefined;
  private readonly endpoint: string;
  private readonly log: Logger;
  private readonly requiredTimeoutMs: number;
  private readonly requestTimeoutMs: number;
  private transport: Promise<{ request: typeof http.request; agent: http.Agent }> | undefined;

  constructor(o: ImdsOptions) {
    this.endpoint = o.endpoint.replace(/\/+$/, '');
    this.log = o.log;
    this.requiredTimeoutMs = o.requiredTimeoutMs ?? 60_000;
    this.requestTimeoutMs = o.requestTimeoutMs ?? 2_000;
  }

  /** The token, fetched once for requests made side by side (the watcher polls four paths at once). */
  private async fetchToken(): Promise<string> {
    if (this.token && this.token.expires - TOKEN_REFRESH_MARGIN_MS > Date.now()) return this.token.value;
    this.tokenRequest ??= this.requestToken().finally(() => {
      this.tokenRequest = undefined;
    });
    return this.tokenRequest;
  }

  private async requestToken(): Promise<string> {
    const now = Date.now();
    const res = await this.request('PUT', 'latest/api/token', { 'X-aws-ec2-metadata-token-ttl-seconds': String(TOKEN_TTL_S) });
    if (!isOk(res.status)) throw new ImdsError(`IMDS token request answered HTTP ${res.status}`);
    const value = res.body.toString('utf8').trim();
    if (!value) throw new ImdsError('IMDS token request answered an empty token');
    registerSecret(value, 'imds-token');
    this.token = { value, expires: now + TOKEN_TTL_S * 1000 };
    return value;
  }

  /** One request, body read whole, within the request timeout (connect to last byte). */
  private async request(method: 'GET' | 'PUT', path: string, headers: Record<string, string>): Promise<{ status: number; body: Buffer }> {
    // Keep-alive: a boot makes a dozen requests. Idle sockets do not keep the process alive.
    this.transport ??= this.endpoint.startsWith('https:')
      ? import('node:https').then((https) => ({ request: https.request, agent: new https.Agent({ keepAlive: true }) }))
      : Promise.resolve({ request: http.request, agent: new http.Agent({ keepAlive: true }) });
    const { request, agent } = await this.transport;
    const url = `${this.endpoint}/${path.replace(/^\/+/, '')}`;
    return new Promise((resolve, reject) => {
      const req = request(url, { method, headers, agent }, (res) => {
        const chunks: Buffer[] = [];
        let size = 0;
        const tooLarge = () => req.destroy(new ImdsAnswerInvalid(`IMDS ${method} ${path} answered more than ${IMDS_MAX_ANSWER_BYTES} bytes (the cap of an IMDS answer)`));
        if (Number(res.headers['content-length'] ?? 0) > IMDS_MAX_ANSWER_BYTES) return tooLarge();
        res.on('data', (c: Buffer) => {
          size += c.length;
          if (size > IMDS_MAX_ANSWER_BYTES) return tooLarge();
          chunks.push(c);
        });
        res.on('end', () => {
          clearTimeout(timer);
          resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks) });
        });
        res.on('error', fail);
        res.on('close', () => {
          if (!res.complete) fail(new ImdsError(`IMDS ${method} ${path}: the connection closed before the answer was complete`));
        });
      });
      const timer = setTimeout(() => req.destroy(new ImdsError(`IMDS ${method} ${path} did not answer within ${this.requestTimeoutMs} ms`)), this.requestTimeoutMs);
      function fail(err: Error) {
        clearTimeout(timer);
        reject(err);
      }
      req.on('error', fail);
      req.end();
    });
  }

  /** One GET; `NotFound` on 404; a 401 drops the token and retries once. */
  private async getOnce(path: string): Promise<string> {
    for (let i = 0; i < 2; i++) {
      const token = await this.fetchToken();
      const res = await this.request('GET', path, { 'X-aws-ec2-metadata-token': token });
      if (res.status === 401) {
        this.token = undefined;
        continue;
      }
      if (res.status === 404) throw new NotFound(path);
      if (!isOk(res.status)) throw new ImdsError(`IMDS GET ${path} answered HTTP ${res.status}`);
      return res.body.toString('utf8');
    }
    throw new ImdsError(`IMDS refused the session token twice for ${path}`);
  }

  /** Retry `attempt` with backoff for the long, bounded time required properties get. */
  private retryRequired<T>(path: string, attempt: () => Promise<T>): Promise<T> {
    return waitFor({
      what: `IMDS ${path}`,
      timeoutMs: this.requiredTimeoutMs,
      initialDelayMs: 250,
      maxDelayMs: 5000,
      progressEveryMs: 10_000,
      hint: 'check that IMDS is enabled (HttpEndpoint=enabled, HttpTokens=required) and reachable from this instance',
      code: 'ImdsUnavailable',
      log: this.log,
      retryable: (err) => !(err instanceof ImdsAnswerInvalid),
      check: attempt,
    });
  }

  /** A property the agent cannot work without: retried with backoff for a long, bounded time. */
  async required(path: string): Promise<string> {
    return this.retryRequired(path, () => this.getOnce(path));
  }

  /** An optional property: one quick attempt; `undefined` when absent or IMDS does not answer. */
  async optional(path: string): Promise<string | undefined> {
    try {
      return await this.poll(path);
    } catch (err) {
      // Not IMDS's answer at all (past the cap): an error, not an absent property.
      if (err instanceof ImdsAnswerInvalid) throw err;
      this.log.debug('optional IMDS property unavailable', { path, err: (err as Error).message });
      return undefined;
    }
  }

  /**
   * One bounded attempt (the watcher's poll): `undefined` when the property is absent (404),
   * an ImdsError when IMDS does not answer, so that the caller can tell the two apart.
   */
  async poll(path: string): Promise<string | undefined> {
    try {
      return await this.getOnce(path);
    } catch (err) {
      if (err instanceof NotFound) return undefined;
      throw err instanceof AgentError ? err : new ImdsError(`IMDS GET ${path}: ${(err as Error).message}`);
    }
  }

  /** The instance identity document, parsed and checked against AWS's formats. */
  async identityDocument(): Promise<InstanceIdentityDocument> {
    return parseIdentityDocument(await this.required('latest/dynamic/instance-identity/document'));
  }

  /**
   * The raw user-data; `undefined` when the instance has none (404). Retried like a required
   * property otherwise: user-data carries config, and booting without it because IMDS was
   * slow to come up would boot the wrong node.
   */
  async userData(): Promise<Uint8Array | undefined> {
    const got = await this.retryRequired('latest/user-data', async (): Promise<{ data: Uint8Array | undefined }> => {
      // Up to IMDS_MAX_ANSWER_BYTES (EC2 allows 16 KiB); more is ImdsAnswerInvalid, not retried.
      const token = await this.fetchToken();
      const res = await this.request('GET', 'latest/user-data', { 'X-aws-ec2-metadata-token': token });
      if (res.status === 404) return { data: undefined };
      if (res.status === 401) this.token = undefined;
      if (!isOk(res.status)) throw new ImdsError(`IMDS user-data answered HTTP ${res.status}`);
      return { data: new Uint8Array(res.body) };
    });
    return got.data;
  }

  /** Instance tags, when "instance metadata tags" is enabled; `undefined` when it is not. */
  async tags(): Promise<Record<string, string> | undefined> {
    const list = await this.optional('latest/meta-data/tags/instance');
    if (list === undefined) return undefined;
    const out: Record<string, string> = {};
    const keys = list.split('\n').map((k) => k.trim()).filter(Boolean);
    await Promise.all(
      keys.map(async (k) => {
        const v = await this.listed(`latest/meta-data/tags/instance/${encodeURIComponent(k)}`);
        if (v !== undefined) out[k] = v;
      }),
    );
    return out;
  }

  /**
   * A property IMDS has just listed: retried like a required one, `undefined` only when it is
   * gone (404). Dropping a tag whose read was slow (a busy boot) would boot the node with part
   * of its identity: without `aws:cloudformation:logical-id` it would never signal its stack.
   */
  private async listed(path: string): Promise<string | undefined> {
    return (await this.retryRequired(path, async () => ({ value: await this.poll(path) }))).value;
  }
}

/**
 * AWS's formats of what the agent reads from IMDS. These values end up in S3 keys and
 * metadata headers, tag filters, session names and log lines: a CR/LF, `/` or `..` must stop
 * here.
 */
export const AWS_FORMATS = {
  instanceId: /^i-(?:[0-9a-f]{8}|[0-9a-f]{17})$/,
  region: /^[a-z]{2}(?:-[a-z]+)+-\d{1,2}$/,
  availabilityZone: /^[a-z]{2}(?:-[a-z]+)+-\d{1,2}[a-z]$/,
  /** Local Zones and Wavelength too: us-west-2-lax-1a, us-east-1-wl1-bos-wlz-1. */
  availabilityZoneAny: /^[a-z]{2}(?:-[a-z0-9]+)+$/,
  instanceType: /^[a-z0-9-]+\.[a-z0-9-]+$/,
  privateIp: /^(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)$/,
  accountId: /^\d{12}$/,
  imageId: /^ami-[0-9a-f]{8,17}$/,
  architecture: /^[a-z0-9_]{1,16}$/,
} as const;

/** A region as AWS writes them (also for AWS_REGION and friends). */
export const isAwsRegion = (v: string): boolean => AWS_FORMATS.region.test(v);

const REQUIRED_FIELDS = ['instanceId', 'region', 'availabilityZone', 'instanceType', 'privateIp'] as const;
const OPTIONAL_FIELDS = ['accountId', 'imageId', 'architecture'] as const;

/** Printable and short, for naming a bad value in a message without copying it whole. */
const shown = (v: unknown): string => {
  const s = typeof v === 'string' ? JSON.stringify(v) : v === null ? 'null' : Array.isArray(v) ? 'a list' : typeof v;
  return s.length > 40 ? `${s.slice(0, 40)}...` : s.replace(/[^\x20-\x7e]/g, '?');
};

export function parseIdentityDocument(text: string): InstanceIdentityDocument {
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch {
    throw new ImdsAnswerInvalid('IMDS answered an instance identity document that is not JSON');
  }
  if (!doc || typeof doc !== 'object' || Array.isArray(doc)) {
    throw new ImdsAnswerInvalid(`the instance identity document is ${shown(doc)}, not a JSON object`);
  }
  const d = doc as Record<string, unknown>;
  const out: Record<string, string> = {};
  const check = (k: (typeof REQUIRED_FIELDS)[number] | (typeof OPTIONAL_FIELDS)[number], required: boolean) => {
    const v = d[k];
    const format = k === 'availabilityZone' ? AWS_FORMATS.availabilityZoneAny : AWS_FORMATS[k];
    // What the agent only shows (account, image, architecture) is left out when malformed.
    if (!required) {
      if (typeof v === 'string' && format.test(v)) out[k] = v;
      return;
    }
    if (typeof v !== 'string' || !v) throw new ImdsAnswerInvalid(`the instance identity document has no ${k} (got ${shown(v)})`);
    if (!format.test(v)) throw new ImdsAnswerInvalid(`the instance identity document's ${k} ${shown(v)} is not in AWS's format`);
    out[k] = v;
  };
  for (const k of REQUIRED_FIELDS) check(k, true);
  for (const k of OPTIONAL_FIELDS) check(k, false);
  if (!(out.availabilityZone as string).startsWith(out.region as string)) {
    throw new ImdsAnswerInvalid(`the instance identity document's availabilityZone ${shown(out.availabilityZone)} is not in its region ${shown(out.region)}`);
  }
  return out as unknown as InstanceIdentityDocument;
}

export interface InstanceIdentityDocument {
  instanceId: string;
  region: string;
  availabilityZone: string;
  instanceType: string;
  privateIp: string;
  accountId?: string;
  imageId?: string;
  architecture?: string;
}
