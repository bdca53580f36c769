import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import type http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { CreateMultipartUploadCommand, GetObjectCommand, HeadObjectCommand, ListMultipartUploadsCommand, ListObjectsV2Command, PutObjectCommand, UploadPartCommand, type S3Client } from '@aws-sdk/client-s3';
import type { KMSClient } from '@aws-sdk/client-kms';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { takeBackup } from '../../agent/etcd/backup.js';
import { metricsFile, readSamples } from '../../agent/log/metrics.js';
import { leaveEtcd } from '../../agent/etcd/leave.js';
import { MANIFEST_NAME, SNAPSHOT_NAME, type Manifest } from '../../agent/etcd/manifest.js';
import { findBackups, restoreBackup } from '../../agent/etcd/restore.js';
import { scheduledBackup } from '../../agent/etcd/scheduled.js';
import { readTar } from '../../agent/etcd/tar.js';
import { abortStaleUploads, uploadStream, writeAndWait } from '../../agent/etcd/upload.js';
import { createLogger } from '../../agent/log/logger.js';
import type { ConfigInput } from '../../agent/config/schema.js';
import { AgentError, asAgentError } from '../../agent/errors.js';
import { startEtcd, startEtcdCluster, type EtcdCluster, type EtcdMember } from '../testbed/etcd.js';
import { startFidelityProxy, type FidelityProxy } from '../testbed/fidelity-proxy.js';
import { damageOnce, startHttpTap } from '../testbed/http-tap.js';
import { makeTestCa, type TestCa } from '../testbed/pki.js';
import { startMoto, type Moto } from '../testbed/moto.js';
import { makeTempRoot, type TempRoot } from '../testbed/root.js';
import { startServer } from '../testbed/process.js';
import { freePort } from '../testbed/ports.js';
import { startMinioS3, type MinioS3 } from '../support/minio-env.js';
import { awsConfig, contextFor, makeBucket, makeKmsKey, testClients, useTestCredentials, writeFakePki } from '../support/terminate-env.js';

const BUCKET = 'zdt-backups';
const INSTANCE = 'i-0123456789abcdef0';

/**
 * S3 is MinIO, which checks every part's SHA-256 as S3 does, for every test here but the
 * unfinished uploads' (on moto, see there); KMS, for the envelope encryption, is moto's.
 */
let minio: MinioS3;
let s3: S3Client;
let moto: Moto;
let proxy: FidelityProxy;
/** moto's S3, behind the fidelity proxy. */
let motoS3: S3Client;
let kms: KMSClient;
let kmsKeyId: string;
let etcd: EtcdMember;
let etcdDir: string;
const roots: TempRoot[] = [];

const etcdctl = (endpoints: string, ...args: string[]) =>
  execFileSync('etcdctl', [`--endpoints=${endpoints}`, ...args], { env: { ...process.env, ETCDCTL_API: '3' }, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });

const TEXTFILE_DIR = '/var/lib/prometheus/node-exporter';

async function newRoot(): Promise<TempRoot> {
  const r = await makeTempRoot();
  roots.push(r);
  return r;
}

/** S3 at MinIO unless `s3At` names moto or another endpoint (a tap in front of MinIO); the rest at moto. */
function controllerConfig(clientUrl: string, backup: Record<string, unknown> = {}, cluster = 'test', s3At: 'moto' | string = minio.endpoint): ConfigInput {
  return {
    cluster: { name: cluster },
    node: { role: 'controller', controllerIndex: '00' },
    etcd: { clientUrl, backup: { bucket: BUCKET, kmsKeyId, partSizeMiB: 5, ...backup } },
    aws: s3At === 'moto' ? awsConfig(proxy.endpoint) : awsConfig(proxy.endpoint, s3At),
  };
}

async function objectBytes(key: string): Promise<Buffer> {
  const out = await s3.send(new GetObjectCommand({ Bucket: BUCKET, Key: key }));
  return Buffer.from(await out.Body!.transformToByteArray());
}

async function untar(bytes: Buffer): Promise<Map<string, { data: Buffer; mode: number }>> {
  const files = new Map<string, { data: Buffer; mode: number }>();
  for await (const e of readTar((async function* () {
    yield bytes;
  })())) {
    const chunks: Buffer[] = [];
    for await (const c of e.body) chunks.push(c);
    files.set(e.name, { data: Buffer.concat(chunks), mode: e.mode });
  }
  return files;
}

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

/** Index of the member that leads, from etcdctl endpoint status (ids quoted before parsing). */
function leaderIndex(cluster: EtcdCluster): number {
  const status = JSON.parse(etcdctl(cluster.clientUrls.join(','), 'endpoint', 'status', '-w', 'json').replace(/"(member_id|leader)":(\d+)/g, '"$1":"$2"')) as Array<{
    Endpoint: string;
    Status: { header: { member_id: string }; leader: string };
  }>;
  const leader = status.find((s) => s.Status.header.member_id === s.Status.leader)!;
  return cluster.clientUrls.indexOf(leader.Endpoint);
}

