import fs from 'node:fs';
import { resolveConfig } from '../config/load.js';
import { instanceCacheFile, loadLayers } from '../context.js';
import { AgentError, ConfigError, DeadlineError, ExitCode, asAgentError } from '../errors.js';
import { makePaths, type Paths } from '../host/paths.js';
import { silentLogger, type Logger } from '../log/logger.js';
import { answerFrom, checkLogin, type Answer, type Request } from './answer.js';
import { audit, type AuditRecord } from './audit.js';
import { cacheFile, freshness, readCache, snapshotMatches, writeCache, type GroupSnapshot } from './cache.js';
import { textfileDirOf } from '../log/metrics.js';
import { countAnswer } from './metrics.js';
import { membersByLogin } from './names.js';
import { readGroup } from './read.js';
import { settingsFromConfig, type SshSettings } from './settings.js';
import { cachedSettings, configArgOf, respond, sshKeysLogger, writeStderr, writeStdout, type Output, type SshKeysArgs } from './warm.js';

/**
 * The full ssh-keys lookup, for what the hot path (warm.ts) cannot answer: no usable cache,
 * a cache past ssh.cacheTtl, or a --config other than the cache writer's.
 *
 *   settings  the cache's, else resolved from the config sources (refused when a source
 *             exists that this user may not read: a partial config could name another group)
 *   IAM       the group and the keys needed (all of them when root, who then writes the
 *             cache), bounded by ssh.deadline
 *   failure   a stale cache (at most ssh.staleMax past its TTL) answers, logged; without one,
 *             no output and a non-zero exit: sshd then offers no key from IAM (fail closed)
 */

const DEFAULT_DEADLINE_S = 5;
/** Left of the deadline for the stale-cache answer and the audit line after an IAM read gives up. */
const FALLBACK_RESERVE_MS = 500;

const isRoot = () => process.geteuid?.() === 0;

