import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { addThisMember, listMembers, type EtcdAccess } from '../../agent/boot/etcd-members.js';
import { AgentError } from '../../agent/errors.js';
import { leaveEtcd } from '../../agent/etcd/leave.js';
import { makeExec } from '../../agent/host/exec.js';
import { createLogger } from '../../agent/log/logger.js';
import { etcdTool, makeKubeadmEtcdPki, startEtcd, startEtcdCluster, type EtcdCluster, type EtcdMember, type EtcdTls } from '../testbed/etcd.js';
import { freePort } from '../testbed/ports.js';
import { makeTempRoot, type TempRoot } from '../testbed/root.js';
import { installEtcdClientCert, useEtcd36Tools } from '../support/etcd36-env.js';
import { contextFor } from '../support/terminate-env.js';

/**
 * etcd membership with learners, against three-member etcd 3.6.5 clusters over TLS with
 * kubeadm's certificates (client and peer): a joining controller's stale-member replacement
 * (agent/boot/etcd-members.ts) and the HA leave's quorum guard (agent/etcd/leave.ts) count
 * voting members only, leadership never moves to a learner, and a learner left by a killed
 * join of this slot is removed and the slot joins afresh (docs/boot.md).
 */

const log = createLogger({ console: process.env.ZDT_TEST_LOG ? process.stderr : null, level: 'debug' });
const exec = makeExec(log);
let dir: string;
let pki: EtcdTls;
let restorePath: () => void;
const cleanups: Array<() => Promise<void>> = [];

beforeAll(async () => {
  restorePath = useEtcd36Tools();
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'zdt-etcd36-members-'));
  pki = await makeKubeadmEtcdPki(path.join(dir, 'pki'));
});

afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

