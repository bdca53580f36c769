import { describe, expect, it } from 'vitest';
import { DeadlineError } from '../../agent/errors.js';
import { jitter, waitFor } from '../../agent/host/retry.js';
import { createLogger } from '../../agent/log/logger.js';

/**
 * waitFor is the one bounded wait of the agent (the control plane, a volume detach, the
 * Neuron devices, DNS…): progress lines at the interval each caller sets (30 s for the control
 * plane), jittered backoff, and a deadline error that says what was awaited and what to check.
 * Here with intervals of milliseconds.
 */
describe('waitFor', () => {
  it('logs progress at the set interval with the last error, and returns what the check gives', async () => {
    const log = createLogger({ console: null, format: 'json' });
    let calls = 0;
    const v = await waitFor({
      what: 'the control plane at https://api.example:6443',
      timeoutMs: 5000,
      initialDelayMs: 5,
      maxDelayMs: 10,
      progressEveryMs: 40,
      hint: 'check the API load balancer',
      log,
      retryable: () => true,
      check: async () => {
        calls++;
        if (calls < 25) throw new Error('connect ECONNREFUSED');
        return 'up';
      },
    });
    expect(v).toBe('up');
    const lines = log.tail(100).map((l) => JSON.parse(l) as { msg: string; lastError?: string; limitS?: number });
    const progress = lines.filter((l) => l.msg === 'still waiting for the control plane at https://api.example:6443');
    expect(progress.length).toBeGreaterThanOrEqual(2);
    expect(progress[0]).toMatchObject({ lastError: 'connect ECONNREFUSED', limitS: 5 });
    expect(lines.at(-1)!.msg).toBe('done waiting for the control plane at https://api.example:6443');
  });

  it('retries with backoff until the check answers', async () => {
    let n = 0;
    const v = await waitFor({ what: 'x', timeoutMs: 5000, initialDelayMs: 5, hint: 'h', log: createLogger({ console: null }), check: async () => (++n >= 3 ? 'ok' : undefined) });
    expect(v).toBe('ok');
    expect(n).toBe(3);
  });

  it('ends at its bound in a DeadlineError naming what, how long, the last error and what to check', async () => {
    const started = Date.now();
    const err = await waitFor({
      what: 'the etcd volume to detach',
      timeoutMs: 150,
      initialDelayMs: 20,
      hint: 'check the predecessor instance',
      log: createLogger({ console: null }),
      retryable: () => true,
      check: async () => {
        throw new Error('VolumeInUse');
      },
    }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(DeadlineError);
    expect((err as DeadlineError).message).toMatch(/^gave up waiting for the etcd volume to detach after 0s \(last error: VolumeInUse\)$/);
    expect((err as DeadlineError).hint).toBe('check the predecessor instance');
    expect((err as DeadlineError).oneLine()).toMatch(/gave up waiting for the etcd volume to detach after \d+s \(last error: VolumeInUse\); check the predecessor instance/);
    expect(Date.now() - started).toBeLessThan(2000);
  });

  it('throws a non-retryable error at once', async () => {
    let calls = 0;
    await expect(
      waitFor({ what: 'x', timeoutMs: 5000, hint: 'h', log: createLogger({ console: null }), check: async () => (calls++, Promise.reject(new Error('403'))) }),
    ).rejects.toThrow('403');
    expect(calls).toBe(1);
  });

  it('jitters each delay within [base/2, base]', () => {
    const xs = Array.from({ length: 500 }, () => jitter(1000));
    expect(Math.min(...xs)).toBeGreaterThanOrEqual(500);
    expect(Math.max(...xs)).toBeLessThanOrEqual(1000);
    expect(new Set(xs).size).toBeGreaterThan(50);
  });
});
