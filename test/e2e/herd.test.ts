import fs from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CONTROL_PLANE_BACKOFF } from '../../agent/boot/cluster.js';
import { BINARY } from '../support/boot-env.js';
import { maxAttempts, startHerd, type Herd, type HerdResult, type NodeRun } from '../support/herd-env.js';
import { kubeApiserverAvailable } from '../testbed/kube.js';

/**
 * A small herd (bench/herd.mjs runs 200): workers of the built binary booting together while
 * the control plane is not there yet, against the real kube-apiserver and moto behind the
 * fidelity proxy, every request counted per node (test/support/herd-env.ts). Every node joins
 * once, and no node asks any endpoint more often than the control-plane wait's backoff allows
 * in the time it waited. No timing is asserted: the bounds are computed from each node's own
 * measured wait.
 */

const apiserver = await kubeApiserverAvailable();
if (!apiserver && process.env.CI === 'true') throw new Error('kube-apiserver is missing under CI: run test/testbed/k8s/build.sh');
const pending = !apiserver ? 'kube-apiserver is not built yet (test/testbed/k8s/build.sh)' : !fs.existsSync(BINARY) ? `${BINARY} is not built (make binary)` : undefined;

const NODES = 10;
let herd: Herd;

beforeAll(async () => {
  if (!pending) herd = await startHerd();
}, 180_000);

afterAll(async () => {
  await herd?.stop();
});

function count(r: HerdResult, node: number, endpoint: string, what?: string): number {
  return r.requests.filter((q) => q.node === node && q.endpoint === endpoint && (what === undefined || q.what === what)).length;
}

/** Every node exited 0 after exactly one kubeadm join and one signal, lifecycle completion and SNS message. */
function expectAllJoined(r: HerdResult): void {
  const failed = r.nodes.filter((n) => n.code !== 0).map((n) => `node ${n.node} exit ${n.code}: ${n.stderr.trim().split('\n').at(-1)}`);
  expect(failed).toEqual([]);
  expect(r.nodes.filter((n) => n.joinedAt === undefined).map((n) => n.node)).toEqual([]);
  for (const n of r.nodes) {
    expect(count(r, n.node, 'cloudformation', 'SignalResource'), `node ${n.node}`).toBe(1);
    expect(count(r, n.node, 'autoscaling', 'CompleteLifecycleAction'), `node ${n.node}`).toBe(1);
    expect(count(r, n.node, 'sns', 'Publish'), `node ${n.node}`).toBe(1);
  }
}

/** The most attempts the wait can have made by the time this node joined. */
const attemptsBy = (n: NodeRun) => maxAttempts(n.joinedAt! - n.startedAt, CONTROL_PLANE_BACKOFF);

describe.skipIf(!!pending)(`${NODES} workers booting at once${pending ? ` (pending: ${pending})` : ''}`, () => {
  it('wait for a cluster CA that reaches S3 only with the control plane (kubeadm init on controller 00), each polling S3 on the backoff, and all join', async () => {
    const r = await herd.run({ nodes: NODES, controlPlaneAfterMs: 4000, ca: 'late', controlPlaneWaitS: 240, deadlineMs: 240_000 });
    expectAllJoined(r);
    for (const n of r.nodes) {
      // Each attempt of the wait reads pki/ca.crt until it is there; worker-join reads it once more.
      const caReads = count(r, n.node, 's3', 'GetObject pki/ca.crt');
      expect(caReads, `node ${n.node}`).toBeGreaterThanOrEqual(2);
      expect(caReads, `node ${n.node}`).toBeLessThanOrEqual(attemptsBy(n) + 1);
      expect(count(r, n.node, 's3', 'GetObject token'), `node ${n.node}`).toBe(1);
      // With the CA, the API server already answers: one probe, /readyz and /version.
      expect(count(r, n.node, 'kube-apiserver'), `node ${n.node}`).toBeLessThanOrEqual(attemptsBy(n) + 1);
      expect(count(r, n.node, 'kube-apiserver', '/version'), `node ${n.node}`).toBe(1);
    }
  }, 300_000);

  it('with the CA in S3 from the start, poll the API endpoint on the backoff while it is down, and all join', async () => {
    const r = await herd.run({ nodes: NODES, controlPlaneAfterMs: 4000, ca: 'early', controlPlaneWaitS: 240, deadlineMs: 240_000 });
    expectAllJoined(r);
    for (const n of r.nodes) {
      // One /readyz per attempt; the last attempt adds /version.
      const readyz = count(r, n.node, 'kube-apiserver', '/readyz');
      expect(readyz, `node ${n.node}`).toBeGreaterThanOrEqual(1);
      expect(readyz, `node ${n.node}`).toBeLessThanOrEqual(attemptsBy(n));
      expect(count(r, n.node, 'kube-apiserver', '/version'), `node ${n.node}`).toBe(1);
      expect(count(r, n.node, 's3', 'GetObject pki/ca.crt'), `node ${n.node}`).toBe(2);
    }
    // The API server was asked while it was down: the nodes were waiting, not failing.
    expect(r.requests.some((q) => q.endpoint === 'kube-apiserver' && q.refused)).toBe(true);
  }, 300_000);
});
