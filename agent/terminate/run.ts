import fs from 'node:fs';
import type { CommandContext } from '../context.js';
import { DeadlineError, ExitCode, asAgentError } from '../errors.js';
import { readIdentity, type Identity } from '../host/identity.js';
import { Imds } from '../host/imds.js';
import { KubeClient, loadKubeconfig } from '../host/kube.js';
import type { PhaseDecision, ShutdownEvent } from '../node.js';
import { readBootId } from '../host/paths.js';
import { readState, updateState, type AgentState, type PhaseRecord, type PhaseResult, type RunRecord } from '../log/state.js';
import { buildEvent, publishEvent } from '../notify/events.js';
import { recordMetrics, runFamilies, textfileDirOf } from '../log/metrics.js';
import { takeBackup } from '../etcd/backup.js';
import { EtcdGateway, localEtcdEndpoint } from '../etcd/gateway.js';
import { leaveEtcd } from '../etcd/leave.js';
import { agentVersion } from '../version.js';
import { Budget, withinWindow, type StepWindow } from './budget.js';
import { classifyEvent, type Classification } from './classify.js';
import { deleteOwnNode, drainNode, emptyDrainReport, nodeNameOf, type DrainReport } from './drain.js';
import { hookFiles, runHooks } from './hooks.js';
import { completeContinue, findTerminatingHook, startHeartbeats, type LifecycleTarget } from './lifecycle.js';
import { planTerminate } from './plan.js';

/**
 * `zdt-agent terminate`: classify, then the steps planTerminate decided, inside one budget:
 *
 *   identity -> classify -> hooks -> (drain | etcd-backup) -> self-delete, etcd-leave -> lifecycle -> notify
 *
 * The drain (API server) and the emergency backup (etcd, S3) touch different services and
 * run side by side. Every step gets a window cut from what is left, minus a reserve for the
 * lifecycle completion and the last message; a step still running when its window closes is
 * recorded as `deadline` with what it had done, and the run goes on. State is written after
 * every step, so a shutdown that kills the agent still leaves a record.
 *
 * The watcher (agent/watch/) starts this same runner when a notice comes before the shutdown
 * (`trigger`). A later run in the same kernel boot for the same event (the shutdown's, or the
 * watcher's own after a restart) continues that record: steps it finished are not run again
 * (no second drain, hook run or CONTINUE); only the emergency etcd backup of a single
 * controller is taken again, as the API server kept accepting writes since (docs/watch.md).
 */

export interface TerminateOutcome {
  event: ShutdownEvent;
  classification: Classification;
  record: RunRecord;
  unfinished: string[];
  backupKey: string | undefined;
  drain: DrainReport | undefined;
  exitCode: ExitCode;
}

type StepDone = { result: Exclude<PhaseResult, 'deadline'>; detail?: string | undefined; error?: string | undefined };

const IDENTITY_MAX_MS = 10_000;
const CLASSIFY_MAX_MS = 5_000;
const LIFECYCLE_MAX_MS = 5_000;
const NOTIFY_MAX_MS = 5_000;

/** Steps a continuing run does not repeat once done; the emergency backup is taken again. */
const DONE_ONCE = ['hooks', 'drain', 'self-delete', 'etcd-leave', 'lifecycle'] as const;

export interface TerminateTrigger {
  /** The notice's stable identity (agent/watch/notices.ts). */
  eventId: string;
  /** What IMDS said, in one line. */
  notice: string;
}

