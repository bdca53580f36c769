import path from 'node:path';
import { makePaths, type Paths } from '../host/paths.js';
import { createLogger, type Level, type Logger, type LogFormat } from '../log/logger.js';
import { answerFrom, checkLogin, type Answer, type Request } from './answer.js';
import { audit } from './audit.js';
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

const LEVELS: readonly string[] = ['debug', 'info', 'warn', 'error'];
const FORMATS: readonly string[] = ['human', 'json'];

/**
 * `ssh-keys [--config F] [--root D] [--log-level L] [--log-format F] [--] USER [FINGERPRINT]`
 * (argv after the command), or undefined for anything else (--help, a typo), which the CLI
 * then reports. Parsed here, not by yargs, also because yargs turns a login like `0123` into
 * a number before it is a string again.
 */
export function parseSshKeysArgv(argv: readonly string[]): SshKeysArgs | undefined {
  const positional: string[] = [];
  const opts: Record<string, string> = {};
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i] as string;
    if (a === '--') {
      positional.push(...argv.slice(i + 1));
      break;
    }
    if (a.startsWith('-')) {
      const m = /^--(config|root|log-level|log-format)(?:=(.*))?$/.exec(a);
      if (!m) return undefined;
      const value = m[2] ?? argv[++i];
      if (value === undefined) return undefined;
      opts[m[1] as string] = value;
      continue;
    }
    positional.push(a);
  }
  if (positional.length < 1 || positional.length > 2) return undefined;
  const level = opts['log-level'];
  const format = opts['log-format'];
  if ((level !== undefined && !LEVELS.includes(level)) || (format !== undefined && !FORMATS.includes(format))) return undefined;
  return {
    user: positional[0] as string,
    fingerprint: positional[1],
    config: opts.config,
    root: opts.root,
    logLevel: level as Level | undefined,
    logFormat: format as LogFormat | undefined,
  };
}

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

/** Print the key lines (stdout carries nothing else) and write the audit line. */
export async function respond(paths: Paths, log: Logger, a: Answer): Promise<void> {
  if (a.lines.length > 0) process.stdout.write(`${a.lines.join('\n')}\n`);
  await audit(paths, log, a.record);
}

/** Exit code when answered from what is on disk; undefined when it takes the full lookup. */
export async function answerFromCache(args: SshKeysArgs, now = Date.now()): Promise<number | undefined> {
  const paths = makePaths(args.root);
  const req: Request = { user: args.user, fingerprint: args.fingerprint };
  // A bad name is refused before anything is read.
  const early = checkLogin(req, undefined, paths);
  if (early) {
    await respond(paths, sshKeysLogger(paths, args, undefined), { lines: [], record: early });
    return 0;
  }
  const read = readCache(cacheFile(paths));
  const settings = cachedSettings(read, args);
  if (!settings || !read.cache) return undefined;
  const refusal = checkLogin(req, settings, paths);
  const snapshot = read.cache.snapshot;
  let answer: Answer;
  if (refusal) answer = { lines: [], record: refusal };
  else if (snapshotMatches(snapshot, settings) && freshness(snapshot, settings, now) === 'fresh') answer = answerFrom(snapshot, settings, req, 'cache');
  else return undefined;
  await respond(paths, sshKeysLogger(paths, args, settings), answer);
  return 0;
}
