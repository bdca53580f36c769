import fs from 'node:fs';
import path from 'node:path';
import { makePaths, type Paths } from '../host/paths.js';
import { LOG_FORMATS, LOG_LEVELS, createLogger, type Level, type Logger, type LogFormat } from '../log/logger.js';
import { answerFrom, checkLogin, type Answer, type Request } from './answer.js';
import { audit } from './audit.js';
import { textfileDirOf } from '../log/metrics.js';
import { countAnswer } from './metrics.js';
import { cacheFile, freshness, readCache, snapshotMatches, type CacheRead } from './cache.js';
import type { SshSettings } from './settings.js';

/**
 * The hot path of `ssh-keys`: sshd runs it for every key a client offers, so it reads one
 * file and answers. Nothing here loads yargs, the config parsers (yaml, zod) or the AWS SDK;
 * main.ts calls it before the CLI, and anything it cannot answer goes on to the full lookup
 * (agent/ssh/lookup.ts) through the CLI.
 */

export interface SshKeysArgs {
  user: string;
  fingerprint?: string | undefined;
  config?: string | undefined;
  root?: string | undefined;
  logLevel?: Level | undefined;
  logFormat?: LogFormat | undefined;
}

const LEVELS: readonly string[] = LOG_LEVELS;
const FORMATS: readonly string[] = LOG_FORMATS;

/** A command line that names ssh-keys but cannot be run: exit 2 with this one line. */
export interface SshKeysUsage {
  usage: string;
}

const GLOBAL_OPTION = /^--(config|root|log-level|log-format)(?:=(.*))?$/;

/**
 * `[--config F] [--root D] [--log-level L] [--log-format F] ssh-keys USER [FINGERPRINT]`
 * (the whole argv), or undefined when it is not an ssh-keys call (main.ts then hands it to
 * the CLI).
 *
 * USER and FINGERPRINT are sshd's %u and %f: data written by whoever is at the login prompt.
 * Everything after `ssh-keys` is taken positionally, whatever it looks like (`--help`, `-x`,
 * `--config=FILE`, `--`, empty): options go before `ssh-keys`, on the sshd line the package
 * installs, so no login name can change the configuration or the output. A name that is no
 * valid login gets the invalid-user answer (answer.ts checkLogin), not a usage error.
 */
export function parseSshKeysArgv(argv: readonly string[]): SshKeysArgs | SshKeysUsage | undefined {
  const opts: Record<string, string> = {};
  let i = 0;
  for (; i < argv.length && argv[i] !== 'ssh-keys'; i++) {
    const m = GLOBAL_OPTION.exec(argv[i] as string);
    if (!m) return undefined;
    const value = m[2] ?? argv[++i];
    if (value === undefined) return undefined;
    opts[m[1] as string] = value;
  }
  if (i >= argv.length) return undefined;
  const positional = argv.slice(i + 1);
  if (positional.length < 1 || positional.length > 2) {
    return { usage: `ssh-keys takes USER [FINGERPRINT] (sshd's %u %f), got ${positional.length} arguments; put options before ssh-keys` };
  }
  const level = opts['log-level'];
  const format = opts['log-format'];
  if (level !== undefined && !LEVELS.includes(level)) return { usage: `--log-level must be one of ${LEVELS.join(', ')}` };
  if (format !== undefined && !FORMATS.includes(format)) return { usage: `--log-format must be one of ${FORMATS.join(', ')}` };
  return {
    user: positional[0] as string,
    fingerprint: positional[1],
    config: opts.config,
    root: opts.root,
    logLevel: level as Level | undefined,
    logFormat: format as LogFormat | undefined,
  };
}

export const isSshKeysUsage = (a: SshKeysArgs | SshKeysUsage): a is SshKeysUsage => 'usage' in a;

/** The --config file as the cache records it (absolute), or null. */
export function configArgOf(args: SshKeysArgs): string | null {
  return args.config ? path.resolve(args.config) : null;
}

/** Cache settings apply only to a call with the --config their writer had. */
export function cachedSettings(read: CacheRead, args: SshKeysArgs): SshSettings | undefined {
  return read.cache && read.cache.configArg === configArgOf(args) ? read.cache.settings : undefined;
}

/** The ssh-keys logger: the agent log (when this user may write it), never stderr (sshd drops it). */
export function sshKeysLogger(paths: Paths, args: SshKeysArgs, settings: SshSettings | undefined): Logger {
  return createLogger({
    level: args.logLevel ?? settings?.log.level ?? 'info',
    format: args.logFormat ?? settings?.log.format ?? 'human',
    file: paths.logFile,
    console: null,
  });
}

export type Output = (text: string) => void;

/**
 * stdout as sshd reads it: written straight to fd 1. process.stdout would build a stream
 * (net/tty modules) for a single write, a tenth of the hot path.
 */
export const writeStdout: Output = (text) => writeFd(1, text);

/** stderr the same way: the one line of a failed ssh-keys. */
export const writeStderr: Output = (text) => writeFd(2, text);

function writeFd(fd: number, text: string): void {
  const buf = Buffer.from(text);
  for (let off = 0; off < buf.length; ) {
    try {
      off += fs.writeSync(fd, buf, off);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'EPIPE') return; // sshd is gone; nobody reads the answer
      if (code !== 'EAGAIN') throw err;
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 1); // a non-blocking pipe is full: wait 1 ms
    }
  }
}

/** What the metrics of an answer need: the settings (metrics.textfileDir) and the cache's age. */
export interface AnswerSource {
  settings?: SshSettings | undefined;
  /** GroupSnapshot.fetchedAt of the snapshot the answer came from. */
  cacheFetchedAt?: number | undefined;
}

/** Print the key lines (stdout carries nothing else), then write the audit line and count the answer. */
export function respond(paths: Paths, log: Logger, a: Answer, out: Output = writeStdout, from: AnswerSource = {}): void {
  if (a.lines.length > 0) out(`${a.lines.join('\n')}\n`);
  audit(paths, log, a.record);
  countAnswer(textfileDirOf(paths, from.settings?.metrics), { record: a.record, cacheFetchedAt: from.cacheFetchedAt }, log);
}

/** Exit code when answered from what is on disk; undefined when it takes the full lookup. */
export async function answerFromCache(args: SshKeysArgs, o: { now?: number; out?: Output } = {}): Promise<number | undefined> {
  const paths = makePaths(args.root);
  const req: Request = { user: args.user, fingerprint: args.fingerprint };
  // A bad name is refused before anything is read.
  const early = checkLogin(req, undefined, paths);
  if (early) {
    // Answered before anything is read; the cache is read after, only to count the answer.
    const log = sshKeysLogger(paths, args, undefined);
    respond(paths, log, { lines: [], record: early }, o.out);
    countAnswer(textfileDirOf(paths, cachedSettings(readCache(cacheFile(paths)), args)?.metrics), { record: early }, log);
    return 0;
  }
  const read = readCache(cacheFile(paths));
  const settings = cachedSettings(read, args);
  if (!settings || !read.cache) return undefined;
  const refusal = checkLogin(req, settings, paths);
  const snapshot = read.cache.snapshot;
  let answer: Answer;
  if (refusal) answer = { lines: [], record: refusal };
  else if (snapshotMatches(snapshot, settings) && freshness(snapshot, settings, o.now ?? Date.now()) === 'fresh') answer = answerFrom(snapshot, settings, req, 'cache');
  else return undefined;
  respond(paths, sshKeysLogger(paths, args, settings), answer, o.out, { settings, cacheFetchedAt: snapshot.fetchedAt });
  return 0;
}
