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
  constructor(message: string, hint = 'check that IMDS is enabled with HttpTokens=required and HttpPutResponseHopLimit >= 1 in the launch template') {
    super('ImdsUnavailable', message, { hint });
  }
}

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
        res.on('data', (c: Buffer) => chunks.push(c));
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
      retryable: () => true,
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

  /** The instance identity document, parsed and checked. */
  async identityDocument(): Promise<InstanceIdentityDocument> {
    const text = await this.required('latest/dynamic/instance-identity/document');
    let doc: unknown;
    try {
      doc = JSON.parse(text);
    } catch {
      throw new ImdsError('IMDS answered an instance identity document that is not JSON', 'check the IMDS endpoint (aws.imdsEndpoint)');
    }
    const d = doc as Record<string, unknown>;
    for (const k of ['instanceId', 'region', 'availabilityZone', 'instanceType', 'privateIp'] as const) {
      if (typeof d[k] !== 'string' || !d[k]) {
        throw new ImdsError(`the instance identity document has no ${k}`, 'check the IMDS endpoint (aws.imdsEndpoint)');
      }
    }
    return d as unknown as InstanceIdentityDocument;
  }

  /**
   * The raw user-data; `undefined` when the instance has none (404). Retried like a required
   * property otherwise: user-data carries config, and booting without it because IMDS was
   * slow to come up would boot the wrong node.
   */
  async userData(): Promise<Uint8Array | undefined> {
    const got = await this.retryRequired('latest/user-data', async (): Promise<{ data: Uint8Array | undefined }> => {
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
        const v = await this.optional(`latest/meta-data/tags/instance/${encodeURIComponent(k)}`);
        if (v !== undefined) out[k] = v;
      }),
    );
    return out;
  }
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
