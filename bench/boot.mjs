#!/usr/bin/env node
/**
 * The agent's own boot overhead: `dist/zdt-agent boot` on a controller 00 (the longest boot:
 * etcd volume attach, blkid, mkfs, mount, the version policy, kubeadm init) against the
 * testbed (moto behind the fidelity proxy, AEMM for IMDS, a real loop device as the etcd
 * volume, the recording apk and kubeadm stand-ins), then a second boot on the booted node
 * (the fast path: completed in this kernel boot, config unchanged) and a `boot --force` (every
 * phase inspects the booted node again).
 *
 * Overhead = wall time minus the time the agent waited on something outside it: every AWS,
 * IMDS and Kubernetes API request (timed by small proxies in this process) and every subprocess (the real
 * blkid/mkfs/mount and the stand-ins, from the agent's own `ran … ms=` log lines), merged as
 * intervals so that parallel requests count once. Node's own start-up is the agent's, so it
 * is in the overhead. Peak RSS and CPU time (user + system, the agent and its subprocesses)
 * from /usr/bin/time ('n/a' without it).
 *
 * Targets: overhead at most 300 ms per boot, the second boot under 100 ms wall. Prints, never asserts.
 *
 *   node bench/boot.mjs [--runs=5] [--bin=dist/zdt-agent]
 *
 * --bin measures another build of the binary (e.g. one of an older commit, for a before/after).
 * ZDT_BENCH_PROFILE=DIR writes a V8 CPU profile of one boot per node (ZDT_BENCH_PROFILE_WHICH:
 * first, second (default) or forced) into DIR; ZDT_BENCH_VERBOSE=1 prints each boot's log;
 * ZDT_BENCH_NODE_OPTIONS passes V8/Node flags to the binary (NODE_OPTIONS), for experiments.
 *
 * Needs: dist/zdt-agent (make binary), moto_server, ec2-metadata-mock, etcd and kube-apiserver
 * (testbed), root (loop devices).
 */
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import * as esbuild from 'esbuild';
import { CreateVolumeCommand, DescribeImagesCommand, EC2Client, RunInstancesCommand } from '@aws-sdk/client-ec2';
import { report } from './lib/report.mjs';

const ROOT = path.resolve(import.meta.dirname, '..');
const { values } = parseArgs({ options: { runs: { type: 'string', default: '5' }, bin: { type: 'string' } } });
const BIN = path.resolve(values.bin ?? path.join(ROOT, 'dist/zdt-agent'));
const RUNS = Math.max(1, Number(values.runs));
const REGION = 'eu-central-1';
const AZ = `${REGION}a`;
const CREDS = { AWS_ACCESS_KEY_ID: 'testing', AWS_SECRET_ACCESS_KEY: 'testing' };
const TIME = fs.existsSync('/usr/bin/time') ? '/usr/bin/time' : undefined;

if (!fs.existsSync(BIN)) {
  console.error(`bench/boot: ${BIN} is missing; run 'make binary'`);
  process.exit(1);
}
// A build from before `boot --force` (--bin, for a before/after) runs its plain boot in that row.
const HAS_FORCE = spawnSync(BIN, ['boot', '--help'], { encoding: 'utf8' }).stdout.includes('--force');

/** The testbed helpers are TypeScript: bundled once into .cache so their imports resolve from node_modules. */
async function loadTestbed() {
  const out = path.join(ROOT, '.cache/bench-boot-testbed.mjs');
  fs.mkdirSync(path.dirname(out), { recursive: true });
  await esbuild.build({
    stdin: {
      contents: ['moto', 'fidelity-proxy', 'imds', 'kube', 'loop', 'root', 'ports'].map((m) => `export * from './test/testbed/${m}.ts';`).join('\n'),
      resolveDir: ROOT,
      loader: 'ts',
    },
    outfile: out,
    bundle: true,
    platform: 'node',
    format: 'esm',
    packages: 'external',
    logLevel: 'warning',
  });
  return import(out);
}

