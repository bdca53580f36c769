import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect } from 'vitest';
import { stringify } from 'yaml';
import type { ConfigInput } from '../../agent/config/schema.js';
import { fillEtcd, startEtcd, type EtcdMember } from '../testbed/etcd.js';
import { startFidelityProxy, type FidelityProxy } from '../testbed/fidelity-proxy.js';
import { mountFullDisk } from '../testbed/full-disk.js';
import { startImds, type Imds } from '../testbed/imds.js';
import { startMoto, type Moto } from '../testbed/moto.js';
import { freePort, silentListener } from '../testbed/ports.js';
import { makeTempRoot, type TempRoot } from '../testbed/root.js';
import { startTcpRelay, type TcpRelay } from '../testbed/tcp-relay.js';
import { REGION, makeBucket, makeKmsKey, testClients, useTestCredentials, writeFakePki } from '../support/terminate-env.js';
import { errorLine, faultTable, runScenarioAgent, s3Leftovers, undoAfterEachScenario, type Outcome } from './scenario.js';

/**
 * Fault injection for the hourly `zdt-agent etcd backup` (a process, as the periodic job runs
 * it) of a single-member etcd holding about 11 MiB, uploaded in 5 MiB parts: S3 and KMS
 * throttled, failing, resetting and hung per action, one part failing, etcd stopped in the
 * middle of the snapshot stream or not running, IMDS silent, a full log directory. A backup
 * counts only when it is uploaded and verified; every failure leaves no object and no
 * unfinished multipart upload behind, within etcd.backup.timeout.
 */

const BUCKET = 'zdt-fault-backups';
const INSTANCE = 'i-0bac0f00000000001';

let moto: Moto;
let proxy: FidelityProxy;
let s3: S3Client;
/** The test's own reads go to moto directly: they must not meet the faults, nor count as the agent's calls. */
let direct: S3Client;
let kmsKeyId: string;
let etcd: EtcdMember;
let etcdDir: string;
let imds: Imds;
let clusters = 0;
const undo = undoAfterEachScenario(() => proxy);

beforeAll(async () => {
  useTestCredentials();
  moto = await startMoto();
  proxy = await startFidelityProxy({ target: moto.endpoint });
  let kms;
  ({ s3, kms } = testClients(proxy.endpoint));
  await makeBucket(s3, BUCKET);
  kmsKeyId = await makeKmsKey(kms);
  direct = testClients(moto.endpoint).s3;
  imds = await startImds({ instanceId: INSTANCE, region: REGION, availabilityZone: `${REGION}a`, instanceType: 'm7i.large', privateIp: '10.0.0.5' });
  etcdDir = fs.mkdtempSync(path.join(os.tmpdir(), 'zdt-etcd-faults-'));
  etcd = await startEtcd({ dir: path.join(etcdDir, 'data'), name: 'etcd00' });
  // About 11 MiB of data: the backup goes up in three parts of 5 MiB.
  fillEtcd(etcd.clientUrl, 12);
}, 180_000);

afterAll(async () => {
  await etcd?.stop();
  await imds?.stop();
  await proxy?.stop();
  await moto?.stop();
  if (etcdDir) fs.rmSync(etcdDir, { recursive: true, force: true });
});

interface Controller {
  root: TempRoot;
  cluster: string;
  backup(limitMs?: number): Promise<Outcome>;
  /** Backup objects of this controller's cluster in the bucket. */
  objects(): Promise<string[]>;
  /** Multipart uploads of this cluster that were neither completed nor aborted. */
  openUploads(): Promise<string[]>;
}