beforeAll(async () => {
  useTestCredentials();
  moto = await startMoto();
  proxy = await startFidelityProxy({ target: moto.endpoint });
  ({ s3: motoS3, kms } = testClients(proxy.endpoint));
  await makeBucket(motoS3, BUCKET);
  kmsKeyId = await makeKmsKey(kms);
  // MinIO's SSE-KMS key takes the moto key's id: etcd.backup.kmsKeyId names both.
  minio = await startMinioS3([BUCKET], { kmsKeyId });
  s3 = minio.s3;
  etcdDir = fs.mkdtempSync(path.join(os.tmpdir(), 'zdt-etcd-single-'));
  etcd = await startEtcd({ dir: path.join(etcdDir, 'data'), name: 'etcd00' });
  // ~12 MiB of data, so the archive goes up in several 5 MiB parts.
  for (let i = 0; i < 12; i++) {
    execFileSync('etcdctl', [`--endpoints=${etcd.clientUrl}`, 'put', `/registry/blob/${i}`], { env: { ...process.env, ETCDCTL_API: '3' }, input: randomBytes(700 * 1024).toString('base64') });
  }
  etcdctl(etcd.clientUrl, 'put', '/registry/marker', 'before-backup');
});

afterAll(async () => {
  await etcd?.stop();
  await minio?.stop();
  await proxy?.stop();
  await moto?.stop();
  for (const r of roots) await r.cleanup();
  if (etcdDir) fs.rmSync(etcdDir, { recursive: true, force: true });
});