export async function runTerminate(o: {
  ctx: CommandContext;
  budget: Budget;
  flag?: ShutdownEvent | undefined;
  env?: NodeJS.ProcessEnv;
  /** Set by the watcher: the notice this run acts on before the shutdown. */
  trigger?: TerminateTrigger | undefined;
}): Promise<TerminateOutcome> {
  const { ctx, budget } = o;
  const { config, log, paths } = ctx;
  const t = config.terminate;
  const state: AgentState = readState(paths.stateFile, agentVersion);
  const bootId = readBootId(paths);
  const earlier = continuable(state.terminate, bootId, o.trigger);
  const record: RunRecord = {
    startedAt: new Date(budget.startedAt).toISOString(),
    phases: {},
    bootId,
    trigger: o.trigger ? { by: 'watch', ...o.trigger } : undefined,
  };
  const save = () => {
    try {
      updateState(paths.stateFile, agentVersion, (s) => {
        s.terminate = record;
      });
    } catch (err) {
      log.warn('cannot write the state file', { err: (err as Error).message });
    }
  };
  save();

  /** Runs one step in its window and records it; never throws. */
  const step = async (name: string, w: StepWindow, run: (signal: AbortSignal) => Promise<StepDone>, partial?: () => string | undefined): Promise<StepDone | undefined> => {
    const startedAt = new Date().toISOString();
    const started = Date.now();
    const slog = log.child(name);
    let rec: PhaseRecord;
    let done: StepDone | undefined;
    try {
      const r = await withinWindow(w, run);
      if (r.timedOut) {
        const left = partial?.();
        rec = {
          result: 'deadline',
          startedAt,
          durationMs: Date.now() - started,
          detail: w.ms <= 0 ? 'not started: no time left in the budget' : `not finished within its ${Math.round(w.ms / 1000)}s window${left ? `; ${left}` : ''}`,
        };
        slog.warn(`${name}: ${rec.detail}`);
      } else {
        done = r.value;
        rec = { result: done.result, startedAt, durationMs: Date.now() - started, detail: done.detail, error: done.error };
        slog[done.result === 'failed' ? 'error' : 'info'](`${name}: ${done.result}`, { ms: rec.durationMs, detail: done.detail, err: done.error });
      }
    } catch (err) {
      // A bounded wait inside the step that ran out (a server that accepts and never answers)
      // is a deadline like the step's own window: recorded as one, and listed as unfinished.
      const e = asAgentError(err);
      const result = e instanceof DeadlineError ? 'deadline' : 'failed';
      rec = { result, startedAt, durationMs: Date.now() - started, detail: result === 'deadline' ? partial?.() : undefined, error: e.oneLine() };
      slog.error(`${name}: ${result}`, { err: e.oneLine() });
    }
    record.phases[name] = rec;
    save();
    return done;
  };
  const skip = (name: string, why: string) => {
    const done = doneEarlier.get(name);
    if (done) {
      record.phases[name] = done;
      log.child(name).info(`${name}: ${done.detail}`);
      return;
    }
    record.phases[name] = { result: 'skipped', startedAt: new Date().toISOString(), durationMs: 0, detail: why };
    log.child(name).info(`${name}: skipped`, { why });
  };

  // Who we are: bounded, and replaced by what is known locally when IMDS does not answer.
  let identity: Identity = fallbackIdentity(state, ctx);
  await step('identity', budget.window(Math.min(IDENTITY_MAX_MS, budget.totalMs / 6)), async (signal) => {
    const imds = new Imds({ endpoint: config.aws.imdsEndpoint, log, requiredTimeoutMs: Math.round(Math.max(500, budget.remainingMs() / 6)), requestTimeoutMs: 2000 });
    const id = await readIdentity(imds, { log, tags: ctx.instance?.tags, aws: ctx.aws });
    if (signal.aborted) throw signal.reason;
    identity = id;
    return { result: 'ok', detail: `${id.instanceId} ${id.instanceType} ${id.availabilityZone}${id.asgName ? ` asg ${id.asgName}` : ''}` };
  });

  let classification: Classification = { event: 'unknown', source: 'classification did not finish', evidence: {}, lifecycleTerminating: false };
  await step('classify', budget.window(CLASSIFY_MAX_MS), async (signal) => {
    classification = await classifyEvent({
      flag: o.flag,
      env: o.env ?? process.env,
      imds: new Imds({ endpoint: config.aws.imdsEndpoint, log, requestTimeoutMs: 2000 }),
      aws: ctx.aws,
      exec: ctx.exec,
      log,
      instanceId: identity.instanceId === 'unknown' ? undefined : identity.instanceId,
      signal,
      systemdMarker: paths.at('/run/systemd/system'),
    });
    if (o.trigger) classification = { ...classification, source: `watch: ${o.trigger.notice}` };
    return { result: 'ok', detail: `${classification.event} (${classification.source})` };
  });
  if (earlier && classification.event === 'unknown' && isShutdownEvent(earlier.event)) {
    // The shutdown's own signals are gone (or IMDS is), but the watcher knew what it was.
    classification = { ...classification, event: earlier.event, source: `the watcher's retire for ${earlier.trigger?.eventId} (state file)` };
  }
  const event = classification.event;
  record.event = event;
  if (event === 'unknown') log.warn('the kind of shutdown is unknown: drain and back up, but keep the Node object and the etcd member', { evidence: JSON.stringify(classification.evidence) });
  save();

  const plan = new Map<string, PhaseDecision>(planTerminate({ config, identity }, event).map((d) => [d.name, d]));
  // Steps an earlier run for this event (the watcher's) finished: recorded as skipped, not run again.
  // They keep their record (result ok), so that a run continuing this one skips them too.
  const doneEarlier = new Map<string, PhaseRecord>();
  if (earlier && earlier.event === event) {
    const by = `the watcher's run for ${earlier.trigger?.eventId}`;
    for (const name of DONE_ONCE) {
      const p = earlier.phases[name];
      if (p?.result === 'ok') doneEarlier.set(name, { ...p, detail: p.detail?.includes(by) ? p.detail : `done earlier by ${by}${p.detail ? `: ${p.detail}` : ''}` });
    }
    if (doneEarlier.size) log.info('continuing the retire the watcher started: finished steps are not run again', { done: [...doneEarlier.keys()].join(',') });
  }
  const applies = (name: string) => plan.get(name)?.applies === true && !doneEarlier.has(name);
  const why = (name: string) => plan.get(name)?.why ?? '';

  // What the end needs: the lifecycle completion and the last message, plus a moment for the state file.
  const endReserveMs = Math.min(budget.totalMs * 0.15, (applies('lifecycle') ? LIFECYCLE_MAX_MS : 0) + (applies('notify') ? NOTIFY_MAX_MS : 0) + 500);

  const notifyStarted = applies('notify')
    ? publishEvent(
        ctx.aws,
        config.notify,
        buildEvent({ event: 'terminate.started', config, identity, phases: {}, details: { event, eventSource: classification.source, budgetS: t.budget, ...(o.trigger ? { trigger: o.trigger.eventId } : {}) } }),
        identity,
        log,
        Math.min(NOTIFY_MAX_MS, budget.remainingMs()),
      )
    : Promise.resolve(false);

  // The lifecycle hook: found first, so heartbeats run during the long steps.
  let lifecycle: LifecycleTarget | undefined;
  let beats: ReturnType<typeof startHeartbeats> | undefined;
  if (applies('lifecycle') && identity.asgName) {
    const asgName = identity.asgName;
    await step('lifecycle-hook', budget.window(LIFECYCLE_MAX_MS, endReserveMs), async (signal) => {
      lifecycle = await findTerminatingHook(ctx.aws, { asgName, instanceId: identity.instanceId, configured: t.lifecycleHook, signal });
      if (!lifecycle) return { result: 'skipped', detail: `${asgName} has no terminating lifecycle hook` };
      beats = startHeartbeats(ctx.aws, lifecycle, t.heartbeatInterval * 1000, log.child('lifecycle'));
      return { result: 'ok', detail: `hook ${lifecycle.hookName}; heartbeats every ${t.heartbeatInterval}s` };
    });
  }

  // Hooks: each hookTimeout at most; when a drain follows, they may take half of what is left.
  const hooksDir = paths.at(`${t.hooksDir}/${event === 'unknown' ? 'terminate' : event}.d`);
  const hooks = hookFiles(hooksDir);
  if (doneEarlier.has('hooks')) skip('hooks', why('hooks'));
  else if (hooks.length === 0) skip('hooks', `no executables in ${paths.at(t.hooksDir)}/${event === 'unknown' ? 'terminate' : event}.d/`);
  else {
    const share = applies('drain') || applies('etcd-backup') ? 0.5 : 1;
    const w = budget.window(Math.min(t.hookTimeout * 1000 * hooks.length, (budget.remainingMs() - endReserveMs) * share), endReserveMs);
    await step('hooks', w, async () => {
      const results = await runHooks({
        dir: hooksDir,
        env: { ZDT_EVENT: event, ZDT_INSTANCE_ID: identity.instanceId, ZDT_CLUSTER: config.cluster?.name ?? '', ZDT_ROLE: config.node.role },
        hookTimeoutMs: t.hookTimeout * 1000,
        deadline: w.deadline,
        exec: ctx.exec,
        log: log.child('hooks'),
      });
      const bad = results.filter((r) => r.result !== 'ok');
      return {
        result: 'ok',
        detail: results.map((r) => `${r.name}=${r.result}`).join(' '),
        error: bad.length ? bad.map((r) => `${r.name}: ${r.error ?? r.result}`).join('; ') : undefined,
      };
    });
  }

  // The Kubernetes side: the node's own credentials.
  let kube: KubeClient | undefined;
  let nodeName: string | undefined;
  const kubeconfig = paths.at(t.kubeconfig);
  const k8sWanted = applies('drain') || applies('self-delete');
  if (k8sWanted && fs.existsSync(kubeconfig)) {
    try {
      const creds = loadKubeconfig(kubeconfig, paths.at);
      kube = new KubeClient(creds);
      nodeName = nodeNameOf(creds) ?? identity.privateDns;
    } catch (err) {
      log.error('cannot use the kubelet credentials', { err: asAgentError(err).oneLine() });
    }
  }
  const noKube = `no usable ${paths.at(t.kubeconfig)} (the node never joined, or its credentials are unreadable)`;

  let drainReport: DrainReport | undefined;
  let backupKey: string | undefined;
  let singleMember: boolean | undefined;
  const drainStep = async () => {
    if (!applies('drain')) return skip('drain', why('drain'));
    if (!kube || !nodeName) return skip('drain', noKube);
    const w = budget.window(t.drainTimeout * 1000, endReserveMs);
    const report = emptyDrainReport();
    drainReport = report;
    const k = kube;
    const n = nodeName;
    // Evictions are retried until shortly before the window ends, so that the policy for
    // blocked pods (and waiting for deleted ones) still fits inside it.
    const policyMs = t.blockedPods === 'delete' ? Math.min(10_000, w.ms / 4) : Math.min(1000, w.ms / 10);
    await step(
      'drain',
      w,
      async (signal) => {
        await drainNode({ kube: k, nodeName: n, evictUntil: w.deadline - policyMs, deadline: w.deadline, signal, blockedPods: t.blockedPods, log: log.child('drain') }, report);
        return { result: report.complete ? 'ok' : 'failed', detail: describeDrain(report), error: report.complete ? undefined : `pods left on the node: ${report.remaining.join(', ')}` };
      },
      () => describeDrain(report),
    );
  };
  const backupStep = async () => {
    if (!applies('etcd-backup')) return skip('etcd-backup', why('etcd-backup'));
    await step('etcd-backup', budget.window(t.backupTimeout * 1000, endReserveMs), async (signal) => {
      const gw = new EtcdGateway(localEtcdEndpoint(ctx));
      try {
        const voters = (await gw.members(signal)).filter((m) => !m.isLearner);
        singleMember = voters.length <= 1;
      } finally {
        gw.close();
      }
      if (!singleMember) return { result: 'skipped', detail: 'etcd has several members: the others keep the data' };
      const r = await takeBackup({ ctx, instanceId: identity.instanceId, kind: 'emergency', signal });
      backupKey = r.key;
      return { result: 'ok', detail: `s3://${r.bucket}/${r.key} ${r.sizeBytes} bytes verified (${r.encryption})` };
    });
  };
  await Promise.all([drainStep(), backupStep()]);

  if (!applies('self-delete')) skip('self-delete', why('self-delete'));
  else if (!kube || !nodeName) skip('self-delete', noKube);
  else {
    const k = kube;
    const n = nodeName;
    await step('self-delete', budget.window(15_000, endReserveMs), async (signal) => {
      const r = await deleteOwnNode(k, n, signal);
      return { result: 'ok', detail: r === 'deleted' ? `deleted Node ${n}` : `Node ${n} was gone already` };
    });
  }
  kube?.close();

  if (!applies('etcd-leave')) skip('etcd-leave', why('etcd-leave'));
  else if (singleMember === true) skip('etcd-leave', 'etcd has a single member: it was backed up instead');
  else {
    await step('etcd-leave', budget.window(30_000, endReserveMs), async (signal) => {
      const out = await leaveEtcd(ctx, { signal, commandTimeoutS: 3 });
      switch (out.result) {
        case 'removed':
          return { result: 'ok', detail: `removed member ${out.name} (${out.memberId}); ${out.remaining} remain` };
        case 'single-member':
          return { result: 'skipped', detail: 'etcd has a single member: nothing to leave' };
        case 'not-a-member':
          return { result: 'skipped', detail: 'this node is no etcd member (any more)' };
        case 'learner':
          return { result: 'skipped', detail: `member ${out.memberId} is a learner (its join did not finish) and cannot leave through itself; it never counted for quorum (from a voting member: etcdctl member remove ${out.memberId})` };
        case 'refused':
          return { result: 'failed', error: `quorum guard: ${out.reason}` };
      }
    });
  }

  beats?.stop();
  if (!applies('lifecycle')) skip('lifecycle', why('lifecycle'));
  else if (!lifecycle) skip('lifecycle', 'no terminating lifecycle hook to complete');
  else {
    const target = lifecycle;
    await step('lifecycle', budget.window(LIFECYCLE_MAX_MS, 500), async (signal) => {
      try {
        await completeContinue(ctx.aws, target, signal);
      } catch (err) {
        // Nothing to complete (a shutdown the ASG did not start): not a failure.
        if (/no active lifecycle action/i.test((err as Error).message)) return { result: 'skipped', detail: `no lifecycle action of ${target.hookName} holds this instance` };
        throw err;
      }
      return { result: 'ok', detail: `CONTINUE on ${target.asgName}/${target.hookName} after ${beats?.count() ?? 0} heartbeat(s)` };
    });
  }

  const unfinished = Object.entries(record.phases)
    .filter(([, p]) => p.result === 'deadline')
    .map(([n]) => n);
  // Hooks and notifications never fail the shutdown: their errors are reported, not counted.
  const hard = Object.entries(record.phases).filter(([n, p]) => p.result === 'failed' && n !== 'notify' && n !== 'hooks');
  record.result = unfinished.length ? 'deadline' : hard.length ? 'failed' : 'ok';
  record.finishedAt = new Date().toISOString();

  if (!applies('notify')) skip('notify', why('notify'));
  else {
    await notifyStarted;
    const firstBad = Object.entries(record.phases).find(([, p]) => p.result === 'failed' || p.result === 'deadline');
    const message = buildEvent({
      event: 'terminate.finished',
      config,
      identity,
      phases: record.phases,
      failure: firstBad ? { phase: firstBad[0], error: firstBad[1].error ?? firstBad[1].detail ?? firstBad[1].result } : undefined,
      log: firstBad ? log : undefined,
      details: {
        event,
        eventSource: classification.source,
        result: record.result,
        unfinished: unfinished.join(','),
        budgetS: t.budget,
        elapsedMs: budget.elapsedMs(),
        ...(o.trigger ? { trigger: o.trigger.eventId } : {}),
        ...(doneEarlier.size ? { doneByWatcher: [...doneEarlier.keys()].join(',') } : {}),
        ...(backupKey ? { backupKey } : {}),
        // Pods never listed (the API server did not answer): how many are left is unknown, not 0.
        ...(drainReport ? { podsEvicted: drainReport.evicted.length, podsLeft: drainReport.podsListed || drainReport.nodeGone ? drainReport.remaining.length : 'unknown' } : {}),
      },
    });
    await step('notify', budget.window(NOTIFY_MAX_MS, 200), async () => {
      const sent = await publishEvent(ctx.aws, config.notify, message, identity, log, Math.max(200, budget.remainingMs() - 200));
      return sent ? { result: 'ok', detail: 'terminate.finished sent' } : { result: 'failed', error: 'terminate.finished could not be sent (see the log)' };
    });
  }
  save();
  recordMetrics(textfileDirOf(paths, config.metrics), 'terminate', runFamilies('terminate', record, { event }), log);
  log.info(`terminate ${record.result}`, { event, ms: budget.elapsedMs(), unfinished: unfinished.join(',') || undefined });

  return {
    event,
    classification,
    record,
    unfinished,
    backupKey,
    drain: drainReport,
    exitCode: unfinished.length ? ExitCode.deadline : hard.length ? ExitCode.failed : ExitCode.ok,
  };
}

