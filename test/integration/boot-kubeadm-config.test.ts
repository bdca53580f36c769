import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { parseAllDocuments } from 'yaml';
import { caCertHash } from '../../agent/boot/bootstrap.js';
import { dirAvailableCheck, fileAvailableCheck } from '../../agent/boot/kubeadm-run.js';
import { clusterSettingsFor, nodeRegistrationFor, stableEtcdName } from '../../agent/boot/registration.js';
import { resolveConfig } from '../../agent/config/load.js';
import type { ConfigInput } from '../../agent/config/schema.js';
import { renderEtcdPatch, renderInitConfig, renderJoinConfig, renderUpgradeConfig } from '../../agent/host/kubeadm.js';
import { freePort } from '../testbed/ports.js';
import { identityOf, KUBEADM as KUBEADM_BIN, kubeadmMissing, kubeadmValidate } from '../support/boot-env.js';

/**
 * Every kubeadm config the agent renders (init for a new cluster and on restored data, join
 * of a worker, join of a controller, upgrade) is accepted by the real, pinned kubeadm
 * (`kubeadm config validate`), and a broken one is rejected.
 */

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'zdt-kubeadm-'));
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

const VERSION = '1.34.12'; // the pinned kubeadm accepts control planes >= 1.33

function config(input: Partial<ConfigInput> = {}): ReturnType<typeof resolveConfig> {
  const base: ConfigInput = {
    cluster: {
      name: 'prod',
      apiEndpoint: 'k8s.prod.example.com:6443',
      domain: 'prod.example.internal',
      podSubnet: '10.244.0.0/16',
      serviceSubnet: '10.96.0.0/12',
      extraArgs: { apiServer: { 'audit-log-maxage': '7' }, controllerManager: { 'node-monitor-grace-period': '40s' }, scheduler: {}, etcd: { 'quota-backend-bytes': '8589934592' } },
    },
    node: { role: 'controller', controllerIndex: '01', labels: { 'example.com/pool': 'system' }, taints: [{ key: 'dedicated', value: 'control', effect: 'NoSchedule' }], kubeletExtraArgs: { 'max-pods': '110' } },
    etcd: {},
  };
  return resolveConfig([{ source: 'file', origin: 'test', data: { ...base, ...input } as Record<string, unknown> }]);
}

const identity = identityOf({ instanceId: 'i-0123456789abcdef0', privateIp: '10.0.1.17', type: 'inf2.xlarge' });

/** A real CA certificate, for the discovery hash. */
function makeCa(): string {
  execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', path.join(dir, 'ca.key'), '-out', path.join(dir, 'ca.crt'), '-days', '1', '-subj', '/CN=kubernetes'], { stdio: 'ignore' });
  return fs.readFileSync(path.join(dir, 'ca.crt'), 'utf8');
}

function write(name: string, text: string): string {
  const f = path.join(dir, name);
  fs.writeFileSync(f, text);
  return f;
}

const skip = kubeadmMissing();

