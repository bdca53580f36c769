import fs from 'node:fs';
import { AutoScalingClient, CreateAutoScalingGroupCommand, CreateLaunchConfigurationCommand } from '@aws-sdk/client-auto-scaling';
import { CreateTopicCommand, SNSClient, SubscribeCommand } from '@aws-sdk/client-sns';
import { CreateQueueCommand, GetQueueAttributesCommand, ReceiveMessageCommand, SQSClient } from '@aws-sdk/client-sqs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { resolveConfig } from '../../agent/config/load.js';
import { makeAws, type Aws } from '../../agent/host/aws.js';
import { createLogger } from '../../agent/log/logger.js';
import { buildEvent, publishEvent, type AgentEvent } from '../../agent/notify/events.js';
import type { ChatNotification } from '../../agent/notify/chat.js';
import { AZ, REGION, awsSection, credentials, identityOf, launchInstance, startAwsWorld, type AwsWorld } from '../support/boot-env.js';
import { EXAMPLE_TAIL, exampleLog } from '../support/event-examples.js';

/**
 * notify.format both against moto: one topic, a chat subscription and a JSON subscription
 * with filter policies on the `format` attribute, each message read back through its SQS
 * queue. Chat messages are validated against the service's published schema.
 */

const schema = z.fromJSONSchema(JSON.parse(fs.readFileSync(new URL('../../docs/schemas/chat-notification.schema.json', import.meta.url), 'utf8')) as Parameters<typeof z.fromJSONSchema>[0]);

let w: AwsWorld;
let sqs: SQSClient;
let topicArn: string;
let aws: Aws;
const queues: Record<'chat' | 'zdt', string> = { chat: '', zdt: '' };

beforeAll(async () => {
  w = await startAwsWorld();
  const common = { region: REGION, endpoint: w.proxy.endpoint, credentials };
  const sns = new SNSClient(common);
  sqs = new SQSClient(common);
  topicArn = (await sns.send(new CreateTopicCommand({ Name: 'zdt-chat' }))).TopicArn!;
  for (const format of ['chat', 'zdt'] as const) {
    queues[format] = (await sqs.send(new CreateQueueCommand({ QueueName: `zdt-${format}` }))).QueueUrl!;
    const arn = (await sqs.send(new GetQueueAttributesCommand({ QueueUrl: queues[format], AttributeNames: ['QueueArn'] }))).Attributes!.QueueArn!;
    await sns.send(
      new SubscribeCommand({ TopicArn: topicArn, Protocol: 'sqs', Endpoint: arn, Attributes: { RawMessageDelivery: 'true', FilterPolicy: JSON.stringify({ format: [format] }) } }),
    );
  }
  const as = new AutoScalingClient(common);
  await as.send(new CreateLaunchConfigurationCommand({ LaunchConfigurationName: 'prod-workers', ImageId: w.imageId, InstanceType: 'm5.large' }));
  await as.send(new CreateAutoScalingGroupCommand({ AutoScalingGroupName: 'prod-workers', LaunchConfigurationName: 'prod-workers', MinSize: 0, MaxSize: 2, AvailabilityZones: [AZ] }));
  aws = makeAws({ aws: resolveConfig([{ source: 'file', origin: 't', data: { node: { role: 'bastion' }, ssh: { iamGroup: 'g' }, aws: awsSection(w.proxy.endpoint) } }]).aws, region: async () => REGION });
}, 120_000);

afterAll(async () => {
  sqs?.destroy();
  await w?.stop();
});

async function receive(queueUrl: string, n: number, timeoutMs = 20_000): Promise<string[]> {
  const out: string[] = [];
  const deadline = Date.now() + timeoutMs;
  while (out.length < n && Date.now() < deadline) {
    const r = await sqs.send(new ReceiveMessageCommand({ QueueUrl: queueUrl, MaxNumberOfMessages: 10, WaitTimeSeconds: 1 }));
    for (const m of r.Messages ?? []) out.push(m.Body!);
  }
  return out;
}

