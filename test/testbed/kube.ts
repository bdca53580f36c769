import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { stringify } from 'yaml';
import { KubeClient, loadKubeconfig } from '../../agent/host/kube.js';
import { startEtcd, type EtcdMember } from './etcd.js';
import { makeKeyPair, makeTestCa, type Credentials } from './pki.js';
import { freePort } from './ports.js';
import { startServer, testbedBinDir, type ServerProcess } from './process.js';

/**
 * A real Kubernetes API for tests: Debian's etcd plus the kube-apiserver built by
 * k8s/build.sh, on loopback ports, with a generated CA (openssl), Node,RBAC authorization
 * and the NodeRestriction admission plugin (how kubeadm runs it). No controller manager and
 * no scheduler: tests bind pods to nodes themselves, `startFakeKubelet` plays the kubelet
 * (registers its Node, finalises pods the API marks for deletion), and `setPdbStatus`
 * plays the disruption controller.
 */

export function kubeBinDir(): string {
  return testbedBinDir();
}

export async function kubeApiserverAvailable(): Promise<boolean> {
  try {
    await fs.access(path.join(kubeBinDir(), 'kube-apiserver'), fs.constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

export type { Credentials };

export interface Kube {
  server: string;
  dir: string;
  caFile: string;
  /** Admin kubeconfig (system:masters). */
  adminKubeconfig: string;
  admin: KubeClient;
  /** A client certificate for `system:node:<name>` in group `system:nodes`, as the kubelet has. */
  nodeCredentials(name: string): Promise<Credentials>;
  /** A kubeconfig file with the node's credentials embedded, written to `file`. */
  writeNodeKubeconfig(name: string, file: string): Promise<void>;
  nodeClient(name: string): Promise<KubeClient>;
  /** PID of the running kube-apiserver (e.g. to SIGSTOP it: a server that accepts and never answers). */
  apiserverPid(): number | undefined;
  /** Stop only the API server (etcd stays); `startApiserver` brings it back on the same port. */
  stopApiserver(): Promise<void>;
  startApiserver(): Promise<void>;
  stop(): Promise<void>;
}

export function kubeconfigYaml(server: string, ca: string, creds: Credentials, user: string): string {
  const b64 = (s: string) => Buffer.from(s).toString('base64');
  return stringify({
    apiVersion: 'v1',
    kind: 'Config',
    clusters: [{ name: 'test', cluster: { server, 'certificate-authority-data': b64(ca) } }],
    users: [{ name: user, user: { 'client-certificate-data': b64(creds.cert), 'client-key-data': b64(creds.key) } }],
    contexts: [{ name: 'test', context: { cluster: 'test', user } }],
    'current-context': 'test',
  });
}

/** An etcd the caller runs (and may replace between `stopApiserver` and `startApiserver`): its URL and the API server's client certificate. */
export interface ExternalEtcd {
  url: string;
  caFile: string;
  certFile: string;
  keyFile: string;
}

/** The API server on its own etcd (Debian's, plain HTTP), or on `o.etcd`, which stop() leaves running. */
export async function startKube(o: { etcd?: ExternalEtcd } = {}): Promise<Kube> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'zdt-kube-'));
  const pki = path.join(dir, 'pki');
  const testCa = await makeTestCa(pki);
  await testCa.server('apiserver', '/CN=kube-apiserver', ['IP:127.0.0.1', 'IP:10.96.0.1', 'DNS:localhost', 'DNS:kubernetes', 'DNS:kubernetes.default', 'DNS:kubernetes.default.svc']);
  await makeKeyPair(pki, 'sa');
  const adminCreds = await testCa.client('admin', '/O=system:masters/CN=kubernetes-admin');
  const ca = testCa.ca;

  let etcd: EtcdMember | undefined;
  let apiserver: ServerProcess | undefined;
  try {
    if (!o.etcd) etcd = await startEtcd({ dir: path.join(dir, 'etcd') });
    const port = await freePort();
    const server = `https://127.0.0.1:${port}`;
    const adminKubeconfig = path.join(dir, 'admin.conf');
    await fs.writeFile(adminKubeconfig, kubeconfigYaml(server, ca, adminCreds, 'admin'));
    const admin = new KubeClient(loadKubeconfig(adminKubeconfig));
    const etcdArgs = o.etcd
      ? [`--etcd-servers=${o.etcd.url}`, `--etcd-cafile=${o.etcd.caFile}`, `--etcd-certfile=${o.etcd.certFile}`, `--etcd-keyfile=${o.etcd.keyFile}`]
      : [`--etcd-servers=${etcd!.clientUrl}`];

    const startApiserver = async () => {
      apiserver = await startServer({
        what: 'kube-apiserver',
        file: path.join(kubeBinDir(), 'kube-apiserver'),
        args: [
          '--bind-address=127.0.0.1',
          `--secure-port=${port}`,
          '--advertise-address=192.0.2.10',
          ...etcdArgs,
          `--client-ca-file=${pki}/ca.crt`,
          `--tls-cert-file=${pki}/apiserver.crt`,
          `--tls-private-key-file=${pki}/apiserver.key`,
          '--authorization-mode=Node,RBAC',
          '--enable-admission-plugins=NodeRestriction',
          '--service-account-issuer=https://kubernetes.default.svc.cluster.local',
          `--service-account-key-file=${pki}/sa.pub`,
          `--service-account-signing-key-file=${pki}/sa.key`,
          '--service-cluster-ip-range=10.96.0.0/12',
          '--allow-privileged=true',
        ],
        timeoutMs: 90_000,
        ready: () => admin.readyz(1000),
      });
    };
    await startApiserver();

    const nodeCreds = new Map<string, Credentials>();
    const nodeCredentials = async (name: string) => {
      let c = nodeCreds.get(name);
      if (!c) {
        c = await testCa.client(`node-${name}`, `/O=system:nodes/CN=system:node:${name}`);
        nodeCreds.set(name, c);
      }
      return c;
    };
    const writeNodeKubeconfig = async (name: string, file: string) => {
      await fs.mkdir(path.dirname(file), { recursive: true });
      await fs.writeFile(file, kubeconfigYaml(server, ca, await nodeCredentials(name), `system:node:${name}`), { mode: 0o600 });
    };
    return {
      server,
      dir,
      caFile: path.join(pki, 'ca.crt'),
      adminKubeconfig,
      admin,
      nodeCredentials,
      writeNodeKubeconfig,
      nodeClient: async (name) => {
        const c = await nodeCredentials(name);
        return new KubeClient({ server, ca: Buffer.from(ca), cert: Buffer.from(c.cert), key: Buffer.from(c.key) });
      },
      apiserverPid: () => apiserver?.pid,
      stopApiserver: async () => {
        await apiserver?.stop(10_000);
        apiserver = undefined;
      },
      startApiserver,
      stop: async () => {
        admin.close();
        await apiserver?.stop(10_000);
        await etcd?.stop();
        await fs.rm(dir, { recursive: true, force: true });
      },
    };
  } catch (err) {
    await apiserver?.stop();
    await etcd?.stop();
    await fs.rm(dir, { recursive: true, force: true });
    throw err;
  }
}