/** A controller of its own cluster (its own key prefix), backing up the shared etcd. */
async function controller(o: { clientUrl?: string; backup?: Record<string, unknown>; aws?: Record<string, unknown> } = {}): Promise<Controller> {
  const root = await makeTempRoot();
  undo.later(() => root.cleanup());
  writeFakePki(root.dir);
  const cluster = `faults${++clusters}`;
  const config: ConfigInput = {
    cluster: { name: cluster },
    node: { role: 'controller', controllerIndex: '00' },
    etcd: { clientUrl: o.clientUrl ?? etcd.clientUrl, backup: { bucket: BUCKET, kmsKeyId, partSizeMiB: 5, concurrency: 2, timeout: 10, ...o.backup } },
    aws: { region: REGION, endpoint: proxy.endpoint, s3ForcePathStyle: true, maxAttempts: 3, requestTimeoutMs: 3000, connectTimeoutMs: 1000, imdsEndpoint: imds.endpoint, imdsTimeout: 3, ...o.aws },
  };
  fs.mkdirSync(root.at('/etc/zdt-agent'), { recursive: true });
  fs.writeFileSync(root.at('/etc/zdt-agent/config.yaml'), stringify(config));
  const prefix = `etcd-backups/${cluster}/`;
  const env = { ...process.env, AWS_EC2_METADATA_DISABLED: 'true' };
  return {
    root,
    cluster,
    backup: (limitMs = 60_000) => runScenarioAgent({ root: root.dir, args: ['etcd', 'backup', '--root', root.dir], env, limitMs }),
    objects: async () => (await s3Leftovers(direct, BUCKET, prefix)).objects,
    openUploads: async () => (await s3Leftovers(direct, BUCKET, prefix)).openUploads,
  };
}

/** `exit 0; 1 object; 0 open uploads` */
async function observed(c: Controller, r: Outcome): Promise<string> {
  const line = errorLine(r);
  return `${r.summary}${line ? ` (${line.replace(/^zdt-agent: /, '').slice(0, 90)})` : ''}; ${(await c.objects()).length} object(s); ${(await c.openUploads()).length} open upload(s)`;
}

/** The run's stdout line for a backup that was uploaded and verified. */
const verified = /^backup s3:\/\/\S+ \(\d+ bytes, \d+ ms, verified\); retention deleted \d+$/m;

const scenario = faultTable('etcd-backup');