describe('chat notifications through SNS', () => {
  it('format both: the chat subscription gets a valid custom notification, the JSON one the agent event, threaded by instance', async () => {
    const tags = {
      'aws:autoscaling:groupName': 'prod-workers',
      'aws:cloudformation:stack-name': 'prod',
      'aws:cloudformation:logical-id': 'Workers',
      'aws:cloudformation:stack-id': `arn:aws:cloudformation:${REGION}:123456789012:stack/prod/6c7a2f40-0b1e-11f0-9c3e-0a5b1e2c3d4f`,
    };
    const inst = await launchInstance(w, { tags });
    const identity = identityOf({ instanceId: inst.instanceId, privateIp: inst.privateIp, tags });
    const config = resolveConfig([
      { source: 'file', origin: 't', data: { cluster: { name: 'prod' }, node: { role: 'worker' }, notify: { snsTopicArn: topicArn, format: 'both' }, aws: awsSection(w.proxy.endpoint) } },
    ]);
    const log = createLogger({ console: null });
    const lines = [...EXAMPLE_TAIL, ...Array.from({ length: 200 }, (_, i) => `2026-03-01T12:01:03.${String(i).padStart(3, '0')}Z INFO  [worker-join] waiting for the API server ${'.'.repeat(160)}`)];
    const failed = buildEvent({
      event: 'boot.failed',
      config,
      identity,
      phases: { identity: { result: 'ok', startedAt: 't', durationMs: 20 }, 'worker-join': { result: 'failed', startedAt: 't', durationMs: 1800000, error: 'ControlPlaneTimeout: no answer' } },
      failure: { phase: 'worker-join', error: 'ControlPlaneTimeout: no answer; check cluster.apiEndpoint' },
      log: exampleLog(lines),
    });
    const started = buildEvent({ event: 'terminate.started', config, identity, phases: {}, details: { event: 'terminate', eventSource: 'lifecycle-hook', budgetS: 120 } });
    expect(await publishEvent(aws, config.notify, failed, identity, log)).toBe(true);
    // terminate passes what is left of its budget, e.g. 5000 ms (a third of it is not a whole number).
    expect(await publishEvent(aws, config.notify, started, identity, log, 5000)).toBe(true);

    const chats = (await receive(queues.chat, 2)).map((b) => JSON.parse(b) as ChatNotification);
    expect(chats).toHaveLength(2);
    for (const c of chats) {
      const r = schema.safeParse(c);
      expect(r.success, r.success ? '' : JSON.stringify(r.error.issues)).toBe(true);
    }
    const byType = Object.fromEntries(chats.map((c) => [c.metadata.eventType, c]));
    const boot = byType['boot.failed']!;
    expect(boot.content.title).toBe(`🔴 Boot failed in worker-join: prod worker ${inst.instanceId}`);
    expect(boot.metadata.threadId).toBe(byType['terminate.started']!.metadata.threadId);
    expect(boot.metadata.relatedResources).toEqual([
      `arn:aws:ec2:${REGION}:123456789012:instance/${inst.instanceId}`,
      expect.stringMatching(new RegExp(`^arn:aws:autoscaling:${REGION}:\\d{12}:autoScalingGroup:[0-9a-f-]+:autoScalingGroupName/prod-workers$`)),
      tags['aws:cloudformation:stack-id'],
    ]);
    expect(boot.content.description).toMatch(/… \d+ earlier lines cut to the chat size limit …/);
    expect(boot.content.description).not.toContain('0123456789abcdef');
    expect(boot.content.nextSteps?.[0]).toMatch(/API server endpoint/);

    const events = (await receive(queues.zdt, 2)).map((b) => JSON.parse(b) as AgentEvent);
    expect(events.map((e) => e.event).sort()).toEqual(['boot.failed', 'terminate.started']);
    expect(events.every((e) => e.schema === 'zdt-agent/event/v1')).toBe(true);
    // Nothing crossed over: each queue holds its format only.
    expect(await receive(queues.chat, 1, 2000)).toEqual([]);
  }, 90_000);
});
