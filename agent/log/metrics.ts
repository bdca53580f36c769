import fs from 'node:fs';
import path from 'node:path';
import { writeFileAtomic } from '../host/atomic.js';
import type { Paths } from '../host/paths.js';
import type { Logger } from './logger.js';
import type { RunRecord } from './state.js';

/**
 * Metrics for node_exporter's textfile collector (docs/metrics.md): one file per command,
 * `<dir>/zdt_agent_<command>.prom`, replaced atomically (the collector may read at any
 * moment and must never see half a file).
 *
 * The exposition is written by hand: a run writes a few dozen lines once, at its end, and the
 * text format is four rules (HELP, TYPE, escaping, one sample a line). A client library
 * (prom-client) is built around a long-lived in-process registry and a scrape endpoint,
 * neither of which a short command has; on the ssh-keys hot path it would add its module load
 * to every key offer (bench/metrics-startup.mjs measures what this module costs instead).
 *
 * Counters across runs (ssh-keys answers) and series kept per label (backups per kind) are
 * merged with what the previous file says: the file is the only memory a command has.
 */

export type MetricType = 'gauge' | 'counter';
export type Labels = Readonly<Record<string, string>>;

export interface Sample {
  labels?: Labels | undefined;
  value: number;
}

export interface MetricFamily {
  /** Full name, `zdt_agent_…` with its unit suffix. */
  name: string;
  type: MetricType;
  help: string;
  samples: Sample[];
}

export const METRIC_PREFIX = 'zdt_agent_';

/** `metrics.textfileDir` on this node (under --root, like every other configured path), or undefined: off. */
export function textfileDirOf(paths: Paths, metrics: { textfileDir?: string | undefined } | undefined): string | undefined {
  return metrics?.textfileDir ? paths.at(metrics.textfileDir) : undefined;
}

export function metricsFile(dir: string, command: string): string {
  return path.join(dir, `${METRIC_PREFIX}${command.replace(/[^a-zA-Z0-9_]/g, '_')}.prom`);
}

const escapeHelp = (s: string) => s.replace(/\\/g, '\\\\').replace(/\n/g, '\\n');
const escapeLabel = (s: string) => s.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n');

function formatValue(v: number): string {
  if (Number.isNaN(v)) return 'NaN';
  if (v === Infinity) return '+Inf';
  if (v === -Infinity) return '-Inf';
  return String(v);
}

/** The series key of a sample: `name{a="1",b="2"}` with labels sorted (also its text form). */
export function seriesOf(name: string, labels: Labels | undefined): string {
  const entries = Object.entries(labels ?? {}).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  if (entries.length === 0) return name;
  return `${name}{${entries.map(([k, v]) => `${k}="${escapeLabel(v)}"`).join(',')}}`;
}

/** The text exposition format 0.0.4, families in the order given. */
export function renderExposition(families: readonly MetricFamily[]): string {
  const lines: string[] = [];
  for (const f of families) {
    if (f.samples.length === 0) continue;
    lines.push(`# HELP ${f.name} ${escapeHelp(f.help)}`, `# TYPE ${f.name} ${f.type}`);
    for (const s of f.samples) lines.push(`${seriesOf(f.name, s.labels)} ${formatValue(s.value)}`);
  }
  return lines.length ? `${lines.join('\n')}\n` : '';
}

const SAMPLE_LINE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})?\s+(\S+)(?:\s+\S+)?$/;
const LABEL_PAIR = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;

/** The samples of a file this module wrote, by family name; empty when there is none. */
export function readSamples(file: string): Map<string, Sample[]> {
  const out = new Map<string, Sample[]>();
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch {
    return out;
  }
  for (const line of text.split('\n')) {
    const m = SAMPLE_LINE.exec(line);
    if (!m) continue;
    const labels: Record<string, string> = {};
    for (const l of (m[2] ?? '').matchAll(LABEL_PAIR)) labels[l[1] as string] = (l[2] as string).replace(/\\(.)/g, (_x, c: string) => (c === 'n' ? '\n' : c));
    const value = Number(m[3] === '+Inf' ? Infinity : m[3] === '-Inf' ? -Infinity : m[3]);
    const list = out.get(m[1] as string) ?? [];
    list.push({ labels, value });
    out.set(m[1] as string, list);
  }
  return out;
}

export interface WriteOptions {
  /**
   * Keep the previous file's samples of these families whose labels the new ones do not
   * repeat (the other backup kind's last success), instead of replacing the file.
   */
  keep?: boolean;
  /** Counters whose new samples are increments added to the previous value. */
  increments?: boolean;
}

/** Merge with the previous file as WriteOptions says. */
export function mergeWithPrevious(previous: Map<string, Sample[]>, families: readonly MetricFamily[], o: WriteOptions): MetricFamily[] {
  return families.map((f) => {
    const before = previous.get(f.name) ?? [];
    const byKey = new Map<string, Sample>();
    if (o.keep || o.increments) for (const s of before) byKey.set(seriesOf(f.name, s.labels), s);
    for (const s of f.samples) {
      const key = seriesOf(f.name, s.labels);
      const prev = byKey.get(key);
      byKey.set(key, o.increments && f.type === 'counter' && prev ? { labels: s.labels, value: prev.value + s.value } : s);
    }
    return { ...f, samples: [...byKey.values()] };
  });
}

