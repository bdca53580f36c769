import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import { AgentError } from '../errors.js';
import type { EtcdContext } from './restore.js';

/**
 * The local etcd through its HTTP/JSON gateway (grpc-gateway, on by default on the client
 * port in etcd 3.4 to 3.6): member status, member list, and the snapshot stream.
 *
 * Why the gateway for the snapshot: `etcdctl snapshot save` (3.4 to 3.6) only writes to a
 * file, so it costs a full temporary copy of the database on disk and a second read of it.
 * `POST /v3/maintenance/snapshot` streams the same bytes (the bbolt database followed by
 * etcd's SHA-256 of it, exactly what `etcdctl snapshot save` writes and `snapshot restore`
 * checks) as newline-delimited JSON messages with base64 blobs, which are decoded on the
 * fly into the archive and the upload. The first message tells the total size
 * (`remaining_bytes` + its blob), which the tar header needs before the data.
 */

export interface EtcdEndpoint {
  url: string;
  ca?: Buffer | undefined;
  cert?: Buffer | undefined;
  key?: Buffer | undefined;
}

export interface EtcdStatus {
  version: string;
  dbSizeBytes: number;
  memberId: string;
  clusterId: string;
  leaderId: string;
  revision: string;
}

export interface EtcdMember {
  id: string;
  name: string;
  peerUrls: string[];
  clientUrls: string[];
  isLearner: boolean;
}

export interface SnapshotStream {
  /** Total bytes the stream yields: the database plus etcd's 32-byte SHA-256 trailer. */
  size: number;
  chunks: AsyncGenerator<Buffer>;
}

/** SHA-256 trailer etcd appends to every snapshot stream. */
const HASH_TRAILER = 32;

export class EtcdUnavailable extends AgentError {
  constructor(message: string, cause?: unknown) {
    super('EtcdUnavailable', message, { hint: 'check that the local etcd runs (crictl ps / the etcd static pod) and the etcd.* client settings', cause });
  }
}

/** The local member's endpoint, from config: client URL plus the kubeadm client certificate. */
export function localEtcdEndpoint(ctx: Pick<EtcdContext, 'config' | 'paths'>): EtcdEndpoint {
  const e = ctx.config.etcd;
  const url = e?.clientUrl ?? 'https://127.0.0.1:2379';
  if (!url.startsWith('https:')) return { url };
  const read = (p: string) => {
    try {
      return fs.readFileSync(ctx.paths.at(p));
    } catch (err) {
      throw new AgentError('EtcdClientCertMissing', `cannot read ${p}: ${(err as Error).message}`, {
        hint: 'kubeadm writes the etcd client certificates to /etc/kubernetes/pki/etcd/; check etcd.caFile, etcd.certFile, etcd.keyFile',
      });
    }
  };
  return { url, ca: read(e?.caFile ?? '/etc/kubernetes/pki/etcd/ca.crt'), cert: read(e?.certFile ?? '/etc/kubernetes/pki/etcd/healthcheck-client.crt'), key: read(e?.keyFile ?? '/etc/kubernetes/pki/etcd/healthcheck-client.key') };
}

export class EtcdGateway {
  private readonly url: URL;
  private readonly agent: http.Agent;

  constructor(private readonly ep: EtcdEndpoint) {
    this.url = new URL(ep.url);
    this.agent = this.url.protocol === 'https:' ? new https.Agent({ keepAlive: true, ca: ep.ca, cert: ep.cert, key: ep.key }) : new http.Agent({ keepAlive: true });
  }

  close(): void {
    this.agent.destroy();
  }

  private request(path: string, signal: AbortSignal | undefined): Promise<http.IncomingMessage> {
    return new Promise((resolve, reject) => {
      const mod = this.url.protocol === 'https:' ? https : http;
      const req = mod.request(
        {
          hostname: this.url.hostname,
          port: this.url.port || (this.url.protocol === 'https:' ? 443 : 80),
          path,
          method: 'POST',
          agent: this.agent,
          headers: { 'content-type': 'application/json' },
          signal,
        },
        (res) => {
          if ((res.statusCode ?? 0) >= 300) {
            const chunks: Buffer[] = [];
            res.on('data', (c: Buffer) => chunks.push(c));
            res.on('end', () => reject(new EtcdUnavailable(`etcd ${path} answered HTTP ${res.statusCode}: ${Buffer.concat(chunks).toString('utf8').slice(0, 300)}`)));
            res.on('error', reject);
            return;
          }
          resolve(res);
        },
      );
      req.on('error', (err) => reject(signal?.aborted ? signal.reason : new EtcdUnavailable(`etcd ${this.ep.url}${path}: ${err.message}`, err)));
      req.end('{}');
    });
  }

