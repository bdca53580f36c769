import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AgentError } from '../../agent/errors.js';
import type { KubeClient } from '../../agent/host/kube.js';
import { silentLogger } from '../../agent/log/logger.js';
import { cordon, deleteOwnNode, drainNode } from '../../agent/terminate/drain.js';
import {
  applyNodeSelfDeleteRbac,
  createMirrorPod,
  createPod,
  ensureNamespace,
  kubeApiserverAvailable,
  setPdbStatus,
  startFakeKubelet,
  startKube,
  type FakeKubelet,
  type Kube,
} from '../testbed/kube.js';

/**
 * The drain against the real kube-apiserver (Node,RBAC authorization, NodeRestriction),
 * always with the draining node's own credentials, as `zdt-agent terminate` runs it.
 */

const available = await kubeApiserverAvailable();
let kube: Kube;
const kubelets: FakeKubelet[] = [];
const clients: KubeClient[] = [];

async function node(name: string, o: { finaliseAfterMs?: number } = {}): Promise<KubeClient> {
  kubelets.push(await startFakeKubelet(kube, name, o));
  const c = await kube.nodeClient(name);
  clients.push(c);
  return c;
}

async function podNames(nodeName: string): Promise<string[]> {
  const res = await kube.admin.call<{ items: Array<{ metadata: { name: string } }> }>('GET', `/api/v1/pods?fieldSelector=spec.nodeName%3D${nodeName}`);
  return res.body.items.map((p) => p.metadata.name).sort();
}

const window = (evictS: number, totalS: number) => {
  const now = Date.now();
  return { evictUntil: now + evictS * 1000, deadline: now + totalS * 1000, signal: AbortSignal.timeout(totalS * 1000) };
};

beforeAll(async () => {
  if (!available) return;
  kube = await startKube();
  await ensureNamespace(kube.admin, 'app');
});

afterAll(async () => {
  for (const c of clients) c.close();
  for (const k of kubelets) await k.stop();
  await kube?.stop();
});

