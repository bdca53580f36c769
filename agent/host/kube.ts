import fs from 'node:fs';
import https from 'node:https';
import path from 'node:path';
import { parse as parseYaml } from 'yaml';
import { AgentError, DeadlineError } from '../errors.js';

/**
 * A small Kubernetes REST client: JSON over HTTPS with the credentials of a kubeconfig
 * (client certificates, as kubeadm writes them, or a bearer token). The agent needs a
 * handful of calls (version, readyz, nodes, pods, evictions, one RBAC grant);
 * @kubernetes/client-node would bring a dozen dependencies and megabytes into the binary for
 * them.
 */

export interface KubeCredentials {
  server: string;
  ca?: Buffer | undefined;
  cert?: Buffer | undefined;
  key?: Buffer | undefined;
  token?: string | undefined;
  /** TLS server name, when the server URL is an IP that the certificate does not name. */
  serverName?: string | undefined;
}

interface KubeconfigDoc {
  'current-context'?: string;
  contexts?: Array<{ name: string; context: { cluster: string; user: string } }>;
  clusters?: Array<{ name: string; cluster: { server: string; 'certificate-authority'?: string; 'certificate-authority-data'?: string; 'tls-server-name'?: string } }>;
  users?: Array<{
    name: string;
    user: { 'client-certificate'?: string; 'client-certificate-data'?: string; 'client-key'?: string; 'client-key-data'?: string; token?: string };
  }>;
}

/**
 * Reads a kubeconfig. `mapPath` maps the absolute node paths inside it (kubelet.conf names
 * /var/lib/kubelet/pki/…) under the agent's root prefix.
 */
export function loadKubeconfig(file: string, mapPath: (p: string) => string = (p) => p): KubeCredentials {
  let doc: KubeconfigDoc;
  try {
    doc = parseYaml(fs.readFileSync(file, 'utf8'), { logLevel: 'silent' }) as KubeconfigDoc;
  } catch (err) {
    throw new AgentError('KubeconfigUnreadable', `cannot read ${file}: ${(err as Error).message}`, {
      hint: 'check that kubeadm wrote it (the node joined) and that the agent runs as root',
    });
  }
  const ctxName = doc['current-context'] ?? doc.contexts?.[0]?.name;
  const ctx = doc.contexts?.find((c) => c.name === ctxName)?.context;
  const cluster = doc.clusters?.find((c) => c.name === ctx?.cluster)?.cluster ?? doc.clusters?.[0]?.cluster;
  const user = doc.users?.find((u) => u.name === ctx?.user)?.user ?? doc.users?.[0]?.user;
  if (!cluster?.server) throw new AgentError('KubeconfigInvalid', `${file} names no cluster server`, { hint: 'check the kubeconfig' });
  const dir = path.dirname(file);
  const read = (data: string | undefined, ref: string | undefined): Buffer | undefined => {
    if (data) return Buffer.from(data, 'base64');
    if (!ref) return undefined;
    return fs.readFileSync(path.isAbsolute(ref) ? mapPath(ref) : path.join(dir, ref));
  };
  return {
    server: cluster.server.replace(/\/+$/, ''),
    ca: read(cluster['certificate-authority-data'], cluster['certificate-authority']),
    cert: read(user?.['client-certificate-data'], user?.['client-certificate']),
    key: read(user?.['client-key-data'], user?.['client-key']),
    token: user?.token,
    serverName: cluster['tls-server-name'],
  };
}

export class KubeApiError extends AgentError {
  readonly status: number;
  readonly reason: string | undefined;
  constructor(method: string, urlPath: string, status: number, reason: string | undefined, message: string) {
    const hint =
      status === 403
        ? `the credentials lack the permission for ${method} ${urlPath}; check RBAC and the Node authorizer`
        : status === 401
          ? 'the credentials were refused; check the client certificate and that it is not expired'
          : 'check the API server';
    super('KubeApiError', `${method} ${urlPath}: HTTP ${status}${reason ? ` ${reason}` : ''}: ${message}`, { hint });
    this.status = status;
    this.reason = reason;
  }
}

/** A cluster-scoped or namespaced API object, as far as create-or-replace needs it. */
export interface KubeObject {
  apiVersion: string;
  kind: string;
  metadata: { name: string; resourceVersion?: string | undefined; [key: string]: unknown };
  [key: string]: unknown;
}

export interface KubeResponse<T> {
  status: number;
  body: T;
}

export class KubeClient {
  private readonly agent: https.Agent;
  private readonly url: URL;

