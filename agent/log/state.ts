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
  takeover?: TakeoverRecord | undefined;
  /** Facts later phases and commands rely on (volume id, device, neuron devices, …). */
  facts: Record<string, string | number | boolean>;
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