const isShutdownEvent = (e: string | undefined): e is ShutdownEvent => e === 'reboot' || e === 'stop' || e === 'terminate';

/**
 * The earlier run this one continues: a run the watcher started in this kernel boot, when
 * this one is the shutdown's or the watcher's own for the same notice (resumed after a
 * restart). A run for another notice, or from before a reboot, starts afresh.
 */
function continuable(prev: RunRecord | undefined, bootId: string | undefined, trigger: TerminateTrigger | undefined): RunRecord | undefined {
  if (!prev?.trigger || prev.bootId !== bootId) return undefined;
  if (trigger && trigger.eventId !== prev.trigger.eventId) return undefined;
  return prev;
}

function describeDrain(r: DrainReport): string {
  if (r.nodeGone) return 'Node object gone already';
  if (!r.podsListed) return 'the pods on the node were never listed';
  const parts = [`evicted ${r.evicted.length}`, `skipped ${r.skipped.daemonSet.length} DaemonSet + ${r.skipped.mirror.length} mirror`];
  if (r.blocked.length) parts.push(`blocked ${r.blocked.map((b) => b.pod).join(',')}`);
  if (r.deleted.length) parts.push(`deleted ${r.deleted.join(',')}`);
  if (r.remaining.length) parts.push(`left ${r.remaining.join(',')}`);
  return parts.join('; ');
}

/** Identity from what the node knows without IMDS (state facts, cached tags). */
export function fallbackIdentity(state: AgentState, ctx: CommandContext): Identity {
  const f = state.facts;
  const str = (k: string) => (typeof f[k] === 'string' ? (f[k] as string) : undefined);
  const tags = ctx.instance?.tags ?? {};
  return {
    instanceId: str('instanceId') ?? 'unknown',
    region: ctx.config.aws.region ?? str('region') ?? 'unknown',
    availabilityZone: str('availabilityZone') ?? 'unknown',
    instanceType: str('instanceType') ?? 'unknown',
    privateIp: str('privateIp') ?? 'unknown',
    privateDns: str('privateDns'),
    accountId: undefined,
    lifecycle: 'on-demand',
    asgName: tags['aws:autoscaling:groupName'],
    stackName: tags['aws:cloudformation:stack-name'],
    logicalId: tags['aws:cloudformation:logical-id'],
    tags,
  };
}
