import { buildEvent, publishEvent } from '../notify/events.js';
import type { BootContext, BootPhase, PhaseOutcome } from './context.js';

/**
 * The SNS message at the end of boot (docs/events.md): boot.succeeded or boot.failed with the
 * per-phase durations, and on failure the failing phase, its error and the log tail. Sending
 * never fails the boot.
 */
export const notifyPhase: BootPhase = {
  name: 'notify',
  budgetMs: () => 60_000,
  run: async (ctx) => sendBootEvent(ctx),
};

export function bootDetails(ctx: BootContext): Record<string, string | number | boolean> {
  const d: Record<string, string | number | boolean> = {};
  const s = ctx.shared;
  if (s.joinMode) d.joinMode = s.joinMode;
  if (s.volume) {
    d.etcdVolume = s.volume.volumeId;
    d.etcdVolumeFormatted = s.volume.formatted;
  }
  if (s.restoredFrom) d.restoredFrom = s.restoredFrom;
  if (s.neuronDevices !== undefined) d.neuronDevices = s.neuronDevices;
  if (s.versions?.cluster) d.clusterVersionBefore = s.versions.cluster;
  return d;
}

async function sendBootEvent(ctx: BootContext): Promise<PhaseOutcome> {
  const failed = ctx.failure;
  const ev = buildEvent({
    event: failed ? 'boot.failed' : 'boot.succeeded',
    config: ctx.config,
    identity: ctx.identity,
    phases: Object.fromEntries(Object.entries(ctx.state.boot?.phases ?? {}).filter(([name]) => name !== 'notify')),
    kubernetesVersion: typeof ctx.state.facts.kubernetesVersion === 'string' ? ctx.state.facts.kubernetesVersion : undefined,
    failure: failed ? { phase: failed.phase, error: failed.error } : undefined,
    log: ctx.log,
    details: bootDetails(ctx),
  });
  const sent = await publishEvent(ctx.aws, ctx.config.notify, ev, ctx.identity, ctx.log);
  return { detail: sent ? `${ev.event} sent to ${ctx.config.notify.snsTopicArn}` : `${ev.event} could not be sent (see the log)`, changed: sent };
}
