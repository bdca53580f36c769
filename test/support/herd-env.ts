import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import path from 'node:path';
import { RunInstancesCommand } from '@aws-sdk/client-ec2';
import { CreateBucketCommand, PutObjectCommand, S3Client } from '@aws-sdk/client-s3';
import * as esbuild from 'esbuild';
import { CreateTopicCommand, SNSClient } from '@aws-sdk/client-sns';
import { stringify } from 'yaml';
import type { ConfigInput } from '../../agent/config/schema.js';
import { startKube, type Kube } from '../testbed/kube.js';
import { makeTempRoot, type TempRoot } from '../testbed/root.js';
import { readRecords } from '../testbed/standins.js';
import { AZ, BINARY, NODE, REGION, ROOT_DIR, awsSection, credentials, startAwsWorld, type AwsWorld } from './boot-env.js';

/**
 * Many workers booting at once against one testbed (bench/herd.mjs, test/e2e/herd.test.ts):
 * each node is a process of the built binary with its own --root, its own IMDSv2 stand-in
 * and its own front doors to the shared servers, so that every request is counted per node
 * and per endpoint:
 *
 * - the kube-apiserver (real, test/testbed/kube.ts) behind a TLS front per node that
 *   presents the API server's own certificate, counts each request and forwards it; while
 *   the API server is down it resets the connection, as a load balancer without a healthy
 *   target does;
 * - moto behind the fidelity proxy (SignalResource, CompleteLifecycleAction) behind an HTTP
 *   front per node that names each call by service and action;
 * - IMDSv2: a small server per node on loopback (AEMM serves one identity per process, and
 *   two hundred AEMM processes would weigh more than the agents under test), token
 *   required, serving the identity document, the hostname and the instance tags.
 *
 * The control plane starts `controlPlaneAfterMs` after the nodes: the API server is stopped
 * until then, and (`ca: 'late'`, the default) the cluster CA and the join token reach S3 only
 * once it answers, as when controller 00 publishes what its kubeadm init generated; with
 * `ca: 'early'` they are there from the start (a pre-generated PKI), so the waiting workers
 * poll the API endpoint itself.
 */

export const BUCKET = 'zdt-herd';
const PREFIX = 'prod';
const TOKEN = 'abcdef.0123456789abcdef';
const APK_VERSIONS = '1.34.12-r1,1.34.12-r0';

const INSTANCE_TAGS: Record<string, string> = {
  'aws:autoscaling:groupName': 'prod-workers',
  'aws:cloudformation:stack-name': 'prod',
  'aws:cloudformation:logical-id': 'WorkerGroup',
};

export interface Request {
  node: number;
  /** ms since the herd started. */
  t: number;
  /** `kube-apiserver`, `imds`, or the AWS service (s3, cloudformation, autoscaling, sns, ec2, …). */
  endpoint: string;
  /** The path (API server, IMDS), or the AWS action (`GetObject pki/ca.crt`, `SignalResource`). */
  what: string;
  /** The request reached no server (the API server was down). */
  refused?: boolean;
}

export interface NodeRun {
  node: number;
  root: string;
  code: number | null;
  /** ms since the herd started: the node's process started, kubeadm join ran, the boot ended. */
  startedAt: number;
  joinedAt: number | undefined;
  exitedAt: number;
  /** Peak resident and proportional set size, sampled every 5 s. */
  rssKb: number | undefined;
  pssKb: number | undefined;
  stderr: string;
}

export interface HerdResult {
  nodes: NodeRun[];
  requests: Request[];
  /** ms since the herd started: the API server was started, answered /readyz, the CA was in S3. */
  controlPlaneStartedAt: number;
  controlPlaneReadyAt: number;
  caPublishedAt: number;
  /** The spawn of all nodes took this long (ms). */
  spawnMs: number;
  /** In-process: the one process's peak RSS and PSS (kB), and how late its timers fired at most and at p99 (ms). */
  host: { rssKb: number | undefined; pssKb: number | undefined; lagMaxMs?: number | undefined; lagP99Ms?: number | undefined } | undefined;
}

