import type { Config } from '../config/schema.js';
import { buildContext, type GlobalOptions } from '../context.js';

/**
 * `zdt-agent watch --print-config` (hidden): the watcher's settings from the whole config
 * (every source, validated), as one JSON line. The watcher runs this in a child process at
 * start (commands/watch.ts), so that the config libraries (YAML, zod and the schema, about
 * 10 MB resident) never load into the daemon that idles for the node's lifetime.
 */

/** What the idle watcher needs of the config. */
export interface WatchSettings {
  watch: Config['watch'];
  imdsEndpoint: string;
  log: Config['log'];
  /** metrics.textfileDir (as configured, not under --root), when set. */
  textfileDir?: string | undefined;
}

export async function printWatchConfig(args: GlobalOptions): Promise<number> {
  const { config } = await buildContext(args, { instance: 'cached', logToFile: false });
  const settings: WatchSettings = { watch: config.watch, imdsEndpoint: config.aws.imdsEndpoint, log: config.log, textfileDir: config.metrics.textfileDir };
  process.stdout.write(`${JSON.stringify(settings)}\n`);
  return 0;
}
