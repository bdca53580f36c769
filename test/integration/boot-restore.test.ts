import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { readVolumeIdentity } from '../../agent/boot/etcd-volume.js';
import { runBoot } from '../../agent/boot/run.js';
import type { ConfigInput } from '../../agent/config/schema.js';
import { takeBackup } from '../../agent/etcd/backup.js';
import { etcdTool, startEtcd, type EtcdMember } from '../testbed/etcd.js';
import { startImds } from '../testbed/imds.js';
import { kubeApiserverAvailable, startKube, type Kube } from '../testbed/kube.js';
import { createLoopDevice } from '../testbed/loop.js';
import { freePort } from '../testbed/ports.js';
import { startServer } from '../testbed/process.js';
import { makeTempRoot, type TempRoot } from '../testbed/root.js';
import { readRecords, standinPath } from '../testbed/standins.js';
import { useEtcd36Tools } from '../support/etcd36-env.js';
import { startMinioS3, type MinioS3 } from '../support/minio-env.js';
import { contextFor, writeFakePki } from '../support/terminate-env.js';
import { AZ, REGION, awsSection, bootDepsFor, createEtcdVolume, launchInstance, startAwsWorld, type AwsWorld } from '../support/boot-env.js';

/**
 * Disaster recovery at boot: the cluster's etcd (a real etcd 3.6, as kubeadm 1.34 runs it,
 * with etcdctl and etcdutl 3.6 on PATH) was backed up to S3 (MinIO, which checks every
 * part's SHA-256; EC2 is moto's) by the terminate side (takeBackup); a new controller 00 with a blank etcd volume (a real
 * loop device) restores it before kubeadm runs, and etcd started from the restored data
 * reads back every key written before. kubeadm is the recording stand-in; the admin.conf it
 * leaves names a real kube-apiserver, where controller 00 applies the node self-delete grant.
 */

const BUCKET = 'zdt-dr-backups';
const CLUSTER = 'drtest';
const records = `/tmp/zdt-restore-records-${process.pid}.jsonl`;

let w: AwsWorld;
let minio: MinioS3;
let kube: Kube;
let etcd: EtcdMember;
let etcdDir: string;
const cleanups: Array<() => Promise<void>> = [];

const etcdctl = (endpoint: string, ...args: string[]) =>
  execFileSync('etcdctl', [`--endpoints=${endpoint}`, ...args], { env: { ...process.env, ETCDCTL_API: '3' }, encoding: 'utf8' });

beforeAll(async () => {
  if (!(await kubeApiserverAvailable())) throw new Error('kube-apiserver is missing: run test/testbed/k8s/build.sh');
  w = await startAwsWorld();
  kube = await startKube();
  // After startAwsWorld: its root credentials replace the test credentials, which moto accepts too.
  minio = await startMinioS3([BUCKET]);
  useEtcd36Tools();
  process.env.PATH = `${standinPath()}:${process.env.PATH}`;
  process.env.ZDT_STANDIN_KUBEADM_ADMIN_CONF = kube.adminKubeconfig;
  process.env.ZDT_RECORD_FILE = records;
  process.env.ZDT_APK_VERSIONS = '1.34.1-r0';
}, 120_000);

afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
  fs.rmSync(records, { force: true });
});

afterAll(async () => {
  await etcd?.stop();
  if (etcdDir) fs.rmSync(etcdDir, { recursive: true, force: true });
  await kube?.stop();
  await minio?.stop();
  await w?.stop();
});

async function newController(cluster: string, backup: Record<string, unknown>) {
  const root = await makeTempRoot();
  cleanups.push(() => root.cleanup());
  // etcd preallocates 64 MB for its WAL.
  const loop = await createLoopDevice(256);
  cleanups.push(() => loop.detach());
  const inst = await launchInstance(w);
  const volumeId = await createEtcdVolume(w, { cluster });
  await root.linkVolume(volumeId, loop.device);
  const imds = await startImds({ instanceId: inst.instanceId, region: REGION, availabilityZone: AZ, instanceType: 'm5.large', privateIp: inst.privateIp });
  cleanups.push(() => imds.stop());
  const config: ConfigInput = {
    cluster: { name: cluster, kubernetesVersion: '1.34.1' },
    node: { role: 'controller', controllerIndex: '00' },
    etcd: { volume: { attachTimeout: 20, deviceTimeout: 5 }, backup: { bucket: BUCKET, ...backup } },
    aws: { ...awsSection(w.proxy.endpoint), endpoints: { s3: minio.endpoint }, imdsEndpoint: imds.endpoint },
  };
  return { root, loop, inst, config };
}