export interface HerdOptions {
  nodes: number;
  controlPlaneAfterMs: number;
  ca?: 'early' | 'late';
  /** boot.controlPlaneWait of the nodes (s). */
  controlPlaneWaitS?: number;
  /**
   * `process` (default): a process of dist/zdt-agent per node. `in-process`: one Node process
   * runs every node's boot (test/support/herd-node.ts), for herds whose start-up alone would
   * keep the machine's cores busy for longer than the wait.
   */
  mode?: 'process' | 'in-process';
  /** Sampled every second while the herd runs (the bench prints the machine's load). */
  onSecond?: (t: number) => void;
  /** Kill a node still running after this long (ms since the herd started). */
  deadlineMs?: number;
}

export interface Herd {
  run(o: HerdOptions): Promise<HerdResult>;
  stop(): Promise<void>;
}

/** Starts the shared servers (moto behind the fidelity proxy, etcd + kube-apiserver); `run` boots a herd. */
export async function startHerd(): Promise<Herd> {
  const undo: Array<() => Promise<void>> = [];
  const stop = async () => {
    for (const step of undo.splice(0).reverse()) await step().catch(() => {});
  };
  try {
    const w = await startAwsWorld();
    undo.push(() => w.stop());
    const kube = await startKube();
    undo.push(() => kube.stop());
    const common = { region: REGION, endpoint: w.proxy.endpoint, credentials };
    const s3 = new S3Client({ ...common, forcePathStyle: true });
    undo.push(async () => s3.destroy());
    await s3.send(new CreateBucketCommand({ Bucket: BUCKET, CreateBucketConfiguration: { LocationConstraint: REGION } }));
    const sns = new SNSClient(common);
    const topicArn = (await sns.send(new CreateTopicCommand({ Name: 'zdt-herd-events' }))).TopicArn!;
    sns.destroy();
    let round = 0;
    return { run: (o) => runHerd(w, kube, s3, topicArn, o, `${PREFIX}${round++}`), stop };
  } catch (err) {
    await stop();
    throw err;
  }
}

