import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { CreateTopicCommand, SNSClient, SubscribeCommand } from '@aws-sdk/client-sns';
import { CreateQueueCommand, GetQueueAttributesCommand, ReceiveMessageCommand, SQSClient } from '@aws-sdk/client-sqs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { kubeApiserverAvailable, startKube, type Kube } from '../testbed/kube.js';
import type { LoopDevice } from '../testbed/loop.js';
import type { TempRoot } from '../testbed/root.js';
import { readRecords } from '../testbed/standins.js';
import { BINARY, REGION, credentials, runBinary, startAwsWorld, startController00, type AwsWorld, type BinaryController00 } from '../support/boot-env.js';

/**
 * The built binary (`make binary`) boots a controller 00 on the testbed: moto behind the
 * fidelity proxy, AEMM, a real loop device as its etcd volume, the recording apk and kubeadm
 * (its admin.conf names a real kube-apiserver, which takes the node self-delete grant); the
 * SNS message is read back through SQS. Then boots again: nothing to do.
 */

let w: AwsWorld;
let kube: Kube;
let node: BinaryController00;
let root: TempRoot;
let loop: LoopDevice;
let records: string;
let env: NodeJS.ProcessEnv;
let sqs: SQSClient;
let queueUrl: string;

beforeAll(async () => {
  if (!fs.existsSync(BINARY)) throw new Error(`${BINARY} is missing: run 'make binary' first`);
  if (!(await kubeApiserverAvailable())) throw new Error('kube-apiserver is missing: run test/testbed/k8s/build.sh');
  w = await startAwsWorld();
  kube = await startKube();
  const common = { region: REGION, endpoint: w.proxy.endpoint, credentials };
  const sns = new SNSClient(common);
  sqs = new SQSClient(common);
  const topicArn = (await sns.send(new CreateTopicCommand({ Name: 'zdt-e2e' }))).TopicArn!;
  queueUrl = (await sqs.send(new CreateQueueCommand({ QueueName: 'zdt-e2e' }))).QueueUrl!;
  const queueArn = (await sqs.send(new GetQueueAttributesCommand({ QueueUrl: queueUrl, AttributeNames: ['QueueArn'] }))).Attributes!.QueueArn!;
  await sns.send(new SubscribeCommand({ TopicArn: topicArn, Protocol: 'sqs', Endpoint: queueArn }));
  node = await startController00(w, {
    config: { cluster: { name: 'e2e', kubernetesVersion: '1.34.X' }, notify: { snsTopicArn: topicArn } },
    adminKubeconfig: kube.adminKubeconfig,
  });
  ({ root, loop, records, env } = node);
}, 120_000);

afterAll(async () => {
  await node?.stop();
  await kube?.stop();
  await w?.stop();
});

