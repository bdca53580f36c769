import { isSea } from 'node:sea';
import type { CommandContext, GlobalOptions } from '../context.js';
import { ExitCode, exitCodeOf } from '../errors.js';
import { makeExec } from '../host/exec.js';
import { Imds } from '../host/imds.js';
import { makePaths, readBootId, type Paths } from '../host/paths.js';
import { createLogger, type Logger } from '../log/logger.js';
import type { WatchCounters } from '../log/metrics.js';
import { agentVersion } from '../version.js';
import { watch, type NodeActions } from '../watch/run.js';
import type { WatchSettings } from './watch-config.js';

/**
 * `zdt-agent watch`, the supervised daemon (openrc/zdt-agent-watch, units/zdt-agent-watch.service):
 * wires the watcher (agent/watch/) to what acts on the node (./watch-actions.ts: terminate's
 * runner for a retire, cordon and uncordon with the node's own credentials, SNS). Runs until
 * SIGTERM.
 *
 * This module is the binary's `watch` chunk (main.ts loads it without the CLI chunk), and
 * what it imports is what an idle watcher keeps in memory: the logger, IMDS and the state
 * file. The config is resolved and validated by a child process (`watch --print-config`,
 * ./watch-config.ts), so the config libraries never load here; the acting code (the
 * terminate runner, the Kubernetes client, the AWS SDK, and the config with them) is the
 * chunk `watch-actions`, loaded on the first action (docs/watch.md, the RSS figures;
 * docs/packaging.md).
 */

type WatchArgs = GlobalOptions & { maxPolls?: number | undefined };

/** The child that resolves the config: the CLI, the config files and validation; seconds on a loaded host. */
const RESOLVE_CONFIG_MS = 60_000;

/**
 * main.ts's entry: runWatch with its errors mapped to their line and exit code here, in the
 * chunk, whose AgentError class is not the main script's.
 */
export function runWatchCommand(args: WatchArgs): Promise<number> {
  return exitCodeOf(() => runWatch(args));
}

export async function runWatch(args: WatchArgs): Promise<number> {
  const settings = await resolveSettings(args);
  if (typeof settings === 'number') return settings;
  const paths = makePaths(args.root);
  const log = createLogger({ level: args.logLevel ?? settings.log.level, format: args.logFormat ?? settings.log.format, file: paths.logFile });
  const stop = new AbortController();
  const onSignal = (sig: NodeJS.Signals) => {
    log.info(`watch: ${sig}: stopping (an action in progress is continued by the shutdown's terminate or the next watcher)`);
    stop.abort();
  };
  process.once('SIGTERM', onSignal);
  process.once('SIGINT', onSignal);
  log.info('watch: started', { interval: settings.watch.interval, on: JSON.stringify(settings.watch.on) });
  const imds = new Imds({ endpoint: settings.imdsEndpoint, log, requestTimeoutMs: 2000 });
  const { polls } = await watch({
    imds,
    config: settings.watch,
    stateFile: paths.stateFile,
    agentVersion,
    bootId: readBootId(paths),
    log,
    // The whole context (config from the same sources, AWS and exec) only for an action.
    actions: nodeActions(async () => (await import('./watch-actions.js')).buildContext(args, { instance: 'cached' })),
    signal: stop.signal,
    maxPolls: args.maxPolls,
    onMetrics: await metricsWriter(settings, paths, log),
  });
  log.info('watch: stopped', { polls });
  // A retire still running (stopped by SIGTERM) must not keep the process: its state is saved.
  setTimeout(() => process.exit(0), 200).unref();
  return 0;
}

/** Writes zdt_agent_watch.prom when metrics.textfileDir is set (the metrics module loads only then). */
async function metricsWriter(settings: WatchSettings, paths: Paths, log: Logger): Promise<((c: WatchCounters) => void) | undefined> {
  if (!settings.textfileDir) return undefined;
  const { recordMetrics, textfileDirOf, watchFamilies } = await import('../log/metrics.js');
  const dir = textfileDirOf(paths, { textfileDir: settings.textfileDir });
  return (c) => recordMetrics(dir, 'watch', watchFamilies(c), log);
}

/**
 * The watcher's settings from `zdt-agent watch --print-config` run as a child (the same
 * binary, with the same global options): local files and the instance sources boot cached,
 * validated there. A config error is the child's line on stderr and exit 2, here too.
 */
async function resolveSettings(args: WatchArgs): Promise<WatchSettings | number> {
  const early = createLogger({ level: args.logLevel ?? 'warn', format: args.logFormat ?? 'human' });
  // Run as `node dist/zdt-agent.cjs`, the script is an argument; the single executable is its own.
  const self = isSea() ? [] : [process.argv[1] as string];
  const global = [...(args.root ? ['--root', args.root] : []), ...(args.config ? ['--config', args.config] : [])];
  const r = await makeExec(early)(process.execPath, [...self, 'watch', '--print-config', ...global], {
    timeoutMs: RESOLVE_CONFIG_MS,
    okExitCodes: [ExitCode.usage],
    // Its chunk loads are not the daemon's.
    env: { ZDT_TRACE_CHUNKS: undefined },
    hint: 'run `zdt-agent config validate` to see the configuration problems',
  });
  if (r.exitCode !== ExitCode.ok) {
    process.stderr.write(`${r.stderr}\n`);
    return r.exitCode;
  }
  return JSON.parse(r.stdout) as WatchSettings;
}

/**
 * The node-side actions of the watcher, loaded on the first call (exported for the tests,
 * which hand in a whole context). A context that cannot be built (the config broke since the
 * start) fails that action, which is tried again while the notice stands.
 */
export function nodeActions(ctx: CommandContext | (() => Promise<CommandContext>)): NodeActions {
  let loaded: Promise<NodeActions> | undefined;
  const actions = (): Promise<NodeActions> => {
    if (!loaded) {
      loaded = import('./watch-actions.js').then(async (m) => m.nodeActions(typeof ctx === 'function' ? await ctx() : ctx));
      loaded.catch(() => (loaded = undefined));
    }
    return loaded;
  };
  return {
    retire: async (event, trigger) => (await actions()).retire(event, trigger),
    cordon: async () => (await actions()).cordon(),
    uncordon: async () => (await actions()).uncordon(),
    schedulable: async () => (await actions()).schedulable(),
    noticed: async (n, action) => (await actions()).noticed(n, action),
  };
}
