import { monitorEventLoopDelay } from 'node:perf_hooks';
import { runBoot } from '../../agent/boot/run.js';
import { buildContext } from '../../agent/context.js';
import { DeadlineError, asAgentError } from '../../agent/errors.js';

/**
 * The in-process herd (test/support/herd-env.ts, mode 'in-process'): one Node process runs
 * `zdt-agent boot`'s context and boot runner for every node root given as an argument, all
 * at once, and prints one JSON line per node when its boot ends (wall-clock ms, exit code as
 * the binary would give it). What the processes of the binary would each spend on Node's
 * start-up and module loading is spent once.
 */
const roots = process.argv.slice(2);
// How late timers fired: a stalled event loop bunches the nodes' polls (a machine artefact).
const lag = monitorEventLoopDelay({ resolution: 20 });
lag.enable();
await Promise.all(
  roots.map(async (root) => {
    const startedAt = Date.now();
    let code = 0;
    let error: string | undefined;
    try {
      const ctx = await buildContext({ root }, { instance: 'imds', console: null });
      const r = await runBoot({ ...ctx, tags: ctx.instance?.tags });
      if (!r.ok) [code, error] = [r.error instanceof DeadlineError ? 3 : 1, r.error?.oneLine()];
    } catch (err) {
      [code, error] = [2, asAgentError(err).oneLine()];
    }
    process.stdout.write(`${JSON.stringify({ root, code, error, startedAt, exitedAt: Date.now() })}\n`);
  }),
);
lag.disable();
process.stdout.write(`${JSON.stringify({ lagMaxMs: lag.max / 1e6, lagP99Ms: lag.percentile(99) / 1e6 })}\n`);
