import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { AutoScalingClient, CreateAutoScalingGroupCommand, CreateLaunchConfigurationCommand, PutLifecycleHookCommand } from '@aws-sdk/client-auto-scaling';
import type { S3Client } from '@aws-sdk/client-s3';
import { CreateTopicCommand, SNSClient } from '@aws-sdk/client-sns';
import { afterAll, beforeAll, describe, expect } from 'vitest';
import type { ConfigInput } from '../../agent/config/schema.js';
import type { AgentEvent } from '../../agent/notify/events.js';
import { fillEtcd, startEtcd, type EtcdMember } from '../testbed/etcd.js';
import { startFidelityProxy, type FidelityProxy } from '../testbed/fidelity-proxy.js';
import { mountFullDisk } from '../testbed/full-disk.js';
import { startImds, type Imds } from '../testbed/imds.js';
import { applyNodeSelfDeleteRbac, createPod, ensureNamespace, kubeApiserverAvailable, startFakeKubelet, startKube, type FakeKubelet, type Kube } from '../testbed/kube.js';
import { startMoto, type Moto } from '../testbed/moto.js';
import { freePort, silentListener } from '../testbed/ports.js';
import { makeTempRoot, type TempRoot } from '../testbed/root.js';
import { startTcpRelay, type TcpRelay } from '../testbed/tcp-relay.js';
import { REGION, awsConfig, makeBucket, makeKmsKey, testClients, useTestCredentials, writeFakePki } from '../support/terminate-env.js';
import { errorLine, faultTable, runScenarioAgent, s3Leftovers, snsEvents, strayTempFiles, undoAfterEachScenario, type Outcome } from './scenario.js';

/**
 * Fault injection for `zdt-agent terminate` (a process, as OpenRC runs it at shutdown), for a
 * worker its Auto Scaling group retires (real kube-apiserver, a fake kubelet, AEMM saying
 * Terminated) and for a single controller taking its emergency etcd backup: IMDS silent or
 * failing, Auto Scaling, EC2, S3, KMS and SNS throttled, failing and hung per action, an
 * upload part failing, etcd stopped in the middle of the snapshot or not running, the API
 * server stopped, full disks. Whatever fails, the run ends inside its budget, completes the
 * lifecycle hook when it can, and records what it could not finish (`deadline`, exit 3).
 */

const available = await kubeApiserverAvailable();
if (!available && process.env.CI === 'true') throw new Error('kube-apiserver is missing under CI: run test/testbed/k8s/build.sh');

const BUCKET = 'zdt-fault-terminate';
const ASG = 'fault-workers';
const HOOK = 'drain-before-terminate';

let moto: Moto;
let proxy: FidelityProxy;
let direct: S3Client;
let kmsKeyId: string;
let topicArn: string;
let kube: Kube;
let etcd: EtcdMember;
let etcdDir: string;
let instances = 0;
const undo = undoAfterEachScenario(() => proxy);

const common = (endpoint: string) => ({ region: REGION, endpoint, credentials: { accessKeyId: 'testing', secretAccessKey: 'testing' } });

beforeAll(async () => {
  useTestCredentials();
  moto = await startMoto();
  proxy = await startFidelityProxy({ target: moto.endpoint });
  const { s3, kms } = testClients(proxy.endpoint);
  direct = testClients(moto.endpoint).s3;
  await makeBucket(s3, BUCKET);
  kmsKeyId = await makeKmsKey(kms);
  topicArn = (await new SNSClient(common(proxy.endpoint)).send(new CreateTopicCommand({ Name: 'zdt-fault-terminate' }))).TopicArn!;
  const as = new AutoScalingClient(common(proxy.endpoint));
  await as.send(new CreateLaunchConfigurationCommand({ LaunchConfigurationName: 'lc', ImageId: 'ami-12c6146b', InstanceType: 'm7i.large' }));
  await as.send(new CreateAutoScalingGroupCommand({ AutoScalingGroupName: ASG, LaunchConfigurationName: 'lc', MinSize: 0, MaxSize: 2, DesiredCapacity: 0, AvailabilityZones: [`${REGION}a`] }));
  await as.send(new PutLifecycleHookCommand({ AutoScalingGroupName: ASG, LifecycleHookName: HOOK, LifecycleTransition: 'autoscaling:EC2_INSTANCE_TERMINATING', HeartbeatTimeout: 300 }));
  etcdDir = fs.mkdtempSync(path.join(os.tmpdir(), 'zdt-etcd-term-faults-'));
  etcd = await startEtcd({ dir: path.join(etcdDir, 'data'), name: 'etcd00' });
  // About 11 MiB: the emergency backup goes up in three parts of 5 MiB.
  fillEtcd(etcd.clientUrl, 12);
  if (available) {
    kube = await startKube();
    await ensureNamespace(kube.admin, 'app');
    await applyNodeSelfDeleteRbac(kube.admin);
  }
}, 180_000);