async function runHerd(w: AwsWorld, kube: Kube, s3: S3Client, topicArn: string, o: HerdOptions, prefix: string): Promise<HerdResult> {
  const requests: Request[] = [];
  const servers: net.Server[] = [];
  const roots: TempRoot[] = [];
  const children = new Set<ReturnType<typeof spawn>>();
  let t0 = performance.now();
  let t0Wall = Date.now();
  const now = () => performance.now() - t0;
  const publish = async () => {
    await s3.send(new PutObjectCommand({ Bucket: BUCKET, Key: `${prefix}/token`, Body: `${TOKEN}\n` }));
    await s3.send(new PutObjectCommand({ Bucket: BUCKET, Key: `${prefix}/pki/ca.crt`, Body: fs.readFileSync(kube.caFile) }));
  };
  let ticker: NodeJS.Timeout | undefined;
  const upstreamCa = fs.readFileSync(kube.caFile);
  const kubeUrl = new URL(kube.server);
  try {
    await kube.stopApiserver();
    const ca = o.ca ?? 'late';
    if (ca === 'early') await publish();
    const pki = path.join(kube.dir, 'pki');
    const tls = { cert: fs.readFileSync(path.join(pki, 'apiserver.crt')), key: fs.readFileSync(path.join(pki, 'apiserver.key')) };

    // The instances exist in EC2 with their tags (as on AWS): an IMDS tag read slowed by a busy
    // machine falls back to DescribeInstances, which must then find them.
    const launched = await w.ec2.send(
      new RunInstancesCommand({
        ImageId: w.imageId,
        InstanceType: 'm7i.large',
        MinCount: o.nodes,
        MaxCount: o.nodes,
        Placement: { AvailabilityZone: AZ },
        TagSpecifications: [{ ResourceType: 'instance', Tags: Object.entries(INSTANCE_TAGS).map(([Key, Value]) => ({ Key, Value })) }],
      }),
    );
    const nodes: Array<{ node: number; root: TempRoot; config: ConfigInput }> = [];
    for (let node = 0; node < o.nodes; node++) {
      const root = await makeTempRoot();
      roots.push(root);
      const instanceId = launched.Instances![node]!.InstanceId!;
      const ip = launched.Instances![node]!.PrivateIpAddress ?? `10.1.${Math.floor(node / 250)}.${(node % 250) + 4}`;
      const kubePort = await listen(servers, https.createServer(tls, kubeFront(node)));
      const awsPort = await listen(servers, http.createServer(awsFront(node, w.proxy.endpoint)));
      const imdsPort = await listen(servers, http.createServer(imdsStandIn(node, { instanceId, ip })));
      const config: ConfigInput = {
        cluster: { name: 'prod', apiEndpoint: `127.0.0.1:${kubePort}`, bootstrap: { s3Uri: `s3://${BUCKET}/${prefix}` } },
        node: { role: 'worker' },
        notify: { snsTopicArn: topicArn },
        boot: { controlPlaneWait: o.controlPlaneWaitS ?? 600, launchLifecycleHook: 'launch' },
        aws: { ...awsSection(`http://127.0.0.1:${awsPort}`), imdsEndpoint: `http://127.0.0.1:${imdsPort}` },
        log: { level: 'info' },
      };
      fs.mkdirSync(root.at('/etc/zdt-agent'), { recursive: true });
      fs.writeFileSync(root.at('/etc/zdt-agent/config.yaml'), stringify(config));
      nodes.push({ node, root, config });
    }

    // The stand-ins' directory from the repository root (standinPath() would name the bench's bundle directory).
    const records = path.join(kube.dir, `${prefix}-records.jsonl`);
    const env: NodeJS.ProcessEnv = {
      ...process.env,
      PATH: `${path.join(ROOT_DIR, 'test/testbed/standins')}:${process.env.PATH ?? '/usr/bin:/bin'}`,
      ZDT_RECORD_FILE: records,
      ZDT_APK_VERSIONS: APK_VERSIONS,
      AWS_ACCESS_KEY_ID: 'testing',
      AWS_SECRET_ACCESS_KEY: 'testing',
    };
    const inProcess = o.mode === 'in-process' ? await herdNodeBundle() : undefined;
    t0 = performance.now();
    t0Wall = Date.now();
    const started = (argv: string[]) => {
      const child = spawn(inProcess ? NODE : BINARY, argv, { env, stdio: ['ignore', 'pipe', 'pipe'] });
      children.add(child);
      const run = { stdout: '', stderr: '', rssKb: undefined as number | undefined, pssKb: undefined as number | undefined };
      child.stdout!.on('data', (c: Buffer) => (run.stdout += c.toString()));
      child.stderr!.on('data', (c: Buffer) => (run.stderr = (run.stderr + c.toString()).slice(-4000)));
      // Pss: the process's share of the pages (the executable's are shared by all); every 5 s, smaps_rollup walks the page tables.
      const sample = setInterval(() => {
        const m = memOf(child.pid);
        if (!m) return;
        run.rssKb = Math.max(run.rssKb ?? 0, m.rssKb);
        run.pssKb = Math.max(run.pssKb ?? 0, m.pssKb);
      }, 5000);
      const exited = new Promise<number | null>((resolve) =>
        child.once('exit', (code) => {
          clearInterval(sample);
          children.delete(child);
          resolve(code);
        }),
      );
      return { run, exited };
    };
    let runs: Promise<Array<Omit<NodeRun, 'joinedAt'>>>;
    let host: HerdResult['host'];
    if (inProcess) {
      const h = started([inProcess, ...nodes.map((n) => n.root.dir)]);
      runs = h.exited.then((code) => {
        type Line = { root?: string; code: number; error?: string; startedAt: number; exitedAt: number; lagMaxMs?: number; lagP99Ms?: number };
        const parsed = h.run.stdout.split('\n').filter(Boolean).map((l) => JSON.parse(l) as Line);
        const lag = parsed.find((l) => l.lagMaxMs !== undefined);
        host = { ...h.run, lagMaxMs: lag?.lagMaxMs, lagP99Ms: lag?.lagP99Ms };
        const lines = new Map(parsed.filter((l) => l.root).map((l) => [l.root!, l]));
        return nodes.map(({ node, root }) => {
          const l = lines.get(root.dir);
          const stderr = l ? (l.error ?? '') : `the in-process herd exited ${code} before this node's boot ended: ${h.run.stderr.slice(-500)}`;
          return { node, root: root.dir, code: l?.code ?? null, startedAt: (l?.startedAt ?? t0Wall) - t0Wall, exitedAt: (l?.exitedAt ?? Date.now()) - t0Wall, rssKb: undefined, pssKb: undefined, stderr };
        });
      });
    } else {
      runs = Promise.all(
        nodes.map(async ({ node, root }) => {
          const startedAt = now();
          const { run, exited } = started(['--root', root.dir, 'boot']);
          const code = await exited;
          return { node, root: root.dir, code, startedAt, exitedAt: now(), rssKb: run.rssKb, pssKb: run.pssKb, stderr: run.stderr };
        }),
      );
    }
    const spawnMs = now();
    if (o.onSecond) ticker = setInterval(() => o.onSecond!(now()), 1000);
    const killer = o.deadlineMs ? setTimeout(() => children.forEach((c) => c.kill('SIGKILL')), o.deadlineMs - now()) : undefined;

    // The control plane appears: the API server starts, then (late CA) controller 00 publishes.
    await new Promise((r) => setTimeout(r, Math.max(0, o.controlPlaneAfterMs - now())));
    const controlPlaneStartedAt = now();
    await kube.startApiserver();
    const controlPlaneReadyAt = now();
    if (ca === 'late') await publish();
    const caPublishedAt = ca === 'late' ? now() : 0;

    const ended = await runs;
    clearTimeout(killer);
    // kubeadm join --config <root>/etc/kubernetes/zdt-agent/join.yaml: whose join it was.
    const joins = new Map<string, number>();
    for (const x of await readRecords(records)) {
      if (x.tool === 'kubeadm' && x.argv[0] === 'join') joins.set(x.argv[2]!.replace(/\/etc\/kubernetes\/zdt-agent\/join\.yaml$/, ''), Date.parse(x.ts) - t0Wall);
    }
    const result = ended.map((r) => ({ ...r, joinedAt: joins.get(r.root) }));
    return { nodes: result, requests, controlPlaneStartedAt, controlPlaneReadyAt, caPublishedAt, spawnMs, host };
  } finally {
    clearInterval(ticker);
    for (const c of children) c.kill('SIGKILL');
    for (const s of servers) {
      s.close();
      (s as http.Server).closeAllConnections?.();
    }
    for (const r of roots) await r.cleanup();
    fs.rmSync(path.join(ROOT_DIR, `.cache/herd/herd-node-${process.pid}.mjs`), { force: true });
  }

  /** The API endpoint as node `node` reaches it: counted, forwarded, reset while the API server is down. */
  function kubeFront(node: number): http.RequestListener {
    return (req, res) => {
      const r: Request = { node, t: now(), endpoint: 'kube-apiserver', what: (req.url ?? '/').replace(/\?.*$/, '') };
      requests.push(r);
      const up = https.request(
        { host: kubeUrl.hostname, port: kubeUrl.port, path: req.url, method: req.method, headers: req.headers, ca: upstreamCa, agent: false },
        (ur) => {
          res.writeHead(ur.statusCode ?? 502, ur.headers);
          ur.pipe(res);
        },
      );
      up.on('error', () => {
        r.refused = true;
        req.socket.destroy();
      });
      req.pipe(up);
    };
  }

  /** The AWS endpoint as node `node` reaches it: each call named by its service and action. */
  function awsFront(node: number, target: string): http.RequestListener {
    return (req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        const body = Buffer.concat(chunks);
        requests.push({ node, t: now(), endpoint: awsService(req), what: awsAction(req, body) });
        const up = http.request(`${target}${req.url}`, { method: req.method, headers: req.headers }, (ur) => {
          res.writeHead(ur.statusCode ?? 502, ur.headers);
          ur.pipe(res);
        });
        up.on('error', () => res.writeHead(502).end());
        up.end(body);
      });
    };
  }

  /** IMDSv2 for one node: a token first, then the identity document, hostname and tags. */
  function imdsStandIn(node: number, id: { instanceId: string; ip: string }): http.RequestListener {
    const token = randomBytes(16).toString('hex');
    const hostname = `ip-${id.ip.replaceAll('.', '-')}.ec2.internal`;
    const tags = INSTANCE_TAGS;
    const doc = JSON.stringify({
      instanceId: id.instanceId,
      region: REGION,
      availabilityZone: AZ,
      instanceType: 'm7i.large',
      privateIp: id.ip,
      accountId: '123456789012',
      imageId: 'ami-0123456789abcdef0',
      architecture: 'x86_64',
    });
    return (req, res) => {
      const url = req.url ?? '/';
      requests.push({ node, t: now(), endpoint: 'imds', what: url });
      if (req.method === 'PUT' && url === '/latest/api/token') return void res.end(token);
      if (req.headers['x-aws-ec2-metadata-token'] !== token) return void res.writeHead(401).end();
      const answer =
        url === '/latest/dynamic/instance-identity/document'
          ? doc
          : url === '/latest/meta-data/local-hostname'
            ? hostname
            : url === '/latest/meta-data/tags/instance'
              ? Object.keys(tags).join('\n')
              : url.startsWith('/latest/meta-data/tags/instance/')
                ? tags[decodeURIComponent(url.slice('/latest/meta-data/tags/instance/'.length))]
                : undefined;
      if (answer === undefined) return void res.writeHead(404).end();
      res.end(answer);
    };
  }
}

