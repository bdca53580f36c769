import type { Config } from '../config/schema.js';
import type { Identity } from '../host/identity.js';
import type { ClusterSettings, NodeRegistration } from '../host/kubeadm.js';

/** The parts of the kubeadm configs that follow from config and identity, shared by init, join and worker join. */

export const CONTROLLER_INDEX_LABEL = 'zdt-agent/controller-index';

/** The Node name: EC2's private DNS name (what the AWS cloud provider expects), else the IP-based one. */
export function nodeNameOf(identity: Identity): string {
  return identity.privateDns ?? `ip-${identity.privateIp.replaceAll('.', '-')}`;
}

export function nodeRegistrationFor(config: Config, identity: Identity, ignorePreflightErrors: readonly string[] = []): NodeRegistration {
  const labels: Record<string, string> = {
    'node.kubernetes.io/instance-type': identity.instanceType,
    'topology.kubernetes.io/zone': identity.availabilityZone,
    'topology.kubernetes.io/region': identity.region,
    ...(config.node.controllerIndex ? { [CONTROLLER_INDEX_LABEL]: config.node.controllerIndex } : {}),
    ...config.node.labels,
  };
  return {
    name: nodeNameOf(identity),
    labels,
    taints: config.node.taints,
    kubeletRootDir: config.node.kubeletRootDir,
    kubeletExtraArgs: config.node.kubeletExtraArgs,
    ignorePreflightErrors,
  };
}

/** The stable per-slot etcd name, `etcd<index>.<domain>`; undefined without cluster.domain. */
export function stableEtcdName(config: Config, index = config.node.controllerIndex): string | undefined {
  return config.cluster?.domain && index ? `etcd${index}.${config.cluster.domain}` : undefined;
}

export function clusterSettingsFor(config: Config, o: { kubernetesVersion: string; etcdDataDir: string }): ClusterSettings {
  const c = config.cluster!;
  const apiHost = c.apiEndpoint?.replace(/:\d+$/, '');
  return {
    clusterName: c.name,
    kubernetesVersion: o.kubernetesVersion,
    controlPlaneEndpoint: c.apiEndpoint ? (c.apiEndpoint.includes(':') ? c.apiEndpoint : `${c.apiEndpoint}:6443`) : undefined,
    podSubnet: c.podSubnet,
    serviceSubnet: c.serviceSubnet,
    apiServerCertSANs: apiHost ? [apiHost] : [],
    etcdDataDir: o.etcdDataDir,
    // Every slot's stable name may serve this cluster's etcd (ClusterConfiguration is shared by all controllers).
    etcdCertSANs: c.domain ? [`*.${c.domain}`] : [],
    extraArgs: c.extraArgs,
  };
}