afterAll(async () => {
  await kube?.stop();
  await etcd?.stop();
  await proxy?.stop();
  await moto?.stop();
  if (etcdDir) fs.rmSync(etcdDir, { recursive: true, force: true });
});

interface Node {
  root: TempRoot;
  instanceId: string;
  terminate(o?: { event?: string; limitMs?: number }): Promise<Outcome>;
  /** The terminate.finished message this instance sent, if any. */
  finished(): AgentEvent | undefined;
  completes(): string[];
}

async function newNode(o: { config: (imdsEndpoint: string) => ConfigInput; imds?: { endpoint: string }; lifecycle?: boolean; tags?: Record<string, string> }): Promise<Node> {
  const instanceId = `i-0fa${String(++instances).padStart(14, '0')}`;
  const root = await makeTempRoot();
  undo.later(() => root.cleanup());
  let endpoint = o.imds?.endpoint;
  if (!endpoint) {
    const imds: Imds = await startImds({
      instanceId,
      region: REGION,
      availabilityZone: `${REGION}a`,
      instanceType: 'm7i.large',
      privateIp: '10.0.1.5',
      tags: { Name: instanceId, ...o.tags },
      ...(o.lifecycle ? { targetLifecycleState: 'Terminated' as const } : {}),
    });
    undo.later(() => imds.stop());
    endpoint = imds.endpoint;
  }
  const config = o.config(endpoint);
  fs.mkdirSync(root.at('/etc/zdt-agent'), { recursive: true });
  fs.writeFileSync(root.at('/etc/zdt-agent/config.yaml'), JSON.stringify(config));
  const env = { ...process.env, AWS_EC2_METADATA_DISABLED: 'true' };
  const sentBefore = proxy.calls('Publish');
  return {
    root,
    instanceId,
    terminate: (t = {}) =>
      runScenarioAgent({ root: root.dir, args: ['terminate', '--root', root.dir, ...(t.event ? ['--event', t.event] : [])], env, record: 'terminate', limitMs: t.limitMs ?? 60_000 }),
    // A node that could not learn its identity reports as instance 'unknown'.
    finished: () => snsEvents(proxy, sentBefore).find((m) => m.event === 'terminate.finished' && [instanceId, 'unknown'].includes(m.instance.id)),
    completes: () =>
      proxy
        .recorded('CompleteLifecycleAction')
        .filter((c) => c.params.InstanceId === instanceId)
        .map((c) => c.params.LifecycleActionResult ?? '?'),
  };
}

/** A worker of the ASG with one pod (a ReplicaSet's) on it, its kubelet finalising evicted pods after `finaliseAfterMs`. */
async function worker(o: { terminate?: Record<string, unknown>; imds?: { endpoint: string }; finaliseAfterMs?: number } = {}): Promise<Node & { nodeName: string; nodeExists(): Promise<boolean> }> {
  const n = await newNode({
    lifecycle: true,
    tags: { 'aws:autoscaling:groupName': ASG },
    imds: o.imds,
    config: (imdsEndpoint) => ({
      cluster: { name: 'prod' },
      node: { role: 'worker' },
      notify: { snsTopicArn: topicArn },
      terminate: { budget: 20, drainTimeout: 10, hookTimeout: 2, heartbeatInterval: 1, ...o.terminate },
      aws: { ...awsConfig(proxy.endpoint), maxAttempts: 3, requestTimeoutMs: 2000, connectTimeoutMs: 1000, imdsEndpoint },
    }),
  });
  const nodeName = `ip-10-0-1-${instances}.${REGION}.compute.internal`;
  const kubelet: FakeKubelet = await startFakeKubelet(kube, nodeName, { finaliseAfterMs: o.finaliseAfterMs ?? 0 });
  undo.later(() => kubelet.stop());
  await createPod(kube.admin, { namespace: 'app', name: `shop-${instances}`, node: nodeName, owner: { kind: 'ReplicaSet', name: 'shop' } });
  await kube.writeNodeKubeconfig(nodeName, n.root.at('/etc/kubernetes/kubelet.conf'));
  return { ...n, nodeName, nodeExists: async () => (await kube.admin.raw('GET', `/api/v1/nodes/${nodeName}`)).status === 200 };
}

