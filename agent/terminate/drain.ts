import { X509Certificate } from 'node:crypto';
import { AgentError } from '../errors.js';
import { KubeApiError, type KubeClient, type KubeCredentials } from '../host/kube.js';
import { jitter, sleep } from '../host/retry.js';
import type { Logger } from '../log/logger.js';

/**
 * Cordon and drain this node through the Eviction API (policy/v1), and delete its Node
 * object, with the node's own kubelet credentials. What the Node authorizer and the
 * NodeRestriction admission plugin allow a node (Kubernetes 1.34, tested against the real
 * kube-apiserver): patch its own Node (cordon), list the pods bound to it (with the
 * spec.nodeName field selector), evict and delete those pods. Not: delete its own Node;
 * that needs the ClusterRole in docs/terminate.md, which NodeRestriction still limits to the
 * node's own object.
 */

export interface Pod {
  metadata: {
    name: string;
    namespace: string;
    uid: string;
    deletionTimestamp?: string;
    annotations?: Record<string, string>;
    ownerReferences?: Array<{ kind: string; name: string; controller?: boolean }>;
  };
  spec: { terminationGracePeriodSeconds?: number; nodeName?: string };
  status?: { phase?: string };
}

export interface DrainOptions {
  kube: KubeClient;
  nodeName: string;
  /** Epoch ms until which blocked evictions are retried; then `blockedPods` applies. */
  evictUntil: number;
  /** Epoch ms of the step's end: grace periods are capped to it, nothing waits past it. */
  deadline: number;
  signal: AbortSignal;
  blockedPods: 'stop' | 'delete';
  log: Logger;
  /** Evictions in flight at once (kubectl drain sends them all at once). */
  concurrency?: number;
  /** How often the pods still on the node are listed. */
  pollMs?: number;
}

export interface DrainReport {
  /** The Node object was already gone: nothing to drain. */
  nodeGone: boolean;
  evicted: string[];
  skipped: { daemonSet: string[]; mirror: string[] };
  /** Pods a PodDisruptionBudget (or an error) still blocked at the eviction deadline, with the last reason. */
  blocked: Array<{ pod: string; reason: string }>;
  /** Pods deleted by blockedPods: delete. */
  deleted: string[];
  /** Whether the pods on the node were listed at all (else `remaining` knows nothing). */
  podsListed: boolean;
  /** Pods (not skipped) still on the node at the end, e.g. still terminating. */
  remaining: string[];
  complete: boolean;
}

const MIRROR = 'kubernetes.io/config.mirror';
const podName = (p: Pod) => `${p.metadata.namespace}/${p.metadata.name}`;
const controllerOf = (p: Pod) => p.metadata.ownerReferences?.find((o) => o.controller) ?? p.metadata.ownerReferences?.[0];

/** The node name a kubelet credential speaks for: the certificate's CN `system:node:<name>`. */
export function nodeNameOf(creds: KubeCredentials): string | undefined {
  if (!creds.cert) return undefined;
  try {
    const subject = new X509Certificate(creds.cert).subject;
    return /(?:^|\n)CN=system:node:([^\n]+)/.exec(subject)?.[1];
  } catch {
    return undefined;
  }
}

/** A 403 turned into the permission that is missing, and where the fix is. */
export function permissionError(err: KubeApiError, nodeName: string, what: string): AgentError {
  return new AgentError('NodePermissionMissing', `system:node:${nodeName} may not ${what}: ${err.message}`, {
    hint: 'a node may do all this by default except delete its own Node, which ClusterRoleBinding zdt-agent:node-self-delete grants (controller 00 applies it at bootstrap): check that it exists; see docs/terminate.md (Permissions)',
    cause: err,
  });
}

async function mustSucceed<T>(p: Promise<T>, nodeName: string, what: string): Promise<T> {
  try {
    return await p;
  } catch (err) {
    if (err instanceof KubeApiError && err.status === 403) throw permissionError(err, nodeName, what);
    throw err;
  }
}

/** Cordon: spec.unschedulable=true. Returns false when the Node object is already gone. */
export function cordon(kube: KubeClient, nodeName: string, signal: AbortSignal): Promise<boolean> {
  return setUnschedulable(kube, nodeName, true, signal);
}

/** Uncordon (the watcher undoing its own cordon). Returns false when the Node object is gone. */
export function uncordon(kube: KubeClient, nodeName: string, signal: AbortSignal): Promise<boolean> {
  return setUnschedulable(kube, nodeName, false, signal);
}

async function setUnschedulable(kube: KubeClient, nodeName: string, unschedulable: boolean, signal: AbortSignal): Promise<boolean> {
  const res = await mustSucceed(
    kube.call('PATCH', `/api/v1/nodes/${encodeURIComponent(nodeName)}`, {
      // null removes the field, as kubectl uncordon leaves it.
      body: { spec: { unschedulable: unschedulable ? true : null } },
      contentType: 'application/merge-patch+json',
      okStatus: [404],
      signal,
    }),
    nodeName,
    `patch its Node (${unschedulable ? 'cordon' : 'uncordon'})`,
  );
  return res.status !== 404;
}

