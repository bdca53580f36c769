import fs from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { CreateBucketCommand, PutObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { CreateTopicCommand, SNSClient, SubscribeCommand } from '@aws-sdk/client-sns';
import { CreateQueueCommand, GetQueueAttributesCommand, ReceiveMessageCommand, SQSClient } from '@aws-sdk/client-sqs';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { parseAllDocuments } from 'yaml';
import { caCertHash } from '../../agent/boot/bootstrap.js';
import { runBoot } from '../../agent/boot/run.js';
import type { ConfigInput } from '../../agent/config/schema.js';
import { ExitCode } from '../../agent/errors.js';
import { metricsFile, readSamples } from '../../agent/log/metrics.js';
import type { AgentEvent } from '../../agent/notify/events.js';
import { startImds, type Imds } from '../testbed/imds.js';
import { kubeApiserverAvailable, startKube, type Kube } from '../testbed/kube.js';
import { makeTempRoot, type TempRoot } from '../testbed/root.js';
import { readRecords, standinPath } from '../testbed/standins.js';
import { AZ, REGION, agentLog, awsSection, bootDepsFor, credentials, kubeadmMissing, kubeadmValidate, launchInstance, startAwsWorld, type AwsWorld } from '../support/boot-env.js';

/**
 * A worker's boot against a real kube-apiserver (started late, or never), moto for S3 (the
 * bootstrap token and CA), SNS->SQS (the boot message read back), and the fidelity proxy
 * (CloudFormation SignalResource and CompleteLifecycleAction, which moto cannot answer).
 * kubeadm and apk are the recording stand-ins; the join config goes to the real kubeadm.
 */

const apiserver = await kubeApiserverAvailable();
const CI = process.env.CI === 'true';
if (!apiserver && CI) throw new Error('kube-apiserver is missing under CI: run test/testbed/k8s/build.sh');
const pending = apiserver ? undefined : 'pending: kube-apiserver is not built yet (test/testbed/k8s/build.sh)';

const BUCKET = 'zdt-bootstrap';
const TOKEN = 'abcdef.0123456789abcdef';
const APK_VERSIONS = '1.34.12-r1,1.34.12-r0,1.34.3-r0,1.33.5-r0';

let w: AwsWorld;
let kube: Kube;
let sqs: SQSClient;
let topicArn: string;
let queueUrl: string;
const cleanups: Array<() => Promise<void>> = [];
const records = `/tmp/zdt-worker-records-${process.pid}.jsonl`;

beforeAll(async () => {
  if (pending) return;
  w = await startAwsWorld();
  kube = await startKube();
  const common = { region: REGION, endpoint: w.proxy.endpoint, credentials };
  const s3 = new S3Client({ ...common, forcePathStyle: true });
  await s3.send(new CreateBucketCommand({ Bucket: BUCKET, CreateBucketConfiguration: { LocationConstraint: REGION } }));
  await s3.send(new PutObjectCommand({ Bucket: BUCKET, Key: 'prod/token', Body: `${TOKEN}\n` }));
  await s3.send(new PutObjectCommand({ Bucket: BUCKET, Key: 'prod/pki/ca.crt', Body: fs.readFileSync(kube.caFile) }));
  const sns = new SNSClient(common);
  sqs = new SQSClient(common);
  topicArn = (await sns.send(new CreateTopicCommand({ Name: 'zdt-events' }))).TopicArn!;
  queueUrl = (await sqs.send(new CreateQueueCommand({ QueueName: 'zdt-events' }))).QueueUrl!;
  const queueArn = (await sqs.send(new GetQueueAttributesCommand({ QueueUrl: queueUrl, AttributeNames: ['QueueArn'] }))).Attributes!.QueueArn!;
  await sns.send(new SubscribeCommand({ TopicArn: topicArn, Protocol: 'sqs', Endpoint: queueArn }));
  process.env.PATH = `${standinPath()}:${process.env.PATH}`;
  process.env.ZDT_RECORD_FILE = records;
  process.env.ZDT_APK_VERSIONS = APK_VERSIONS;
}, 180_000);

afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
  fs.rmSync(records, { force: true });
});

