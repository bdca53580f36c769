import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { DescribeVolumesCommand } from '@aws-sdk/client-ec2';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { readVolumeIdentity } from '../../agent/boot/etcd-volume.js';
import { mountAt } from '../../agent/host/blockdev.js';
import { readState } from '../../agent/log/state.js';
import { startImds, type Imds } from '../testbed/imds.js';
import { kubeApiserverAvailable, startKube, type Kube } from '../testbed/kube.js';
import { createLoopDevice, type LoopDevice } from '../testbed/loop.js';
import { makeTempRoot, type TempRoot } from '../testbed/root.js';
import { readRecords, standinEnv, type StandinRecord } from '../testbed/standins.js';
import { AZ, REGION, agentBundle, awsSection, createEtcdVolume, launchInstance, runAgent, startAgent, startAwsWorld, writeConfig, type AwsWorld } from '../support/boot-env.js';

/**
 * `zdt-agent boot` as a process (bundled from source), on a controller 00 with a real loop
 * device as its etcd volume, moto, AEMM for IMDS and the recording stand-ins for apk and
 * kubeadm (the admin.conf it leaves names a real kube-apiserver, which takes the node
 * self-delete grant): boot twice is a no-op the second time, and kill -9 anywhere converges.
 */

let w: AwsWorld;
let kube: Kube;
const cleanups: Array<() => Promise<void>> = [];

beforeAll(async () => {
  if (!(await kubeApiserverAvailable())) throw new Error('kube-apiserver is missing: run test/testbed/k8s/build.sh');
  w = await startAwsWorld();
  kube = await startKube();
  await agentBundle();
});
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});
afterAll(async () => {
  await kube?.stop();
  await w?.stop();
});

const APK_VERSIONS = '1.34.2-r0,1.34.1-r0,1.33.5-r0';

interface Node {
  root: TempRoot;
  loop: LoopDevice;
  imds: Imds;
  volumeId: string;
  instanceId: string;
  env: NodeJS.ProcessEnv;
  records: string;
  mkfsCalls: string;
  wrapperPids: string;
}

/**
 * A controller 00 node. `mkfs.ext4` and `mount` on its PATH are wrappers that record each call
 * and their PID, then run the real tool and linger a moment, so that a kill lands between the
 * tool's work and the agent noticing it.
 */
async function controllerNode(name: string): Promise<Node> {
  const root = await makeTempRoot();
  cleanups.push(() => root.cleanup());
  const loop = await createLoopDevice(64);
  cleanups.push(() => loop.detach());
  const inst = await launchInstance(w);
  const volumeId = await createEtcdVolume(w, { cluster: name });
  await root.linkVolume(volumeId, loop.device);
  const imds = await startImds({ instanceId: inst.instanceId, region: REGION, availabilityZone: AZ, instanceType: 'm5.large', privateIp: inst.privateIp, tags: { Name: `${name}-controller-00` } });
  cleanups.push(() => imds.stop());
  writeConfig(root.dir, {
    cluster: { name, kubernetesVersion: '1.34.X' },
    node: { role: 'controller', controllerIndex: '00' },
    etcd: { volume: { attachTimeout: 20, detachTimeout: 3, deviceTimeout: 5 } },
    aws: { ...awsSection(w.proxy.endpoint), imdsEndpoint: imds.endpoint },
  });
  const work = root.at('/tmp-test');
  fs.mkdirSync(work, { recursive: true });
  const wrappers = path.join(work, 'bin');
  fs.mkdirSync(wrappers);
  const mkfsCalls = path.join(work, 'mkfs-calls');
  const wrapperPids = path.join(work, 'wrapper-pids');
  for (const [tool, real] of [['mkfs.ext4', '/usr/sbin/mkfs.ext4'], ['mount', '/usr/bin/mount']] as const) {
    fs.writeFileSync(
      path.join(wrappers, tool),
      `#!/bin/bash\necho $$ >> ${wrapperPids}\n${tool === 'mkfs.ext4' ? `echo "$*" >> ${mkfsCalls}\n` : ''}${real} "$@"; rc=$?\nsleep 0.3\nexit $rc\n`,
      { mode: 0o755 },
    );
  }
  const records = path.join(work, 'records.jsonl');
  const base = standinEnv(records, {
    ZDT_APK_VERSIONS: APK_VERSIONS,
    ZDT_STANDIN_KUBEADM_ADMIN_CONF: kube.adminKubeconfig,
    AWS_ACCESS_KEY_ID: 'testing',
    AWS_SECRET_ACCESS_KEY: 'testing',
  });
  const env = { ...base, PATH: `${wrappers}:${base.PATH}` };
  return { root, loop, imds, volumeId, instanceId: inst.instanceId, env, records, mkfsCalls, wrapperPids };
}

const boot = (n: Node) => runAgent(['boot', '--root', n.root.dir], n.env);
const blkidUuid = (dev: string) => execFileSync('blkid', ['-p', '-s', 'UUID', '-o', 'value', dev], { encoding: 'utf8' }).trim();
const lines = (f: string) => (fs.existsSync(f) ? fs.readFileSync(f, 'utf8').split('\n').filter(Boolean) : []);