describe('kubeadm configs', () => {
  const c = config();
  const cluster = clusterSettingsFor(c, { kubernetesVersion: VERSION, etcdDataDir: '/var/lib/etcd/data' });
  const ca = makeCa();
  const hash = caCertHash(ca);
  const token = 'abcdef.0123456789abcdef';

  const rendered = {
    'init (new cluster)': renderInitConfig({ node: nodeRegistrationFor(c, identity), cluster, advertiseAddress: identity.privateIp, bindPort: 6443, bootstrapToken: { token, ttl: '0' } }),
    'init (on restored etcd data)': renderInitConfig({
      node: nodeRegistrationFor(c, identity, [dirAvailableCheck('/var/lib/etcd/data')]),
      cluster,
      advertiseAddress: identity.privateIp,
      bindPort: 6443,
      bootstrapToken: { token, ttl: '24h' },
    }),
    'join (worker)': renderJoinConfig({ node: nodeRegistrationFor(config({ node: { role: 'worker' }, etcd: undefined }), identity), apiServerEndpoint: 'k8s.prod.example.com:6443', token, caCertHashes: [hash] }),
    'join (control plane)': renderJoinConfig({
      node: nodeRegistrationFor(c, identity, [dirAvailableCheck('/var/lib/etcd/data'), fileAvailableCheck('/etc/kubernetes/manifests/etcd.yaml')]),
      apiServerEndpoint: 'k8s.prod.example.com:6443',
      token,
      caCertHashes: [hash],
      controlPlane: { advertiseAddress: identity.privateIp, bindPort: 6443 },
    }),
    upgrade: renderUpgradeConfig({ kubernetesVersion: '1.34.13' }),
  };

  it.skipIf(!!skip).each(Object.keys(rendered))(`the real kubeadm accepts the %s config${skip ? ` (${skip})` : ''}`, (name) => {
    const file = write(`${name.replace(/\W+/g, '-')}.yaml`, rendered[name as keyof typeof rendered]);
    expect(kubeadmValidate(file)).toBe('');
  });

  it.skipIf(!!skip)(`the real kubeadm rejects a broken config${skip ? ` (${skip})` : ''}`, () => {
    const broken = rendered['join (control plane)'].replace(`advertiseAddress: ${identity.privateIp}`, 'advertiseAddress: not-an-address');
    expect(kubeadmValidate(write('broken.yaml', broken))).toMatch(/not-an-address/);
    const tooOld = rendered['init (new cluster)'].replace(`v${VERSION}`, 'v1.29.0');
    expect(kubeadmValidate(write('too-old.yaml', tooOld))).toMatch(/control plane version/);
  });

  it('carries the node labels, kubelet root dir, taints, extra args and stable etcd names', () => {
    const [init, clusterDoc] = parseAllDocuments(rendered['init (new cluster)']).map((d) => d.toJS());
    const kubeletArgs = Object.fromEntries(init.nodeRegistration.kubeletExtraArgs.map((a: { name: string; value: string }) => [a.name, a.value]));
    expect(kubeletArgs['root-dir']).toBe('/var/lib/containers');
    expect(kubeletArgs['max-pods']).toBe('110');
    expect(kubeletArgs['node-labels'].split(',')).toEqual(
      expect.arrayContaining(['node.kubernetes.io/instance-type=inf2.xlarge', 'zdt-agent/controller-index=01', 'example.com/pool=system', 'topology.kubernetes.io/zone=eu-central-1a']),
    );
    expect(init.nodeRegistration.taints).toEqual([{ key: 'dedicated', value: 'control', effect: 'NoSchedule' }]);
    expect(init.bootstrapTokens[0]).toMatchObject({ token, ttl: '0s' });
    expect(clusterDoc).toMatchObject({
      clusterName: 'prod',
      kubernetesVersion: `v${VERSION}`,
      controlPlaneEndpoint: 'k8s.prod.example.com:6443',
      networking: { podSubnet: '10.244.0.0/16', serviceSubnet: '10.96.0.0/12' },
      etcd: { local: { dataDir: '/var/lib/etcd/data', serverCertSANs: ['*.prod.example.internal'], peerCertSANs: ['*.prod.example.internal'] } },
      apiServer: { certSANs: ['k8s.prod.example.com'], extraArgs: [{ name: 'audit-log-maxage', value: '7' }] },
    });
    expect(stableEtcdName(c)).toBe('etcd01.prod.example.internal');
    // Controllers without configured taints get kubeadm's control-plane taint: the field is left out.
    const plain = parseAllDocuments(renderInitConfig({ node: nodeRegistrationFor(config({ node: { role: 'controller', controllerIndex: '00' } }), identity), cluster, advertiseAddress: '10.0.0.1', bindPort: 6443 }))[0]!.toJS();
    expect(plain.nodeRegistration.taints).toBeUndefined();
  });

  it('discovery uses the sha256 of the CA public key, as kubeadm computes it', () => {
    const expected = execFileSync('bash', ['-c', `openssl x509 -pubkey -in ${path.join(dir, 'ca.crt')} | openssl pkey -pubin -outform der | sha256sum | cut -d' ' -f1`], { encoding: 'utf8' }).trim();
    expect(hash).toBe(`sha256:${expected}`);
    const join = parseAllDocuments(rendered['join (worker)'])[0]!.toJS();
    expect(join.discovery.bootstrapToken).toEqual({ apiServerEndpoint: 'k8s.prod.example.com:6443', token, caCertHashes: [hash] });
    expect(join.controlPlane).toBeUndefined();
  });

  it('the etcd patch appends the stable name flags to the etcd command', () => {
    const patch = parseAllDocuments(
      renderEtcdPatch({ name: 'etcd01.prod.example.internal', peerUrl: 'https://etcd01.prod.example.internal:2380', initialCluster: 'etcd00.prod.example.internal=https://etcd00.prod.example.internal:2380,etcd01.prod.example.internal=https://etcd01.prod.example.internal:2380', initialClusterState: 'existing' }),
    )[0]!.toJS();
    expect(patch.every((op: { op: string; path: string }) => op.op === 'add' && op.path === '/spec/containers/0/command/-')).toBe(true);
    expect(patch.map((op: { value: string }) => op.value)).toEqual([
      '--name=etcd01.prod.example.internal',
      '--initial-advertise-peer-urls=https://etcd01.prod.example.internal:2380',
      '--initial-cluster=etcd00.prod.example.internal=https://etcd00.prod.example.internal:2380,etcd01.prod.example.internal=https://etcd01.prod.example.internal:2380',
      '--initial-cluster-state=existing',
    ]);
  });

  it.skipIf(!!skip)(`kubeadm applies the stable-name patch to the etcd manifest, and etcd takes the last of a repeated flag${skip ? ` (${skip})` : ''}`, async () => {
    const patches = path.join(dir, 'patches');
    fs.mkdirSync(patches, { recursive: true });
    const stable = 'etcd00.prod.example.internal';
    const peerUrl = `https://${stable}:2380`;
    fs.writeFileSync(path.join(patches, 'etcd+json.yaml'), renderEtcdPatch({ name: stable, peerUrl, initialCluster: `${stable}=${peerUrl}`, initialClusterState: 'new' }));
    const init = write('init-etcd.yaml', rendered['init (new cluster)'].replace('directory: /etc/kubernetes/patches', `directory: ${patches}`));
    const out = path.join(dir, 'etcd-manifest.yaml');
    // kubeadm writes /etc/kubernetes/manifests/etcd.yaml: in a private mount namespace with a
    // tmpfs on /etc, so nothing on this machine is touched.
    execFileSync('unshare', ['--mount', '--propagation', 'private', 'bash', '-c',
      `mount -t tmpfs tmpfs /etc && ${KUBEADM_BIN} init phase etcd local --config ${init} >/dev/null && cp /etc/kubernetes/manifests/etcd.yaml ${out}`]);
    const pod = parseAllDocuments(fs.readFileSync(out, 'utf8'))[0]!.toJS();
    const command: string[] = pod.spec.containers[0].command;
    const last = (flag: string) => command.filter((a) => a.startsWith(`--${flag}=`)).at(-1);
    expect(last('name')).toBe(`--name=${stable}`);
    expect(last('initial-advertise-peer-urls')).toBe(`--initial-advertise-peer-urls=${peerUrl}`);
    expect(last('initial-cluster')).toBe(`--initial-cluster=${stable}=${peerUrl}`);
    // kubeadm's own values stay earlier in the list; etcd's flag parsing keeps the last one.
    expect(command.filter((a) => a.startsWith('--name=')).length).toBe(2);
    const etcdDir = fs.mkdtempSync(path.join(dir, 'etcd-'));
    const [client, peer] = [await freePort(), await freePort()];
    const etcd = spawn('etcd', [
      '--name=from-kubeadm', `--data-dir=${etcdDir}/d`, `--listen-client-urls=http://127.0.0.1:${client}`, `--advertise-client-urls=http://127.0.0.1:${client}`,
      `--listen-peer-urls=http://127.0.0.1:${peer}`, `--initial-advertise-peer-urls=http://127.0.0.1:${peer}`, `--initial-cluster=from-kubeadm=http://127.0.0.1:${peer}`,
      '--name=stable', `--initial-cluster=stable=http://127.0.0.1:${peer}`,
    ], { stdio: 'ignore' });
    try {
      let members = '';
      for (let i = 0; i < 100 && !members.includes('started'); i++) {
        await new Promise((r) => setTimeout(r, 100));
        try {
          members = execFileSync('etcdctl', [`--endpoints=http://127.0.0.1:${client}`, 'member', 'list'], { env: { ...process.env, ETCDCTL_API: '3' }, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
        } catch {
          // not up yet
        }
      }
      expect(members).toMatch(/, started, stable, /);
    } finally {
      etcd.kill('SIGTERM');
      await new Promise((r) => etcd.once('exit', r));
    }
  });
});
