import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { BoundedFileError, CONFIG_FILE_MAX_BYTES, readBoundedFile } from '../host/bounded-file.js';
import { parseCommandArgv } from '../argv.js';
import { instanceCacheFile, makePaths, readBootId, type Paths } from '../host/paths.js';
import { LOG_FORMATS, LOG_LEVELS, createLogger, type Level, type LogFormat } from '../log/logger.js';
import type { AgentState } from '../log/state.js';
import { agentVersion } from '../version.js';

/**
 * The fast path of `zdt-agent boot`: cloud-init runs boot at every boot, and an operator may
 * run it again by hand. When a boot already completed in this kernel boot (the same
 * `/proc/sys/kernel/random/boot_id`) from the same config sources, with the same agent
 * version, and no terminate has run since, a second boot exits 0 with one log line, before
 * yargs, the config parsers (yaml, zod) and the AWS SDK load. main.ts calls it first;
 * anything it cannot vouch for (another flag, --force, a changed file) goes on to the full
 * boot, whose phases look at the node again.
 *
 * The config sources are the local files (the config file, --config) as bytes, and the
 * instance sources (user-data part, tags) as cached by the last full boot: IMDS is not asked.
 * User-data cannot change without a stop/start, which is a new kernel boot; a tag changed
 * since the boot needs `boot --force`.
 */

export interface BootArgs {
  root?: string | undefined;
  config?: string | undefined;
  logFormat?: LogFormat | undefined;
  logLevel?: Level | undefined;
}

/** What a completed boot leaves in the state's facts for the next one to compare. */
export const COMPLETION_FACTS = {
  /** The kernel boot id the boot completed in. */
  bootId: 'bootCompletedInBootId',
  /** The config sources it used (sourcesDigest). */
  sources: 'bootConfigSources',
  /** The configured log format and level (`json/info`), so the fast path logs as the config says. */
  log: 'bootLog',
} as const;

const LEVELS: readonly string[] = LOG_LEVELS;
const FORMATS: readonly string[] = LOG_FORMATS;

/**
 * `boot [--root X] [--config X] [--log-format X] [--log-level X]` (argv after the command),
 * `--opt=value` too; undefined for anything else (--force, --help, a typo), which the CLI
 * then handles.
 */
export function parseBootArgv(argv: readonly string[]): BootArgs | undefined {
  return parseCommandArgv(['boot', ...argv], 'boot')?.args;
}

/** The local config files as bytes, read before the full boot loads them. */
export interface LocalSources {
  file: Buffer | undefined;
  config: { path: string; bytes: Buffer } | undefined;
}

/** undefined when --config names a file that cannot be read (the full boot reports it). */
export function readLocalSources(paths: Paths, configArg: string | undefined): LocalSources | undefined {
  // Bounded and non-blocking as the full boot reads them: a FIFO given as --config must not
  // hang the fast path either. Only a missing file counts as absent; any other problem is
  // the full boot's to report.
  const unreadable = Symbol('unreadable');
  const read = (file: string): Buffer | undefined | typeof unreadable => {
    try {
      return readBoundedFile(file, CONFIG_FILE_MAX_BYTES);
    } catch (err) {
      return err instanceof BoundedFileError && err.problem.kind === 'errno' && err.problem.code === 'ENOENT' ? undefined : unreadable;
    }
  };
  const file = read(paths.configFile);
  if (file === unreadable) return undefined;
  if (configArg === undefined) return { file, config: undefined };
  const abs = path.resolve(configArg);
  const bytes = read(abs);
  return bytes === undefined || bytes === unreadable ? undefined : { file, config: { path: abs, bytes } };
}

/** The instance sources as the full boot used them (and cached them). */
export interface InstanceSourcesUsed {
  userData?: string | undefined;
  tags?: Record<string, string> | undefined;
}

/** One digest of every config source; `fetchedAt` and key order do not count. */
export function sourcesDigest(local: LocalSources, instance: InstanceSourcesUsed | undefined): string {
  const h = createHash('sha256').update('zdt-agent boot sources 1\0');
  const part = (name: string, bytes: Buffer | string | undefined) => {
    h.update(`${name}\0`);
    h.update(bytes === undefined ? '\u0000absent' : `${Buffer.byteLength(bytes)}\0`);
    if (bytes !== undefined) h.update(bytes);
    h.update('\0');
  };
  part('file', local.file);
  part('--config path', local.config?.path);
  part('--config', local.config?.bytes);
  part('user-data', instance?.userData);
  const tags = instance?.tags;
  part('tags', tags ? JSON.stringify(Object.keys(tags).sort().map((k) => [k, tags[k]])) : undefined);
  return `sha256:${h.digest('hex')}`;
}

