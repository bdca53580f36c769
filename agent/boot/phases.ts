import type { BootPhase } from './context.js';
import { controlPlanePhase } from './control-plane.js';
import { etcdRestorePhase } from './etcd-restore.js';
import { etcdVolumePhase } from './etcd-volume.js';
import { kubeUpgradePhase } from './kube-upgrade.js';
import { kubeVersionPhase } from './kube-version.js';
import { neuronPhase } from './neuron.js';
import { notifyPhase } from './notify.js';
import type { BootPhaseName } from './plan.js';
import { signalPhase } from './signal.js';
import { takeoverPhase } from './takeover.js';
import { workerJoinPhase } from './worker-join.js';

/** Every boot phase by name; the order and whether each applies are in plan.ts. identity is run by the runner itself. */
export const bootPhases: Record<Exclude<BootPhaseName, 'identity'>, BootPhase> = {
  neuron: neuronPhase,
  'etcd-volume': etcdVolumePhase,
  'etcd-restore': etcdRestorePhase,
  'kube-version': kubeVersionPhase,
  'control-plane': controlPlanePhase,
  'kube-upgrade': kubeUpgradePhase,
  'worker-join': workerJoinPhase,
  takeover: takeoverPhase,
  signal: signalPhase,
  notify: notifyPhase,
};