export async function runSshKeysLookup(args: SshKeysArgs, out: Output = writeStdout): Promise<number> {
  const started = Date.now();
  const paths = makePaths(args.root);
  const req: Request = { user: args.user, fingerprint: args.fingerprint };
  const hard = new AbortController();
  let deadlineMs = DEFAULT_DEADLINE_S * 1000;
  let timer = setTimeout(() => hard.abort(), deadlineMs);
  const setDeadline = (ms: number) => {
    deadlineMs = ms;
    clearTimeout(timer);
    timer = setTimeout(() => hard.abort(), Math.max(0, started + ms - Date.now()));
  };
  let log: Logger = silentLogger;
  // Known once read; the metrics of an error answer need them too.
  let settings: SshSettings | undefined;

  // Nothing may reach stdout once the deadline has passed: sshd would already be gone, or
  // worse, half an answer would count.
  const finish = (a: Answer, cacheFetchedAt?: number): void => {
    if (hard.signal.aborted) return;
    respond(paths, log, a, out, { settings, cacheFetchedAt });
  };
  const auditFailure = (record: AuditRecord): void => {
    audit(paths, log, record);
    countAnswer(textfileDirOf(paths, settings?.metrics), { record }, log);
  };

  const flow = async (): Promise<number> => {
    const early = checkLogin(req, undefined, paths);
    if (early) {
      log = sshKeysLogger(paths, args, undefined);
      finish({ lines: [], record: early });
      return ExitCode.ok;
    }
    const read = readCache(cacheFile(paths));
    settings = cachedSettings(read, args);
    try {
      settings ??= await settingsFromSources(args, paths);
    } catch (err) {
      log = sshKeysLogger(paths, args, undefined);
      throw err;
    }
    log = sshKeysLogger(paths, args, settings);
    setDeadline(settings.ssh.deadline * 1000);
    if (read.refused && read.refused !== 'missing') log.warn('ssh-keys: not using the key cache', { file: cacheFile(paths), why: read.refused });

    const refusal = checkLogin(req, settings, paths);
    if (refusal) {
      finish({ lines: [], record: refusal });
      return ExitCode.ok;
    }
    const cached = read.cache && snapshotMatches(read.cache.snapshot, settings) ? read.cache.snapshot : undefined;
    if (cached && freshness(cached, settings, Date.now()) === 'fresh') {
      finish(answerFrom(cached, settings, req, 'cache'), cached.fetchedAt);
      return ExitCode.ok;
    }

    const budget = AbortSignal.any([hard.signal, AbortSignal.timeout(Math.max(0, started + deadlineMs - FALLBACK_RESERVE_MS - Date.now()))]);
    let snapshot: GroupSnapshot;
    try {
      snapshot = await readIam(settings, paths, log, req, budget, configArgOf(args));
    } catch (err) {
      const e = asAgentError(err);
      if (cached && freshness(cached, settings, Date.now()) === 'stale') {
        const a = answerFrom(cached, settings, req, 'stale-cache');
        const age = Math.round((Date.now() - cached.fetchedAt) / 1000);
        finish({ ...a, record: { ...a.record, detail: `IAM unreadable, cache ${age}s old: ${e.oneLine()}` } }, cached.fetchedAt);
        return ExitCode.ok;
      }
      throw e;
    }
    finish(answerFrom(snapshot, settings, req, 'iam'), snapshot.fetchedAt);
    return ExitCode.ok;
  };

  const onDeadline = new Promise<'deadline'>((resolve) => hard.signal.addEventListener('abort', () => resolve('deadline'), { once: true }));
  // A failure is one line on stderr (sshd discards it; a person running the command reads
  // it) and the audit line; stdout stays empty.
  const fail = (e: AgentError, outcome: 'deadline' | 'error', code: number): number => {
    auditFailure({ user: req.user, outcome, offered: req.fingerprint, detail: e.oneLine() });
    writeStderr(`zdt-agent: ${e.oneLine()}\n`);
    return code;
  };
  try {
    const result = await Promise.race([flow(), onDeadline]);
    if (result !== 'deadline') return result;
    const e = new DeadlineError('SshKeysDeadline', `no answer within ssh.deadline (${deadlineMs / 1000}s)`, {
      hint: 'check IAM reachability from this host (aws.endpoints.iam, the instance role), or raise ssh.deadline',
    });
    return fail(e, 'deadline', ExitCode.deadline);
  } catch (err) {
    const e = asAgentError(err, paths.logFile);
    const deadline = e instanceof DeadlineError || hard.signal.aborted;
    return fail(e, deadline ? 'deadline' : 'error', deadline ? ExitCode.deadline : e.exitCode);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * The settings from the config sources, for a call the cache does not cover. A source this
 * user cannot read makes it an error, not a smaller config.
 */
async function settingsFromSources(args: SshKeysArgs, paths: Paths): Promise<SshSettings> {
  const instanceFile = instanceCacheFile(paths);
  if (fs.existsSync(instanceFile)) {
    try {
      fs.accessSync(instanceFile, fs.constants.R_OK);
    } catch {
      throw new ConfigError('SshSettingsUnavailable', `there is no usable key cache and ${instanceFile} is root's only`, {
        hint: "run 'zdt-agent ssh-users sync' as root (it stores the ssh settings in the key cache); check that it runs periodically",
      });
    }
  }
  const { layers } = await loadLayers(args, paths, 'cached', silentLogger);
  return settingsFromConfig(resolveConfig(layers, { localFile: paths.configFile }), {}, paths.configFile);
}

/** The group from IAM; root reads every member's keys and refreshes the cache with them. */
async function readIam(settings: SshSettings, paths: Paths, log: Logger, req: Request, signal: AbortSignal, configArg: string | null): Promise<GroupSnapshot> {
  const root = isRoot();
  const snapshot = await readGroup({
    settings,
    paths,
    log,
    signal,
    keysOf: root || settings.ssh.mode === 'shared' ? 'all' : (users) => [membersByLogin(users).logins.get(req.user)].filter((u): u is string => u !== undefined),
  });
  if (root) {
    try {
      writeCache(cacheFile(paths), { schema: 1, writtenAt: new Date().toISOString(), configArg, settings, snapshot });
    } catch (err) {
      log.warn('cannot write the key cache', { file: cacheFile(paths), err: (err as Error).message });
    }
  }
  return snapshot;
}