describe('boot restores etcd from S3 onto a blank volume', () => {
  it('a new controller 00 restores the newest backup as its member, then kubeadm runs on the restored data; etcd reads back every key', async () => {
    // The cluster that was lost: its etcd, its PKI, one backup.
    etcdDir = fs.mkdtempSync(path.join(os.tmpdir(), 'zdt-dr-etcd-'));
    etcd = await startEtcd({ version: '3.6', dir: path.join(etcdDir, 'data'), name: 'etcd00' });
    for (let i = 0; i < 50; i++) etcdctl(etcd.clientUrl, 'put', `/registry/configmaps/default/cm-${i}`, `value-${i}`);
    const old: TempRoot = await makeTempRoot();
    cleanups.push(() => old.cleanup());
    const pki = writeFakePki(old.dir);
    const oldCtx = await contextFor(old.dir, {
      cluster: { name: CLUSTER },
      node: { role: 'controller', controllerIndex: '00' },
      etcd: { clientUrl: etcd.clientUrl, backup: { bucket: BUCKET } },
      aws: { ...awsSection(w.proxy.endpoint), endpoints: { s3: minio.endpoint } },
    });
    const backup = await takeBackup({ ctx: oldCtx, instanceId: 'i-0lost', kind: 'emergency' });
    await etcd.stop();

    const n = await newController(CLUSTER, {});
    const result = await runBoot(await bootDepsFor(n.root.dir, n.config));
    expect(result.error?.oneLine()).toBeUndefined();
    expect(result.phases['etcd-volume']!.detail).toContain('formatted ext4');
    expect(result.phases['etcd-restore']).toMatchObject({ result: 'ok', detail: expect.stringContaining(`restored ${backup.key}`) });
    expect(result.phases['etcd-restore']!.detail).toContain('etcdutl 3.6.5, revision bumped by 1000000000 and marked compacted');
    expect(result.phases['control-plane']!.detail).toMatch(/^restore: /);
    expect(result.state.facts.restoredFrom).toBe(backup.key);
    expect(result.state.facts.nodeSelfDeleteRbac).toBe(true);
    // The cluster PKI came back with the data; kubeadm init ran on both.
    for (const f of ['ca.key', 'etcd/ca.key', 'sa.key']) expect(fs.readFileSync(n.root.at(`/etc/kubernetes/pki/${f}`)).equals(pki[f]!), f).toBe(true);
    const kubeadm = (await readRecords(records)).filter((r) => r.tool === 'kubeadm').map((r) => r.argv.join(' '));
    expect(kubeadm).toEqual([`init --config ${n.root.at('/etc/kubernetes/zdt-agent/init.yaml')} --skip-token-print`]);
    expect(readVolumeIdentity(n.root.at('/var/lib/etcd'))).toMatchObject({ cluster: CLUSTER, kubernetesVersion: '1.34.1' });

    // etcd started on the restored data dir reads back what was written before.
    const dataDir = n.root.at('/var/lib/etcd/data');
    expect(fs.readdirSync(dataDir)).toEqual(['member']);
    const clientUrl = `http://127.0.0.1:${await freePort()}`;
    const peerUrl = `http://127.0.0.1:${await freePort()}`;
    const restored = await startServer({
      what: 'etcd on the restored data',
      file: etcdTool('3.6', 'etcd'),
      args: ['--name', `ip-${n.inst.privateIp.replaceAll('.', '-')}.${REGION}.compute.internal`, '--data-dir', dataDir, '--listen-client-urls', clientUrl, '--advertise-client-urls', clientUrl, '--listen-peer-urls', peerUrl],
      ready: async () => ((await (await fetch(`${clientUrl}/health`, { signal: AbortSignal.timeout(1000) })).json()) as { health?: string }).health === 'true',
    });
    try {
      expect(etcdctl(clientUrl, 'get', '/registry/configmaps/default/cm-42', '--print-value-only').trim()).toBe('value-42');
      expect(etcdctl(clientUrl, 'get', '/registry/configmaps/', '--prefix', '--keys-only').trim().split(/\n+/)).toHaveLength(50);
      // As this slot's member, in a cluster of one.
      expect(etcdctl(clientUrl, 'member', 'list')).toContain(`https://${n.inst.privateIp}:2380`);
      // Moved up by the default bump, past every revision a watcher of the lost cluster held.
      expect((JSON.parse(etcdctl(clientUrl, 'get', 'x', '-w', 'json')) as { header: { revision: number } }).header.revision).toBeGreaterThan(1_000_000_000);
    } finally {
      await restored.stop();
    }
  });

  it('without a backup of the cluster, the blank volume bootstraps a new cluster', async () => {
    const n = await newController('nobackup', {});
    const result = await runBoot(await bootDepsFor(n.root.dir, n.config));
    expect(result.error?.oneLine()).toBeUndefined();
    expect(result.phases['etcd-restore']).toMatchObject({ result: 'skipped', detail: 'no backup of this cluster: a new cluster will be bootstrapped' });
    expect(result.phases['control-plane']!.detail).toMatch(/^bootstrap: /);
  });

  it('a volume that holds etcd data is never restored over', async () => {
    const n = await newController('dataonvolume', {});
    execFileSync('mkfs.ext4', ['-q', n.loop.device]);
    const mnt = n.root.at('/mnt/prep');
    fs.mkdirSync(mnt, { recursive: true });
    execFileSync('mount', [n.loop.device, mnt]);
    fs.mkdirSync(path.join(mnt, 'data/member/snap'), { recursive: true, mode: 0o700 });
    fs.writeFileSync(path.join(mnt, 'data/member/snap/db'), 'newer data than any backup');
    execFileSync('umount', [mnt]);
    // The cluster's PKI (no bootstrap location is configured here): as an earlier boot left it.
    writeFakePki(n.root.dir);
    const result = await runBoot(await bootDepsFor(n.root.dir, n.config));
    expect(result.error?.oneLine()).toBeUndefined();
    expect(result.phases['etcd-restore']).toMatchObject({ result: 'skipped', detail: 'the volume holds etcd data; nothing to restore' });
    expect(fs.readFileSync(n.root.at('/var/lib/etcd/data/member/snap/db'), 'utf8')).toBe('newer data than any backup');
  });
});