/** The single controller of cluster `solo`, backing up the shared etcd (or `clientUrl`). */
async function controller(o: { clientUrl?: string; backup?: Record<string, unknown>; imds?: { endpoint: string } } = {}) {
  const n = await newNode({
    imds: o.imds,
    config: (imdsEndpoint) => ({
      cluster: { name: `solo${instances}` },
      node: { role: 'controller', controllerIndex: '00' },
      etcd: { clientUrl: o.clientUrl ?? etcd.clientUrl, backup: { bucket: BUCKET, kmsKeyId, partSizeMiB: 5, concurrency: 2, ...o.backup } },
      notify: { snsTopicArn: topicArn },
      terminate: { budget: 15, drainTimeout: 5, hookTimeout: 2, backupTimeout: 8 },
      aws: { ...awsConfig(proxy.endpoint), maxAttempts: 3, requestTimeoutMs: 3000, connectTimeoutMs: 1000, imdsEndpoint },
    }),
  });
  writeFakePki(n.root.dir);
  const prefix = `etcd-backups/solo${instances}/`;
  return {
    ...n,
    objects: async () => (await s3Leftovers(direct, BUCKET, prefix)).objects,
    openUploads: async () => (await s3Leftovers(direct, BUCKET, prefix)).openUploads,
  };
}

/** `exit 3; identity=ok … lifecycle=ok; event terminate; CONTINUE; finished unfinished=drain; 7.9s` */
function observed(n: Node, r: Outcome, extra: string[] = []): string {
  const f = n.finished();
  const line = errorLine(r);
  return [
    r.summary,
    line ? line.replace(/^zdt-agent: /, '').slice(0, 100) : undefined,
    `event ${r.record?.event ?? '?'}`,
    ...extra,
    n.completes().join(',') || 'no lifecycle completion',
    f ? `terminate.finished ${f.details.result}${f.details.unfinished ? ` unfinished=${f.details.unfinished}` : ''}` : 'no terminate.finished',
    `${(r.ms / 1000).toFixed(1)}s`,
  ]
    .filter(Boolean)
    .join('; ');
}

const phase = (r: Outcome, name: string) => r.record?.phases[name]?.result;

const scenario = faultTable('terminate');

