import { execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { DescribeVolumesCommand, EC2Client } from '@aws-sdk/client-ec2';
import { GetObjectCommand, ListMultipartUploadsCommand, ListObjectsV2Command, S3Client } from '@aws-sdk/client-s3';
import { CreateTopicCommand, SNSClient } from '@aws-sdk/client-sns';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { readVolumeIdentity } from '../../agent/boot/etcd-volume.js';
import { MANIFEST_NAME, SNAPSHOT_NAME, type Manifest } from '../../agent/etcd/manifest.js';
import { readTar } from '../../agent/etcd/tar.js';
import { readState } from '../../agent/log/state.js';
import { startEtcd, type EtcdMember } from '../testbed/etcd.js';
import { startImds, type Imds } from '../testbed/imds.js';
import { kubeApiserverAvailable, startKube, type Kube } from '../testbed/kube.js';
import { makeTempRoot, type TempRoot } from '../testbed/root.js';
import { readRecords } from '../testbed/standins.js';
import { BINARY, REGION, credentials, runBinary, startAwsWorld, startController00, type AwsWorld, type BinaryController00 } from '../support/boot-env.js';
import { makeBucket } from '../support/terminate-env.js';

/**
 * Crash and restart: the built binary is SIGKILLed at every boot phase boundary and inside
 * attach, mkfs, mount, kubeadm init and each step of an etcd backup; then run again. The
 * re-run must converge to what an uninterrupted run leaves, a volume that holds a filesystem
 * is never formatted again, and no S3 object claims to be a complete backup when it is not.
 *
 * Deterministic kill points: a gate in front of a tool (first on PATH) writes its pid and
 * blocks before or after running the real tool; an AWS call is held by the fidelity proxy
 * ('hang': never forwarded) and the test waits until the proxy saw it; an attachment is held
 * in `attaching` while moto already has it. The gate's process and the binary are killed by
 * their pids. The table of crash points and what the re-run showed is printed at the end.
 */

const BUCKET = 'zdt-crash';
const GATED_TOOLS = ['blkid', 'mkfs.ext4', 'mount', 'apk', 'kubeadm'];

type Gate =
  | { kind: 'tool'; tool: string; args: string; when: 'before' | 'after' }
  | { kind: 'aws'; action: string }
  | { kind: 'attached' };

interface Row {
  point: string;
  observed: string;
}
const table: Row[] = [];

let w: AwsWorld;
let kube: Kube;
let s3: S3Client;
let topicArn: string;
let gateDir: string;

/** Gates: `<tool>` scripts that block when ZDT_CRASH_TOOL/ARGS match, else run the tool (next on PATH). Every call is logged. */
function writeGates(): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'zdt-crash-gates-'));
  for (const tool of GATED_TOOLS) {
    fs.writeFileSync(
      path.join(dir, tool),
      `#!/bin/sh
tool=$(basename "$0")
[ -n "$ZDT_CRASH_LOG" ] && echo "$tool $*" >>"$ZDT_CRASH_LOG"
rest=\${PATH#*:}
# What the real kubeadm init leaves that the recording stand-in does not: kubelet.conf and the
# static pod manifests, under the node root its --config path is in.
kubeadm_files() {
  [ "$tool" = kubeadm ] && [ "$1" = init ] || return 0
  root=$(printf '%s\n' "$@" | sed -n '/^--config$/{n;s#/etc/kubernetes/zdt-agent/.*##;p}')
  mkdir -p "$root/etc/kubernetes/manifests"
  for f in kubelet.conf manifests/kube-apiserver.yaml manifests/kube-controller-manager.yaml manifests/kube-scheduler.yaml manifests/etcd.yaml; do
    echo '# kubeadm init' >"$root/etc/kubernetes/$f"
  done
}
if [ "$tool" = "$ZDT_CRASH_TOOL" ] && [ ! -e "$ZDT_CRASH_REACHED" ] && echo "$*" | grep -q -- "$ZDT_CRASH_ARGS"; then
  if [ "$ZDT_CRASH_WHEN" = after ]; then PATH=$rest "$tool" "$@" && kubeadm_files "$@"; fi
  echo $$ >"$ZDT_CRASH_REACHED.tmp" && mv "$ZDT_CRASH_REACHED.tmp" "$ZDT_CRASH_REACHED"
  exec sleep 600
fi
PATH=$rest "$tool" "$@" || exit $?
kubeadm_files "$@"
`,
      { mode: 0o755 },
    );
  }
  return dir;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const killQuietly = (pid: number) => {
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    // gone
  }
};

