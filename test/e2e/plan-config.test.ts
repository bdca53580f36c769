import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startImds, type Imds } from '../testbed/imds.js';
import { makeTempRoot, type TempRoot } from '../testbed/root.js';

/** `zdt-agent plan` and `zdt-agent config validate` of the built binary, as an operator runs them. */

const BIN = path.resolve(import.meta.dirname, '../../dist/zdt-agent');

let root: TempRoot;
let imds: Imds;
beforeAll(async () => {
  root = await makeTempRoot();
  imds = await startImds({
    instanceId: 'i-0aaaabbbbccccdddd',
    region: 'eu-central-1',
    availabilityZone: 'eu-central-1a',
    instanceType: 'inf2.xlarge',
    privateIp: '10.0.0.5',
    tags: { 'aws:autoscaling:groupName': 'prod-workers', 'aws:cloudformation:stack-name': 'prod', 'aws:cloudformation:logical-id': 'Workers' },
  });
});
afterAll(async () => {
  await imds?.stop();
  await root?.cleanup();
});

/**
 * Runs the binary without blocking this process: the IMDS mock's output pipe is read here,
 * and a blocked test process would stall the mock, and the agent with it.
 */
function run(args: string[], timeoutMs = 60_000): Promise<{ code: number | null; out: string; err: string }> {
  return new Promise((resolve) => {
    execFile(BIN, args, { encoding: 'utf8', timeout: timeoutMs }, (error, stdout, stderr) => {
      const code = error ? (typeof error.code === 'number' ? error.code : null) : 0;
      resolve({ code, out: stdout, err: stderr });
    });
  });
}

function agent(config: string, ...args: string[]) {
  const file = path.join(root.dir, `config-${Math.random().toString(36).slice(2)}.yaml`);
  fs.writeFileSync(file, `aws: { imdsEndpoint: '${imds.endpoint}' }\n${config}`);
  return run([...args, '--root', root.dir, '--config', file]);
}

const line = (out: string, name: string) => out.split('\n').find((l) => new RegExp(`^\\s+(run |skip)\\s+${name}\\s`).test(l)) ?? '';