/** test/support/herd-node.ts bundled with the agent into .cache/ (as agentBundle does for agent/main.ts). */
async function herdNodeBundle(): Promise<string> {
  const outfile = path.join(ROOT_DIR, `.cache/herd/herd-node-${process.pid}.mjs`);
  await esbuild.build({
    absWorkingDir: ROOT_DIR,
    entryPoints: ['test/support/herd-node.ts'],
    outfile,
    bundle: true,
    platform: 'node',
    target: 'node24',
    format: 'esm',
    packages: 'external',
    logLevel: 'warning',
    define: { __ZDT_VERSION__: JSON.stringify('0.0.0-herd') },
  });
  return outfile;
}

async function listen(servers: net.Server[], server: net.Server): Promise<number> {
  servers.push(server);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return (server.address() as net.AddressInfo).port;
}

/** The service of a SigV4-signed request: its credential scope (`…/us-east-1/s3/aws4_request`). */
function awsService(req: http.IncomingMessage): string {
  return /Credential=[^/]+\/\d+\/[^/]+\/([^/]+)\//.exec(req.headers.authorization ?? '')?.[1] ?? 'unsigned';
}

function awsAction(req: http.IncomingMessage, body: Buffer): string {
  const target = req.headers['x-amz-target'];
  if (typeof target === 'string') return target.replace(/^.*\./, '');
  const action = /(?:^|&)Action=([^&]+)/.exec(body.toString('latin1'))?.[1];
  if (action) return action;
  // S3, path style: /bucket/key
  const key = (req.url ?? '/').replace(/\?.*$/, '').split('/').slice(2).join('/');
  const op = req.method === 'GET' ? 'GetObject' : req.method === 'PUT' ? 'PutObject' : req.method === 'HEAD' ? 'HeadObject' : (req.method ?? '?');
  return `${op} ${key.replace(/^[^/]*\//, '')}`;
}

