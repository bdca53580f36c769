import fs from 'node:fs';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { neuronPhase } from '../../agent/boot/neuron.js';
import { planBoot } from '../../agent/boot/plan.js';
import { AgentError } from '../../agent/errors.js';
import { makeTempRoot, type TempRoot } from '../testbed/root.js';
import { readRecords, standinPath } from '../testbed/standins.js';
import { contextFor } from '../support/terminate-env.js';
import { identityOf, phaseContext } from '../support/boot-env.js';

/**
 * Neuron on inf/trn instances: the module is loaded with the recording modprobe, the devices
 * appear late (created by the test, as the driver would), the count goes to the state.
 */

const records = `/tmp/zdt-neuron-records-${process.pid}.jsonl`;
const roots: TempRoot[] = [];
const timers: NodeJS.Timeout[] = [];

beforeAll(() => {
  process.env.PATH = `${standinPath()}:${process.env.PATH}`;
  process.env.ZDT_RECORD_FILE = records;
});
afterEach(async () => {
  for (const t of timers.splice(0)) clearTimeout(t);
  for (const r of roots.splice(0)) await r.cleanup();
  fs.rmSync(records, { force: true });
  delete process.env.ZDT_STANDIN_MODPROBE_EXIT;
});

async function workerOn(instanceType: string, boot: Record<string, unknown> = {}) {
  const root = await makeTempRoot();
  roots.push(root);
  const cmd = await contextFor(root.dir, { cluster: { name: 'prod' }, node: { role: 'worker' }, boot });
  const identity = identityOf({ instanceId: 'i-0123456789abcdef0', type: instanceType });
  return { root, cmd, identity };
}

describe('neuron', () => {
  it('loads the module on an inf2 instance and waits until the devices appear', async () => {
    const { root, cmd, identity } = await workerOn('inf2.xlarge', { neuronModule: 'neuron', neuronDeviceWait: 20 });
    // The driver creates its device nodes a moment after the module is loaded.
    timers.push(
      setTimeout(() => {
        for (const d of ['neuron0', 'neuron1']) fs.writeFileSync(root.at(`/dev/${d}`), '');
      }, 700),
    );
    const ctx = phaseContext(cmd, identity);
    const t0 = Date.now();
    const out = await neuronPhase.run(ctx);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(600);
    expect(out).toEqual({ detail: 'loaded neuron: 2 Neuron devices', changed: true });
    expect(ctx.state.facts.neuronDevices).toBe(2);
    expect((await readRecords(records)).map((r) => `${r.tool} ${r.argv.join(' ')}`)).toEqual(['modprobe neuron']);

    // Devices present: nothing to load again.
    expect(await neuronPhase.run(phaseContext(cmd, identity))).toEqual({ detail: '2 Neuron devices present', changed: false });
    expect(await readRecords(records)).toHaveLength(1);
  });

  it('gives up with a clear error when the devices never appear', async () => {
    const { cmd, identity } = await workerOn('trn1.2xlarge', { neuronModule: 'neuron', neuronDeviceWait: 1 });
    const err = (await neuronPhase.run(phaseContext(cmd, identity)).catch((e: unknown) => e)) as AgentError;
    expect(err).toBeInstanceOf(AgentError);
    expect(err.code).toBe('NeuronDevicesMissing');
    expect(err.message).toMatch(/^gave up waiting for \/dev\/neuron\* after loading the neuron module after 1s/);
    expect(err.hint).toContain('trn1.2xlarge');
  });

  it('reports a module that does not load', async () => {
    const { cmd, identity } = await workerOn('inf1.xlarge', { neuronModule: 'neuron-x' });
    process.env.ZDT_STANDIN_MODPROBE_EXIT = '1';
    const err = (await neuronPhase.run(phaseContext(cmd, identity)).catch((e: unknown) => e)) as AgentError;
    expect(err.code).toBe('CommandFailed');
    expect(err.message).toContain('modprobe neuron-x exited 1');
    expect(err.hint).toContain('boot.neuronModule');
  });

  it('is planned only for Neuron instance families, and plan says why', async () => {
    const { cmd } = await workerOn('m5.large');
    const decide = (type: string) => planBoot({ config: cmd.config, identity: identityOf({ instanceId: 'i-1', type }) }).find((p) => p.name === 'neuron')!;
    expect(decide('m5.large')).toEqual({ name: 'neuron', applies: false, why: 'm5.large has no Neuron devices' });
    for (const t of ['inf1.xlarge', 'inf2.48xlarge', 'trn1.32xlarge', 'trn1n.32xlarge', 'trn2.48xlarge']) expect(decide(t).applies, t).toBe(true);
  });
});
