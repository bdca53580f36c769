/**
 * `make demo`: the built binary (dist/zdt-agent) against the local testbed, end to end, with
 * a readable timeline and the SNS messages the agent sent. Everything it starts (moto, the
 * fidelity proxy, IMDS mocks, a kube-apiserver, etcd, sshd, loop devices, mounts) is ended by
 * PID or device name, also when a step fails.
 *
 * Scenes:
 *   1. controller 00 bootstraps a cluster: plan, boot (volume formatted, kubeadm init), boot
 *      again (nothing to do), status;
 *   2. its replacement takes over the etcd volume of the terminated predecessor: never
 *      formatted, the data is still there;
 *   3. a worker launched with the cluster waits for a control plane that starts late, joins;
 *   4. the worker is scaled in through its lifecycle hook: `zdt-agent watch` sees the notice in
 *      IMDS and drains, deletes the Node and completes the hook before any shutdown; the
 *      shutdown's terminate then finds the work done;
 *   5. the single controller is terminated: emergency etcd backup in S3, verified, restored;
 *   6. a bastion: a real sshd asks `zdt-agent ssh-keys`; an IAM group member logs in, others do not;
 *   7. a NAT instance replaced: the new one takes the Elastic IP and the default route over,
 *      with where both point sampled every 100 ms.
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { TerminateInstancesCommand } from '@aws-sdk/client-ec2';
import { CreateBucketCommand, HeadObjectCommand, ListObjectsV2Command, PutObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { AutoScalingClient, CreateAutoScalingGroupCommand, CreateLaunchConfigurationCommand, PutLifecycleHookCommand } from '@aws-sdk/client-auto-scaling';
import { CreateKeyCommand, KMSClient } from '@aws-sdk/client-kms';
import { CreateTopicCommand, SNSClient, SubscribeCommand } from '@aws-sdk/client-sns';
import { CreateQueueCommand, GetQueueAttributesCommand, ReceiveMessageCommand, SQSClient } from '@aws-sdk/client-sqs';
import type { ConfigInput } from '../agent/config/schema.js';
import type { ChatNotification } from '../agent/notify/chat.js';
import { AZ, BINARY, REGION, awsSection, createEtcdVolume, credentials, launchInstance, startAwsWorld, writeConfig, type AgentRun } from '../test/support/boot-env.js';
import { startImds, type ImdsConfig } from '../test/testbed/imds.js';
import { createPod, ensureNamespace, startFakeKubelet, startKube } from '../test/testbed/kube.js';
import { startEtcd } from '../test/testbed/etcd.js';
import { createLoopDevice } from '../test/testbed/loop.js';
import { makeTempRoot, type TempRoot } from '../test/testbed/root.js';
import { readRecords, standinEnv } from '../test/testbed/standins.js';
import { demoSshLogin } from '../test/testbed/sshd.js';
import { createSubnet, launchNat, predecessorHoldingEverything, whereNatPoints } from '../test/support/takeover-env.js';
import { spawn } from 'node:child_process';

const t0 = Date.now();
const timeline: string[] = [];
const cleanups: Array<() => Promise<void> | void> = [];
const APK_VERSIONS = '1.34.12-r1,1.34.12-r0,1.34.3-r0';

const since = () => `+${((Date.now() - t0) / 1000).toFixed(1).padStart(6)}s`;

function scene(title: string): void {
  timeline.push(`${since()}  == ${title}`);
  console.log(`\n\x1b[1m=== ${title}\x1b[0m`);
}

function note(text: string): void {
  timeline.push(`${since()}     ${text}`);
  console.log(`--- ${text}`);
}

function indent(text: string): string {
  return text
    .trimEnd()
    .split('\n')
    .map((l) => `    ${l}`)
    .join('\n');
}

/** Runs the built binary; prints its stdout and the agent's log lines; never throws. */
function agent(what: string, args: string[], env: NodeJS.ProcessEnv, timeoutMs = 300_000): { done: Promise<AgentRun>; pid: () => number | undefined } {
  const started = Date.now();
  const child = spawn(BINARY, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
  child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
  const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
  const done = new Promise<AgentRun>((resolve) => {
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      const ms = Date.now() - started;
      timeline.push(`${since()}     zdt-agent ${args.filter((a) => !a.startsWith('/')).join(' ')} -> exit ${code ?? signal} in ${ms} ms  (${what})`);
      console.log(`\n$ zdt-agent ${args.join(' ')}    # ${what}`);
      if (stdout.trim()) console.log(indent(stdout));
      if (stderr.trim()) console.log(indent(stderr));
      console.log(`    (exit ${code ?? signal}, ${ms} ms)`);
      resolve({ code, signal, stdout, stderr, ms });
    });
  });
  return { done, pid: () => child.pid };
}

