import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { CreateHostedZoneCommand, ListResourceRecordSetsCommand, Route53Client } from '@aws-sdk/client-route-53';
import { CreateBucketCommand, GetObjectCommand, PutObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { parse as parseYaml, parseAllDocuments, stringify } from 'yaml';
import { readVolumeIdentity, VOLUME_IDENTITY_FILE } from '../../agent/boot/etcd-volume.js';
import { runBoot } from '../../agent/boot/run.js';
import type { ConfigInput } from '../../agent/config/schema.js';
import { DeadlineError } from '../../agent/errors.js';
import type { KubeObject } from '../../agent/host/kube.js';
import { deleteOwnNode } from '../../agent/terminate/drain.js';
import { NODE_SELF_DELETE, NODE_SELF_DELETE_RBAC } from '../../agent/node-rbac.js';
import { startEtcdCluster, type EtcdCluster } from '../testbed/etcd.js';
import { startImds } from '../testbed/imds.js';
import { kubeApiserverAvailable, startKube, type Kube } from '../testbed/kube.js';
import { createLoopDevice } from '../testbed/loop.js';
import { makeTempRoot } from '../testbed/root.js';
import { readRecords, standinPath } from '../testbed/standins.js';
import {
  AZ,
  REGION,
  awsSection,
  bootDepsFor,
  createEtcdVolume,
  credentials,
  KUBEADM,
  kubeadmMissing,
  kubeadmValidate,
  launchInstance,
  startAwsWorld,
  type AwsWorld,
} from '../support/boot-env.js';

/**
 * Controllers: controller 00 bootstraps a new cluster (kubeadm init with the pre-generated PKI
 * from S3 and its stable name in Route53), restores onto the data its volume holds (and
 * refuses without the cluster's PKI), a second controller joins the running control plane,
 * and controller 00 upgrades the cluster (never downgrades). After kubeadm init controller 00
 * grants nodes the deletion of their own Node. Real loop devices as etcd volumes, moto (S3,
 * Route53, EC2), a real kube-apiserver, the recording kubeadm (its admin.conf names that
 * kube-apiserver) and apk; every rendered kubeadm config goes through the real
 * `kubeadm config validate`.
 */

const apiserver = await kubeApiserverAvailable();
if (!apiserver && process.env.CI === 'true') throw new Error('kube-apiserver is missing under CI: run test/testbed/k8s/build.sh');
const pending = apiserver ? undefined : 'pending: kube-apiserver is not built yet (test/testbed/k8s/build.sh)';
const validateSkip = kubeadmMissing();

const BUCKET = 'zdt-cp-bootstrap';
const TOKEN = 'kq4x2m.7fj3k9d0s8a7b6c5';
const APK_VERSIONS = '1.34.13-r0,1.34.12-r1,1.34.3-r0,1.36.1-r0';
const PKI = ['ca.crt', 'ca.key', 'sa.key', 'sa.pub', 'front-proxy-ca.crt', 'front-proxy-ca.key', 'etcd/ca.crt', 'etcd/ca.key'];

let w: AwsWorld;
let kube: Kube;
let s3: S3Client;
let r53: Route53Client;
let zoneId: string;
let pkiDir: string;
let wrapperDir: string;
const records = `/tmp/zdt-cp-records-${process.pid}.jsonl`;
const cleanups: Array<() => Promise<void>> = [];
let slot = 0;

const openssl = (cwd: string, ...args: string[]) => execFileSync('openssl', args, { cwd, stdio: 'ignore' });

/** The cluster PKI as kubecfn pre-generates it: the API server's CA and SA keys, plus front-proxy and etcd CAs. */
function clusterPki(kubeDir: string): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'zdt-cp-pki-'));
  fs.mkdirSync(path.join(dir, 'etcd'));
  for (const f of ['ca.crt', 'ca.key', 'sa.key', 'sa.pub']) fs.copyFileSync(path.join(kubeDir, 'pki', f), path.join(dir, f));
  openssl(dir, 'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'front-proxy-ca.key', '-out', 'front-proxy-ca.crt', '-days', '2', '-subj', '/CN=front-proxy-ca');
  openssl(dir, 'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'etcd/ca.key', '-out', 'etcd/ca.crt', '-days', '2', '-subj', '/CN=etcd-ca');
  return dir;
}

async function putPki(prefix: string, files = PKI): Promise<void> {
  for (const f of files) await s3.send(new PutObjectCommand({ Bucket: BUCKET, Key: `${prefix}/pki/${f}`, Body: fs.readFileSync(path.join(pkiDir, f)) }));
}

async function s3Text(key: string): Promise<string | undefined> {
  try {
    return await (await s3.send(new GetObjectCommand({ Bucket: BUCKET, Key: key }))).Body!.transformToString();
  } catch {
    return undefined;
  }
}

beforeAll(async () => {
  if (pending) return;
  w = await startAwsWorld();
  kube = await startKube();
  pkiDir = clusterPki(kube.dir);
  const common = { region: REGION, endpoint: w.proxy.endpoint, credentials };
  s3 = new S3Client({ ...common, forcePathStyle: true });
  r53 = new Route53Client(common);
  await s3.send(new CreateBucketCommand({ Bucket: BUCKET, CreateBucketConfiguration: { LocationConstraint: REGION } }));
  zoneId = (await r53.send(new CreateHostedZoneCommand({ Name: 'prod.internal', CallerReference: `zdt-${process.pid}` }))).HostedZone!.Id!.replace('/hostedzone/', '');
  wrapperDir = fs.mkdtempSync(path.join(os.tmpdir(), 'zdt-cp-bin-'));
  // etcdctl as the agent calls it for a joining controller, pointed at the test's etcd: the
  // stable names (https://etcdNN.prod.internal:2379) become its loopback URLs, without TLS.
  fs.writeFileSync(
    path.join(wrapperDir, 'etcdctl'),
    `#!/bin/bash
args=()
for a in "$@"; do
  case $a in
    --endpoints=https://etcd*) args+=("--endpoints=$ZDT_TEST_ETCD_ENDPOINTS") ;;
    --cacert=*|--cert=*|--key=*) ;;
    *) args+=("$a") ;;
  esac
done
exec /usr/bin/etcdctl "\${args[@]}"
`,
    { mode: 0o755 },
  );
  process.env.PATH = `${wrapperDir}:${standinPath()}:${process.env.PATH}`;
  process.env.ZDT_RECORD_FILE = records;
  process.env.ZDT_APK_VERSIONS = APK_VERSIONS;
}, 180_000);

beforeEach(() => {
  // What kubeadm init and a controller's kubeadm join leave behind: admin.conf for the cluster.
  if (kube) process.env.ZDT_STANDIN_KUBEADM_ADMIN_CONF = kube.adminKubeconfig;
});

afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
  fs.rmSync(records, { force: true });
  delete process.env.ZDT_STANDIN_KUBEADM_ADMIN_CONF;
  delete process.env.ZDT_TEST_ETCD_ENDPOINTS;
});

