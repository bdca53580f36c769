/**
 * The one time budget of a terminate run: an AbortSignal that fires when the whole budget is
 * spent, and per-step sub-deadlines cut from what is left. Every step gets its signal, and
 * the runner stops waiting for a step when its signal fires, whether the step noticed or not.
 */

export interface StepWindow {
  signal: AbortSignal;
  /** Epoch ms at which the step's signal fires. */
  deadline: number;
  ms: number;
}

export class Budget {
  readonly startedAt: number;
  readonly deadline: number;
  readonly signal: AbortSignal;
  private readonly controller = new AbortController();
  private readonly timer: NodeJS.Timeout;

  constructor(
    readonly totalMs: number,
    private readonly now: () => number = Date.now,
  ) {
    this.startedAt = now();
    this.deadline = this.startedAt + totalMs;
    this.signal = this.controller.signal;
    this.timer = setTimeout(() => this.controller.abort(budgetSpent(totalMs)), totalMs);
    this.timer.unref();
  }

  remainingMs(): number {
    return Math.max(0, this.deadline - this.now());
  }

  elapsedMs(): number {
    return this.now() - this.startedAt;
  }

  /** A window of at most `maxMs`, ending `reserveMs` before the budget does (never negative). */
  window(maxMs: number, reserveMs = 0): StepWindow {
    const ms = Math.floor(Math.max(0, Math.min(maxMs, this.remainingMs() - reserveMs)));
    const signal = AbortSignal.any([this.signal, AbortSignal.timeout(Math.max(1, ms))]);
    return { signal, deadline: this.now() + ms, ms };
  }

  dispose(): void {
    clearTimeout(this.timer);
  }
}

function budgetSpent(ms: number): Error {
  const e = new Error(`the terminate budget of ${Math.round(ms / 1000)}s is spent`);
  e.name = 'TimeoutError';
  return e;
}

/** Resolves with the step's value, or `{ timedOut: true }` as soon as its signal fires. */
export async function withinWindow<T>(w: StepWindow, run: (signal: AbortSignal) => Promise<T>): Promise<{ timedOut: false; value: T } | { timedOut: true }> {
  if (w.signal.aborted || w.ms <= 0) return { timedOut: true };
  let onAbort: (() => void) | undefined;
  const aborted = new Promise<{ timedOut: true }>((resolve) => {
    onAbort = () => resolve({ timedOut: true });
    w.signal.addEventListener('abort', onAbort, { once: true });
  });
  const work = run(w.signal).then((value) => ({ timedOut: false as const, value }));
  // A step that fails after its window closed must not surface as an unhandled rejection.
  work.catch(() => undefined);
  try {
    return await Promise.race([work, aborted]);
  } catch (err) {
    // A step that threw because its signal fired ran out of time; anything else is its error.
    if (w.signal.aborted) return { timedOut: true };
    throw err;
  } finally {
    if (onAbort) w.signal.removeEventListener('abort', onAbort);
  }
}