function memOf(pid: number | undefined): { rssKb: number; pssKb: number } | undefined {
  if (!pid) return undefined;
  try {
    const s = fs.readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8');
    return { rssKb: Number(/^Rss:\s+(\d+)/m.exec(s)?.[1] ?? 0), pssKb: Number(/^Pss:\s+(\d+)/m.exec(s)?.[1] ?? 0) };
  } catch {
    return undefined;
  }
}

/** Requests per whole second since the herd started, for one endpoint: [peak, mean over `spanMs`]. */
export function rates(requests: Request[], endpoint: string, spanMs: number): { total: number; peak: number; peakAt: number; mean: number } {
  const per = new Map<number, number>();
  let total = 0;
  for (const r of requests) {
    if (r.endpoint !== endpoint) continue;
    total++;
    const s = Math.floor(r.t / 1000);
    per.set(s, (per.get(s) ?? 0) + 1);
  }
  let peak = 0;
  let peakAt = 0;
  for (const [s, n] of per) if (n > peak) [peak, peakAt] = [n, s];
  return { total, peak, peakAt, mean: total / Math.max(1, spanMs / 1000) };
}

/**
 * The most attempts the control-plane wait makes in `ms` (agent/boot/cluster.ts's backoff:
 * `initialDelayMs` doubling to `maxDelayMs`, each delay jittered down to half at the least):
 * the first at once, then one per shortest possible delay.
 */
export function maxAttempts(ms: number, backoff: { initialDelayMs: number; maxDelayMs: number }): number {
  let attempts = 1;
  let elapsed = 0;
  let delay = backoff.initialDelayMs;
  for (;;) {
    elapsed += delay / 2;
    if (elapsed > ms) return attempts;
    attempts++;
    delay = Math.min(delay * 2, backoff.maxDelayMs);
  }
}

export function percentile(sorted: number[], p: number): number {
  if (!sorted.length) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))]!;
}
