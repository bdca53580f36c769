import { fetchInstanceSources, instanceLayers, readCachedInstanceSources, saveInstanceSources, type InstanceSources } from './config/instance.js';
import { mergeLayers, readFileLayer, resolveConfig, type Layer } from './config/load.js';
import type { Config } from './config/schema.js';
import { Imds } from './host/imds.js';
import { instanceCacheFile, makePaths, type Paths } from './host/paths.js';
import { createLogger, type Logger } from './log/logger.js';

/**
 * The first half of a command's context (context.ts has the whole): paths, the config and the
 * logger. No AWS or exec code is imported here, so that the watcher's chunk, which idles with
 * this much, does not carry the AWS SDK (docs/watch.md).
 */

/** The options every command takes (cli.ts parses them; boot/fast-path.ts for a plain boot). */
export interface GlobalOptions {
  config?: string | undefined;
  root?: string | undefined;
  logFormat?: 'human' | 'json' | undefined;
  logLevel?: 'debug' | 'info' | 'warn' | 'error' | undefined;
}

/** What a command has once its config is loaded; context.ts adds the clients. */
export interface LoadedContext {
  paths: Paths;
  config: Config;
  layers: Layer[];
  log: Logger;
  /** The instance sources used (undefined when the command reads none). */
  instance: InstanceSources | undefined;
  /** IMDS as the local config files name it (before the merged config is known). */
  imdsEndpoint: string;
}

export type InstanceMode = 'imds' | 'cached' | 'none';

const DEFAULT_IMDS = 'http://169.254.169.254';
const DEFAULT_IMDS_TIMEOUT_S = 120;


/** Read and validate the config layers. Throws ConfigError (exit 2) before anything acts. */
export async function loadLayers(
  args: GlobalOptions,
  paths: Paths,
  mode: InstanceMode,
  log: Logger,
): Promise<{ layers: Layer[]; instance: InstanceSources | undefined; imdsEndpoint: string }> {
  const fileLayer = readFileLayer('file', paths.configFile, false);
  const cliLayer = args.config ? readFileLayer('--config', args.config, true) : undefined;
  const local = [fileLayer, cliLayer].filter((l): l is Layer => l !== undefined);
  // IMDS is where user-data lives, so its endpoint can only come from local files.
  const awsSection = mergeLayers(local).merged.aws as { imdsEndpoint?: unknown; imdsTimeout?: unknown } | undefined;
  const imdsEndpoint = typeof awsSection?.imdsEndpoint === 'string' ? awsSection.imdsEndpoint : DEFAULT_IMDS;
  const imdsTimeoutS = typeof awsSection?.imdsTimeout === 'number' && awsSection.imdsTimeout > 0 ? awsSection.imdsTimeout : DEFAULT_IMDS_TIMEOUT_S;

  let instance: InstanceSources | undefined;
  if (mode === 'imds') {
    const imds = new Imds({ endpoint: imdsEndpoint, log, requiredTimeoutMs: imdsTimeoutS * 1000 });
    instance = await fetchInstanceSources(imds);
    try {
      saveInstanceSources(instanceCacheFile(paths), instance);
    } catch (err) {
      log.warn('cannot cache the instance config sources', { err: (err as Error).message });
    }
  } else if (mode === 'cached') {
    instance = readCachedInstanceSources(instanceCacheFile(paths));
  }
  const layers = [...(fileLayer ? [fileLayer] : []), ...(instance ? instanceLayers(instance) : []), ...(cliLayer ? [cliLayer] : [])];
  return { layers, instance, imdsEndpoint };
}

/** Paths, config (all sources, validated) and logger; throws ConfigError (exit 2) before anything acts. */
export async function loadContext(
  args: GlobalOptions,
  opts: { instance: InstanceMode; console?: NodeJS.WritableStream | null; logToFile?: boolean },
): Promise<LoadedContext> {
  const paths = makePaths(args.root);
  // Config loading logs little; those lines go to stderr only until the real logger exists.
  const early = createLogger({ level: args.logLevel ?? 'warn', format: args.logFormat ?? 'human', console: opts.console });
  const { layers, instance, imdsEndpoint } = await loadLayers(args, paths, opts.instance, early);
  const config = resolveConfig(layers);
  const log = createLogger({
    level: args.logLevel ?? config.log.level,
    format: args.logFormat ?? config.log.format,
    file: opts.logToFile === false ? undefined : paths.logFile,
    console: opts.console,
  });
  return { paths, config, layers, log, instance, imdsEndpoint };
}