afterAll(async () => {
  await kube?.stop();
  await w?.stop();
  if (pkiDir) fs.rmSync(pkiDir, { recursive: true, force: true });
  if (wrapperDir) fs.rmSync(wrapperDir, { recursive: true, force: true });
});

/** A controller node: its own cluster name and S3 prefix, a loop device as its etcd volume, IMDS. */
async function controller(o: { index: string; cluster?: Partial<NonNullable<ConfigInput['cluster']>>; prepareVolume?: (mountPoint: string, cluster: string) => void }) {
  const name = `cp${++slot}`;
  const root = await makeTempRoot();
  cleanups.push(() => root.cleanup());
  const loop = await createLoopDevice(64);
  cleanups.push(() => loop.detach());
  if (o.prepareVolume) {
    execFileSync('mkfs.ext4', ['-q', '-L', 'etcd', loop.device]);
    const mnt = root.at('/mnt/prep');
    fs.mkdirSync(mnt, { recursive: true });
    execFileSync('mount', [loop.device, mnt]);
    try {
      o.prepareVolume(mnt, name);
    } finally {
      execFileSync('umount', [mnt]);
    }
  }
  const inst = await launchInstance(w);
  const volumeId = await createEtcdVolume(w, { cluster: name });
  await root.linkVolume(volumeId, loop.device);
  const imds = await startImds({ instanceId: inst.instanceId, region: REGION, availabilityZone: AZ, instanceType: 'm5.large', privateIp: inst.privateIp });
  cleanups.push(() => imds.stop());
  const config: ConfigInput = {
    cluster: { name, kubernetesVersion: '1.34.X', bootstrap: { s3Uri: `s3://${BUCKET}/${name}` }, ...o.cluster },
    node: { role: 'controller', controllerIndex: o.index },
    etcd: { volume: { attachTimeout: 20, deviceTimeout: 5 } },
    boot: { controlPlaneWait: 30, dnsWait: 0 },
    aws: { ...awsSection(w.proxy.endpoint), imdsEndpoint: imds.endpoint },
  };
  return { name, root, loop, inst, volumeId, config, prefix: name };
}

const calls = async () => (await readRecords(records)).map((r) => `${r.tool} ${r.argv.join(' ')}`);

