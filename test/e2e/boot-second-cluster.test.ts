import fs from 'node:fs';
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readState } from '../../agent/log/state.js';
import { readRecords } from '../testbed/standins.js';
import { BINARY, runBinary, startAwsWorld, startController00, type AwsWorld } from '../support/boot-env.js';

/**
 * The built binary (`make binary`) as controller 00 of a cluster with stable etcd names
 * (cluster.domain zdt.test): no control plane answers, the volume is blank, so it would
 * bootstrap; but the etcd of controller 01 answers on etcd01.zdt.test:2379, and it refuses to
 * start a second cluster next to it. etcd01.zdt.test resolves to 127.0.0.1 through a private
 * /etc/hosts (runBinary's `hosts`); a plain TCP listener on 127.0.0.1:2379 stands in for its
 * etcd. The same boot without the listener runs kubeadm init: the refusal is the guard's, not
 * the set-up's.
 */

const ETCD_CLIENT_PORT = 2379;
let w: AwsWorld;

beforeAll(async () => {
  if (!fs.existsSync(BINARY)) throw new Error(`${BINARY} is missing: run 'make binary' first`);
  w = await startAwsWorld();
}, 120_000);

afterAll(async () => {
  await w?.stop();
});

/** A fresh controller 00 of `cluster` boots once, with etcd01.zdt.test at 127.0.0.1; what it did. */
async function bootController00(cluster: string) {
  const node = await startController00(w, { config: { cluster: { name: cluster, kubernetesVersion: '1.34.X', domain: 'zdt.test' } } });
  try {
    const hosts = node.root.at('/hosts');
    fs.writeFileSync(hosts, '127.0.0.1 localhost\n127.0.0.1 etcd01.zdt.test\n');
    const run = await runBinary(['boot', '--root', node.root.dir], node.env, { hosts });
    const kubeadm = (await readRecords(node.records)).filter((x) => x.tool === 'kubeadm').map((x) => x.argv.join(' '));
    const state = readState(node.root.at('/var/lib/zdt-agent/state.json'), 'test');
    return { ...run, kubeadm, controlPlane: state.boot?.phases['control-plane'] };
  } finally {
    await node.stop();
  }
}

const portInUse = (err: Error) =>
  new Error(`127.0.0.1:${ETCD_CLIENT_PORT} is in use (${err.message}): this test needs the etcd client port free; stop what listens there (ss -ltnp 'sport = ${ETCD_CLIENT_PORT}')`);

/** The etcd of controller 01, as far as the guard can tell: 127.0.0.1:2379 accepts connections. */
function listenAsEtcd01(): Promise<net.Server> {
  return new Promise((resolve, reject) => {
    const server = net.createServer((socket) => socket.destroy());
    server.once('error', (err) => reject(portInUse(err)));
    server.listen(ETCD_CLIENT_PORT, '127.0.0.1', () => resolve(server));
  });
}

/** Fails (with what to do) when something accepts connections on 127.0.0.1:2379. */
function expectNothingOnEtcdClientPort(): Promise<void> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: '127.0.0.1', port: ETCD_CLIENT_PORT });
    socket.once('connect', () => {
      socket.destroy();
      reject(portInUse(new Error('it accepts connections')));
    });
    socket.once('error', () => resolve());
  });
}

describe('dist/zdt-agent boot: controller 00 next to a running etcd', () => {
  it('refuses to bootstrap while etcd01 answers on the etcd client port: ClusterRunningElsewhere, exit 1, kubeadm never runs', async () => {
    const etcd01 = await listenAsEtcd01();
    const r = await bootController00('second-cluster').finally(() => new Promise((resolve) => etcd01.close(resolve)));

    expect(r.code, r.stderr).toBe(1);
    expect(r.stderr.split('\n').filter((l) => l.startsWith('zdt-agent: '))).toEqual([
      expect.stringMatching(/^zdt-agent: ClusterRunningElsewhere: .*the etcd of etcd01\.zdt\.test does/),
    ]);
    expect(r.kubeadm).toEqual([]);
    expect(r.controlPlane).toMatchObject({ result: 'failed', error: expect.stringMatching(/^ClusterRunningElsewhere: /) });
  });

  it('without anything on the etcd client port, the same boot runs kubeadm init', async () => {
    await expectNothingOnEtcdClientPort();

    const r = await bootController00('first-cluster');

    // With no API server behind kubeadm here, the phase then stops at the node self-delete
    // grant (NodeRbacNotApplied); boot-binary.test.ts boots on to the end.
    expect(r.stderr).not.toContain('ClusterRunningElsewhere');
    expect(r.kubeadm).toEqual([expect.stringMatching(/^init --config \S+\/etc\/kubernetes\/zdt-agent\/init\.yaml --skip-token-print$/)]);
  });
});
