import { AgentError } from '../errors.js';
import type { Exec } from '../host/exec.js';
import type { Logger } from '../log/logger.js';
import { waitFor } from '../host/retry.js';

/**
 * etcd membership for a joining controller, through etcdctl (v3 API): find the member of this
 * slot, remove a stale one only when the rest keep quorum, add this one.
 *
 * Learners (kubeadm 1.34 adds every joining member as one, then promotes it) do not vote: the
 * quorum arithmetic counts voting members only. A learner with this slot's peer URL was left
 * by a join that died before the promotion; it is removed, never promoted: promotion needs a
 * learner that runs and is in sync with the leader, and this one's instance and data are
 * gone. Removing a learner changes no quorum. Learners of other slots are left alone (their
 * join may be under way) but listed in --initial-cluster, which etcd checks against every
 * member.
 */

export interface EtcdAccess {
  endpoints: readonly string[];
  /** Client TLS (kubeadm's etcd CA and healthcheck-client certificate); omitted for plain HTTP. */
  tls?: { cacert: string; cert: string; key: string } | undefined;
}

export interface EtcdMember {
  /** Hex id, as etcdctl prints and takes it. */
  id: string;
  name: string;
  started: boolean;
  peerUrls: string[];
  clientUrls: string[];
  /** A non-voting member (etcd 3.4+ `member add --learner`). */
  isLearner: boolean;
}

function base(a: EtcdAccess): string[] {
  const args = [`--endpoints=${a.endpoints.join(',')}`, '--dial-timeout=5s', '--command-timeout=15s'];
  if (a.tls) args.push(`--cacert=${a.tls.cacert}`, `--cert=${a.tls.cert}`, `--key=${a.tls.key}`);
  return args;
}

/** Parses `etcdctl member list -w simple`: `id, started|unstarted, name, peers, clients[, learner]`. */
export function parseMemberList(text: string): EtcdMember[] {
  return text
    .split('\n')
    .map((l) => l.trim())
    .filter(Boolean)
    .map((l) => {
      const [id = '', status = '', name = '', peers = '', clients = '', learner = ''] = l.split(', ');
      return { id, name, started: status === 'started', peerUrls: peers.split(',').filter(Boolean), clientUrls: clients.split(',').filter(Boolean), isLearner: learner === 'true' };
    });
}

export async function listMembers(exec: Exec, a: EtcdAccess): Promise<EtcdMember[]> {
  const r = await exec('etcdctl', [...base(a), 'member', 'list', '-w', 'simple'], { timeoutMs: 30_000, hint: 'check that the etcd members answer on their client URLs and have a quorum (etcd 3.6 lists members by a linearizable read)' });
  return parseMemberList(r.stdout);
}

/** Endpoints that answer `endpoint health`. */
export async function healthyEndpoints(exec: Exec, a: EtcdAccess, endpoints: readonly string[]): Promise<string[]> {
  if (endpoints.length === 0) return [];
  // A member without quorum blocks the health read until the command timeout: keep it short.
  const args = [...base({ ...a, endpoints }).map((x) => (x.startsWith('--command-timeout=') ? '--command-timeout=5s' : x)), 'endpoint', 'health', '-w', 'json'];
  const r = await exec('etcdctl', args, { timeoutMs: 30_000, okExitCodes: [1] });
  try {
    const list = JSON.parse(r.stdout) as Array<{ endpoint: string; health: boolean }>;
    return list.filter((e) => e.health).map((e) => e.endpoint);
  } catch {
    return [];
  }
}

export const quorumOf = (members: number) => Math.floor(members / 2) + 1;

/**
 * Makes this slot's member ready to start with an empty data dir: a stale member of the slot
 * (same peer URL, data lost with its instance) is removed first, only when the remaining
 * members that answer keep quorum; then the member is added. Returns the initial cluster
 * string for the new member's `--initial-cluster`.
 */