/** A volume with etcd data (`db` as its database) and the identity file of its cluster, as a predecessor left it. */
const holdingEtcdData = (db: string) => (mnt: string, cluster: string) => {
  fs.mkdirSync(path.join(mnt, 'data/member/snap'), { recursive: true, mode: 0o700 });
  fs.writeFileSync(path.join(mnt, 'data/member/snap/db'), db);
  fs.writeFileSync(path.join(mnt, VOLUME_IDENTITY_FILE), JSON.stringify({ schema: 1, cluster, volumeId: 'vol-0', createdAt: 't', createdBy: 'i-0', kubernetesVersion: '1.34.12' }));
};

/**
 * A three-member etcd the stable names of the agent's etcdctl point at, with a member of slot
 * 02 that never starts (`learner`: added as one, as kubeadm's join does), as a predecessor
 * left it; the add is retried while etcd refuses changes (~5 s after its start).
 */
async function etcdWithSlot02Member(o: { learner: boolean }): Promise<{ etcd: EtcdCluster; stable: string; peerUrl: string }> {
  const etcd = await startEtcdCluster(3);
  cleanups.push(() => etcd.stop());
  process.env.ZDT_TEST_ETCD_ENDPOINTS = etcd.clientUrls.join(',');
  const stable = 'etcd02.prod.internal';
  const peerUrl = `https://${stable}:2380`;
  for (let i = 0; ; i++) {
    try {
      execFileSync('etcdctl', [`--endpoints=${etcd.clientUrls.join(',')}`, 'member', 'add', stable, ...(o.learner ? ['--learner'] : []), `--peer-urls=${peerUrl}`], { stdio: 'pipe' });
      return { etcd, stable, peerUrl };
    } catch (err) {
      if (i > 40) throw err;
      await new Promise((r) => setTimeout(r, 250));
    }
  }
}
const closedEndpoint = '127.0.0.1:1';
const RBAC = '/apis/rbac.authorization.k8s.io/v1';
const rbacObject = async (plural: 'clusterroles' | 'clusterrolebindings') => (await kube.admin.call<KubeObject>('GET', `${RBAC}/${plural}/${NODE_SELF_DELETE}`)).body;
const deleteRbac = async () => {
  for (const plural of ['clusterrolebindings', 'clusterroles']) await kube.admin.call('DELETE', `${RBAC}/${plural}/${NODE_SELF_DELETE}`, { okStatus: [404] });
};

/** As kubeadm leaves a node that has joined: kubelet.conf, the API server manifest, admin.conf. */
function asJoinedBefore(root: { at(p: string): string }): void {
  for (const f of ['/etc/kubernetes/kubelet.conf', '/etc/kubernetes/manifests/kube-apiserver.yaml']) {
    fs.mkdirSync(path.dirname(root.at(f)), { recursive: true });
    fs.writeFileSync(root.at(f), '# kubeadm\n');
  }
  fs.copyFileSync(kube.adminKubeconfig, root.at('/etc/kubernetes/admin.conf'));
}

