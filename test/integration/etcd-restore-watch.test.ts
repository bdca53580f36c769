import { EventEmitter } from 'node:events';
import fs from 'node:fs';
import https from 'node:https';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeAll, afterAll, describe, expect, it } from 'vitest';
import type { ConfigInput } from '../../agent/config/schema.js';
import { takeBackup } from '../../agent/etcd/backup.js';
import { restoreBackup } from '../../agent/etcd/restore.js';
import { makeKubeadmEtcdPki, startEtcd, type EtcdMember, type EtcdTls } from '../testbed/etcd.js';
import { ensureNamespace, kubeApiserverAvailable, startKube, type Kube } from '../testbed/kube.js';
import { freePort } from '../testbed/ports.js';
import { makeTempRoot, type TempRoot } from '../testbed/root.js';
import { installEtcdClientCert, useEtcd36Tools } from '../support/etcd36-env.js';
import { startMinioS3, type MinioS3 } from '../support/minio-env.js';
import { awsConfig, contextFor, writeFakePki } from '../support/terminate-env.js';

/**
 * The revision bump of a restore, seen from outside: the real kube-apiserver on etcd 3.6
 * (TLS, kubeadm's certificates), a client watching ConfigMaps from a resourceVersion, a
 * backup, more writes the client sees, then the disaster: etcd restored from the backup with
 * the agent's restore, the API server restarted on it, and the client reconnecting from the
 * last resourceVersion it saw, as client-go's reflector does.
 *
 * - With the bump (the default): the API server answers 410 Gone (Expired), so the client
 *   relists and sees what the cluster holds.
 * - Without it: the revisions of the lost writes come back with other contents. The API
 *   server accepts the old resourceVersion, the client never hears of the writes made after
 *   the restore up to that revision, and never of the deletion of what it saw after the
 *   backup (docs/etcd-backup.md).
 */

const BUCKET = 'zdt-watch-backups';
const NS = 'zdt-watch';
const AFTER_BACKUP = 60;

/** S3 is MinIO (checks every part's SHA-256); the backup and restore use no other AWS service. */
let aws: MinioS3;
let restorePath: () => void;
let dir: string;
let pki: EtcdTls;
const cleanups: Array<() => Promise<void>> = [];

beforeAll(async () => {
  if (!(await kubeApiserverAvailable())) throw new Error('kube-apiserver is missing: run test/testbed/k8s/build.sh');
  restorePath = useEtcd36Tools();
  aws = await startMinioS3([BUCKET]);
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'zdt-restore-watch-'));
  pki = await makeKubeadmEtcdPki(path.join(dir, 'pki'));
}, 120_000);

afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

