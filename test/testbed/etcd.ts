import { randomUUID } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { freePort } from './ports.js';
import { startServer, type ServerProcess } from './process.js';

/** Debian's etcd-server (3.4); plain HTTP on loopback ports. */
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

/** One single-member etcd with its data in `dir` (created 0700; the caller removes it). */
export async function startEtcd(o: { dir: string; name?: string }): Promise<EtcdMember> {
  const [member] = await launch([{ name: o.name ?? 'default', dataDir: o.dir }]);
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
async function launch(specs: { name: string; dataDir: string }[]): Promise<EtcdMember[]> {
  const planned = await Promise.all(
    specs.map(async (s) => ({ ...s, clientUrl: `http://127.0.0.1:${await freePort()}`, peerUrl: `http://127.0.0.1:${await freePort()}` })),
  );
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
        ],
        timeoutMs: 30_000,
        ready: async () => {
          const res = await fetch(`${m.clientUrl}/health`, { signal: AbortSignal.timeout(1000) });
          return ((await res.json()) as { health?: string }).health === 'true';
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