describe.skipIf(!!pending)(`controller boot${pending ? ` (${pending})` : ''}`, () => {
  it('controller 00 bootstraps a new cluster: stable name in Route53, pre-generated PKI from S3, kubeadm init, token published', async () => {
    const n = await controller({ index: '00', cluster: { apiEndpoint: closedEndpoint, domain: 'prod.internal', route53ZoneId: zoneId } });
    await putPki(n.prefix);
    const result = await runBoot(await bootDepsFor(n.root.dir, n.config));
    expect(result.error?.oneLine()).toBeUndefined();
    expect(result.phases['control-plane']!.detail).toMatch(/^bootstrap: control plane 1\.34\.13 on .* \(etcd etcd00\.prod\.internal\)$/);

    const rr = await r53.send(new ListResourceRecordSetsCommand({ HostedZoneId: zoneId }));
    const a = rr.ResourceRecordSets!.find((r) => r.Name === 'etcd00.prod.internal.' && r.Type === 'A');
    expect(a?.ResourceRecords?.map((r) => r.Value)).toEqual([n.inst.privateIp]);
    for (const f of PKI) expect(fs.readFileSync(n.root.at(`/etc/kubernetes/pki/${f}`)).equals(fs.readFileSync(path.join(pkiDir, f))), f).toBe(true);
    expect(fs.statSync(n.root.at('/etc/kubernetes/pki/ca.key')).mode & 0o777).toBe(0o600);

    const initFile = n.root.at('/etc/kubernetes/zdt-agent/init.yaml');
    expect(await calls()).toEqual([
      'apk policy kubeadm kubelet kubectl',
      'apk add kubeadm=1.34.13-r0 kubelet=1.34.13-r0 kubectl=1.34.13-r0',
      `kubeadm init --config ${initFile} --skip-token-print`,
    ]);
    const [init, cluster] = parseAllDocuments(fs.readFileSync(initFile, 'utf8')).map((d) => d.toJS());
    expect(cluster).toMatchObject({ clusterName: n.name, kubernetesVersion: 'v1.34.13', controlPlaneEndpoint: closedEndpoint, etcd: { local: { dataDir: '/var/lib/etcd/data' } } });
    expect(init.nodeRegistration.ignorePreflightErrors).toBeUndefined();
    if (!validateSkip) expect(kubeadmValidate(initFile)).toBe('');
    const patch = fs.readFileSync(n.root.at('/etc/kubernetes/patches/etcd+json.yaml'), 'utf8');
    expect(patch).toContain('--name=etcd00.prod.internal');
    expect(patch).toContain('--initial-cluster=etcd00.prod.internal=https://etcd00.prod.internal:2380');
    // The token kubeadm init was given is now where workers and other controllers find it.
    const published = (await s3Text(`${n.prefix}/token`))?.trim();
    expect(published).toBe(init.bootstrapTokens[0].token);
    expect(readVolumeIdentity(n.root.at('/var/lib/etcd'))?.kubernetesVersion).toBe('1.34.13');
  });

  it('controller 00 on a volume that holds etcd data restores: the cluster PKI, then kubeadm init on the existing data', async () => {
    const n = await controller({
      index: '00',
      // Exact: an upgrade would wait for the API, which the recording kubeadm does not start.
      cluster: { apiEndpoint: closedEndpoint, kubernetesVersion: '1.34.12' },
      prepareVolume: holdingEtcdData('the cluster'),
    });
    await putPki(n.prefix);
    await s3.send(new PutObjectCommand({ Bucket: BUCKET, Key: `${n.prefix}/token`, Body: TOKEN }));
    await deleteRbac();
    const result = await runBoot(await bootDepsFor(n.root.dir, n.config));
    expect(result.error?.oneLine()).toBeUndefined();
    expect(result.phases['control-plane']!.detail).toMatch(/^restore: control plane 1\.34\.12/);
    // The restored cluster lets its nodes delete their own Node, as a bootstrapped one does.
    expect(await rbacObject('clusterrolebindings')).toMatchObject(NODE_SELF_DELETE_RBAC[1]!);
    const c = await calls();
    expect(c[1]).toBe('apk add kubeadm=1.34.12-r1 kubelet=1.34.12-r1 kubectl=1.34.12-r1');
    const initFile = n.root.at('/etc/kubernetes/zdt-agent/init.yaml');
    expect(c[2]).toBe(`kubeadm init --config ${initFile} --skip-token-print`);
    const [init] = parseAllDocuments(fs.readFileSync(initFile, 'utf8')).map((d) => d.toJS());
    expect(init.nodeRegistration.ignorePreflightErrors).toEqual(['DirAvailable--var-lib-etcd-data']);
    expect(init.bootstrapTokens[0].token).toBe(TOKEN);
    if (!validateSkip) expect(kubeadmValidate(initFile)).toBe('');
    expect(fs.readFileSync(n.root.at('/var/lib/etcd/data/member/snap/db'), 'utf8')).toBe('the cluster');
  }, 120_000);

  it('controller 00 whose kubeadm init was cut off undoes what it left with the real kubeadm reset cleanup-node, keeps the PKI and etcd data, and runs init again', async () => {
    const n = await controller({ index: '00', cluster: { apiEndpoint: closedEndpoint, kubernetesVersion: '1.34.12' } });
    await putPki(n.prefix);
    // The first boot's kubeadm init dies (as under SIGKILL: the agent sees it killed).
    process.env.ZDT_STANDIN_KUBEADM_EXIT = '137';
    let first;
    try {
      first = await runBoot(await bootDepsFor(n.root.dir, n.config));
    } finally {
      delete process.env.ZDT_STANDIN_KUBEADM_EXIT;
    }
    expect(first.error?.code).toBe('CommandFailed');
    // What a kubeadm init that got as far as starting the control plane leaves behind.
    const left = ['/etc/kubernetes/kubelet.conf', '/etc/kubernetes/admin.conf', '/var/lib/kubelet/config.yaml', ...['kube-apiserver', 'kube-controller-manager', 'kube-scheduler', 'etcd'].map((m) => `/etc/kubernetes/manifests/${m}.yaml`)];
    for (const f of left) {
      fs.mkdirSync(path.dirname(n.root.at(f)), { recursive: true });
      fs.writeFileSync(n.root.at(f), '# left by kubeadm init\n');
    }
    fs.mkdirSync(n.root.at('/var/lib/etcd/data/member/snap'), { recursive: true });
    fs.writeFileSync(n.root.at('/var/lib/etcd/data/member/snap/db'), 'written by the etcd that init started');
    const caKey = fs.readFileSync(n.root.at('/etc/kubernetes/pki/ca.key'));
    // kubeadm reset runs the real kubeadm (chrooted into the node root by --rootfs); the rest the stand-in.
    const bin = fs.mkdtempSync(path.join(os.tmpdir(), 'zdt-cp-reset-'));
    cleanups.push(async () => fs.rmSync(bin, { recursive: true, force: true }));
    const real = validateSkip ? '' : `[ "$1" = reset ] && exec ${KUBEADM} "$@"`;
    fs.writeFileSync(path.join(bin, 'kubeadm'), `#!/bin/sh\n"${standinPath()}/kubeadm" "$@" || exit $?\n${real}\nexit 0\n`, { mode: 0o755 });
    fs.mkdirSync(n.root.at('/proc'), { recursive: true });
    fs.writeFileSync(n.root.at('/proc/mounts'), ''); // what kubeadm reads inside the chroot
    const savedPath = process.env.PATH;
    process.env.PATH = `${bin}:${savedPath}`;
    fs.rmSync(records, { force: true });
    let second;
    try {
      second = await runBoot(await bootDepsFor(n.root.dir, n.config));
    } finally {
      process.env.PATH = savedPath;
    }
    expect(second.error?.oneLine()).toBeUndefined();
    const initFile = n.root.at('/etc/kubernetes/zdt-agent/init.yaml');
    const c = await calls();
    expect(c.slice(c.indexOf('rc-service kubelet status'))).toEqual([
      'rc-service kubelet status',
      'rc-service kubelet stop',
      `kubeadm reset phase cleanup-node --cert-dir /etc/kubernetes/zdt-agent/reset-keeps-the-pki --rootfs ${n.root.dir}`,
      `kubeadm init --config ${initFile} --skip-token-print`,
    ]);
    if (!validateSkip) {
      // The real kubeadm removed what init's preflight would refuse, and nothing that holds data.
      for (const f of left.filter((f) => f !== '/etc/kubernetes/admin.conf')) expect(fs.existsSync(n.root.at(f)), f).toBe(false);
    }
    expect(fs.readFileSync(n.root.at('/etc/kubernetes/pki/ca.key')).equals(caKey)).toBe(true);
    expect(fs.readFileSync(n.root.at('/var/lib/etcd/data/member/snap/db'), 'utf8')).toBe('written by the etcd that init started');
    // init again, on the data its predecessor's etcd wrote: as a restore does.
    expect(second.phases['control-plane']!.detail).toMatch(/^restore: control plane 1\.34\.12/);
    const [init] = parseAllDocuments(fs.readFileSync(initFile, 'utf8')).map((d) => d.toJS());
    expect(init.nodeRegistration.ignorePreflightErrors).toEqual(['DirAvailable--var-lib-etcd-data']);
    expect(fs.existsSync(n.root.at('/var/lib/zdt-agent/kubeadm-init.started'))).toBe(false);
  }, 120_000);

  it('refuses to pair existing etcd data with a new CA when the cluster PKI is nowhere', async () => {
    const n = await controller({
      index: '00',
      cluster: { apiEndpoint: closedEndpoint },
      prepareVolume: (mnt) => fs.mkdirSync(path.join(mnt, 'data/member'), { recursive: true, mode: 0o700 }),
    });
    const result = await runBoot(await bootDepsFor(n.root.dir, { ...n.config, cluster: { ...n.config.cluster!, kubernetesVersion: '1.34.12' } }));
    expect(result.ok).toBe(false);
    expect(result.failedPhase).toBe('control-plane');
    expect(result.error?.code).toBe('ClusterPkiMissing');
    expect((await calls()).filter((x) => x.startsWith('kubeadm'))).toEqual([]);
  });

  it('after kubeadm init controller 00 lets every node delete its own Node and no other; a second boot applies the grant again', async () => {
    await deleteRbac();
    const n = await controller({ index: '00', cluster: { apiEndpoint: closedEndpoint } });
    await putPki(n.prefix);
    const first = await runBoot(await bootDepsFor(n.root.dir, n.config));
    expect(first.error?.oneLine()).toBeUndefined();
    expect(first.phases['control-plane']!.detail).toMatch(/^bootstrap: /);
    expect(await rbacObject('clusterroles')).toMatchObject(NODE_SELF_DELETE_RBAC[0]!);
    expect(await rbacObject('clusterrolebindings')).toMatchObject(NODE_SELF_DELETE_RBAC[1]!);

    // Someone narrows the role. The recording kubeadm leaves no kubelet.conf, so the second
    // boot runs kubeadm init and the grant again: what exists is replaced, nothing fails.
    const role = await rbacObject('clusterroles');
    await kube.admin.call('PUT', `${RBAC}/clusterroles/${NODE_SELF_DELETE}`, { body: { ...role, rules: [{ apiGroups: [''], resources: ['nodes'], verbs: ['get'] }] } });
    const second = await runBoot(await bootDepsFor(n.root.dir, n.config));
    expect(second.error?.oneLine()).toBeUndefined();
    expect((await calls()).filter((c) => c.startsWith('kubeadm init'))).toHaveLength(2);
    expect(await rbacObject('clusterroles')).toMatchObject(NODE_SELF_DELETE_RBAC[0]!);

    // With a kubelet's credentials: its own Node goes, another node's stays (NodeRestriction).
    for (const name of ['worker-self', 'worker-other']) {
      await kube.admin.call('POST', '/api/v1/nodes', { body: { apiVersion: 'v1', kind: 'Node', metadata: { name } }, okStatus: [409] });
    }
    const me = await kube.nodeClient('worker-self');
    try {
      // The RBAC authorizer sees the restored role within moments; wait for it rather than guess.
      let deleted: string | undefined;
      for (let i = 0; i < 25 && !deleted; i++) {
        deleted = await deleteOwnNode(me, 'worker-self', AbortSignal.timeout(5000)).catch(() => undefined);
        if (!deleted) await new Promise((r) => setTimeout(r, 200));
      }
      expect(deleted).toBe('deleted');
      const other = await me.raw<{ message: string }>('DELETE', '/api/v1/nodes/worker-other');
      expect(other.status).toBe(403);
      expect(other.body.message).toMatch(/not allowed to modify node "worker-other"/);
      expect((await kube.admin.raw('GET', '/api/v1/nodes/worker-other')).status).toBe(200);
    } finally {
      me.close();
    }
  });

  it('controller 00 fails the control-plane phase when the API server does not take the grant within boot.controlPlaneWait, and says what to check', async () => {
    const n = await controller({ index: '00', cluster: { apiEndpoint: closedEndpoint } });
    await putPki(n.prefix);
    const unreachable = n.root.at('/admin-unreachable.conf');
    const conf = parseYaml(fs.readFileSync(kube.adminKubeconfig, 'utf8')) as { clusters: Array<{ cluster: { server: string } }> };
    conf.clusters[0]!.cluster.server = `https://${closedEndpoint}`;
    fs.writeFileSync(unreachable, stringify(conf));
    process.env.ZDT_STANDIN_KUBEADM_ADMIN_CONF = unreachable;
    const started = Date.now();
    const result = await runBoot(await bootDepsFor(n.root.dir, { ...n.config, boot: { ...n.config.boot, controlPlaneWait: 3 } }));
    expect(Date.now() - started).toBeLessThan(30_000);
    expect(result.failedPhase).toBe('control-plane');
    expect(result.error).toBeInstanceOf(DeadlineError);
    expect(result.error?.code).toBe('NodeRbacNotApplied');
    expect(result.error?.message).toMatch(/^gave up waiting for the API server at https:\/\/127\.0\.0\.1:1 to take the ClusterRole and ClusterRoleBinding zdt-agent:node-self-delete after 3s/);
    expect(result.error?.hint).toMatch(/crictl ps -a.*docs\/terminate\.md/);

    // A kubeadm init that left no admin.conf at all fails at once and says so.
    delete process.env.ZDT_STANDIN_KUBEADM_ADMIN_CONF;
    fs.rmSync(n.root.at('/etc/kubernetes/admin.conf'));
    const missing = await runBoot(await bootDepsFor(n.root.dir, n.config));
    expect(missing.failedPhase).toBe('control-plane');
    // The path is the one the agent looked at (under --root).
    expect(missing.error?.oneLine()).toBe(
      `NodeRbacNotApplied: cannot apply the ClusterRole and ClusterRoleBinding zdt-agent:node-self-delete: kubeadm init left no ${n.root.at('/etc/kubernetes/admin.conf')}; ` +
        'check the kubeadm init output in the log; workers need this grant to delete their own Node when they are retired (docs/terminate.md)',
    );
  });

  it('a controller 00 whose boot ended between kubeadm init and the grant applies it at its next boot, and only then', async () => {
    await deleteRbac();
    const n = await controller({ index: '00', cluster: { apiEndpoint: closedEndpoint } });
    asJoinedBefore(n.root);
    const first = await runBoot(await bootDepsFor(n.root.dir, n.config));
    expect(first.error?.oneLine()).toBeUndefined();
    expect(first.phases['control-plane']!.detail).toBe(`already a control-plane node; applied ${NODE_SELF_DELETE}`);
    expect(await rbacObject('clusterrolebindings')).toMatchObject(NODE_SELF_DELETE_RBAC[1]!);
    const second = await runBoot(await bootDepsFor(n.root.dir, n.config));
    expect(second.error?.oneLine()).toBeUndefined();
    expect(second.phases['control-plane']!.detail).toBe('already a control-plane node');
  });

  it('a second controller joins the running control plane with the shared PKI and removes its predecessor\'s Node', async () => {
    const n = await controller({ index: '01', cluster: { apiEndpoint: new URL(kube.server).host, kubernetesVersion: '1.36.X' } });
    await putPki(n.prefix);
    await s3.send(new PutObjectCommand({ Bucket: BUCKET, Key: `${n.prefix}/token`, Body: TOKEN }));
    await kube.admin.call('POST', '/api/v1/nodes', {
      body: { apiVersion: 'v1', kind: 'Node', metadata: { name: 'ip-10-0-9-9.old', labels: { 'zdt-agent/controller-index': '01' } } },
      okStatus: [409],
    });
    const result = await runBoot(await bootDepsFor(n.root.dir, n.config));
    expect(result.error?.oneLine()).toBeUndefined();
    const joinFile = n.root.at('/etc/kubernetes/zdt-agent/join.yaml');
    expect(await calls()).toEqual([
      'apk policy kubeadm kubelet kubectl',
      // The cluster's version, never the configured 1.36.X: only controller 00 changes it.
      'apk add kubeadm=1.34.12-r1 kubelet=1.34.12-r1 kubectl=1.34.12-r1',
      `kubeadm join --config ${joinFile}`,
    ]);
    const join = parseAllDocuments(fs.readFileSync(joinFile, 'utf8'))[0]!.toJS();
    expect(join.controlPlane).toEqual({ localAPIEndpoint: { advertiseAddress: n.inst.privateIp, bindPort: 6443 } });
    expect(join.discovery.bootstrapToken.token).toBe(TOKEN);
    if (!validateSkip) expect(kubeadmValidate(joinFile)).toBe('');
    expect(result.phases['control-plane']!.detail).toContain('removed stale Node ip-10-0-9-9.old');
    expect((await kube.admin.raw('GET', '/api/v1/nodes/ip-10-0-9-9.old')).status).toBe(404);
  });

  it('a controller with a stable name replaces its slot\'s stale etcd member, then joins without kubeadm\'s own etcd join', async () => {
    const { etcd, stable, peerUrl } = await etcdWithSlot02Member({ learner: false });
    const n = await controller({ index: '02', cluster: { apiEndpoint: new URL(kube.server).host, domain: 'prod.internal' } });
    await putPki(n.prefix);
    await s3.send(new PutObjectCommand({ Bucket: BUCKET, Key: `${n.prefix}/token`, Body: TOKEN }));
    const result = await runBoot(await bootDepsFor(n.root.dir, n.config));
    expect(result.error?.oneLine()).toBeUndefined();
    const clusterFile = n.root.at('/etc/kubernetes/zdt-agent/cluster.yaml');
    const joinFile = n.root.at('/etc/kubernetes/zdt-agent/join.yaml');
    expect(await calls()).toEqual([
      'apk policy kubeadm kubelet kubectl',
      'apk add kubeadm=1.34.12-r1 kubelet=1.34.12-r1 kubectl=1.34.12-r1',
      `kubeadm init phase certs etcd-healthcheck-client --config ${clusterFile}`,
      `kubeadm init phase etcd local --config ${clusterFile}`,
      `kubeadm join --config ${joinFile} --skip-phases=control-plane-join/etcd`,
    ]);
    const members = execFileSync('etcdctl', [`--endpoints=${etcd.clientUrls.join(',')}`, 'member', 'list'], { env: { ...process.env, ETCDCTL_API: '3' }, encoding: 'utf8' });
    expect(members.split('\n').filter((l) => l.includes(peerUrl))).toHaveLength(1);
    const patch = parseAllDocuments(fs.readFileSync(n.root.at('/etc/kubernetes/patches/etcd+json.yaml'), 'utf8'))[0]!.toJS() as Array<{ value: string }>;
    const flags = patch.map((p) => p.value);
    expect(flags).toContain('--initial-cluster-state=existing');
    expect(flags).toContain(`--name=${stable}`);
    const initial = flags.find((f) => f.startsWith('--initial-cluster='))!.slice('--initial-cluster='.length).split(',').sort();
    expect(initial).toEqual([...etcd.members.map((m) => `${m.name}=${m.peerUrl}`), `${stable}=${peerUrl}`].sort());
    const join = parseAllDocuments(fs.readFileSync(joinFile, 'utf8'))[0]!.toJS();
    expect(join.nodeRegistration.ignorePreflightErrors).toEqual(['DirAvailable--var-lib-etcd-data', 'FileAvailable--etc-kubernetes-manifests-etcd.yaml']);
    if (!validateSkip) {
      expect(kubeadmValidate(clusterFile)).toBe('');
      expect(kubeadmValidate(joinFile)).toBe('');
    }
  }, 120_000);

  it("a controller whose volume holds the data of its slot's learner (a join that died before the promotion) moves that data aside, removes the learner and joins as a voting member", async () => {
    const { etcd, peerUrl } = await etcdWithSlot02Member({ learner: true });
    const n = await controller({
      index: '02',
      cluster: { apiEndpoint: new URL(kube.server).host, domain: 'prod.internal' },
      prepareVolume: holdingEtcdData('a partial copy of the leader'),
    });
    await putPki(n.prefix);
    await s3.send(new PutObjectCommand({ Bucket: BUCKET, Key: `${n.prefix}/token`, Body: TOKEN }));
    const result = await runBoot(await bootDepsFor(n.root.dir, n.config));
    expect(result.error?.oneLine()).toBeUndefined();
    const ours = execFileSync('etcdctl', [`--endpoints=${etcd.clientUrls.join(',')}`, 'member', 'list'], { encoding: 'utf8' }).split('\n').filter((l) => l.includes(peerUrl));
    expect(ours).toHaveLength(1);
    expect(ours[0]).toMatch(/, unstarted, , https:\/\/etcd02\.prod\.internal:2380, , false$/);
    expect(fs.existsSync(n.root.at('/var/lib/etcd/data/member'))).toBe(false);
    const aside = fs.readdirSync(n.root.at('/var/lib/etcd')).filter((f) => f.startsWith('etcd-learner-'));
    expect(aside).toHaveLength(1);
    expect(fs.readFileSync(n.root.at(`/var/lib/etcd/${aside[0]}/snap/db`), 'utf8')).toBe('a partial copy of the leader');
  }, 120_000);

  it('controller 00 upgrades the running cluster to the newest 1.34 patch: kubeadm first, kubelet after', async () => {
    const n = await controller({ index: '00', cluster: { apiEndpoint: new URL(kube.server).host } });
    // Joined before (a reboot): kubeadm's files are there.
    asJoinedBefore(n.root);
    const result = await runBoot(await bootDepsFor(n.root.dir, n.config));
    expect(result.error?.oneLine()).toBeUndefined();
    const upgradeFile = n.root.at('/etc/kubernetes/zdt-agent/upgrade.yaml');
    expect(await calls()).toEqual([
      'apk policy kubeadm kubelet kubectl',
      'apk add kubeadm=1.34.12-r1 kubelet=1.34.12-r1 kubectl=1.34.12-r1',
      'rc-service kubelet status',
      'apk policy kubeadm kubelet kubectl',
      'apk add kubeadm=1.34.13-r0',
      `kubeadm upgrade apply --config ${upgradeFile} --yes`,
      'apk add kubelet=1.34.13-r0 kubectl=1.34.13-r0',
      'rc-service kubelet restart',
    ]);
    expect(parseAllDocuments(fs.readFileSync(upgradeFile, 'utf8'))[0]!.toJS().apply.kubernetesVersion).toBe('v1.34.13');
    if (!validateSkip) expect(kubeadmValidate(upgradeFile)).toBe('');
    expect(result.phases['kube-upgrade']!.detail).toBe('upgraded the cluster from 1.34.12 to 1.34.13');
  });

  it.each([
    ['1.34.3', 'KubernetesDowngradeRefused', /the cluster runs 1\.34\.12; cluster\.kubernetesVersion asks for the older 1\.34\.3/],
    ['1.36.X', 'KubernetesUpgradeTooFar', /1\.36\.1 skips a minor version/],
  ])('controller 00 refuses kubernetesVersion %s against a 1.34.12 cluster (%s) and installs nothing', async (version, code, message) => {
    const n = await controller({ index: '00', cluster: { apiEndpoint: new URL(kube.server).host, kubernetesVersion: version } });
    fs.mkdirSync(n.root.at('/etc/kubernetes/pki'), { recursive: true });
    fs.copyFileSync(kube.caFile, n.root.at('/etc/kubernetes/pki/ca.crt'));
    const result = await runBoot(await bootDepsFor(n.root.dir, n.config));
    expect(result.ok).toBe(false);
    expect(result.failedPhase).toBe('kube-version');
    expect(result.error?.code).toBe(code);
    expect(result.error?.message).toMatch(message);
    expect((await calls()).filter((c) => !c.startsWith('apk policy'))).toEqual([]);
  });
});
