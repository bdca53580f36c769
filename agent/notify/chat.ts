import type { Identity } from '../host/identity.js';
import { redactDeep } from '../log/redact.js';
import type { AgentEvent } from './events.js';

/**
 * The chat rendering of an event: an Amazon Q Developer in chat applications (formerly AWS
 * Chatbot) custom notification, which the service posts to Slack, Microsoft Teams or Chime
 * without a Lambda in between. The schema and its limits are written down in
 * docs/schemas/chat-notification.schema.json with the page they come from.
 *
 * Everything here is built from an AgentEvent, which buildEvent has already redacted; the
 * result goes through redactDeep once more, so no new text escapes the redaction path.
 */

export interface ChatNotification {
  version: '1.0';
  source: 'custom';
  id: string;
  content: {
    textType: 'client-markdown';
    title: string;
    description: string;
    nextSteps?: string[] | undefined;
    keywords: string[];
  };
  metadata: {
    threadId: string;
    summary: string;
    eventType: string;
    relatedResources: string[];
    additionalContext: Record<string, string>;
  };
}

/** Limits of the published schema (docs/schemas/chat-notification.schema.json). */
export const CHAT_LIMITS = { title: 250, description: 8000 } as const;

/** What the chat message needs beyond the event: the account (for ARNs) and the ASG's ARN when it was looked up. */
export interface ChatFacts {
  /** Unknown on an instance whose IMDS identity document could not be read: no instance ARN then. */
  accountId: string | undefined;
  asgArn?: string | undefined;
  /** The instance's `aws:cloudformation:stack-id` tag: the stack's ARN. */
  stackArn?: string | undefined;
}

export function chatFactsOf(identity: Identity, asgArn?: string): ChatFacts {
  return { accountId: identity.accountId, asgArn, stackArn: identity.tags['aws:cloudformation:stack-id'] };
}

export function partitionOf(region: string): string {
  if (region.startsWith('cn-')) return 'aws-cn';
  if (region.startsWith('us-gov-')) return 'aws-us-gov';
  return 'aws';
}

/** One thread per instance: its boot, interruption notice, takeover and terminate answer each other. */
export function threadIdOf(ev: AgentEvent): string {
  return `zdt-${ev.cluster ?? 'no-cluster'}-${ev.instance.id}`;
}

const ICON: Record<'ok' | 'bad' | 'info', string> = { ok: '✅', bad: '🔴', info: '🔶' };

function headline(ev: AgentEvent): { icon: string; what: string } {
  const d = ev.details;
  const kind = typeof d.event === 'string' ? d.event : undefined;
  switch (ev.event) {
    case 'boot.succeeded':
      return { icon: ICON.ok, what: 'Boot succeeded' };
    case 'boot.failed':
      return { icon: ICON.bad, what: `Boot failed in ${ev.failure?.phase ?? 'a phase'}` };
    case 'terminate.started':
      return { icon: ICON.info, what: `Shutting down${kind ? ` (${kind})` : ''}` };
    case 'terminate.finished':
      if (d.result === 'deadline') return { icon: ICON.bad, what: `Shutdown ran out of time${kind ? ` (${kind})` : ''}` };
      if (ev.failure) return { icon: ICON.bad, what: `Shutdown failed in ${ev.failure.phase}${kind ? ` (${kind})` : ''}` };
      return { icon: ICON.ok, what: `Shutdown finished${kind ? ` (${kind})` : ''}` };
    case 'takeover.succeeded':
      return { icon: ICON.ok, what: `Took over its role${typeof d.takeoverFrom === 'string' ? ` from ${d.takeoverFrom}` : ''}` };
    case 'takeover.failed':
      return { icon: ICON.bad, what: 'Role takeover failed (the previous instance keeps serving)' };
    case 'interruption.noticed':
      return { icon: ICON.info, what: `Interruption notice ${String(d.kind ?? '')}: ${String(d.action ?? 'log')}` };
  }
}

const who = (ev: AgentEvent) => `${ev.role}${ev.controllerIndex ? ` ${ev.controllerIndex}` : ''}`;

function phaseTable(ev: AgentEvent): string[] {
  if (ev.phases.length === 0) return [];
  const width = Math.max(5, ...ev.phases.map((p) => p.name.length));
  const rows = ev.phases.map((p) => `${p.name.padEnd(width)}  ${p.result.padEnd(8)}  ${`${(p.durationMs / 1000).toFixed(1)}s`.padStart(8)}`);
  return ['```', `${'phase'.padEnd(width)}  ${'result'.padEnd(8)}  ${'time'.padStart(8)}`, ...rows, '```'];
}

