import type { GlobalOptions } from './context.js';
import { LOG_FORMATS, LOG_LEVELS, type Level, type LogFormat } from './log/logger.js';

/**
 * The command lines main.ts answers without yargs (a plain `boot`, `watch` as the services
 * start it): the global options and a command's own options with a value, nothing else.
 * Anything this does not vouch for (--help, a flag, a typo, a bad value) is undefined, and
 * the CLI then parses it with its usual messages.
 */

const GLOBAL = ['config', 'root', 'log-level', 'log-format'] as const;
const LEVELS: readonly string[] = LOG_LEVELS;
const FORMATS: readonly string[] = LOG_FORMATS;

/**
 * `[options] COMMAND [options]` (`--opt value` or `--opt=value`): the global options in `args`,
 * and in `own` the command's options named in `ownNames`; undefined unless COMMAND is the one word
 * that is not an option or its value.
 */
export function parseCommandArgv<K extends string>(argv: readonly string[], command: string, ownNames: readonly K[] = []): { args: GlobalOptions; own: Partial<Record<K, string>> } | undefined {
  const names: readonly string[] = [...GLOBAL, ...ownNames];
  const opts: Record<string, string> = {};
  let seen = false;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i] as string;
    if (arg === command && !seen) {
      seen = true;
      continue;
    }
    const m = /^--([a-z-]+)(?:=(.*))?$/.exec(arg);
    if (!m || !names.includes(m[1] as string)) return undefined;
    const value = m[2] ?? argv[++i];
    if (value === undefined || value === '' || (m[2] === undefined && value.startsWith('-'))) return undefined;
    opts[m[1] as string] = value;
  }
  const level = opts['log-level'];
  const format = opts['log-format'];
  if (!seen || (level !== undefined && !LEVELS.includes(level)) || (format !== undefined && !FORMATS.includes(format))) return undefined;
  const own: Partial<Record<K, string>> = {};
  for (const k of ownNames) if (opts[k] !== undefined) own[k] = opts[k];
  return { args: { root: opts.root, config: opts.config, logLevel: level as Level | undefined, logFormat: format as LogFormat | undefined }, own };
}

/** `watch [--max-polls N]` with the global options (main.ts); undefined for the CLI to parse. */
export function parseWatchArgv(argv: readonly string[]): (GlobalOptions & { maxPolls?: number | undefined }) | undefined {
  const parsed = parseCommandArgv(argv, 'watch', ['max-polls']);
  if (!parsed) return undefined;
  const maxPolls = parsed.own['max-polls'];
  if (maxPolls !== undefined && !/^\d+$/.test(maxPolls)) return undefined;
  return { ...parsed.args, maxPolls: maxPolls === undefined ? undefined : Number(maxPolls) };
}
