import type { GlobalOptions } from '../cli.js';
import { runBoot as runBootPhases } from '../boot/run.js';
import { buildContext } from '../context.js';
import { ExitCode } from '../errors.js';

/** `zdt-agent boot`: config (all sources, validated first) -> context -> the boot phases -> exit code. */
export async function runBoot(args: GlobalOptions): Promise<number> {
  const ctx = await buildContext(args, { instance: 'imds' });
  const result = await runBootPhases({ ...ctx, tags: ctx.instance?.tags });
  if (!result.ok) {
    // The phases have logged the detail, signalled and notified; the CLI prints the one line.
    throw result.error ?? new Error(`boot failed in ${result.failedPhase ?? 'an unknown phase'}`);
  }
  ctx.log.info(result.changed ? 'boot finished' : 'boot finished: nothing to do', { phases: Object.keys(result.phases).length });
  return ExitCode.ok;
}
