import { describe, expect, it } from 'vitest';
import { terminateProblem } from '../../agent/commands/terminate.js';
import { configSchema, type ConfigInput } from '../../agent/config/schema.js';
import type { Identity } from '../../agent/host/identity.js';
import { Budget, withinWindow } from '../../agent/terminate/budget.js';
import type { ShutdownEvent } from '../../agent/node.js';
import { planTerminate } from '../../agent/terminate/plan.js';

const identity = (asgName?: string): Identity => ({
  instanceId: 'i-1',
  region: 'eu-central-1',
  availabilityZone: 'eu-central-1a',
  instanceType: 'm7i.large',
  privateIp: '10.0.0.1',
  privateDns: undefined,
  accountId: undefined,
  lifecycle: 'on-demand',
  asgName,
  stackName: undefined,
  logicalId: undefined,
  tags: {},
});

const decide = (input: ConfigInput, event: ShutdownEvent, asg?: string) =>
  Object.fromEntries(planTerminate({ config: configSchema.parse(input), identity: identity(asg) }, event).map((d) => [d.name, d.applies]));

describe('the terminate plan', () => {
  const worker: ConfigInput = { cluster: { name: 'c' }, node: { role: 'worker' }, notify: { snsTopicArn: 'arn:aws:sns:eu-central-1:123456789012:t' } };
  const controller: ConfigInput = { cluster: { name: 'c' }, node: { role: 'controller', controllerIndex: '00' }, etcd: { backup: { bucket: 'zdt-backups' } } };

  it('a worker terminate drains, deletes its Node, completes the lifecycle hook and notifies', () => {
    expect(decide(worker, 'terminate', 'asg')).toEqual({ hooks: true, drain: true, 'self-delete': true, 'etcd-backup': false, 'etcd-leave': false, lifecycle: true, notify: true });
  });

  it('stop and reboot drain (configurable) and keep the Node; unknown drains and keeps it too', () => {
    expect(decide(worker, 'reboot', 'asg')).toMatchObject({ drain: true, 'self-delete': false, lifecycle: false });
    expect(decide({ ...worker, terminate: { drainOnStop: false } }, 'stop')).toMatchObject({ drain: false, 'self-delete': false });
    expect(decide(worker, 'unknown', 'asg')).toMatchObject({ drain: true, 'self-delete': false, lifecycle: true });
  });

  it('a controller backs up on terminate, stop and unknown, and may leave etcd only on terminate', () => {
    expect(decide(controller, 'terminate')).toMatchObject({ 'etcd-backup': true, 'etcd-leave': true, 'self-delete': false });
    expect(decide(controller, 'stop')).toMatchObject({ 'etcd-backup': true, 'etcd-leave': false });
    expect(decide(controller, 'unknown')).toMatchObject({ 'etcd-backup': true, 'etcd-leave': false });
    expect(decide(controller, 'reboot')).toMatchObject({ 'etcd-backup': false, 'etcd-leave': false });
    expect(decide({ ...controller, etcd: {} }, 'terminate')).toMatchObject({ 'etcd-backup': false });
  });
});

describe('the time budget', () => {
  it('cuts windows from what is left, minus a reserve, never below zero', () => {
    let now = 1000;
    const b = new Budget(10_000, () => now);
    expect(b.window(4000, 1000).ms).toBe(4000);
    now = 8000;
    expect(b.window(4000, 1000).ms).toBe(2000);
    now = 10_500;
    expect(b.window(4000, 1000).ms).toBe(0);
    b.dispose();
  });

  it('stops waiting for a step that ignores its signal when the window closes', async () => {
    const b = new Budget(5000);
    const started = Date.now();
    const r = await withinWindow(b.window(200), () => new Promise(() => undefined));
    expect(r.timedOut).toBe(true);
    expect(Date.now() - started).toBeLessThan(2000);
    const ok = await withinWindow(b.window(1000), async () => 42);
    expect(ok).toEqual({ timedOut: false, value: 42 });
    await expect(withinWindow(b.window(1000), async () => Promise.reject(new Error('boom')))).rejects.toThrow('boom');
    b.dispose();
  });
});

describe('the one line of a terminate that did not end ok', () => {
  const phase = (result: 'ok' | 'failed', error?: string) => ({ result, startedAt: '2030-01-01T00:00:00Z', durationMs: 1, ...(error ? { error } : {}) });

  it('names what the budget cut off, or the first step that failed (not notify or hooks), and the log', () => {
    const log = '/r/var/log/zdt-agent.log';
    expect(terminateProblem({ exitCode: 0, unfinished: [], record: { startedAt: '', phases: {} } }, log)).toBeUndefined();
    expect(terminateProblem({ exitCode: 3, unfinished: ['drain', 'etcd-backup'], record: { startedAt: '', phases: {} } }, log)).toBe(
      'TerminateDeadline: the budget ran out before drain, etcd-backup finished; see /r/var/log/zdt-agent.log',
    );
    const phases = { hooks: phase('failed', 'HookFailed: 20-x exit 1'), drain: phase('ok'), 'lifecycle-hook': phase('failed', 'AwsUnavailable: no') };
    expect(terminateProblem({ exitCode: 1, unfinished: [], record: { startedAt: '', phases } }, log)).toBe(
      'TerminateFailed: lifecycle-hook failed: AwsUnavailable: no; see /r/var/log/zdt-agent.log',
    );
  });
});