/** What an operator looks at first, by the step that failed (docs/events.md). */
const NEXT_STEPS: Record<string, string[]> = {
  identity: ['Check that IMDS answers on the instance (IMDSv2 hop limit) and that the instance profile has a role'],
  neuron: ['Check that the Neuron driver package matches the kernel (`modprobe neuron` in the log)'],
  'etcd-volume': [
    'Check whether another controller of this slot is still running (EC2 console, the ASG activity)',
    "Check the etcd volume's tags and attachment state in the EC2 console",
  ],
  'etcd-restore': ['Check the newest backup under the etcd.backup bucket and prefix, and the KMS key policy if backups are encrypted'],
  'kube-version': ['Check that the API server endpoint (cluster.apiEndpoint) answers from this node and that controller 00 booted'],
  'control-plane': ['Read the kubeadm output in the log tail; `zdt-agent status` on the node shows the phase details', 'Check the etcd members (`zdt-agent etcd members`)'],
  'kube-upgrade': ['Read the kubeadm upgrade output in the log tail; check that the package repository offers the version'],
  'worker-join': ['Check that the API server endpoint answers from this node and that the bootstrap token in S3 is valid'],
  signal: ['Check the CloudFormation stack events and the ASG lifecycle hook (the signal or the completion was refused)'],
  drain: ['Check PodDisruptionBudgets that block eviction (`kubectl get pdb -A`) and terminate.drainTimeout'],
  'etcd-backup': ['Check the backup bucket policy, the KMS key policy and terminate.backupTimeout'],
  'etcd-leave': ['Check the etcd member list from another controller (`zdt-agent etcd members`); remove a stale member by hand if needed'],
  'self-delete': ["Check the node's RBAC (docs/terminate.md) and whether the Node object is gone (`kubectl get node`)"],
  hooks: ['Read the hook output in the log tail; hooks live in terminate.hooksDir'],
  lifecycle: ['Check the ASG lifecycle hook and its heartbeat timeout in the ASG console'],
  takeover: [
    'Check the readiness command (takeover.readinessCommand) in the log tail: nothing moves before it succeeds',
    'Check who holds the Elastic IP, the ENI and the routes in the EC2 console (`zdt-agent plan` on the node shows it)',
  ],
};
const GENERIC_STEPS = ['Run `zdt-agent status` on the node and read /var/log/zdt-agent.log'];

function nextStepsOf(ev: AgentEvent): string[] | undefined {
  if (!ev.failure && ev.details.result !== 'deadline') return undefined;
  const phase = ev.failure?.phase;
  return [...((phase && NEXT_STEPS[phase]) || []), ...GENERIC_STEPS];
}

function relatedResources(ev: AgentEvent, facts: ChatFacts): string[] {
  const p = partitionOf(ev.instance.region);
  const instance = facts.accountId ? `arn:${p}:ec2:${ev.instance.region}:${facts.accountId}:instance/${ev.instance.id}` : undefined;
  return [instance, facts.asgArn, facts.stackArn].filter((r): r is string => !!r);
}