/**
 * Write `families` to `<dir>/zdt_agent_<command>.prom` atomically. Throws on I/O errors;
 * recordMetrics is the caller-friendly form.
 */
export function writeMetrics(dir: string, command: string, families: readonly MetricFamily[], o: WriteOptions = {}): string {
  const file = metricsFile(dir, command);
  const merged = o.keep || o.increments ? mergeWithPrevious(readSamples(file), families, o) : families;
  // 0644: node_exporter runs as its own user and only reads.
  writeFileAtomic(file, renderExposition(merged), 0o644);
  return file;
}

/**
 * writeMetrics when `metrics.textfileDir` is set; a failure is logged, never thrown (metrics
 * never fail a boot, a shutdown or a login).
 */
export function recordMetrics(dir: string | undefined, command: string, families: readonly MetricFamily[], log: Logger, o: WriteOptions = {}): void {
  if (!dir) return;
  try {
    const file = writeMetrics(dir, command, families, o);
    log.debug('metrics written', { file });
  } catch (err) {
    log.warn('cannot write the metrics file', { dir, command, err: (err as Error).message });
  }
}

const seconds = (ms: number) => Math.round(ms) / 1000;
const epochSeconds = (iso: string | undefined) => (iso ? Date.parse(iso) / 1000 : NaN);

/**
 * A boot or terminate run: when it started, how long it took, its result, and each phase's
 * duration and result. `labels` go on the run series (terminate's event kind).
 */
export function runFamilies(command: 'boot' | 'terminate', run: RunRecord, labels: Labels = {}): MetricFamily[] {
  const p = `${METRIC_PREFIX}${command}`;
  const what = command === 'boot' ? 'boot phase' : 'terminate step';
  const result = run.result ?? 'failed';
  const started = epochSeconds(run.startedAt);
  const finished = run.finishedAt ? epochSeconds(run.finishedAt) : Date.now() / 1000;
  const phases = Object.entries(run.phases);
  return [
    { name: `${p}_last_run_start_timestamp_seconds`, type: 'gauge', help: `When the last ${command} started (Unix time).`, samples: [{ labels, value: started }] },
    { name: `${p}_last_run_duration_seconds`, type: 'gauge', help: `How long the last ${command} took.`, samples: [{ labels, value: Math.round((finished - started) * 1000) / 1000 }] },
    { name: `${p}_last_run_success`, type: 'gauge', help: `1 when the last ${command} succeeded, else 0.`, samples: [{ labels, value: result === 'ok' ? 1 : 0 }] },
    { name: `${p}_last_run_result`, type: 'gauge', help: `The last ${command}'s result (ok, failed, deadline) as a label; the value is always 1.`, samples: [{ labels: { ...labels, result }, value: 1 }] },
    {
      name: `${p}_phase_duration_seconds`,
      type: 'gauge',
      help: `Duration of each ${what} in the last ${command}.`,
      samples: phases.map(([phase, r]) => ({ labels: { phase }, value: seconds(r.durationMs) })),
    },
    {
      name: `${p}_phase_result`,
      type: 'gauge',
      help: `Result of each ${what} in the last ${command} (ok, skipped, failed, deadline) as a label; the value is always 1.`,
      samples: phases.map(([phase, r]) => ({ labels: { phase, result: r.result }, value: 1 })),
    },
  ];
}

/** What the watcher counts between two metrics files (agent/watch/run.ts). */
export interface WatchCounters {
  /** Unix time of the last poll (answered or not); NaN before the first. */
  lastPollAt: number;
  polls: number;
  pollErrors: number;
  /** New notices by kind (`watch.on.<kind>` names), each counted once. */
  eventsByKind: Readonly<Record<string, number>>;
}

/** The watcher's file: counters since it started (a restart reads as a counter reset). */
export function watchFamilies(c: WatchCounters): MetricFamily[] {
  const p = `${METRIC_PREFIX}watch`;
  return [
    { name: `${p}_last_poll_timestamp_seconds`, type: 'gauge', help: 'When the watcher last polled IMDS, answered or not (Unix time).', samples: [{ value: c.lastPollAt }] },
    { name: `${p}_polls_total`, type: 'counter', help: 'IMDS polls since the watcher started.', samples: [{ value: c.polls }] },
    { name: `${p}_poll_errors_total`, type: 'counter', help: 'Polls IMDS did not answer since the watcher started.', samples: [{ value: c.pollErrors }] },
    {
      name: `${p}_events_total`,
      type: 'counter',
      help: 'Interruption notices seen since the watcher started, by kind, each counted once.',
      samples: Object.entries(c.eventsByKind).map(([kind, value]) => ({ labels: { kind }, value })),
    },
  ];
}