describe('emergency backup of a single-member etcd', () => {
  let key: string;
  let root: TempRoot;
  let pki: Record<string, Buffer>;

  it('streams the snapshot, PKI and kubeadm config into one verified, SSE-KMS encrypted object', async () => {
    root = await newRoot();
    pki = writeFakePki(root.dir);
    const ctx = await contextFor(root.dir, { ...controllerConfig(etcd.clientUrl), metrics: { textfileDir: TEXTFILE_DIR } });
    const r = await takeBackup({ ctx, instanceId: INSTANCE, kind: 'emergency', now: new Date('2026-03-01T12:00:00Z') });
    key = r.key;
    // The metrics of the backup, under the root like every configured path (docs/metrics.md).
    const metrics = readSamples(metricsFile(root.at(TEXTFILE_DIR), 'etcd-backup'));
    expect(metrics.get('zdt_agent_etcd_backup_last_success_size_bytes')).toEqual([{ labels: { kind: 'emergency' }, value: r.sizeBytes }]);
    expect(metrics.get('zdt_agent_etcd_backup_runs_total')).toEqual([{ labels: { kind: 'emergency', result: 'ok' }, value: 1 }]);
    expect(key).toBe(`etcd-backups/test/emergency/20260301T120000Z-${INSTANCE}.tar`);
    expect(r.parts).toBeGreaterThan(1);

    const head = await s3.send(new HeadObjectCommand({ Bucket: BUCKET, Key: key, ChecksumMode: 'ENABLED' }));
    expect(head.ServerSideEncryption).toBe('aws:kms');
    expect(head.SSEKMSKeyId).toContain(kmsKeyId);
    expect(head.ChecksumSHA256).toBeTruthy();
    expect(head.ContentLength).toBe(r.sizeBytes);
    expect(head.Metadata?.['zdt-cluster']).toBe('test');

    // A fresh snapshot taken with etcdctl now is the same database, byte for byte.
    const fresh = path.join(root.dir, 'fresh.db');
    etcdctl(etcd.clientUrl, 'snapshot', 'save', fresh);
    const files = await untar(await objectBytes(key));
    expect(files.get(SNAPSHOT_NAME)!.data.equals(fs.readFileSync(fresh))).toBe(true);

    const manifest = JSON.parse(files.get(MANIFEST_NAME)!.data.toString('utf8')) as Manifest;
    expect(manifest).toMatchObject({ cluster: 'test', kind: 'emergency', instanceId: INSTANCE, kubernetesVersion: 'v1.34.1' });
    expect(manifest.etcd.version).toMatch(/^3\.\d+\.\d+$/);
    expect(manifest.etcd.memberName).toBe('etcd00');
    for (const part of manifest.parts) {
      const data = files.get(part.path)!.data;
      if (part.path !== SNAPSHOT_NAME) expect(sha(data), part.path).toBe(part.sha256);
      else {
        // etcd's own digest of the database, which also ends the snapshot.
        expect(part.digestOf).toBe('etcd-database');
        expect(sha(data.subarray(0, -32))).toBe(part.sha256);
        expect(data.subarray(-32).toString('hex')).toBe(part.sha256);
      }
    }
    expect(files.get('pki/ca.key')!.data.equals(pki['ca.key']!)).toBe(true);
    expect(files.get('pki/ca.key')!.mode).toBe(0o600);
    expect(files.get('pki/etcd/ca.crt')!.data.equals(pki['etcd/ca.crt']!)).toBe(true);
    expect(files.has('kubeadm/init.yaml')).toBe(true);
  });

  it('restores onto a blank data dir: PKI in place, and etcd started from it reads back the data', async () => {
    const target = await newRoot();
    const ctx = await contextFor(target.dir, controllerConfig(etcd.clientUrl));
    const peerPort = await freePort();
    const r = await restoreBackup({ ctx, from: 'latest', dataDir: '/var/lib/etcd', memberName: 'etcd00', peerUrl: `http://127.0.0.1:${peerPort}` });
    expect(r.key).toBe(key);
    expect(fs.readFileSync(target.at('/etc/kubernetes/pki/ca.key')).equals(pki['ca.key']!)).toBe(true);
    expect(fs.statSync(target.at('/etc/kubernetes/pki/ca.key')).mode & 0o777).toBe(0o600);
    expect(fs.existsSync(target.at('/etc/kubernetes/zdt-agent/init.yaml'))).toBe(true);
    expect(fs.readdirSync(target.at('/var/lib/etcd'))).toEqual(['member']);

    const clientUrl = `http://127.0.0.1:${await freePort()}`;
    const restored = await startServer({
      what: 'restored etcd',
      file: '/usr/bin/etcd',
      args: ['--name', 'etcd00', '--data-dir', target.at('/var/lib/etcd'), '--listen-client-urls', clientUrl, '--advertise-client-urls', clientUrl, '--listen-peer-urls', `http://127.0.0.1:${peerPort}`, '--initial-advertise-peer-urls', `http://127.0.0.1:${peerPort}`],
      ready: async () => ((await (await fetch(`${clientUrl}/health`, { signal: AbortSignal.timeout(1000) })).json()) as { health?: string }).health === 'true',
    });
    try {
      expect(etcdctl(clientUrl, 'get', '/registry/marker', '--print-value-only').trim()).toBe('before-backup');
      expect(etcdctl(clientUrl, 'get', '/registry/blob/', '--prefix', '--keys-only').trim().split(/\n+/)).toHaveLength(12);
    } finally {
      await restored.stop();
    }
  });

  it('a restore onto a disk too small names the file it could not write', async () => {
    const target = await newRoot();
    const dataDir = target.at('/var/lib/etcd');
    fs.mkdirSync(dataDir, { recursive: true });
    // 1 MiB: the 8 MiB snapshot does not fit. Unmounted by its mount point below.
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'zdt-test-full', dataDir]);
    try {
      const ctx = await contextFor(target.dir, controllerConfig(etcd.clientUrl));
      const err = (await restoreBackup({ ctx, from: key, dataDir: '/var/lib/etcd' }).catch((e: unknown) => e)) as AgentError;
      expect(err).toBeInstanceOf(AgentError);
      expect(err.oneLine()).toMatch(new RegExp(`^FileWriteFailed: cannot write ${dataDir}/\\.zdt-restore-\\d+/files/\\S+: ENOSPC: .*; the filesystem holding ${dataDir}/\\.zdt-restore-\\d+/files\\S* is full`));
    } finally {
      execFileSync('umount', [dataDir]);
    }
  });

  it('refuses to restore over existing etcd data', async () => {
    const target = await newRoot();
    fs.mkdirSync(target.at('/var/lib/etcd/member'), { recursive: true });
    const ctx = await contextFor(target.dir, controllerConfig(etcd.clientUrl));
    await expect(restoreBackup({ ctx, from: key, dataDir: '/var/lib/etcd' })).rejects.toMatchObject({ code: 'DataDirNotEmpty' });
  });

  it("refuses a backup of another cluster and changes nothing", async () => {
    const target = await newRoot();
    const ctx = await contextFor(target.dir, controllerConfig(etcd.clientUrl, {}, 'other'));
    await expect(restoreBackup({ ctx, from: key, dataDir: '/var/lib/etcd', memberName: 'x', peerUrl: 'http://127.0.0.1:1' })).rejects.toMatchObject({
      code: 'BackupOfAnotherCluster',
    });
    expect(fs.existsSync(target.at('/etc/kubernetes/pki'))).toBe(false);
    expect(fs.existsSync(target.at('/var/lib/etcd/member'))).toBe(false);
    // Also when the object's metadata is missing (copied by hand): the manifest decides.
    const copy = 'etcd-backups/other/hourly/20260301T130000Z-i-copy.tar';
    await s3.send(new PutObjectCommand({ Bucket: BUCKET, Key: copy, Body: await objectBytes(key) }));
    await expect(restoreBackup({ ctx, from: copy, dataDir: '/var/lib/etcd', memberName: 'x', peerUrl: 'http://127.0.0.1:1' })).rejects.toMatchObject({
      code: 'BackupOfAnotherCluster',
    });
    expect(fs.existsSync(target.at('/etc/kubernetes/pki'))).toBe(false);
  });

  it("refuses a snapshot whose database or etcd's digest at its end was changed", async () => {
    const original = await objectBytes(key);
    const size = (await untar(original)).get(SNAPSHOT_NAME)!.data.length;
    const data = original.indexOf(Buffer.from(`${SNAPSHOT_NAME}\0`)) + 512; // the tar header's name field starts it
    const target = await newRoot();
    const ctx = await contextFor(target.dir, controllerConfig(etcd.clientUrl));
    for (const [i, at] of [data + Math.floor(size / 2), data + size - 5].entries()) {
      const bytes = Buffer.from(original);
      bytes.writeUInt8(bytes.readUInt8(at) ^ 0xff, at);
      const damaged = `etcd-backups/test/emergency/2020010${i}T000000Z-${INSTANCE}.tar`; // older than every real one
      await s3.send(new PutObjectCommand({ Bucket: BUCKET, Key: damaged, Body: bytes, Metadata: { 'zdt-cluster': 'test' } }));
      await expect(restoreBackup({ ctx, from: damaged, dataDir: '/var/lib/etcd', pkiOnly: true })).rejects.toMatchObject({
        code: 'BackupCorrupt',
        message: expect.stringContaining(`${SNAPSHOT_NAME} does not match its SHA-256`),
      });
      await s3.send(new PutObjectCommand({ Bucket: BUCKET, Key: damaged, Body: Buffer.alloc(0) }));
    }
    expect(fs.existsSync(target.at('/etc/kubernetes/pki'))).toBe(false);
  });

  it("'latest' skips a damaged newest backup and restores the newest valid one", async () => {
    const bytes = await objectBytes(key);
    const at = bytes.length - 3000; // inside the manifest or the snapshot's tail
    bytes.writeUInt8(bytes.readUInt8(at) ^ 0xff, at);
    const damaged = `etcd-backups/test/emergency/20260301T150000Z-${INSTANCE}.tar`;
    await s3.send(new PutObjectCommand({ Bucket: BUCKET, Key: damaged, Body: bytes, Metadata: { 'zdt-cluster': 'test' } }));
    const target = await newRoot();
    const ctx = await contextFor(target.dir, controllerConfig(etcd.clientUrl));
    expect((await findBackups(ctx))[0]!.key).toBe(damaged);
    await expect(restoreBackup({ ctx, from: damaged, dataDir: '/var/lib/etcd', pkiOnly: true })).rejects.toMatchObject({ code: 'BackupCorrupt' });
    expect(fs.existsSync(target.at('/etc/kubernetes/pki'))).toBe(false);
    const r = await restoreBackup({ ctx, from: 'latest', dataDir: '/var/lib/etcd', memberName: 'etcd00', peerUrl: 'http://127.0.0.1:2380' });
    expect(r.key).toBe(key);
    await s3.send(new PutObjectCommand({ Bucket: BUCKET, Key: damaged, Body: Buffer.alloc(0) })); // listed no more (empty)
  });
});

