import type { Config } from '../config/schema.js';
import type { Identity } from '../host/identity.js';
import { sdk, type Aws } from '../host/aws.js';
import type { Logger } from '../log/logger.js';
import type { PhaseRecord } from '../log/state.js';
import { redact, redactDeep } from '../log/redact.js';
import { agentVersion } from '../version.js';
import { chatFactsOf, renderChat, type ChatNotification } from './chat.js';

/**
 * SNS event messages, one schema for boot, terminate and the watcher (docs/events.md). Everything in a
 * message is redacted; sending never fails the caller.
 */

export const EVENT_SCHEMA = 'zdt-agent/event/v1';
export type EventName = 'boot.succeeded' | 'boot.failed' | 'takeover.succeeded' | 'takeover.failed' | 'terminate.started' | 'terminate.finished' | 'interruption.noticed';

export interface AgentEvent {
  schema: typeof EVENT_SCHEMA;
  event: EventName;
  time: string;
  cluster: string | undefined;
  role: string;
  controllerIndex: string | undefined;
  instance: { id: string; type: string; az: string; region: string; lifecycle: string; privateIp: string };
  asg: string | undefined;
  stack: { name: string; logicalId: string | undefined } | undefined;
  agentVersion: string;
  kubernetesVersion: string | undefined;
  phases: Array<{ name: string; result: string; durationMs: number; error?: string | undefined }>;
  failure: { phase: string; error: string; logTail: string[] } | undefined;
  /** Event-specific facts: terminate's event kind and backup key, boot's join mode, … */
  details: Record<string, string | number | boolean>;
  links: { instance: string; asg?: string | undefined; stack?: string | undefined } | undefined;
}

export const LOG_TAIL_LINES = 50;

export function consoleLinks(identity: Identity): NonNullable<AgentEvent['links']> {
  const r = encodeURIComponent(identity.region);
  const base = `https://${identity.region}.console.aws.amazon.com`;
  return {
    instance: `${base}/ec2/home?region=${r}#InstanceDetails:instanceId=${encodeURIComponent(identity.instanceId)}`,
    asg: identity.asgName ? `${base}/ec2/home?region=${r}#AutoScalingGroupDetails:id=${encodeURIComponent(identity.asgName)};view=activity` : undefined,
    stack: identity.stackName ? `${base}/cloudformation/home?region=${r}#/stacks/stackinfo?stackId=${encodeURIComponent(identity.stackName)}` : undefined,
  };
}

export function buildEvent(o: {
  event: EventName;
  config: Config;
  identity: Identity;
  phases: Record<string, PhaseRecord>;
  kubernetesVersion?: string | undefined;
  failure?: { phase: string; error: string } | undefined;
  log?: Logger | undefined;
  details?: Record<string, string | number | boolean> | undefined;
  now?: Date;
}): AgentEvent {
  const { identity: id, config } = o;
  const ev: AgentEvent = {
    schema: EVENT_SCHEMA,
    event: o.event,
    time: (o.now ?? new Date()).toISOString(),
    cluster: config.cluster?.name,
    role: config.node.role,
    controllerIndex: config.node.controllerIndex,
    instance: { id: id.instanceId, type: id.instanceType, az: id.availabilityZone, region: id.region, lifecycle: id.lifecycle, privateIp: id.privateIp },
    asg: id.asgName,
    stack: id.stackName ? { name: id.stackName, logicalId: id.logicalId } : undefined,
    agentVersion,
    kubernetesVersion: o.kubernetesVersion,
    phases: Object.entries(o.phases).map(([name, p]) => ({ name, result: p.result, durationMs: p.durationMs, error: p.error })),
    failure: o.failure ? { ...o.failure, logTail: o.log?.tail(LOG_TAIL_LINES) ?? [] } : undefined,
    details: o.details ?? {},
    links: config.notify.consoleLinks ? consoleLinks(id) : undefined,
  };
  return redactDeep(ev);
}

export function subjectOf(ev: AgentEvent): string {
  const s = `[${ev.cluster ?? 'no-cluster'}] ${ev.event} ${ev.role}${ev.controllerIndex ? ` ${ev.controllerIndex}` : ''} ${ev.instance.id}`;
  // SNS subjects: ASCII, no newlines, at most 100 characters.
  return s.replace(/[^\x20-\x7e]/g, '?').slice(0, 100);
}

