import fs from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startImds, type Imds } from '../testbed/imds.js';
import { makeTempRoot, type TempRoot } from '../testbed/root.js';
import { AZ, BINARY, REGION, runBinary, writeConfig } from '../support/boot-env.js';
import { startHttpTap } from '../testbed/http-tap.js';

/**
 * The built binary (`make binary`) boots a NAT instance (identity only: no volume, no
 * Kubernetes), then boots again in the same kernel boot: the second boot is answered from
 * the state file, before the CLI chunk (yargs, zod, the AWS SDK) loads and without asking
 * IMDS. --force, a changed config file and another kernel boot id each run the full boot.
 */

let root: TempRoot;
let imds: Imds;
let counter: { endpoint: string; requests: () => number; stop: () => Promise<void> };
const BOOT_ID = '3d1f0c57-8a44-4b8e-9c1e-5b2a7f0e6d11';

/** Counts the requests that reach IMDS. */
async function countingProxy(target: string) {
  let n = 0;
  const tap = await startHttpTap(target, () => void n++);
  return { endpoint: tap.endpoint, requests: () => n, stop: tap.stop };
}

function setBootId(id: string): void {
  fs.mkdirSync(root.at('/proc/sys/kernel/random'), { recursive: true });
  fs.writeFileSync(root.at('/proc/sys/kernel/random/boot_id'), `${id}\n`);
}

const config = () => ({ node: { role: 'nat' as const }, aws: { region: REGION, imdsEndpoint: counter.endpoint } });

/** `zdt-agent boot` with chunk tracing: a full boot loads the CLI chunk, the fast path does not. */
async function boot(...extra: string[]) {
  const before = counter.requests();
  const r = await runBinary(['boot', '--root', root.dir, ...extra], { ...process.env, ZDT_TRACE_CHUNKS: '1' });
  return { ...r, imdsRequests: counter.requests() - before, loadedCli: r.stderr.includes('zdt-agent: chunk cli:') };
}

beforeAll(async () => {
  if (!fs.existsSync(BINARY)) throw new Error(`${BINARY} is missing: run 'make binary' first`);
  root = await makeTempRoot();
  imds = await startImds({ instanceId: 'i-0fa57a7b1e0c0ffee', region: REGION, availabilityZone: AZ, instanceType: 't4g.small', privateIp: '10.0.9.9', tags: { Name: 'nat-a' } });
  counter = await countingProxy(imds.endpoint);
  setBootId(BOOT_ID);
  writeConfig(root.dir, config());
}, 60_000);

afterAll(async () => {
  await counter?.stop();
  await imds?.stop();
  await root?.cleanup();
});

describe('dist/zdt-agent boot, twice in one kernel boot', () => {
  it('the first boot runs the phases and records the kernel boot id', async () => {
    const r = await boot();

    expect(r.code, r.stderr).toBe(0);
    expect(r.loadedCli).toBe(true);
    expect(r.stderr).toContain('identity: start');
    expect(r.imdsRequests).toBeGreaterThan(0);
    expect(JSON.parse(fs.readFileSync(root.at('/var/lib/zdt-agent/state.json'), 'utf8')).facts.bootCompletedInBootId).toBe(BOOT_ID);
  });

  it('the second boot exits 0 at once with one line, without the CLI chunk and without IMDS', async () => {
    const state = JSON.parse(fs.readFileSync(root.at('/var/lib/zdt-agent/state.json'), 'utf8'));

    const r = await boot();

    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toContain(`boot already completed in this boot at ${state.boot.finishedAt}; nothing to do; use --force to re-check`);
    expect(r.loadedCli).toBe(false);
    expect(r.imdsRequests).toBe(0);
    expect(fs.readFileSync(root.at('/var/log/zdt-agent.log'), 'utf8')).toContain('boot already completed in this boot');
  });

  it('--force runs every phase again', async () => {
    const r = await boot('--force');

    expect(r.code, r.stderr).toBe(0);
    expect(r.loadedCli).toBe(true);
    expect(r.stderr).toContain('boot --force: every phase inspects the node again');
    expect(r.stderr).toContain('identity: start');
    expect(r.imdsRequests).toBeGreaterThan(0);
    expect((await boot()).loadedCli).toBe(false);
  });

  it('a changed config file runs the full boot, and the boot after it is fast again', async () => {
    writeConfig(root.dir, { ...config(), log: { level: 'info' } });

    const changed = await boot();

    expect(changed.code, changed.stderr).toBe(0);
    expect(changed.loadedCli).toBe(true);
    expect(changed.stderr).toContain('identity: start');
    const again = await boot();
    expect(again.loadedCli).toBe(false);
    expect(again.stderr).toContain('boot already completed in this boot');
  });

  it('another kernel boot id (the node rebooted) runs the full boot', async () => {
    setBootId('9b7c2d10-1111-4222-8333-444455556666');

    const r = await boot();

    expect(r.code, r.stderr).toBe(0);
    expect(r.loadedCli).toBe(true);
    expect(r.stderr).toContain('identity: start');
    expect(r.imdsRequests).toBeGreaterThan(0);
  });
});
