import fs from 'node:fs';
import type http from 'node:http';
import { setTimeout as sleep } from 'node:timers/promises';
import { CreateBucketCommand, PutObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { CreateTopicCommand, SNSClient } from '@aws-sdk/client-sns';
import { afterAll, beforeAll, describe, expect } from 'vitest';
import type { ConfigInput } from '../../agent/config/schema.js';
import type { Fault } from '../testbed/fidelity-proxy.js';
import { mountFullDisk } from '../testbed/full-disk.js';
import { startHttpTap, type TapAnswer } from '../testbed/http-tap.js';
import { startImds, type Imds } from '../testbed/imds.js';
import { kubeApiserverAvailable, startKube, type Kube } from '../testbed/kube.js';
import { freePort, silentListener } from '../testbed/ports.js';
import { makeTempRoot, type TempRoot } from '../testbed/root.js';
import { readRecords, standinEnv } from '../testbed/standins.js';
import { AZ, REGION, credentials, launchInstance, startAwsWorld, writeConfig, type AwsWorld } from '../support/boot-env.js';
import { errorLine, faultTable, runScenarioAgent, snsEvents, strayTempFiles, undoAfterEachScenario, type Outcome } from './scenario.js';

/**
 * Fault injection for a worker's `zdt-agent boot` (a process, as cloud-init runs it): IMDS
 * (amazon-ec2-metadata-mock behind a loopback fault tap) refusing tokens, 503 bursts, late,
 * silent; S3, CloudFormation, Auto Scaling and SNS behind the fidelity proxy throttled,
 * failing, resetting and hung; the API server stopped (SIGSTOP); a full /etc/kubernetes.
 * Every run ends within its bounded waits (boot.controlPlaneWait 4 s, aws.imdsTimeout 4 s,
 * 2 s requests) with the documented exit code, and joins only when it may.
 */

const apiserver = await kubeApiserverAvailable();
if (!apiserver && process.env.CI === 'true') throw new Error('kube-apiserver is missing under CI: run test/testbed/k8s/build.sh');

const BUCKET = 'zdt-fault-bootstrap';
const TOKEN = 'abcdef.0123456789abcdef';
const TAGS = { 'aws:autoscaling:groupName': 'prod-workers', 'aws:cloudformation:stack-name': 'prod', 'aws:cloudformation:logical-id': 'WorkerGroup' };

let w: AwsWorld;
let kube: Kube;
let topicArn: string;
const undo = undoAfterEachScenario(() => w?.proxy);

beforeAll(async () => {
  if (!apiserver) return;
  w = await startAwsWorld();
  kube = await startKube();
  const common = { region: REGION, endpoint: w.proxy.endpoint, credentials };
  const s3 = new S3Client({ ...common, forcePathStyle: true });
  await s3.send(new CreateBucketCommand({ Bucket: BUCKET, CreateBucketConfiguration: { LocationConstraint: REGION } }));
  await s3.send(new PutObjectCommand({ Bucket: BUCKET, Key: 'prod/token', Body: `${TOKEN}\n` }));
  await s3.send(new PutObjectCommand({ Bucket: BUCKET, Key: 'prod/pki/ca.crt', Body: fs.readFileSync(kube.caFile) }));
  topicArn = (await new SNSClient(common).send(new CreateTopicCommand({ Name: 'zdt-fault-events' }))).TopicArn!;
}, 180_000);

afterAll(async () => {
  await kube?.stop();
  await w?.stop();
});

interface Worker {
  root: TempRoot;
  instanceId: string;
  boot(limitMs?: number): Promise<Outcome>;
  /** `kubeadm join` calls the stand-in recorded. */
  joins(): Promise<number>;
  /** What this instance told CloudFormation and Auto Scaling (SUCCESS/FAILURE, CONTINUE/ABANDON). */
  signals(): string;
  /** SNS events this instance sent (boot.succeeded / boot.failed). */
  events(): string[];
}

/**
 * A worker instance (tags as IMDS shows them), its AEMM, a fresh node root and config.
 * `imds` puts something else where the config names IMDS: a fault tap in front of AEMM
 * (`(req) => answer`), a silent listener, or a port AEMM starts on later.
 */
async function worker(o: { imds?: ((req: http.IncomingMessage) => number | TapAnswer | undefined) | { endpoint: string }; aws?: Record<string, unknown> } = {}): Promise<Worker & { imdsServer: () => Promise<Imds> }> {
  const root = await makeTempRoot();
  undo.later(() => root.cleanup());
  const inst = await launchInstance(w, { tags: TAGS });
  const identity = { instanceId: inst.instanceId, region: REGION, availabilityZone: AZ, instanceType: 'm5.large', privateIp: inst.privateIp, tags: TAGS };
  let endpoint: string;
  let imdsServer: () => Promise<Imds>;
  if (o.imds && 'endpoint' in o.imds) {
    endpoint = o.imds.endpoint;
    // Started by the scenario, on the port the endpoint names (IMDS late).
    imdsServer = async () => {
      const imds = await startImds({ ...identity, port: Number(new URL(endpoint).port) });
      undo.later(() => imds.stop());
      return imds;
    };
  } else {
    const imds = await startImds(identity);
    undo.later(() => imds.stop());
    imdsServer = async () => imds;
    endpoint = imds.endpoint;
    if (o.imds) {
      const tap = await startHttpTap(imds.endpoint, o.imds);
      undo.later(() => tap.stop());
      endpoint = tap.endpoint;
    }
  }
  const config: ConfigInput = {
    cluster: { name: 'prod', apiEndpoint: new URL(kube.server).host, bootstrap: { s3Uri: `s3://${BUCKET}/prod` } },
    node: { role: 'worker' },
    notify: { snsTopicArn: topicArn },
    boot: { controlPlaneWait: 4, launchLifecycleHook: 'launch', kubeadmTimeout: 30 },
    aws: { region: REGION, endpoint: w.proxy.endpoint, s3ForcePathStyle: true, maxAttempts: 3, requestTimeoutMs: 2000, connectTimeoutMs: 1000, imdsEndpoint: endpoint, imdsTimeout: 4, ...o.aws },
  };
  writeConfig(root.dir, config);
  const records = root.at('/records.jsonl');
  const env = standinEnv(records, { ZDT_APK_VERSIONS: '1.34.12-r1', AWS_ACCESS_KEY_ID: 'testing', AWS_SECRET_ACCESS_KEY: 'testing', AWS_EC2_METADATA_DISABLED: 'true' });
  const id = inst.instanceId;
  return {
    root,
    instanceId: id,
    imdsServer,
    boot: (limitMs = 60_000) => runScenarioAgent({ root: root.dir, args: ['boot', '--root', root.dir], env, record: 'boot', limitMs }),
    joins: async () => (await readRecords(records)).filter((r) => r.tool === 'kubeadm' && r.argv[0] === 'join').length,
    signals: () =>
      [
        ...w.proxy.recorded('SignalResource').filter((c) => c.params.UniqueId === id).map((c) => `signal ${c.params.Status}`),
        ...w.proxy.recorded('CompleteLifecycleAction').filter((c) => c.params.InstanceId === id).map((c) => `hook ${c.params.LifecycleActionResult}`),
      ].join(', ') || 'no signal',
    events: () =>
      snsEvents(w.proxy)
        .filter((m) => m.instance.id === id)
        .map((m) => m.event),
  };
}

/** The table's observed column: exit, phases, the one error line, joins, signals, events. */
async function observed(n: Worker, r: Outcome): Promise<string> {
  const line = errorLine(r);
  const events = n.events();
  return [
    r.summary,
    line ? line.replace(/^zdt-agent: /, '').slice(0, 100) : undefined,
    `joins ${await n.joins()}`,
    n.signals(),
    events.length ? events.join(',') : 'no event',
    `${(r.ms / 1000).toFixed(1)}s`,
  ]
    .filter(Boolean)
    .join('; ');
}

/** A request to IMDS of this kind: the token PUT, or a GET. */
const isTokenPut = (req: http.IncomingMessage) => req.method === 'PUT';

const scenario = faultTable('boot-worker');

describe.skipIf(!apiserver)('worker boot under IMDS faults', () => {
  scenario('IMDS refuses the session token three times (401 on PUT), then gives one', 'exit 0, joined once, SUCCESS and CONTINUE', async (t) => {
    let refused = 0;
    const n = await worker({ imds: (req) => (isTokenPut(req) && refused++ < 3 ? 401 : undefined) });
    const r = await n.boot();
    t.observe(await observed(n, r));
    expect(r.code).toBe(0);
    expect(refused).toBeGreaterThanOrEqual(3);
    expect(await n.joins()).toBe(1);
    expect(n.signals()).toBe('signal SUCCESS, hook CONTINUE');
  });

  scenario('IMDS answers 503 to the first six GETs', 'exit 0, joined once', async (t) => {
    let failed = 0;
    const n = await worker({ imds: (req) => (!isTokenPut(req) && failed++ < 6 ? 503 : undefined) });
    const r = await n.boot();
    t.observe(await observed(n, r));
    expect(r.code).toBe(0);
    expect(await n.joins()).toBe(1);
    expect(n.events()).toEqual(['boot.succeeded']);
  });

  scenario('IMDS comes up 3 s after the agent started (connection refused until then)', 'exit 0, joined once', async (t) => {
    const n = await worker({ imds: { endpoint: `http://127.0.0.1:${await freePort()}` } });
    const booting = n.boot();
    await sleep(3000);
    await n.imdsServer();
    const r = await booting;
    t.observe(await observed(n, r));
    expect(r.code).toBe(0);
    expect(await n.joins()).toBe(1);
  });

  scenario('IMDS accepts connections and never answers', 'exit 3 (ImdsUnavailable) after aws.imdsTimeout; nothing joined, nothing signalled', async (t) => {
    const silent = await silentListener();
    undo.later(async () => silent.close());
    const n = await worker({ imds: { endpoint: silent.endpoint } });
    const r = await n.boot();
    t.observe(await observed(n, r));
    expect(r.code).toBe(3);
    expect(errorLine(r)).toMatch(/ImdsUnavailable: gave up waiting for IMDS/);
    expect(await n.joins()).toBe(0);
    expect(n.signals()).toBe('no signal');
  });

  scenario('IMDS answers 401 to every GET (the token is never accepted)', 'exit 3 (ImdsUnavailable); nothing joined', async (t) => {
    const n = await worker({ imds: (req) => (isTokenPut(req) ? undefined : 401) });
    const r = await n.boot();
    t.observe(await observed(n, r));
    expect(r.code).toBe(3);
    expect(errorLine(r)).toMatch(/ImdsUnavailable/);
    expect(await n.joins()).toBe(0);
  });

  scenario('IMDS metadata tags hang (tags read with DescribeInstances instead)', 'exit 0, joined, the stack and ASG signalled', async (t) => {
    // Headers, then a body that never ends: the IMDS client's request timeout has to end it.
    const n = await worker({ imds: (req) => (req.url?.startsWith('/latest/meta-data/tags/') ? { status: 200, write: () => undefined } : undefined) });
    const r = await n.boot();
    t.observe(await observed(n, r));
    expect(r.code).toBe(0);
    expect(await n.joins()).toBe(1);
    expect(n.signals()).toBe('signal SUCCESS, hook CONTINUE');
  });
});

describe.skipIf(!apiserver)('worker boot under AWS faults', () => {
  // Faults that go away within the SDK's retries: the boot does not notice.
  const passing: Array<[string, Fault]> = [
    ['S3 GetObject of the bootstrap material throttled twice (SlowDown)', { action: 's3:GetObject', kind: 'throttle', times: 2 }],
    ['S3 GetObject resets the connection twice', { action: 's3:GetObject', kind: 'reset', times: 2 }],
    ['CloudFormation SignalResource throttled twice', { action: 'SignalResource', kind: 'throttle', times: 2 }],
  ];
  for (const [name, fault] of passing) {
    scenario(name, 'exit 0, joined once, SUCCESS and CONTINUE', async (t) => {
      const n = await worker();
      w.proxy.inject(fault);
      const r = await n.boot();
      t.observe(await observed(n, r));
      expect(r.code).toBe(0);
      expect(await n.joins()).toBe(1);
      expect(n.signals()).toBe('signal SUCCESS, hook CONTINUE');
    });
  }

  scenario('S3 GetObject answers 500 for good', 'exit 3 (ControlPlaneWaitTimeout naming the S3 object) within the wait; no join; FAILURE, ABANDON, boot.failed; no retry storm', async (t) => {
    const n = await worker();
    const before = w.proxy.calls('s3:GetObject');
    w.proxy.inject({ action: 's3:GetObject', kind: '500' });
    const r = await n.boot();
    const gets = w.proxy.calls('s3:GetObject') - before;
    t.observe(`${await observed(n, r)}; ${gets} GetObject calls`);
    expect(r.code).toBe(3);
    expect(errorLine(r)).toMatch(/ControlPlaneWaitTimeout: .*s3:\/\/zdt-fault-bootstrap\/prod\/pki\/ca\.crt/);
    expect(r.record?.phases['kube-version']?.result).toBe('deadline');
    expect(await n.joins()).toBe(0);
    expect(n.signals()).toBe('signal FAILURE, hook ABANDON');
    expect(n.events()).toEqual(['boot.failed']);
    expect(gets).toBeLessThan(40);
  });

  scenario('S3 GetObject hangs', 'exit 3 within the wait plus the request timeouts; no join; FAILURE, ABANDON', async (t) => {
    const n = await worker({ aws: { maxAttempts: 2 } });
    w.proxy.inject({ action: 's3:GetObject', kind: 'hang' });
    const r = await n.boot();
    t.observe(await observed(n, r));
    expect(r.code).toBe(3);
    expect(r.record?.phases['kube-version']?.result).toBe('deadline');
    expect(await n.joins()).toBe(0);
    expect(n.signals()).toBe('signal FAILURE, hook ABANDON');
    expect(r.ms).toBeLessThan(45_000);
  });

  scenario('CloudFormation SignalResource answers 500 for good', 'exit 1 (SignalFailed naming SignalResource); joined; CONTINUE still sent; boot.failed', async (t) => {
    const n = await worker();
    w.proxy.inject({ action: 'SignalResource', kind: '500' });
    const r = await n.boot();
    t.observe(await observed(n, r));
    expect(r.code).toBe(1);
    expect(errorLine(r)).toMatch(/SignalFailed: SignalResource: /);
    expect(r.record?.phases.signal?.result).toBe('failed');
    expect(await n.joins()).toBe(1);
    expect(n.signals()).toBe('hook CONTINUE');
    expect(n.events()).toEqual(['boot.failed']);
  });

  scenario('Auto Scaling CompleteLifecycleAction hangs', 'exit 1 (SignalFailed) after the request timeouts; joined; the stack still signalled', async (t) => {
    const n = await worker({ aws: { maxAttempts: 2 } });
    w.proxy.inject({ action: 'CompleteLifecycleAction', kind: 'hang' });
    const r = await n.boot();
    t.observe(await observed(n, r));
    expect(r.code).toBe(1);
    expect(errorLine(r)).toMatch(/SignalFailed: CompleteLifecycleAction: /);
    expect(await n.joins()).toBe(1);
    expect(n.signals()).toBe('signal SUCCESS');
  });

  scenario('SNS Publish answers 500', 'exit 0: a notification never fails a boot', async (t) => {
    const n = await worker();
    w.proxy.inject({ action: 'Publish', kind: '500' });
    const r = await n.boot();
    t.observe(await observed(n, r));
    expect(r.code).toBe(0);
    expect(r.record?.phases.notify?.detail).toMatch(/could not be sent/);
  });
});

describe.skipIf(!apiserver)('worker boot when the API server or the disk fail', () => {
  scenario('the API server is stopped (SIGSTOP: accepts, never answers)', 'exit 3 (ControlPlaneWaitTimeout) within the wait; no join; FAILURE, ABANDON', async (t) => {
    const n = await worker();
    undo.sigstop(kube.apiserverPid()!);
    const r = await n.boot();
    t.observe(await observed(n, r));
    expect(r.code).toBe(3);
    expect(errorLine(r)).toMatch(/ControlPlaneWaitTimeout/);
    expect(await n.joins()).toBe(0);
    expect(n.signals()).toBe('signal FAILURE, hook ABANDON');
  });

  scenario('/etc/kubernetes is full (a real full tmpfs) when join.yaml is written', 'exit 1 naming join.yaml; no join; no temp file left; FAILURE, ABANDON', async (t) => {
    const n = await worker();
    const disk = await mountFullDisk(n.root.at('/etc/kubernetes'));
    undo.later(() => disk.unmount());
    const r = await n.boot();
    t.observe(await observed(n, r));
    expect(r.code).toBe(1);
    expect(r.record?.phases['worker-join']?.result).toBe('failed');
    expect(await n.joins()).toBe(0);
    expect(n.signals()).toBe('signal FAILURE, hook ABANDON');
    // Waits for the `secrets` helper's fixes (issue 11): ENOSPC messages name the file, and
    // writeFileAtomic removes its temp file when the write fails.
    expect(errorLine(r)).toMatch(/join\.yaml/);
    expect(strayTempFiles(n.root.at('/etc/kubernetes'))).toEqual([]);
  });
});