/** Whether the Node takes new pods: true, false (cordoned), undefined when it is gone. */
export async function isSchedulable(kube: KubeClient, nodeName: string, signal: AbortSignal): Promise<boolean | undefined> {
  const res = await mustSucceed(
    kube.call<{ spec?: { unschedulable?: boolean } }>('GET', `/api/v1/nodes/${encodeURIComponent(nodeName)}`, { okStatus: [404], signal }),
    nodeName,
    'get its Node',
  );
  return res.status === 404 ? undefined : res.body.spec?.unschedulable !== true;
}

/** Delete the own Node object. 'not-found' counts as done. */
export async function deleteOwnNode(kube: KubeClient, nodeName: string, signal: AbortSignal): Promise<'deleted' | 'not-found'> {
  const res = await mustSucceed(
    kube.call('DELETE', `/api/v1/nodes/${encodeURIComponent(nodeName)}`, { okStatus: [404], signal }),
    nodeName,
    'delete nodes (its own Node object)',
  );
  return res.status === 404 ? 'not-found' : 'deleted';
}

async function podsOn(kube: KubeClient, nodeName: string, signal: AbortSignal): Promise<Pod[]> {
  const res = await mustSucceed(
    kube.call<{ items?: Pod[] }>('GET', `/api/v1/pods?fieldSelector=${encodeURIComponent(`spec.nodeName=${nodeName}`)}`, { signal, timeoutMs: 15_000 }),
    nodeName,
    'list the pods bound to it',
  );
  return res.body.items ?? [];
}

/** No answer, or one a server that is (re)starting or overloaded gives (5xx, 429): worth another try. */
function lostApiServer(err: unknown): boolean {
  if (err instanceof KubeApiError) return err.status === 429 || err.status >= 500;
  return !(err instanceof AgentError);
}

/** Runs `fn` over `items`, at most `limit` at once. */
async function pool<T>(items: T[], limit: number, fn: (t: T) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < items.length) await fn(items[next++]!);
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
}

interface Tracked {
  pod: Pod;
  /** evicting: not yet accepted; terminating: eviction or delete accepted, waiting for it to go. */
  state: 'evicting' | 'terminating';
  nextTry: number;
  backoffMs: number;
  reason: string;
  deleted: boolean;
}

export const emptyDrainReport = (): DrainReport => ({
  nodeGone: false,
  evicted: [],
  skipped: { daemonSet: [], mirror: [] },
  blocked: [],
  deleted: [],
  podsListed: false,
  remaining: [],
  complete: false,
});

/**
 * Cordon, evict, wait for the pods to go. `report` is filled in as the drain goes, so a
 * caller that stops waiting at its deadline still knows what was done and what was left.
 */
