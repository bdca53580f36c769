import type { KubeClient, KubeObject } from './host/kube.js';

/**
 * The one grant the worker's self-delete needs (docs/terminate.md, "Permissions"). The Node
 * authorizer lets a kubelet patch its own Node object but not delete it. RBAC cannot say "its
 * own Node", so the ClusterRole allows `delete nodes` to the group of all nodes, and the
 * NodeRestriction admission plugin (on in kubeadm clusters) keeps each node to itself.
 *
 * Shared by boot and terminate (neither imports the other): controller 00 applies these
 * objects after `kubeadm init` (boot/control-plane.ts), terminate's self-delete uses them; clusters
 * not bootstrapped by zdt-agent apply the same objects from the YAML in docs/terminate.md
 * (test/unit/node-rbac-doc.test.ts keeps the two equal).
 */

export const NODE_SELF_DELETE = 'zdt-agent:node-self-delete';

export const NODE_SELF_DELETE_RBAC: readonly KubeObject[] = [
  {
    apiVersion: 'rbac.authorization.k8s.io/v1',
    kind: 'ClusterRole',
    metadata: { name: NODE_SELF_DELETE },
    rules: [{ apiGroups: [''], resources: ['nodes'], verbs: ['delete'] }],
  },
  {
    apiVersion: 'rbac.authorization.k8s.io/v1',
    kind: 'ClusterRoleBinding',
    metadata: { name: NODE_SELF_DELETE },
    roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'ClusterRole', name: NODE_SELF_DELETE },
    subjects: [{ apiGroup: 'rbac.authorization.k8s.io', kind: 'Group', name: 'system:nodes' }],
  },
];

/**
 * Creates the ClusterRole and ClusterRoleBinding, or replaces them with these definitions
 * (an edited copy is put back). Needs cluster-admin credentials. Returns what it did, by kind.
 */
export async function applyNodeSelfDeleteRbac(kube: KubeClient, signal?: AbortSignal): Promise<Record<string, 'created' | 'replaced'>> {
  const done: Record<string, 'created' | 'replaced'> = {};
  for (const obj of NODE_SELF_DELETE_RBAC) {
    // ClusterRole -> /apis/rbac.authorization.k8s.io/v1/clusterroles
    done[obj.kind] = await kube.createOrReplace(`/apis/${obj.apiVersion}/${obj.kind.toLowerCase()}s`, obj, { signal });
  }
  return done;
}
