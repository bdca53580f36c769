import { DeadlineError } from '../errors.js';
import type { Logger } from '../log/logger.js';

export const sleep = (ms: number, signal?: AbortSignal): Promise<void> =>
  new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const t = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(t);
      reject(signal?.reason);
    };
    signal?.addEventListener('abort', onAbort, { once: true });
  });

/** Full jitter: a random delay in [base/2, base] so that a whole cluster does not retry in step. */
export function jitter(ms: number): number {
  return Math.round(ms / 2 + Math.random() * (ms / 2));
}

export interface WaitOptions<T> {
  /** What is awaited, for the log and the error ("the etcd volume to detach"). */
  what: string;
  /** Overall bound. */
  timeoutMs: number;
  /** First delay; doubles up to maxDelayMs, each jittered. */
  initialDelayMs?: number;
  maxDelayMs?: number;
  /** Log progress at most this often. */
  progressEveryMs?: number;
  /** What to check when the wait times out. */
  hint: string;
  log: Logger;
  signal?: AbortSignal;
  /** Return a value when done, `undefined` to keep waiting; throw to stop at once. */
  check: (attempt: number) => Promise<T | undefined>;
  /** Errors from `check` that mean "try again" (default: none, they are thrown). */
  retryable?: (err: unknown) => boolean;
  code?: string;
}

/**
 * The one bounded, jittered wait of the agent. Logs progress, and ends in a DeadlineError
 * that names what was awaited, for how long, and what to check.
 */
export async function waitFor<T>(o: WaitOptions<T>): Promise<T> {
  const started = Date.now();
  const deadline = started + o.timeoutMs;
  let delay = o.initialDelayMs ?? 1000;
  const maxDelay = o.maxDelayMs ?? 15000;
  const progressEvery = o.progressEveryMs ?? 30000;
  let lastProgress = started;
  let lastError: string | undefined;
  for (let attempt = 1; ; attempt++) {
    try {
      const v = await o.check(attempt);
      if (v !== undefined) {
        if (attempt > 1) o.log.info(`done waiting for ${o.what}`, { attempts: attempt, ms: Date.now() - started });
        return v;
      }
      lastError = undefined;
    } catch (err) {
      if (!o.retryable?.(err)) throw err;
      lastError = err instanceof Error ? err.message : String(err);
    }
    const now = Date.now();
    if (now >= deadline) break;
    if (now - lastProgress >= progressEvery) {
      lastProgress = now;
      o.log.info(`still waiting for ${o.what}`, {
        elapsedS: Math.round((now - started) / 1000),
        limitS: Math.round(o.timeoutMs / 1000),
        lastError,
      });
    }
    await sleep(Math.min(jitter(delay), Math.max(0, deadline - now)), o.signal);
    delay = Math.min(delay * 2, maxDelay);
  }
  throw new DeadlineError(
    o.code ?? 'WaitTimedOut',
    `gave up waiting for ${o.what} after ${Math.round((Date.now() - started) / 1000)}s${lastError ? ` (last error: ${lastError})` : ''}`,
    { hint: o.hint },
  );
}
