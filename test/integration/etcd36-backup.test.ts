import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { GetObjectCommand } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ConfigInput } from '../../agent/config/schema.js';
import { takeBackup } from '../../agent/etcd/backup.js';
import { EtcdGateway, localEtcdEndpoint } from '../../agent/etcd/gateway.js';
import { SNAPSHOT_NAME } from '../../agent/etcd/manifest.js';
import { restoreBackup } from '../../agent/etcd/restore.js';
import { chooseRestoreTool, onPath } from '../../agent/etcd/restore-tool.js';
import { readTar } from '../../agent/etcd/tar.js';
import { makeExec } from '../../agent/host/exec.js';
import { createLogger } from '../../agent/log/logger.js';
import { etcd36BinDir, etcdTool, makeKubeadmEtcdPki, startEtcd, type EtcdMember, type EtcdTls } from '../testbed/etcd.js';
import { freePort } from '../testbed/ports.js';
import { makeTempRoot, type TempRoot } from '../testbed/root.js';
import { installEtcdClientCert, useEtcd36Tools } from '../support/etcd36-env.js';
import { startMinioS3, type MinioS3 } from '../support/minio-env.js';
import { awsConfig, contextFor, writeFakePki } from '../support/terminate-env.js';

/**
 * The backup and restore paths against etcd 3.6.5, the release kubeadm 1.34 deploys (built
 * by test/testbed/etcd36/build.sh), over TLS with kubeadm's etcd certificates (client and
 * peer): the snapshot stream of 3.6 (its messages carry field 4, version), status and member
 * list through the gateway, and the restore with 3.6's etcdutl and the revision bump. The
 * agent finds etcdctl and etcdutl 3.6 first on PATH, as on a 1.34 controller. Debian's 3.4
 * keeps its own round trip in etcd-backup.test.ts.
 */

const BUCKET = 'zdt-backups-36';
const INSTANCE = 'i-0360000000000001';
const BUMP = 1_000_000_000;
const PATH_BEFORE = process.env.PATH ?? '';

/** S3 is MinIO (checks every part's SHA-256); the backup and restore use no other AWS service. */
let aws: MinioS3;
let restorePath: () => void;
let dir: string;
let pki: EtcdTls;
let etcd: EtcdMember;
const roots: TempRoot[] = [];

/** etcdctl 3.6 with the healthcheck-client certificate. */
function etcdctl(endpoint: string, ...args: string[]): string {
  const tls = [`--cacert=${pki.caDir}/ca.crt`, `--cert=${pki.caDir}/healthcheck-client.crt`, `--key=${pki.caDir}/healthcheck-client.key`];
  return execFileSync(etcdTool('3.6', 'etcdctl'), [`--endpoints=${endpoint}`, ...tls, ...args], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

/** A node root with kubeadm's etcd client certificate where the agent reads it. */
async function controllerRoot(): Promise<TempRoot> {
  const root = await makeTempRoot();
  roots.push(root);
  writeFakePki(root.dir);
  installEtcdClientCert(root.dir, pki);
  return root;
}

function config(clientUrl: string): ConfigInput {
  return { cluster: { name: 'v36' }, node: { role: 'controller', controllerIndex: '00' }, etcd: { clientUrl, backup: { bucket: BUCKET } }, aws: awsConfig(aws.endpoint) };
}

/** The header revision etcd answers with. */
const revisionOf = (endpoint: string) => Number((JSON.parse(etcdctl(endpoint, 'get', 'nothing', '-w', 'json')) as { header: { revision: number } }).header.revision);

beforeAll(async () => {
  restorePath = useEtcd36Tools();
  aws = await startMinioS3([BUCKET]);
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'zdt-etcd36-'));
  pki = await makeKubeadmEtcdPki(path.join(dir, 'pki'));
  etcd = await startEtcd({ version: '3.6', dir: path.join(dir, 'data'), name: 'etcd00', tls: pki });
  for (let i = 0; i < 20; i++) etcdctl(etcd.clientUrl, 'put', `/registry/configmaps/default/cm-${i}`, `value-${i}`);
  etcdctl(etcd.clientUrl, 'put', '/registry/marker', 'before-backup');
});

