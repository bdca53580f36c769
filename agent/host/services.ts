import type { Exec } from './exec.js';

/**
 * OpenRC services through rc-service. `rc-service NAME status` exits 0 when the service is
 * started and non-zero (3) when it is stopped or crashed.
 */

export async function serviceRunning(exec: Exec, name: string): Promise<boolean> {
  const r = await exec('rc-service', [name, 'status'], { timeoutMs: 30_000, okExitCodes: [1, 3, 32] });
  return r.exitCode === 0;
}

/** Starts the service unless it runs; returns whether it had to be started. */
export async function ensureServiceRunning(exec: Exec, name: string): Promise<boolean> {
  if (await serviceRunning(exec, name)) return false;
  await exec('rc-service', [name, 'start'], { timeoutMs: 120_000, hint: `check /var/log/${name}.log and 'rc-service ${name} status'` });
  return true;
}

export async function restartService(exec: Exec, name: string): Promise<void> {
  await exec('rc-service', [name, 'restart'], { timeoutMs: 120_000, hint: `check /var/log/${name}.log and 'rc-service ${name} status'` });
}

/** Stops the service if it runs; returns whether it had to be stopped. */
export async function ensureServiceStopped(exec: Exec, name: string): Promise<boolean> {
  if (!(await serviceRunning(exec, name))) return false;
  await exec('rc-service', [name, 'stop'], { timeoutMs: 120_000, hint: `check 'rc-service ${name} status'` });
  return true;
}