describe.skipIf(!available)('a retiring worker under faults', () => {
  scenario('IMDS accepts connections and never answers', 'exit 3 inside the budget: identity deadline, event unknown: drained, the Node kept, nothing completed', async (t) => {
    const silent = await silentListener();
    undo.later(async () => silent.close());
    const n = await worker({ imds: { endpoint: silent.endpoint } });
    const r = await n.terminate();
    t.observe(observed(n, r, [`Node ${(await n.nodeExists()) ? 'kept' : 'deleted'}`]));
    expect(r.code).toBe(3);
    expect(phase(r, 'identity')).toBe('deadline');
    expect(r.record?.event).toBe('unknown');
    expect(phase(r, 'drain')).toBe('ok');
    expect(await n.nodeExists()).toBe(true);
    expect(r.ms).toBeLessThan(25_000);
  });

  scenario('Auto Scaling DescribeLifecycleHooks throttled twice', 'exit 0: drained, Node deleted, CONTINUE once', async (t) => {
    const n = await worker();
    proxy.inject({ action: 'DescribeLifecycleHooks', kind: 'throttle', times: 2 });
    const r = await n.terminate();
    t.observe(observed(n, r));
    expect(r.code).toBe(0);
    expect(await n.nodeExists()).toBe(false);
    expect(n.completes()).toEqual(['CONTINUE']);
  });

  scenario('Auto Scaling RecordLifecycleActionHeartbeat answers 500 for good', 'exit 0: heartbeats are best effort; CONTINUE once', async (t) => {
    const n = await worker();
    proxy.inject({ action: 'RecordLifecycleActionHeartbeat', kind: '500' });
    const r = await n.terminate();
    t.observe(observed(n, r));
    expect(r.code).toBe(0);
    expect(n.completes()).toEqual(['CONTINUE']);
  });

  scenario('Auto Scaling CompleteLifecycleAction answers 503 for good', 'exit 1: lifecycle failed; drained and the Node deleted', async (t) => {
    const n = await worker();
    proxy.inject({ action: 'CompleteLifecycleAction', kind: '503' });
    const r = await n.terminate();
    t.observe(observed(n, r));
    expect(r.code).toBe(1);
    expect(phase(r, 'lifecycle')).toBe('failed');
    expect(phase(r, 'drain')).toBe('ok');
    expect(await n.nodeExists()).toBe(false);
  });

  scenario('Auto Scaling CompleteLifecycleAction hangs', 'exit 3 inside the budget: lifecycle deadline; drained and the Node deleted', async (t) => {
    const n = await worker();
    proxy.inject({ action: 'CompleteLifecycleAction', kind: 'hang' });
    const r = await n.terminate();
    t.observe(observed(n, r));
    expect(r.code).toBe(3);
    expect(phase(r, 'lifecycle')).toBe('deadline');
    expect(await n.nodeExists()).toBe(false);
    expect(r.ms).toBeLessThan(25_000);
  });

  scenario('EC2 DescribeInstances (one of the classification signals) answers 500', 'exit 0: classified terminate from IMDS; drained, Node deleted, CONTINUE', async (t) => {
    const n = await worker();
    proxy.inject({ action: 'DescribeInstances', kind: '500' });
    const r = await n.terminate();
    t.observe(observed(n, r));
    expect(r.code).toBe(0);
    expect(r.record?.event).toBe('terminate');
    expect(n.completes()).toEqual(['CONTINUE']);
  });

  scenario('SNS Publish hangs', 'exit 0 inside the budget: a notification never fails the shutdown', async (t) => {
    const n = await worker();
    proxy.inject({ action: 'Publish', kind: 'hang' });
    const r = await n.terminate();
    t.observe(observed(n, r, [`notify=${phase(r, 'notify')}`]));
    expect(r.code).toBe(0);
    expect(n.completes()).toEqual(['CONTINUE']);
    expect(r.ms).toBeLessThan(25_000);
  });

  scenario('the log directory is full (a real full tmpfs)', 'exit 0: drained, Node deleted, CONTINUE', async (t) => {
    const n = await worker();
    const disk = await mountFullDisk(n.root.at('/var/log'));
    undo.later(() => disk.unmount());
    const r = await n.terminate();
    t.observe(observed(n, r));
    expect(r.code).toBe(0);
    expect(n.completes()).toEqual(['CONTINUE']);
  });

  scenario('the state directory is full (a real full tmpfs)', 'exit 0: terminate works on (drained, Node deleted, CONTINUE); its log names the state file; no temp file left', async (t) => {
    const n = await worker();
    const disk = await mountFullDisk(n.root.at('/var/lib/zdt-agent'));
    undo.later(() => disk.unmount());
    const r = await n.terminate();
    t.observe(observed(n, r, [`Node ${(await n.nodeExists()) ? 'kept' : 'deleted'}`]));
    expect(r.code).toBe(0);
    expect(await n.nodeExists()).toBe(false);
    expect(n.completes()).toEqual(['CONTINUE']);
    // Waits for the `secrets` helper's fixes (issue 11, docs/boot.md "When the state cannot be
    // written": terminate works on and its log line names the file; writeFileAtomic's temp
    // files on ENOSPC).
    expect(r.stderr).toMatch(/cannot write the state file.*state\.json/);
    expect(strayTempFiles(n.root.at('/var/lib/zdt-agent'))).toEqual([]);
  });

  scenario(
    'the API server is stopped (SIGSTOP) and drainTimeout is close to the budget',
    'exit 3 inside the budget: drain deadline and listed as unfinished (not failed, no podsLeft 0); CONTINUE still sent',
    async (t) => {
      const n = await worker({ terminate: { budget: 12, drainTimeout: 10 } });
      undo.sigstop(kube.apiserverPid()!);
      const r = await n.terminate();
      const f = n.finished();
      t.observe(observed(n, r, [`drain=${phase(r, 'drain')}`, `podsLeft=${f?.details.podsLeft}`]));
      expect(r.code).toBe(3);
      expect(n.completes()).toEqual(['CONTINUE']);
      expect(r.ms).toBeLessThan(20_000);
      // Waits for the `secrets` helper's fix (issue 11): the drain against a never-answering
      // API server is recorded `failed` (PATCH … timed out), missing from details.unfinished,
      // with podsLeft 0 though the pods were never listed.
      expect(phase(r, 'drain')).toBe('deadline');
      expect(String(f?.details.unfinished)).toContain('drain');
      expect(f?.details.podsLeft).not.toBe(0);
    },
  );

  scenario(
    'the API server is killed in the middle of the drain (after the eviction)',
    'exit 3 inside the budget: drain deadline with the pod left; CONTINUE still sent',
    async (t) => {
      const n = await worker({ finaliseAfterMs: 4000 });
      const running = n.terminate();
      const log = n.root.at('/var/log/zdt-agent.log');
      for (let i = 0; i < 200 && !/\[drain\].*cordoned/.test(fs.existsSync(log) ? fs.readFileSync(log, 'utf8') : ''); i++) await sleep(50);
      await sleep(500); // the eviction is on its way
      await kube.stopApiserver();
      try {
        const r = await running;
        t.observe(observed(n, r, [`drain: ${r.record?.phases.drain?.detail ?? '?'}`]));
        expect(r.code).toBe(3);
        expect(phase(r, 'drain')).toBe('deadline');
        expect(n.completes()).toEqual(['CONTINUE']);
        expect(r.ms).toBeLessThan(25_000);
      } finally {
        await kube.startApiserver();
      }
    },
  );
});

