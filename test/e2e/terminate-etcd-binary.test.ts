import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { HeadObjectCommand, ListObjectsV2Command, type S3Client } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { etcd36BinDir, startEtcd, type EtcdMember } from '../testbed/etcd.js';
import { startFidelityProxy, type FidelityProxy } from '../testbed/fidelity-proxy.js';
import { damageOnce, startHttpTap } from '../testbed/http-tap.js';
import { startImds, type Imds } from '../testbed/imds.js';
import { startMoto, type Moto } from '../testbed/moto.js';
import { makeTempRoot, type TempRoot } from '../testbed/root.js';
import { startMinioS3, type MinioS3 } from '../support/minio-env.js';
import { REGION, makeKmsKey, testClients, writeFakePki } from '../support/terminate-env.js';

/**
 * The built binary (dist/zdt-agent) runs `etcd backup`, `etcd restore` and `terminate` as
 * cron and OpenRC would: its own process, config file under --root, exit codes. S3 is MinIO
 * (it checks every upload's SHA-256), KMS and the rest moto.
 */

const BIN = path.resolve(import.meta.dirname, '../../dist/zdt-agent');
const BUCKET = 'zdt-e2e';
const INSTANCE = 'i-0e2e0000000000001';

let moto: Moto;
let proxy: FidelityProxy;
let minio: MinioS3;
/** MinIO's. */
let s3: S3Client;
let kmsKeyId: string;
let imds: Imds;
let etcd: EtcdMember;
let etcdDir: string;
const roots: TempRoot[] = [];
let stoppedPid: number | undefined;