export interface FakeKubelet {
  nodeName: string;
  /** Pods it finalised, in order, with the grace period the deletion asked for. */
  finalised: Array<{ pod: string; graceS: number | undefined }>;
  stop(): Promise<void>;
}

/**
 * The parts of a kubelet the drain depends on, with the node's own credentials: registers
 * the Node (Ready), then every `pollMs` lists the pods bound to it and finalises those the
 * API marked for deletion (DELETE with grace 0 and the pod's UID, as the kubelet's status
 * manager does), `finaliseAfterMs` after it first saw the mark.
 */
export async function startFakeKubelet(kube: Kube, nodeName: string, o: { pollMs?: number; finaliseAfterMs?: number; labels?: Record<string, string> } = {}): Promise<FakeKubelet> {
  const client = await kube.nodeClient(nodeName);
  await client.call('POST', '/api/v1/nodes', {
    body: {
      apiVersion: 'v1',
      kind: 'Node',
      metadata: { name: nodeName, labels: { 'kubernetes.io/hostname': nodeName, ...o.labels } },
      status: { conditions: [{ type: 'Ready', status: 'True', reason: 'KubeletReady', message: 'fake kubelet', lastHeartbeatTime: new Date().toISOString(), lastTransitionTime: new Date().toISOString() }] },
    },
    okStatus: [409],
  });
  const finalised: FakeKubelet['finalised'] = [];
  const firstSeen = new Map<string, number>();
  let stopped = false;
  const loop = (async () => {
    while (!stopped) {
      try {
        const res = await client.raw<{ items?: Pod[] }>('GET', `/api/v1/pods?fieldSelector=${encodeURIComponent(`spec.nodeName=${nodeName}`)}`, { timeoutMs: 5000 });
        for (const p of res.status === 200 ? (res.body.items ?? []) : []) {
          if (!p.metadata.deletionTimestamp) continue;
          const id = `${p.metadata.namespace}/${p.metadata.name}`;
          const seen = firstSeen.get(p.metadata.uid) ?? Date.now();
          firstSeen.set(p.metadata.uid, seen);
          if (Date.now() - seen < (o.finaliseAfterMs ?? 0)) continue;
          const del = await client.raw('DELETE', `/api/v1/namespaces/${p.metadata.namespace}/pods/${p.metadata.name}`, {
            body: { apiVersion: 'v1', kind: 'DeleteOptions', gracePeriodSeconds: 0, preconditions: { uid: p.metadata.uid } },
            timeoutMs: 5000,
          });
          if (del.status === 200 || del.status === 404) finalised.push({ pod: id, graceS: p.metadata.deletionGracePeriodSeconds });
        }
      } catch {
        // API down (a test stopped it): try again.
      }
      await new Promise((r) => setTimeout(r, o.pollMs ?? 200));
    }
  })();
  return {
    nodeName,
    finalised,
    stop: async () => {
      stopped = true;
      await loop;
      client.close();
    },
  };
}