describe('dist/zdt-agent boot', () => {
  it('boots controller 00 (role and slot from instance tags): volume formatted and mounted, kubeadm init, boot.succeeded', async () => {
    const r = await runBinary(['boot', '--root', root.dir], env);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toBe('');
    expect(execFileSync('blkid', ['-p', '-s', 'TYPE', '-o', 'value', loop.device], { encoding: 'utf8' }).trim()).toBe('ext4');
    expect(execFileSync('findmnt', ['-n', '-o', 'SOURCE', root.at('/var/lib/etcd')], { encoding: 'utf8' }).trim()).toBe(loop.device);
    const kubeadm = (await readRecords(records)).filter((x) => x.tool === 'kubeadm');
    expect(kubeadm.map((x) => x.argv.join(' '))).toEqual([`init --config ${root.at('/etc/kubernetes/zdt-agent/init.yaml')} --skip-token-print`]);
    const msg = await sqs.send(new ReceiveMessageCommand({ QueueUrl: queueUrl, WaitTimeSeconds: 5 }));
    const ev = JSON.parse(JSON.parse(msg.Messages![0]!.Body!).Message);
    expect(ev).toMatchObject({ event: 'boot.succeeded', cluster: 'e2e', role: 'controller', controllerIndex: '00', kubernetesVersion: '1.34.2', details: { joinMode: 'bootstrap', etcdVolumeFormatted: true } });
    const status = await runBinary(['status', '--root', root.dir], env);
    expect(status.stdout).toMatch(/^boot: ok/m);
    expect(status.stdout).toMatch(/etcd-volume\s+ok\s+\d+\.\d+s\s+vol-\w+ attached, formatted ext4, mounted at \/var\/lib\/etcd/);
  });

  it('a second boot on the booted node does nothing and says so', async () => {
    for (const f of ['/etc/kubernetes/kubelet.conf', '/etc/kubernetes/manifests/kube-apiserver.yaml']) {
      fs.mkdirSync(path.dirname(root.at(f)), { recursive: true });
      fs.writeFileSync(root.at(f), '# kubeadm\n');
    }
    const before = (await readRecords(records)).length;
    const r = await runBinary(['boot', '--root', root.dir], env);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toContain('boot finished: nothing to do');
    expect((await readRecords(records)).slice(before).map((x) => `${x.tool} ${x.argv.join(' ')}`)).toEqual(['apk policy kubeadm kubelet kubectl', 'rc-service kubelet status']);
    expect((await sqs.send(new ReceiveMessageCommand({ QueueUrl: queueUrl, WaitTimeSeconds: 1 }))).Messages ?? []).toEqual([]);
  });

  it('with a full state directory the boot exits 1 with one line naming the file, and boot.failed says why', async () => {
    // A 64 KiB tmpfs over the state directory, filled to its last block.
    const dir = root.at('/var/lib/zdt-agent');
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=64k', 'zdt-test-full', dir]);
    try {
      try {
        fs.writeFileSync(path.join(dir, 'filler'), Buffer.alloc(64 * 1024));
      } catch {
        // ENOSPC: full, as meant
      }
      await sqs.send(new ReceiveMessageCommand({ QueueUrl: queueUrl, WaitTimeSeconds: 0, MaxNumberOfMessages: 10 }));
      const r = await runBinary(['boot', '--root', root.dir], { ...env, ZDT_RECORD_FILE: root.at('/none.jsonl') });
      expect(r.code).toBe(1);
      const lines = r.stderr.trim().split('\n').filter((l) => l.startsWith('zdt-agent: '));
      expect(lines).toEqual([expect.stringMatching(new RegExp(`^zdt-agent: StateNotRecorded: the boot cannot record its state: cannot write ${dir}/state\\.json: ENOSPC: `))]);
      expect(fs.existsSync(root.at('/none.jsonl'))).toBe(false); // no work phase ran
      const msg = await sqs.send(new ReceiveMessageCommand({ QueueUrl: queueUrl, WaitTimeSeconds: 5 }));
      const ev = JSON.parse(JSON.parse(msg.Messages![0]!.Body!).Message);
      expect(ev).toMatchObject({ event: 'boot.failed', failure: { error: expect.stringMatching(/^StateNotRecorded: .*state\.json: ENOSPC/) } });
      expect(fs.readdirSync(dir).filter((n) => n.endsWith('.tmp'))).toEqual([]);
    } finally {
      execFileSync('umount', [dir]);
    }
  });

  it('an invalid config exits 2 with one line and changes nothing', async () => {
    const bad = root.at('/bad.yaml');
    fs.writeFileSync(bad, 'etcd: { volume: { filesystem: btrfs } }\n');
    const stateBefore = fs.readFileSync(root.at('/var/lib/zdt-agent/state.json'), 'utf8');
    const r = await runBinary(['boot', '--root', root.dir, '--config', bad], { ...env, ZDT_RECORD_FILE: root.at('/none.jsonl') });
    expect(r.code).toBe(2);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(/^zdt-agent: ConfigInvalid: /);
    expect(fs.existsSync(root.at('/none.jsonl'))).toBe(false);
    expect(fs.readFileSync(root.at('/var/lib/zdt-agent/state.json'), 'utf8')).toBe(stateBefore);
  });
});