describe('etcd backup under S3 faults', () => {
  scenario('the second UploadPart answers 500 twice, then goes through', 'exit 0, one verified object of 3 parts', async (t) => {
    const c = await controller();
    proxy.inject({ action: 's3:UploadPart', kind: '500', times: 2, after: 1 });
    const r = await c.backup();
    t.observe(await observed(c, r));
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(verified);
    expect(await c.objects()).toHaveLength(1);
    expect(proxy.seen('s3:UploadPart').filter((x) => x.fault === '500')).toHaveLength(2);
  });

  scenario('an UploadPart resets the connection once', 'exit 0, one verified object', async (t) => {
    const c = await controller();
    proxy.inject({ action: 's3:UploadPart', kind: 'reset', times: 1 });
    const r = await c.backup();
    t.observe(await observed(c, r));
    expect(r.code).toBe(0);
    expect(await c.objects()).toHaveLength(1);
  });

  scenario('CreateMultipartUpload answers 503 for good', 'exit 1 naming S3 CreateMultipartUpload, no object, nothing left open', async (t) => {
    const c = await controller();
    proxy.inject({ action: 's3:CreateMultipartUpload', kind: '503' });
    const r = await c.backup();
    t.observe(await observed(c, r));
    expect(r.code).toBe(1);
    expect(errorLine(r)).toMatch(/AwsCallFailed: S3 CreateMultipartUpload: /);
    expect(await c.objects()).toEqual([]);
    expect(await c.openUploads()).toEqual([]);
  });

  scenario('every UploadPart answers 500', 'exit 1 naming S3 UploadPart, no object, the multipart upload aborted', async (t) => {
    const c = await controller();
    proxy.inject({ action: 's3:UploadPart', kind: '500' });
    const r = await c.backup();
    t.observe(await observed(c, r));
    expect(r.code).toBe(1);
    expect(errorLine(r)).toMatch(/AwsCallFailed: S3 UploadPart: InternalError/);
    expect(await c.objects()).toEqual([]);
    // Waits for the `secrets` helper's fix (issue 11: abort on failure) if it fails here.
    expect(await c.openUploads()).toEqual([]);
  });

  scenario('CompleteMultipartUpload answers 500 for good', 'exit 1, no object, the multipart upload aborted', async (t) => {
    const c = await controller();
    proxy.inject({ action: 's3:CompleteMultipartUpload', kind: '500' });
    const r = await c.backup();
    t.observe(await observed(c, r));
    expect(r.code).toBe(1);
    expect(await c.objects()).toEqual([]);
    // Waits for the `secrets` helper's fix (issue 11: abort on failure) if it fails here.
    expect(await c.openUploads()).toEqual([]);
  });

  scenario('UploadPart hangs past etcd.backup.timeout (6 s)', 'exit 3 (BackupTimedOut) within the limit, no object, the upload aborted', async (t) => {
    const c = await controller({ backup: { timeout: 6 }, aws: { requestTimeoutMs: 15_000 } });
    proxy.inject({ action: 's3:UploadPart', kind: 'hang' });
    const r = await c.backup();
    t.observe(`${await observed(c, r)}; ${(r.ms / 1000).toFixed(1)}s`);
    expect(r.code).toBe(3);
    expect(errorLine(r)).toMatch(/BackupTimedOut/);
    expect(r.ms).toBeLessThan(30_000);
    expect(await c.objects()).toEqual([]);
    // Waits for the `secrets` helper's fix (issue 11: abort on failure) if it fails here.
    expect(await c.openUploads()).toEqual([]);
  });

  scenario('HeadObject of the verification answers 500 for good', 'exit 1 naming S3 HeadObject: an upload that could not be verified is no backup', async (t) => {
    const c = await controller();
    proxy.inject({ action: 's3:HeadObject', kind: '500' });
    const r = await c.backup();
    t.observe(await observed(c, r));
    expect(r.code).toBe(1);
    expect(errorLine(r)).toMatch(/AwsCallFailed: S3 HeadObject: HTTP 500/);
    expect(r.stdout).not.toMatch(verified);
  });

  scenario('retention: ListObjectsV2 answers 500', 'exit 0: the backup is verified, retention is retried next hour', async (t) => {
    const c = await controller();
    proxy.inject({ action: 's3:ListObjectsV2', kind: '500' });
    const r = await c.backup();
    proxy.clearFaults();
    t.observe(await observed(c, r));
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(verified);
    expect(fs.readFileSync(c.root.at('/var/log/zdt-agent.log'), 'utf8')).toMatch(/retention failed/);
  });

  scenario('retention: DeleteObjects throttled twice', 'exit 0, backups past retention deleted', async (t) => {
    const c = await controller({ backup: { retention: { hourly: 1, daily: 0 } } });
    for (const h of [3, 4]) {
      const ts = new Date(Date.now() - h * 3600_000).toISOString().replace(/\.\d+Z$/, 'Z').replace(/[-:]/g, '');
      await direct.send(new PutObjectCommand({ Bucket: BUCKET, Key: `etcd-backups/${c.cluster}/hourly/${ts}-i-old.tar`, Body: 'x' }));
    }
    proxy.inject({ action: 's3:DeleteObjects', kind: 'throttle', times: 2 });
    const r = await c.backup();
    t.observe(`${await observed(c, r)}; ${/retention deleted \d+/.exec(r.stdout)?.[0] ?? 'no retention line'}`);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/retention deleted 2$/m);
    expect(await c.objects()).toHaveLength(1);
  });
});

