import { buildContext, type GlobalOptions } from '../context.js';
import { Budget } from '../terminate/budget.js';
import type { ShutdownEvent } from '../node.js';
import { runTerminate } from '../terminate/run.js';

/**
 * `zdt-agent terminate`, run by OpenRC when the service stops at shutdown. The budget counts
 * from the start of the process; config comes from local files and the instance sources boot
 * cached (no IMDS wait before the budget starts).
 */
export async function runTerminateCommand(args: GlobalOptions & { event?: ShutdownEvent | undefined }): Promise<number> {
  const ctx = await buildContext(args, { instance: 'cached' });
  const totalMs = ctx.config.terminate.budget * 1000;
  const budget = new Budget(Math.max(1000, totalMs - Math.round(process.uptime() * 1000)));
  const out = await runTerminate({ ctx, budget, flag: args.event });
  budget.dispose();
  const summary = Object.entries(out.record.phases)
    .map(([name, p]) => `${name}=${p.result}`)
    .join(' ');
  process.stdout.write(`terminate (${out.event}, ${out.classification.source}): ${out.record.result}; ${summary}\n`);
  // A request that ignored its abort (a half-open socket) must not hold the shutdown: leave
  // at once if the event loop does not empty by itself.
  setTimeout(() => process.exit(out.exitCode), 500).unref();
  return out.exitCode;
}
