import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { resolveConfig } from '../../agent/config/load.js';
import { silentLogger } from '../../agent/log/logger.js';
import type { WatchCounters } from '../../agent/log/metrics.js';
import { readState, writeState, emptyState } from '../../agent/log/state.js';
import { watch, type NodeActions } from '../../agent/watch/run.js';

/**
 * The watcher's bookkeeping, with the node's actions recorded instead of done (the real ones
 * are exercised against AEMM and kube-apiserver in test/integration/watch.test.ts): resume
 * after a restart, never twice, a failed cordon tried again, the reboot's cordon undone in the
 * next kernel boot.
 */

const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) fs.rmSync(d, { recursive: true, force: true });
});

function setup(answers: Record<string, string>) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'zdt-watch-'));
  dirs.push(dir);
  const calls: string[] = [];
  let cordonFailures = 0;
  const actions: NodeActions = {
    retire: async (event, t) => {
      calls.push(`retire ${event} ${t.eventId}`);
      return { result: 'ok', detail: 'x' };
    },
    cordon: async () => {
      if (cordonFailures-- > 0) throw new Error('API server down');
      calls.push('cordon');
      return 'cordoned';
    },
    uncordon: async () => {
      calls.push('uncordon');
      return true;
    },
    schedulable: async () => true,
    noticed: async (n) => void calls.push(`noticed ${n.id}`),
  };
  const config = resolveConfig([{ source: 'file', origin: 't', data: { cluster: { name: 'p' }, watch: { interval: 0.01, backoffMax: 0.1 } } }]).watch;
  const metrics: WatchCounters[] = [];
  const run = (maxPolls: number, bootId = 'b1') =>
    watch({
      onMetrics: (c) => void metrics.push(structuredClone(c)),
      imds: { poll: async (p) => Object.entries(answers).find(([k]) => p.endsWith(k))?.[1] },
      config,
      stateFile: path.join(dir, 'state.json'),
      agentVersion: 't',
      bootId,
      log: silentLogger,
      actions,
      signal: new AbortController().signal,
      maxPolls,
    });
  return { run, calls, metrics, stateFile: path.join(dir, 'state.json'), failCordon: (n: number) => (cordonFailures = n) };
}

describe('the watcher acts once per notice', () => {
  it('a restarted watcher resumes a retire left acting, and never repeats a finished one', async () => {
    const t = setup({ 'spot/instance-action': '{"action":"terminate","time":"T"}' });
    const s = emptyState('t');
    s.watch = { startedAt: 'x', pid: 1, events: { 'spot:terminate:T': { kind: 'spotTerminate', notice: 'n', firstSeenAt: 'x', action: 'retire', event: 'terminate', status: 'acting' } } };
    writeState(t.stateFile, s);
    await t.run(5);
    expect(t.calls).toEqual(['retire terminate spot:terminate:T']); // resumed; no second notice message
    await t.run(5);
    expect(t.calls).toHaveLength(1);
    expect(readState(t.stateFile, 't').watch?.events['spot:terminate:T']).toMatchObject({ status: 'done', result: 'ok' });
  });

  it('metrics: a notice seen on 100 polls counts once; the counters go out at the first poll, on a new notice and at the stop, not per poll', async () => {
    const t = setup({ 'events/recommendations/rebalance': '{"noticeTime":"2030-01-01T00:00:00Z"}' });
    await t.run(100);
    const last = t.metrics.at(-1);
    expect(last).toMatchObject({ polls: 100, pollErrors: 0, eventsByKind: { rebalance: 1 } });
    expect(last?.lastPollAt).toBeGreaterThan(Date.now() / 1000 - 60);
    // The first poll (with the new notice) and the stop; 100 polls at 10 ms stay inside 15 s.
    expect(t.metrics.length).toBeLessThanOrEqual(3);
  });

  it('a cordon that fails is tried again while the notice stands', async () => {
    const t = setup({ 'events/maintenance/scheduled': JSON.stringify([{ Code: 'system-reboot', State: 'active', EventId: 'e1' }]) });
    t.failCordon(2);
    await t.run(100);
    expect(t.calls).toEqual(['noticed scheduled:e1', 'cordon']);
    expect(readState(t.stateFile, 't').watch?.events['scheduled:e1']).toMatchObject({ status: 'done', cordoned: true });
  });

  it("a reboot's cordon is undone in the next kernel boot", async () => {
    const t = setup({ 'events/maintenance/scheduled': JSON.stringify([{ Code: 'system-reboot', State: 'active', EventId: 'e1' }]) });
    await t.run(5, 'boot-1');
    expect(t.calls).toEqual(['noticed scheduled:e1', 'cordon']);
    await t.run(5, 'boot-2');
    expect(t.calls.slice(2)).toEqual(['uncordon']);
    expect(readState(t.stateFile, 't').watch?.events['scheduled:e1']?.undoneAt).toBeDefined();
  });
});
