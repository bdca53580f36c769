import { setTimeout as sleep } from 'node:timers/promises';
import type { Config } from '../config/schema.js';
import type { Logger } from '../log/logger.js';
import type { WatchCounters } from '../log/metrics.js';
import { updateState, type WatchedEvent, type WatchState } from '../log/state.js';
import type { ShutdownEvent } from '../node.js';
import { NOTICE_PATHS, RETIRE_EVENT, parseNotices, type Notice, type NoticeSource } from './notices.js';

/**
 * `zdt-agent watch`: poll the IMDS notices that come before a shutdown and act on each once.
 *
 *   poll (4 paths, in parallel, one bounded request each) -> notices -> new? record it as
 *   'acting' in the state file -> interruption.noticed -> act (retire | cordon | log) -> 'done'
 *
 * Exactly once: a notice's identity (notices.ts) is written to the state file before its
 * action starts, and the result when it ends. A notice seen again is recognised and left
 * alone; one still 'acting' after a restart (the watcher was killed in the middle) is resumed,
 * and the retire runner then skips what it had finished (terminate/run.ts). Actions run one
 * after the other, while polling goes on (a cancellation is seen during a long retire).
 *
 * IMDS not answering is never a reason to exit: the poll backs off (doubling, capped at
 * watch.backoffMax), logs once a minute, and carries on when IMDS is back.
 *
 * The node-side actions are handed in (commands/watch.ts wires terminate's runner and
 * cordon), so this module knows no Kubernetes, AWS or terminate code.
 */

export interface NodeActions {
  /** Terminate's flow for `event`, for this notice (the terminate runner with its budget). */
  retire(event: ShutdownEvent, trigger: { eventId: string; notice: string }): Promise<{ result: 'ok' | 'failed' | 'deadline'; detail: string }>;
  /** Cordon the Node: 'cordoned' when this call made it unschedulable, 'already' when it was, 'gone' without a Node. */
  cordon(): Promise<'cordoned' | 'already' | 'gone'>;
  /** Make the Node schedulable again; false when it is gone. */
  uncordon(): Promise<boolean>;
  /** Whether the Node is schedulable now (undefined: unknown, e.g. no credentials). */
  schedulable(): Promise<boolean | undefined>;
  /** interruption.noticed to SNS; never throws. */
  noticed(n: Notice, action: WatchedEvent['action']): Promise<void>;
}

export interface NoticeReader {
  /** One bounded request: the body, undefined on 404; throws when IMDS does not answer. */
  poll(path: string): Promise<string | undefined>;
}

export interface WatchOptions {
  imds: NoticeReader;
  config: Config['watch'];
  stateFile: string;
  agentVersion: string;
  bootId: string | undefined;
  log: Logger;
  actions: NodeActions;
  /** Aborted: stop polling (SIGTERM). The action in progress is left to the next run to resume. */
  signal: AbortSignal;
  /** Tests and the benchmark: stop after this many polls. */
  maxPolls?: number | undefined;
  /** Called after every poll (tests, the benchmark). */
  onPoll?: ((n: number, ok: boolean) => void) | undefined;
  /**
   * The counters for the metrics file (metrics.textfileDir): after a new notice, at most every
   * METRICS_EVERY_MS after a poll, and at the stop. A file per poll would cost the idle
   * watcher an fsync a second.
   */
  onMetrics?: ((c: WatchCounters) => void) | undefined;
}

const LOG_EVERY_MS = 60_000;
const LAST_POLL_EVERY_MS = 60_000;
const METRICS_EVERY_MS = 15_000;
const RETRY_ACTION_MS = 10_000;
const KEEP_EVENTS = 100;
const SOURCES = Object.keys(NOTICE_PATHS) as NoticeSource[];

/**
 * `ms` ± 20 %, so that a fleet does not poll in step. Not host/retry.ts's jitter (50-100 % of
 * the wait): a poll interval must stay near its setting, for the detection time and the CPU.
 */
const jittered = (ms: number): number => ms * (0.8 + Math.random() * 0.4);

