import fs from 'node:fs';
import type { Paths } from '../host/paths.js';
import { waitFor } from '../host/retry.js';
import type { BootPhase } from './context.js';

/**
 * AWS Neuron (inf1/inf2/trn1/trn2): load the kernel module and wait until its devices
 * appear. Whether the phase applies (the instance family) is decided in plan.ts.
 */

export function neuronDevices(paths: Paths): string[] {
  try {
    return fs.readdirSync(paths.at('/dev')).filter((n) => /^neuron\d+$/.test(n));
  } catch {
    return [];
  }
}

export const neuronPhase: BootPhase = {
  name: 'neuron',
  budgetMs: (c) => (c.boot.neuronDeviceWait + 120) * 1000,
  run: async (ctx) => {
    const { config, paths, log, exec } = ctx;
    const existing = neuronDevices(paths);
    if (existing.length > 0) {
      ctx.shared.neuronDevices = existing.length;
      ctx.state.facts.neuronDevices = existing.length;
      return { detail: `${existing.length} Neuron devices present`, changed: false };
    }
    const mod = config.boot.neuronModule;
    await exec('modprobe', [mod], {
      timeoutMs: 60_000,
      hint: `check that the Neuron driver package (aws-neuronx-dkms) is installed in the AMI and built for this kernel, or set boot.neuronModule`,
    });
    const devices = await waitFor({
      what: `/dev/neuron* after loading the ${mod} module`,
      timeoutMs: config.boot.neuronDeviceWait * 1000,
      initialDelayMs: 100,
      maxDelayMs: 2000,
      progressEveryMs: 30_000,
      log,
      signal: ctx.signal,
      code: 'NeuronDevicesMissing',
      hint: `check 'dmesg' for ${mod} errors and that ${ctx.identity.instanceType} has Neuron devices`,
      check: async () => {
        const d = neuronDevices(paths);
        return d.length > 0 ? d : undefined;
      },
    });
    ctx.shared.neuronDevices = devices.length;
    ctx.state.facts.neuronDevices = devices.length;
    return { detail: `loaded ${mod}: ${devices.length} Neuron devices`, changed: true };
  },
};