  private async json<T>(path: string, signal: AbortSignal | undefined): Promise<T> {
    const res = await this.request(path, signal);
    const chunks: Buffer[] = [];
    for await (const c of res) chunks.push(c as Buffer);
    return JSON.parse(Buffer.concat(chunks).toString('utf8')) as T;
  }

  async status(signal?: AbortSignal): Promise<EtcdStatus> {
    const s = await this.json<{ header?: { cluster_id?: string; member_id?: string; revision?: string }; version?: string; dbSize?: string; leader?: string }>(
      '/v3/maintenance/status',
      signal,
    );
    return {
      version: s.version ?? 'unknown',
      dbSizeBytes: Number(s.dbSize ?? 0),
      memberId: s.header?.member_id ?? '',
      clusterId: s.header?.cluster_id ?? '',
      leaderId: s.leader ?? '',
      revision: s.header?.revision ?? '0',
    };
  }

  async members(signal?: AbortSignal): Promise<EtcdMember[]> {
    const r = await this.json<{ members?: Array<{ ID?: string; name?: string; peerURLs?: string[]; clientURLs?: string[]; isLearner?: boolean }> }>(
      '/v3/cluster/member/list',
      signal,
    );
    return (r.members ?? []).map((m) => ({ id: m.ID ?? '', name: m.name ?? '', peerUrls: m.peerURLs ?? [], clientUrls: m.clientURLs ?? [], isLearner: m.isLearner ?? false }));
  }

  /** The snapshot as a byte stream; resolves once the first message (and so the size) is in. */
  async snapshot(signal?: AbortSignal): Promise<SnapshotStream> {
    const res = await this.request('/v3/maintenance/snapshot', signal);
    const messages = splitLines(res);
    const first = await messages.next();
    if (first.done) throw new EtcdUnavailable('etcd ended the snapshot stream before its first message');
    const m = parseSnapshotMessage(first.value);
    const size = m.remaining + m.blob.length + HASH_TRAILER;
    async function* chunks(): AsyncGenerator<Buffer> {
      let sent = m.blob.length;
      yield m.blob;
      for await (const line of messages) {
        const next = parseSnapshotMessage(line);
        sent += next.blob.length;
        yield next.blob;
      }
      if (sent !== size) throw new EtcdUnavailable(`the etcd snapshot stream ended after ${sent} of ${size} bytes`);
    }
    return { size, chunks: chunks() };
  }
}

/** Newline-delimited messages of a response, as Buffers without the newline. */
async function* splitLines(res: AsyncIterable<Buffer>): AsyncGenerator<Buffer> {
  let pending: Buffer[] = [];
  for await (const chunk of res) {
    let start = 0;
    for (let nl = chunk.indexOf(10, start); nl !== -1; nl = chunk.indexOf(10, start)) {
      pending.push(chunk.subarray(start, nl));
      const line = pending.length === 1 ? pending[0]! : Buffer.concat(pending);
      pending = [];
      if (line.length > 0) yield line;
      start = nl + 1;
    }
    if (start < chunk.length) pending.push(chunk.subarray(start));
  }
  const rest = Buffer.concat(pending);
  if (rest.length > 0) yield rest;
}

const REMAINING = Buffer.from('"remaining_bytes":"');
const BLOB = Buffer.from('"blob":"');

/**
 * One `{"result":{"remaining_bytes":"N","blob":"<base64>"}}` message. Parsed by position
 * rather than JSON.parse: a message is 44 KB of base64, and this is the hot loop of a backup.
 */
export function parseSnapshotMessage(line: Buffer): { remaining: number; blob: Buffer } {
  if (line.subarray(0, 9).toString('latin1') === '{"error":') {
    let message = line.toString('utf8').slice(0, 300);
    try {
      message = (JSON.parse(line.toString('utf8')) as { error: { message?: string } }).error.message ?? message;
    } catch {
      // keep the raw text
    }
    throw new EtcdUnavailable(`etcd refused the snapshot: ${message}`);
  }
  let remaining = 0;
  const r = line.indexOf(REMAINING);
  if (r !== -1) {
    const start = r + REMAINING.length;
    remaining = Number(line.toString('latin1', start, line.indexOf(34, start)));
  }
  const b = line.indexOf(BLOB);
  if (b === -1) return { remaining, blob: Buffer.alloc(0) };
  const start = b + BLOB.length;
  const end = line.indexOf(34, start);
  if (end === -1) throw new EtcdUnavailable('etcd sent a snapshot message that is cut off');
  return { remaining, blob: Buffer.from(line.toString('latin1', start, end), 'base64') };
}
