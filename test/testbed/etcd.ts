import { execFileSync } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import https from 'node:https';
import net from 'node:net';
import { makeTestCa, type Credentials } from './pki.js';
import { freePort } from './ports.js';
import { startServer, testbedBinDir, type ServerProcess } from './process.js';

/**
 * etcd on loopback ports, plain HTTP or TLS with client certificates (`tls`), in one of the
 * two generations the agent meets: Debian's etcd 3.4 (`/usr/bin`), or 3.6 as kubeadm 1.34
 * deploys it, built by etcd36/build.sh into `<cache>/bin/etcd-3.6/` (etcd, etcdctl, etcdutl).
 */
export type EtcdVersion = '3.4' | '3.6';

export function etcd36BinDir(): string {
  return testbedBinDir('etcd-3.6');
}

/** The path of `tool` (etcd, etcdctl, etcdutl) of that generation. */
export function etcdTool(version: EtcdVersion, tool: 'etcd' | 'etcdctl' | 'etcdutl'): string {
  if (version === '3.6') return path.join(etcd36BinDir(), tool);
  return tool === 'etcd' ? (process.env.ZDT_ETCD_BIN ?? '/usr/bin/etcd') : `/usr/bin/${tool}`;
}

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
  /** A peer certificate (`<peer>.crt`/`.key`, serverAuth and clientAuth) as kubeadm's etcd/peer: peer URLs over TLS too. */
  peer?: string;
}

/**
 * kubeadm's etcd PKI (/etc/kubernetes/pki/etcd) in `dir`: `ca`, `server` and `peer` (serverAuth
 * and clientAuth, for localhost and 127.0.0.1), `healthcheck-client`, and the API server's
 * `apiserver-etcd-client`. Peer URLs run over TLS with it, as kubeadm's etcd does.
 */
export async function makeKubeadmEtcdPki(dir: string): Promise<EtcdTls> {
  const ca = await makeTestCa(dir, 'etcd-ca');
  const names = ['DNS:localhost', 'IP:127.0.0.1', 'IP:0:0:0:0:0:0:0:1'];
  await ca.server('server', '/CN=etcd00', names, { alsoClient: true });
  await ca.server('peer', '/CN=etcd00', names, { alsoClient: true });
  const client = await ca.client('healthcheck-client', '/CN=kube-etcd-healthcheck-client');
  await ca.client('apiserver-etcd-client', '/CN=kube-apiserver-etcd-client');
  return { caDir: dir, server: 'server', peer: 'peer', client };
}

export interface EtcdStart {
  dir: string;
  name?: string;
  tls?: EtcdTls | undefined;
  version?: EtcdVersion | undefined;
  /** Fixed URLs (a restored member in place of the old one); free loopback ports when omitted. */
  clientUrl?: string | undefined;
  peerUrl?: string | undefined;
  /** Joining a running cluster (`etcdctl member add` first): its --initial-cluster, state `existing`. */
  join?: { initialCluster: string } | undefined;
  /** Started as soon as etcd serves its client port, without waiting for /health (a learner, a member without quorum). */
  noHealthWait?: boolean | undefined;
}

/** One etcd member with its data in `dir` (created 0700; the caller removes it): a new single-member cluster, or one joining. */
export async function startEtcd(o: EtcdStart): Promise<EtcdMember> {
  const [member] = await launch([{ name: o.name ?? 'default', dataDir: o.dir, clientUrl: o.clientUrl, peerUrl: o.peerUrl }], o);
  return member!;
}

/** `size` members forming one new cluster; data under `dir` (a temp dir removed by stop() when omitted). */
export async function startEtcdCluster(size: number, o: { dir?: string; tls?: EtcdTls; version?: EtcdVersion } = {}): Promise<EtcdCluster> {
  const dir = o.dir ?? (await fs.mkdtemp(path.join(os.tmpdir(), 'zdt-etcd-')));
  const names = Array.from({ length: size }, (_, i) => `etcd-${i}`);
  const members = await launch(
    names.map((name) => ({ name, dataDir: path.join(dir, name) })),
    o,
  );
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
async function launch(
  specs: { name: string; dataDir: string; clientUrl?: string | undefined; peerUrl?: string | undefined }[],
  o: Pick<EtcdStart, 'tls' | 'version' | 'join' | 'noHealthWait'>,
): Promise<EtcdMember[]> {
  const { tls } = o;
  const planned = await Promise.all(
    specs.map(async (s) => ({
      ...s,
      clientUrl: s.clientUrl ?? `${tls ? 'https' : 'http'}://127.0.0.1:${await freePort()}`,
      peerUrl: s.peerUrl ?? `${tls?.peer ? 'https' : 'http'}://127.0.0.1:${await freePort()}`,
    })),
  );
  const pem = (name: string, ext: string) => path.join(tls!.caDir, `${name}.${ext}`);
  const tlsArgs = tls
    ? [
        ...['--cert-file', pem(tls.server, 'crt'), '--key-file', pem(tls.server, 'key'), '--trusted-ca-file', pem('ca', 'crt'), '--client-cert-auth'],
        ...(tls.peer ? ['--peer-cert-file', pem(tls.peer, 'crt'), '--peer-key-file', pem(tls.peer, 'key'), '--peer-trusted-ca-file', pem('ca', 'crt'), '--peer-client-cert-auth'] : []),
      ]
    : [];
  const ca = tls ? await fs.readFile(path.join(tls.caDir, 'ca.crt'), 'utf8') : undefined;
  const initialCluster = o.join?.initialCluster ?? planned.map((m) => `${m.name}=${m.peerUrl}`).join(',');
  const token = `zdt-test-${randomUUID()}`;
  const started = await Promise.allSettled(
    planned.map(async (m) => {
      await fs.mkdir(m.dataDir, { recursive: true, mode: 0o700 });
      await fs.chmod(m.dataDir, 0o700); // etcd refuses a data dir others can read
      return startServer({
        what: `etcd member ${m.name}`,
        file: etcdTool(o.version ?? '3.4', 'etcd'),
        args: [
          ...['--name', m.name, '--data-dir', m.dataDir],
          ...['--listen-client-urls', m.clientUrl, '--advertise-client-urls', m.clientUrl],
          ...['--listen-peer-urls', m.peerUrl, '--initial-advertise-peer-urls', m.peerUrl],
          ...['--initial-cluster', initialCluster, '--initial-cluster-state', o.join ? 'existing' : 'new', '--initial-cluster-token', token],
          ...['--logger', 'zap', '--log-outputs', 'stderr'],
          ...tlsArgs,
        ],
        timeoutMs: 30_000,
        ready: async () => {
          if (o.noHealthWait) return serves(m.clientUrl);
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

/** Something listens on the client URL's port. */
function serves(url: string): Promise<boolean> {
  const u = new URL(url);
  return new Promise((resolve) => {
    const sock = net.connect({ host: u.hostname, port: Number(u.port) }, () => {
      sock.destroy();
      resolve(true);
    });
    sock.on('error', () => resolve(false));
  });
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
