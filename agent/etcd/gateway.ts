import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import { AgentError } from '../errors.js';
import type { EtcdContext } from './restore.js';

/**
 * The local etcd through its HTTP/JSON gateway (grpc-gateway, on by default on the client
 * port in etcd 3.4 to 3.6): member status and member list, small JSON answers. The snapshot
 * itself comes over gRPC (snapshot.ts): the gateway's JSON/base64 encoding of it is slow.
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
}
