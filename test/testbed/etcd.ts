import { execFileSync } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import https from 'node:https';
import type { Credentials } from './pki.js';
import { freePort } from './ports.js';
import { startServer, type ServerProcess } from './process.js';

/** Debian's etcd-server (3.4) on loopback ports: plain HTTP, or TLS with client certificates (`tls`). */
const ETCD = process.env.ZDT_ETCD_BIN ?? '/usr/bin/etcd';

export interface EtcdMember {
  name: string;
  clientUrl: string;
  peerUrl: string;
  dataDir: string;
  pid: number;
  stop(): Promise<void>;
}

export interface EtcdCluster {
  members: EtcdMember[];
  /** Every member's client URL, for `--endpoints`. */
  clientUrls: string[];
  stop(): Promise<void>;
}

/** Client URLs over TLS, as kubeadm runs etcd: a server certificate, and client certificates of `ca` required. */
export interface EtcdTls {
  /** The CA's directory (pki.ts): `ca.crt`, and `<server>.crt`/`.key` for the server. */
  caDir: string;
  server: string;
  /** A client certificate of the CA, for the health check. */
  client: Credentials;
}

/** One single-member etcd with its data in `dir` (created 0700; the caller removes it). */
export async function startEtcd(o: { dir: string; name?: string; tls?: EtcdTls }): Promise<EtcdMember> {
  const [member] = await launch([{ name: o.name ?? 'default', dataDir: o.dir }], o.tls);
  return member!;
}

/** `size` members forming one new cluster; data under `dir` (a temp dir removed by stop() when omitted). */
export async function startEtcdCluster(size: number, o: { dir?: string } = {}): Promise<EtcdCluster> {
  const dir = o.dir ?? (await fs.mkdtemp(path.join(os.tmpdir(), 'zdt-etcd-')));
  const names = Array.from({ length: size }, (_, i) => `etcd-${i}`);
  const members = await launch(names.map((name) => ({ name, dataDir: path.join(dir, name) })));
  return {
    members,
    clientUrls: members.map((m) => m.clientUrl),
    stop: async () => {
      // One by one: a leader stopped together with its followers waits seconds for a leadership
      // transfer that cannot happen.
      for (const m of members) await m.stop();
      if (!o.dir) await fs.rm(dir, { recursive: true, force: true });
    },
  };
}

/** Starts all members at once (none is healthy before a quorum is up); stops them all when one fails. */
async function launch(specs: { name: string; dataDir: string }[], tls?: EtcdTls): Promise<EtcdMember[]> {
  const planned = await Promise.all(
    specs.map(async (s) => ({ ...s, clientUrl: `${tls ? 'https' : 'http'}://127.0.0.1:${await freePort()}`, peerUrl: `http://127.0.0.1:${await freePort()}` })),
  );
  const tlsArgs = tls
    ? ['--cert-file', path.join(tls.caDir, `${tls.server}.crt`), '--key-file', path.join(tls.caDir, `${tls.server}.key`), '--trusted-ca-file', path.join(tls.caDir, 'ca.crt'), '--client-cert-auth']
    : [];
  const ca = tls ? await fs.readFile(path.join(tls.caDir, 'ca.crt'), 'utf8') : undefined;
  const initialCluster = planned.map((m) => `${m.name}=${m.peerUrl}`).join(',');
  const token = `zdt-test-${randomUUID()}`;
  const started = await Promise.allSettled(
    planned.map(async (m) => {
      await fs.mkdir(m.dataDir, { recursive: true, mode: 0o700 });
      await fs.chmod(m.dataDir, 0o700); // etcd refuses a data dir others can read
      return startServer({
        what: `etcd member ${m.name}`,
        file: ETCD,
        args: [
          ...['--name', m.name, '--data-dir', m.dataDir],
          ...['--listen-client-urls', m.clientUrl, '--advertise-client-urls', m.clientUrl],
          ...['--listen-peer-urls', m.peerUrl, '--initial-advertise-peer-urls', m.peerUrl],
          ...['--initial-cluster', initialCluster, '--initial-cluster-state', 'new', '--initial-cluster-token', token],
          ...['--logger', 'zap', '--log-outputs', 'stderr'],
          ...tlsArgs,
        ],
        timeoutMs: 30_000,
        ready: async () => {
          if (!tls) {
            const res = await fetch(`${m.clientUrl}/health`, { signal: AbortSignal.timeout(1000) });
            return ((await res.json()) as { health?: string }).health === 'true';
          }
          const body = await new Promise<string>((resolve, reject) => {
            const req = https.get(`${m.clientUrl}/health`, { ca, cert: tls.client.cert, key: tls.client.key, timeout: 1000 }, (res) => {
              let text = '';
              res.on('data', (c: Buffer) => (text += c));
              res.on('end', () => resolve(text));
            });
            req.on('timeout', () => req.destroy(new Error('timeout')));
            req.on('error', reject);
          });
          return (JSON.parse(body) as { health?: string }).health === 'true';
        },
      });
    }),
  );
  const servers = started.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
  const failed = started.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failed) {
    await Promise.all(servers.map((s) => s.stop()));
    throw failed.reason;
  }
  return planned.map((m, i) => asMember(m, servers[i]!));
}

function asMember(m: Omit<EtcdMember, 'pid' | 'stop'>, server: ServerProcess): EtcdMember {
  return { ...m, pid: server.pid, stop: () => server.stop() };
}

/**
 * Puts `blobs` keys of random data (about 0.93 MiB each, base64 of 700 KiB) under
 * /registry/blob/: 12 make a snapshot of about 11 MiB, three backup parts of 5 MiB.
 */
export function fillEtcd(clientUrl: string, blobs: number): void {
  for (let i = 0; i < blobs; i++) {
    execFileSync('etcdctl', [`--endpoints=${clientUrl}`, 'put', `/registry/blob/${i}`], { env: { ...process.env, ETCDCTL_API: '3' }, input: randomBytes(700 * 1024).toString('base64') });
  }
}