export async function drainNode(o: DrainOptions, report: DrainReport = emptyDrainReport()): Promise<DrainReport> {
  const { kube, nodeName, log, signal } = o;
  if (!(await cordon(kube, nodeName, signal))) {
    log.info('the Node object is gone already: nothing to cordon or drain', { node: nodeName });
    report.nodeGone = true;
    report.complete = true;
    return report;
  }
  log.info('cordoned', { node: nodeName });

  const tracked = new Map<string, Tracked>();
  const graceFor = (p: Pod) => {
    const left = Math.floor((o.deadline - Date.now()) / 1000) - 1;
    return Math.max(1, Math.min(p.spec.terminationGracePeriodSeconds ?? 30, left));
  };

  const retryLater = (t: Tracked, reason: string) => {
    t.reason = reason;
    t.backoffMs = Math.min(t.backoffMs * 2, 5000);
    t.nextTry = Date.now() + jitter(t.backoffMs);
  };

  const evict = async (t: Tracked) => {
    const p = t.pod;
    const path = `/api/v1/namespaces/${encodeURIComponent(p.metadata.namespace)}/pods/${encodeURIComponent(p.metadata.name)}/eviction`;
    let res: { status: number; body: { message?: string } };
    try {
      res = await kube.raw<{ message?: string }>('POST', path, {
        body: {
          apiVersion: 'policy/v1',
          kind: 'Eviction',
          metadata: { name: p.metadata.name, namespace: p.metadata.namespace },
          deleteOptions: { gracePeriodSeconds: graceFor(p), preconditions: { uid: p.metadata.uid } },
        },
        signal,
      });
    } catch (err) {
      if (signal.aborted) throw err;
      return retryLater(t, `the API server did not answer: ${(err as Error).message}`);
    }
    if (res.status === 201 || res.status === 200 || res.status === 404) {
      t.state = 'terminating';
      if (res.status !== 404) report.evicted.push(podName(p));
      return;
    }
    const message = typeof res.body === 'object' && res.body ? (res.body.message ?? '') : String(res.body ?? '');
    if (res.status === 403) throw permissionError(new KubeApiError('POST', path, 403, 'Forbidden', message), nodeName, `create pods/eviction for ${podName(p)}`);
    // 429: a PodDisruptionBudget allows no disruption now; retried with backoff until evictUntil.
    retryLater(t, res.status === 429 ? `blocked by a PodDisruptionBudget: ${message}` : `HTTP ${res.status}: ${message}`);
  };

  const remove = async (t: Tracked) => {
    const p = t.pod;
    const res = await mustSucceed(
      kube.call('DELETE', `/api/v1/namespaces/${encodeURIComponent(p.metadata.namespace)}/pods/${encodeURIComponent(p.metadata.name)}`, {
        body: { apiVersion: 'v1', kind: 'DeleteOptions', gracePeriodSeconds: graceFor(p), preconditions: { uid: p.metadata.uid } },
        okStatus: [404, 409],
        signal,
      }),
      nodeName,
      `delete the pod ${podName(p)}`,
    );
    t.state = 'terminating';
    t.deleted = true;
    if (res.status !== 404) report.deleted.push(podName(p));
  };

  let policyApplied = false;
  let lastProgress = Date.now();
  const pollMs = o.pollMs ?? 500;
  const skippedSeen = new Set<string>();
  for (let lost = false; ; ) {
    try {
      await drainLoop();
      break;
    } catch (err) {
      // Out of time: the report says how far the drain got.
      if (signal.aborted) break;
      // The API server answered the cordon: once the drain has begun, losing it (a restart, a
      // load balancer flap) is waited out until the drain window ends, not given up at once.
      // The pods evicted so far stay tracked.
      if (!lostApiServer(err)) throw err;
      if (!lost) log.warn('lost the API server during the drain; trying again until the drain window ends', { err: (err as Error).message });
      lost = true;
      const waited = await sleep(pollMs, signal).then(
        () => true,
        () => false,
      );
      if (!waited) break;
    }
  }
  report.remaining = [...tracked.values()].map((t) => podName(t.pod));
  log.info(report.complete ? 'drained' : 'drain incomplete', {
    evicted: report.evicted.length,
    daemonSet: report.skipped.daemonSet.length,
    mirror: report.skipped.mirror.length,
    blocked: report.blocked.length,
    deleted: report.deleted.length,
    remaining: report.remaining.length,
  });
  return report;

  async function drainLoop(): Promise<void> {
    for (;;) {
      const pods = await podsOn(kube, nodeName, signal);
      report.podsListed = true;
      const present = new Set<string>();
      for (const p of pods) {
        const owner = controllerOf(p);
        if (p.metadata.annotations?.[MIRROR] !== undefined || owner?.kind === 'DaemonSet') {
          if (!skippedSeen.has(p.metadata.uid)) {
            skippedSeen.add(p.metadata.uid);
            (owner?.kind === 'DaemonSet' ? report.skipped.daemonSet : report.skipped.mirror).push(podName(p));
          }
          continue;
        }
        present.add(p.metadata.uid);
        if (!tracked.has(p.metadata.uid)) {
          if (!owner) log.info('evicting a pod without a controller: it will not come back elsewhere', { pod: podName(p) });
          tracked.set(p.metadata.uid, { pod: p, state: p.metadata.deletionTimestamp ? 'terminating' : 'evicting', nextTry: 0, backoffMs: 500, reason: '', deleted: false });
        }
      }
      for (const uid of tracked.keys()) if (!present.has(uid)) tracked.delete(uid);
      report.remaining = [...tracked.values()].map((t) => podName(t.pod));
      if (tracked.size === 0) {
        report.complete = true;
        break;
      }
      const now = Date.now();
      const waiting = [...tracked.values()];
      if (now < o.evictUntil) {
        await pool(
          waiting.filter((t) => t.state === 'evicting' && t.nextTry <= now),
          o.concurrency ?? 32,
          evict,
        );
      } else if (!policyApplied) {
        policyApplied = true;
        const blocked = waiting.filter((t) => t.state === 'evicting');
        report.blocked = blocked.map((t) => ({ pod: podName(t.pod), reason: t.reason || 'not evicted in time' }));
        if (blocked.length) {
          log.warn(`drain deadline reached with ${blocked.length} pod(s) still blocked; terminate.blockedPods is ${o.blockedPods}`, {
            pods: report.blocked.map((b) => b.pod).join(','),
          });
          if (o.blockedPods === 'delete') await pool(blocked, o.concurrency ?? 32, remove);
        }
      }
      const stillEvicting = [...tracked.values()].filter((t) => t.state === 'evicting');
      const terminating = [...tracked.values()].filter((t) => t.state === 'terminating');
      // Past the eviction deadline with nothing left that is on its way out: stop waiting.
      if (policyApplied && terminating.length === 0) break;
      if (Date.now() - lastProgress >= 10_000) {
        lastProgress = Date.now();
        log.info('draining', { left: tracked.size, evicting: stillEvicting.length, terminating: terminating.length, evicted: report.evicted.length });
      }
      const nextRetry = Math.min(...stillEvicting.map((t) => t.nextTry), Date.now() + pollMs);
      await sleep(Math.max(50, Math.min(pollMs, nextRetry - Date.now())), signal);
    }
  }
}
