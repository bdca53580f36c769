import type { Config } from '../config/schema.js';
import { AgentError, DeadlineError, asAgentError } from '../errors.js';
import { readIdentity, type Identity } from '../host/identity.js';
import type { Logger } from '../log/logger.js';
import { recordMetrics, runFamilies, textfileDirOf } from '../log/metrics.js';
import { readState, writeState, type AgentState, type PhaseRecord, type RunRecord } from '../log/state.js';
import { agentVersion } from '../version.js';
import type { BootContext, BootPhase, BootShared, NodeHost, PhaseOutcome } from './context.js';
import { recordCompletion, type BootCompletion } from './fast-path.js';
import { acquireBootLock } from '../host/lock.js';
import { bootPhases } from './phases.js';
import { bootPhaseOrder, reportingPhases, type BootPhaseName } from './plan.js';

/**
 * The boot runner: the phases in the order of `bootPhaseOrder`, each run only when its
 * decision (shared with `zdt-agent plan`) says it applies. Every phase is timed, bounded by
 * its budget, logged and recorded in the state file as soon as it ends, so that `status`
 * shows how far an interrupted boot got. After a failure the remaining work phases are not
 * run; the reporting phases (signal, notify) still run and report the failure.
 */

export interface BootDeps extends NodeHost {
  /** Instance tags already read with the config sources (saves IMDS calls). */
  tags?: Record<string, string> | undefined;
  /**
   * Kernel boot id and config sources of this run, recorded when it ends ok so that the next
   * `boot` in the same kernel boot takes the fast path (agent/boot/fast-path.ts).
   */
  completion?: BootCompletion | undefined;
}

export interface BootResult {
  ok: boolean;
  /** The error of the failing phase. */
  error?: AgentError | undefined;
  failedPhase?: BootPhaseName | undefined;
  /** Some phase changed something (false: the node was already up, nothing was done). */
  changed: boolean;
  phases: Record<string, PhaseRecord>;
  state: AgentState;
}

export async function runBoot(deps: BootDeps, phases: Record<Exclude<BootPhaseName, 'identity'>, BootPhase> = bootPhases): Promise<BootResult> {
  const release = acquireBootLock(deps.paths.at('/run/zdt-agent/boot.lock'));
  try {
    return await runPhases(deps, phases);
  } finally {
    release();
  }
}

async function runPhases(deps: BootDeps, phases: Record<Exclude<BootPhaseName, 'identity'>, BootPhase>): Promise<BootResult> {
  const { config, paths, log } = deps;
  const state = readState(paths.stateFile, agentVersion);
  const run: RunRecord = { startedAt: new Date().toISOString(), phases: {} };
  state.boot = run;
  // A boot that cannot record its state fails (docs/boot.md, "When the state cannot be
  // written"): the first failed write becomes the run's failure, so no further work phase runs,
  // signal and notify report it, and the command exits 1 with the file named.
  let stateError: AgentError | undefined;
  const save = () => {
    try {
      writeState(paths.stateFile, state);
    } catch (err) {
      const e = asAgentError(err);
      log.error('cannot write the state file', { file: paths.stateFile, err: e.message });
      stateError ??= new AgentError('StateNotRecorded', `the boot cannot record its state: ${e.message}`, {
        hint: `${e.hint ?? 'check the disk'}; the boot did no further work and reported this failure`,
        cause: err,
      });
    }
  };
  save();
  // Written as soon as a phase that ran ends (status shows how far an interrupted boot got);
  // skipped phases ride along with the next write.
  let failure: { phase: BootPhaseName; error: AgentError } | undefined;
  const record = (name: BootPhaseName, rec: PhaseRecord, ran = true) => {
    run.phases[name] = rec;
    if (ran) save();
    if (stateError && !failure) failure = { phase: name, error: stateError };
  };
  let changed = false;

  // identity first: every other decision depends on the instance type, AZ and tags.
  let identity: Identity | undefined;
  const idOutcome = await timed('identity', log, 120_000, async () => {
    identity = await readIdentity(deps.imds, { log: log.child('identity'), tags: deps.tags, aws: deps.aws });
    return describeIdentity(identity, config);
  });
  record('identity', idOutcome.record);
  if (idOutcome.error || !identity) {
    return finish(false, 'identity', idOutcome.error);
  }
  // (A state file that could not be written at the start fails the run here, after identity:
  // signal and notify need the identity to report it.)

  const shared: BootShared = {};
  for (const { name, decide } of bootPhaseOrder) {
    if (name === 'identity') continue;
    const decision = decide({ config, identity });
    const started = new Date().toISOString();
    if (failure && !reportingPhases.has(name)) {
      record(name, { result: 'skipped', startedAt: started, durationMs: 0, detail: `not run: ${failure.phase} failed` }, false);
      continue;
    }
    if (!decision.applies) {
      log.debug(`skip ${name}`, { why: decision.why });
      record(name, { result: 'skipped', startedAt: started, durationMs: 0, detail: decision.why }, false);
      continue;
    }
    // A boot that changed nothing (a re-run on a booted node) sends no notification.
    if (name === 'notify' && !changed && !failure) {
      record(name, { result: 'skipped', startedAt: started, durationMs: 0, detail: 'nothing changed on this run' }, false);
      continue;
    }
    const phase = phases[name];
    const ctx: Omit<BootContext, 'signal'> = {
      config,
      paths,
      log: log.child(name),
      imds: deps.imds,
      aws: deps.aws,
      exec: deps.exec,
      identity,
      state,
      shared,
      failure: failure ? { phase: failure.phase, error: failure.error.oneLine() } : undefined,
    };
    const outcome = await timed(name, log, phase.budgetMs(config), (signal) => phase.run({ ...ctx, signal }));
    record(name, outcome.record);
    if (outcome.outcome?.changed) changed = true;
    if (outcome.error && !failure) {
      // A failing report (signal) is a failed boot too, but the other report still goes out.
      failure = { phase: name, error: outcome.error };
    }
  }
  return finish(!failure && !stateError, failure?.phase, failure?.error);

  function finish(ok: boolean, failedPhase: BootPhaseName | undefined, error: AgentError | undefined): BootResult {
    run.finishedAt = new Date().toISOString();
    run.result = ok ? 'ok' : error instanceof DeadlineError ? 'deadline' : 'failed';
    recordCompletion(state, deps.completion, ok);
    save();
    recordMetrics(textfileDirOf(paths, config.metrics), 'boot', runFamilies('boot', run), log);
    // The last write may be the first to fail (the disk filled during the boot).
    if (ok && stateError) return { ok: false, error: stateError, failedPhase: 'notify', changed, phases: run.phases, state };
    return { ok, error, failedPhase, changed, phases: run.phases, state };
  }
}