afterAll(async () => {
  restorePath?.();
  await aws?.stop();
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

interface WatchEvent {
  type: string;
  object: { kind?: string; code?: number; reason?: string; metadata?: { name: string; resourceVersion: string } };
}

interface Watch {
  status: number;
  events: WatchEvent[];
  /** The first event (seen or to come) matching `pred`; rejects when the stream ends first or after a generous deadline. */
  until(pred: (e: WatchEvent) => boolean): Promise<WatchEvent>;
  close(): void;
}

/** A ConfigMap watch of NS from `resourceVersion`, as the admin, over the API server's TLS. */
function watchFrom(kube: Kube, resourceVersion: string): Promise<Watch> {
  const url = new URL(kube.server);
  return new Promise((resolve, reject) => {
    const req = https.get(
      {
        hostname: url.hostname,
        port: url.port,
        path: `/api/v1/namespaces/${NS}/configmaps?watch=1&resourceVersion=${resourceVersion}`,
        ca: fs.readFileSync(kube.caFile),
        cert: fs.readFileSync(path.join(kube.dir, 'pki/admin.crt')),
        key: fs.readFileSync(path.join(kube.dir, 'pki/admin.key')),
      },
      (res) => {
        const events: WatchEvent[] = [];
        const news = new EventEmitter();
        let ended = false;
        let text = '';
        res.on('data', (c: Buffer) => {
          text += c.toString('utf8');
          for (let nl = text.indexOf('\n'); nl >= 0; nl = text.indexOf('\n')) {
            const line = text.slice(0, nl).trim();
            text = text.slice(nl + 1);
            if (line) events.push(JSON.parse(line) as WatchEvent);
          }
          news.emit('event');
        });
        const end = () => {
          if (text.trim() && res.statusCode !== 200) events.push({ type: 'HTTP', object: JSON.parse(text) as WatchEvent['object'] });
          ended = true;
          news.emit('event');
        };
        res.on('end', end);
        res.on('error', end);
        resolve({
          status: res.statusCode ?? 0,
          events,
          until: (pred) =>
            new Promise((ok, fail) => {
              const deadline = setTimeout(() => done(new Error(`no matching watch event within 90 s; got ${JSON.stringify(events.map((e) => [e.type, e.object.metadata?.name ?? e.object.code]))}`)), 90_000);
              const check = () => {
                const hit = events.find(pred);
                if (hit) done(undefined, hit);
                else if (ended) done(new Error(`the watch ended without a matching event; got ${JSON.stringify(events.map((e) => [e.type, e.object.metadata?.name ?? e.object.code]))}`));
              };
              const done = (err?: Error, hit?: WatchEvent) => {
                clearTimeout(deadline);
                news.off('event', check);
                if (err) fail(err);
                else ok(hit!);
              };
              news.on('event', check);
              check();
            }),
          close: () => req.destroy(),
        });
      },
    );
    req.on('error', reject);
  });
}

/** etcd 3.6 at fixed URLs (the restored member takes the old one's place), the API server on it, a backup in S3. */
async function clusterOnEtcd36(): Promise<{ kube: Kube; etcd: () => EtcdMember; replaceEtcd(dataDir: string): Promise<void>; backup(): Promise<string>; restoreInto(bump: number | undefined): Promise<string> }> {
  const clientUrl = `https://127.0.0.1:${await freePort()}`;
  const peerUrl = `https://127.0.0.1:${await freePort()}`;
  let etcd = await startEtcd({ version: '3.6', dir: fs.mkdtempSync(path.join(dir, 'etcd-')), name: 'etcd00', tls: pki, clientUrl, peerUrl });
  cleanups.push(() => etcd.stop());
  const kube = await startKube({ etcd: { url: clientUrl, caFile: `${pki.caDir}/ca.crt`, certFile: `${pki.caDir}/apiserver-etcd-client.crt`, keyFile: `${pki.caDir}/apiserver-etcd-client.key` } });
  cleanups.push(() => kube.stop());
  await ensureNamespace(kube.admin, NS);

  const root = async (): Promise<TempRoot> => {
    const r = await makeTempRoot();
    cleanups.push(() => r.cleanup());
    writeFakePki(r.dir);
    installEtcdClientCert(r.dir, pki);
    return r;
  };
  const config = (etcdExtra: Record<string, unknown>): ConfigInput => ({
    cluster: { name: 'watch' },
    node: { role: 'controller', controllerIndex: '00' },
    etcd: { clientUrl, backup: { bucket: BUCKET }, ...etcdExtra },
    aws: awsConfig(aws.endpoint),
  });
  let key = '';
  return {
    kube,
    etcd: () => etcd,
    replaceEtcd: async (dataDir) => {
      etcd = await startEtcd({ version: '3.6', dir: dataDir, name: 'etcd00', tls: pki, clientUrl, peerUrl });
    },
    backup: async () => {
      const r = await root();
      key = (await takeBackup({ ctx: await contextFor(r.dir, config({})), instanceId: 'i-0watch', kind: 'emergency' })).key;
      return key;
    },
    restoreInto: async (bump) => {
      const r = await root();
      const ctx = await contextFor(r.dir, config(bump === undefined ? {} : { restoreRevisionBump: bump }));
      await restoreBackup({ ctx, from: key, dataDir: '/var/lib/etcd', memberName: 'etcd00', peerUrl });
      return r.at('/var/lib/etcd');
    },
  };
}

async function createConfigMap(kube: Kube, name: string): Promise<string> {
  const r = await kube.admin.call<{ metadata: { resourceVersion: string } }>('POST', `/api/v1/namespaces/${NS}/configmaps`, {
    body: { apiVersion: 'v1', kind: 'ConfigMap', metadata: { name }, data: { name } },
  });
  return r.body.metadata.resourceVersion;
}

/**
 * Up to the disaster: a watch from the first ConfigMap, a backup, AFTER_BACKUP more ConfigMaps
 * the watch sees; then the API server stops, etcd is restored from the backup (with `bump`,
 * or the default when undefined) and started in the old one's place, and the API server
 * starts on it. Returns the last resourceVersion the client saw.
 */
async function lose(c: Awaited<ReturnType<typeof clusterOnEtcd36>>, bump: number | undefined): Promise<string> {
  const rv0 = await createConfigMap(c.kube, 'before-backup');
  const watch = await watchFrom(c.kube, rv0);
  await c.backup();
  for (let i = 0; i < AFTER_BACKUP; i++) await createConfigMap(c.kube, `after-backup-${i}`);
  const last = await watch.until((e) => e.object.metadata?.name === `after-backup-${AFTER_BACKUP - 1}`);
  await c.kube.stopApiserver();
  watch.close();
  await c.etcd().stop();
  await c.replaceEtcd(await c.restoreInto(bump));
  await c.kube.startApiserver();
  return last.object.metadata!.resourceVersion;
}

async function configMapNames(kube: Kube): Promise<{ names: string[]; resourceVersion: string }> {
  const r = await kube.admin.call<{ metadata: { resourceVersion: string }; items: Array<{ metadata: { name: string } }> }>('GET', `/api/v1/namespaces/${NS}/configmaps`);
  return { names: r.body.items.map((i) => i.metadata.name).filter((n) => n !== 'kube-root-ca.crt'), resourceVersion: r.body.metadata.resourceVersion };
}

describe('a restore seen by a Kubernetes watcher (kube-apiserver on etcd 3.6)', () => {
  it('with the revision bump: the old resourceVersion is answered 410 Gone, and the relist shows the restored state', async () => {
    const c = await clusterOnEtcd36();
    const lastSeen = await lose(c, undefined);

    const again = await watchFrom(c.kube, lastSeen);
    const first = await again.until(() => true);
    again.close();
    // 410 as the HTTP status, or (from the watch cache) as the stream's first ERROR event.
    expect(again.status === 410 || (first.type === 'ERROR' && first.object.code === 410), JSON.stringify(first)).toBe(true);
    expect(first.object).toMatchObject({ code: 410, reason: 'Expired' });

    const now = await configMapNames(c.kube);
    expect(now.names).toEqual(['before-backup']);
    expect(Number(now.resourceVersion)).toBeGreaterThan(1_000_000_000);
  }, 300_000);

  it('without it: the old resourceVersion is accepted, and the client misses the writes made after the restore up to it and the deletion of what it saw after the backup', async () => {
    const c = await clusterOnEtcd36();
    const lastSeen = await lose(c, 0);

    // The cluster goes on from the backup's revision: writes after the restore reuse the
    // revisions the client has already seen, until they pass its last one.
    const written: Array<{ name: string; rv: number }> = [];
    for (let i = 0; written.length === 0 || written.at(-1)!.rv <= Number(lastSeen); i++) {
      if (i > 10 * AFTER_BACKUP) throw new Error('the revision did not pass the last seen one');
      written.push({ name: `after-restore-${i}`, rv: Number(await createConfigMap(c.kube, `after-restore-${i}`)) });
    }
    const hidden = written.filter((w) => w.rv <= Number(lastSeen)).map((w) => w.name);
    expect(hidden.length).toBeGreaterThan(0);

    const again = await watchFrom(c.kube, lastSeen);
    expect(again.status).toBe(200);
    await createConfigMap(c.kube, 'marker');
    await again.until((e) => e.object.metadata?.name === 'marker');
    again.close();
    const seen = again.events.map((e) => `${e.type} ${e.object.metadata?.name ?? e.object.code}`);
    expect(seen.some((s) => s.startsWith('ERROR'))).toBe(false);
    for (const name of hidden) expect(seen).not.toContain(`ADDED ${name}`);
    expect(seen.filter((s) => s.startsWith('DELETED'))).toEqual([]);

    // What the cluster really holds: the client believes in after-backup-* and knows nothing of the hidden ones.
    const now = await configMapNames(c.kube);
    expect(now.names).toEqual(expect.arrayContaining(['before-backup', ...hidden]));
    expect(now.names.filter((n) => n.startsWith('after-backup-'))).toEqual([]);
  }, 300_000);
});
