import { fetchInstanceSources, instanceLayers, readCachedInstanceSources, saveInstanceSources, type InstanceSources } from './config/instance.js';
import { mergeLayers, readFileLayer, resolveConfig, type Layer } from './config/load.js';
import type { Config } from './config/schema.js';
import { makeAws, type Aws } from './host/aws.js';
import { makeExec, type Exec } from './host/exec.js';
import { Imds } from './host/imds.js';
import { instanceCacheFile, makePaths, type Paths } from './host/paths.js';
import { createLogger, type Logger } from './log/logger.js';

/** The options every command takes (cli.ts parses them; boot/fast-path.ts for a plain boot). */
export interface GlobalOptions {
  config?: string | undefined;
  root?: string | undefined;
  logFormat?: 'human' | 'json' | undefined;
  logLevel?: 'debug' | 'info' | 'warn' | 'error' | undefined;
}

/**
 * Everything a command needs, built in one place: paths (root prefix), config (all sources,
 * validated before anything acts), logger, IMDS, lazily created AWS clients, exec.
 */
export interface CommandContext {
  paths: Paths;
  config: Config;
  layers: Layer[];
  log: Logger;
  imds: Imds;
  aws: Aws;
  exec: Exec;
  /** The instance sources used (undefined when the command reads none). */
  instance: InstanceSources | undefined;
}

export type InstanceMode = 'imds' | 'cached' | 'none';

const DEFAULT_IMDS = 'http://169.254.169.254';
const DEFAULT_IMDS_TIMEOUT_S = 120;

export { instanceCacheFile };

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

export async function buildContext(
  args: GlobalOptions,
  opts: { instance: InstanceMode; console?: NodeJS.WritableStream | null; logToFile?: boolean },
): Promise<CommandContext> {
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
  const imds = new Imds({ endpoint: config.aws.imdsEndpoint ?? imdsEndpoint, log, requiredTimeoutMs: config.aws.imdsTimeout * 1000 });
  const aws = makeAws({ aws: config.aws, region: async () => (await imds.identityDocument()).region });
  return { paths, config, layers, log, imds, aws, exec: makeExec(log), instance };
}