/** SNS allows 256 KiB; the log tail is shortened first if a message would exceed it. */
const MAX_MESSAGE_BYTES = 250 * 1024;

export function serialise(ev: AgentEvent): string {
  let text = JSON.stringify(ev, null, 2);
  while (Buffer.byteLength(text) > MAX_MESSAGE_BYTES && ev.failure && ev.failure.logTail.length > 0) {
    ev.failure.logTail = ev.failure.logTail.slice(Math.ceil(ev.failure.logTail.length / 2));
    text = JSON.stringify(ev, null, 2);
  }
  return text;
}

export type NotifyFormat = Config['notify']['format'];

/** The SNS messages of one event: the agent's JSON, the chat notification, or both (notify.format). */
export interface Outgoing {
  format: 'zdt' | 'chat';
  subject: string | undefined;
  message: string;
}

export function outgoingOf(ev: AgentEvent, format: NotifyFormat, chat: () => ChatNotification): Outgoing[] {
  const out: Outgoing[] = [];
  if (format !== 'chat') out.push({ format: 'zdt', subject: subjectOf(ev), message: serialise(ev) });
  // No Subject: the chat service shows the title, and email or SMS subscribers of a chat-only topic
  // fall back to the topic's display name.
  if (format !== 'zdt') out.push({ format: 'chat', subject: undefined, message: JSON.stringify(chat()) });
  return out;
}

/** The ASG's ARN for the chat message's related resources; undefined when it cannot be read (optional permission). */
async function asgArnOf(aws: Aws, asgName: string | undefined, log: Logger, signal: AbortSignal): Promise<string | undefined> {
  if (!asgName) return undefined;
  try {
    const { DescribeAutoScalingGroupsCommand } = await sdk.autoscaling();
    const client = await aws.autoscaling();
    const out = await client.send(new DescribeAutoScalingGroupsCommand({ AutoScalingGroupNames: [asgName] }), { abortSignal: signal });
    return out.AutoScalingGroups?.[0]?.AutoScalingGroupARN;
  } catch (err) {
    log.debug('no ASG ARN for the chat message', { asg: asgName, err: redact((err as Error).message) });
    return undefined;
  }
}

/**
 * Publish in the configured format(s); returns false (and logs why) instead of throwing: a
 * notification never fails a boot or a shutdown. Every message carries the attributes
 * `event` and `format`, for subscription filter policies (docs/events.md).
 */
export async function publishEvent(
  aws: Aws,
  notify: Pick<Config['notify'], 'snsTopicArn' | 'format'>,
  ev: AgentEvent,
  identity: Identity,
  log: Logger,
  timeoutMs = 10_000,
): Promise<boolean> {
  const topicArn = notify.snsTopicArn;
  if (!topicArn) return false;
  try {
    // AbortSignal.timeout takes whole milliseconds only (a fraction throws).
    const signal = AbortSignal.timeout(Math.max(1, Math.floor(timeoutMs)));
    // The ARN is a nicety: at most a third of the time, and never more than 2 s.
    const lookupMs = Math.max(1, Math.floor(Math.min(2000, timeoutMs / 3)));
    const asgArn = notify.format === 'zdt' ? undefined : await asgArnOf(aws, identity.asgName, log, AbortSignal.any([signal, AbortSignal.timeout(lookupMs)]));
    const messages = outgoingOf(ev, notify.format, () => renderChat(ev, chatFactsOf(identity, asgArn)));
    const { PublishCommand } = await sdk.sns();
    const sns = await aws.sns();
    for (const m of messages) {
      const out = await sns.send(
        new PublishCommand({
          TopicArn: topicArn,
          Subject: m.subject,
          Message: m.message,
          MessageAttributes: { event: { DataType: 'String', StringValue: ev.event }, format: { DataType: 'String', StringValue: m.format } },
        }),
        { abortSignal: signal },
      );
      log.info('sent SNS event', { event: ev.event, format: m.format, messageId: out.MessageId });
    }
    return true;
  } catch (err) {
    log.warn('could not send SNS event', { event: ev.event, topic: topicArn, err: redact((err as Error).message) });
    return false;
  }
}