function describeIdentity(id: Identity, config: Config): PhaseOutcome {
  const role = `${config.node.role}${config.node.controllerIndex ? ` ${config.node.controllerIndex}` : ''}`;
  const parts = [`${id.instanceId} ${id.instanceType} in ${id.availabilityZone}`, `${role}${config.cluster ? ` of ${config.cluster.name}` : ''}`];
  if (id.asgName) parts.push(`ASG ${id.asgName}`);
  if (id.stackName) parts.push(`stack ${id.stackName}/${id.logicalId ?? '?'}`);
  return { detail: parts.join(', '), changed: false };
}

/** Runs one phase under its budget; never throws. */
async function timed(
  name: BootPhaseName,
  log: Logger,
  budgetMs: number,
  fn: (signal: AbortSignal) => Promise<PhaseOutcome>,
): Promise<{ record: PhaseRecord; outcome?: PhaseOutcome | undefined; error?: AgentError | undefined }> {
  const startedAt = new Date().toISOString();
  const t0 = performance.now();
  const ac = new AbortController();
  let timer: NodeJS.Timeout | undefined;
  const budget = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      const budget = budgetMs >= 1000 ? `${Math.round(budgetMs / 1000)}s` : `${budgetMs} ms`;
      const err = new DeadlineError('PhaseDeadline', `${name} did not finish within its budget of ${budget}`, {
        hint: 'see the log for what it was waiting for',
      });
      ac.abort(err);
      reject(err);
    }, budgetMs);
  });
  log.info(`${name}: start`);
  try {
    const outcome = await Promise.race([fn(ac.signal), budget]);
    const durationMs = Math.round(performance.now() - t0);
    log.info(`${name}: ${outcome.skipped ? 'nothing to do' : outcome.changed ? 'done' : 'already done'}`, { ms: durationMs, detail: outcome.detail });
    return { record: { result: outcome.skipped ? 'skipped' : 'ok', startedAt, durationMs, detail: outcome.detail }, outcome };
  } catch (err) {
    const e = asAgentError(err);
    const durationMs = Math.round(performance.now() - t0);
    log.error(`${name}: failed`, { ms: durationMs, code: e.code, err: e.message, hint: e.hint });
    return { record: { result: e instanceof DeadlineError ? 'deadline' : 'failed', startedAt, durationMs, error: e.oneLine() }, error: e };
  } finally {
    clearTimeout(timer);
  }
}
