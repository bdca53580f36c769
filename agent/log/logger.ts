import fs from 'node:fs';
import path from 'node:path';
import { redact } from './redact.js';

export const LOG_LEVELS = ['debug', 'info', 'warn', 'error'] as const;
export const LOG_FORMATS = ['human', 'json'] as const;
export type Level = (typeof LOG_LEVELS)[number];
export type LogFormat = (typeof LOG_FORMATS)[number];
const levelRank: Record<Level, number> = { debug: 10, info: 20, warn: 30, error: 40 };

export type Fields = Record<string, string | number | boolean | null | undefined>;

export interface Logger {
  debug(msg: string, fields?: Fields): void;
  info(msg: string, fields?: Fields): void;
  warn(msg: string, fields?: Fields): void;
  error(msg: string, fields?: Fields): void;
  /** A logger whose lines carry `phase=<name>`. */
  child(phase: string): Logger;
  /** The last lines written (already redacted), for failure messages. */
  tail(n: number): string[];
}

export interface LoggerOptions {
  level?: Level;
  format?: LogFormat;
  /** Log file; created with its directory. Omit for stderr only. */
  file?: string | undefined;
  /** Defaults to process.stderr; `null` silences the console (ssh-keys keeps stderr quiet). */
  console?: NodeJS.WritableStream | null;
  now?: () => Date;
}

const TAIL_MAX = 200;

function formatValue(v: string | number | boolean | null): string {
  const s = String(v);
  return /[\s"=]/.test(s) || s === '' ? JSON.stringify(s) : s;
}

/**
 * One line per event, to stderr and the log file. Lines are redacted before they leave.
 * File writes are synchronous: at shutdown the process may be killed at any moment, and a
 * line that is not on disk did not happen.
 */
export function createLogger(opts: LoggerOptions = {}): Logger {
  const min = levelRank[opts.level ?? 'info'];
  const format = opts.format ?? 'human';
  const out = opts.console === undefined ? process.stderr : opts.console;
  const now = opts.now ?? (() => new Date());
  const ring: string[] = [];
  let fd: number | undefined;
  if (opts.file) {
    try {
      fs.mkdirSync(path.dirname(opts.file), { recursive: true });
      fd = fs.openSync(opts.file, 'a', 0o640);
    } catch (err) {
      out?.write(`zdt-agent: cannot open log file ${opts.file}: ${(err as Error).message}\n`);
    }
  }

  const write = (level: Level, phase: string | undefined, msg: string, fields: Fields = {}) => {
    if (levelRank[level] < min) return;
    const ts = now().toISOString();
    let line: string;
    if (format === 'json') {
      const rec: Record<string, unknown> = { ts, level, msg };
      if (phase) rec.phase = phase;
      for (const [k, v] of Object.entries(fields)) if (v !== undefined) rec[k] = v;
      line = JSON.stringify(rec);
    } else {
      const extra = Object.entries(fields)
        .filter(([, v]) => v !== undefined)
        .map(([k, v]) => `${k}=${formatValue(v as string | number | boolean | null)}`)
        .join(' ');
      line = `${ts} ${level.toUpperCase().padEnd(5)} ${phase ? `[${phase}] ` : ''}${msg}${extra ? ` ${extra}` : ''}`;
    }
    line = redact(line);
    ring.push(line);
    if (ring.length > TAIL_MAX) ring.shift();
    out?.write(`${line}\n`);
    if (fd !== undefined) {
      try {
        fs.writeSync(fd, `${line}\n`);
      } catch {
        // A full or read-only disk must not stop the agent; stderr still has the line.
      }
    }
  };

  const make = (phase: string | undefined): Logger => ({
    debug: (m, f) => write('debug', phase, m, f),
    info: (m, f) => write('info', phase, m, f),
    warn: (m, f) => write('warn', phase, m, f),
    error: (m, f) => write('error', phase, m, f),
    child: (p) => make(phase ? `${phase}/${p}` : p),
    tail: (n) => ring.slice(-n),
  });
  const logger = make(undefined);
  if (out || fd !== undefined) {
    warnings.target = logger;
    flushEarlyWarnings(logger);
  }
  return logger;
}

interface WarningSink {
  installed: boolean;
  /** The command's logger, once made; the last one made with somewhere to write. */
  target: Logger | undefined;
  /** Warnings emitted before there was a logger (few: a bounded queue). */
  early: string[];
}

/** On globalThis: the main script and the CLI chunk each bundle this module (see redact.ts). */
const warnings: WarningSink = ((globalThis as Record<symbol, unknown>)[Symbol.for('zdt-agent.warnings')] ??= {
  installed: false,
  target: undefined,
  early: [],
}) as WarningSink;

/**
 * Node prints process warnings (a library's `process.emitWarning`, deprecations) raw on
 * stderr, and the yaml library's quote the source line, value included: the console and
 * cloud-init's output would carry it. Replaces Node's printer with the log, at debug,
 * redacted like every line. Called first thing in main.ts.
 */
export function captureProcessWarnings(): void {
  if (warnings.installed) return;
  warnings.installed = true;
  process.removeAllListeners('warning');
  process.on('warning', (w: Error) => {
    const text = `${w.name}: ${w.message}`;
    if (warnings.target) warnings.target.debug('node warning', { warning: text });
    else if (warnings.early.length < 20) warnings.early.push(text);
  });
}

/** Warnings that came before the first logger, written to it at debug. */
function flushEarlyWarnings(log: Logger): void {
  for (const text of warnings.early.splice(0)) log.debug('node warning', { warning: text });
}

/** A logger that drops everything (for unit tests and library use). */
export const silentLogger: Logger = createLogger({ console: null, level: 'error' });