/** What else kubeadm init leaves behind that the agent looks at (the stand-in writes only admin.conf). */
function asKubeadmInitWould(n: Node): void {
  for (const f of ['/etc/kubernetes/kubelet.conf', '/etc/kubernetes/manifests/kube-apiserver.yaml']) {
    fs.mkdirSync(path.dirname(n.root.at(f)), { recursive: true });
    fs.writeFileSync(n.root.at(f), '# written by kubeadm\n');
  }
}

const summary = (r: StandinRecord) => `${r.tool} ${r.argv.join(' ')}`;

describe('zdt-agent boot (process)', () => {
  it('bootstraps controller 00, and a second boot is a fast no-op', async () => {
    const n = await controllerNode(`boot2x-${process.pid}`);
    const first = await boot(n);
    expect(first.code, first.stderr).toBe(0);
    const state = readState(n.root.at('/var/lib/zdt-agent/state.json'), 'x');
    expect(state.boot?.result).toBe('ok');
    expect(Object.entries(state.boot!.phases).map(([k, p]) => `${k}:${p.result}`)).toEqual([
      'identity:ok',
      'neuron:skipped',
      'etcd-volume:ok',
      'etcd-restore:skipped',
      'kube-version:ok',
      'control-plane:ok',
      'kube-upgrade:ok',
      'worker-join:skipped',
      'takeover:skipped',
      'signal:skipped',
      'notify:skipped',
    ]);
    const calls = (await readRecords(n.records)).map(summary);
    expect(calls).toEqual([
      'apk policy kubeadm kubelet kubectl',
      'apk add kubeadm=1.34.2-r0 kubelet=1.34.2-r0 kubectl=1.34.2-r0',
      `kubeadm init --config ${n.root.at('/etc/kubernetes/zdt-agent/init.yaml')} --skip-token-print`,
    ]);
    expect(lines(n.mkfsCalls)).toHaveLength(1);
    asKubeadmInitWould(n);

    const second = await boot(n);
    expect(second.code, second.stderr).toBe(0);
    const again = (await readRecords(n.records)).map(summary).slice(calls.length);
    // Only looks: what the package source offers and whether kubelet runs.
    expect(again).toEqual(['apk policy kubeadm kubelet kubectl', 'rc-service kubelet status']);
    expect(lines(n.mkfsCalls)).toHaveLength(1);
    const phases = readState(n.root.at('/var/lib/zdt-agent/state.json'), 'x').boot!.phases;
    expect(phases['etcd-volume']!.detail).toMatch(/mounted at \/var\/lib\/etcd$/);
    expect(phases['control-plane']!.detail).toBe('already a control-plane node');
    // "Does not hang": generous; bench/boot.mjs measures the real figure.
    expect(second.ms).toBeLessThan(15_000);
  });

  // Each kill lands at a different step of the etcd volume: before the attach call, while
  // waiting for the attachment, right after mkfs, right after mount.
  const killPoints = [
    { at: 'found the etcd volume', delayMs: 0, formatted: false },
    { at: 'attaching the etcd volume', delayMs: 50, formatted: false },
    { at: 'formatting', delayMs: 200, formatted: true },
    { at: 'mounting the etcd volume', delayMs: 150, formatted: true },
  ];
  it.each(killPoints)('kill -9 after $at, and a re-run converges: formatted once, mounted, identity written', async ({ at, delayMs, formatted }) => {
    const n = await controllerNode(`kill-${killPoints.findIndex((k) => k.at === at)}-${process.pid}`);
    w.proxy.setAttachDelayMs(400);
    try {
      const run = await startAgent(['boot', '--root', n.root.dir], n.env);
      const deadline = Date.now() + 60_000;
      while (!run.output().includes(at)) {
        if (Date.now() > deadline) throw new Error(`"${at}" never appeared:\n${run.output()}`);
        await sleep(10);
      }
      await sleep(delayMs);
      process.kill(run.child.pid!, 'SIGKILL');
      const killed = await run.done;
      expect(killed.signal).toBe('SIGKILL');
      // The node "crashed": its tools die with it.
      for (const pid of lines(n.wrapperPids).map(Number)) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          // Already finished.
        }
      }
      const uuidAfterKill = (() => {
        try {
          return blkidUuid(n.loop.device);
        } catch {
          return undefined; // blank
        }
      })();

      expect(uuidAfterKill !== undefined).toBe(formatted);

      const rerun = await boot(n);
      expect(rerun.code, rerun.stderr).toBe(0);
      expect(mountAt(n.root.at('/var/lib/etcd'))?.source).toBe(n.loop.device);
      expect(readVolumeIdentity(n.root.at('/var/lib/etcd'))).toMatchObject({ volumeId: n.volumeId });
      // Never formatted twice: a filesystem made before the kill is the one in use.
      if (uuidAfterKill) expect(blkidUuid(n.loop.device)).toBe(uuidAfterKill);
      expect(lines(n.mkfsCalls).length).toBeLessThanOrEqual(uuidAfterKill ? 1 : 2);
      const v = (await w.ec2.send(new DescribeVolumesCommand({ VolumeIds: [n.volumeId] }))).Volumes![0]!;
      expect(v.Attachments?.map((a) => `${a.InstanceId}:${a.State}`)).toEqual([`${n.instanceId}:attached`]);
    } finally {
      w.proxy.setAttachDelayMs(0);
    }
  });
});