afterAll(async () => {
  await kube?.stop();
  await w?.stop();
});

async function workerNode(o: { controlPlaneWait: number }): Promise<{ root: TempRoot; imds: Imds; instanceId: string; config: ConfigInput }> {
  const root = await makeTempRoot();
  cleanups.push(() => root.cleanup());
  const tags = {
    'aws:autoscaling:groupName': 'prod-workers',
    'aws:cloudformation:stack-name': 'prod',
    'aws:cloudformation:logical-id': 'WorkerGroup',
  };
  // The instance carries the tags IMDS shows (as on AWS), so the DescribeInstances fallback
  // of a slow IMDS tag read finds them too.
  const inst = await launchInstance(w, { type: 'inf2.xlarge', tags });
  const imds = await startImds({ instanceId: inst.instanceId, region: REGION, availabilityZone: AZ, instanceType: 'm5.large', privateIp: inst.privateIp, tags });
  cleanups.push(() => imds.stop());
  const config: ConfigInput = {
    cluster: {
      name: 'prod',
      apiEndpoint: new URL(kube.server).host,
      // Workers ignore it: they run what the cluster runs.
      kubernetesVersion: '1.33.X',
      bootstrap: { s3Uri: `s3://${BUCKET}/prod` },
    },
    node: { role: 'worker', labels: { 'example.com/pool': 'general' } },
    notify: { snsTopicArn: topicArn },
    boot: { controlPlaneWait: o.controlPlaneWait, launchLifecycleHook: 'launch' },
    aws: { ...awsSection(w.proxy.endpoint), imdsEndpoint: imds.endpoint },
  };
  return { root, imds, instanceId: inst.instanceId, config };
}

async function receiveEvents(n: number, timeoutMs = 20_000): Promise<AgentEvent[]> {
  const out: AgentEvent[] = [];
  const deadline = Date.now() + timeoutMs;
  while (out.length < n && Date.now() < deadline) {
    const r = await sqs.send(new ReceiveMessageCommand({ QueueUrl: queueUrl, MaxNumberOfMessages: 10, WaitTimeSeconds: 1 }));
    for (const m of r.Messages ?? []) out.push(JSON.parse((JSON.parse(m.Body!) as { Message: string }).Message) as AgentEvent);
  }
  return out;
}

