import { makeAws, type Aws } from './host/aws.js';
import { makeExec, type Exec } from './host/exec.js';
import { Imds } from './host/imds.js';
import { loadContext, type GlobalOptions, type InstanceMode, type LoadedContext } from './load-context.js';

export { instanceCacheFile } from './host/paths.js';
export { loadContext, loadLayers, type GlobalOptions, type InstanceMode, type LoadedContext } from './load-context.js';

/**
 * Everything a command needs, built in one place: paths (root prefix), config (all sources,
 * validated before anything acts), logger, IMDS, lazily created AWS clients, exec.
 */
export interface CommandContext extends Omit<LoadedContext, 'imdsEndpoint'> {
  imds: Imds;
  aws: Aws;
  exec: Exec;
}

export async function buildContext(
  args: GlobalOptions,
  opts: { instance: InstanceMode; console?: NodeJS.WritableStream | null; logToFile?: boolean },
): Promise<CommandContext> {
  return completeContext(await loadContext(args, opts));
}

/** A loaded context with its clients: IMDS, AWS (each client made on first use), exec. */
export function completeContext(loaded: LoadedContext): CommandContext {
  const { imdsEndpoint, ...rest } = loaded;
  const { config, log } = rest;
  const imds = new Imds({ endpoint: config.aws.imdsEndpoint ?? imdsEndpoint, log, requiredTimeoutMs: config.aws.imdsTimeout * 1000 });
  const aws = makeAws({ aws: config.aws, region: async () => (await imds.identityDocument()).region });
  return { ...rest, imds, aws, exec: makeExec(log) };
}