describe('a single controller\'s emergency backup under faults', () => {
  scenario('the second UploadPart answers 500 twice, then goes through', 'exit 0: etcd-backup ok, its key in terminate.finished', async (t) => {
    const c = await controller();
    proxy.inject({ action: 's3:UploadPart', kind: '500', times: 2, after: 1 });
    const r = await c.terminate({ event: 'terminate' });
    t.observe(observed(c, r, [`${(await c.objects()).length} object(s)`]));
    expect(r.code).toBe(0);
    expect(phase(r, 'etcd-backup')).toBe('ok');
    expect(c.finished()?.details.backupKey).toBe((await c.objects())[0]);
  });

  scenario('S3 CompleteMultipartUpload throttled twice', 'exit 0: etcd-backup ok', async (t) => {
    const c = await controller();
    proxy.inject({ action: 's3:CompleteMultipartUpload', kind: 'throttle', times: 2 });
    const r = await c.terminate({ event: 'terminate' });
    t.observe(observed(c, r, [`${(await c.objects()).length} object(s)`]));
    expect(r.code).toBe(0);
    expect(phase(r, 'etcd-backup')).toBe('ok');
  });

  scenario('every UploadPart answers 500', 'exit 1: etcd-backup failed naming S3 UploadPart; no object; the multipart upload aborted', async (t) => {
    const c = await controller();
    proxy.inject({ action: 's3:UploadPart', kind: '500' });
    const r = await c.terminate({ event: 'terminate' });
    await sleep(1000); // an abort still on its way when the process ended would land now
    t.observe(observed(c, r, [`${(await c.objects()).length} object(s)`, `${(await c.openUploads()).length} open upload(s)`]));
    expect(r.code).toBe(1);
    expect(phase(r, 'etcd-backup')).toBe('failed');
    expect(r.record?.phases['etcd-backup']?.error).toMatch(/S3 UploadPart/);
    expect(await c.objects()).toEqual([]);
    // Waits for the `secrets` helper's fix (issue 11: abort on failure) if it fails here.
    expect(await c.openUploads()).toEqual([]);
  });

  scenario('UploadPart hangs', 'exit 3 inside the budget: etcd-backup deadline, unfinished in terminate.finished; no object; the upload aborted', async (t) => {
    const c = await controller();
    proxy.inject({ action: 's3:UploadPart', kind: 'hang' });
    const r = await c.terminate({ event: 'terminate' });
    await sleep(1000);
    t.observe(observed(c, r, [`${(await c.objects()).length} object(s)`, `${(await c.openUploads()).length} open upload(s)`]));
    expect(r.code).toBe(3);
    expect(phase(r, 'etcd-backup')).toBe('deadline');
    expect(c.finished()?.details.unfinished).toBe('etcd-backup');
    expect(await c.objects()).toEqual([]);
    expect(r.ms).toBeLessThan(20_000);
    // Waits for the `secrets` helper's fix (issue 11: abort unfinished uploads) if it fails here.
    expect(await c.openUploads()).toEqual([]);
  });

  scenario('etcd is stopped (SIGSTOP) in the middle of the snapshot stream', 'exit 3 inside the budget: etcd-backup deadline; no object', async (t) => {
    let relay: TcpRelay | undefined = undefined;
    relay = await startTcpRelay(new URL(etcd.clientUrl).host, (bytes) => {
      if (bytes > 2 * 1024 * 1024 && !undo.isStopped(etcd.pid)) {
        undo.sigstop(etcd.pid);
        relay!.freeze();
      }
    });
    const started = relay;
    undo.later(() => started.stop());
    const c = await controller({ clientUrl: `http://${relay.hostPort}` });
    const r = await c.terminate({ event: 'terminate' });
    t.observe(observed(c, r, [`etcd stopped after ${(relay.bytesFromTarget() / 1048576).toFixed(1)} MiB`, `${(await c.objects()).length} object(s)`]));
    expect(undo.isStopped(etcd.pid)).toBe(true);
    expect(r.code).toBe(3);
    expect(phase(r, 'etcd-backup')).toBe('deadline');
    expect(await c.objects()).toEqual([]);
    expect(r.ms).toBeLessThan(20_000);
  });

  scenario('etcd is not running (connection refused)', 'exit 1: etcd-backup failed (EtcdUnavailable); the run goes on to notify', async (t) => {
    const c = await controller({ clientUrl: `http://127.0.0.1:${await freePort()}` });
    const r = await c.terminate({ event: 'terminate' });
    t.observe(observed(c, r));
    expect(r.code).toBe(1);
    expect(phase(r, 'etcd-backup')).toBe('failed');
    expect(r.record?.phases['etcd-backup']?.error).toMatch(/EtcdUnavailable/);
    expect(c.finished()?.details.result).toBe('failed');
  });

  scenario('KMS GenerateDataKey hangs (client-side encryption)', 'exit 3 inside the budget: etcd-backup deadline; nothing uploaded', async (t) => {
    const c = await controller({ backup: { clientSideEncryption: true } });
    proxy.inject({ action: 'GenerateDataKey', kind: 'hang' });
    const r = await c.terminate({ event: 'terminate' });
    t.observe(observed(c, r, [`${(await c.objects()).length} object(s)`]));
    expect(r.code).toBe(3);
    expect(phase(r, 'etcd-backup')).toBe('deadline');
    expect(await c.objects()).toEqual([]);
  });

  scenario('IMDS accepts connections and never answers (no --event)', 'exit 3: identity deadline, event unknown: the emergency backup is still taken', async (t) => {
    const silent = await silentListener();
    undo.later(async () => silent.close());
    const c = await controller({ imds: { endpoint: silent.endpoint } });
    const r = await c.terminate();
    t.observe(observed(c, r, [`${(await c.objects()).length} object(s)`]));
    expect(r.code).toBe(3);
    expect(phase(r, 'identity')).toBe('deadline');
    expect(r.record?.event).toBe('unknown');
    expect(phase(r, 'etcd-backup')).toBe('ok');
    expect(await c.objects()).toHaveLength(1);
  });
});