/** An HTTP pass-through that records when each request was in flight. */
async function timingProxy(tb, target) {
  const intervals = [];
  const t = new URL(target);
  const server = http.createServer((req, res) => {
    const start = performance.timeOrigin + performance.now();
    const up = http.request({ host: t.hostname, port: t.port, method: req.method, path: req.url, headers: req.headers }, (r) => {
      res.writeHead(r.statusCode ?? 502, r.headers);
      r.pipe(res);
      r.on('end', () => intervals.push([start, performance.timeOrigin + performance.now()]));
    });
    up.on('error', () => res.writeHead(502).end());
    req.pipe(up);
  });
  const port = await tb.freePort();
  await new Promise((r) => server.listen(port, '127.0.0.1', r));
  return {
    endpoint: `http://127.0.0.1:${port}`,
    take: () => intervals.splice(0),
    stop: () => new Promise((r) => server.close(() => r()).closeAllConnections()),
  };
}

/**
 * A TCP pass-through for the Kubernetes API (TLS, so requests cannot be read): on each
 * connection an exchange runs from the first client bytes to the last server bytes before the
 * client sends again. The client's own work between exchanges (TLS handshake crypto, building
 * the next request) stays outside the intervals.
 */
async function tcpTimingProxy(tb, targetPort) {
  const intervals = [];
  const now = () => performance.timeOrigin + performance.now();
  const server = net.createServer((client) => {
    let start;
    let lastServer;
    const close = () => {
      if (start !== undefined) intervals.push([start, lastServer ?? now()]);
      start = lastServer = undefined;
    };
    const up = net.connect(targetPort, '127.0.0.1');
    // Without TCP_NODELAY a small second segment of a response waits here for the agent's
    // delayed ACK (40 ms), time this proxy would have counted as the agent's.
    client.setNoDelay(true);
    up.setNoDelay(true);
    client.on('data', (d) => {
      if (start !== undefined && lastServer !== undefined) close();
      start ??= now();
      up.write(d);
    });
    up.on('data', (d) => {
      lastServer = now();
      client.write(d);
    });
    client.on('close', () => {
      close();
      up.destroy();
    });
    up.on('close', () => client.destroy());
    client.on('error', () => up.destroy());
    up.on('error', () => client.destroy());
  });
  const port = await tb.freePort();
  await new Promise((r) => server.listen(port, '127.0.0.1', r));
  return { port, take: () => intervals.splice(0), stop: () => new Promise((r) => server.close(() => r())) };
}

/** Total length of the union of [start, end] intervals. */
function unionMs(intervals) {
  const sorted = [...intervals].sort((a, b) => a[0] - b[0]);
  let total = 0;
  let cur;
  for (const [s, e] of sorted) {
    if (!cur || s > cur[1]) {
      if (cur) total += cur[1] - cur[0];
      cur = [s, e];
    } else cur[1] = Math.max(cur[1], e);
  }
  if (cur) total += cur[1] - cur[0];
  return total;
}

/** unionMs of the intervals clipped to [from, to]. */
const unionWithin = (intervals, from, to) => unionMs(intervals.map(([s, e]) => [Math.max(s, from), Math.min(e, to)]).filter(([s, e]) => e > s));

/**
 * The first boot cut at its log lines: start-up (process start to the first phase), each phase
 * (its `<phase>: start` to the next one's), the end (the last phase to the process exit), each
 * with its own wall and overhead.
 */
function segments(logFile, fromOffset, run, intervals) {
  const lines = fs.readFileSync(logFile, 'utf8').slice(fromOffset).split('\n').filter(Boolean).map((l) => JSON.parse(l));
  const marks = [['start-up', run.start]];
  for (const l of lines) {
    const m = /^([a-z-]+): start$/.exec(l.msg);
    if (m) marks.push([m[1], Date.parse(l.ts)]);
    else if (l.msg.startsWith('boot finished')) marks.push(['finish + exit', Date.parse(l.ts)]);
  }
  return marks.map(([name, from], i) => {
    const to = i + 1 < marks.length ? marks[i + 1][1] : run.end;
    return { name, wall: to - from, overhead: to - from - unionWithin(intervals, from, to) };
  });
}

/** Subprocess intervals from the agent's JSON log: `ran` lines end at ts and lasted ms. */
function execIntervals(logFile, fromOffset) {
  const text = fs.readFileSync(logFile, 'utf8').slice(fromOffset);
  const out = [];
  for (const line of text.split('\n')) {
    if (!line.includes('"msg":"ran"')) continue;
    const r = JSON.parse(line);
    const end = Date.parse(r.ts);
    out.push([end - r.ms, end]);
  }
  return out;
}