/** The cached instance sources (written by the last boot that asked IMDS); undefined without. */
export function readCachedInstanceSourcesUsed(paths: Paths): InstanceSourcesUsed | undefined {
  try {
    const parsed = JSON.parse(fs.readFileSync(instanceCacheFile(paths), 'utf8')) as unknown;
    if (!parsed || typeof parsed !== 'object') return undefined;
    const { userData, tags } = parsed as InstanceSourcesUsed;
    return { userData, tags };
  } catch {
    return undefined;
  }
}

/** What the runner records after a boot that ended ok. */
export interface BootCompletion {
  bootId: string | undefined;
  sources: string;
  log: { format: LogFormat; level: Level };
}

/** The completion a full boot records: this kernel boot, the sources it used, the configured log settings. */
export function bootCompletion(paths: Paths, local: LocalSources, instance: InstanceSourcesUsed | undefined, log: BootCompletion['log']): BootCompletion {
  return { bootId: readBootId(paths), sources: sourcesDigest(local, instance), log: { format: log.format, level: log.level } };
}

/** Record (ok) or forget (anything else) the completion; a boot without a boot id records nothing. */
export function recordCompletion(state: AgentState, completion: BootCompletion | undefined, ok: boolean): void {
  if (ok && completion?.bootId) {
    state.facts[COMPLETION_FACTS.bootId] = completion.bootId;
    state.facts[COMPLETION_FACTS.sources] = completion.sources;
    state.facts[COMPLETION_FACTS.log] = `${completion.log.format}/${completion.log.level}`;
    return;
  }
  for (const k of Object.values(COMPLETION_FACTS)) delete state.facts[k];
}

/** Why the fast path does not apply, or the completed boot it answers from. */
export type Verdict = { completedAt: string; log: { format: LogFormat; level: Level } } | { fullBoot: string };

export function checkCompleted(paths: Paths, args: BootArgs): Verdict {
  let state: Partial<AgentState>;
  try {
    state = JSON.parse(fs.readFileSync(paths.stateFile, 'utf8')) as Partial<AgentState>;
  } catch {
    return { fullBoot: 'no state file' };
  }
  const boot = state.boot;
  const facts = state.facts ?? {};
  if (state.schema !== 1 || !boot || boot.result !== 'ok' || !boot.finishedAt) return { fullBoot: 'the last boot did not complete' };
  if (state.agentVersion !== agentVersion) return { fullBoot: `the last boot ran agent ${String(state.agentVersion)}` };
  const bootId = readBootId(paths);
  if (!bootId || facts[COMPLETION_FACTS.bootId] !== bootId) return { fullBoot: 'the last boot completed in another kernel boot' };
  if (state.terminate && state.terminate.startedAt >= boot.startedAt) return { fullBoot: 'terminate ran since' };
  const local = readLocalSources(paths, args.config);
  if (!local || facts[COMPLETION_FACTS.sources] !== sourcesDigest(local, readCachedInstanceSourcesUsed(paths))) {
    return { fullBoot: 'the config sources changed' };
  }
  const [format, level] = String(facts[COMPLETION_FACTS.log] ?? '').split('/');
  return {
    completedAt: boot.finishedAt,
    log: { format: FORMATS.includes(format ?? '') ? (format as LogFormat) : 'human', level: LEVELS.includes(level ?? '') ? (level as Level) : 'info' },
  };
}

/**
 * Exit code when the boot is known to be complete; undefined when the full boot must run.
 * `console` is where the log line goes besides the log file (stderr unless given).
 */
export function answerFromState(args: BootArgs, console?: NodeJS.WritableStream | null): number | undefined {
  const paths = makePaths(args.root);
  const v = checkCompleted(paths, args);
  if ('fullBoot' in v) return undefined;
  const log = createLogger({ level: args.logLevel ?? v.log.level, format: args.logFormat ?? v.log.format, file: paths.logFile, console });
  log.info(`boot already completed in this boot at ${v.completedAt}; nothing to do; use --force to re-check`);
  return 0;
}
