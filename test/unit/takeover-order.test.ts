import { describe, expect, it } from 'vitest';
import { decide, launchedBefore, type Claim, type Survey } from '../../agent/boot/takeover.js';
import { combinationProblems } from '../../agent/config/schema.js';

/** Who may take a role over from whom: the later-launched instance always wins, both sides agree. */

const at = (s: number) => new Date(Date.UTC(2026, 0, 1, 0, 0, s));

function survey(selfId: string, selfAt: Date, holders: Record<string, { at?: Date; gone?: boolean }>): Survey {
  return {
    self: { instanceId: selfId, launchTime: selfAt, primaryEni: 'eni-self', sourceDestCheck: true },
    targetEni: 'eni-self',
    claims: [],
    instances: new Map(Object.entries(holders).map(([id, h]) => [id, { launchTime: h.at, az: 'eu-central-1a', gone: h.gone ?? false }])),
  };
}
const claim = (holder: string | undefined, here = false): Claim => ({ kind: 'eip', label: 'Elastic IP', holder, elsewhere: holder ? undefined : 'nothing', here });

describe('takeover order', () => {
  it('launch time decides; equal times: the smaller instance id counts as launched earlier, seen the same from both sides', () => {
    expect(launchedBefore({ id: 'i-b', at: at(1) }, { id: 'i-a', at: at(2) })).toBe(true);
    expect(launchedBefore({ id: 'i-a', at: at(2) }, { id: 'i-b', at: at(1) })).toBe(false);
    expect(launchedBefore({ id: 'i-a', at: at(5) }, { id: 'i-b', at: at(5) })).toBe(true);
    expect(launchedBefore({ id: 'i-b', at: at(5) }, { id: 'i-a', at: at(5) })).toBe(false);
  });

  it('takes from an earlier instance, a gone one, or nobody; stands down before a later one; keeps what is here', () => {
    const s = survey('i-new', at(10), { 'i-old': { at: at(1) }, 'i-newer': { at: at(20) }, 'i-dead': { at: at(1), gone: true } });
    expect(decide(s, claim('i-old')).action).toBe('take');
    expect(decide(s, claim('i-dead'))).toMatchObject({ action: 'take', from: 'i-dead (gone)' });
    expect(decide(s, claim('i-unknown'))).toMatchObject({ action: 'take' });
    expect(decide(s, claim(undefined))).toMatchObject({ action: 'take', from: 'nothing' });
    expect(decide(s, claim('i-newer'))).toMatchObject({ action: 'stand-down', from: 'i-newer' });
    expect(decide(s, claim('i-new', true)).action).toBe('keep');
  });
});

describe('takeover config rules', () => {
  it('takeover only on service hosts, routes only on nat/vpngw, ids or tags', () => {
    const msgs = (c: Parameters<typeof combinationProblems>[0]) => combinationProblems(c).map((p) => p.path.join('.'));
    expect(msgs({ node: { role: 'worker' }, cluster: {}, takeover: {} })).toContain('takeover');
    expect(msgs({ node: { role: 'bastion' }, ssh: {}, takeover: { routeTables: { ids: ['rtb-1'] } } })).toEqual(['takeover.routeTables']);
    expect(msgs({ node: { role: 'vpngw' }, takeover: { routeTables: { ids: ['rtb-1'] }, elasticIp: { allocationId: 'eipalloc-1', tags: { a: 'b' } } } })).toEqual([
      'takeover.elasticIp',
    ]);
    expect(msgs({ node: { role: 'nat' }, takeover: { elasticIp: {}, routeTables: { tags: { a: 'b' } } } })).toEqual(['takeover.elasticIp']);
    expect(msgs({ node: { role: 'nat' }, takeover: { readinessTimeout: 200, budget: 240 } })).toEqual(['takeover.budget']);
    expect(msgs({ node: { role: 'nat' }, takeover: { readinessTimeout: 60, eniReleaseTimeout: 60, budget: 240 } })).toEqual([]);
  });
});