/**
 * Runs the binary; with `profileDir`, under --cpu-prof (through NODE_OPTIONS, which the single
 * executable honours, so the profile is of the binary with its code cache).
 */
function runAgent(args, env, profileDir) {
  return new Promise((resolve, reject) => {
    const rssFile = path.join(os.tmpdir(), `zdt-bench-rss-${process.pid}`);
    const cmd = [BIN, ...args];
    const nodeOptions = [process.env.ZDT_BENCH_NODE_OPTIONS, profileDir && `--cpu-prof --cpu-prof-dir=${profileDir}`].filter(Boolean).join(' ');
    if (nodeOptions) env = { ...env, NODE_OPTIONS: nodeOptions };
    const [file, argv] = TIME ? [TIME, ['-f', '%M %U %S', '-o', rssFile, ...cmd]] : [cmd[0], cmd.slice(1)];
    const start = performance.timeOrigin + performance.now();
    const child = spawn(file, argv, { env, stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (c) => (stderr = (stderr + c).slice(-8000)));
    child.on('error', reject);
    child.on('exit', (code) => {
      const end = performance.timeOrigin + performance.now();
      if (code !== 0) {
        fs.rmSync(rssFile, { force: true });
        return reject(new Error(`zdt-agent ${args.join(' ')} exited ${code}:\n${stderr}`));
      }
      let rssMb;
      let cpuMs;
      if (TIME) {
        const [kb, user, sys] = fs.readFileSync(rssFile, 'utf8').trim().split('\n').pop().split(' ').map(Number);
        rssMb = kb / 1024;
        cpuMs = (user + sys) * 1000;
        fs.rmSync(rssFile, { force: true });
      }
      resolve({ start, end, wall: end - start, rssMb, cpuMs });
    });
  });
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const cleanups = [];

async function main() {
  const tb = await loadTestbed();
  const moto = await tb.startMoto();
  cleanups.push(() => moto.stop());
  const proxy = await tb.startFidelityProxy({ target: moto.endpoint });
  cleanups.push(() => proxy.stop());
  const awsTiming = await timingProxy(tb, proxy.endpoint);
  cleanups.push(() => awsTiming.stop());
  const ec2 = new EC2Client({ region: REGION, endpoint: proxy.endpoint, credentials: { accessKeyId: 'testing', secretAccessKey: 'testing' } });
  // controller 00 grants nodes their self-delete with kubeadm's admin.conf: a real API server
  // (the kubeadm stand-in copies the admin kubeconfig, pointed at the timing proxy, into the root).
  const kube = await tb.startKube();
  cleanups.push(() => kube.stop());
  const kubeTiming = await tcpTimingProxy(tb, new URL(kube.server).port);
  cleanups.push(() => kubeTiming.stop());
  const adminConf = path.join(kube.dir, 'admin-via-proxy.conf');
  fs.writeFileSync(adminConf, fs.readFileSync(kube.adminKubeconfig, 'utf8').replaceAll(kube.server, `https://127.0.0.1:${kubeTiming.port}`), { mode: 0o600 });
  const imageId = (await ec2.send(new DescribeImagesCommand({}))).Images[0].ImageId;

  const rows = { first: [], second: [], forced: [] };
  const firstSegments = [];
  const LABELS = { first: 'first boot ', second: 'second boot', forced: '  --force  ' };
  for (let i = 0; i < RUNS; i++) {
    const cluster = `bench${i}-${process.pid}`;
    const root = await tb.makeTempRoot();
    const loop = await tb.createLoopDevice(64);
    const local = [];
    try {
      const inst = (await ec2.send(new RunInstancesCommand({ ImageId: imageId, InstanceType: 'm5.large', MinCount: 1, MaxCount: 1, Placement: { AvailabilityZone: AZ } }))).Instances[0];
      const vol = await ec2.send(
        new CreateVolumeCommand({ AvailabilityZone: AZ, Size: 1, TagSpecifications: [{ ResourceType: 'volume', Tags: [{ Key: 'zdt:cluster', Value: cluster }, { Key: 'zdt:role', Value: 'etcd' }] }] }),
      );
      await root.linkVolume(vol.VolumeId, loop.device);
      const imds = await tb.startImds({ instanceId: inst.InstanceId, region: REGION, availabilityZone: AZ, instanceType: 'm5.large', privateIp: inst.PrivateIpAddress ?? '10.0.0.10', tags: { Name: `${cluster}-controller-00` } });
      local.push(() => imds.stop());
      const imdsTiming = await timingProxy(tb, imds.endpoint);
      local.push(() => imdsTiming.stop());
      const config = [
        `cluster: { name: ${cluster}, kubernetesVersion: '1.34.X' }`,
        `node: { role: controller, controllerIndex: '00' }`,
        `aws: { region: ${REGION}, endpoint: '${awsTiming.endpoint}', imdsEndpoint: '${imdsTiming.endpoint}', s3ForcePathStyle: true }`,
        `log: { format: json }`,
      ].join('\n');
      fs.mkdirSync(root.at('/etc/zdt-agent'), { recursive: true });
      fs.writeFileSync(root.at('/etc/zdt-agent/config.yaml'), `${config}\n`);
      // The node's kernel boot id, under the root like every path: the second boot's fast path
      // compares it with the one the first boot recorded.
      fs.mkdirSync(root.at('/proc/sys/kernel/random'), { recursive: true });
      fs.writeFileSync(root.at('/proc/sys/kernel/random/boot_id'), fs.readFileSync('/proc/sys/kernel/random/boot_id')); // (copyFileSync copies nothing from /proc)
      // (standinPath() of the bundle would point into .cache.)
      // The environment cloud-init gives a boot script, not this machine's: e.g. this sandbox
      // sets NODE_EXTRA_CA_CERTS, which makes the first TLS context cost about 10 ms more.
      const env = {
        HOME: '/root',
        LANG: 'C.UTF-8',
        ...CREDS,
        PATH: `${path.join(ROOT, 'test/testbed/standins')}:${process.env.PATH}`,
        ZDT_RECORD_FILE: path.join(root.dir, 'records.jsonl'),
        ZDT_APK_VERSIONS: '1.34.2-r0,1.34.1-r0',
        ZDT_STANDIN_KUBEADM_ADMIN_CONF: adminConf,
      };
      const logFile = root.at('/var/log/zdt-agent.log');

      // second: the fast path (boot completed in this kernel boot, config unchanged); forced:
      // `boot --force`, every phase inspects the booted node again.
      for (const which of ['first', 'second', 'forced']) {
        awsTiming.take();
        imdsTiming.take();
        kubeTiming.take();
        const offset = fs.existsSync(logFile) ? fs.statSync(logFile).size : 0;
        const args = ['boot', '--root', root.dir, '--log-level', 'info', ...(which === 'forced' && HAS_FORCE ? ['--force'] : [])];
        const r = await runAgent(args, env, which === (process.env.ZDT_BENCH_PROFILE_WHICH ?? 'second') ? process.env.ZDT_BENCH_PROFILE : undefined);
        const intervals = [...awsTiming.take(), ...imdsTiming.take(), ...kubeTiming.take(), ...execIntervals(logFile, offset)].filter(([s]) => s >= r.start - 5);
        const outside = unionMs(intervals);
        rows[which].push({ wall: r.wall, outside, overhead: r.wall - outside, rss: r.rssMb, cpu: r.cpuMs });
        if (which === 'first') firstSegments.push(segments(logFile, offset, r, intervals));
        const fast = fs.readFileSync(logFile, 'utf8').slice(offset).includes('boot already completed in this boot');
        if (HAS_FORCE && fast !== (which === 'second')) console.error(`bench/boot: run ${i + 1}, ${which} boot ${fast ? 'took' : 'did not take'} the fast path`);
        if (process.env.ZDT_BENCH_VERBOSE) {
          const first = JSON.parse(fs.readFileSync(logFile, 'utf8').slice(offset).split('\n')[0]);
          console.log(`${which}: process start -> first log line ${(Date.parse(first.ts) - r.start).toFixed(0)} ms`);
          console.log(fs.readFileSync(logFile, 'utf8').slice(offset));
        }
        if (which === 'first') {
          // What else kubeadm init leaves behind (the stand-in writes admin.conf only).
          for (const f of ['/etc/kubernetes/kubelet.conf', '/etc/kubernetes/manifests/kube-apiserver.yaml']) {
            fs.mkdirSync(path.dirname(root.at(f)), { recursive: true });
            fs.writeFileSync(root.at(f), '# kubeadm\n');
          }
        }
      }
    } finally {
      for (const c of local.reverse()) await c();
      await root.cleanup();
      await loop.detach();
    }
  }
  ec2.destroy();

  const fmt = (ms) => `${ms.toFixed(0).padStart(5)} ms`;
  console.log(`zdt-agent boot on the testbed, controller 00, median of ${RUNS} runs (fresh node each run)`);
  // The best run next to the median: on a shared machine the best is the cost without contention.
  console.log('                 wall (best)       outside  overhead (best)    peak RSS     CPU');
  for (const which of ['first', 'second', 'forced']) {
    const rs = rows[which];
    const col = (key) => `${fmt(median(rs.map((x) => x[key])))} (${Math.min(...rs.map((x) => x[key])).toFixed(0).padStart(4)})`;
    const rss = rs[0].rss === undefined ? '     n/a' : `${median(rs.map((x) => x.rss)).toFixed(1)} MB`;
    const cpu = rs[0].cpu === undefined ? '' : fmt(median(rs.map((x) => x.cpu)));
    console.log(`  ${LABELS[which]}  ${col('wall')}  ${fmt(median(rs.map((x) => x.outside)))}  ${col('overhead')}   ${rss}  ${cpu}`);
  }
  // Where the first boot's overhead goes (medians per segment; the segments' medians need not add up to the total's).
  console.log('first boot by segment (median wall / overhead):');
  for (const [i, seg] of firstSegments[0].entries()) {
    const of = (key) => median(firstSegments.map((run) => run[i]?.[key] ?? 0));
    console.log(`  ${seg.name.padEnd(16)} ${fmt(of('wall'))} / ${fmt(of('overhead'))}`);
  }
  const firstOverhead = median(rows.first.map((x) => x.overhead));
  const secondWall = median(rows.second.map((x) => x.wall));
  console.log(`targets: overhead ≤ 300 ms per boot (${firstOverhead <= 300 ? 'met' : 'NOT met'}: ${firstOverhead.toFixed(0)} ms); second boot < 100 ms (${secondWall < 100 ? 'met' : 'NOT met'}: ${secondWall.toFixed(0)} ms)`);
  console.log('outside = union of AWS/IMDS/Kubernetes API requests and subprocesses (blkid, mkfs, mount, apk, kubeadm, rc-service stand-ins)');
  if (TIME) console.log('CPU = user + system time of the agent and its subprocesses (less sensitive to other load than wall time)');

  const ms = (x) => `${x.toFixed(0)} ms`;
  const of = (which, key) => median(rows[which].map((x) => x[key]));
  const best = (which, key) => Math.min(...rows[which].map((x) => x[key]));
  const how = `median of ${RUNS} runs, a fresh node each run`;
  const rssCpu = (which) => (TIME ? `; peak RSS ${of(which, 'rss').toFixed(1)} MB, CPU ${ms(of(which, 'cpu'))} (agent + subprocesses)` : '');
  report('boot', [
    {
      section: 'Boot',
      name: 'first boot, controller 00: overhead',
      value: ms(firstOverhead),
      target: '≤ 300 ms',
      met: firstOverhead <= 300,
      note: `wall ${ms(of('first', 'wall'))} minus ${ms(of('first', 'outside'))} waiting on AWS, IMDS, the API server and subprocesses; best ${ms(best('first', 'overhead'))}; ${how}${rssCpu('first')}`,
    },
    { section: 'Boot', name: 'second boot (fast path): wall time', value: ms(secondWall), target: '< 100 ms', met: secondWall < 100, note: `best ${ms(best('second', 'wall'))}; ${how}${rssCpu('second')}` },
    {
      section: 'Boot',
      name: 'boot --force on the booted node: overhead',
      value: ms(of('forced', 'overhead')),
      note: `wall ${ms(of('forced', 'wall'))}, every phase inspects the node again; ${how}${rssCpu('forced')}`,
    },
  ]);
}

main()
  .catch((err) => {
    console.error(`bench/boot: ${err.stack ?? err}`);
    process.exitCode = 1;
  })
  .finally(async () => {
    for (const c of cleanups.reverse()) await c().catch(() => {});
  });