describe('etcd backup under KMS faults (client-side encryption)', () => {
  scenario('KMS GenerateDataKey throttled twice', 'exit 0, one verified object', async (t) => {
    const c = await controller({ backup: { clientSideEncryption: true } });
    proxy.inject({ action: 'GenerateDataKey', kind: 'throttle', times: 2 });
    const r = await c.backup();
    t.observe(await observed(c, r));
    expect(r.code).toBe(0);
    expect(await c.objects()).toHaveLength(1);
  });

  scenario('KMS GenerateDataKey hangs past etcd.backup.timeout (4 s)', 'exit 3 within the limit, nothing uploaded', async (t) => {
    const c = await controller({ backup: { clientSideEncryption: true, timeout: 4 }, aws: { requestTimeoutMs: 15_000 } });
    proxy.inject({ action: 'GenerateDataKey', kind: 'hang' });
    const r = await c.backup();
    t.observe(`${await observed(c, r)}; ${(r.ms / 1000).toFixed(1)}s`);
    expect(r.code).toBe(3);
    expect(await c.objects()).toEqual([]);
    expect(await c.openUploads()).toEqual([]);
  });
});

describe('etcd backup when etcd, IMDS or the disk fail', () => {
  scenario('etcd is stopped (SIGSTOP) in the middle of the snapshot stream', 'exit 3 within etcd.backup.timeout, no object, the upload aborted', async (t) => {
    let relay: TcpRelay | undefined = undefined;
    relay = await startTcpRelay(new URL(etcd.clientUrl).host, (bytes) => {
      // About 2 MiB into the snapshot: etcd stops, and nothing more of what it sent arrives.
      if (bytes > 2 * 1024 * 1024 && !undo.isStopped(etcd.pid)) {
        undo.sigstop(etcd.pid);
        relay!.freeze();
      }
    });
    const started = relay;
    undo.later(() => started.stop());
    const c = await controller({ clientUrl: `http://${relay.hostPort}`, backup: { timeout: 6 } });
    const r = await c.backup();
    t.observe(`${await observed(c, r)}; etcd stopped after ${(relay.bytesFromTarget() / 1048576).toFixed(1)} MiB`);
    expect(undo.isStopped(etcd.pid)).toBe(true);
    expect(r.code).toBe(3);
    expect(await c.objects()).toEqual([]);
    // Waits for the `secrets` helper's fix (issue 11: abort on failure) if it fails here.
    expect(await c.openUploads()).toEqual([]);
  });

  scenario('etcd is not running (connection refused)', 'exit 1 (EtcdUnavailable), nothing uploaded', async (t) => {
    const c = await controller({ clientUrl: `http://127.0.0.1:${await freePort()}` });
    const before = proxy.calls('s3:CreateMultipartUpload') + proxy.calls('s3:PutObject');
    const r = await c.backup();
    t.observe(await observed(c, r));
    expect(r.code).toBe(1);
    expect(errorLine(r)).toMatch(/EtcdUnavailable/);
    expect(proxy.calls('s3:CreateMultipartUpload') + proxy.calls('s3:PutObject')).toBe(before);
  });

  scenario('IMDS accepts connections and never answers (the backup needs the instance id)', 'exit 3 (ImdsUnavailable) after aws.imdsTimeout, nothing uploaded', async (t) => {
    const silent = await silentListener();
    try {
      const c = await controller({ aws: { imdsEndpoint: silent.endpoint, imdsTimeout: 3 } });
      const r = await c.backup();
      t.observe(`${await observed(c, r)}; ${(r.ms / 1000).toFixed(1)}s`);
      expect(r.code).toBe(3);
      expect(errorLine(r)).toMatch(/ImdsUnavailable/);
      expect(await c.objects()).toEqual([]);
    } finally {
      silent.close();
    }
  });

  scenario('the log directory is full (a real full tmpfs)', 'exit 0, one verified object: a full /var/log does not stop the backup', async (t) => {
    const c = await controller();
    const disk = await mountFullDisk(c.root.at('/var/log'));
    try {
      const r = await c.backup();
      t.observe(await observed(c, r));
      expect(r.code).toBe(0);
      expect(r.stdout).toMatch(verified);
    } finally {
      await disk.unmount();
    }
  });
});