  constructor(private readonly creds: KubeCredentials) {
    this.url = new URL(creds.server);
    this.agent = new https.Agent({
      keepAlive: true,
      maxSockets: 16,
      ca: creds.ca,
      cert: creds.cert,
      key: creds.key,
      servername: creds.serverName,
    });
  }

  close(): void {
    this.agent.destroy();
  }

  /** One request; resolves for every HTTP status (callers decide), rejects on network errors and the timeout. */
  raw<T = unknown>(method: string, urlPath: string, opts: { body?: unknown; timeoutMs?: number; contentType?: string; signal?: AbortSignal | undefined } = {}): Promise<KubeResponse<T>> {
    const payload = opts.body === undefined ? undefined : Buffer.from(JSON.stringify(opts.body));
    return new Promise((resolve, reject) => {
      const req = https.request(
        {
          protocol: this.url.protocol,
          hostname: this.url.hostname,
          port: this.url.port || 443,
          path: urlPath,
          method,
          agent: this.agent,
          headers: {
            accept: 'application/json',
            ...(this.creds.token ? { authorization: `Bearer ${this.creds.token}` } : {}),
            ...(payload ? { 'content-type': opts.contentType ?? 'application/json', 'content-length': payload.length } : {}),
          },
          signal: opts.signal,
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () => {
            const text = Buffer.concat(chunks).toString('utf8');
            let body: unknown = text;
            try {
              body = text ? JSON.parse(text) : undefined;
            } catch {
              // Plain text answers (/readyz, /livez) stay text.
            }
            resolve({ status: res.statusCode ?? 0, body: body as T });
          });
          res.on('error', reject);
        },
      );
      // A server that never answers is a deadline, not a refusal: callers record it as one.
      // Timed here, connect to last byte: Node's own `timeout` is an idle timer that over TLS
      // fired only after twice its value against an endpoint that accepts and stays silent.
      const ms = opts.timeoutMs ?? 10_000;
      const timer = setTimeout(() => {
        req.destroy(
          new DeadlineError('KubeApiTimeout', `${method} ${urlPath}: the API server did not answer within ${ms} ms`, {
            hint: 'check that the API server is up and not overloaded (its endpoint accepts connections but does not answer)',
          }),
        );
      }, ms);
      req.on('close', () => clearTimeout(timer));
      req.on('error', reject);
      req.end(payload);
    });
  }

  /** A request that must succeed (2xx); anything else is a KubeApiError. */
  async call<T = unknown>(
    method: string,
    urlPath: string,
    opts: { body?: unknown; timeoutMs?: number; contentType?: string; okStatus?: number[]; signal?: AbortSignal | undefined } = {},
  ): Promise<KubeResponse<T>> {
    const res = await this.raw<T>(method, urlPath, opts);
    if ((res.status >= 200 && res.status < 300) || opts.okStatus?.includes(res.status)) return res;
    const status = res.body as { reason?: string; message?: string } | string | undefined;
    const message = typeof status === 'object' && status ? (status.message ?? '') : String(status ?? '');
    throw new KubeApiError(method, urlPath, res.status, typeof status === 'object' ? status?.reason : undefined, message.slice(0, 300));
  }

  /**
   * Creates `obj` in `collection` (`/apis/<group>/<version>/<plural>`), or, when an object of
   * that name exists, replaces it with `obj` (PUT with the current resourceVersion). Applying
   * the same object twice leaves one object as given.
   */
  async createOrReplace(collection: string, obj: KubeObject, opts: { signal?: AbortSignal | undefined; timeoutMs?: number } = {}): Promise<'created' | 'replaced'> {
    const created = await this.call('POST', collection, { ...opts, body: obj, okStatus: [409] });
    if (created.status !== 409) return 'created';
    const url = `${collection}/${encodeURIComponent(obj.metadata.name)}`;
    const current = await this.call<KubeObject>('GET', url, opts);
    await this.call('PUT', url, { ...opts, body: { ...obj, metadata: { ...obj.metadata, resourceVersion: current.body.metadata.resourceVersion } } });
    return 'replaced';
  }

  async version(timeoutMs = 5000): Promise<{ gitVersion: string; major: string; minor: string }> {
    return (await this.call<{ gitVersion: string; major: string; minor: string }>('GET', '/version', { timeoutMs })).body;
  }

  async readyz(timeoutMs = 5000): Promise<boolean> {
    const res = await this.raw<string>('GET', '/readyz', { timeoutMs });
    return res.status === 200 && String(res.body).trim() === 'ok';
  }
}