afterAll(async () => {
  restorePath?.();
  await etcd?.stop();
  await aws?.stop();
  for (const r of roots) await r.cleanup();
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

describe('the restore tool is chosen by the version it reports', () => {
  const exec = makeExec(createLogger({ console: null, level: 'warn' }));

  it('etcdutl 3.6 when it is on PATH (with the revision bump); etcdctl 3.4 without it (no bump); etcdctl 3.6 alone is refused', async () => {
    const only36ctl = fs.mkdtempSync(path.join(os.tmpdir(), 'zdt-etcdctl36-'));
    fs.symlinkSync(etcdTool('3.6', 'etcdctl'), path.join(only36ctl, 'etcdctl'));
    try {
      expect(onPath('etcdutl')).toBe(true);
      expect(await chooseRestoreTool(exec)).toEqual({ file: 'etcdutl', version: '3.6.5', bumpsRevision: true });

      process.env.PATH = PATH_BEFORE; // Debian's etcdctl 3.4 only
      expect(onPath('etcdutl')).toBe(false);
      expect(await chooseRestoreTool(exec)).toEqual({ file: 'etcdctl', version: expect.stringMatching(/^3\.4\./), bumpsRevision: false });

      process.env.PATH = `${only36ctl}${path.delimiter}${PATH_BEFORE}`;
      await expect(chooseRestoreTool(exec)).rejects.toMatchObject({ code: 'EtcdRestoreToolMissing', message: expect.stringContaining('etcdctl 3.6.5') });
    } finally {
      process.env.PATH = `${etcd36BinDir()}${path.delimiter}${PATH_BEFORE}`;
      fs.rmSync(only36ctl, { recursive: true, force: true });
    }
  });
});

describe('backup and restore with etcd 3.6 over TLS', () => {
  let key: string;
  let backupRevision: number;

  it('status and member list through the gateway answer as from 3.4', async () => {
    const root = await controllerRoot();
    const gw = new EtcdGateway(localEtcdEndpoint(await contextFor(root.dir, config(etcd.clientUrl))));
    try {
      const [status, members] = await Promise.all([gw.status(), gw.members()]);
      expect(status).toMatchObject({ version: '3.6.5', memberId: expect.stringMatching(/^\d+$/), revision: String(revisionOf(etcd.clientUrl)) });
      expect(status.leaderId).toBe(status.memberId);
      expect(members).toEqual([{ id: status.memberId, name: 'etcd00', peerUrls: [etcd.peerUrl], clientUrls: [etcd.clientUrl], isLearner: false }]);
    } finally {
      gw.close();
    }
  });

  // Not byte for byte, as with 3.4: etcd 3.5 and later commit the backend before every
  // snapshot (the consistent-index hook), so two snapshots differ in bbolt's meta pages (the
  // transaction id). etcdutl's status compares the contents: its hash covers every bucket.
  it('backs up: the snapshot in the object holds the database etcdctl 3.6 saves (same size, etcdutl hash, revision, keys), and the manifest names 3.6.5', async () => {
    const root = await controllerRoot();
    const ctx = await contextFor(root.dir, config(etcd.clientUrl));
    const r = await takeBackup({ ctx, instanceId: INSTANCE, kind: 'emergency' });
    key = r.key;
    backupRevision = Number(r.manifest.etcd.revision);
    expect(r.manifest.etcd).toMatchObject({ version: '3.6.5', memberName: 'etcd00', peerUrls: [etcd.peerUrl] });

    const fresh = path.join(root.dir, 'fresh.db');
    etcdctl(etcd.clientUrl, 'snapshot', 'save', fresh);
    const got = await aws.s3.send(new GetObjectCommand({ Bucket: BUCKET, Key: key }));
    const bytes = Buffer.from(await got.Body!.transformToByteArray());
    let snapshot: Buffer | undefined;
    for await (const e of readTar((async function* () {
      yield bytes;
    })())) {
      const chunks: Buffer[] = [];
      for await (const c of e.body) chunks.push(c);
      if (e.name === SNAPSHOT_NAME) snapshot = Buffer.concat(chunks);
    }
    const ours = path.join(root.dir, 'backup.db');
    fs.writeFileSync(ours, snapshot!);
    expect(snapshot!.length).toBe(fs.statSync(fresh).size);
    const status = (file: string) => JSON.parse(execFileSync(etcdTool('3.6', 'etcdutl'), ['snapshot', 'status', file, '-w', 'json'], { encoding: 'utf8' })) as Record<string, unknown>;
    expect(status(ours)).toEqual(status(fresh));
    expect(status(ours)).toMatchObject({ revision: backupRevision, totalKey: 21 });
  });

  it('restores with etcdutl 3.6 and the default bump: the restored member serves the data, its revision 1,000,000,000 up, the old ones compacted', async () => {
    const target = await controllerRoot();
    fs.rmSync(target.at('/etc/kubernetes/pki/ca.key'));
    const ctx = await contextFor(target.dir, config(etcd.clientUrl));
    const peerUrl = `https://127.0.0.1:${await freePort()}`;
    const r = await restoreBackup({ ctx, from: 'latest', dataDir: '/var/lib/etcd', memberName: 'etcd00', peerUrl });
    expect(r.key).toBe(key);
    expect(r.tool).toEqual({ file: 'etcdutl', version: '3.6.5', bumpsRevision: true });
    expect(r.revisionBump).toBe(BUMP);
    expect(fs.existsSync(target.at('/etc/kubernetes/pki/ca.key'))).toBe(true);

    const restored = await startEtcd({ version: '3.6', dir: target.at('/var/lib/etcd'), name: 'etcd00', peerUrl, tls: pki });
    try {
      expect(etcdctl(restored.clientUrl, 'get', '/registry/marker', '--print-value-only').trim()).toBe('before-backup');
      expect(etcdctl(restored.clientUrl, 'get', '/registry/configmaps/', '--prefix', '--keys-only').trim().split(/\n+/)).toHaveLength(20);
      expect(revisionOf(restored.clientUrl)).toBeGreaterThanOrEqual(backupRevision + BUMP);
      // Every revision before the bump reads as compacted: a client holding one must start over.
      expect(() => etcdctl(restored.clientUrl, 'get', '/registry/marker', `--rev=${backupRevision}`)).toThrow(/required revision has been compacted/);
      expect(etcdctl(restored.clientUrl, 'member', 'list')).toContain(peerUrl);
    } finally {
      await restored.stop();
    }
  });

  it('etcd.restoreRevisionBump 0 restores without a bump: the revision is the backup\'s', async () => {
    const target = await controllerRoot();
    const ctx = await contextFor(target.dir, { ...config(etcd.clientUrl), etcd: { clientUrl: etcd.clientUrl, restoreRevisionBump: 0, backup: { bucket: BUCKET } } });
    const peerUrl = `https://127.0.0.1:${await freePort()}`;
    const r = await restoreBackup({ ctx, from: key, dataDir: '/var/lib/etcd', memberName: 'etcd00', peerUrl });
    expect(r.revisionBump).toBe(0);
    const restored = await startEtcd({ version: '3.6', dir: target.at('/var/lib/etcd'), name: 'etcd00', peerUrl, tls: pki });
    try {
      expect(revisionOf(restored.clientUrl)).toBeLessThan(BUMP);
      expect(revisionOf(restored.clientUrl)).toBeGreaterThanOrEqual(backupRevision);
    } finally {
      await restored.stop();
    }
  });
});