describe('zdt-agent plan', async () => {
  it('a Neuron worker: neuron and worker-join run, etcd phases are skipped, terminate drains and self-deletes', async () => {
    const r = await agent(`cluster: { name: prod, apiEndpoint: 'k8s.prod:6443' }\nnode: { role: worker }\nnotify: { snsTopicArn: 'arn:aws:sns:eu-central-1:123456789012:t' }\nboot: { launchLifecycleHook: launch }\n`, 'plan');
    expect(r.code, r.err).toBe(0);
    expect(r.out).toContain('i-0aaaabbbbccccdddd inf2.xlarge in eu-central-1a');
    expect(line(r.out, 'neuron')).toMatch(/run .*inf2.xlarge has AWS Neuron devices/);
    expect(line(r.out, 'etcd-volume')).toMatch(/skip .*workers hold no etcd data/);
    expect(line(r.out, 'worker-join')).toMatch(/run .*wait for the API endpoint/);
    expect(line(r.out, 'signal')).toMatch(/SignalResource to prod\/Workers; CompleteLifecycleAction on prod-workers\/launch/);
    expect(line(r.out, 'self-delete')).toMatch(/^\s+run /);
    expect(line(r.out, 'etcd-backup')).toMatch(/skip .*not a controller/);
    // What each kind of notice would make the watcher do.
    expect(r.out).toContain('the watcher (every 1s), per notice, would:');
    expect(line(r.out, 'asgTerminate')).toMatch(/run .*ASG target-lifecycle-state Terminated: retire as terminate/);
    expect(line(r.out, 'scheduledReboot')).toMatch(/run .*cordon; uncordon after the reboot/);
    expect(line(r.out, 'rebalance')).toMatch(/run .*log and notify only \(watch.on.rebalance: log\)/);
  });

  it('a controller on reboot: no backup, no etcd leave, no self-delete', async () => {
    const r = await agent(`cluster: { name: prod }\nnode: { role: controller, controllerIndex: '00' }\netcd: { backup: { bucket: prod-backups } }\n`, 'plan', '--event', 'reboot');
    expect(r.code, r.err).toBe(0);
    expect(r.out).toContain('terminate (event reboot) would:');
    expect(line(r.out, 'etcd-volume')).toMatch(/^\s+run /);
    expect(line(r.out, 'etcd-backup')).toMatch(/skip .*no backup on reboot/);
    expect(line(r.out, 'etcd-leave')).toMatch(/skip .*never on reboot/);
  });

  it('a bastion: plan ends with the sshd checks, which say what this root lacks', async () => {
    const r = await agent(`node: { role: bastion }\nssh: { iamGroup: g }\n`, 'plan');
    expect(r.code, r.err).toBe(0);
    expect(r.out).toMatch(/^role:\s+bastion$/m);
    const section = r.out.slice(r.out.indexOf('\nbastion checks:\n'));
    expect(section).toMatch(/^\nbastion checks:\n/);
    expect(section).toMatch(/^\s+FAIL\s+sshd_config readable: \/etc\/ssh\/sshd_config: ENOENT$/m);
    expect(section).toMatch(/^\s+FAIL\s+sshd runs zdt-agent ssh-keys: no AuthorizedKeysCommand in sshd_config or its includes/m);
    // Other roles have no such section.
    const worker = await agent(`cluster: { name: prod }\nnode: { role: worker }\n`, 'plan');
    expect(worker.out).not.toContain('bastion checks:');
  });

  it('an invalid config is reported before IMDS is asked, exit 2, no stack trace', async () => {
    const r = await agent(`node: { role: worker }\netcd: {}\n`, 'plan');
    expect(r.code).toBe(2);
    expect(r.err.trim().split('\n')).toHaveLength(1);
    expect(r.err).toMatch(/^zdt-agent: ConfigInvalid: \d+ problems? in the configuration; first: /);
    expect(r.err).not.toMatch(/\n\s+at /);
  });

  it('an unreachable IMDS ends in one line and exit 3 after a bounded wait', async () => {
    const file = path.join(root.dir, 'no-imds.yaml');
    fs.writeFileSync(file, `aws: { imdsEndpoint: 'http://127.0.0.1:9', imdsTimeout: 3 }\ncluster: { name: prod }\n`);
    const r = await run(['plan', '--root', root.dir, '--config', file]);
    expect(r.code).toBe(3);
    expect(r.err.trim().split('\n')).toHaveLength(1);
    expect(r.err).toMatch(/ImdsUnavailable: gave up waiting for IMDS .* check that IMDS is enabled/);
  });
});

describe('zdt-agent config validate', async () => {
  it('prints every problem with path, source and hint, and exits 2', async () => {
    const r = await agent(`cluster: { name: Bad_Name }\nnode: { role: worker, controllerIndex: '01' }\nterminate: { budget: 0, bogus: 1 }\n`, 'config', 'validate');
    expect(r.code).toBe(2);
    for (const p of ['cluster.name', 'node.controllerIndex', 'terminate.budget', 'terminate.bogus']) expect(r.out).toContain(`${p}: `);
    expect(r.out).toMatch(/hint: /);
    expect(r.err).toBe('zdt-agent: 4 problems in the configuration\n');
  });

  it('says OK and names the sources of a valid config', async () => {
    const r = await agent(`cluster: { name: prod }\nnode: { role: worker }\n`, 'config', 'validate');
    expect(r.code, r.err).toBe(0);
    expect(r.out).toMatch(/^config OK \(worker of cluster prod; sources: .*config-.*\.yaml\)/);
  });

  it('reads user-data and tags from IMDS with --instance', async () => {
    const r = await agent(`cluster: { name: prod }\nnode: { role: worker }\n`, 'config', 'validate', '--instance');
    expect(r.code, r.err).toBe(0);
  });
});
