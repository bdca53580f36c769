import { stringify } from 'yaml';

/**
 * kubeadm configuration files (kubeadm.k8s.io/v1beta4, read by kubeadm 1.31 and newer), as
 * pure functions of plain inputs. The tests validate every one with the real
 * `kubeadm config validate`.
 */

export const KUBEADM_API = 'kubeadm.k8s.io/v1beta4';
export const PATCHES_DIR = '/etc/kubernetes/patches';

export interface Taint {
  key: string;
  value?: string | undefined;
  effect: 'NoSchedule' | 'PreferNoSchedule' | 'NoExecute';
}

export interface NodeRegistration {
  name: string;
  labels: Record<string, string>;
  taints: readonly Taint[];
  kubeletRootDir: string;
  kubeletExtraArgs: Record<string, string>;
  ignorePreflightErrors?: readonly string[] | undefined;
}

export interface ClusterSettings {
  clusterName: string;
  kubernetesVersion: string;
  /** host:port */
  controlPlaneEndpoint?: string | undefined;
  podSubnet?: string | undefined;
  serviceSubnet?: string | undefined;
  /** Extra names in the API server certificate. */
  apiServerCertSANs: readonly string[];
  etcdDataDir: string;
  /** Names in the etcd server and peer certificates (the stable per-slot names). */
  etcdCertSANs: readonly string[];
  extraArgs: { apiServer: Record<string, string>; controllerManager: Record<string, string>; scheduler: Record<string, string>; etcd: Record<string, string> };
}

/** v1beta4 writes arguments as a list of {name, value}, sorted here for stable output. */
function args(map: Record<string, string>): Array<{ name: string; value: string }> {
  return Object.keys(map)
    .sort()
    .map((name) => ({ name, value: map[name]! }));
}

function nodeRegistration(n: NodeRegistration) {
  // Plain code-unit order, as .sort() above: localeCompare would load ICU's collator (about 8 ms).
  const labels = Object.keys(n.labels)
    .sort()
    .map((k) => `${k}=${n.labels[k]}`)
    .join(',');
  const kubelet: Record<string, string> = { 'root-dir': n.kubeletRootDir, ...n.kubeletExtraArgs };
  if (labels) kubelet['node-labels'] = labels;
  return {
    name: n.name,
    // Left out when empty: kubeadm then applies its default (the control-plane taint on controllers, none on workers).
    ...(n.taints.length ? { taints: n.taints.map((t) => ({ key: t.key, ...(t.value !== undefined ? { value: t.value } : {}), effect: t.effect })) } : {}),
    kubeletExtraArgs: args(kubelet),
    ...(n.ignorePreflightErrors?.length ? { ignorePreflightErrors: [...n.ignorePreflightErrors] } : {}),
  };
}

function clusterConfiguration(c: ClusterSettings) {
  return {
    apiVersion: KUBEADM_API,
    kind: 'ClusterConfiguration',
    clusterName: c.clusterName,
    kubernetesVersion: `v${c.kubernetesVersion}`,
    ...(c.controlPlaneEndpoint ? { controlPlaneEndpoint: c.controlPlaneEndpoint } : {}),
    certificatesDir: '/etc/kubernetes/pki',
    networking: {
      ...(c.podSubnet ? { podSubnet: c.podSubnet } : {}),
      ...(c.serviceSubnet ? { serviceSubnet: c.serviceSubnet } : {}),
    },
    etcd: {
      local: {
        dataDir: c.etcdDataDir,
        ...(c.etcdCertSANs.length ? { serverCertSANs: [...c.etcdCertSANs], peerCertSANs: [...c.etcdCertSANs] } : {}),
        ...(Object.keys(c.extraArgs.etcd).length ? { extraArgs: args(c.extraArgs.etcd) } : {}),
      },
    },
    apiServer: {
      ...(c.apiServerCertSANs.length ? { certSANs: [...c.apiServerCertSANs] } : {}),
      ...(Object.keys(c.extraArgs.apiServer).length ? { extraArgs: args(c.extraArgs.apiServer) } : {}),
    },
    controllerManager: Object.keys(c.extraArgs.controllerManager).length ? { extraArgs: args(c.extraArgs.controllerManager) } : {},
    scheduler: Object.keys(c.extraArgs.scheduler).length ? { extraArgs: args(c.extraArgs.scheduler) } : {},
  };
}

