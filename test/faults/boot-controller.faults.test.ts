import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { CreateBucketCommand, GetObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { CreateTopicCommand, SNSClient } from '@aws-sdk/client-sns';
import { afterAll, beforeAll, describe, expect } from 'vitest';
import type { ConfigInput } from '../../agent/config/schema.js';
import type { Fault } from '../testbed/fidelity-proxy.js';
import { fillUp, mountFullDisk } from '../testbed/full-disk.js';
import { kubeApiserverAvailable, startKube, type Kube } from '../testbed/kube.js';
import { readRecords } from '../testbed/standins.js';
import { REGION, awsSection, credentials, startAwsWorld, startController00, writeConfig, type AwsWorld, type BinaryController00 } from '../support/boot-env.js';
import { errorLine, faultTable, runScenarioAgent, snsEvents, strayTempFiles, undoAfterEachScenario, type Outcome } from './scenario.js';

/**
 * Fault injection for controller 00's `zdt-agent boot` (a process, as cloud-init runs it) on
 * a real loop device as its etcd volume: EC2 throttling, failing, resetting, slow and hung
 * around the attach; the backups unreadable while the volume is blank (no new cluster over
 * them); the API server stopped before the node self-delete grant; the bootstrap material's
 * upload failing after `kubeadm init`; a full state directory and a full etcd volume. A
 * volume is formatted only when it is blank, and never twice.
 */

const apiserver = await kubeApiserverAvailable();
if (!apiserver && process.env.CI === 'true') throw new Error('kube-apiserver is missing under CI: run test/testbed/k8s/build.sh');

const BUCKET = 'zdt-fault-controllers';

let w: AwsWorld;
let kube: Kube;
let topicArn: string;
let direct: S3Client;
let clusters = 0;
const undo = undoAfterEachScenario(() => w?.proxy);

beforeAll(async () => {
  if (!apiserver) return;
  w = await startAwsWorld();
  kube = await startKube();
  const common = { region: REGION, endpoint: w.proxy.endpoint, credentials };
  await new S3Client({ ...common, forcePathStyle: true }).send(new CreateBucketCommand({ Bucket: BUCKET, CreateBucketConfiguration: { LocationConstraint: REGION } }));
  topicArn = (await new SNSClient(common).send(new CreateTopicCommand({ Name: 'zdt-fault-controller-events' }))).TopicArn!;
  direct = new S3Client({ region: REGION, endpoint: w.moto.endpoint, credentials, forcePathStyle: true });
}, 180_000);

afterAll(async () => {
  await kube?.stop();
  await w?.stop();
});

interface Controller extends BinaryController00 {
  cluster: string;
  boot(limitMs?: number): Promise<Outcome>;
  kubeadmInits(): Promise<number>;
  /** The etcd volume's filesystem type and UUID ('' when blank). */
  filesystem(): string;
  /** What kubeadm leaves on a control-plane node, so that the next boot finds it joined. */
  asKubeadmLeftIt(): void;
  events(): string[];
}

/**
 * A fresh controller 00 of its own cluster (instance, 64 MiB loop device as its blank etcd
 * volume, AEMM, node root), with short bounds: attach 3 s, control-plane wait 4 s, 2 s requests.
 */
async function controller00(o: { etcd?: Record<string, unknown>; bootstrap?: boolean; aws?: Record<string, unknown> } = {}): Promise<Controller> {
  const cluster = `ctl${++clusters}`;
  const config: ConfigInput & { cluster: { name: string } } = {
    cluster: { name: cluster, kubernetesVersion: '1.34.X', ...(o.bootstrap ? { bootstrap: { s3Uri: `s3://${BUCKET}/${cluster}` } } : {}) },
    node: { role: 'controller', controllerIndex: '00' },
    etcd: { backup: { bucket: BUCKET }, volume: { attachTimeout: 3, detachTimeout: 2, deviceTimeout: 5 }, ...o.etcd },
    notify: { snsTopicArn: topicArn },
    boot: { controlPlaneWait: 4, dnsWait: 0, kubeadmTimeout: 30 },
  };
  const node = await startController00(w, { config, adminKubeconfig: kube.adminKubeconfig });
  undo.later(() => node.stop());
  writeConfig(node.root.dir, {
    ...config,
    aws: { ...awsSection(w.proxy.endpoint), maxAttempts: 3, requestTimeoutMs: 2000, connectTimeoutMs: 1000, imdsEndpoint: node.imds.endpoint, imdsTimeout: 5, ...o.aws },
  });
  const env = { ...node.env, AWS_EC2_METADATA_DISABLED: 'true' };
  return {
    ...node,
    cluster,
    boot: (limitMs = 90_000) => runScenarioAgent({ root: node.root.dir, args: ['boot', '--root', node.root.dir], env, record: 'boot', limitMs }),
    kubeadmInits: async () => (await readRecords(node.records)).filter((r) => r.tool === 'kubeadm' && r.argv[0] === 'init').length,
    filesystem: () => {
      try {
        const tags = execFileSync('blkid', ['-p', '-o', 'export', node.loop.device], { encoding: 'utf8' });
        return ['TYPE', 'UUID'].map((k) => new RegExp(`^${k}=(.*)$`, 'm').exec(tags)?.[1] ?? '?').join(' ');
      } catch {
        return ''; // blkid -p exits 2 when it finds nothing
      }
    },
    asKubeadmLeftIt: () => {
      for (const f of ['/etc/kubernetes/kubelet.conf', '/etc/kubernetes/manifests/kube-apiserver.yaml']) {
        fs.mkdirSync(path.dirname(node.root.at(f)), { recursive: true });
        fs.writeFileSync(node.root.at(f), '# written by kubeadm init\n');
      }
    },
    events: () =>
      snsEvents(w.proxy)
        .filter((m) => m.cluster === cluster)
        .map((m) => m.event),
  };
}

async function observed(c: Controller, r: Outcome): Promise<string> {
  const line = errorLine(r);
  const fs = c.filesystem();
  return [
    r.summary,
    line ? line.replace(/^zdt-agent: /, '').slice(0, 110) : undefined,
    fs ? `volume ${fs.split(' ')[0]}` : 'volume blank',
    `kubeadm init ${await c.kubeadmInits()}`,
    c.events().join(',') || 'no event',
    `${(r.ms / 1000).toFixed(1)}s`,
  ]
    .filter(Boolean)
    .join('; ');
}

const scenario = faultTable('boot-controller');

describe.skipIf(!apiserver)('controller 00 boot under EC2 faults around its etcd volume', () => {
  // Faults that go away within the SDK's retries: the boot does not notice.
  const passing: Array<[string, Fault]> = [
    ['AttachVolume throttled twice (RequestLimitExceeded)', { action: 'AttachVolume', kind: 'throttle', times: 2 }],
    ['AttachVolume resets the connection once', { action: 'AttachVolume', kind: 'reset', times: 1 }],
  ];
  for (const [name, fault] of passing) {
    scenario(name, 'exit 0; the blank volume formatted once, mounted; kubeadm init once', async (t) => {
      const c = await controller00();
      w.proxy.inject(fault);
      const r = await c.boot();
      t.observe(await observed(c, r));
      expect(r.code).toBe(0);
      expect(c.filesystem()).toMatch(/^ext4 /);
      expect(await c.kubeadmInits()).toBe(1);
    });
  }

  scenario('the attach takes 3 s (attaching) and every DescribeVolumes is slowed by 0.5 s', 'exit 0 (etcd.volume.attachTimeout 10 s); formatted once', async (t) => {
    const c = await controller00({ etcd: { volume: { attachTimeout: 10 } } });
    w.proxy.setAttachDelayMs(3000);
    undo.later(() => w.proxy.setAttachDelayMs(0));
    w.proxy.inject({ action: 'DescribeVolumes', kind: 'latency', ms: 500 });
    const r = await c.boot();
    t.observe(await observed(c, r));
    expect(r.code).toBe(0);
    expect(c.filesystem()).toMatch(/^ext4 /);
  });

  scenario('AttachVolume answers 500 for good', 'exit 3 (EtcdVolumeAttachFailed) after attachTimeout; the volume untouched; no kubeadm', async (t) => {
    const c = await controller00();
    w.proxy.inject({ action: 'AttachVolume', kind: '500' });
    const r = await c.boot();
    t.observe(await observed(c, r));
    expect(r.code).toBe(3);
    expect(errorLine(r)).toMatch(/EtcdVolumeAttachFailed/);
    expect(r.record?.phases['etcd-volume']?.result).toBe('deadline');
    expect(c.filesystem()).toBe('');
    expect(await c.kubeadmInits()).toBe(0);
    expect(c.events()).toEqual(['boot.failed']);
  });

  scenario('DescribeVolumes hangs', 'exit 1 (AwsCallFailed naming EC2 DescribeVolumes) after the request timeouts; the volume untouched; no kubeadm', async (t) => {
    const c = await controller00({ aws: { maxAttempts: 2 } });
    w.proxy.inject({ action: 'DescribeVolumes', kind: 'hang' });
    const r = await c.boot();
    t.observe(await observed(c, r));
    expect(r.code).toBe(1);
    expect(errorLine(r)).toMatch(/AwsCallFailed: EC2 DescribeVolumes: /);
    expect(c.filesystem()).toBe('');
    expect(await c.kubeadmInits()).toBe(0);
  });
});

describe.skipIf(!apiserver)('controller 00 boot when the backups cannot be read', () => {
  scenario('S3 ListObjectsV2 of the backups answers 500 (blank volume)', 'exit 1 naming S3 ListObjectsV2; no kubeadm init: no new cluster over backups that could not be read', async (t) => {
    const c = await controller00();
    w.proxy.inject({ action: 's3:ListObjectsV2', kind: '500' });
    const r = await c.boot();
    t.observe(await observed(c, r));
    expect(r.code).toBe(1);
    expect(errorLine(r)).toMatch(/S3 ListObjectsV2/);
    expect(r.record?.phases['etcd-restore']?.result).toBe('failed');
    expect(await c.kubeadmInits()).toBe(0);
  });
});

describe.skipIf(!apiserver)('controller 00 boot after kubeadm init', () => {
  scenario(
    'the API server is stopped (SIGSTOP) when the node self-delete grant is applied; the next boot after it is back',
    'exit 3 (NodeRbacNotApplied) within boot.controlPlaneWait; then exit 0 with the grant applied and no second kubeadm init',
    async (t) => {
      const c = await controller00();
      const pid = kube.apiserverPid()!;
      process.kill(pid, 'SIGSTOP');
      const r = await c.boot().finally(() => process.kill(pid, 'SIGCONT'));
      c.asKubeadmLeftIt();
      const again = await c.boot();
      t.observe(`${await observed(c, r)}; then ${again.summary}: ${again.record?.phases['control-plane']?.detail ?? ''}`);
      expect(r.code).toBe(3);
      expect(errorLine(r)).toMatch(/NodeRbacNotApplied/);
      expect(r.record?.phases['control-plane']?.result).toBe('deadline');
      expect(again.code).toBe(0);
      expect(again.record?.phases['control-plane']?.detail).toMatch(/applied zdt-agent:node-self-delete/);
      expect(await c.kubeadmInits()).toBe(1);
    },
  );

  scenario(
    'S3 PutObject of the PKI answers 500 after kubeadm init (the token went up before it); the next boot after S3 is back',
    'exit 1 naming S3 PutObject; then exit 0 with the PKI published for the others, no second kubeadm init',
    async (t) => {
      const c = await controller00({ bootstrap: true });
      // The PKI kubeadm init generates (the stand-in writes none).
      for (const f of ['ca.crt', 'ca.key', 'sa.key', 'sa.pub', 'front-proxy-ca.crt', 'front-proxy-ca.key', 'etcd/ca.crt', 'etcd/ca.key']) {
        fs.mkdirSync(path.dirname(c.root.at(`/etc/kubernetes/pki/${f}`)), { recursive: true });
        fs.writeFileSync(c.root.at(`/etc/kubernetes/pki/${f}`), `${f}\n`);
      }
      w.proxy.inject({ action: 's3:PutObject', kind: '500', after: 1 });
      const r = await c.boot();
      w.proxy.clearFaults();
      c.asKubeadmLeftIt();
      const again = await c.boot();
      const published = await Promise.all(
        ['token', 'pki/ca.crt', 'pki/etcd/ca.key'].map((k) =>
          direct.send(new GetObjectCommand({ Bucket: BUCKET, Key: `${c.cluster}/${k}` })).then(
            () => k,
            () => undefined,
          ),
        ),
      );
      t.observe(`${await observed(c, r)}; then ${again.summary}; published: ${published.filter(Boolean).join(' ') || 'nothing'}`);
      expect(r.code).toBe(1);
      expect(errorLine(r)).toMatch(/S3 PutObject/);
      expect(again.code).toBe(0);
      expect(published).toEqual(['token', 'pki/ca.crt', 'pki/etcd/ca.key']);
      expect(await c.kubeadmInits()).toBe(1);
    },
  );
});

describe.skipIf(!apiserver)('controller 00 boot on full disks', () => {
  scenario(
    'the state directory is full (a real full tmpfs)',
    'exit 1 (StateNotRecorded naming the state file); no work phase: the volume untouched, no kubeadm; boot.failed sent; no temp file left',
    async (t) => {
      const c = await controller00();
      const disk = await mountFullDisk(c.root.at('/var/lib/zdt-agent'));
      undo.later(() => disk.unmount());
      const r = await c.boot();
      t.observe(await observed(c, r));
      // Waits for the `secrets` helper's fixes (issue 11, docs/boot.md "When the state cannot
      // be written": a boot that cannot record its state fails before any work phase;
      // writeFileAtomic's temp files on ENOSPC).
      expect(r.code).toBe(1);
      expect(errorLine(r)).toMatch(/StateNotRecorded: .*state\.json/);
      expect(c.filesystem()).toBe('');
      expect(await c.kubeadmInits()).toBe(0);
      expect(c.events()).toEqual(['boot.failed']);
      expect(strayTempFiles(c.root.at('/var/lib/zdt-agent'))).toEqual([]);
    },
  );

  scenario(
    'the etcd volume holds a full filesystem (no room for the identity file)',
    'exit 1 naming zdt-agent-volume.json; never formatted (same UUID); no kubeadm init; no temp file left',
    async (t) => {
      const c = await controller00();
      // No blocks reserved for root: the agent is root, and a full volume is full for it too.
      execFileSync('mkfs.ext4', ['-q', '-F', '-m', '0', '-L', 'etcd', c.loop.device]);
      const before = c.filesystem();
      const mnt = fs.mkdtempSync(path.join(c.root.dir, 'fill-'));
      execFileSync('mount', [c.loop.device, mnt]);
      try {
        fillUp(mnt);
      } finally {
        execFileSync('umount', [mnt]);
      }
      const r = await c.boot();
      t.observe(await observed(c, r));
      expect(r.code).toBe(1);
      expect(r.record?.phases['etcd-volume']?.result).toBe('failed');
      expect(c.filesystem()).toBe(before);
      expect(await c.kubeadmInits()).toBe(0);
      // Waits for the `secrets` helper's fixes (issue 11): ENOSPC messages name the file, and
      // writeFileAtomic removes its temp file when the write fails.
      expect(errorLine(r)).toMatch(/zdt-agent-volume\.json/);
      execFileSync('mount', [c.loop.device, mnt]);
      try {
        expect(strayTempFiles(mnt)).toEqual([]);
      } finally {
        execFileSync('umount', [mnt]);
      }
    },
  );
});