describe.skipIf(!available)('drain with the node credentials (real kube-apiserver)', () => {
  it('cordons, evicts every pod but DaemonSet and mirror pods, and waits until they are gone', async () => {
    const me = await node('worker-a');
    await node('worker-b');
    const rs = { kind: 'ReplicaSet', name: 'web-abc' };
    await createPod(kube.admin, { namespace: 'app', name: 'web-1', node: 'worker-a', owner: rs });
    await createPod(kube.admin, { namespace: 'app', name: 'web-2', node: 'worker-a', owner: rs, graceS: 600 });
    await createPod(kube.admin, { namespace: 'app', name: 'bare', node: 'worker-a' });
    await createPod(kube.admin, { namespace: 'app', name: 'scratch', node: 'worker-a', owner: rs, emptyDir: true });
    await createPod(kube.admin, { namespace: 'app', name: 'agent-x1', node: 'worker-a', owner: { kind: 'DaemonSet', name: 'agent' } });
    await createMirrorPod(kube, { namespace: 'app', name: 'static-worker-a', node: 'worker-a' });
    await createPod(kube.admin, { namespace: 'app', name: 'elsewhere', node: 'worker-b', owner: rs });

    const report = await drainNode({ kube: me, nodeName: 'worker-a', ...window(55, 60), blockedPods: 'stop', log: silentLogger });

    expect(report.complete).toBe(true);
    expect(report.evicted.sort()).toEqual(['app/bare', 'app/scratch', 'app/web-1', 'app/web-2']);
    expect(report.skipped).toEqual({ daemonSet: ['app/agent-x1'], mirror: ['app/static-worker-a'] });
    expect(report.remaining).toEqual([]);
    expect(await podNames('worker-a')).toEqual(['agent-x1', 'static-worker-a']);
    expect(await podNames('worker-b')).toEqual(['elsewhere']);
    const n = await kube.admin.call<{ spec: { unschedulable?: boolean } }>('GET', '/api/v1/nodes/worker-a');
    expect(n.body.spec.unschedulable).toBe(true);
    // Each pod's own grace period, capped by what was left of the drain window.
    const web2 = kubelets[0]!.finalised.find((f) => f.pod === 'app/web-2')!;
    expect(web2.graceS).toBeGreaterThan(0);
    expect(web2.graceS).toBeLessThanOrEqual(60);
    expect(kubelets[0]!.finalised.find((f) => f.pod === 'app/web-1')!.graceS).toBe(30);
  });

  it('a PodDisruptionBudget allowing no disruption blocks until the deadline; then the drain reports the pods left (blockedPods: stop)', async () => {
    const me = await node('worker-c');
    await createPod(kube.admin, { namespace: 'app', name: 'db-0', node: 'worker-c', labels: { app: 'db' }, owner: { kind: 'StatefulSet', name: 'db' } });
    await createPod(kube.admin, { namespace: 'app', name: 'db-1', node: 'worker-c', labels: { app: 'db' }, owner: { kind: 'StatefulSet', name: 'db' } });
    await createPod(kube.admin, { namespace: 'app', name: 'free', node: 'worker-c', owner: { kind: 'ReplicaSet', name: 'free-1' } });
    await kube.admin.call('POST', '/apis/policy/v1/namespaces/app/poddisruptionbudgets', {
      body: { apiVersion: 'policy/v1', kind: 'PodDisruptionBudget', metadata: { name: 'db' }, spec: { minAvailable: 2, selector: { matchLabels: { app: 'db' } } } },
    });
    await setPdbStatus(kube.admin, 'app', 'db', { disruptionsAllowed: 0, currentHealthy: 2, desiredHealthy: 2, expectedPods: 2 });

    const started = Date.now();
    const report = await drainNode({ kube: me, nodeName: 'worker-c', ...window(3, 5), blockedPods: 'stop', log: silentLogger });
    expect(Date.now() - started).toBeLessThan(30_000); // generous: it does not hang
    expect(report.complete).toBe(false);
    expect(report.evicted).toEqual(['app/free']);
    expect(report.blocked.map((b) => b.pod).sort()).toEqual(['app/db-0', 'app/db-1']);
    expect(report.blocked[0]!.reason).toMatch(/disruption budget/i);
    expect(report.remaining.sort()).toEqual(['app/db-0', 'app/db-1']);
    expect(await podNames('worker-c')).toEqual(['db-0', 'db-1']);
  });

  it('blockedPods: delete removes the pods a PDB still blocks at the drain deadline', async () => {
    const me = await node('worker-d');
    await createPod(kube.admin, { namespace: 'app', name: 'cache-0', node: 'worker-d', labels: { app: 'cache' }, owner: { kind: 'StatefulSet', name: 'cache' }, graceS: 900 });
    await kube.admin.call('POST', '/apis/policy/v1/namespaces/app/poddisruptionbudgets', {
      body: { apiVersion: 'policy/v1', kind: 'PodDisruptionBudget', metadata: { name: 'cache' }, spec: { maxUnavailable: 0, selector: { matchLabels: { app: 'cache' } } } },
    });
    await setPdbStatus(kube.admin, 'app', 'cache', { disruptionsAllowed: 0, currentHealthy: 1, desiredHealthy: 1, expectedPods: 1 });

    const report = await drainNode({ kube: me, nodeName: 'worker-d', ...window(2, 12), blockedPods: 'delete', log: silentLogger });
    expect(report.blocked.map((b) => b.pod)).toEqual(['app/cache-0']);
    expect(report.deleted).toEqual(['app/cache-0']);
    expect(report.complete).toBe(true);
    expect(await podNames('worker-d')).toEqual([]);
    const k = kubelets.find((x) => x.nodeName === 'worker-d')!;
    expect(k.finalised[0]!.graceS).toBeLessThanOrEqual(10); // 900 s capped by the window
  });

  it('evictions retried through 429s go ahead once the PDB allows a disruption', async () => {
    const me = await node('worker-e');
    await createPod(kube.admin, { namespace: 'app', name: 'api-0', node: 'worker-e', labels: { app: 'api' }, owner: { kind: 'ReplicaSet', name: 'api' } });
    await kube.admin.call('POST', '/apis/policy/v1/namespaces/app/poddisruptionbudgets', {
      body: { apiVersion: 'policy/v1', kind: 'PodDisruptionBudget', metadata: { name: 'api' }, spec: { minAvailable: 1, selector: { matchLabels: { app: 'api' } } } },
    });
    await setPdbStatus(kube.admin, 'app', 'api', { disruptionsAllowed: 0, currentHealthy: 1, desiredHealthy: 1, expectedPods: 1 });
    // The "controller" sees a replacement come up elsewhere a moment later.
    const later = setTimeout(() => void setPdbStatus(kube.admin, 'app', 'api', { disruptionsAllowed: 1, currentHealthy: 2, desiredHealthy: 1, expectedPods: 2 }), 1500);
    try {
      const report = await drainNode({ kube: me, nodeName: 'worker-e', ...window(20, 25), blockedPods: 'stop', log: silentLogger });
      expect(report.complete).toBe(true);
      expect(report.evicted).toEqual(['app/api-0']);
      expect(report.blocked).toEqual([]);
    } finally {
      clearTimeout(later);
    }
  });

  it('a Node object that is gone counts as drained', async () => {
    const me = await kube.nodeClient('worker-gone');
    clients.push(me);
    const report = await drainNode({ kube: me, nodeName: 'worker-gone', ...window(5, 5), blockedPods: 'stop', log: silentLogger });
    expect(report).toMatchObject({ nodeGone: true, complete: true });
  });
});

describe.skipIf(!available)('self-delete with the node credentials', () => {
  it('is refused by default and the error names the missing permission; after the documented RBAC only its own Node can go', async () => {
    const me = await node('worker-f');
    await node('worker-g');
    expect(await cordon(me, 'worker-f', AbortSignal.timeout(5000))).toBe(true);

    const err = await deleteOwnNode(me, 'worker-f', AbortSignal.timeout(5000)).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(AgentError);
    expect((err as AgentError).code).toBe('NodePermissionMissing');
    expect((err as AgentError).message).toMatch(/system:node:worker-f may not delete nodes/);
    expect((err as AgentError).hint).toMatch(/docs\/terminate\.md/);

    await applyNodeSelfDeleteRbac(kube.admin);
    // The RBAC authorizer sees a new binding within moments; wait for it rather than guess.
    let result: string | undefined;
    for (let i = 0; i < 50 && !result; i++) {
      result = await deleteOwnNode(me, 'worker-f', AbortSignal.timeout(5000)).catch(() => undefined);
      if (!result) await new Promise((r) => setTimeout(r, 200));
    }
    expect(result).toBe('deleted');
    expect((await kube.admin.raw('GET', '/api/v1/nodes/worker-f')).status).toBe(404);
    expect(await deleteOwnNode(me, 'worker-f', AbortSignal.timeout(5000))).toBe('not-found');

    // NodeRestriction: the same grant does not let a node delete another node.
    const other = await me.raw<{ message: string }>('DELETE', '/api/v1/nodes/worker-g');
    expect(other.status).toBe(403);
    expect(other.body.message).toMatch(/not allowed to modify node "worker-g"/);
    expect((await kube.admin.raw('GET', '/api/v1/nodes/worker-g')).status).toBe(200);
  });
});
