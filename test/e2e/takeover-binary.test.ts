import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readState } from '../../agent/log/state.js';
import { startImds, type Imds } from '../testbed/imds.js';
import { makeTempRoot, type TempRoot } from '../testbed/root.js';
import { AZ, REGION, awsSection, runBinary, startAwsWorld, writeConfig, type AwsWorld } from '../support/boot-env.js';
import { createSubnet, launchNat, predecessorHoldingEverything, whereNatPoints } from '../support/takeover-env.js';

/**
 * The built binary (`make binary`) replaces a NAT instance: `plan` names what it would take
 * from whom and changes nothing, `boot` takes the Elastic IP and the routes over and completes
 * the lifecycle hook with CONTINUE, `status` prints what moved; a second instance's `boot`
 * with the predecessor's config stands down (exit 1, ABANDON).
 */

let w: AwsWorld;
let root: TempRoot;
const imdses: Imds[] = [];

beforeAll(async () => {
  w = await startAwsWorld();
  root = await makeTempRoot();
});
afterAll(async () => {
  for (const i of imdses) await i.stop();
  await root?.cleanup();
  await w?.stop();
});

async function natNode(instanceId: string, tag: string, dir: string) {
  const imds = await startImds({ instanceId, region: REGION, availabilityZone: AZ, instanceType: 't3.micro', privateIp: '10.20.1.30', tags: { 'aws:autoscaling:groupName': 'nat' } });
  imdses.push(imds);
  writeConfig(dir, {
    node: { role: 'nat' },
    takeover: { readinessCommand: ['true'], elasticIp: { tags: { 'zdt:nat': tag } }, routeTables: { tags: { 'zdt:nat': tag } } },
    boot: { launchLifecycleHook: 'launch' },
    aws: { ...awsSection(w.proxy.endpoint), imdsEndpoint: imds.endpoint },
  });
  return { ...process.env, AWS_ACCESS_KEY_ID: 'testing', AWS_SECRET_ACCESS_KEY: 'testing' };
}

describe('zdt-agent boot on a NAT replacement (built binary)', () => {
  it('plan, boot (CONTINUE after verification), status; the predecessor booting again stands down', async () => {
    const r = await predecessorHoldingEverything(w, await createSubnet(w));
    const fresh = await launchNat(w, r.subnetId);
    const env = await natNode(fresh.id, r.tag, root.dir);

    const plan = await runBinary(['plan', '--root', root.dir], env);
    expect(plan.code, plan.stderr).toBe(0);
    expect(plan.stdout).toContain(`route 0.0.0.0/0 in ${r.tableId}: take from ${r.old.id}`);
    expect(await whereNatPoints(w, r)).toMatchObject({ eip: r.old.id, defaultRoute: r.old.id });

    const boot = await runBinary(['boot', '--root', root.dir], env);
    expect(boot.code, boot.stderr).toBe(0);
    expect(await whereNatPoints(w, r)).toMatchObject({ eip: fresh.id, defaultRoute: fresh.id });
    const hook = (id: string) => w.proxy.recorded('CompleteLifecycleAction').filter((c) => c.params.InstanceId === id).map((c) => c.params.LifecycleActionResult);
    expect(hook(fresh.id)).toEqual(['CONTINUE']);

    const status = await runBinary(['status', '--root', root.dir], env);
    expect(status.stdout).toMatch(new RegExp(`takeover: ok at \\S+ from ${r.old.id}; ready after \\d+ ms, interruption \\d+ ms`));
    expect(readState(root.at('/var/lib/zdt-agent/state.json'), 'x').takeover?.moved).toHaveLength(2);

    const oldRoot = await makeTempRoot();
    try {
      const oldEnv = await natNode(r.old.id, r.tag, oldRoot.dir);
      const again = await runBinary(['boot', '--root', oldRoot.dir], oldEnv);
      expect(again.code).toBe(1);
      expect(again.stderr).toContain('TakeoverStoodDown');
      expect(hook(r.old.id)).toEqual(['ABANDON']);
    } finally {
      await oldRoot.cleanup();
    }
    expect(await whereNatPoints(w, r)).toMatchObject({ eip: fresh.id, defaultRoute: fresh.id });
  }, 120_000);
});