export async function addThisMember(o: { exec: Exec; access: EtcdAccess; name: string; peerUrl: string; log: Logger }): Promise<{ initialCluster: string; removedStale: boolean }> {
  let members = await listMembers(o.exec, o.access);
  let removedStale = false;
  const stale = members.find((m) => m.peerUrls.includes(o.peerUrl));
  if (stale?.isLearner) {
    o.log.warn('removing the learner this slot left (a join that died before its promotion; it never voted)', { member: stale.name || stale.id, id: stale.id, started: stale.started });
    await reconfigure(o, ['member', 'remove', stale.id]);
    removedStale = true;
    members = members.filter((m) => m.id !== stale.id);
  } else if (stale) {
    const rest = members.filter((m) => m.id !== stale.id);
    const voters = rest.filter((m) => !m.isLearner);
    const healthy = await healthyEndpoints(o.exec, o.access, voters.flatMap((m) => m.clientUrls));
    const healthyVoters = voters.filter((m) => m.clientUrls.some((u) => healthy.includes(u)));
    // After the removal the cluster has voters.length voting members; the healthy ones must be a quorum of that.
    if (healthyVoters.length < quorumOf(voters.length)) {
      throw new AgentError(
        'EtcdQuorumAtRisk',
        `the stale member ${stale.name || stale.id} of this slot cannot be removed: only ${healthyVoters.length} of the other ${voters.length} voting members are healthy`,
        { hint: 'bring the other controllers back first; removing a member now could lose quorum' },
      );
    }
    o.log.warn('removing the stale etcd member of this slot (its data is gone)', { member: stale.name || stale.id, id: stale.id, voting: voters.length, healthy: healthyVoters.length });
    await reconfigure(o, ['member', 'remove', stale.id]);
    removedStale = true;
    members = rest;
  }
  const learners = members.filter((m) => m.isLearner);
  if (learners.length) o.log.info('etcd learners of other slots (not counted for quorum; left alone)', { learners: learners.map((m) => m.name || m.peerUrls.join(' ')).join(', ') });
  o.log.info('adding this etcd member', { name: o.name, peerUrl: o.peerUrl });
  await reconfigure(o, ['member', 'add', o.name, `--peer-urls=${o.peerUrl}`]);
  const initialCluster = `${initialClusterOf(members, o)},${o.name}=${o.peerUrl}`;
  return { initialCluster, removedStale };
}

/**
 * --initial-cluster entries of `members` for this slot's member joining them: every member,
 * learners and unstarted ones included, since etcd refuses to join when the list does not
 * match the cluster's ("member count is unequal"); a member without a name yet (never
 * started) gets a placeholder, this slot's its own name.
 */
export function initialClusterOf(members: readonly EtcdMember[], self: { name: string; peerUrl: string }): string {
  return members.map((m) => `${m.peerUrls.includes(self.peerUrl) ? self.name : m.name || `unstarted-${m.id}`}=${m.peerUrls[0]}`).join(',');
}

/**
 * A membership change. etcd's strict reconfiguration check answers "unhealthy cluster" until
 * every member has been connected for a few seconds (after a start, a restart, or the previous
 * change), and an add right after a remove can meet "member not found": both are retried,
 * bounded. An answer that says the change is in place already (a retried call whose first
 * attempt went through) counts as done.
 */
async function reconfigure(o: { exec: Exec; access: EtcdAccess; log: Logger }, args: string[]): Promise<void> {
  const adding = args[1] === 'add';
  const inPlace = adding ? /Peer URLs already exists/i : /member not found/i;
  await waitFor({
    what: `etcd to accept 'etcdctl ${args.slice(0, 2).join(' ')}'`,
    timeoutMs: 60_000,
    initialDelayMs: 1000,
    maxDelayMs: 5000,
    progressEveryMs: 15_000,
    log: o.log,
    code: 'EtcdReconfigureTimeout',
    hint: 'check that every etcd member is healthy (etcdctl endpoint health --cluster)',
    retryable: (err) => new RegExp(`unhealthy cluster|too many learner|not enough started members${adding ? '|member not found' : ''}`, 'i').test((err as Error).message),
    check: async (attempt) => {
      try {
        await o.exec('etcdctl', [...base(o.access), ...args], { timeoutMs: 30_000 });
      } catch (err) {
        if (attempt > 1 && inPlace.test((err as Error).message)) return true;
        throw err;
      }
      return true;
    },
  });
}
