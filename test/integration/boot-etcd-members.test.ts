import { execFileSync } from 'node:child_process';
import { afterEach, describe, expect, it } from 'vitest';
import { addThisMember, listMembers, parseMemberList, quorumOf } from '../../agent/boot/etcd-members.js';
import { AgentError } from '../../agent/errors.js';
import { makeExec } from '../../agent/host/exec.js';
import { createLogger } from '../../agent/log/logger.js';
import { startEtcdCluster, type EtcdCluster } from '../testbed/etcd.js';

/**
 * A joining controller's etcd membership against a real three-member etcd (Debian etcd 3.4,
 * plain HTTP on loopback): the stale member of its slot is replaced only while the others
 * keep quorum.
 */

const log = createLogger({ console: process.env.ZDT_TEST_LOG ? process.stderr : null, level: 'debug' });
const exec = makeExec(log);
const STABLE = 'etcd02.prod.internal';
const PEER = `https://${STABLE}:2380`;
let cluster: EtcdCluster | undefined;

afterEach(async () => {
  await cluster?.stop();
  cluster = undefined;
});

const etcdctl = (endpoints: readonly string[], ...args: string[]) =>
  execFileSync('etcdctl', [`--endpoints=${endpoints.join(',')}`, ...args], { env: { ...process.env, ETCDCTL_API: '3' }, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });

/** The predecessor's member: same stable peer URL, never to start again (etcd refuses changes for ~5 s after a start). */
async function addStaleMember(c: EtcdCluster): Promise<void> {
  for (let i = 0; ; i++) {
    try {
      etcdctl(c.clientUrls, 'member', 'add', STABLE, `--peer-urls=${PEER}`);
      return;
    } catch (err) {
      if (i > 40 || !/unhealthy cluster/.test(String((err as { stderr?: string }).stderr))) throw err;
      await new Promise((r) => setTimeout(r, 250));
    }
  }
}

describe('etcd membership of a joining controller', () => {
  it('parses etcdctl member list output, unstarted members included', () => {
    expect(parseMemberList('8e9e05c52164694d, started, etcd00.x, https://etcd00.x:2380, https://10.0.0.1:2379, false\n91bc3c398fb3c146, unstarted, , https://etcd01.x:2380, , true\n')).toEqual([
      { id: '8e9e05c52164694d', name: 'etcd00.x', started: true, peerUrls: ['https://etcd00.x:2380'], clientUrls: ['https://10.0.0.1:2379'], isLearner: false },
      { id: '91bc3c398fb3c146', name: '', started: false, peerUrls: ['https://etcd01.x:2380'], clientUrls: [], isLearner: true },
    ]);
    expect([1, 2, 3, 4, 5].map(quorumOf)).toEqual([1, 2, 2, 3, 3]);
  });

  it("replaces the stale member of this slot (its data went with its instance) while the others keep quorum", async () => {
    cluster = await startEtcdCluster(3);
    const access = { endpoints: cluster.clientUrls };
    await addStaleMember(cluster);
    const staleId = (await listMembers(exec, access)).find((m) => m.peerUrls.includes(PEER))!.id;

    const r = await addThisMember({ exec, access, name: STABLE, peerUrl: PEER, log });
    expect(r.removedStale).toBe(true);
    const members = await listMembers(exec, access);
    const ours = members.filter((m) => m.peerUrls.includes(PEER));
    expect(ours).toHaveLength(1);
    expect(ours[0]!.id).not.toBe(staleId);
    expect(members).toHaveLength(4);
    expect(r.initialCluster.split(',').sort()).toEqual([...cluster.members.map((m) => `${m.name}=${m.peerUrl}`), `${STABLE}=${PEER}`].sort());
  });

  it('refuses to remove the stale member when the others would not keep quorum, and changes nothing', async () => {
    cluster = await startEtcdCluster(3);
    await addStaleMember(cluster);
    // Two of the three others are down: removing a member now could lose the cluster.
    await cluster.members[1]!.stop();
    await cluster.members[2]!.stop();
    const access = { endpoints: [cluster.members[0]!.clientUrl] };
    const before = await listMembers(exec, access);
    const err = (await addThisMember({ exec, access, name: STABLE, peerUrl: PEER, log }).catch((e: unknown) => e)) as AgentError;
    expect(err).toBeInstanceOf(AgentError);
    expect(err.code).toBe('EtcdQuorumAtRisk');
    // Without quorum not even the running member answers a health check.
    expect(err.message).toMatch(/only 0 of the other 3 voting members are healthy/);
    expect(await listMembers(exec, access)).toEqual(before);
  });
});