const docs = (...objects: object[]) => objects.map((o) => stringify(o, { lineWidth: 0 })).join('---\n');

export interface InitInput {
  node: NodeRegistration;
  cluster: ClusterSettings;
  advertiseAddress: string;
  bindPort: number;
  bootstrapToken?: { token: string; ttl: string } | undefined;
}

/** InitConfiguration + ClusterConfiguration for `kubeadm init --config` (and `kubeadm init phase …`). */
export function renderInitConfig(o: InitInput): string {
  const init = {
    apiVersion: KUBEADM_API,
    kind: 'InitConfiguration',
    ...(o.bootstrapToken
      ? {
          bootstrapTokens: [
            {
              token: o.bootstrapToken.token,
              ttl: o.bootstrapToken.ttl === '0' ? '0s' : o.bootstrapToken.ttl,
              description: 'zdt-agent: joins of workers and controllers',
              usages: ['signing', 'authentication'],
              groups: ['system:bootstrappers:kubeadm:default-node-token'],
            },
          ],
        }
      : {}),
    nodeRegistration: nodeRegistration(o.node),
    localAPIEndpoint: { advertiseAddress: o.advertiseAddress, bindPort: o.bindPort },
    patches: { directory: PATCHES_DIR },
  };
  return docs(init, clusterConfiguration(o.cluster));
}

export interface JoinInput {
  node: NodeRegistration;
  apiServerEndpoint: string;
  token: string;
  caCertHashes: readonly string[];
  /** Present for `kubeadm join --control-plane`. */
  controlPlane?: { advertiseAddress: string; bindPort: number } | undefined;
}

/** JoinConfiguration for workers and for controllers (with `controlPlane`). */
export function renderJoinConfig(o: JoinInput): string {
  return docs({
    apiVersion: KUBEADM_API,
    kind: 'JoinConfiguration',
    discovery: {
      bootstrapToken: { apiServerEndpoint: o.apiServerEndpoint, token: o.token, caCertHashes: [...o.caCertHashes] },
    },
    nodeRegistration: nodeRegistration(o.node),
    ...(o.controlPlane ? { controlPlane: { localAPIEndpoint: { advertiseAddress: o.controlPlane.advertiseAddress, bindPort: o.controlPlane.bindPort } } } : {}),
    patches: { directory: PATCHES_DIR },
  });
}

/** UpgradeConfiguration for `kubeadm upgrade apply --config` on controller 00. */
export function renderUpgradeConfig(o: { kubernetesVersion: string }): string {
  return docs({
    apiVersion: KUBEADM_API,
    kind: 'UpgradeConfiguration',
    apply: {
      kubernetesVersion: `v${o.kubernetesVersion}`,
      certificateRenewal: true,
      etcdUpgrade: true,
      patches: { directory: PATCHES_DIR },
    },
    node: { certificateRenewal: true, etcdUpgrade: true, patches: { directory: PATCHES_DIR } },
  });
}

/**
 * The per-node part of etcd that kubeadm derives from the node's IP, replaced by the stable
 * per-slot name: a kubeadm patch (`etcd+json.yaml`, RFC 6902) that appends flags to etcd's
 * command. etcd parses flags with Go's flag package, where the last occurrence wins, so the
 * appended values override kubeadm's and the patch survives changes in kubeadm's flag list.
 */
export function renderEtcdPatch(o: { name: string; peerUrl: string; initialCluster: string; initialClusterState: 'new' | 'existing' }): string {
  const flags = [
    `--name=${o.name}`,
    `--initial-advertise-peer-urls=${o.peerUrl}`,
    `--initial-cluster=${o.initialCluster}`,
    `--initial-cluster-state=${o.initialClusterState}`,
  ];
  return stringify(
    flags.map((value) => ({ op: 'add', path: '/spec/containers/0/command/-', value })),
    { lineWidth: 0 },
  );
}