afterAll(() => {
  restorePath?.();
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

const tlsFlags = () => [`--cacert=${pki.caDir}/ca.crt`, `--cert=${pki.caDir}/healthcheck-client.crt`, `--key=${pki.caDir}/healthcheck-client.key`];
const access = (endpoints: readonly string[]): EtcdAccess => ({
  endpoints,
  tls: { cacert: `${pki.caDir}/ca.crt`, cert: `${pki.caDir}/healthcheck-client.crt`, key: `${pki.caDir}/healthcheck-client.key` },
});

function etcdctl(endpoints: readonly string[], ...args: string[]): string {
  return execFileSync(etcdTool('3.6', 'etcdctl'), [`--endpoints=${endpoints.join(',')}`, ...tlsFlags(), ...args], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

/** etcd refuses membership changes for a few seconds after a start ("unhealthy cluster"): retried, bounded. */
async function reconfigured(endpoints: readonly string[], ...args: string[]): Promise<string> {
  for (let i = 0; ; i++) {
    try {
      return etcdctl(endpoints, ...args);
    } catch (err) {
      if (i > 80 || !/unhealthy cluster|not enough started/.test(String((err as { stderr?: string }).stderr))) throw err;
      await new Promise((r) => setTimeout(r, 250));
    }
  }
}

async function cluster3(): Promise<EtcdCluster> {
  const c = await startEtcdCluster(3, { dir: fs.mkdtempSync(path.join(dir, 'c-')), version: '3.6', tls: pki });
  cleanups.push(() => c.stop());
  return c;
}

/** The initial cluster a new member starts with: every member, by name (unstarted ones by a placeholder), plus itself. */
function initialClusterWith(c: EtcdCluster, name: string, peerUrl: string): string {
  const list = JSON.parse(etcdctl(c.clientUrls, 'member', 'list', '-w', 'json')) as { members: Array<{ name?: string; peerURLs: string[] }> };
  return [...list.members.filter((m) => !m.peerURLs.includes(peerUrl)).map((m, i) => `${m.name || `unstarted-${i}`}=${m.peerURLs[0]}`), `${name}=${peerUrl}`].join(',');
}

/** A learner joined as kubeadm's join adds one (`member add --learner`, then etcd started with state existing), and running. */
async function startLearner(c: EtcdCluster, name: string, peerUrl?: string): Promise<EtcdMember> {
  const url = peerUrl ?? `https://127.0.0.1:${await freePort()}`;
  await reconfigured(c.clientUrls, 'member', 'add', name, '--learner', `--peer-urls=${url}`);
  const m = await startEtcd({
    version: '3.6',
    dir: path.join(fs.mkdtempSync(path.join(dir, 'l-')), 'data'),
    name,
    peerUrl: url,
    tls: pki,
    join: { initialCluster: initialClusterWith(c, name, url) },
    noHealthWait: true,
  });
  cleanups.push(() => m.stop());
  // Started: the member list shows its name once it has connected.
  for (let i = 0; !(await listMembers(exec, access(c.clientUrls))).some((x) => x.name === name && x.started); i++) {
    if (i > 120) throw new Error(`learner ${name} did not start`);
    await new Promise((r) => setTimeout(r, 250));
  }
  return m;
}

/** A new member of the slot, started blank with the initial cluster the agent returned; resolves once it answers healthy. */
async function startJoined(name: string, peerUrl: string, initialCluster: string): Promise<EtcdMember> {
  const m = await startEtcd({ version: '3.6', dir: path.join(fs.mkdtempSync(path.join(dir, 'j-')), 'data'), name, peerUrl, tls: pki, join: { initialCluster } });
  cleanups.push(() => m.stop());
  return m;
}

describe('stale-member replacement with learners (etcd 3.6)', () => {
  it('replaces the stale member of its slot while a learner of another slot (never started: its join died) is in the cluster; the new member starts with the learner in --initial-cluster', async () => {
    const c = await cluster3();
    const orphan = `https://127.0.0.1:${await freePort()}`;
    await reconfigured(c.clientUrls, 'member', 'add', 'etcd-9', '--learner', `--peer-urls=${orphan}`);
    const slot = c.members[2]!;
    await slot.stop(); // its instance is gone, with its data
    const up = c.clientUrls.slice(0, 2);

    const r = await addThisMember({ exec, access: access(up), name: slot.name, peerUrl: slot.peerUrl, log });
    expect(r.removedStale).toBe(true);
    const orphanId = (await listMembers(exec, access(up))).find((m) => m.isLearner)!.id;
    expect(r.initialCluster.split(',')).toContain(`unstarted-${orphanId}=${orphan}`);
    await startJoined(slot.name, slot.peerUrl, r.initialCluster);

    const members = await listMembers(exec, access(up));
    expect(members.filter((m) => !m.isLearner).map((m) => m.name).sort()).toEqual(['etcd-0', 'etcd-1', 'etcd-2']);
    expect(members.filter((m) => m.isLearner)).toEqual([expect.objectContaining({ peerUrls: [orphan], started: false })]);
    expect(members.find((m) => m.name === 'etcd-2')!.started).toBe(true);
  });

  it('refuses when the other voting members that answer are no quorum without it, counting voting members only (a running learner does not count)', async () => {
    const c = await cluster3();
    await startLearner(c, 'etcd-3');
    // The slot's old member still answers here; etcd-1 is down: the cluster has quorum now
    // (etcd-0 and the old member), but without the old member one of two voters would be left.
    await c.members[1]!.stop();
    const slot = c.members[2]!;
    const endpoints = [c.members[0]!.clientUrl, slot.clientUrl];
    const before = await listMembers(exec, access(endpoints));
    const err = (await addThisMember({ exec, access: access(endpoints), name: slot.name, peerUrl: slot.peerUrl, log }).catch((e: unknown) => e)) as AgentError;
    expect(err).toBeInstanceOf(AgentError);
    expect(err.code).toBe('EtcdQuorumAtRisk');
    expect(err.message).toMatch(/only 1 of the other 2 voting members are healthy/);
    expect(await listMembers(exec, access(endpoints))).toEqual(before);
  });

  it('a learner of this slot left by a killed join is removed (never promoted), and the slot joins afresh as a voting member', async () => {
    const c = await cluster3();
    const peerUrl = `https://127.0.0.1:${await freePort()}`;
    const killed = await startLearner(c, 'etcd-3', peerUrl);
    process.kill(killed.pid, 'SIGKILL'); // the join's instance died before the promotion
    await killed.stop();
    const learnerId = (await listMembers(exec, access(c.clientUrls))).find((m) => m.isLearner)!.id;

    const r = await addThisMember({ exec, access: access(c.clientUrls), name: 'etcd-3', peerUrl, log });
    expect(r.removedStale).toBe(true);
    await startJoined('etcd-3', peerUrl, r.initialCluster);

    const members = await listMembers(exec, access(c.clientUrls));
    expect(members).toHaveLength(4);
    expect(members.filter((m) => m.isLearner)).toEqual([]);
    expect(members.map((m) => m.id)).not.toContain(learnerId);
    expect(members.find((m) => m.peerUrls.includes(peerUrl))).toMatchObject({ name: 'etcd-3', started: true, isLearner: false });
  });
});

describe('the HA leave with a learner in the cluster (etcd 3.6)', () => {
  async function rootFor(clientUrl: string): Promise<{ root: TempRoot; ctx: Awaited<ReturnType<typeof contextFor>> }> {
    const root = await makeTempRoot();
    cleanups.push(() => root.cleanup());
    installEtcdClientCert(root.dir, pki);
    const ctx = await contextFor(root.dir, { cluster: { name: 'ha36' }, node: { role: 'controller', controllerIndex: '00' }, etcd: { clientUrl } });
    return { root, ctx };
  }

  /** Index of the leading member and the leader's id, from endpoint status. */
  function leader(c: EtcdCluster, endpoints = c.clientUrls): { index: number; id: string } {
    const status = JSON.parse(etcdctl(endpoints, 'endpoint', 'status', '-w', 'json').replace(/"(member_id|leader)":(\d+)/g, '"$1":"$2"')) as Array<{
      Endpoint: string;
      Status: { header: { member_id: string }; leader: string };
    }>;
    const s = status.find((x) => x.Status.header.member_id === x.Status.leader)!;
    return { index: c.clientUrls.indexOf(s.Endpoint), id: BigInt(s.Status.leader).toString(16) };
  }

  it('the leader leaves: leadership moves to a voting member (never the learner), and the two voters that stay keep the cluster', async () => {
    const c = await cluster3();
    await startLearner(c, 'etcd-3');
    const was = leader(c);
    const { ctx } = await rootFor(c.clientUrls[was.index]!);
    const out = await leaveEtcd(ctx);
    expect(out).toMatchObject({ result: 'removed', name: `etcd-${was.index}`, remaining: 2 });
    const staying = c.clientUrls.filter((_, i) => i !== was.index);
    const now = leader(c, staying);
    const members = await listMembers(exec, access(staying));
    expect(members.find((m) => m.id === now.id)).toMatchObject({ isLearner: false });
    expect(members.filter((m) => m.isLearner).map((m) => m.name)).toEqual(['etcd-3']);
    expect(members).toHaveLength(3);
  });

  it('is refused when the voting members that stay would lose quorum, the running learner not counted; a learner cannot leave through itself and says so', async () => {
    const c = await cluster3();
    const learner = await startLearner(c, 'etcd-3');
    await c.members[1]!.stop();
    const { ctx } = await rootFor(c.clientUrls[0]!);
    const out = await leaveEtcd(ctx);
    expect(out).toMatchObject({ result: 'refused', reason: expect.stringMatching(/would leave 2 voting members with 1 healthy, below quorum 2 \(down: etcd-1\)/) });
    expect(etcdctl([c.clientUrls[0]!], 'member', 'list')).toContain('etcd-0');

    const { ctx: learnerCtx } = await rootFor(learner.clientUrl);
    const learnerId = (await listMembers(exec, access([c.clientUrls[0]!]))).find((m) => m.isLearner)!.id;
    expect(await leaveEtcd(learnerCtx)).toEqual({ result: 'learner', memberId: learnerId });
    expect((await listMembers(exec, access([c.clientUrls[0]!]))).map((m) => m.name).sort()).toEqual(['etcd-0', 'etcd-1', 'etcd-2', 'etcd-3']);
  });
});