interface Pod {
  metadata: { name: string; namespace: string; uid: string; deletionTimestamp?: string; deletionGracePeriodSeconds?: number };
}

/** Sets a PodDisruptionBudget's status as the disruption controller would (observedGeneration current). */
export async function setPdbStatus(admin: KubeClient, namespace: string, name: string, s: { disruptionsAllowed: number; currentHealthy: number; desiredHealthy: number; expectedPods: number }): Promise<void> {
  const url = `/apis/policy/v1/namespaces/${namespace}/poddisruptionbudgets/${name}`;
  const pdb = (await admin.call<{ metadata: { generation: number }; status?: Record<string, unknown> }>('GET', url)).body;
  await admin.call('PUT', `${url}/status`, { body: { ...pdb, status: { observedGeneration: pdb.metadata.generation, ...s } } });
}

/** Namespace plus the `default` ServiceAccount pods need (no controller manager creates it here). */
export async function ensureNamespace(admin: KubeClient, name: string): Promise<void> {
  await admin.call('POST', '/api/v1/namespaces', { body: { apiVersion: 'v1', kind: 'Namespace', metadata: { name } }, okStatus: [409] });
  await admin.call('POST', `/api/v1/namespaces/${name}/serviceaccounts`, { body: { apiVersion: 'v1', kind: 'ServiceAccount', metadata: { name: 'default' } }, okStatus: [409] });
}

/**
 * A pod bound to `node` (no scheduler here), with the given owner, labels and grace period,
 * and reported Running and Ready as its kubelet would (the Eviction API ignores PDBs for
 * pending pods, so a PDB test needs running ones).
 */
export async function createPod(
  admin: KubeClient,
  o: {
    namespace: string;
    name: string;
    node: string;
    labels?: Record<string, string>;
    owner?: { kind: string; name: string };
    annotations?: Record<string, string>;
    graceS?: number;
    emptyDir?: boolean;
    pending?: boolean;
  },
): Promise<void> {
  await admin.call('POST', `/api/v1/namespaces/${o.namespace}/pods`, {
    body: {
      apiVersion: 'v1',
      kind: 'Pod',
      metadata: {
        name: o.name,
        labels: o.labels ?? {},
        annotations: o.annotations ?? {},
        ownerReferences: o.owner
          ? [{ apiVersion: o.owner.kind === 'DaemonSet' || o.owner.kind === 'ReplicaSet' ? 'apps/v1' : 'v1', kind: o.owner.kind, name: o.owner.name, uid: '00000000-0000-0000-0000-000000000001', controller: true }]
          : [],
      },
      spec: {
        nodeName: o.node,
        automountServiceAccountToken: false,
        terminationGracePeriodSeconds: o.graceS ?? 30,
        containers: [{ name: 'c', image: 'registry.k8s.io/pause:3.10', ...(o.emptyDir ? { volumeMounts: [{ name: 'scratch', mountPath: '/scratch' }] } : {}) }],
        ...(o.emptyDir ? { volumes: [{ name: 'scratch', emptyDir: {} }] } : {}),
      },
    },
  });
  if (o.pending) return;
  const now = new Date().toISOString();
  await admin.call('PATCH', `/api/v1/namespaces/${o.namespace}/pods/${o.name}/status`, {
    contentType: 'application/merge-patch+json',
    body: {
      status: {
        phase: 'Running',
        startTime: now,
        conditions: [
          { type: 'Ready', status: 'True', lastTransitionTime: now },
          { type: 'ContainersReady', status: 'True', lastTransitionTime: now },
        ],
        containerStatuses: [{ name: 'c', ready: true, restartCount: 0, image: 'registry.k8s.io/pause:3.10', imageID: '', state: { running: { startedAt: now } } }],
      },
    },
  });
}

/**
 * The grant that lets nodes delete their own Node object: the agent's own definitions and
 * create-or-replace (controller 00 applies them at bootstrap; docs/terminate.md).
 */
export { applyNodeSelfDeleteRbac, NODE_SELF_DELETE_RBAC } from '../../agent/node-rbac.js';

/** A mirror pod, as the kubelet creates one for a static pod: with the node's credentials, owned by its Node. */
export async function createMirrorPod(kube: Kube, o: { namespace: string; name: string; node: string }): Promise<void> {
  const client = await kube.nodeClient(o.node);
  try {
    const node = (await client.call<{ metadata: { uid: string } }>('GET', `/api/v1/nodes/${o.node}`)).body;
    await client.call('POST', `/api/v1/namespaces/${o.namespace}/pods`, {
      body: {
        apiVersion: 'v1',
        kind: 'Pod',
        metadata: {
          name: o.name,
          annotations: { 'kubernetes.io/config.mirror': 'static-pod-hash', 'kubernetes.io/config.source': 'file' },
          ownerReferences: [{ apiVersion: 'v1', kind: 'Node', name: o.node, uid: node.metadata.uid, controller: true }],
        },
        spec: { nodeName: o.node, automountServiceAccountToken: false, containers: [{ name: 'c', image: 'registry.k8s.io/pause:3.10' }] },
      },
    });
  } finally {
    client.close();
  }
}