function detailsLine(ev: AgentEvent): string | undefined {
  const entries = Object.entries(ev.details).filter(([, v]) => v !== '' && v !== undefined);
  return entries.length ? `*Details* ${entries.map(([k, v]) => `${k}=\`${String(v)}\``).join(' · ')}` : undefined;
}

/**
 * The description within `limit` characters: the facts first, then the log tail, whose
 * oldest lines go first when it does not fit, whole lines only, with a marker saying how many.
 */
export function descriptionOf(ev: AgentEvent, limit: number = CHAT_LIMITS.description): string {
  const head: string[] = [];
  const i = ev.instance;
  head.push(`*Cluster* ${ev.cluster ?? '-'} · *Role* ${who(ev)} · *Instance* ${i.id} (${i.type}, ${i.az}, ${i.lifecycle}, ${i.privateIp})`);
  const where = [ev.asg ? `*ASG* ${ev.asg}` : undefined, ev.stack ? `*Stack* ${ev.stack.name}${ev.stack.logicalId ? `/${ev.stack.logicalId}` : ''}` : undefined];
  where.push(`*Agent* ${ev.agentVersion}`, ev.kubernetesVersion ? `*Kubernetes* ${ev.kubernetesVersion}` : undefined);
  head.push(where.filter(Boolean).join(' · '));
  if (ev.failure) head.push('', `*Failed* \`${ev.failure.phase}\``, `> ${ev.failure.error}`);
  const table = phaseTable(ev);
  if (table.length) head.push('', ...table);
  const details = detailsLine(ev);
  if (details) head.push('', details);
  const links = ev.links;
  if (links) {
    head.push('', `*Console* instance: ${links.instance}`);
    if (links.asg) head.push(`ASG: ${links.asg}`);
    if (links.stack) head.push(`stack: ${links.stack}`);
  }
  const headText = fitLines(head, limit, '… (cut to the chat size limit)');
  const tail = ev.failure?.logTail ?? [];
  if (tail.length === 0) return headText;
  const room = limit - headText.length - '\n\n*Log tail* (redacted)\n```\n\n```'.length;
  const markerOf = (cut: number) => `… ${cut} earlier line${cut === 1 ? '' : 's'} cut to the chat size limit …`;
  let kept = lastLinesWithin(tail, room);
  // With a marker, its own line takes room too (sized for the most lines that could be cut).
  if (kept.length < tail.length) kept = lastLinesWithin(tail, room - markerOf(tail.length).length - 1);
  if (kept.length === 0) return headText;
  const cut = tail.length - kept.length;
  const body = cut > 0 ? [markerOf(cut), ...kept] : kept;
  return `${headText}\n\n*Log tail* (redacted)\n\`\`\`\n${body.join('\n')}\n\`\`\``;
}

/** The longest suffix of `lines` whose joined length fits `room`. */
function lastLinesWithin(lines: readonly string[], room: number): string[] {
  const out: string[] = [];
  let used = 0;
  for (let k = lines.length - 1; k >= 0; k--) {
    const cost = (lines[k] as string).length + 1;
    if (used + cost > room) break;
    used += cost;
    out.unshift(lines[k] as string);
  }
  return out;
}

/** Lines joined, or as many leading whole lines as fit with `marker` after them. */
function fitLines(lines: readonly string[], limit: number, marker: string): string {
  const text = lines.join('\n');
  if (text.length <= limit) return text;
  const out: string[] = [];
  let used = marker.length;
  for (const l of lines) {
    if (used + l.length + 1 > limit) break;
    used += l.length + 1;
    out.push(l);
  }
  // A code block cut open would swallow the marker: close it.
  if (out.filter((l) => l === '```').length % 2 === 1) out.push('```');
  return [...out, marker].join('\n');
}

export function renderChat(ev: AgentEvent, facts: ChatFacts): ChatNotification {
  const { icon, what } = headline(ev);
  const title = `${icon} ${what}: ${ev.cluster ?? 'no-cluster'} ${who(ev)} ${ev.instance.id}`;
  const additionalContext: Record<string, string> = {
    event: ev.event,
    instanceId: ev.instance.id,
    role: ev.role,
    agentVersion: ev.agentVersion,
    time: ev.time,
  };
  if (ev.cluster) additionalContext.cluster = ev.cluster;
  if (ev.controllerIndex) additionalContext.controllerIndex = ev.controllerIndex;
  if (ev.failure) additionalContext.failedPhase = ev.failure.phase;
  const nextSteps = nextStepsOf(ev);
  const message: ChatNotification = {
    version: '1.0',
    source: 'custom',
    id: `${ev.instance.id}-${ev.event}-${Date.parse(ev.time) || 0}`,
    content: {
      textType: 'client-markdown',
      title: title.length > CHAT_LIMITS.title ? `${title.slice(0, CHAT_LIMITS.title - 1)}…` : title,
      description: descriptionOf(ev),
      ...(nextSteps ? { nextSteps } : {}),
      keywords: [ev.cluster, ev.role, ev.event, ev.failure?.phase].filter((k): k is string => !!k),
    },
    metadata: {
      threadId: threadIdOf(ev),
      summary: `${what} (${ev.cluster ?? 'no-cluster'} ${who(ev)} ${ev.instance.id})`,
      eventType: ev.event,
      relatedResources: relatedResources(ev, facts),
      additionalContext,
    },
  };
  return redactDeep(message);
}