describe('client-side envelope encryption', () => {
  it('uploads ciphertext under a KMS data key, and restore decrypts and verifies it', async () => {
    const root = await newRoot();
    const pki = writeFakePki(root.dir);
    const ctx = await contextFor(root.dir, controllerConfig(etcd.clientUrl, { clientSideEncryption: true }, 'sealed'));
    const r = await takeBackup({ ctx, instanceId: INSTANCE, kind: 'emergency' });
    expect(r.encryption).toBe('aws:kms+kms-envelope');
    const bytes = await objectBytes(r.key);
    expect(bytes.subarray(0, 8).toString('latin1')).toBe('ZDTENC1\n');
    expect(bytes.includes(pki['ca.key']!.subarray(0, 40))).toBe(false);
    expect(bytes.includes(Buffer.from('ustar'))).toBe(false);

    const target = await newRoot();
    const tctx = await contextFor(target.dir, controllerConfig(etcd.clientUrl, { clientSideEncryption: true }, 'sealed'));
    const back = await restoreBackup({ ctx: tctx, from: r.key, dataDir: '/var/lib/etcd', memberName: 'etcd00', peerUrl: 'http://127.0.0.1:2380' });
    expect(back.manifest.cluster).toBe('sealed');
    expect(fs.readFileSync(target.at('/etc/kubernetes/pki/ca.key')).equals(pki['ca.key']!)).toBe(true);
    expect(fs.existsSync(target.at('/var/lib/etcd/member/snap/db'))).toBe(true);
  });
});

