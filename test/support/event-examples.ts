import { resolveConfig } from '../../agent/config/load.js';
import type { ConfigInput } from '../../agent/config/schema.js';
import type { Identity } from '../../agent/host/identity.js';
import type { PhaseRecord } from '../../agent/log/state.js';
import type { Logger } from '../../agent/log/logger.js';
import { buildEvent, type AgentEvent, type EventName } from '../../agent/notify/events.js';

/**
 * One example of each event type, from fixed inputs: docs/events.md's chat renderings are
 * these (test/unit/notify-chat.test.ts keeps them equal), and `make demo` prints one.
 */

export const exampleIdentity: Identity = {
  instanceId: 'i-0a1b2c3d4e5f67890',
  region: 'eu-central-1',
  availabilityZone: 'eu-central-1b',
  instanceType: 'm7i.large',
  privateIp: '10.20.2.9',
  privateDns: 'ip-10-20-2-9.eu-central-1.compute.internal',
  accountId: '123456789012',
  lifecycle: 'on-demand',
  asgName: 'prod-controller-01',
  stackName: 'prod',
  logicalId: 'Controller01',
  tags: { 'aws:cloudformation:stack-id': 'arn:aws:cloudformation:eu-central-1:123456789012:stack/prod/6c7a2f40-0b1e-11f0-9c3e-0a5b1e2c3d4f' },
};
export const exampleAsgArn =
  'arn:aws:autoscaling:eu-central-1:123456789012:autoScalingGroup:0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9:autoScalingGroupName/prod-controller-01';

const configInput: ConfigInput = { cluster: { name: 'prod' }, node: { role: 'controller', controllerIndex: '01' } };

const ph = (result: PhaseRecord['result'], durationMs: number, error?: string): PhaseRecord => ({ result, startedAt: '2026-03-01T12:00:00.000Z', durationMs, ...(error ? { error } : {}) });

const VOLUME_ERROR =
  'EtcdVolumeHeldByRunningInstance: vol-0f1e2d3c4b5a69788 is attached to i-0ffee1234567890ab, which is running; two controllers for one availability zone: terminate the old one, or check the controller Auto Scaling groups';

/** A log whose tail holds what a failed boot's would, a secret included (redaction shows in the rendering). */
export function exampleLog(lines = EXAMPLE_TAIL): Logger {
  const l: Logger = { debug() {}, info() {}, warn() {}, error() {}, child: () => l, tail: (n) => lines.slice(-n) };
  return l;
}
export const EXAMPLE_TAIL = [
  '2026-03-01T12:01:02.121Z INFO  etcd-volume: start',
  '2026-03-01T12:01:02.230Z DEBUG [etcd-volume] kubeadm join --token abcdef.0123456789abcdef --discovery-token-ca-cert-hash sha256:1f2e',
  '2026-03-01T12:01:02.402Z INFO  [etcd-volume] found the etcd volume volume=vol-0f1e2d3c4b5a69788 sizeGiB=20 state=in-use',
  '2026-03-01T12:01:02.498Z ERROR etcd-volume: failed ms=377 code=EtcdVolumeHeldByRunningInstance',
  '2026-03-01T12:01:02.500Z INFO  signal: start',
];

