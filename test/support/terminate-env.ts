import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { CreateBucketCommand, S3Client } from '@aws-sdk/client-s3';
import { CreateKeyCommand, KMSClient } from '@aws-sdk/client-kms';
import { stringify } from 'yaml';
import { AutoScalingClient, CreateAutoScalingGroupCommand, CreateLaunchConfigurationCommand, PutLifecycleHookCommand } from '@aws-sdk/client-auto-scaling';
import { CreateTopicCommand, SNSClient, SubscribeCommand } from '@aws-sdk/client-sns';
import { CreateQueueCommand, GetQueueAttributesCommand, ReceiveMessageCommand, SQSClient } from '@aws-sdk/client-sqs';
import type { AgentEvent } from '../../agent/notify/events.js';
import { buildContext, type CommandContext } from '../../agent/context.js';
import type { ConfigInput } from '../../agent/config/schema.js';

/**
 * Shared by the etcd backup, terminate and watch tests: a node root with a kubeadm-like
 * /etc/kubernetes, a config file for it, and the agent's context built from that file.
 */

export const REGION = 'eu-central-1';

export function useTestCredentials(): void {
  process.env.AWS_ACCESS_KEY_ID = 'testing';
  process.env.AWS_SECRET_ACCESS_KEY = 'testing';
  process.env.AWS_REGION = REGION;
  delete process.env.AWS_PROFILE;
}

export function testClients(endpoint: string): { s3: S3Client; kms: KMSClient } {
  const common = { region: REGION, endpoint, credentials: { accessKeyId: 'testing', secretAccessKey: 'testing' } };
  return { s3: new S3Client({ ...common, forcePathStyle: true }), kms: new KMSClient(common) };
}

export async function makeBucket(s3: S3Client, name: string): Promise<void> {
  await s3.send(new CreateBucketCommand({ Bucket: name, CreateBucketConfiguration: { LocationConstraint: REGION } }));
}

export async function makeKmsKey(kms: KMSClient): Promise<string> {
  const out = await kms.send(new CreateKeyCommand({ Description: 'zdt-agent test backups' }));
  return out.KeyMetadata!.KeyId!;
}

/** A PKI tree as kubeadm writes it (random bytes stand in for the keys and certificates). */
export function writeFakePki(root: string): Record<string, Buffer> {
  const files: Record<string, Buffer> = {};
  for (const f of ['ca.crt', 'ca.key', 'sa.key', 'sa.pub', 'front-proxy-ca.crt', 'front-proxy-ca.key', 'etcd/ca.crt', 'etcd/ca.key']) {
    const data = Buffer.from(`${f}\n${randomBytes(600).toString('base64')}\n`);
    const p = path.join(root, 'etc/kubernetes/pki', f);
    fs.mkdirSync(path.dirname(p), { recursive: true });
    fs.writeFileSync(p, data, { mode: f.endsWith('.key') ? 0o600 : 0o644 });
    files[f] = data;
  }
  fs.mkdirSync(path.join(root, 'etc/kubernetes/zdt-agent'), { recursive: true });
  fs.writeFileSync(
    path.join(root, 'etc/kubernetes/zdt-agent/init.yaml'),
    'apiVersion: kubeadm.k8s.io/v1beta4\nkind: ClusterConfiguration\nkubernetesVersion: v1.34.1\nclusterName: test\n',
  );
  return files;
}

/** Writes `config` as the root's /etc/zdt-agent/config.yaml and builds the agent's context from it. */
export async function contextFor(root: string, config: ConfigInput): Promise<CommandContext> {
  const file = path.join(root, 'etc/zdt-agent/config.yaml');
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(file, stringify(config));
  return buildContext({ root, logLevel: process.env.ZDT_TEST_LOG ? 'debug' : 'warn' }, { instance: 'none', console: process.env.ZDT_TEST_LOG ? process.stderr : null });
}

/** Every service at `endpoint`, or S3 alone at `s3Endpoint` when given (MinIO, minio-env.ts). */
export function awsConfig(endpoint: string, s3Endpoint?: string): NonNullable<ConfigInput['aws']> {
  return {
    region: REGION,
    endpoint,
    ...(s3Endpoint ? { endpoints: { s3: s3Endpoint } } : {}),
    s3ForcePathStyle: true,
    maxAttempts: 2,
    requestTimeoutMs: 5000,
    connectTimeoutMs: 2000,
  };
}

const clientConfig = (endpoint: string) => ({ region: REGION, endpoint, credentials: { accessKeyId: 'testing', secretAccessKey: 'testing' } });

/** An SNS topic with an SQS queue subscribed, to read the agent's messages back. */
export async function startEventQueue(endpoint: string, name: string): Promise<{ topicArn: string; drain(): Promise<AgentEvent[]> }> {
  const sns = new SNSClient(clientConfig(endpoint));
  const sqs = new SQSClient(clientConfig(endpoint));
  const topicArn = (await sns.send(new CreateTopicCommand({ Name: name }))).TopicArn!;
  const queueUrl = (await sqs.send(new CreateQueueCommand({ QueueName: name }))).QueueUrl!;
  const queueArn = (await sqs.send(new GetQueueAttributesCommand({ QueueUrl: queueUrl, AttributeNames: ['QueueArn'] }))).Attributes!.QueueArn!;
  await sns.send(new SubscribeCommand({ TopicArn: topicArn, Protocol: 'sqs', Endpoint: queueArn }));
  return {
    topicArn,
    /** Every message that reached the queue since the last call. */
    drain: async () => {
      const out: AgentEvent[] = [];
      for (let i = 0; i < 10; i++) {
        const r = await sqs.send(new ReceiveMessageCommand({ QueueUrl: queueUrl, MaxNumberOfMessages: 10, WaitTimeSeconds: 0 }));
        for (const m of r.Messages ?? []) out.push(JSON.parse((JSON.parse(m.Body!) as { Message: string }).Message) as AgentEvent);
        if (!r.Messages?.length) break;
      }
      return out;
    },
  };
}

/** An empty Auto Scaling group with a terminating lifecycle hook. */
export async function createAsgWithHook(endpoint: string, asg: string, hook: string): Promise<void> {
  const as = new AutoScalingClient(clientConfig(endpoint));
  await as.send(new CreateLaunchConfigurationCommand({ LaunchConfigurationName: `${asg}-lc`, ImageId: 'ami-12c6146b', InstanceType: 'm7i.large' }));
  await as.send(
    new CreateAutoScalingGroupCommand({ AutoScalingGroupName: asg, LaunchConfigurationName: `${asg}-lc`, MinSize: 0, MaxSize: 2, DesiredCapacity: 0, AvailabilityZones: [`${REGION}a`] }),
  );
  await as.send(new PutLifecycleHookCommand({ AutoScalingGroupName: asg, LifecycleHookName: hook, LifecycleTransition: 'autoscaling:EC2_INSTANCE_TERMINATING', HeartbeatTimeout: 300 }));
}