function run(args: string[], timeoutMs = 60_000, env: NodeJS.ProcessEnv = {}): Promise<{ code: number | null; stdout: string; stderr: string; ms: number }> {
  const started = Date.now();
  return new Promise((resolve, reject) => {
    const child = spawn(BIN, args, {
      env: { ...process.env, ...minio.env, AWS_REGION: REGION, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    const killer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('error', reject);
    child.on('exit', (code) => {
      clearTimeout(killer);
      resolve({ code, stdout, stderr, ms: Date.now() - started });
    });
  });
}

async function controllerRoot(terminate: Record<string, unknown> = {}, s3Endpoint = minio.endpoint): Promise<TempRoot> {
  const root = await makeTempRoot();
  roots.push(root);
  writeFakePki(root.dir);
  fs.mkdirSync(root.at('/etc/zdt-agent'), { recursive: true });
  fs.writeFileSync(
    root.at('/etc/zdt-agent/config.yaml'),
    stringify({
      cluster: { name: 'e2e' },
      node: { role: 'controller', controllerIndex: '00' },
      etcd: { clientUrl: etcd.clientUrl, backup: { bucket: BUCKET, kmsKeyId } },
      terminate: { budget: 30, drainTimeout: 10, hookTimeout: 5, ...terminate },
      aws: { region: REGION, endpoint: proxy.endpoint, endpoints: { s3: s3Endpoint }, s3ForcePathStyle: true, imdsEndpoint: imds.endpoint, maxAttempts: 2 },
    }),
  );
  return root;
}

beforeAll(async () => {
  if (!fs.existsSync(BIN)) throw new Error("dist/zdt-agent is missing: run 'make binary' first");
  moto = await startMoto();
  proxy = await startFidelityProxy({ target: moto.endpoint });
  kmsKeyId = await makeKmsKey(testClients(proxy.endpoint).kms);
  // MinIO's SSE-KMS key takes the moto key's id: etcd.backup.kmsKeyId names one key.
  minio = await startMinioS3([BUCKET], { kmsKeyId });
  s3 = minio.s3;
  imds = await startImds({ instanceId: INSTANCE, region: REGION, availabilityZone: `${REGION}a`, instanceType: 'm7i.large', privateIp: '10.0.2.2', tags: { Name: 'ctl' } });
  etcdDir = fs.mkdtempSync(path.join(os.tmpdir(), 'zdt-e2e-etcd-'));
  etcd = await startEtcd({ dir: path.join(etcdDir, 'data'), name: 'etcd00' });
  await fetch(`${etcd.clientUrl}/v3/kv/put`, { method: 'POST', body: JSON.stringify({ key: Buffer.from('/registry/e2e').toString('base64'), value: Buffer.from('kept').toString('base64') }) });
});

afterAll(async () => {
  if (stoppedPid) process.kill(stoppedPid, 'SIGCONT');
  await etcd?.stop();
  await imds?.stop();
  await minio?.stop();
  await proxy?.stop();
  await moto?.stop();
  for (const r of roots) await r.cleanup();
  if (etcdDir) fs.rmSync(etcdDir, { recursive: true, force: true });
});

describe('zdt-agent etcd backup / restore (built binary)', () => {
  let key: string;

  it('backs up (leader of a single member), verified, and prints the key', async () => {
    const root = await controllerRoot();
    const r = await run(['--root', root.dir, 'etcd', 'backup']);
    expect(r.code, r.stderr).toBe(0);
    const m = /^backup s3:\/\/zdt-e2e\/(\S+) \(\d+ bytes, \d+ ms, verified\); retention deleted 0$/m.exec(r.stdout);
    expect(m, r.stdout).not.toBeNull();
    key = m![1]!;
    expect(key).toMatch(new RegExp(`^etcd-backups/e2e/hourly/\\d{8}T\\d{6}Z-${INSTANCE}\\.tar$`));
    const head = await s3.send(new HeadObjectCommand({ Bucket: BUCKET, Key: key }));
    expect(head.ServerSideEncryption).toBe('aws:kms');
  });

  it('restores the latest backup into a blank data dir', async () => {
    const root = await controllerRoot();
    fs.rmSync(root.at('/etc/kubernetes'), { recursive: true, force: true });
    const r = await run(['--root', root.dir, 'etcd', 'restore', '--from', 'latest', '--data-dir', '/var/lib/etcd', '--peer-url', 'http://127.0.0.1:2380']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain(`restored ${key} (cluster e2e`);
    // Debian's etcd 3.4 has no etcdutl: its etcdctl restores, without the revision bump.
    expect(r.stdout).toMatch(/ with etcdctl 3\.4\.\d+, revision not bumped;/);
    expect(fs.existsSync(root.at('/etc/kubernetes/pki/ca.key'))).toBe(true);
    expect(fs.existsSync(root.at('/var/lib/etcd/member/snap/db'))).toBe(true);
    const again = await run(['--root', root.dir, 'etcd', 'restore', '--data-dir', '/var/lib/etcd']);
    expect(again.code).toBe(1);
    expect(again.stderr).toMatch(/^zdt-agent: DataDirNotEmpty: /);
  });

  it("with etcd 3.6's etcdutl on PATH (a 1.34 controller), restores the same 3.4 backup with it and bumps the revision", async () => {
    const root = await controllerRoot();
    const r = await run(['--root', root.dir, 'etcd', 'restore', '--from', key, '--data-dir', '/var/lib/etcd', '--peer-url', 'http://127.0.0.1:2380'], 60_000, {
      PATH: `${etcd36BinDir()}${path.delimiter}${process.env.PATH ?? ''}`,
    });
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain(' with etcdutl 3.6.5, revision bumped by 1000000000 and marked compacted;');
    expect(fs.existsSync(root.at('/var/lib/etcd/member/snap/db'))).toBe(true);
  });
});

describe('a backup damaged on its way to S3 (built binary)', () => {
  it('MinIO refuses the PutObject whose body no longer matches its SHA-256: exit 1, the call named, no object', async () => {
    // This etcd's backup is a few KiB: one PutObject, whose body the tap damages on the way.
    const damage = damageOnce((req) => req.method === 'PUT' && req.url!.startsWith(`/${BUCKET}/etcd-backups/`));
    const tap = await startHttpTap(minio.endpoint, () => undefined, damage);
    try {
      const before = (await s3.send(new ListObjectsV2Command({ Bucket: BUCKET, Prefix: 'etcd-backups/' }))).KeyCount ?? 0;
      const root = await controllerRoot({}, tap.endpoint);
      const r = await run(['--root', root.dir, 'etcd', 'backup']);
      expect(damage.damaged()).toBe(true);
      expect(r.code, r.stdout).toBe(1);
      expect(r.stderr).toMatch(/^zdt-agent: AwsCallFailed: S3 PutObject: (XAmzContentChecksumMismatch|BadDigest): .* \(HTTP 400\); /m);
      expect((await s3.send(new ListObjectsV2Command({ Bucket: BUCKET, Prefix: 'etcd-backups/' }))).KeyCount ?? 0).toBe(before);
    } finally {
      await tap.stop();
    }
  });
});

describe('zdt-agent terminate (built binary)', () => {
  it('a single controller stopping backs up, records the run, and status shows it', async () => {
    const root = await controllerRoot();
    const r = await run(['--root', root.dir, 'terminate', '--event', 'stop']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^terminate \(stop, --event\): ok; .*etcd-backup=ok/m);
    const status = await run(['--root', root.dir, 'status']);
    expect(status.stdout).toMatch(/terminate: ok \(event stop\)/);
    expect(status.stdout).toMatch(/etcd-backup\s+ok .*etcd-backups\/e2e\/emergency\//);
  });

  it('exits inside its budget with code 3 when etcd hangs', async () => {
    const root = await controllerRoot({ budget: 8, drainTimeout: 4, hookTimeout: 2 });
    process.kill(etcd.pid, 'SIGSTOP');
    stoppedPid = etcd.pid;
    try {
      const r = await run(['--root', root.dir, 'terminate', '--event', 'terminate'], 30_000);
      expect(r.code, r.stderr).toBe(3);
      expect(r.ms).toBeLessThan(8_000 + 2_000); // the budget, plus the process start and exit
      expect(r.stdout).toMatch(/etcd-backup=deadline/);
    } finally {
      process.kill(etcd.pid, 'SIGCONT');
      stoppedPid = undefined;
    }
  });
});
