import { bootCompletion, readLocalSources } from '../boot/fast-path.js';
import { runBoot as runBootPhases } from '../boot/run.js';
import { buildContext, type GlobalOptions } from '../context.js';
import { ExitCode } from '../errors.js';
import { makePaths } from '../host/paths.js';

/** `zdt-agent boot`: config (all sources, validated first) -> context -> the boot phases -> exit code. */
export async function runBoot(args: GlobalOptions & { force?: boolean | undefined }): Promise<number> {
  // The local config files are read for the completion record before the config loads them:
  // a file changed in between then differs from the record, and the next boot runs in full.
  const local = readLocalSources(makePaths(args.root), args.config);
  const ctx = await buildContext(args, { instance: 'imds' });
  if (args.force) ctx.log.info('boot --force: every phase inspects the node again');
  const completion = local && bootCompletion(ctx.paths, local, ctx.instance, ctx.config.log);
  const result = await runBootPhases({ ...ctx, tags: ctx.instance?.tags, completion });
  if (!result.ok) {
    // The phases have logged the detail, signalled and notified; the CLI prints the one line.
    throw result.error ?? new Error(`boot failed in ${result.failedPhase ?? 'an unknown phase'}`);
  }
  ctx.log.info(result.changed ? 'boot finished' : 'boot finished: nothing to do', { phases: Object.keys(result.phases).length });
  return ExitCode.ok;
}