describe('without a KMS key', () => {
  it('falls back to SSE-S3 with a warning, and the upload still verifies', async () => {
    const root = await newRoot();
    writeFakePki(root.dir);
    const cfg = controllerConfig(etcd.clientUrl, { kmsKeyId: undefined }, 'nokms');
    const ctx = await contextFor(root.dir, cfg);
    const warnings: string[] = [];
    const warn = ctx.log.warn;
    ctx.log.warn = (m, f) => {
      warnings.push(m);
      warn(m, f);
    };
    const r = await takeBackup({ ctx, instanceId: INSTANCE, kind: 'emergency' });
    expect(r.encryption).toBe('AES256');
    expect(warnings.some((w) => w.includes('SSE-S3'))).toBe(true);
    const head = await s3.send(new HeadObjectCommand({ Bucket: BUCKET, Key: r.key }));
    expect(head.ServerSideEncryption).toBe('AES256');
  });
});

/**
 * On moto: MinIO lists multipart uploads only by their exact key (a prefix finds none,
 * minio/minio#20989), where S3 and moto list by prefix, as the stale-upload cleanup does.
 * Also the backup test kept on moto (terminate-run.test.ts has another).
 */
describe('unfinished multipart uploads', () => {
  const uploadsUnder = async (prefix: string) =>
    ((await motoS3.send(new ListMultipartUploadsCommand({ Bucket: BUCKET, Prefix: prefix }))).Uploads ?? []).map((u) => u.Key);

  it("a failed upload aborts its own; the next backup aborts this cluster's stale ones and no other's", async () => {
    // A backup killed mid-upload leaves one behind (it cannot abort it), here made by hand.
    const killed = 'etcd-backups/stale/emergency/20260301T110000Z-i-0dead.tar';
    const otherCluster = 'etcd-backups/stale-other/emergency/20260301T110000Z-i-0dead.tar';
    for (const Key of [killed, otherCluster]) {
      const { UploadId } = await motoS3.send(new CreateMultipartUploadCommand({ Bucket: BUCKET, Key }));
      await motoS3.send(new UploadPartCommand({ Bucket: BUCKET, Key, UploadId, PartNumber: 1, Body: randomBytes(1024) }));
    }
    // A failure in the middle of the stream (after two parts went up) aborts that upload.
    const log = createLogger({ console: null });
    const failing = uploadStream({
      s3: motoS3,
      bucket: BUCKET,
      key: 'etcd-backups/stale/emergency/20260301T120000Z-i-0fail.tar',
      body: async (w) => {
        for (let i = 0; i < 3; i++) await writeAndWait(w, randomBytes(5 * 1024 * 1024));
        throw new Error('the snapshot stream broke');
      },
      sse: { mode: 'AES256' },
      metadata: {},
      partSize: 5 * 1024 * 1024,
      concurrency: 2,
      log,
    });
    await expect(failing).rejects.toThrow('the snapshot stream broke');
    expect(await uploadsUnder('etcd-backups/stale/')).toEqual([killed]);

    // Older than the longest a backup may run (1 s here): the next backup of the cluster aborts it.
    await new Promise((r) => setTimeout(r, 1500));
    const root = await newRoot();
    writeFakePki(root.dir);
    const cfg = controllerConfig(etcd.clientUrl, { timeout: 1 }, 'stale', 'moto');
    const ctx = await contextFor(root.dir, { ...cfg, terminate: { backupTimeout: 1 } });
    await takeBackup({ ctx, instanceId: INSTANCE, kind: 'emergency' });
    expect(await uploadsUnder('etcd-backups/stale/')).toEqual([]);
    expect(await uploadsUnder('etcd-backups/stale-other/')).toEqual([otherCluster]);
  });

  it('leaves a young unfinished upload alone: it may be a backup running on another controller', async () => {
    const running = 'etcd-backups/young/hourly/20260301T120000Z-i-0other.tar';
    await motoS3.send(new CreateMultipartUploadCommand({ Bucket: BUCKET, Key: running }));
    const aborted = await abortStaleUploads({ s3: motoS3, bucket: BUCKET, prefix: 'etcd-backups/young/', olderThanMs: 900_000, log: createLogger({ console: null }) });
    expect(aborted).toEqual([]);
    expect(await uploadsUnder('etcd-backups/young/')).toEqual([running]);
    expect(await abortStaleUploads({ s3: motoS3, bucket: BUCKET, prefix: 'etcd-backups/young/', olderThanMs: 900_000, log: createLogger({ console: null }), now: Date.now() + 901_000 })).toEqual([running]);
  });
});