describe.skipIf(!!pending)(`worker boot${pending ? ` (${pending})` : ''}`, () => {
  it('waits for a control plane that starts late, then joins with the token and CA hash, signals and notifies', async () => {
    const n = await workerNode({ controlPlaneWait: 120 });
    await kube.stopApiserver();
    const deps = await bootDepsFor(n.root.dir, n.config);
    const booting = runBoot(deps);
    await sleep(3000);
    expect(agentLog(n.root.dir)).toMatch(/does not resolve|ECONNREFUSED|readyz/); // it is waiting
    await kube.startApiserver();
    const result = await booting;
    expect(result.error?.oneLine()).toBeUndefined();
    expect(result.ok).toBe(true);

    const calls = (await readRecords(records)).map((r) => `${r.tool} ${r.argv.join(' ')}`);
    const joinFile = n.root.at('/etc/kubernetes/zdt-agent/join.yaml');
    expect(calls).toEqual([
      'apk policy kubeadm kubelet kubectl',
      // Exactly the version the API server reports (v1.34.12), newest package release of it.
      'apk add kubeadm=1.34.12-r1 kubelet=1.34.12-r1 kubectl=1.34.12-r1',
      `kubeadm join --config ${joinFile}`,
    ]);
    const join = parseAllDocuments(fs.readFileSync(joinFile, 'utf8'))[0]!.toJS();
    expect(join.discovery.bootstrapToken).toEqual({ apiServerEndpoint: new URL(kube.server).host, token: TOKEN, caCertHashes: [caCertHash(fs.readFileSync(kube.caFile))] });
    expect(fs.statSync(joinFile).mode & 0o777).toBe(0o600);
    const skip = kubeadmMissing();
    if (!skip) expect(kubeadmValidate(joinFile)).toBe('');
    // The token never reaches the log.
    expect(agentLog(n.root.dir)).not.toContain(TOKEN.split('.')[1]);

    const signals = w.proxy.recorded('SignalResource').map((c) => c.params);
    expect(signals).toEqual([expect.objectContaining({ StackName: 'prod', LogicalResourceId: 'WorkerGroup', UniqueId: n.instanceId, Status: 'SUCCESS' })]);
    const hooks = w.proxy.recorded('CompleteLifecycleAction').map((c) => c.params);
    expect(hooks).toEqual([
      expect.objectContaining({ AutoScalingGroupName: 'prod-workers', LifecycleHookName: 'launch', InstanceId: n.instanceId, LifecycleActionResult: 'CONTINUE' }),
    ]);

    const [ev] = await receiveEvents(1);
    expect(ev).toMatchObject({
      schema: 'zdt-agent/event/v1',
      event: 'boot.succeeded',
      cluster: 'prod',
      role: 'worker',
      instance: { id: n.instanceId, type: 'm5.large', az: AZ, region: REGION },
      asg: 'prod-workers',
      stack: { name: 'prod', logicalId: 'WorkerGroup' },
      kubernetesVersion: '1.34.12',
      details: { joinMode: 'worker' },
    });
    expect(ev!.failure).toBeUndefined();
    expect(ev!.phases.map((p) => `${p.name}:${p.result}`)).toEqual([
      'identity:ok', 'neuron:skipped', 'etcd-volume:skipped', 'etcd-restore:skipped', 'kube-version:ok', 'control-plane:skipped',
      'kube-upgrade:skipped', 'worker-join:ok', 'takeover:skipped', 'signal:ok',
    ]);
    expect(ev!.phases.find((p) => p.name === 'kube-version')!.durationMs).toBeGreaterThan(2000);
    expect(ev!.links?.instance).toContain(`instanceId=${n.instanceId}`);
    expect(ev!.links?.asg).toContain('prod-workers');

    // Booted: the second boot joins nothing, signals nothing, sends nothing.
    fs.writeFileSync(n.root.at('/etc/kubernetes/kubelet.conf'), '# written by kubeadm join\n');
    const before = calls.length;
    const again = await runBoot(await bootDepsFor(n.root.dir, n.config));
    expect(again.ok).toBe(true);
    expect(again.changed).toBe(false);
    // The packages are at the cluster's version: apk is not even asked.
    expect((await readRecords(records)).slice(before).map((r) => `${r.tool} ${r.argv.join(' ')}`)).toEqual(['rc-service kubelet status']);
    expect(w.proxy.recorded('SignalResource')).toHaveLength(1);
    expect(await receiveEvents(1, 3000)).toEqual([]);
  });

  it('gives up after boot.controlPlaneWait with a clear error, and reports FAILURE, ABANDON and boot.failed with the log tail', async () => {
    const n = await workerNode({ controlPlaneWait: 3 });
    await kube.stopApiserver();
    const signalsBefore = w.proxy.recorded('SignalResource').length;
    try {
      const t0 = Date.now();
      const result = await runBoot(await bootDepsFor(n.root.dir, { ...n.config, metrics: { textfileDir: '/var/lib/prometheus/node-exporter' } }));
      expect(Date.now() - t0).toBeLessThan(30_000);
      expect(result.ok).toBe(false);
      expect(result.failedPhase).toBe('kube-version');
      // What the 'boot failed' alert of docs/metrics.md reads.
      const metrics = readSamples(metricsFile(n.root.at('/var/lib/prometheus/node-exporter'), 'boot'));
      expect(metrics.get('zdt_agent_boot_last_run_success')).toEqual([{ labels: {}, value: 0 }]);
      expect(metrics.get('zdt_agent_boot_phase_result')).toContainEqual({ labels: { phase: 'kube-version', result: 'deadline' }, value: 1 }); // a wait that ran out
      expect(result.error?.code).toBe('ControlPlaneWaitTimeout');
      expect(result.error?.exitCode).toBe(ExitCode.deadline);
      expect(result.error?.message).toContain(`the control plane at ${kube.server}`);
      expect(result.error?.hint).toContain('boot.controlPlaneWait');
      expect(result.phases['worker-join']).toMatchObject({ result: 'skipped', detail: 'not run: kube-version failed' });

      const signal = w.proxy.recorded('SignalResource').slice(signalsBefore).map((c) => c.params);
      expect(signal).toEqual([expect.objectContaining({ UniqueId: n.instanceId, Status: 'FAILURE' })]);
      expect(w.proxy.recorded('CompleteLifecycleAction').at(-1)!.params).toMatchObject({ InstanceId: n.instanceId, LifecycleActionResult: 'ABANDON' });
      const [ev] = await receiveEvents(1);
      expect(ev).toMatchObject({ event: 'boot.failed', failure: { phase: 'kube-version' } });
      expect(ev!.failure!.error).toContain('ControlPlaneWaitTimeout');
      expect(ev!.failure!.logTail.length).toBeGreaterThan(3);
      expect(ev!.failure!.logTail.length).toBeLessThanOrEqual(50);
      expect(ev!.failure!.logTail.join('\n')).toContain('kube-version: failed');
      expect((await readRecords(records)).filter((r) => r.tool === 'kubeadm')).toEqual([]);
    } finally {
      await kube.startApiserver();
    }
  });

  it('a launch lifecycle action that is gone (the hook timed out) is nothing to signal: the boot succeeds', async () => {
    const n = await workerNode({ controlPlaneWait: 30 });
    // What AWS answers once no lifecycle action holds the instance.
    w.proxy.inject({ action: 'CompleteLifecycleAction', kind: 'error', status: 400, code: 'ValidationError', message: `No active Lifecycle Action found with instance ID ${n.instanceId}` });
    try {
      const result = await runBoot(await bootDepsFor(n.root.dir, n.config));
      expect(result.error?.oneLine()).toBeUndefined();
      expect(result.ok).toBe(true);
      expect(result.phases.signal).toMatchObject({ result: 'ok' });
      expect(result.phases.signal!.detail).toContain('no active lifecycle action on prod-workers/launch');
      const [ev] = await receiveEvents(1);
      expect(ev).toMatchObject({ event: 'boot.succeeded' });
      expect(ev!.failure).toBeUndefined();
    } finally {
      w.proxy.clearFaults();
    }
  });

  it('a join that was interrupted is reset before the worker joins again', async () => {
    const n = await workerNode({ controlPlaneWait: 30 });
    // What an interrupted `kubeadm join` leaves: the CA and the bootstrap kubeconfig, no kubelet.conf.
    fs.mkdirSync(n.root.at('/etc/kubernetes/pki'), { recursive: true });
    fs.copyFileSync(kube.caFile, n.root.at('/etc/kubernetes/pki/ca.crt'));
    fs.writeFileSync(n.root.at('/etc/kubernetes/bootstrap-kubelet.conf'), '# from the interrupted join\n');
    const result = await runBoot(await bootDepsFor(n.root.dir, n.config));
    expect(result.error?.oneLine()).toBeUndefined();
    const kubeadm = (await readRecords(records)).filter((r) => r.tool === 'kubeadm').map((r) => r.argv.join(' '));
    expect(kubeadm).toEqual(['reset --force', `join --config ${n.root.at('/etc/kubernetes/zdt-agent/join.yaml')}`]);
    expect(agentLog(n.root.dir)).toContain('an earlier join did not finish');
    await receiveEvents(1, 5000); // drain this test's boot.succeeded
  });
});
