import { AgentError } from '../errors.js';
import { waitFor } from '../host/retry.js';
import type { EtcdContext } from './restore.js';

/**
 * An HA controller leaving etcd at terminate, through etcdctl: find this member, check that
 * the members that stay keep quorum on their own (every other voting member is asked for
 * its health), hand leadership away if this member leads, then remove it. Refuses, and
 * says why, when the rest would lose quorum: a controller that leaves a two-member remnant
 * with one member down has stopped the cluster.
 *
 * Learners (kubeadm adds joining members as learners until it promotes them) neither vote nor
 * lead: the guard counts voting members only, asks only them for their health, and leadership
 * only ever moves to one of them (etcd refuses a learner as the target). A member that is
 * itself a learner (its join never finished) cannot leave through its own endpoint: etcd
 * answers a learner's member list and member remove with "rpc not supported for learner". It
 * never counted for quorum; the outcome says so (a new member of the slot removes it at boot
 * with stable names, agent/boot/etcd-members.ts).
 */

export type LeaveOutcome =
  | { result: 'removed'; memberId: string; name: string; remaining: number }
  | { result: 'single-member'; memberId: string }
  | { result: 'not-a-member' }
  | { result: 'learner'; memberId: string }
  | { result: 'refused'; reason: string };

interface Member {
  id: string;
  name: string;
  clientUrls: string[];
  isLearner: boolean;
}

/** etcdctl prints uint64 ids as JSON numbers, which JavaScript would round: quote them first. */
export function parseEtcdJson<T>(text: string): T {
  return JSON.parse(text.replace(/"(ID|member_id|cluster_id|leader|raft_term|revision)":(\d+)/g, '"$1":"$2"')) as T;
}

const hex = (decimal: string) => BigInt(decimal).toString(16);

export class Etcdctl {
  constructor(
    private readonly ctx: EtcdContext,
    private readonly commandTimeoutS = 3,
  ) {}

  private tlsFlags(url: string): string[] {
    const e = this.ctx.config.etcd;
    if (!url.startsWith('https:')) return [];
    return [
      `--cacert=${this.ctx.paths.at(e?.caFile ?? '/etc/kubernetes/pki/etcd/ca.crt')}`,
      `--cert=${this.ctx.paths.at(e?.certFile ?? '/etc/kubernetes/pki/etcd/healthcheck-client.crt')}`,
      `--key=${this.ctx.paths.at(e?.keyFile ?? '/etc/kubernetes/pki/etcd/healthcheck-client.key')}`,
    ];
  }

  async run(endpoints: string[], args: string[], opts: { okExitCodes?: number[]; timeoutMs?: number } = {}): Promise<string> {
    const r = await this.ctx.exec(
      'etcdctl',
      [`--endpoints=${endpoints.join(',')}`, ...this.tlsFlags(endpoints[0] ?? ''), `--command-timeout=${this.commandTimeoutS}s`, '--dial-timeout=2s', ...args],
      {
        timeoutMs: opts.timeoutMs ?? (this.commandTimeoutS + 5) * 1000,
        okExitCodes: opts.okExitCodes,
        hint: 'check that etcdctl is installed and the etcd client settings (etcd.clientUrl, certificates)',
      },
    );
    return r.stdout;
  }

  async selfId(local: string): Promise<{ memberId: string; leaderId: string; isLearner: boolean }> {
    const s = parseEtcdJson<Array<{ Status: { header: { member_id: string }; leader: string; isLearner?: boolean } }>>(await this.run([local], ['endpoint', 'status', '-w', 'json']));
    const st = s[0]?.Status;
    if (!st) throw new AgentError('EtcdUnavailable', `etcdctl endpoint status of ${local} printed nothing`, { hint: 'check the local etcd' });
    return { memberId: st.header.member_id, leaderId: st.leader, isLearner: st.isLearner ?? false };
  }