describe('a backup damaged on its way to S3: MinIO checks x-amz-checksum-sha256', () => {
  /** A tap in front of MinIO that flips one byte in the body of the first request `pick` chooses, its headers (the checksum among them) unchanged. */
  async function damagingTap(pick: (req: http.IncomingMessage) => boolean) {
    const damage = damageOnce(pick, 1000);
    return { tap: await startHttpTap(minio.endpoint, () => undefined, damage), damaged: damage.damaged };
  }

  const objectsUnder = async (prefix: string) => ((await s3.send(new ListObjectsV2Command({ Bucket: BUCKET, Prefix: prefix }))).Contents ?? []).map((c) => c.Key);
  /** MinIO lists multipart uploads by exact key only, and all of them without a prefix. */
  const uploadsUnder = async (prefix: string) =>
    ((await s3.send(new ListMultipartUploadsCommand({ Bucket: BUCKET }))).Uploads ?? []).map((u) => u.Key).filter((k) => k?.startsWith(prefix));

  it('a damaged UploadPart is refused; the backup fails naming the call, leaves no object or upload, and the latest backup stays the one before', async () => {
    const prefix = 'etcd-backups/damaged/';
    const root = await newRoot();
    writeFakePki(root.dir);
    const before = await takeBackup({ ctx: await contextFor(root.dir, controllerConfig(etcd.clientUrl, {}, 'damaged')), instanceId: INSTANCE, kind: 'hourly', now: new Date('2026-03-01T10:00:00Z') });

    const isPart2 = (req: http.IncomingMessage) => req.method === 'PUT' && req.url!.startsWith(`/${BUCKET}/${prefix}`) && /[?&]partNumber=2(&|$)/.test(req.url!);
    const { tap, damaged } = await damagingTap(isPart2);
    const failedKey = `${prefix}hourly/20260301T110000Z-${INSTANCE}.tar`;
    try {
      const ctx = await contextFor(root.dir, { ...controllerConfig(etcd.clientUrl, {}, 'damaged', tap.endpoint), metrics: { textfileDir: TEXTFILE_DIR } });
      // What `zdt-agent etcd backup` runs; its top level prints asAgentError's line and exits 1.
      const err = asAgentError(await scheduledBackup(ctx, { instanceId: INSTANCE, now: new Date('2026-03-01T11:00:00Z') }).catch((e: unknown) => e));
      expect(damaged()).toBe(true);
      expect(err.oneLine()).toMatch(/^AwsCallFailed: S3 UploadPart: (XAmzContentChecksumMismatch|BadDigest): .* \(HTTP 400\); the server refused a body that did not match its checksum/);
      expect(err.exitCode).toBe(1);
      const metrics = readSamples(metricsFile(root.at(TEXTFILE_DIR), 'etcd-backup'));
      expect(metrics.get('zdt_agent_etcd_backup_runs_total')).toEqual([{ labels: { kind: 'hourly', result: 'failed' }, value: 1 }]);
    } finally {
      await tap.stop();
    }
    expect(await objectsUnder(prefix)).toEqual([before.key]);
    expect(await uploadsUnder(prefix)).toEqual([]);
    expect((await s3.send(new ListMultipartUploadsCommand({ Bucket: BUCKET, Prefix: failedKey }))).Uploads ?? []).toEqual([]);
    const found = await findBackups(await contextFor(root.dir, controllerConfig(etcd.clientUrl, {}, 'damaged')));
    expect(found.map((b) => b.key)).toEqual([before.key]);
  });

  it('a backup of one part goes up as one PutObject: a damaged one is refused and leaves no object', async () => {
    const prefix = 'etcd-backups/damaged-put/';
    const root = await newRoot();
    writeFakePki(root.dir);
    const isPut = (req: http.IncomingMessage) => req.method === 'PUT' && req.url!.startsWith(`/${BUCKET}/${prefix}`) && !req.url!.includes('uploadId=');
    const { tap, damaged } = await damagingTap(isPut);
    try {
      // 64 MiB parts: the 12 MiB archive is one part, sent with PutObject.
      const ctx = await contextFor(root.dir, controllerConfig(etcd.clientUrl, { partSizeMiB: 64 }, 'damaged-put', tap.endpoint));
      const err = asAgentError(await takeBackup({ ctx, instanceId: INSTANCE, kind: 'emergency' }).catch((e: unknown) => e));
      expect(damaged()).toBe(true);
      expect(err.oneLine()).toMatch(/^AwsCallFailed: S3 PutObject: (XAmzContentChecksumMismatch|BadDigest): .* \(HTTP 400\); /);
    } finally {
      await tap.stop();
    }
    expect(await objectsUnder(prefix)).toEqual([]);
    expect(await uploadsUnder(prefix)).toEqual([]);
  });
});

