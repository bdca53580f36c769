import type { CommandContext } from '../context.js';
import { exitCodeOf } from '../errors.js';
import { Imds } from '../host/imds.js';
import { readBootId } from '../host/paths.js';
import { loadContext, type GlobalOptions, type LoadedContext } from '../load-context.js';
import { agentVersion } from '../version.js';
import { watch, type NodeActions } from '../watch/run.js';

/**
 * `zdt-agent watch`, the supervised daemon (openrc/zdt-agent-watch, units/zdt-agent-watch.service):
 * wires the watcher (agent/watch/) to what acts on the node (./watch-actions.ts: terminate's
 * runner for a retire, cordon and uncordon with the node's own credentials, SNS). Runs until
 * SIGTERM.
 *
 * This module is the binary's `watch` chunk (main.ts loads it without the CLI chunk), and
 * what it imports is what an idle watcher keeps in memory: the config loader, the logger,
 * IMDS and the state file. The acting code (the terminate runner, the Kubernetes client, the
 * AWS SDK) is the chunk `watch-actions`, loaded on the first action (docs/watch.md, the RSS
 * figures; docs/packaging.md).
 */

type WatchArgs = GlobalOptions & { maxPolls?: number | undefined };

/**
 * main.ts's entry: runWatch with its errors mapped to their line and exit code here, in the
 * chunk, whose AgentError class is not the main script's.
 */
export function runWatchCommand(args: WatchArgs): Promise<number> {
  return exitCodeOf(() => runWatch(args));
}

export async function runWatch(args: WatchArgs): Promise<number> {
  // Config from local files and the sources boot cached: no IMDS wait before polling starts.
  const ctx = await loadContext(args, { instance: 'cached' });
  const { config, log, paths } = ctx;
  const stop = new AbortController();
  const onSignal = (sig: NodeJS.Signals) => {
    log.info(`watch: ${sig}: stopping (an action in progress is continued by the shutdown's terminate or the next watcher)`);
    stop.abort();
  };
  process.once('SIGTERM', onSignal);
  process.once('SIGINT', onSignal);
  log.info('watch: started', { interval: config.watch.interval, on: JSON.stringify(config.watch.on) });
  const imds = new Imds({ endpoint: config.aws.imdsEndpoint, log, requestTimeoutMs: 2000 });
  const { polls } = await watch({
    imds,
    config: config.watch,
    stateFile: paths.stateFile,
    agentVersion,
    bootId: readBootId(paths),
    log,
    actions: nodeActions(ctx),
    signal: stop.signal,
    maxPolls: args.maxPolls,
  });
  log.info('watch: stopped', { polls });
  // A retire still running (stopped by SIGTERM) must not keep the process: its state is saved.
  setTimeout(() => process.exit(0), 200).unref();
  return 0;
}

/**
 * The node-side actions of the watcher, loaded on the first call, when a loaded context gets
 * its AWS and exec clients (exported for the tests, which hand in a whole context).
 */
export function nodeActions(ctx: LoadedContext | CommandContext): NodeActions {
  let loaded: Promise<NodeActions> | undefined;
  const actions = () => (loaded ??= import('./watch-actions.js').then((m) => m.nodeActions('aws' in ctx ? ctx : m.completeContext(ctx))));
  return {
    retire: async (event, trigger) => (await actions()).retire(event, trigger),
    cordon: async () => (await actions()).cordon(),
    uncordon: async () => (await actions()).uncordon(),
    schedulable: async () => (await actions()).schedulable(),
    noticed: async (n, action) => (await actions()).noticed(n, action),
  };
}