export function exampleEvent(event: EventName): AgentEvent {
  const config = resolveConfig([{ source: 'file', origin: 'example', data: configInput }]);
  const at = (iso: string) => new Date(iso);
  let ev: AgentEvent;
  switch (event) {
    case 'boot.succeeded':
      ev = buildEvent({
        event,
        config,
        identity: exampleIdentity,
        now: at('2026-03-01T12:04:31.118Z'),
        kubernetesVersion: '1.31.4',
        phases: {
          identity: ph('ok', 31),
          neuron: ph('skipped', 0),
          'etcd-volume': ph('ok', 14210),
          'etcd-restore': ph('skipped', 0),
          'kube-version': ph('ok', 2112),
          'control-plane': ph('ok', 48630),
          'kube-upgrade': ph('skipped', 0),
          'worker-join': ph('skipped', 0),
          signal: ph('ok', 298),
        },
        details: { joinMode: 'join', etcdVolume: 'vol-0f1e2d3c4b5a69788', etcdVolumeFormatted: false },
      });
      break;
    case 'boot.failed':
      ev = buildEvent({
        event,
        config,
        identity: exampleIdentity,
        now: at('2026-03-01T12:01:02.530Z'),
        phases: {
          identity: ph('ok', 31),
          neuron: ph('skipped', 0),
          'etcd-volume': ph('failed', 377, VOLUME_ERROR),
          'etcd-restore': ph('skipped', 0),
          'kube-version': ph('skipped', 0),
          'control-plane': ph('skipped', 0),
          'kube-upgrade': ph('skipped', 0),
          'worker-join': ph('skipped', 0),
          signal: ph('ok', 298),
        },
        failure: { phase: 'etcd-volume', error: VOLUME_ERROR },
        log: exampleLog(),
      });
      break;
    case 'terminate.started':
      ev = buildEvent({ event, config, identity: exampleIdentity, now: at('2026-03-02T08:15:00.004Z'), phases: {}, details: { event: 'terminate', eventSource: 'lifecycle-hook', budgetS: 120 } });
      break;
    case 'terminate.finished':
      ev = buildEvent({
        event,
        config,
        identity: exampleIdentity,
        now: at('2026-03-02T08:15:41.870Z'),
        phases: {
          identity: ph('ok', 12),
          classify: ph('ok', 40),
          'lifecycle-hook': ph('ok', 120),
          hooks: ph('skipped', 0),
          drain: ph('ok', 31044),
          'etcd-backup': ph('skipped', 0),
          'self-delete': ph('ok', 85),
          'etcd-leave': ph('ok', 1210),
          lifecycle: ph('ok', 96),
        },
        details: { event: 'terminate', eventSource: 'lifecycle-hook', result: 'ok', unfinished: '', budgetS: 120, elapsedMs: 41866, podsEvicted: 7, podsLeft: 0 },
      });
      break;
    case 'takeover.succeeded':
    case 'takeover.failed': {
      const ok = event === 'takeover.succeeded';
      ev = buildEvent({
        event,
        config,
        identity: exampleIdentity,
        now: at('2026-03-02T09:01:12.520Z'),
        phases: { identity: ph('ok', 14), takeover: ph(ok ? 'ok' : 'failed', ok ? 1340 : 120_000), signal: ph('ok', 210) },
        ...(ok ? {} : { failure: { phase: 'takeover', error: 'TakeoverNotReady: the readiness command did not succeed within 120s (last: exit 1)' }, log: exampleLog() }),
        details: ok
          ? {
              takeoverResult: 'ok',
              takeoverTotalMs: 1340,
              takeoverReadyMs: 410,
              takeoverInterruptionMs: 215,
              takeoverFrom: 'i-0123456789abcdef0',
              takeoverMoved: 'source/dest check off from here at +430 ms; route 0.0.0.0/0 in rtb-0a1b2c3d from i-0123456789abcdef0 at +1122 ms; Elastic IP eipalloc-0a1b2c3d from i-0123456789abcdef0 at +1290 ms',
            }
          : { takeoverResult: 'failed', takeoverTotalMs: 120_000 },
      });
      break;
    }
    case 'interruption.noticed':
      ev = buildEvent({
        event,
        config,
        identity: exampleIdentity,
        now: at('2026-03-02T08:14:58.311Z'),
        phases: {},
        details: { kind: 'asgTerminate', notice: 'autoscaling/target-lifecycle-state: Terminated', eventId: 'asg:Terminated:5d0c1f9e', action: 'retire' },
      });
      break;
  }
  // The version differs from build to build; the examples show a fixed one.
  ev.agentVersion = '0.1.0+cbeaf50';
  return ev;
}

export const EVENT_NAMES: readonly EventName[] = ['boot.succeeded', 'boot.failed', 'terminate.started', 'terminate.finished', 'interruption.noticed', 'takeover.succeeded', 'takeover.failed'];

/** docs/events.md's generated chat section: each example as the chat shows it, then its metadata. */
export function renderChatExamples(render: (ev: AgentEvent) => { content: { title: string; description: string; nextSteps?: string[] | undefined; keywords: string[] }; metadata: unknown }): string {
  const out: string[] = [];
  for (const name of EVENT_NAMES) {
    const chat = render(exampleEvent(name));
    out.push(`### \`${name}\``, '', '````markdown', `**${chat.content.title}**`, '', chat.content.description);
    if (chat.content.nextSteps) out.push('', '*Next steps*', ...chat.content.nextSteps.map((s) => `- ${s}`));
    out.push('', `keywords: ${chat.content.keywords.join(', ')}`, '````', '', '```json chat-metadata', JSON.stringify(chat.metadata, null, 2), '```', '');
  }
  return out.join('\n');
}