describe('scheduled backups on a three-member etcd', () => {
  let cluster: EtcdCluster;
  beforeAll(async () => {
    cluster = await startEtcdCluster(3);
    etcdctl(cluster.clientUrls[0]!, 'put', 'k', 'v');
  });
  afterAll(async () => {
    await cluster?.stop();
  });

  it('only the leader backs up; then retention keeps 24 hourly and 7 daily and never the newest', async () => {
    const leader = leaderIndex(cluster);
    const follower = (leader + 1) % 3;
    const root = await newRoot();
    writeFakePki(root.dir);
    const fctx = await contextFor(root.dir, controllerConfig(cluster.clientUrls[follower]!, {}, 'ha'));
    const skipped = await scheduledBackup(fctx, { instanceId: 'i-follower' });
    expect(skipped).toMatchObject({ result: 'skipped' });

    // Ten days of hourly backups already there (tiny stand-ins), plus one emergency backup.
    const now = new Date('2026-03-20T12:30:00Z');
    const old: string[] = [];
    for (let h = 1; h <= 24 * 10; h++) {
      const t = new Date(now.getTime() - h * 3600_000);
      const k = `etcd-backups/ha/hourly/${t.toISOString().replace(/\.\d+Z$/, 'Z').replace(/[-:]/g, '')}-i-old.tar`;
      old.push(k);
    }
    await Promise.all(old.map((Key) => s3.send(new PutObjectCommand({ Bucket: BUCKET, Key, Body: 'x' }))));
    await s3.send(new PutObjectCommand({ Bucket: BUCKET, Key: 'etcd-backups/ha/emergency/20260101T000000Z-i-old.tar', Body: 'x' }));

    const lctx = await contextFor(root.dir, controllerConfig(cluster.clientUrls[leader]!, {}, 'ha'));
    const done = await scheduledBackup(lctx, { instanceId: 'i-leader', now });
    expect(done.result).toBe('done');
    if (done.result !== 'done') return;
    const listed = await s3.send(new ListObjectsV2Command({ Bucket: BUCKET, Prefix: 'etcd-backups/ha/hourly/' }));
    const keys = (listed.Contents ?? []).map((c) => c.Key!).sort().reverse();
    expect(keys[0]).toBe(done.backup.key);
    // The new one and the 23 hours before it (reaching back into yesterday), then the newest
    // of each day for 7 days: today and yesterday are covered by the hourly ones already.
    const hourly = keys.slice(0, 24);
    expect(hourly[23]).toBe(old[22]);
    const days = new Set(keys.map((k) => k.split('/').pop()!.slice(0, 8)));
    expect(days.size).toBe(7);
    expect(keys).toHaveLength(24 + 5);
    expect(done.deleted).toHaveLength(241 - 29);
    const emergency = await s3.send(new ListObjectsV2Command({ Bucket: BUCKET, Prefix: 'etcd-backups/ha/emergency/' }));
    expect(emergency.KeyCount).toBe(1);
  });

  it('leaving etcd is refused when the remaining members would lose quorum', async () => {
    const root = await newRoot();
    const leaver = 0;
    const down = 1;
    const ctx = await contextFor(root.dir, controllerConfig(cluster.clientUrls[leaver]!, {}, 'ha'));
    await cluster.members[down]!.stop();
    const out = await leaveEtcd(ctx);
    expect(out.result).toBe('refused');
    if (out.result === 'refused') expect(out.reason).toMatch(/below quorum 2/);
    expect(etcdctl(cluster.clientUrls[2]!, 'member', 'list')).toContain('etcd-0');
  });
});

describe('etcd leave with quorum', () => {
  let cluster: EtcdCluster;
  beforeAll(async () => {
    cluster = await startEtcdCluster(3);
  });
  afterAll(async () => {
    await cluster?.stop();
  });

  it('removes this member when the other two are healthy, moving leadership away first', async () => {
    const root = await newRoot();
    // Leave from the member that leads, to cover the move-leader path.
    const idx = leaderIndex(cluster);
    const ctx = await contextFor(root.dir, controllerConfig(cluster.clientUrls[idx]!, {}, 'ha'));
    const out = await leaveEtcd(ctx);
    expect(out).toMatchObject({ result: 'removed', name: `etcd-${idx}`, remaining: 2 });
    const other = cluster.clientUrls[(idx + 1) % 3]!;
    const list = etcdctl(other, 'member', 'list');
    expect(list).not.toContain(`etcd-${idx},`);
    expect(list.trim().split('\n')).toHaveLength(2);
  });

  it('a single member does not leave', async () => {
    const root = await newRoot();
    const ctx = await contextFor(root.dir, controllerConfig(etcd.clientUrl));
    expect(await leaveEtcd(ctx)).toMatchObject({ result: 'single-member' });
  });
});

