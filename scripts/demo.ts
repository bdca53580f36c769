/**
 * `make demo`: the built binary against the local testbed, end to end, with a readable
 * timeline. Everything it starts (moto, fidelity proxy, IMDS mock, loop device) it ends by
 * PID or device name, also when a step fails.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { CreateVolumeCommand, EC2Client, RunInstancesCommand } from '@aws-sdk/client-ec2';
import { AddUserToGroupCommand, CreateGroupCommand, CreateUserCommand, IAMClient, UploadSSHPublicKeyCommand } from '@aws-sdk/client-iam';
import { CreateBucketCommand, S3Client } from '@aws-sdk/client-s3';
import { CreateTopicCommand, SNSClient, SubscribeCommand } from '@aws-sdk/client-sns';
import { CreateQueueCommand, GetQueueAttributesCommand, ReceiveMessageCommand, SQSClient } from '@aws-sdk/client-sqs';
import { startFidelityProxy } from '../test/testbed/fidelity-proxy.js';
import { startImds } from '../test/testbed/imds.js';
import { createLoopDevice } from '../test/testbed/loop.js';
import { startMoto } from '../test/testbed/moto.js';
import { makeTempRoot } from '../test/testbed/root.js';
import { standinPath } from '../test/testbed/standins.js';

const BIN = path.resolve('dist/zdt-agent');
const REGION = 'eu-central-1';
const AZ = `${REGION}a`;
const CLUSTER = 'demo';
const creds = { accessKeyId: 'demo', secretAccessKey: 'demo' };
const t0 = Date.now();
const timeline: string[] = [];

function step(what: string): void {
  const line = `+${((Date.now() - t0) / 1000).toFixed(1).padStart(6)}s  ${what}`;
  timeline.push(line);
  console.log(`\n=== ${line}`);
}

const cleanups: Array<() => Promise<void> | void> = [];

async function main(): Promise<void> {
  step('start moto and the fidelity proxy');
  const moto = await startMoto();
  cleanups.push(() => moto.stop());
  const proxy = await startFidelityProxy({ target: moto.endpoint });
  cleanups.push(() => proxy.stop());
  const aws = { region: REGION, endpoint: proxy.endpoint, credentials: creds };

  step('seed a small cluster in moto: instance, etcd volume, backup bucket, SNS topic -> SQS, IAM group with SSH keys');
  const ec2 = new EC2Client(aws);
  const inst = await ec2.send(
    new RunInstancesCommand({
      ImageId: 'ami-12c6146b',
      InstanceType: 'm6i.large',
      MinCount: 1,
      MaxCount: 1,
      Placement: { AvailabilityZone: AZ },
      TagSpecifications: [{ ResourceType: 'instance', Tags: [{ Key: 'zdt:cluster', Value: CLUSTER }, { Key: 'zdt:role', Value: 'controller' }, { Key: 'zdt:controller-index', Value: '00' }] }],
    }),
  );
  const instanceId = inst.Instances![0]!.InstanceId!;
  const vol = await ec2.send(
    new CreateVolumeCommand({
      AvailabilityZone: AZ,
      Size: 1,
      VolumeType: 'gp3',
      TagSpecifications: [{ ResourceType: 'volume', Tags: [{ Key: 'zdt:cluster', Value: CLUSTER }, { Key: 'zdt:role', Value: 'etcd' }] }],
    }),
  );
  const volumeId = vol.VolumeId!;
  await new S3Client({ ...aws, forcePathStyle: true }).send(new CreateBucketCommand({ Bucket: 'demo-etcd-backups', CreateBucketConfiguration: { LocationConstraint: REGION } }));
  const sns = new SNSClient(aws);
  const topicArn = (await sns.send(new CreateTopicCommand({ Name: 'demo-events' }))).TopicArn!;
  const sqs = new SQSClient(aws);
  const queueUrl = (await sqs.send(new CreateQueueCommand({ QueueName: 'demo-events' }))).QueueUrl!;
  const queueArn = (await sqs.send(new GetQueueAttributesCommand({ QueueUrl: queueUrl, AttributeNames: ['QueueArn'] }))).Attributes!.QueueArn!;
  await sns.send(new SubscribeCommand({ TopicArn: topicArn, Protocol: 'sqs', Endpoint: queueArn, Attributes: { RawMessageDelivery: 'true' } }));
  const iam = new IAMClient(aws);
  await iam.send(new CreateGroupCommand({ GroupName: 'bastion-users' }));
  const keyDir = fs.mkdtempSync(path.join(os.tmpdir(), 'zdt-demo-keys-'));
  cleanups.push(() => fs.rmSync(keyDir, { recursive: true, force: true }));
  for (const user of ['alice', 'bob+ops']) {
    await iam.send(new CreateUserCommand({ UserName: user }));
    await iam.send(new AddUserToGroupCommand({ GroupName: 'bastion-users', UserName: user }));
    const keyFile = path.join(keyDir, user.replace(/\W/g, '_'));
    execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', user, '-f', keyFile]);
    await iam.send(new UploadSSHPublicKeyCommand({ UserName: user, SSHPublicKeyBody: fs.readFileSync(`${keyFile}.pub`, 'utf8').trim() }));
  }
  console.log(`instance ${instanceId}, volume ${volumeId}, topic ${topicArn}`);

  step('a temporary root with the etcd volume as a real loop device under /dev/disk/by-id');
  const root = await makeTempRoot();
  cleanups.push(() => root.cleanup());
  const loop = await createLoopDevice(64);
  cleanups.unshift(() => loop.detach());
  const byId = path.join(root.dir, 'dev/disk/by-id', `nvme-Amazon_Elastic_Block_Store_${volumeId.replace('-', '')}`);
  fs.mkdirSync(path.dirname(byId), { recursive: true });
  fs.symlinkSync(loop.device, byId);

  const userData = `#zdt-agent
cluster: { name: ${CLUSTER}, apiEndpoint: 'k8s.${CLUSTER}.internal:6443', kubernetesVersion: '1.34.X' }
node: { role: controller, controllerIndex: '00' }
etcd: { backup: { bucket: demo-etcd-backups } }
notify: { snsTopicArn: '${topicArn}' }
ssh: { iamGroup: bastion-users }
`;
  step('start the IMDS mock (amazon-ec2-metadata-mock) for controller 00, with the zdt-agent user-data');
  const imds = await startImds({
    instanceId,
    region: REGION,
    availabilityZone: AZ,
    instanceType: 'm6i.large',
    privateIp: '10.0.1.10',
    userData,
    tags: { 'zdt:cluster': CLUSTER, 'zdt:role': 'controller', 'zdt:controller-index': '00' },
  });
  cleanups.push(() => imds.stop());
  const configFile = path.join(root.dir, 'demo-config.yaml');
  fs.writeFileSync(configFile, `aws: { endpoint: '${proxy.endpoint}', imdsEndpoint: '${imds.endpoint}', s3ForcePathStyle: true }\n`);
  const recordFile = path.join(root.dir, 'standins.jsonl');
  const env = {
    ...process.env,
    PATH: `${standinPath()}:${process.env.PATH}`,
    AWS_ACCESS_KEY_ID: creds.accessKeyId,
    AWS_SECRET_ACCESS_KEY: creds.secretAccessKey,
    ZDT_RECORD_FILE: recordFile,
    ZDT_APK_VERSIONS: '1.34.1,1.34.2',
  };
  const run = (what: string, args: string[]): number => {
    step(`zdt-agent ${args.join(' ')}  — ${what}`);
    const r = spawnSync(BIN, [...args, '--root', root.dir, '--config', configFile], { env, stdio: 'inherit', timeout: 300_000 });
    console.log(`(exit ${r.status ?? r.signal})`);
    return r.status ?? 1;
  };

  run('validate the config from user-data, tags and the local file', ['config', 'validate', '--instance']);
  run('what boot and terminate would do here', ['plan']);
  run('controller 00 boots: volume, kubeadm init (recording stand-in)', ['boot']);
  run('boot again: a fast no-op', ['boot']);
  run('the SSH keys of alice (member of bastion-users)', ['ssh-keys', 'alice']);
  run('what boot did, phase by phase', ['status']);
  run('single-controller terminate: emergency backup to S3', ['terminate', '--event', 'terminate']);

  step('what the recording stand-ins received');
  if (fs.existsSync(recordFile)) {
    for (const line of fs.readFileSync(recordFile, 'utf8').trim().split('\n').filter(Boolean)) {
      const r = JSON.parse(line) as { tool: string; argv: string[] };
      console.log(`${r.tool} ${r.argv.join(' ')}`);
    }
  }

  step('SNS messages received through the SQS queue');
  for (let i = 0; i < 5; i++) {
    const msgs = await sqs.send(new ReceiveMessageCommand({ QueueUrl: queueUrl, MaxNumberOfMessages: 10, WaitTimeSeconds: 1 }));
    for (const m of msgs.Messages ?? []) {
      const ev = JSON.parse(m.Body ?? '{}') as { event?: string; instance?: { id: string }; phases?: Array<{ name: string; result: string; durationMs: number }> };
      console.log(`${ev.event} ${ev.instance?.id ?? ''} ${(ev.phases ?? []).map((p) => `${p.name}:${p.result}`).join(' ')}`);
    }
    if (!msgs.Messages?.length) break;
  }

  console.log('\n=== timeline');
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