/**
 * Runs the binary with `args` until the gate is reached, then SIGKILLs it (and the gate's
 * process). Fails when the run ends without reaching the gate.
 */
async function runUntilKilled(args: string[], env: NodeJS.ProcessEnv, gate: Gate, o: { volumeId?: string; workDir: string }): Promise<string> {
  const reached = path.join(o.workDir, `reached-${process.hrtime.bigint()}`);
  const gateEnv: Record<string, string> =
    gate.kind === 'tool' ? { ZDT_CRASH_TOOL: gate.tool, ZDT_CRASH_ARGS: gate.args, ZDT_CRASH_WHEN: gate.when, ZDT_CRASH_REACHED: reached } : {};
  const seenBefore = gate.kind === 'aws' ? w.proxy.calls(gate.action) : 0;
  if (gate.kind === 'aws') w.proxy.inject({ action: gate.action, kind: 'hang', times: 1 });
  if (gate.kind === 'attached') w.proxy.setAttachDelayMs(600_000);
  const child = spawn(BINARY, args, { env: { ...env, ...gateEnv }, stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (c: Buffer) => (stderr += c.toString()));
  child.stdout!.resume();
  let exited: number | null | undefined;
  const done = new Promise<void>((resolve) => child.once('exit', (code) => ((exited = code), resolve())));
  const deadline = Date.now() + 90_000;
  let where = '';
  try {
    for (;;) {
      if (exited !== undefined) throw new Error(`the run ended (exit ${exited}) before the crash point was reached:\n${stderr.slice(-2000)}`);
      if (Date.now() > deadline) throw new Error(`crash point not reached in 90 s:\n${stderr.slice(-2000)}`);
      if (gate.kind === 'tool' && fs.existsSync(reached)) {
        where = `${gate.tool} ${gate.when}`;
        break;
      }
      if (gate.kind === 'aws' && w.proxy.calls(gate.action) > seenBefore) {
        where = `${gate.action} in flight`;
        break;
      }
      if (gate.kind === 'attached' && o.volumeId) {
        const ec2 = new EC2Client({ region: REGION, endpoint: w.moto.endpoint, credentials });
        const v = (await ec2.send(new DescribeVolumesCommand({ VolumeIds: [o.volumeId] }))).Volumes?.[0];
        ec2.destroy();
        if (v?.Attachments?.length) {
          where = 'attached, the agent waiting for the attachment';
          break;
        }
      }
      await sleep(50);
    }
  } finally {
    killQuietly(child.pid!);
    if (fs.existsSync(reached)) killQuietly(Number(fs.readFileSync(reached, 'utf8').trim()));
    await done;
    w.proxy.clearFaults();
    w.proxy.setAttachDelayMs(0);
  }
  return where;
}

const blkid = (device: string, tag: 'UUID' | 'TYPE'): string => {
  try {
    return execFileSync('blkid', ['-p', '-s', tag, '-o', 'value', device], { encoding: 'utf8' }).trim();
  } catch {
    return ''; // no filesystem
  }
};
const fsUuid = (device: string) => blkid(device, 'UUID');
const mountSource = (dir: string): string => {
  try {
    return execFileSync('findmnt', ['-n', '-o', 'SOURCE', dir], { encoding: 'utf8' }).trim();
  } catch {
    return '';
  }
};
const gateLog = (file: string) => (fs.existsSync(file) ? fs.readFileSync(file, 'utf8').split('\n').filter(Boolean) : []);

/** What a finished boot of controller 00 leaves: compared between the baseline and every re-run. */
function bootSignature(node: BinaryController00, code: number | null) {
  const state = readState(node.root.at('/var/lib/zdt-agent/state.json'), 'x');
  return {
    exit: code,
    result: state.boot?.result,
    mountedFrom: mountSource(node.root.at('/var/lib/etcd')) === node.loop.device,
    filesystem: blkid(node.loop.device, 'TYPE'),
    volumeOfThisCluster: readVolumeIdentity(node.root.at('/var/lib/etcd'))?.cluster === `crash${clusters}`,
    adminConf: fs.existsSync(node.root.at('/etc/kubernetes/admin.conf')),
    initMarker: fs.existsSync(node.root.at('/var/lib/zdt-agent/kubeadm-init.started')),
    joinMode: state.facts.joinMode,
    version: state.facts.kubernetesVersion,
  };
}

beforeAll(async () => {
  if (!fs.existsSync(BINARY)) throw new Error(`${BINARY} is missing: run 'make binary' first`);
  if (!(await kubeApiserverAvailable())) throw new Error('kube-apiserver is missing: run test/testbed/k8s/build.sh');
  w = await startAwsWorld();
  kube = await startKube();
  s3 = new S3Client({ region: REGION, endpoint: w.proxy.endpoint, credentials, forcePathStyle: true });
  await makeBucket(s3, BUCKET);
  topicArn = (await new SNSClient({ region: REGION, endpoint: w.proxy.endpoint, credentials }).send(new CreateTopicCommand({ Name: 'zdt-crash' }))).TopicArn!;
  gateDir = writeGates();
}, 180_000);

afterAll(async () => {
  await kube?.stop();
  await w?.stop();
  if (gateDir) fs.rmSync(gateDir, { recursive: true, force: true });
  if (table.length) {
    const width = Math.max(...table.map((r) => r.point.length));
    process.stdout.write(`\ncrash point${' '.repeat(width - 11)}  observed after re-run\n${table.map((r) => `${r.point.padEnd(width)}  ${r.observed}`).join('\n')}\n`);
  }
});

let clusters = 0;
/** A fresh controller 00 of a cluster of its own (one etcd volume per cluster and AZ). */
async function controller(): Promise<BinaryController00> {
  return startController00(w, {
    config: {
      cluster: { name: `crash${++clusters}`, kubernetesVersion: '1.34.X' },
      notify: { snsTopicArn: topicArn },
      etcd: { backup: { bucket: BUCKET } },
    },
    adminKubeconfig: kube.adminKubeconfig,
  });
}

const withGates = (node: BinaryController00, log: string): NodeJS.ProcessEnv => ({ ...node.env, PATH: `${gateDir}:${node.env.PATH}`, ZDT_CRASH_LOG: log });

const BOOT_POINTS: Array<{ point: string; gate: Gate }> = [
  { point: 'boot: identity -> etcd-volume (DescribeVolumes)', gate: { kind: 'aws', action: 'DescribeVolumes' } },
  { point: 'boot: inside attach, before it took effect', gate: { kind: 'aws', action: 'AttachVolume' } },
  { point: 'boot: inside attach, attached, not yet seen', gate: { kind: 'attached' } },
  { point: 'boot: attached -> probing the device (blkid)', gate: { kind: 'tool', tool: 'blkid', args: '', when: 'before' } },
  { point: 'boot: inside mkfs, nothing written', gate: { kind: 'tool', tool: 'mkfs.ext4', args: '', when: 'before' } },
  { point: 'boot: inside mkfs, filesystem written', gate: { kind: 'tool', tool: 'mkfs.ext4', args: '', when: 'after' } },
  { point: 'boot: inside mount, mounted', gate: { kind: 'tool', tool: 'mount', args: '-t', when: 'after' } },
  { point: 'boot: etcd-volume -> etcd-restore (ListObjectsV2)', gate: { kind: 'aws', action: 's3:ListObjectsV2' } },
  { point: 'boot: etcd-restore -> kube-version (apk policy)', gate: { kind: 'tool', tool: 'apk', args: 'policy', when: 'before' } },
  { point: 'boot: inside kube-version (apk add)', gate: { kind: 'tool', tool: 'apk', args: '^add', when: 'before' } },
  { point: 'boot: kube-version -> control-plane (kubeadm init)', gate: { kind: 'tool', tool: 'kubeadm', args: '^init', when: 'before' } },
  { point: 'boot: inside kubeadm init, files written', gate: { kind: 'tool', tool: 'kubeadm', args: '^init', when: 'after' } },
  { point: 'boot: control-plane -> notify (SNS Publish)', gate: { kind: 'aws', action: 'Publish' } },
];

describe('SIGKILL at every boot crash point, then boot again', () => {
  let baseline: ReturnType<typeof bootSignature>;

  it('an uninterrupted boot (the state every re-run must reach)', async () => {
    const node = await controller();
    try {
      const r = await runBinary(['boot', '--root', node.root.dir], withGates(node, node.root.at('/gates.log')));
      expect(r.code, r.stderr).toBe(0);
      baseline = bootSignature(node, r.code);
      expect(baseline).toMatchObject({ exit: 0, result: 'ok', mountedFrom: true, filesystem: 'ext4', volumeOfThisCluster: true, adminConf: true, initMarker: false, joinMode: 'bootstrap' });
      table.push({ point: 'boot: no crash (baseline)', observed: `exit 0, ${JSON.stringify(baseline)}` });
    } finally {
      await node.stop();
    }
  }, 180_000);

  it.each(BOOT_POINTS)('$point', async ({ point, gate }) => {
    const node = await controller();
    const log = node.root.at('/gates.log');
    try {
      const volumeLink = fs.readdirSync(node.root.at('/dev/disk/by-id'))[0]!;
      const volumeId = `vol-${volumeLink.replace(/^nvme-Amazon_Elastic_Block_Store_vol/, '')}`;
      const where = await runUntilKilled(['boot', '--root', node.root.dir], withGates(node, log), gate, { volumeId, workDir: node.root.dir });
      const uuidAtCrash = fsUuid(node.loop.device);
      const r = await runBinary(['boot', '--root', node.root.dir], withGates(node, log));
      const sig = bootSignature(node, r.code);
      const mkfs = gateLog(log).filter((l) => l.startsWith('mkfs.')).length;
      const inits = (await readRecords(node.records)).filter((x) => x.tool === 'kubeadm' && x.argv[0] === 'init').length;
      const resets = (await readRecords(node.records)).filter((x) => x.tool === 'kubeadm' && x.argv[0] === 'reset').length;
      table.push({
        point,
        observed: `killed at ${where}; re-run exit ${r.code}, boot ${sig.result}, ${sig.filesystem}${uuidAtCrash ? ` (uuid ${uuidAtCrash === fsUuid(node.loop.device) ? 'kept' : 'CHANGED'})` : ''}, mkfs x${mkfs}, kubeadm init x${inits}${resets ? `, reset x${resets}` : ''}, mode ${String(sig.joinMode)}`,
      });
      expect(r.code, r.stderr).toBe(0);
      expect(sig).toEqual(baseline);
      // A volume that held a filesystem when the agent died was not formatted again.
      if (uuidAtCrash) expect(fsUuid(node.loop.device)).toBe(uuidAtCrash);
      expect(mkfs).toBeLessThanOrEqual(point.includes('mkfs, nothing written') ? 2 : 1);
      // kubeadm init runs again only after one that was cut off, and then after the reset.
      const initCutOff = point.includes('(kubeadm init)') || point.includes('inside kubeadm init');
      expect({ inits, resets }).toEqual(initCutOff ? { inits: point.includes('inside') ? 2 : 1, resets: 1 } : { inits: 1, resets: 0 });
    } finally {
      await node.stop();
    }
  }, 240_000);
});

// On moto behind the fidelity proxy, not MinIO: the kills wait for S3 calls held at the proxy
// (gates), and the stale uploads are found by prefix, which MinIO's ListMultipartUploads does not do.
describe('SIGKILL at every step of an etcd backup, then back up again', () => {
  let etcd: EtcdMember;
  let etcdDir: string;
  let imds: Imds;
  let root: TempRoot;
  const prefix = 'etcd-backups/crash/';
  const env = { ...process.env, AWS_ACCESS_KEY_ID: 'testing', AWS_SECRET_ACCESS_KEY: 'testing', AWS_REGION: REGION };

  beforeAll(async () => {
    etcdDir = fs.mkdtempSync(path.join(os.tmpdir(), 'zdt-crash-etcd-'));
    etcd = await startEtcd({ dir: path.join(etcdDir, 'data'), name: 'etcd00' });
    // ~12 MiB, several 5 MiB parts.
    for (let i = 0; i < 12; i++) {
      execFileSync('etcdctl', [`--endpoints=${etcd.clientUrl}`, 'put', `/registry/blob/${i}`], { env: { ...process.env, ETCDCTL_API: '3' }, input: randomBytes(700 * 1024).toString('base64') });
    }
    imds = await startImds({ instanceId: 'i-0c0a500000000000b', region: REGION, availabilityZone: `${REGION}a`, instanceType: 'm5.large', privateIp: '10.0.3.3' });
    root = await makeTempRoot();
    fs.mkdirSync(root.at('/etc/zdt-agent'), { recursive: true });
    fs.writeFileSync(
      root.at('/etc/zdt-agent/config.yaml'),
      stringify({
        cluster: { name: 'crash' },
        node: { role: 'controller', controllerIndex: '00' },
        // An unfinished upload older than 8 s (etcd.backup.timeout) belongs to a killed backup.
        etcd: { clientUrl: etcd.clientUrl, backup: { bucket: BUCKET, partSizeMiB: 5, concurrency: 2, timeout: 8 } },
        terminate: { backupTimeout: 5 },
        aws: { region: REGION, endpoint: w.proxy.endpoint, s3ForcePathStyle: true, imdsEndpoint: imds.endpoint, maxAttempts: 2 },
      }),
    );
  }, 120_000);

  afterAll(async () => {
    await etcd?.stop();
    await imds?.stop();
    await root?.cleanup();
    if (etcdDir) fs.rmSync(etcdDir, { recursive: true, force: true });
  });

  /** Every object under the prefix is a whole backup: a tar with a manifest whose digests match. */
  async function everyObjectIsAWholeBackup(): Promise<number> {
    const keys = ((await s3.send(new ListObjectsV2Command({ Bucket: BUCKET, Prefix: prefix }))).Contents ?? []).map((o) => o.Key!);
    for (const key of keys) {
      const bytes = Buffer.from(await (await s3.send(new GetObjectCommand({ Bucket: BUCKET, Key: key }))).Body!.transformToByteArray());
      const files = new Map<string, Buffer>();
      for await (const e of readTar((async function* () {
        yield bytes;
      })())) {
        const chunks: Buffer[] = [];
        for await (const c of e.body) chunks.push(c);
        files.set(e.name, Buffer.concat(chunks));
      }
      const manifest = JSON.parse(files.get(MANIFEST_NAME)!.toString()) as Manifest;
      const snap = files.get(SNAPSHOT_NAME)!;
      expect(snap.subarray(-32).toString('hex'), key).toBe(manifest.parts.find((p) => p.path === SNAPSHOT_NAME)!.sha256);
    }
    return keys.length;
  }

  /** Unfinished uploads seen right after a kill (a later backup may abort them once they are old enough). */
  const leftByKills = new Set<string>();
  const unfinished = async () => (await s3.send(new ListMultipartUploadsCommand({ Bucket: BUCKET, Prefix: prefix }))).Uploads ?? [];

  const BACKUP_POINTS: Array<{ point: string; gate: Gate }> = [
    { point: 'backup: CreateMultipartUpload in flight', gate: { kind: 'aws', action: 's3:CreateMultipartUpload' } },
    { point: 'backup: an UploadPart in flight (another sent)', gate: { kind: 'aws', action: 's3:UploadPart' } },
    { point: 'backup: CompleteMultipartUpload in flight', gate: { kind: 'aws', action: 's3:CompleteMultipartUpload' } },
    { point: 'backup: verification (HeadObject) in flight', gate: { kind: 'aws', action: 's3:HeadObject' } },
    { point: 'backup: retention (ListObjectsV2) in flight', gate: { kind: 'aws', action: 's3:ListObjectsV2' } },
  ];

  it.each(BACKUP_POINTS)('$point', async ({ point, gate }) => {
    const objectsBefore = await everyObjectIsAWholeBackup();
    const where = await runUntilKilled(['--root', root.dir, 'etcd', 'backup'], env, gate, { workDir: root.dir });
    const afterKill = await everyObjectIsAWholeBackup();
    for (const u of await unfinished()) leftByKills.add(u.UploadId!);
    await sleep(1100); // a new second: the re-run's key differs from the killed run's
    const r = await runBinary(['--root', root.dir, 'etcd', 'backup'], env);
    const objects = await everyObjectIsAWholeBackup();
    table.push({
      point,
      observed: `killed at ${where}; objects ${objectsBefore} -> ${afterKill} after the kill (all whole) -> ${objects} after the re-run (exit ${r.code}); unfinished uploads ${(await unfinished()).length}`,
    });
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/verified/);
    expect(objects).toBeGreaterThan(0);
  }, 180_000);

  it("a backup after the killed ones' time is up aborts their unfinished uploads", async () => {
    expect(leftByKills.size).toBeGreaterThan(0); // the kills inside the upload left some
    await sleep(9_000); // past max(etcd.backup.timeout, terminate.backupTimeout): the stale-upload age
    const r = await runBinary(['--root', root.dir, 'etcd', 'backup'], env);
    expect(r.code, r.stderr).toBe(0);
    expect(await unfinished()).toEqual([]);
    table.push({ point: 'backup: after the stale-upload age', observed: `exit ${r.code}; ${leftByKills.size} uploads left by kills, unfinished now 0; objects ${await everyObjectIsAWholeBackup()} (all whole)` });
  }, 120_000);
});