export async function watch(o: WatchOptions): Promise<{ polls: number }> {
  const { log, config } = o;
  const now = () => new Date().toISOString();
  let state: WatchState = { startedAt: now(), pid: process.pid, events: {} };
  const eventsByKind: Record<string, number> = {};
  let pollErrors = 0;
  let lastPollAt = NaN;
  let metricsDue = false;
  let metricsAt = 0;
  const reportMetrics = () => {
    if (!o.onMetrics) return;
    metricsDue = false;
    metricsAt = Date.now();
    o.onMetrics({ lastPollAt, polls, pollErrors, eventsByKind });
  };
  const save = () => {
    try {
      updateState(o.stateFile, o.agentVersion, (s) => {
        s.watch = state;
      });
    } catch (err) {
      log.warn('cannot write the state file', { err: (err as Error).message });
    }
  };
  updateState(o.stateFile, o.agentVersion, (s) => {
    state = { startedAt: now(), pid: process.pid, events: s.watch?.events ?? {}, lastEventId: s.watch?.lastEventId };
    s.watch = state;
  });

  // One action at a time, in the order the notices came.
  const queued = new Set<string>();
  const retryAt = new Map<string, number>();
  let chain: Promise<void> = Promise.resolve();
  const enqueue = (id: string, what: string, run: () => Promise<void>) => {
    if (queued.has(id)) return;
    queued.add(id);
    chain = chain.then(async () => {
      if (o.signal.aborted) return;
      try {
        await run();
      } catch (err) {
        // Recorded, and tried again while the notice stands (cordon, uncordon), after at most 10 s.
        const e = state.events[id];
        if (e) e.detail = `${what} failed: ${(err as Error).message}`;
        retryAt.set(id, Date.now() + Math.min(RETRY_ACTION_MS, config.backoffMax * 1000));
        log.error(`watch: ${what} failed`, { event: id, err: (err as Error).message });
        save();
      } finally {
        queued.delete(id);
      }
    });
  };

  const act = (id: string, e: WatchedEvent) =>
    enqueue(id, e.action, async () => {
      e.startedAt ??= now();
      if (e.action === 'retire') {
        const event = (e.event ?? 'terminate') as ShutdownEvent;
        // A stop, reboot or rebalance leaves the Node cordoned by the drain: remember whether
        // it was schedulable before, so that a canceled notice can undo it. An API server that
        // does not answer must not hold the retire up: then nothing is undone later.
        const before = event === 'terminate' ? undefined : await o.actions.schedulable().catch(() => undefined);
        log.info(`watch: retiring this node (${event}) for ${id}`, { notice: e.notice });
        const r = await o.actions.retire(event, { eventId: id, notice: e.notice });
        Object.assign(e, { status: 'done', result: r.result, detail: r.detail, finishedAt: now(), cordoned: before === true || e.cordoned });
      } else if (e.action === 'cordon') {
        const r = await o.actions.cordon();
        Object.assign(e, { status: 'done', result: 'ok', finishedAt: now(), cordoned: r === 'cordoned' || e.cordoned, detail: r === 'cordoned' ? 'cordoned' : r === 'already' ? 'was cordoned already (not undone later)' : 'no Node object' });
      }
      log.info(`watch: ${e.action} for ${id}: ${e.result ?? 'ok'}`, { detail: e.detail });
      save();
    });

  const undo = (id: string, e: WatchedEvent, why: string) =>
    enqueue(`undo:${id}`, 'uncordon', async () => {
      const found = await o.actions.uncordon();
      e.undoneAt = now();
      e.detail = `${e.detail ?? ''}; ${found ? 'uncordoned' : 'no Node object to uncordon'} (${why})`.replace(/^; /, '');
      log.info(`watch: uncordoned this node for ${id}`, { why });
      save();
    });

  // A restarted watcher: finish what the last one started; undo the cordon of a reboot that happened.
  for (const [id, e] of Object.entries(state.events)) {
    if (e.status === 'acting') {
      log.info(`watch: resuming the ${e.action} for ${id} a previous watcher started`, { since: e.startedAt });
      act(id, e);
    } else if (e.kind === 'scheduledReboot' && e.cordoned && !e.undoneAt && e.bootId !== o.bootId) {
      undo(id, e, 'the instance has rebooted since');
    }
  }

  const handle = (n: Notice) => {
    const e = state.events[n.id];
    if (!e) {
      const inactive = n.state === 'canceled' || n.state === 'completed';
      const action = inactive ? 'log' : config.on[n.kind];
      const rec: WatchedEvent = {
        kind: n.kind,
        notice: n.text,
        firstSeenAt: now(),
        action,
        event: action === 'retire' ? RETIRE_EVENT[n.kind] : undefined,
        status: action === 'retire' || action === 'cordon' ? 'acting' : 'done',
        bootId: o.bootId,
      };
      state.events[n.id] = rec;
      state.lastEventId = n.id;
      eventsByKind[n.kind] = (eventsByKind[n.kind] ?? 0) + 1;
      metricsDue = true;
      prune(state);
      // Written before anything acts: a watcher killed from here on resumes, never repeats.
      save();
      if (action === 'ignore') {
        log.debug(`watch: ${n.text}: ignored (watch.on.${n.kind})`);
        return;
      }
      log.warn(`watch: ${n.text}: ${action}${rec.event ? ` as ${rec.event}` : ''}`, { event: n.id, kind: n.kind });
      enqueue(`notice:${n.id}`, 'notify', () => o.actions.noticed(n, action));
      if (rec.status === 'acting') act(n.id, rec);
      return;
    }
    if (e.status === 'acting' && !queued.has(n.id) && (retryAt.get(n.id) ?? 0) <= Date.now()) act(n.id, e);
    const undoId = `undo:${n.id}`;
    if ((n.state === 'canceled' || n.state === 'completed') && e.cordoned && !e.undoneAt && !queued.has(undoId) && (retryAt.get(undoId) ?? 0) <= Date.now()) {
      if (e.status === 'acting') return; // undone once its action has finished
      undo(n.id, e, `the scheduled event is ${n.state}`);
    }
  };

  let polls = 0;
  let failures = 0;
  let lastLog = 0;
  let lastPollSaved = 0;
  while (!o.signal.aborted && (o.maxPolls === undefined || polls < o.maxPolls)) {
    let ok = false;
    try {
      const answers = await Promise.all(SOURCES.map((s) => o.imds.poll(NOTICE_PATHS[s])));
      ok = true;
      if (state.imdsDownSince) {
        log.info('watch: IMDS answers again', { downSince: state.imdsDownSince });
        state.imdsDownSince = undefined;
        state.imdsError = undefined;
        save();
      }
      failures = 0;
      const { notices, ignored } = parseNotices(Object.fromEntries(SOURCES.map((s, i) => [s, answers[i]])), o.bootId);
      for (const n of notices) handle(n);
      if (ignored.length && Date.now() - lastLog >= LOG_EVERY_MS) {
        lastLog = Date.now();
        log.warn('watch: IMDS answers the watcher cannot read were ignored', { ignored: ignored.join(' | ') });
      }
    } catch (err) {
      failures++;
      const msg = (err as Error).message;
      if (!state.imdsDownSince || Date.now() - lastLog >= LOG_EVERY_MS) {
        lastLog = Date.now();
        state.imdsDownSince ??= now();
        state.imdsError = msg;
        log.warn('watch: IMDS does not answer; polling on with backoff', { since: state.imdsDownSince, err: msg });
        save();
      }
    }
    polls++;
    if (!ok) pollErrors++;
    lastPollAt = Date.now() / 1000;
    if (metricsDue || Date.now() - metricsAt >= METRICS_EVERY_MS) reportMetrics();
    o.onPoll?.(polls, ok);
    if (Date.now() - lastPollSaved >= LAST_POLL_EVERY_MS) {
      lastPollSaved = Date.now();
      state.lastPollAt = now();
      save();
    }
    const intervalMs = config.interval * 1000;
    const waitMs = failures === 0 ? intervalMs : Math.min(config.backoffMax * 1000, intervalMs * 2 ** Math.min(failures, 20));
    try {
      await sleep(jittered(waitMs), undefined, { signal: o.signal });
    } catch {
      break;
    }
  }
  // A stop (SIGTERM) does not wait for the action in progress: its state is on disk and the
  // shutdown's terminate (or the next watcher) continues it.
  if (!o.signal.aborted) await chain;
  state.lastPollAt = now();
  state.stoppedAt = now();
  save();
  reportMetrics();
  return { polls };
}

/** Keeps the state file small: the oldest finished notices go first. */
function prune(state: WatchState): void {
  const ids = Object.keys(state.events);
  if (ids.length <= KEEP_EVENTS) return;
  const done = ids.filter((id) => state.events[id]!.status === 'done').sort((a, b) => state.events[a]!.firstSeenAt.localeCompare(state.events[b]!.firstSeenAt));
  for (const id of done.slice(0, ids.length - KEEP_EVENTS)) delete state.events[id];
}
