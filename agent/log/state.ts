import fs from 'node:fs';
import { writeFileAtomic } from '../host/atomic.js';
import { redactDeep } from './redact.js';

export type PhaseResult = 'ok' | 'skipped' | 'failed' | 'deadline';

export interface PhaseRecord {
  result: PhaseResult;
  startedAt: string;
  durationMs: number;
  /** Why it was skipped, or what it did, in one line. */
  detail?: string | undefined;
  error?: string | undefined;
}

export interface RunRecord {
  startedAt: string;
  finishedAt?: string | undefined;
  result?: 'ok' | 'failed' | 'deadline' | undefined;
  /** Set by terminate: reboot | stop | terminate | unknown. */
  event?: string | undefined;
  /** Who started the run when not the shutdown: the watcher, with the notice's identity. */
  trigger?: { by: 'watch'; eventId: string; notice: string } | undefined;
  /** The kernel boot the run happened in: a later shutdown of the same boot continues it. */
  bootId?: string | undefined;
  phases: Record<string, PhaseRecord>;
}

/** What the takeover phase of a service host (bastion, nat, vpngw) did last (docs/takeover.md). */
export interface TakeoverRecord {
  at: string;
  result: 'ok' | 'stood-down' | 'failed';
  /** Each resource moved, from which instance (or gateway, or nothing), ms after the phase started. */
  moved: Array<{ what: string; from: string; atMs: number }>;
  /** The instances anything was taken from. */
  from: string[];
  readyMs?: number | undefined;
  /** From the first change away from the previous holder to the verified state pointing here. */
  interruptionMs?: number | undefined;
  lastMoveMs?: number | undefined;
  totalMs: number;
  error?: string | undefined;
}

export interface AgentState {
  schema: 1;
  agentVersion: string;
  boot?: RunRecord | undefined;
  terminate?: RunRecord | undefined;
  watch?: WatchState | undefined;
  takeover?: TakeoverRecord | undefined;
  /** Facts later phases and commands rely on (volume id, device, neuron devices, …). */
  facts: Record<string, string | number | boolean>;
}

/** One notice the watcher saw, by its stable identity; what it did, once. */
export interface WatchedEvent {
  kind: string;
  /** One line: what IMDS said (code, action, notice time). */
  notice: string;
  firstSeenAt: string;
  action: 'retire' | 'cordon' | 'log' | 'ignore';
  /** For retire: the shutdown event it ran terminate's flow for. */
  event?: string | undefined;
  /** acting: started and not finished (a restarted watcher resumes it); done: never again. */
  status: 'acting' | 'done';
  startedAt?: string | undefined;
  finishedAt?: string | undefined;
  result?: 'ok' | 'failed' | 'deadline' | undefined;
  detail?: string | undefined;
  /** The watcher cordoned a schedulable Node for it (only such a cordon is undone). */
  cordoned?: boolean | undefined;
  /** The kernel boot it was acted on in (a reboot event's cordon is undone in a later one). */
  bootId?: string | undefined;
  undoneAt?: string | undefined;
}

export interface WatchState {
  startedAt: string;
  pid: number;
  /** Set when it stopped (SIGTERM); a watcher that was killed leaves none. */
  stoppedAt?: string | undefined;
  /** Written at most once a minute while nothing happens (the file is not rewritten every poll). */
  lastPollAt?: string | undefined;
  /** While IMDS does not answer: since when, and the last error. */
  imdsDownSince?: string | undefined;
  imdsError?: string | undefined;
  lastEventId?: string | undefined;
  events: Record<string, WatchedEvent>;
}

export function emptyState(agentVersion: string): AgentState {
  return { schema: 1, agentVersion, facts: {} };
}

export function readState(file: string, agentVersion: string): AgentState {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch {
    return emptyState(agentVersion);
  }
  try {
    const parsed = JSON.parse(text) as Partial<AgentState>;
    if (parsed.schema !== 1 || typeof parsed.facts !== 'object') return emptyState(agentVersion);
    return { ...emptyState(agentVersion), ...parsed, agentVersion } as AgentState;
  } catch {
    // A state file is a record, not a source of truth: a broken one is replaced.
    return emptyState(agentVersion);
  }
}

