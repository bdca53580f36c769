#!/usr/bin/env node
/**
 * Emergency-backup speed and cost: `zdt-agent etcd backup` (the built binary: gRPC snapshot
 * stream -> tar -> SSE-KMS multipart upload with SHA-256 part checksums -> HeadObject verify)
 * against the usual two steps, `etcdctl snapshot save` to a file and `aws s3 cp` of that file,
 * on the same testbed: Debian's etcd 3.4, S3 = MinIO (checks every part's SHA-256, as S3 does)
 * and moto_server, both on loopback, runs interleaved. Then the database grows to --big-mib
 * (2 GiB) and the agent backs it up once more on MinIO, under `etcd.backup.timeout: 60` (the
 * default emergency window, terminate.backupTimeout): it must finish and verify inside it.
 *
 * Prints wall times (median of the runs), MiB/s, the ratio, the agent's CPU (user + system of
 * its process, from /usr/bin/time) and its peak RSS; the CPU per GiB is the slope between the
 * small and the big database (what each further GiB costs; the fixed start-up cost apart).
 * Never asserts. Hands its rows to `make bench`'s report (bench/lib/report.mjs).
 *
 *   node bench/etcd-backup.mjs [--mib=256] [--moto-mib=256] [--runs=3] [--big-mib=2048] [--no-big]
 *                              [--part-mib=N] [--concurrency=N]   (default: the config defaults)
 *
 * Needs: dist/zdt-agent (make binary), /usr/bin/etcd and etcdctl, /usr/bin/time, MinIO in the
 * testbed's bin cache (make testbed-deps), moto_server, aws (CLI v1 or v2).
 */
import { spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { CreateBucketCommand, S3Client } from '@aws-sdk/client-s3';
import { CreateKeyCommand, KMSClient } from '@aws-sdk/client-kms';
import { importTs } from './lib/bundle.mjs';
import { report } from './lib/report.mjs';

const ROOT = path.resolve(import.meta.dirname, '..');
const BIN = path.join(ROOT, 'dist/zdt-agent');
const { values } = parseArgs({
  options: {
    mib: { type: 'string', default: '256' },
    'moto-mib': { type: 'string' },
    runs: { type: 'string', default: '3' },
    'big-mib': { type: 'string', default: '2048' },
    'no-big': { type: 'boolean', default: false },
    'part-mib': { type: 'string' },
    concurrency: { type: 'string' },
  },
});
const SMALL_MIB = Number(values.mib);
const MOTO_MIB = Number(values['moto-mib'] ?? values.mib);
const BIG_MIB = values['no-big'] ? 0 : Number(values['big-mib']);
const RUNS = Math.max(1, Number(values.runs));
const WINDOW_S = 60; // terminate.backupTimeout's default
const REGION = 'eu-central-1';
const MIB = 1024 * 1024;
const GIB = 1024 * MIB;

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const fmtS = (ms) => `${(ms / 1000).toFixed(2)} s`;

/** `aws` as it really runs: a pyenv shim on PATH re-executes itself through pyenv (about 75 ms a call). */
function realAws() {
  const onPath = spawnSync('sh', ['-c', 'command -v aws'], { encoding: 'utf8' }).stdout.trim();
  if (!onPath) throw new Error('aws (the AWS CLI) is not on PATH');
  if (onPath.includes('/shims/')) {
    const r = spawnSync('pyenv', ['which', 'aws'], { encoding: 'utf8' });
    if (r.status === 0 && r.stdout.trim()) return { file: r.stdout.trim(), how: `\`pyenv which aws\` (PATH has the shim ${onPath})` };
  }
  return { file: fs.realpathSync(onPath), how: 'PATH' };
}

/** Runs a command to its end and times it; with `measure`, under /usr/bin/time for its CPU and peak RSS. */
function timed(cmd, args, env, measure = false) {
  return new Promise((resolve, reject) => {
    const file = measure ? '/usr/bin/time' : cmd;
    const argv = measure ? ['-f', 'ZDT_TIME %U %S %M', cmd, ...args] : args;
    const t = process.hrtime.bigint();
    const child = spawn(file, argv, { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c) => (stdout += c));
    child.stderr.on('data', (c) => (stderr = (stderr + c).slice(-8000)));
    child.on('error', reject);
    child.on('exit', (code) => {
      const ms = Number(process.hrtime.bigint() - t) / 1e6;
      if (code !== 0) return reject(new Error(`${cmd} ${args.join(' ')} failed (${code}): ${stderr.slice(-2000)}`));
      const m = /ZDT_TIME ([\d.]+) ([\d.]+) (\d+)/.exec(stderr);
      resolve({ ms, stdout, user: m ? Number(m[1]) : NaN, sys: m ? Number(m[2]) : NaN, rssMb: m ? Number(m[3]) / 1024 : NaN });
    });
  });
}

const { startMinio, startMoto, freePort } = await importTs('etcd-backup', [
  "export { startMinio } from './test/testbed/minio.ts';",
  "export { startMoto } from './test/testbed/moto.ts';",
  "export { freePort } from './test/testbed/ports.ts';",
]);

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'zdt-bench-etcd-'));
const stops = [];
let etcd;
try {
  for (const f of [BIN, '/usr/bin/time', '/usr/bin/etcd']) if (!fs.existsSync(f)) throw new Error(`${f} is missing${f === BIN ? ": run 'make binary' first" : ''}`);
  const aws = realAws();

  // etcd with room for the big database.
  const [cport, pport, iport] = [await freePort(), await freePort(), await freePort()];
  const etcdUrl = `http://127.0.0.1:${cport}`;
  fs.mkdirSync(path.join(tmp, 'etcd'), { mode: 0o700 });
  etcd = spawn('/usr/bin/etcd', [
    '--name', 'etcd00', '--data-dir', path.join(tmp, 'etcd'),
    '--listen-client-urls', etcdUrl, '--advertise-client-urls', etcdUrl,
    '--listen-peer-urls', `http://127.0.0.1:${pport}`, '--initial-advertise-peer-urls', `http://127.0.0.1:${pport}`,
    '--initial-cluster', `etcd00=http://127.0.0.1:${pport}`, '--quota-backend-bytes', String(8 * GIB),
  ], { stdio: 'ignore' });
  for (let t = Date.now(); ; await sleep(200)) {
    if ((await fetch(`${etcdUrl}/health`).then((r) => r.json()).catch(() => ({}))).health === 'true') break;
    if (Date.now() - t > 60_000) throw new Error('etcd did not come up');
  }
  const dbBytes = async () => Number(JSON.parse(await (await fetch(`${etcdUrl}/v3/maintenance/status`, { method: 'POST', body: '{}' })).text()).dbSize);
  let values1MiB = 0;
  /** Puts 1 MiB values (random: incompressible) until the database holds `mib`. */
  const fill = async (mib) => {
    while ((await dbBytes()) < mib * MIB) {
      await Promise.all(
        Array.from({ length: 4 }, () =>
          fetch(`${etcdUrl}/v3/kv/put`, { method: 'POST', body: JSON.stringify({ key: Buffer.from(`/registry/bench/${values1MiB++}`).toString('base64'), value: randomBytes(MIB).toString('base64') }) }).then((r) => r.text()),
        ),
      );
    }
    return (await dbBytes()) / MIB;
  };

  // The S3 servers: MinIO (S3 only; its static KMS key) and moto (S3 and KMS).
  const minio = await startMinio({ region: REGION });
  stops.push(() => minio.stop());
  const moto = await startMoto();
  stops.push(() => moto.stop());
  await new S3Client({ region: REGION, endpoint: minio.endpoint, forcePathStyle: true, credentials: { accessKeyId: minio.accessKeyId, secretAccessKey: minio.secretAccessKey } }).send(
    new CreateBucketCommand({ Bucket: 'bench' }),
  );
  const motoCommon = { region: REGION, endpoint: moto.endpoint, credentials: { accessKeyId: 'testing', secretAccessKey: 'testing' } };
  await new S3Client({ ...motoCommon, forcePathStyle: true }).send(new CreateBucketCommand({ Bucket: 'bench', CreateBucketConfiguration: { LocationConstraint: REGION } }));
  const motoKey = (await new KMSClient(motoCommon).send(new CreateKeyCommand({}))).KeyMetadata.KeyId;
  const servers = [
    { name: 'MinIO', endpoint: minio.endpoint, kmsKeyId: minio.kmsKeyId, mib: SMALL_MIB, creds: { AWS_ACCESS_KEY_ID: minio.accessKeyId, AWS_SECRET_ACCESS_KEY: minio.secretAccessKey } },
    { name: 'moto', endpoint: moto.endpoint, kmsKeyId: motoKey, mib: MOTO_MIB, creds: { AWS_ACCESS_KEY_ID: 'testing', AWS_SECRET_ACCESS_KEY: 'testing' } },
  ];

  // A minimal IMDSv2 for the instance id.
  const imds = http.createServer((req, res) => {
    if (req.method === 'PUT') return res.end('token');
    if (req.url.endsWith('instance-identity/document')) {
      return res.end(JSON.stringify({ instanceId: 'i-0be0c000000000000', region: REGION, availabilityZone: `${REGION}a`, instanceType: 'm7i.large', privateIp: '10.0.0.1' }));
    }
    res.statusCode = 404;
    res.end();
  });
  await new Promise((r) => imds.listen(iport, '127.0.0.1', r));
  stops.push(() => new Promise((r) => imds.close(r)));

  /** A node root whose config points the agent at `s`. */
  const rootFor = (s) => {
    const root = path.join(tmp, `root-${s.name}`);
    fs.mkdirSync(path.join(root, 'etc/zdt-agent'), { recursive: true });
    fs.mkdirSync(path.join(root, 'etc/kubernetes/pki/etcd'), { recursive: true });
    for (const f of ['ca.crt', 'ca.key', 'sa.key', 'sa.pub', 'etcd/ca.crt', 'etcd/ca.key']) fs.writeFileSync(path.join(root, 'etc/kubernetes/pki', f), randomBytes(1700));
    const tuning = [values['part-mib'] && `partSizeMiB: ${values['part-mib']}`, values.concurrency && `concurrency: ${values.concurrency}`].filter(Boolean).join(', ');
    fs.writeFileSync(
      path.join(root, 'etc/zdt-agent/config.yaml'),
      [
        'cluster: { name: bench }',
        "node: { role: controller, controllerIndex: '00' }",
        // The emergency window (terminate.backupTimeout's default) as the limit of every run.
        `etcd: { clientUrl: '${etcdUrl}', backup: { bucket: bench, kmsKeyId: '${s.kmsKeyId}', timeout: ${WINDOW_S}, retention: { hourly: 1000 }${tuning ? `, ${tuning}` : ''} } }`,
        `aws: { region: ${REGION}, endpoint: '${s.endpoint}', s3ForcePathStyle: true, imdsEndpoint: 'http://127.0.0.1:${iport}', requestTimeoutMs: 120000 }`,
        'log: { level: warn }',
      ].join('\n'),
    );
    return root;
  };
  const snapFile = path.join(tmp, 'snapshot.db');
  const env = (s) => ({ ...s.creds, AWS_DEFAULT_REGION: REGION, AWS_REGION: REGION });
  const agentRun = async (s) => {
    const r = await timed(BIN, ['--root', rootFor(s), 'etcd', 'backup'], env(s), true);
    await sleep(1100); // backup keys are per second
    return r;
  };
  const baselineRun = async (s, i) => {
    const save = (await timed('etcdctl', [`--endpoints=${etcdUrl}`, 'snapshot', 'save', snapFile], { ETCDCTL_API: '3' })).ms;
    const cp = (
      await timed(aws.file, ['s3', 'cp', snapFile, `s3://bench/baseline/${i}.db`, '--endpoint-url', s.endpoint, '--sse', 'aws:kms', '--sse-kms-key-id', s.kmsKeyId, '--only-show-errors'], env(s))
    ).ms;
    fs.rmSync(snapFile, { force: true });
    return { save, cp };
  };

  const rows = [];
  const results = {};
  const load = () => os.loadavg()[0].toFixed(1);
  const loads = [load()];
  for (const s of servers.sort((a, b) => a.mib - b.mib)) {
    const dbMiB = await fill(s.mib);
    const agent = [];
    const base = [];
    for (let i = 0; i < RUNS; i++) {
      agent.push(await agentRun(s));
      base.push(await baselineRun(s, i));
      loads.push(load());
    }
    const agentMs = median(agent.map((a) => a.ms));
    const baseMs = median(base.map((b) => b.save + b.cp));
    const cpu = median(agent.map((a) => a.user + a.sys));
    const r = { dbMiB, agentMs, baseMs, saveMs: median(base.map((b) => b.save)), cpMs: median(base.map((b) => b.cp)), cpu, user: median(agent.map((a) => a.user)), sys: median(agent.map((a) => a.sys)), rssMb: Math.max(...agent.map((a) => a.rssMb)), agent, base };
    results[s.name] = r;
    const mibs = (ms) => (dbMiB / (ms / 1000)).toFixed(1);
    console.log(`\n${s.name}: etcd database ${dbMiB.toFixed(0)} MiB (etcd 3.4), SSE-KMS, ${RUNS} runs interleaved (median)`);
    console.log('| path | wall time | MiB/s | temporary disk |');
    console.log('|---|---|---|---|');
    console.log(`| zdt-agent etcd backup | ${fmtS(agentMs)} | ${mibs(agentMs)} | none |`);
    console.log(`| etcdctl snapshot save | ${fmtS(r.saveMs)} | ${mibs(r.saveMs)} | ${dbMiB.toFixed(0)} MiB |`);
    console.log(`| aws s3 cp (of that file) | ${fmtS(r.cpMs)} | ${mibs(r.cpMs)} | |`);
    console.log(`| etcdctl snapshot save + aws s3 cp | ${fmtS(baseMs)} | ${mibs(baseMs)} | ${dbMiB.toFixed(0)} MiB |`);
    console.log(`ratio (etcdctl + aws s3 cp) / zdt-agent: ${(baseMs / agentMs).toFixed(2)}x (target >= 1.6x)`);
    console.log(`zdt-agent CPU: ${cpu.toFixed(2)} s (user ${r.user.toFixed(2)}, system ${r.sys.toFixed(2)}), ${(cpu / (dbMiB / 1024)).toFixed(2)} s per GiB including start-up; peak RSS ${r.rssMb.toFixed(0)} MB`);
    console.log(`runs (s): agent ${agent.map((a) => (a.ms / 1000).toFixed(2)).join(' ')}; save ${base.map((b) => (b.save / 1000).toFixed(2)).join(' ')}; cp ${base.map((b) => (b.cp / 1000).toFixed(2)).join(' ')}`);
    const note = `${dbMiB.toFixed(0)} MiB etcd 3.4 database, median of ${RUNS} interleaved runs`;
    rows.push(
      { section: 'Emergency backup', name: `zdt-agent etcd backup, ${s.name}`, value: `${fmtS(agentMs)} (${mibs(agentMs)} MiB/s)`, note },
      { section: 'Emergency backup', name: `etcdctl snapshot save + aws s3 cp, ${s.name}`, value: `${fmtS(baseMs)} (${fmtS(r.saveMs)} + ${fmtS(r.cpMs)})`, note: `${note}; aws: ${aws.file}` },
      { section: 'Emergency backup', name: `speed-up over etcdctl + aws s3 cp, ${s.name}`, value: `${(baseMs / agentMs).toFixed(2)}x`, target: '>= 1.6x', met: baseMs / agentMs >= 1.6, note },
    );
  }

  let big;
  if (BIG_MIB > 0) {
    const s = servers.find((x) => x.name === 'MinIO');
    const dbMiB = await fill(BIG_MIB);
    loads.push(load());
    const a = await agentRun(s).catch((err) => ({ failed: err.message }));
    big = { dbMiB, ...a };
    if (a.failed) console.log(`\nMinIO, ${dbMiB.toFixed(0)} MiB: the backup FAILED: ${a.failed.slice(0, 500)}`);
    else {
      console.log(`\nMinIO, ${dbMiB.toFixed(0)} MiB (etcd.backup.timeout: ${WINDOW_S}): backed up and verified in ${fmtS(a.ms)}, ${(dbMiB / (a.ms / 1000)).toFixed(1)} MiB/s`);
      console.log(`zdt-agent CPU: ${(a.user + a.sys).toFixed(2)} s (user ${a.user.toFixed(2)}, system ${a.sys.toFixed(2)}); peak RSS ${a.rssMb.toFixed(0)} MB`);
    }
    rows.push({
      section: 'Emergency backup',
      name: `zdt-agent etcd backup of ${dbMiB.toFixed(0)} MiB, MinIO`,
      value: a.failed ? 'failed' : `${fmtS(a.ms)} (${(dbMiB / (a.ms / 1000)).toFixed(1)} MiB/s)`,
      target: `<= ${WINDOW_S} s, verified`,
      met: !a.failed && a.ms <= WINDOW_S * 1000,
      note: `one run, etcd.backup.timeout ${WINDOW_S} s`,
    });
  }

  // CPU per GiB: the slope between the small and the big database on MinIO (start-up apart);
  // without the big run, all of the small run's CPU over its size.
  const small = results.MinIO;
  const perGiB = (f) => (big && !big.failed ? (f(big) - f(small)) / ((big.dbMiB - small.dbMiB) / 1024) : f(small) / (small.dbMiB / 1024));
  const cpuPerGiB = perGiB((x) => x.user + x.sys);
  const fixed = big && !big.failed ? small.cpu - cpuPerGiB * (small.dbMiB / 1024) : NaN;
  const how = big && !big.failed ? `slope between ${small.dbMiB.toFixed(0)} MiB and ${big.dbMiB.toFixed(0)} MiB on MinIO` : `all CPU of the ${small.dbMiB.toFixed(0)} MiB runs on MinIO, start-up included`;
  const rss = Math.max(...Object.values(results).map((r) => r.rssMb), big && !big.failed ? big.rssMb : 0);
  console.log(`\nzdt-agent CPU per GiB of snapshot (user + system): ${cpuPerGiB.toFixed(2)} s (user ${perGiB((x) => x.user).toFixed(2)}, system ${perGiB((x) => x.sys).toFixed(2)}; ${how}${Number.isNaN(fixed) ? '' : `; fixed ${fixed.toFixed(2)} s`}) (target <= 1.5 s)`);
  console.log(`zdt-agent peak RSS over all runs: ${rss.toFixed(0)} MB (target <= 150 MB)`);
  console.log(`aws CLI: ${aws.file} (${aws.how}); load average (1 min) during the runs: ${loads.join(' ')}; ${os.cpus().length} CPUs`);
  rows.push(
    { section: 'Emergency backup', name: 'zdt-agent CPU per GiB of snapshot (user + system)', value: `${cpuPerGiB.toFixed(2)} s`, target: '<= 1.5 s', met: cpuPerGiB <= 1.5, note: `${how}; user ${perGiB((x) => x.user).toFixed(2)} s, system ${perGiB((x) => x.sys).toFixed(2)} s` },
    { section: 'Emergency backup', name: 'zdt-agent peak RSS of a backup', value: `${rss.toFixed(0)} MB`, target: '<= 150 MB', met: rss <= 150, note: 'largest over all runs and sizes' },
  );
  report('etcd-backup', rows);
} finally {
  for (const stop of stops.reverse()) await stop().catch(() => undefined);
  if (etcd && etcd.exitCode === null) {
    etcd.kill('SIGTERM');
    await new Promise((r) => etcd.once('exit', r));
  }
  fs.rmSync(tmp, { recursive: true, force: true });
}
