import { buildContext, type GlobalOptions } from '../context.js';
import { Budget } from '../terminate/budget.js';
import type { ShutdownEvent } from '../node.js';
import { runTerminate, type TerminateOutcome } from '../terminate/run.js';
import { ExitCode } from '../errors.js';
import { redact } from '../log/redact.js';

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
  const problem = terminateProblem(out, ctx.paths.logFile);
  if (problem) process.stderr.write(`zdt-agent: ${redact(problem)}\n`);
  // A request that ignored its abort (a half-open socket) must not hold the shutdown: leave
  // at once if the event loop does not empty by itself.
  setTimeout(() => process.exit(out.exitCode), 500).unref();
  return out.exitCode;
}

/** The one line on stderr of a terminate that did not end ok: the first step that failed, or what the budget cut off. */
export function terminateProblem(out: Pick<TerminateOutcome, 'exitCode' | 'unfinished' | 'record'>, logFile: string): string | undefined {
  if (out.exitCode === ExitCode.ok) return undefined;
  if (out.unfinished.length > 0) return `TerminateDeadline: the budget ran out before ${out.unfinished.join(', ')} finished; see ${logFile}`;
  const [name, failed] = Object.entries(out.record.phases).find(([n, p]) => p.result === 'failed' && n !== 'notify' && n !== 'hooks') ?? [];
  return `TerminateFailed: ${name ?? 'a step'} failed: ${failed?.error ?? 'see the log'}; see ${logFile}`;
}
