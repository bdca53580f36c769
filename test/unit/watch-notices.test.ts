import { describe, expect, it } from 'vitest';
import { resolveConfig } from '../../agent/config/load.js';
import { formatState, emptyState } from '../../agent/log/state.js';
import { parseNotices, planWatch } from '../../agent/watch/notices.js';

/** What the four IMDS notice paths say, as notice values with identities stable across polls. */

const scheduled = (code: string, state: string, id = 'instance-event-0abc') =>
  JSON.stringify([{ Code: code, Description: 'x', State: state, EventId: id, NotBefore: '21 Jan 2030 09:00:43 GMT', NotAfter: '21 Jan 2030 09:17:23 GMT' }]);

describe('parseNotices', () => {
  it('turns each kind into one notice with a stable identity', () => {
    const { notices, ignored } = parseNotices(
      {
        lifecycle: 'Terminated\n',
        spot: '{"action": "stop", "time": "2030-01-01T00:02:00Z"}',
        scheduled: scheduled('system-reboot', 'active'),
        rebalance: '{"noticeTime": "2030-01-01T00:00:00Z"}',
      },
      'b1',
    );
    expect(ignored).toEqual([]);
    expect(notices.map((n) => [n.id, n.kind])).toEqual([
      ['asg:Terminated:b1', 'asgTerminate'],
      ['spot:stop:2030-01-01T00:02:00Z', 'spotStop'],
      ['scheduled:instance-event-0abc', 'scheduledReboot'],
      ['rebalance:2030-01-01T00:00:00Z', 'rebalance'],
    ]);
    expect(notices[2]).toMatchObject({ state: 'active', time: '2030-01-21T09:00:43.000Z' });
  });

  it('InService, 404s and Warmed states', () => {
    expect(parseNotices({ lifecycle: 'InService' }, 'b').notices).toEqual([]);
    expect(parseNotices({}, 'b').notices).toEqual([]);
    expect(parseNotices({ lifecycle: 'Warmed:Stopped' }, 'b').notices[0]).toMatchObject({ id: 'asg:Warmed:Stopped:b', kind: 'asgWarmed' });
    expect(parseNotices({ lifecycle: 'Warmed:Terminated' }, 'b').notices[0]).toMatchObject({ kind: 'asgTerminate' });
  });

  it('scheduled codes map to kinds; canceled and completed keep the identity of the active event', () => {
    const kinds = ['instance-stop', 'instance-retirement', 'instance-reboot', 'system-maintenance'].map((c) => parseNotices({ scheduled: scheduled(c, 'active') }, 'b').notices[0]?.kind);
    expect(kinds).toEqual(['scheduledStop', 'scheduledStop', 'scheduledReboot', 'scheduledMaintenance']);
    const canceled = parseNotices({ scheduled: scheduled('system-reboot', 'canceled') }, 'b').notices[0];
    expect(canceled).toMatchObject({ id: 'scheduled:instance-event-0abc', state: 'canceled' });
    expect(parseNotices({ scheduled: '[]' }, 'b').notices).toEqual([]);
  });

  it('ignores, with a reason, what it cannot read', () => {
    const r = parseNotices({ spot: '<html>', scheduled: '{"not": "a list"}', rebalance: '{}' }, 'b');
    expect(r.notices).toEqual([]);
    expect(r.ignored).toHaveLength(3);
  });
});

describe('zdt-agent plan and status', () => {
  it('plan names what each kind of notice would do, from the config', () => {
    const config = resolveConfig([{ source: 'file', origin: 't', data: { cluster: { name: 'p' }, watch: { on: { rebalance: 'cordon', spotStop: 'ignore' } } } }]);
    const rows = Object.fromEntries(planWatch(config).map((r) => [r.name, r]));
    expect(rows.asgTerminate).toMatchObject({ applies: true });
    expect(rows.asgTerminate!.why).toMatch(/retire as terminate/);
    expect(rows.scheduledStop!.why).toMatch(/retire as stop/);
    expect(rows.scheduledReboot!.why).toMatch(/cordon; uncordon after the reboot/);
    expect(rows.rebalance!.why).toMatch(/cordon; uncordon when the event is canceled \(watch.on.rebalance: cordon\)/);
    expect(rows.spotStop).toMatchObject({ applies: false });
  });

  it('status shows the watcher: last poll, outage, each notice and what was done', () => {
    const s = emptyState('1');
    s.watch = {
      startedAt: '2030-01-01T00:00:00Z',
      pid: 42,
      lastPollAt: '2030-01-01T00:05:00Z',
      lastEventId: 'spot:terminate:t',
      events: { 'spot:terminate:t': { kind: 'spotTerminate', notice: 'spot instance-action terminate at t', firstSeenAt: 'x', action: 'retire', event: 'terminate', status: 'done', result: 'ok', finishedAt: 'y' } },
    };
    const text = formatState(s);
    expect(text).toContain('watch: pid 42, started 2030-01-01T00:00:00Z, last poll 2030-01-01T00:05:00Z');
    expect(text).toContain('spot:terminate:t: spot instance-action terminate at t; retire as terminate done ok at y');
    expect(formatState(emptyState('1'))).toContain('watch: never ran');
  });
});
