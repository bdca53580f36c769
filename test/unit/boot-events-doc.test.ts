import fs from 'node:fs';
import { describe, expect, it } from 'vitest';
import { resolveConfig } from '../../agent/config/load.js';
import { buildEvent, EVENT_SCHEMA, type AgentEvent } from '../../agent/notify/events.js';
import { createLogger } from '../../agent/log/logger.js';

/** docs/events.md's JSON examples have the shape buildEvent produces. */

const doc = fs.readFileSync(new URL('../../docs/events.md', import.meta.url), 'utf8');
const examples = [...doc.matchAll(/```json\n([\s\S]*?)```/g)].map((m) => JSON.parse(m[1]!) as AgentEvent);

const full = buildEvent({
  event: 'boot.failed',
  config: resolveConfig([{ source: 'file', origin: 't', data: { cluster: { name: 'prod' }, node: { role: 'controller', controllerIndex: '00' } } }]),
  identity: {
    instanceId: 'i-1', region: 'eu-central-1', availabilityZone: 'eu-central-1a', instanceType: 'm5.large', privateIp: '10.0.0.1', privateDns: undefined,
    accountId: undefined, lifecycle: 'on-demand', asgName: 'asg', stackName: 'st', logicalId: 'L', tags: {},
  },
  phases: { identity: { result: 'ok', startedAt: 't', durationMs: 1 } },
  kubernetesVersion: '1.31.4',
  failure: { phase: 'identity', error: 'X: y' },
  log: createLogger({ console: null }),
});

describe('docs/events.md', () => {
  it('has a JSON example for a success and a failure', () => {
    expect(examples.map((e) => e.event)).toEqual(['boot.succeeded', 'boot.failed']);
  });

  it.each(examples.map((e) => [e.event, e] as const))('the %s example uses exactly the fields of the schema', (_name, ex) => {
    expect(ex.schema).toBe(EVENT_SCHEMA);
    const keys = Object.keys(full);
    for (const k of Object.keys(ex)) expect(keys, `unknown field ${k}`).toContain(k);
    for (const k of ['schema', 'event', 'time', 'role', 'instance', 'agentVersion', 'phases', 'details']) expect(Object.keys(ex)).toContain(k);
    expect(Object.keys(ex.instance).sort()).toEqual(Object.keys(full.instance).sort());
    if (ex.failure) expect(Object.keys(ex.failure).sort()).toEqual(Object.keys(full.failure!).sort());
    for (const k of Object.keys(ex.details)) expect(doc).toContain(`| \`${k}\` |`);
  });
});
