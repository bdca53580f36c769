import { serviceRoles } from '../config/schema.js';
import { hasNeuron, isController, isFirstController, isKubernetesNode, type NodeFacts, type PhaseDecision } from '../node.js';

/**
 * The boot phases in order, and for each whether it applies to this node and why. The boot
 * runner and `zdt-agent plan` share these decisions, so the plan cannot drift from the run.
 */

type Decide = (f: NodeFacts) => Omit<PhaseDecision, 'name'>;

export type BootPhaseName =
  | 'identity'
  | 'neuron'
  | 'etcd-volume'
  | 'etcd-restore'
  | 'kube-version'
  | 'control-plane'
  | 'kube-upgrade'
  | 'worker-join'
  | 'takeover'
  | 'signal'
  | 'notify';

export const bootPhaseOrder: ReadonlyArray<{ name: BootPhaseName; decide: Decide }> = [
  {
    name: 'identity',
    decide: () => ({ applies: true, why: 'every boot reads the instance identity from IMDSv2' }),
  },
  {
    name: 'neuron',
    decide: ({ identity }) =>
      hasNeuron(identity.instanceType)
        ? { applies: true, why: `${identity.instanceType} has AWS Neuron devices: load the kernel module, wait for /dev/neuron*` }
        : { applies: false, why: `${identity.instanceType} has no Neuron devices` },
  },
  {
    name: 'etcd-volume',
    decide: ({ config, identity }) =>
      isController(config)
        ? {
            applies: true,
            why: `controller: find the volume tagged ${config.etcd?.volume.clusterTagKey ?? 'zdt:cluster'}=${config.cluster?.name} in ${identity.availabilityZone}, attach, mount at ${config.etcd?.volume.mountPoint ?? '/var/lib/etcd'}`,
          }
        : { applies: false, why: `${config.node.role}s hold no etcd data` },
  },
  {
    name: 'etcd-restore',
    decide: ({ config }) => {
      if (!isController(config)) return { applies: false, why: `${config.node.role}s hold no etcd data` };
      if (!isFirstController(config)) return { applies: false, why: `controller ${config.node.controllerIndex} joins the running cluster; only 00 restores` };
      if (config.etcd?.restore === 'never') return { applies: false, why: 'etcd.restore is never' };
      if (!config.etcd?.backup.bucket) return { applies: false, why: 'no etcd.backup.bucket configured' };
      return { applies: true, why: `only if the volume is blank and no control plane answers: restore the newest backup from s3://${config.etcd.backup.bucket}` };
    },
  },
  {
    name: 'kube-version',
    decide: ({ config }) => {
      if (!isKubernetesNode(config)) return { applies: false, why: `${config.node.role}s run no Kubernetes` };
      if (isFirstController(config)) {
        return {
          applies: true,
          why: config.cluster?.kubernetesVersion
            ? `controller 00: install the version the cluster runs, or ${config.cluster.kubernetesVersion} for a new cluster (never older than the cluster)`
            : 'controller 00 without cluster.kubernetesVersion: install the version the cluster runs',
        };
      }
      return { applies: true, why: `wait for the control plane (up to ${config.boot.controlPlaneWait}s), then install exactly the version the cluster runs (never the configured one)` };
    },
  },
  {
    name: 'control-plane',
    decide: ({ config }) =>
      isController(config)
        ? {
            applies: true,
            why: isFirstController(config)
              ? 'controller 00: kubeadm init on a new cluster, restore on existing data, or join when the cluster runs'
              : `controller ${config.node.controllerIndex}: wait for the control plane, then join it`,
          }
        : { applies: false, why: 'not a controller' },
  },
  {
    name: 'kube-upgrade',
    decide: ({ config }) => {
      if (!isController(config)) return { applies: false, why: 'only controller 00 changes the cluster version' };
      if (!isFirstController(config)) return { applies: false, why: `controller ${config.node.controllerIndex} follows the cluster version; only 00 upgrades` };
      if (!config.cluster?.kubernetesVersion) return { applies: false, why: 'no cluster.kubernetesVersion configured' };
      return { applies: true, why: `if the cluster runs older than ${config.cluster.kubernetesVersion}: kubeadm upgrade apply, then kubelet` };
    },
  },
  {
    name: 'worker-join',
    decide: ({ config }) =>
      config.node.role === 'worker'
        ? { applies: true, why: `wait for the API endpoint (up to ${config.boot.controlPlaneWait}s), then kubeadm join` }
        : { applies: false, why: 'not a worker' },
  },
  {
    name: 'takeover',
    decide: ({ config }) => {
      if (!serviceRoles.has(config.node.role)) return { applies: false, why: `${config.node.role}s take nothing over` };
      const t = config.takeover;
      if (!t) return { applies: false, why: 'no takeover section configured' };
      const what = [
        t.networkInterfaceId ? `ENI ${t.networkInterfaceId}` : '',
        t.elasticIp ? `Elastic IP ${t.elasticIp.allocationId ?? 'from the pool'}` : '',
        t.routeTables ? `routes ${t.destinations.join(', ')}` : '',
      ].filter(Boolean);
      return {
        applies: true,
        why: `${t.readinessCommand ? 'once the readiness command succeeds, ' : ''}take ${what.join(', ') || 'nothing'} over from an instance launched earlier, then verify`,
      };
    },
  },
  {
    name: 'signal',
    decide: ({ config, identity }) => {
      const what: string[] = [];
      if (identity.stackName && identity.logicalId) what.push(`CloudFormation SignalResource to ${identity.stackName}/${identity.logicalId}`);
      if (identity.asgName && config.boot.launchLifecycleHook) what.push(`CompleteLifecycleAction on ${identity.asgName}/${config.boot.launchLifecycleHook}`);
      return what.length
        ? { applies: true, why: what.join('; ') }
        : { applies: false, why: 'no CloudFormation stack tags and no launch lifecycle hook configured' };
    },
  },
  {
    name: 'notify',
    decide: ({ config }) =>
      config.notify.snsTopicArn
        ? { applies: true, why: `boot.succeeded / boot.failed to ${config.notify.snsTopicArn}` }
        : { applies: false, why: 'no notify.snsTopicArn configured' },
  },
];

/** Phases that run after a failure too: they report the outcome (FAILURE signal, boot.failed). */
export const reportingPhases: ReadonlySet<BootPhaseName> = new Set(['signal', 'notify']);

export function planBoot(f: NodeFacts): PhaseDecision[] {
  return bootPhaseOrder.map((p) => ({ name: p.name, ...p.decide(f) }));
}
