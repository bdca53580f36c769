import type { Config } from '../config/schema.js';
import type { PhaseDecision, ShutdownEvent } from '../node.js';

/**
 * The four IMDS paths that announce a shutdown before it comes, each turned into notice
 * values of one shape (as aws-node-termination-handler's monitors do). A notice's `id` is
 * stable across polls and restarts, so that it is acted on once:
 *
 * - ASG target lifecycle state: the state and the kernel boot (a warm-pool instance goes
 *   Warmed:Stopped again after a later start; that is a new notice);
 * - spot instance-action: the action and its time;
 * - scheduled events: EC2's event id;
 * - rebalance recommendation: its notice time.
 */

export const NOTICE_PATHS = {
  lifecycle: 'latest/meta-data/autoscaling/target-lifecycle-state',
  spot: 'latest/meta-data/spot/instance-action',
  scheduled: 'latest/meta-data/events/maintenance/scheduled',
  rebalance: 'latest/meta-data/events/recommendations/rebalance',
} as const;

export type NoticeSource = keyof typeof NOTICE_PATHS;

/** The kinds `watch.on.<kind>` configures. */
export type NoticeKind = keyof Config['watch']['on'];

export interface Notice {
  id: string;
  kind: NoticeKind;
  /** What IMDS said, in one line. */
  text: string;
  /** When the notice says the action happens (spot time, scheduled NotBefore), if it says. */
  time?: string | undefined;
  /** Scheduled events only: active, or canceled/completed (which undo a cordon). */
  state?: 'active' | 'canceled' | 'completed' | undefined;
}

/** The shutdown a retire runs terminate's flow for, per kind. */
export const RETIRE_EVENT: Record<NoticeKind, ShutdownEvent> = {
  asgTerminate: 'terminate',
  asgWarmed: 'stop',
  spotTerminate: 'terminate',
  spotStop: 'stop',
  scheduledStop: 'stop',
  scheduledReboot: 'reboot',
  scheduledMaintenance: 'stop',
  rebalance: 'stop',
};

/** One line of `zdt-agent plan` per kind: which notice it is. */
export const KIND_NOTICE: Record<NoticeKind, string> = {
  asgTerminate: 'ASG target-lifecycle-state Terminated',
  asgWarmed: 'ASG target-lifecycle-state Warmed:*',
  spotTerminate: 'spot instance-action terminate',
  spotStop: 'spot instance-action stop/hibernate',
  scheduledStop: 'scheduled instance-stop/instance-retirement',
  scheduledReboot: 'scheduled system-reboot/instance-reboot',
  scheduledMaintenance: 'scheduled system-maintenance',
  rebalance: 'rebalance recommendation',
};

/** What the four answers say (undefined: the path answered 404). Malformed answers are ignored, with a reason. */
export function parseNotices(
  answers: Partial<Record<NoticeSource, string | undefined>>,
  bootId: string | undefined,
): { notices: Notice[]; ignored: string[] } {
  const notices: Notice[] = [];
  const ignored: string[] = [];

  const lc = answers.lifecycle?.trim();
  if (lc === 'Terminated' || lc === 'Warmed:Terminated') {
    notices.push({ id: `asg:${lc}:${bootId ?? 'boot'}`, kind: 'asgTerminate', text: `target-lifecycle-state ${lc}` });
  } else if (lc?.startsWith('Warmed:')) {
    notices.push({ id: `asg:${lc}:${bootId ?? 'boot'}`, kind: 'asgWarmed', text: `target-lifecycle-state ${lc}` });
  }

  const spot = answers.spot?.trim();
  if (spot) {
    const j = parseJson(spot) as { action?: unknown; time?: unknown } | undefined;
    const action = typeof j?.action === 'string' ? j.action : undefined;
    const time = typeof j?.time === 'string' ? j.time : undefined;
    if (action === 'terminate' || action === 'stop' || action === 'hibernate') {
      notices.push({
        id: `spot:${action}:${time ?? 'no-time'}`,
        kind: action === 'terminate' ? 'spotTerminate' : 'spotStop',
        text: `spot instance-action ${action}${time ? ` at ${time}` : ''}`,
        time,
      });
    } else ignored.push(`spot/instance-action: ${spot.slice(0, 80)}`);
  }

  const scheduled = answers.scheduled?.trim();
  if (scheduled) {
    const list = parseJson(scheduled);
    if (!Array.isArray(list)) ignored.push(`events/maintenance/scheduled: ${scheduled.slice(0, 80)}`);
    else {
      for (const e of list as Array<Record<string, unknown>>) {
        const code = typeof e?.Code === 'string' ? e.Code : undefined;
        const eventId = typeof e?.EventId === 'string' ? e.EventId : undefined;
        const state = typeof e?.State === 'string' ? e.State.toLowerCase() : 'active';
        const kind = scheduledKind(code);
        if (!code || !eventId || !kind || (state !== 'active' && state !== 'canceled' && state !== 'completed')) {
          ignored.push(`scheduled event ${JSON.stringify(e).slice(0, 80)}`);
          continue;
        }
        const notBefore = typeof e.NotBefore === 'string' ? e.NotBefore : undefined;
        const time = notBefore && !Number.isNaN(Date.parse(notBefore)) ? new Date(notBefore).toISOString() : notBefore;
        notices.push({ id: `scheduled:${eventId}`, kind, text: `scheduled ${code} ${eventId} ${state}${time ? ` not before ${time}` : ''}`, time, state });
      }
    }
  }

  const rebalance = answers.rebalance?.trim();
  if (rebalance) {
    const j = parseJson(rebalance) as { noticeTime?: unknown } | undefined;
    const t = typeof j?.noticeTime === 'string' ? j.noticeTime : undefined;
    if (t) notices.push({ id: `rebalance:${t}`, kind: 'rebalance', text: `rebalance recommendation at ${t}`, time: t });
    else ignored.push(`events/recommendations/rebalance: ${rebalance.slice(0, 80)}`);
  }
  return { notices, ignored };
}

function scheduledKind(code: string | undefined): NoticeKind | undefined {
  switch (code) {
    case 'instance-stop':
    case 'instance-retirement':
      return 'scheduledStop';
    case 'system-reboot':
    case 'instance-reboot':
      return 'scheduledReboot';
    case 'system-maintenance':
      return 'scheduledMaintenance';
    default:
      return undefined;
  }
}

function parseJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

/** What each kind of notice would trigger on this node (`zdt-agent plan`). */
export function planWatch(config: Config): PhaseDecision[] {
  return (Object.keys(KIND_NOTICE) as NoticeKind[]).map((kind) => {
    const action = config.watch.on[kind];
    const what =
      action === 'retire'
        ? `retire as ${RETIRE_EVENT[kind]} (the terminate steps for ${RETIRE_EVENT[kind]}, before the shutdown)`
        : action === 'cordon'
          ? kind === 'scheduledReboot'
            ? 'cordon; uncordon after the reboot or when the event is canceled'
            : 'cordon; uncordon when the event is canceled'
          : action === 'log'
            ? 'log and notify only'
            : 'nothing';
    return { name: kind, applies: action !== 'ignore', why: `${KIND_NOTICE[kind]}: ${what} (watch.on.${kind}: ${action})` };
  });
}
