#!/usr/bin/env node
/**
 * Emergency-backup speed: `zdt-agent etcd backup` (the built binary: etcd gateway snapshot
 * stream -> tar -> SSE-KMS multipart upload with SHA-256 checksums -> HeadObject verify) against
 * the usual two steps, `etcdctl snapshot save` to a file and `aws s3 cp` of that file, on
 * the same testbed: Debian's etcd 3.4 holding a 256 MiB database, moto_server as S3 (on
 * loopback; moto's own speed bounds both), runs interleaved. Prints wall times (median of
 * the runs), throughput in MiB/s of the database, the ratio, peak RSS of the agent and the
 * temporary disk each needs. Targets: ratio >= 1.5, no temporary copy on disk. Never asserts.
 *
 *   node bench/etcd-backup.mjs [--mib=256] [--runs=3] [--part-mib=8] [--concurrency=8]
 *
 * Needs: dist/zdt-agent (make binary), /usr/bin/etcd and etcdctl, moto_server, aws (CLI v1 or v2).
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { CreateBucketCommand, S3Client } from '@aws-sdk/client-s3';
import { CreateKeyCommand, KMSClient } from '@aws-sdk/client-kms';

const ROOT = path.resolve(import.meta.dirname, '..');
const BIN = path.join(ROOT, 'dist/zdt-agent');
const { values } = parseArgs({
  options: { mib: { type: 'string', default: '256' }, runs: { type: 'string', default: '3' }, 'part-mib': { type: 'string', default: '8' }, concurrency: { type: 'string', default: '8' } },
});
const PART_MIB = Number(values['part-mib']);
const CONCURRENCY = Number(values.concurrency);
const TARGET_MIB = Number(values.mib);
const RUNS = Math.max(1, Number(values.runs));
const REGION = 'eu-central-1';
const CREDS = { AWS_ACCESS_KEY_ID: 'testing', AWS_SECRET_ACCESS_KEY: 'testing', AWS_DEFAULT_REGION: REGION, AWS_REGION: REGION };

const freePort = () =>
  new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const children = [];
function start(file, args) {
  const child = spawn(file, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  child.stderr.on('data', (c) => (err = (err + c).slice(-4000)));
  const handle = { child, output: () => err };
  children.push(handle);
  return handle;
}
async function until(what, check, ms = 60_000) {
  const end = Date.now() + ms;
  for (;;) {
    if (await check().catch(() => false)) return;
    if (Date.now() > end) throw new Error(`${what} did not come up`);
    await sleep(200);
  }
}
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
/** Runs a command to its end (asynchronously: the IMDS stand-in lives in this process) and times it. */
const timed = (cmd, args, env = {}) =>
  new Promise((resolve, reject) => {
    const t = process.hrtime.bigint();
    const child = spawn(cmd, args, { env: { ...process.env, ...CREDS, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c) => (stdout += c));
    child.stderr.on('data', (c) => (stderr = (stderr + c).slice(-8000)));
    child.on('error', reject);
    child.on('exit', (code) => {
      const ms = Number(process.hrtime.bigint() - t) / 1e6;
      if (code !== 0) reject(new Error(`${cmd} ${args.join(' ')} failed (${code}): ${stderr.slice(-2000)}`));
      else resolve({ ms, stdout, stderr });
    });
  });

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'zdt-bench-etcd-'));
let imdsServer;
try {
  if (!fs.existsSync(BIN)) throw new Error("dist/zdt-agent is missing: run 'make binary' first");
  // etcd with room for the database.
  const [cport, pport, mport, iport] = await Promise.all([freePort(), freePort(), freePort(), freePort()]);
  const etcdUrl = `http://127.0.0.1:${cport}`;
  fs.mkdirSync(path.join(tmp, 'etcd'), { mode: 0o700 });
  const etcd = start('/usr/bin/etcd', [
    '--name', 'etcd00', '--data-dir', path.join(tmp, 'etcd'),
    '--listen-client-urls', etcdUrl, '--advertise-client-urls', etcdUrl,
    '--listen-peer-urls', `http://127.0.0.1:${pport}`, '--initial-advertise-peer-urls', `http://127.0.0.1:${pport}`,
    '--initial-cluster', `etcd00=http://127.0.0.1:${pport}`, '--quota-backend-bytes', String(8 * 1024 ** 3),
  ]);
  await until('etcd', async () => (await (await fetch(`${etcdUrl}/health`)).json()).health === 'true');
  const status = async () => JSON.parse(await (await fetch(`${etcdUrl}/v3/maintenance/status`, { method: 'POST', body: '{}' })).text());
  const value = () => randomBytes(1024 * 1024).toString('base64'); // already base64: the gateway wants base64 of the bytes
  let n = 0;
  while (Number((await status()).dbSize) < TARGET_MIB * 1024 * 1024) {
    await Promise.all(
      Array.from({ length: 4 }, () =>
        fetch(`${etcdUrl}/v3/kv/put`, { method: 'POST', body: JSON.stringify({ key: Buffer.from(`/registry/bench/${n++}`).toString('base64'), value: value() }) }).then((r) => r.text()),
      ),
    );
  }
  const dbBytes = Number((await status()).dbSize);
  console.error(`bench: etcd filled: ${(dbBytes / 1048576).toFixed(0)} MiB`);
  const dbMiB = dbBytes / 1048576;

  // moto as S3 and KMS.
  const motoUrl = `http://127.0.0.1:${mport}`;
  start('moto_server', ['-H', '127.0.0.1', '-p', String(mport)]);
  await until('moto_server', async () => (await fetch(`${motoUrl}/moto-api/`)).ok || true);
  const common = { region: REGION, endpoint: motoUrl, credentials: { accessKeyId: 'testing', secretAccessKey: 'testing' } };
  await new S3Client({ ...common, forcePathStyle: true }).send(new CreateBucketCommand({ Bucket: 'bench', CreateBucketConfiguration: { LocationConstraint: REGION } }));
  const kmsKeyId = (await new KMSClient(common).send(new CreateKeyCommand({}))).KeyMetadata.KeyId;

  // A minimal IMDSv2 for the instance id.
  imdsServer = http.createServer((req, res) => {
    if (req.method === 'PUT') return res.end('token');
    if (req.url.endsWith('instance-identity/document')) {
      return res.end(JSON.stringify({ instanceId: 'i-0be0c000000000000', region: REGION, availabilityZone: `${REGION}a`, instanceType: 'm7i.large', privateIp: '10.0.0.1' }));
    }
    res.statusCode = 404;
    res.end();
  });
  await new Promise((r) => imdsServer.listen(iport, '127.0.0.1', r));

  const root = path.join(tmp, 'root');
  fs.mkdirSync(path.join(root, 'etc/zdt-agent'), { recursive: true });
  fs.mkdirSync(path.join(root, 'etc/kubernetes/pki/etcd'), { recursive: true });
  for (const f of ['ca.crt', 'ca.key', 'sa.key', 'sa.pub', 'etcd/ca.crt', 'etcd/ca.key']) fs.writeFileSync(path.join(root, 'etc/kubernetes/pki', f), randomBytes(1700));
  fs.writeFileSync(
    path.join(root, 'etc/zdt-agent/config.yaml'),
    [
      'cluster: { name: bench }',
      "node: { role: controller, controllerIndex: '00' }",
      `etcd: { clientUrl: '${etcdUrl}', backup: { bucket: bench, kmsKeyId: '${kmsKeyId}', retention: { hourly: 100 }, partSizeMiB: ${PART_MIB}, concurrency: ${CONCURRENCY} } }`,
      `aws: { region: ${REGION}, endpoint: '${motoUrl}', s3ForcePathStyle: true, imdsEndpoint: 'http://127.0.0.1:${iport}', requestTimeoutMs: 120000 }`,
      'log: { level: warn }',
    ].join('\n'),
  );

  const agent = [];
  const save = [];
  const cp = [];
  let rssKb = 'n/a';
  let partCount = '?';
  const snapFile = path.join(tmp, 'snapshot.db');
  for (let i = 0; i < RUNS; i++) {
    const useTime = fs.existsSync('/usr/bin/time');
    const a = useTime
      ? await timed('/usr/bin/time', ['-f', 'RSS_KB=%M', BIN, '--root', root, 'etcd', 'backup'])
      : await timed(BIN, ['--root', root, 'etcd', 'backup']);
    agent.push(a.ms);
    rssKb = /RSS_KB=(\d+)/.exec(a.stderr)?.[1] ?? rssKb;
    partCount = String(Math.ceil(dbBytes / (PART_MIB * 1048576)));
    await sleep(1100); // backup keys are per second
    save.push((await timed('etcdctl', [`--endpoints=${etcdUrl}`, 'snapshot', 'save', snapFile], { ETCDCTL_API: '3' })).ms);
    cp.push(
      (await timed('aws', ['s3', 'cp', snapFile, `s3://bench/baseline/${i}.db`, '--endpoint-url', motoUrl, '--sse', 'aws:kms', '--sse-kms-key-id', kmsKeyId, '--only-show-errors'])).ms,
    );
    fs.rmSync(snapFile, { force: true });
  }
  const agentMs = median(agent);
  const baseMs = median(save.map((s, i) => s + cp[i]));
  const mibs = (ms) => (dbMiB / (ms / 1000)).toFixed(1);
  console.log(`etcd database: ${dbMiB.toFixed(0)} MiB (${n} values of 1 MiB), etcd 3.4, S3 = moto_server on loopback, SSE-KMS, ${RUNS} runs interleaved (median)`);
  console.log('');
  console.log('| path | wall time | MiB/s | temporary disk |');
  console.log('|---|---|---|---|');
  console.log(`| zdt-agent etcd backup (gRPC snapshot stream -> tar -> ${partCount} x ${PART_MIB} MiB parts, ${CONCURRENCY} at once, SHA-256, HeadObject verify) | ${(agentMs / 1000).toFixed(2)} s | ${mibs(agentMs)} | none |`);
  console.log(`| etcdctl snapshot save | ${(median(save) / 1000).toFixed(2)} s | ${mibs(median(save))} | ${dbMiB.toFixed(0)} MiB |`);
  console.log(`| aws s3 cp (of that file) | ${(median(cp) / 1000).toFixed(2)} s | ${mibs(median(cp))} | |`);
  console.log(`| etcdctl snapshot save + aws s3 cp | ${(baseMs / 1000).toFixed(2)} s | ${mibs(baseMs)} | ${dbMiB.toFixed(0)} MiB |`);
  console.log('');
  console.log(`ratio (etcdctl + aws s3 cp) / zdt-agent: ${(baseMs / agentMs).toFixed(2)}x (target >= 1.5x)`);
  console.log(`zdt-agent peak RSS: ${rssKb === 'n/a' ? 'n/a' : `${(Number(rssKb) / 1024).toFixed(0)} MB`}`);
  console.log(`runs (s): agent ${agent.map((x) => (x / 1000).toFixed(2)).join(' ')}; save ${save.map((x) => (x / 1000).toFixed(2)).join(' ')}; cp ${cp.map((x) => (x / 1000).toFixed(2)).join(' ')}`);
} finally {
  imdsServer?.close();
  for (const c of children) if (c.child.exitCode === null) c.child.kill('SIGTERM');
  await sleep(500);
  for (const c of children) if (c.child.exitCode === null) c.child.kill('SIGKILL');
  fs.rmSync(tmp, { recursive: true, force: true });
}