const run = (what: string, args: string[], env: NodeJS.ProcessEnv) => agent(what, args, env).done;

async function newRoot(): Promise<TempRoot> {
  const root = await makeTempRoot();
  cleanups.push(() => root.cleanup());
  return root;
}

async function newImds(c: ImdsConfig): Promise<string> {
  const s = await startImds(c);
  cleanups.push(() => s.stop());
  return s.endpoint;
}

/** The cluster-wide keys a kubeadm cluster shares (bootstrap.ts SHARED_PKI_FILES), made with openssl. */
async function uploadSharedPki(s3: S3Client, bucket: string, prefix: string): Promise<void> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'zdt-demo-pki-'));
  try {
    fs.mkdirSync(path.join(dir, 'etcd'));
    const ca = (name: string, cn: string) =>
      execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', `${name}.key`, '-out', `${name}.crt`, '-days', '2', '-subj', `/CN=${cn}`], { cwd: dir, stdio: 'ignore' });
    ca('ca', 'kubernetes');
    ca('front-proxy-ca', 'front-proxy-ca');
    ca('etcd/ca', 'etcd-ca');
    execFileSync('openssl', ['genrsa', '-out', 'sa.key', '2048'], { cwd: dir, stdio: 'ignore' });
    execFileSync('openssl', ['rsa', '-in', 'sa.key', '-pubout', '-out', 'sa.pub'], { cwd: dir, stdio: 'ignore' });
    for (const f of ['ca.crt', 'ca.key', 'sa.key', 'sa.pub', 'front-proxy-ca.crt', 'front-proxy-ca.key', 'etcd/ca.crt', 'etcd/ca.key']) {
      await s3.send(new PutObjectCommand({ Bucket: bucket, Key: `${prefix}/${f}`, Body: fs.readFileSync(path.join(dir, f)) }));
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

async function main(): Promise<void> {
  if (!fs.existsSync(BINARY)) throw new Error(`${BINARY} is missing: run 'make binary'`);

  scene('testbed: moto behind the fidelity proxy; a bucket, an SNS topic delivered to an SQS queue');
  const w = await startAwsWorld();
  cleanups.push(() => w.stop());
  const common = { region: REGION, endpoint: w.proxy.endpoint, credentials };
  const s3 = new S3Client({ ...common, forcePathStyle: true });
  for (const Bucket of ['demo-bootstrap', 'demo-etcd-backups']) {
    await s3.send(new CreateBucketCommand({ Bucket, CreateBucketConfiguration: { LocationConstraint: REGION } }));
  }
  const sns = new SNSClient(common);
  const sqs = new SQSClient(common);
  const topicArn = (await sns.send(new CreateTopicCommand({ Name: 'demo-events' }))).TopicArn!;
  const queueUrl = (await sqs.send(new CreateQueueCommand({ QueueName: 'demo-events' }))).QueueUrl!;
  const queueArn = (await sqs.send(new GetQueueAttributesCommand({ QueueUrl: queueUrl, AttributeNames: ['QueueArn'] }))).Attributes!.QueueArn!;
  await sns.send(new SubscribeCommand({ TopicArn: topicArn, Protocol: 'sqs', Endpoint: queueArn, Attributes: { RawMessageDelivery: 'true' } }));
  note(`moto ${w.moto.endpoint}, proxy ${w.proxy.endpoint}, topic ${topicArn}`);
  await uploadSharedPki(s3, 'demo-bootstrap', 'demo/pki');
  note('a pre-generated cluster CA (as kubecfn does) is in s3://demo-bootstrap/demo/pki/');

  const controllerTags = { 'zdt:cluster': 'demo', 'zdt:role': 'controller', 'zdt:controller-index': '00' };
  const controllerConfig = (imdsEndpoint: string): ConfigInput => ({
    cluster: { name: 'demo', kubernetesVersion: '1.34.X', apiEndpoint: 'k8s.demo.internal:6443', bootstrap: { s3Uri: 's3://demo-bootstrap/demo' } },
    etcd: { backup: { bucket: 'demo-etcd-backups' } },
    notify: { snsTopicArn: topicArn },
    aws: { ...awsSection(w.proxy.endpoint), imdsEndpoint },
  });

  // The stand-in kubeadm starts no API server; a real one (kube-apiserver v1.34.12, built from
  // the k8s.io/kubernetes module) plays the cluster's, and `kubeadm init` hands out its admin.conf.
  const kube = await startKube();
  cleanups.push(() => kube.stop());
  note(`kube-apiserver (real, v1.34.12) at ${kube.server}`);

  // ---------------------------------------------------------------------------------------
  scene('1. controller 00 bootstraps the cluster');
  const loop = await createLoopDevice(128);
  cleanups.unshift(() => loop.detach());
  const volumeId = await createEtcdVolume(w, { cluster: 'demo' });
  /** A controller 00 node: its root with the etcd volume linked, its IMDS, config and stand-ins. */
  const controllerNode = async (inst: { instanceId: string; privateIp: string }) => {
    const root = await newRoot();
    await root.linkVolume(volumeId, loop.device);
    const imds = await newImds({ instanceId: inst.instanceId, region: REGION, availabilityZone: AZ, instanceType: 'm6i.large', privateIp: inst.privateIp, tags: controllerTags });
    writeConfig(root.dir, controllerConfig(imds));
    const records = root.at('/standins.jsonl');
    const env = standinEnv(records, { ZDT_APK_VERSIONS: APK_VERSIONS, ZDT_STANDIN_KUBEADM_ADMIN_CONF: kube.adminKubeconfig, AWS_ACCESS_KEY_ID: 'demo', AWS_SECRET_ACCESS_KEY: 'demo' });
    return { root, imds, records, env };
  };
  const first = await launchInstance(w, { tags: controllerTags });
  note(`instance ${first.instanceId}; etcd volume ${volumeId} is the loop device ${loop.device}`);
  const { root: rootA, records: recordsA, env: envA } = await controllerNode(first);
  // The kernel boot id, where the agent reads it under its root prefix (boot's fast path).
  fs.mkdirSync(rootA.at('/proc/sys/kernel/random'), { recursive: true });
  // (read and written, not copied: procfs files report size 0, and a copy comes out empty)
  fs.writeFileSync(rootA.at('/proc/sys/kernel/random/boot_id'), fs.readFileSync('/proc/sys/kernel/random/boot_id'));
  await run('what boot and terminate would do on this node', ['plan', '--root', rootA.dir], envA);
  await run('boot: attach, format (blank volume), mount, install 1.34.X, kubeadm init', ['boot', '--root', rootA.dir], envA);
  // What kubeadm init would have left behind on a real node:
  for (const f of ['/etc/kubernetes/kubelet.conf', '/etc/kubernetes/manifests/kube-apiserver.yaml']) {
    fs.mkdirSync(path.dirname(rootA.at(f)), { recursive: true });
    fs.writeFileSync(rootA.at(f), '# written by kubeadm\n');
  }
  await run('boot again in the same kernel boot: the fast path, nothing to do', ['boot', '--root', rootA.dir], envA);
  await run('boot --force: every phase inspects the node again, and finds everything in place', ['boot', '--force', '--root', rootA.dir], envA);
  await run('what boot did, phase by phase', ['status', '--root', rootA.dir], envA);
  note(`stand-ins received: ${(await readRecords(recordsA)).map((r) => `${r.tool} ${r.argv.slice(0, 2).join(' ')}`).join('; ')}`);

  // ---------------------------------------------------------------------------------------
  scene("2. controller 00 is replaced: its successor takes over the predecessor's etcd volume");
  const dataDir = rootA.at('/var/lib/etcd');
  // What etcd would have written there (the stand-in kubeadm started no etcd).
  fs.mkdirSync(path.join(dataDir, 'data', 'member', 'snap'), { recursive: true });
  fs.writeFileSync(path.join(dataDir, 'data', 'member', 'demo-marker'), `written by ${first.instanceId}\n`);
  note(`etcd data on the volume (data/member/…); the old instance goes away (terminated in EC2, volume unmounted)`);
  execFileSync('umount', [dataDir]);
  await w.ec2.send(new TerminateInstancesCommand({ InstanceIds: [first.instanceId] }));
  const second = await launchInstance(w, { tags: controllerTags });
  const { root: rootB, imds: imdsB, env: envB } = await controllerNode(second);
  await run(`boot of ${second.instanceId}: wait for the detach, attach, find the filesystem, never format`, ['boot', '--root', rootB.dir], envB);
  const marker = path.join(rootB.at('/var/lib/etcd'), 'data', 'member', 'demo-marker');
  note(fs.existsSync(marker) ? `data/member/demo-marker is still there: "${fs.readFileSync(marker, 'utf8').trim()}"` : 'data/member/demo-marker is MISSING');
  execFileSync('umount', [rootB.at('/var/lib/etcd')]);

  // ---------------------------------------------------------------------------------------
  scene('3. a worker launched with the cluster waits for a control plane that comes up late');
  await s3.send(new PutObjectCommand({ Bucket: 'demo-bootstrap', Key: 'demo/token', Body: 'abcdef.0123456789abcdef\n' }));
  await s3.send(new PutObjectCommand({ Bucket: 'demo-bootstrap', Key: 'demo/pki/ca.crt', Body: fs.readFileSync(kube.caFile) }));
  await kube.stopApiserver();
  note(`the kube-apiserver at ${kube.server} is down`);
  const workerTags = { 'aws:autoscaling:groupName': 'demo-workers', 'aws:cloudformation:stack-name': 'demo', 'aws:cloudformation:logical-id': 'Workers' };
  const worker = await launchInstance(w, { tags: workerTags });
  const rootW = await newRoot();
  const imdsW = await newImds({ instanceId: worker.instanceId, region: REGION, availabilityZone: AZ, instanceType: 'm6i.large', privateIp: worker.privateIp, tags: workerTags });
  writeConfig(rootW.dir, {
    cluster: { name: 'demo', apiEndpoint: new URL(kube.server).host, bootstrap: { s3Uri: 's3://demo-bootstrap/demo' } },
    node: { role: 'worker' },
    // Both message formats (the chat one is printed at the end) and node_exporter metrics.
    notify: { snsTopicArn: topicArn, format: 'both' },
    metrics: { textfileDir: '/var/lib/prometheus/node-exporter' },
    boot: { controlPlaneWait: 300, launchLifecycleHook: 'launch' },
    aws: { ...awsSection(w.proxy.endpoint), imdsEndpoint: imdsW },
  });
  const recordsW = rootW.at('/standins.jsonl');
  const envW = standinEnv(recordsW, { ZDT_APK_VERSIONS: APK_VERSIONS, AWS_ACCESS_KEY_ID: 'demo', AWS_SECRET_ACCESS_KEY: 'demo' });
  const booting = agent('worker boot: wait for the API endpoint, then join', ['boot', '--root', rootW.dir], envW);
  await sleep(8000);
  note('the control plane comes up now');
  await kube.startApiserver();
  await booting.done;
  note(`worker stand-ins received: ${(await readRecords(recordsW)).map((r) => `${r.tool} ${r.argv.slice(0, 2).join(' ')}`).join('; ')}`);
  note(`CloudFormation signals: ${w.proxy.recorded('SignalResource').map((c) => `${c.params.LogicalResourceId}=${c.params.Status}`).join(', ') || 'none'}; lifecycle: ${w.proxy.recorded('CompleteLifecycleAction').map((c) => c.params.LifecycleActionResult).join(', ') || 'none'}`);

  // ---------------------------------------------------------------------------------------
  scene('4. the worker is scaled in: the watcher retires it through the lifecycle hook, before any shutdown');
  const rbac = (await kube.admin.raw('GET', '/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/zdt-agent:node-self-delete')).status === 200;
  note(`controller 00 granted nodes the deletion of their own Node object at bootstrap: ${rbac ? 'ClusterRoleBinding zdt-agent:node-self-delete exists' : 'MISSING'}`);
  const nodeName = `ip-${worker.privateIp.replaceAll('.', '-')}.${REGION}.compute.internal`;
  const kubelet = await startFakeKubelet(kube, nodeName);
  cleanups.push(() => kubelet.stop());
  await ensureNamespace(kube.admin, 'shop');
  for (const name of ['web-1', 'web-2']) await createPod(kube.admin, { namespace: 'shop', name, node: nodeName, owner: { kind: 'ReplicaSet', name: 'web' } });
  await createPod(kube.admin, { namespace: 'shop', name: 'logs-abcde', node: nodeName, owner: { kind: 'DaemonSet', name: 'logs' } });
  note(`Node ${nodeName} runs web-1, web-2 (ReplicaSet) and logs-abcde (DaemonSet); a test kubelet finalises evicted pods`);
  await kube.writeNodeKubeconfig(nodeName, rootW.at('/etc/kubernetes/kubelet.conf'));
  const as = new AutoScalingClient(common);
  await as.send(new CreateLaunchConfigurationCommand({ LaunchConfigurationName: 'demo-workers', ImageId: w.imageId, InstanceType: 'm6i.large' }));
  await as.send(new CreateAutoScalingGroupCommand({ AutoScalingGroupName: 'demo-workers', LaunchConfigurationName: 'demo-workers', MinSize: 0, MaxSize: 3, AvailabilityZones: [AZ] }));
  await as.send(new PutLifecycleHookCommand({ AutoScalingGroupName: 'demo-workers', LifecycleHookName: 'drain', LifecycleTransition: 'autoscaling:EC2_INSTANCE_TERMINATING', HeartbeatTimeout: 300 }));
  // IMDS says InService, then, 5 s on, what AWS says to an instance in a terminating lifecycle
  // hook (Terminating:Wait): the instance keeps running, no OS shutdown comes.
  const imdsW2 = await newImds({ instanceId: worker.instanceId, region: REGION, availabilityZone: AZ, instanceType: 'm6i.large', privateIp: worker.privateIp, tags: workerTags, targetLifecycleState: { terminatedAfterS: 5 } });
  const workerConfig = fs.readFileSync(rootW.at('/etc/zdt-agent/config.yaml'), 'utf8').replace(imdsW, imdsW2);
  fs.writeFileSync(rootW.at('/etc/zdt-agent/config.yaml'), workerConfig);
  await run('what each kind of notice would trigger on this worker', ['plan', '--root', rootW.dir], envW);
  const watcher = agent('the watcher (supervise-daemon runs it on workers and controllers)', ['watch', '--root', rootW.dir], envW);
  note('zdt-agent watch polls IMDS every second; the Auto Scaling group scales in: target-lifecycle-state turns Terminated');
  const retired = Date.now() + 120_000;
  const stateW = rootW.at('/var/lib/zdt-agent/state.json');
  const watchDone = () => {
    try {
      return Object.values((JSON.parse(fs.readFileSync(stateW, 'utf8')) as { watch?: { events?: Record<string, { status: string }> } }).watch?.events ?? {}).some((e) => e.status === 'done');
    } catch {
      return false;
    }
  };
  while (!watchDone() && Date.now() < retired) await sleep(200);
  const gone = (await kube.admin.raw('GET', `/api/v1/nodes/${nodeName}`)).status === 404;
  note(`before any shutdown: Node ${nodeName} ${gone ? 'is deleted' : 'STILL EXISTS'}; lifecycle: ${w.proxy.recorded('CompleteLifecycleAction').map((c) => `${c.params.LifecycleHookName ?? ''}=${c.params.LifecycleActionResult}`).join(', ')} (the hook's timeout is 300 s); heartbeats: ${w.proxy.recorded('RecordLifecycleActionHeartbeat').length}`);
  await run("the watcher's state", ['status', '--root', rootW.dir], envW);
  note('the instance shuts down: OpenRC stops the watcher first, then zdt-agent runs terminate');
  const watcherPid = watcher.pid();
  if (watcherPid) process.kill(watcherPid, 'SIGTERM');
  await watcher.done;
  await run('terminate (as OpenRC runs it at shutdown): finds the retire done, drains nothing again', ['terminate', '--root', rootW.dir], envW);
  note(`CompleteLifecycleAction on the terminating hook, in all: ${w.proxy.recorded('CompleteLifecycleAction').filter((c) => c.params.InstanceId === worker.instanceId && c.params.LifecycleHookName === 'drain').length} (the watcher's; the shutdown did not repeat it)`);

  // ---------------------------------------------------------------------------------------
  scene('5. the single controller is terminated: emergency etcd backup to S3, verified');
  const etcdDir = fs.mkdtempSync(path.join(os.tmpdir(), 'zdt-demo-etcd-'));
  cleanups.push(() => fs.rmSync(etcdDir, { recursive: true, force: true }));
  const etcd = await startEtcd({ dir: path.join(etcdDir, 'data'), name: 'etcd00' });
  cleanups.push(() => etcd.stop());
  execFileSync('etcdctl', ['--endpoints', etcd.clientUrl, 'put', '/registry/demo/marker', 'before-terminate'], { env: { ...process.env, ETCDCTL_API: '3' }, stdio: 'ignore' });
  note(`a real etcd (${etcd.clientUrl}) stands in for the controller's static-pod etcd`);
  const kmsKeyId = (await new KMSClient(common).send(new CreateKeyCommand({ Description: 'demo etcd backups' }))).KeyMetadata!.KeyId!;
  writeConfig(rootB.dir, { ...controllerConfig(imdsB), etcd: { clientUrl: etcd.clientUrl, backup: { bucket: 'demo-etcd-backups', kmsKeyId } } });
  await run('terminate of the single controller', ['terminate', '--event', 'terminate', '--root', rootB.dir], envB);
  const listed = await s3.send(new ListObjectsV2Command({ Bucket: 'demo-etcd-backups', Prefix: 'etcd-backups/demo/emergency/' }));
  for (const o of listed.Contents ?? []) {
    const head = await s3.send(new HeadObjectCommand({ Bucket: 'demo-etcd-backups', Key: o.Key!, ChecksumMode: 'ENABLED' }));
    note(`s3://demo-etcd-backups/${o.Key} ${o.Size} bytes, ${head.ServerSideEncryption}, SHA-256 ${head.ChecksumSHA256 ?? '(per part)'}`);
  }
  const restoreDir = path.join(etcdDir, 'restored');
  await run('restore that backup into a new data dir (what a replacement controller does)', ['etcd', 'restore', '--from', 'latest', '--data-dir', restoreDir, '--root', rootB.dir], envB);

  // ---------------------------------------------------------------------------------------
  scene('6. a bastion: sshd asks zdt-agent ssh-keys for the keys of IAM group members; a real ssh login');
  // Straight to moto: demoSshLogin waits on ssh synchronously, and the fidelity proxy lives in
  // this process (IAM needs none of its corrections).
  await demoSshLogin({ binary: BINARY, iamEndpoint: w.moto.endpoint, region: REGION, note, cleanups });

  // ---------------------------------------------------------------------------------------
  scene('7. a NAT instance is replaced: the new one takes the Elastic IP and the default route over');
  const nat = await predecessorHoldingEverything(w, await createSubnet(w));
  const natNew = await launchNat(w, nat.subnetId);
  const rootN = await newRoot();
  const natTags = { 'aws:autoscaling:groupName': 'demo-nat' };
  const imdsN = await newImds({ instanceId: natNew.id, region: REGION, availabilityZone: AZ, instanceType: 't3.micro', privateIp: '10.20.1.20', tags: natTags });
  const pool = { 'zdt:nat': nat.tag };
  writeConfig(rootN.dir, {
    node: { role: 'nat' },
    takeover: { readinessCommand: ['true'], elasticIp: { tags: pool }, routeTables: { tags: pool } },
    notify: { snsTopicArn: topicArn },
    boot: { launchLifecycleHook: 'launch' },
    aws: { ...awsSection(w.proxy.endpoint), imdsEndpoint: imdsN },
  });
  const envN = { ...process.env, AWS_ACCESS_KEY_ID: 'demo', AWS_SECRET_ACCESS_KEY: 'demo' };
  note(`old NAT ${nat.old.id} holds Elastic IP ${nat.allocationId} and 0.0.0.0/0 in ${nat.tableId}; new NAT ${natNew.id}`);
  await run('what the new NAT instance would take over, and from whom', ['plan', '--root', rootN.dir], envN);
  const who = (id: string | undefined) => (id === nat.old.id ? 'old' : id === natNew.id ? 'NEW' : (id ?? '-'));
  const samples: Array<{ ms: number; at: string }> = [];
  let sampling = true;
  const bootStart = Date.now();
  const sampler = (async () => {
    while (sampling) {
      const tick = Date.now();
      const now = await whereNatPoints(w, nat);
      samples.push({ ms: tick - bootStart, at: `route -> ${who(now.defaultRoute)}, Elastic IP -> ${who(now.eip)}` });
      await sleep(Math.max(0, 100 - (Date.now() - tick)));
    }
  })();
  await run('boot of the new NAT instance: ready, source/dest off, Elastic IP, route, verify, CONTINUE', ['boot', '--root', rootN.dir], envN);
  await sleep(300);
  sampling = false;
  await sampler;
  console.log('\n    where the route and the Elastic IP point, sampled every 100 ms from the start of the boot:');
  for (let i = 0; i < samples.length; i++) {
    const same = samples.slice(i).findIndex((x) => x.at !== samples[i]!.at);
    const n = same < 0 ? samples.length - i : same;
    console.log(`    +${String(samples[i]!.ms).padStart(5)} ms  ${samples[i]!.at}${n > 1 ? `   (${n} samples, to +${samples[i + n - 1]!.ms} ms)` : ''}`);
    i += n - 1;
  }
  note(`lifecycle of ${natNew.id}: ${w.proxy.recorded('CompleteLifecycleAction').filter((c) => c.params.InstanceId === natNew.id).map((c) => c.params.LifecycleActionResult).join(', ') || 'none'}`);
  await run('what the takeover moved, from whom, with the timings', ['status', '--root', rootN.dir], envN);
  // ---------------------------------------------------------------------------------------
  scene('SNS messages the agent sent (read back through the SQS queue)');
  let chatShown = false;
  for (;;) {
    const msgs = await sqs.send(new ReceiveMessageCommand({ QueueUrl: queueUrl, MaxNumberOfMessages: 10, WaitTimeSeconds: 1 }));
    if (!msgs.Messages?.length) break;
    for (const m of msgs.Messages) {
      const body = JSON.parse(m.Body ?? '{}') as Record<string, unknown>;
      if (body.source === 'custom') {
        // notify.format both: the worker's chat messages (Amazon Q Developer in chat applications).
        const chat = body as unknown as ChatNotification;
        console.log(`  chat: ${chat.content.title} [thread ${chat.metadata.threadId}]`);
        if (!chatShown) {
          chatShown = true;
          console.log(indent(`${chat.content.description}${chat.content.nextSteps ? `\n\nNext steps:\n${chat.content.nextSteps.map((x) => `- ${x}`).join('\n')}` : ''}`));
        }
        continue;
      }
      const ev = body as { event?: string; role?: string; instance?: { id: string }; details?: Record<string, unknown>; phases?: Array<{ name: string; result: string; durationMs: number }> };
      console.log(`  ${ev.event} ${ev.role} ${ev.instance?.id ?? ''} ${JSON.stringify(ev.details ?? {})}`);
      console.log(`      ${(ev.phases ?? []).map((p) => `${p.name}:${p.result}(${p.durationMs}ms)`).join(' ')}`);
    }
  }

  scene("the worker's metrics for node_exporter's textfile collector (docs/metrics.md)");
  const metricsDir = rootW.at('/var/lib/prometheus/node-exporter');
  for (const f of fs.existsSync(metricsDir) ? fs.readdirSync(metricsDir).sort() : []) note(`${path.join('/var/lib/prometheus/node-exporter', f)}`);
  const bootMetrics = path.join(metricsDir, 'zdt_agent_boot.prom');
  console.log(fs.existsSync(bootMetrics) ? indent(fs.readFileSync(bootMetrics, 'utf8')) : '    (no zdt_agent_boot.prom: MISSING)');

  console.log('\n\x1b[1m=== timeline\x1b[0m');
  for (const l of timeline) console.log(l);
}

async function cleanup(): Promise<void> {
  for (const c of cleanups.reverse()) {
    try {
      await c();
    } catch (err) {
      console.error(`cleanup: ${(err as Error).message}`);
    }
  }
}

main().then(
  async () => {
    await cleanup();
  },
  async (err: unknown) => {
    console.error(`demo failed: ${err instanceof Error ? err.stack : String(err)}`);
    await cleanup();
    process.exitCode = 1;
  },
);