/** Redacted, atomic, 0600 (it may name volumes and hosts; never secrets). */
export function writeState(file: string, state: AgentState): void {
  writeFileAtomic(file, `${JSON.stringify(redactDeep(state), null, 2)}\n`, 0o600);
}

/**
 * Read, change, write, with nothing awaited in between: the watcher and the terminate run it
 * starts each update their own part (state.watch, state.terminate) of one file without
 * putting back the other's older copy.
 */
export function updateState(file: string, agentVersion: string, change: (s: AgentState) => void): AgentState {
  const state = readState(file, agentVersion);
  change(state);
  writeState(file, state);
  return state;
}

export function formatState(state: AgentState): string {
  const lines: string[] = [`zdt-agent ${state.agentVersion}`];
  const run = (label: string, r: RunRecord | undefined) => {
    if (!r) {
      lines.push(`${label}: never ran`);
      return;
    }
    lines.push(
      `${label}: ${r.result ?? 'running or interrupted'}${r.event ? ` (event ${r.event})` : ''}, started ${r.startedAt}${r.finishedAt ? `, finished ${r.finishedAt}` : ''}`,
    );
    for (const [name, p] of Object.entries(r.phases)) {
      const dur = `${(p.durationMs / 1000).toFixed(2)}s`;
      lines.push(
        `  ${name.padEnd(16)} ${p.result.padEnd(8)} ${dur.padStart(8)}${p.detail ? `  ${p.detail}` : ''}${p.error ? `  error: ${p.error}` : ''}`,
      );
    }
  };
  run('boot', state.boot);
  run('terminate', state.terminate);
  if (state.terminate?.trigger) lines.push(`  started by the watcher for ${state.terminate.trigger.eventId}: ${state.terminate.trigger.notice}`);
  const w = state.watch;
  if (!w) lines.push('watch: never ran');
  else {
    lines.push(`watch: pid ${w.pid}, started ${w.startedAt}${w.stoppedAt ? `, stopped ${w.stoppedAt}` : ''}, last poll ${w.lastPollAt ?? 'none yet'}${w.imdsDownSince ? `; IMDS not answering since ${w.imdsDownSince}: ${w.imdsError ?? ''}` : ''}`);
    const last = w.lastEventId ? w.events[w.lastEventId] : undefined;
    if (!last) lines.push('  no notice seen');
    for (const [id, e] of Object.entries(w.events)) {
      lines.push(
        `  ${id}: ${e.notice}; ${e.action}${e.event ? ` as ${e.event}` : ''} ${e.status}${e.result ? ` ${e.result}` : ''}${e.finishedAt ? ` at ${e.finishedAt}` : ''}${e.detail ? `  ${e.detail}` : ''}${e.undoneAt ? `; uncordoned ${e.undoneAt}` : ''}`,
      );
    }
  }
  const t = state.takeover;
  if (t) {
    const timings = [t.readyMs !== undefined ? `ready after ${t.readyMs} ms` : '', t.interruptionMs !== undefined ? `interruption ${t.interruptionMs} ms` : '', `total ${t.totalMs} ms`];
    lines.push(`takeover: ${t.result} at ${t.at}${t.from.length ? ` from ${t.from.join(', ')}` : ''}; ${timings.filter(Boolean).join(', ')}`);
    for (const m of t.moved) lines.push(`  +${String(m.atMs).padStart(6)} ms  ${m.what} from ${m.from}`);
    if (t.error) lines.push(`  error: ${t.error}`);
  }
  const facts = Object.entries(state.facts);
  if (facts.length) {
    lines.push('facts:');
    for (const [k, v] of facts) lines.push(`  ${k}: ${String(v)}`);
  }
  return lines.join('\n');
}