describe('backup errors are classified', () => {
  it('an unreachable etcd is EtcdUnavailable, and nothing is uploaded', async () => {
    const root = await newRoot();
    writeFakePki(root.dir);
    const port = await freePort();
    const ctx = await contextFor(root.dir, { ...controllerConfig(`http://127.0.0.1:${port}`, {}, 'noetcd'), metrics: { textfileDir: TEXTFILE_DIR } });
    const err = await takeBackup({ ctx, instanceId: INSTANCE, kind: 'emergency' }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(AgentError);
    const metrics = readSamples(metricsFile(root.at(TEXTFILE_DIR), 'etcd-backup'));
    expect(metrics.get('zdt_agent_etcd_backup_last_failure_timestamp_seconds')?.[0]?.labels).toEqual({ kind: 'emergency' });
    expect(metrics.has('zdt_agent_etcd_backup_last_success_timestamp_seconds')).toBe(false);
    expect((err as AgentError).code).toBe('EtcdUnavailable');
    const listed = await s3.send(new ListObjectsV2Command({ Bucket: BUCKET, Prefix: 'etcd-backups/noetcd/' }));
    expect(listed.KeyCount ?? 0).toBe(0);
  });
});

describe('etcd over TLS with client certificates (as kubeadm runs it)', () => {
  let tlsEtcd: EtcdMember | undefined;
  let dir: string;
  let ca: TestCa;

  beforeAll(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'zdt-etcd-tls-'));
    ca = await makeTestCa(path.join(dir, 'pki'), 'etcd-ca');
    // As kubeadm makes it: serverAuth and clientAuth (etcd's gateway dials its own gRPC port with it).
    await ca.server('etcd-server', '/CN=etcd00', ['IP:127.0.0.1', 'DNS:localhost'], { alsoClient: true });
    const client = await ca.client('healthcheck-client', '/O=system:masters/CN=kube-etcd-healthcheck-client');
    tlsEtcd = await startEtcd({ dir: path.join(dir, 'data'), name: 'etcd00', tls: { caDir: ca.dir, server: 'etcd-server', client } });
  });

  afterAll(async () => {
    await tlsEtcd?.stop();
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  /** A node root with the etcd client certificate where kubeadm puts it. */
  async function rootWithEtcdClientCert(): Promise<TempRoot> {
    const root = await newRoot();
    writeFakePki(root.dir);
    const etcdPki = path.join(root.dir, 'etc/kubernetes/pki/etcd');
    for (const f of ['ca.crt', 'healthcheck-client.crt', 'healthcheck-client.key']) fs.copyFileSync(path.join(ca.dir, f), path.join(etcdPki, f));
    return root;
  }

  it('backs up with the kubeadm client certificate: the same database etcdctl saves over TLS', async () => {
    const root = await rootWithEtcdClientCert();
    const ctx = await contextFor(root.dir, controllerConfig(tlsEtcd!.clientUrl, {}, 'tls'));
    const r = await takeBackup({ ctx, instanceId: INSTANCE, kind: 'emergency' });
    const fresh = path.join(root.dir, 'fresh.db');
    const tlsFlags = [`--cacert=${ca.dir}/ca.crt`, `--cert=${ca.dir}/healthcheck-client.crt`, `--key=${ca.dir}/healthcheck-client.key`];
    etcdctl(tlsEtcd!.clientUrl, ...tlsFlags, 'snapshot', 'save', fresh);
    const files = await untar(await objectBytes(r.key));
    expect(files.get(SNAPSHOT_NAME)!.data.equals(fs.readFileSync(fresh))).toBe(true);
    expect(r.manifest.etcd.memberName).toBe('etcd00');
  });

  it('without the client certificate it says which file is missing; with one of another CA, etcd refuses', async () => {
    const missing = await newRoot();
    writeFakePki(missing.dir);
    const ctx = await contextFor(missing.dir, controllerConfig(tlsEtcd!.clientUrl, {}, 'tls'));
    await expect(takeBackup({ ctx, instanceId: INSTANCE, kind: 'emergency' })).rejects.toMatchObject({
      code: 'EtcdClientCertMissing',
      message: expect.stringContaining('/etc/kubernetes/pki/etcd/healthcheck-client.crt'),
    });

    const other = await makeTestCa(path.join(dir, 'other'), 'other-ca');
    await other.client('healthcheck-client', '/CN=someone-else');
    const wrong = await rootWithEtcdClientCert();
    for (const f of ['healthcheck-client.crt', 'healthcheck-client.key']) fs.copyFileSync(path.join(other.dir, f), path.join(wrong.dir, 'etc/kubernetes/pki/etcd', f));
    const ctx2 = await contextFor(wrong.dir, controllerConfig(tlsEtcd!.clientUrl, {}, 'tls'));
    await expect(takeBackup({ ctx: ctx2, instanceId: INSTANCE, kind: 'emergency' })).rejects.toMatchObject({ code: 'EtcdUnavailable' });
    const listed = await s3.send(new ListObjectsV2Command({ Bucket: BUCKET, Prefix: 'etcd-backups/tls/' }));
    expect(listed.KeyCount).toBe(1); // the first test's only
  });
});
