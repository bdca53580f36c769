import { ConfigInvalid, formatProblems, resolveConfig } from '../config/load.js';
import { loadLayers, type GlobalOptions } from '../context.js';
import { makePaths } from '../host/paths.js';
import { createLogger } from '../log/logger.js';
import { redact } from '../log/redact.js';
import { ExitCode } from '../errors.js';

/** Prints every problem with its path, source and a hint; exit 2 when there is one. */
export async function runConfigValidate(args: GlobalOptions & { instance?: boolean }): Promise<number> {
  const paths = makePaths(args.root);
  const log = createLogger({ level: 'warn' });
  const { layers } = await loadLayers(args, paths, args.instance ? 'imds' : 'none', log);
  try {
    const config = resolveConfig(layers, { localFile: paths.configFile });
    const sources = layers.map((l) => l.origin).join(', ') || 'defaults only';
    process.stdout.write(`config OK (${config.node.role}${config.cluster ? ` of cluster ${config.cluster.name}` : ''}; sources: ${sources})\n`);
    return ExitCode.ok;
  } catch (err) {
    if (!(err instanceof ConfigInvalid)) throw err;
    process.stdout.write(`${redact(formatProblems(err.problems))}\n`);
    process.stderr.write(`zdt-agent: ${err.problems.length} problem${err.problems.length === 1 ? '' : 's'} in the configuration\n`);
    return ExitCode.usage;
  }
}