  async members(local: string): Promise<Member[]> {
    const r = parseEtcdJson<{ members?: Array<{ ID: string; name?: string; clientURLs?: string[]; isLearner?: boolean }> }>(await this.run([local], ['member', 'list', '-w', 'json']));
    return (r.members ?? []).map((m) => ({ id: m.ID, name: m.name ?? '', clientUrls: m.clientURLs ?? [], isLearner: m.isLearner ?? false }));
  }

  /** Client URLs that answer healthy. */
  async healthy(urls: string[]): Promise<Set<string>> {
    if (urls.length === 0) return new Set();
    // etcdctl exits 1 when any endpoint is unhealthy; the JSON still lists each one.
    const out = await this.run(urls, ['endpoint', 'health', '-w', 'json'], { okExitCodes: [1] });
    const list = JSON.parse(out || '[]') as Array<{ endpoint: string; health: boolean }>;
    return new Set(list.filter((e) => e.health).map((e) => e.endpoint));
  }
}

export async function leaveEtcd(ctx: EtcdContext, o: { commandTimeoutS?: number; removeRetryMs?: number; signal?: AbortSignal | undefined } = {}): Promise<LeaveOutcome> {
  const log = ctx.log;
  const local = ctx.config.etcd?.clientUrl ?? 'https://127.0.0.1:2379';
  const etcdctl = new Etcdctl(ctx, o.commandTimeoutS);
  const { memberId, leaderId, isLearner } = await etcdctl.selfId(local);
  if (isLearner) {
    log.warn('this etcd member is a learner (its join did not finish): it cannot leave through itself and never counted for quorum', { id: hex(memberId) });
    return { result: 'learner', memberId: hex(memberId) };
  }
  const members = await etcdctl.members(local);
  const self = members.find((m) => m.id === memberId);
  if (!self) return { result: 'not-a-member' };
  const voters = members.filter((m) => !m.isLearner);
  if (voters.length <= 1) return { result: 'single-member', memberId };

  const others = voters.filter((m) => m.id !== memberId);
  const staying = others.length;
  const quorum = Math.floor(staying / 2) + 1;
  const up = await etcdctl.healthy(others.flatMap((m) => m.clientUrls.slice(0, 1)));
  const healthyOthers = others.filter((m) => m.clientUrls.some((u) => up.has(u)));
  log.info('etcd quorum guard', { members: voters.length, staying, quorum, healthyStaying: healthyOthers.length });
  if (healthyOthers.length < quorum) {
    const down = others.filter((m) => !healthyOthers.includes(m)).map((m) => m.name || hex(m.id));
    return {
      result: 'refused',
      reason: `removing ${self.name} would leave ${staying} voting members with ${healthyOthers.length} healthy, below quorum ${quorum} (down: ${down.join(', ')})`,
    };
  }
  const via = healthyOthers.flatMap((m) => m.clientUrls.slice(0, 1));
  if (leaderId === memberId && healthyOthers[0]) {
    // Hand leadership to a healthy member first: a leader removing itself forces an election.
    await etcdctl.run([local], ['move-leader', hex(healthyOthers[0].id)]);
    log.info('etcd leadership moved', { to: healthyOthers[0].name });
  }
  // etcd's reconfiguration check answers 'unhealthy cluster' until a new leader has heard
  // from every member; that settles within an election timeout or two.
  await waitFor({
    what: `etcd to accept the removal of ${self.name}`,
    timeoutMs: o.removeRetryMs ?? 10_000,
    initialDelayMs: 300,
    maxDelayMs: 2000,
    hint: 'check the health of the other etcd members',
    log,
    signal: o.signal,
    retryable: (err) => /unhealthy cluster|leader changed|no leader/i.test((err as Error).message),
    check: async () => {
      await etcdctl.run(via.length ? via : [local], ['member', 'remove', hex(memberId)]);
      return true;
    },
  });
  log.info('left etcd', { member: self.name, id: hex(memberId), remaining: staying });
  return { result: 'removed', memberId: hex(memberId), name: self.name, remaining: staying };
}
