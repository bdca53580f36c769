import fs from 'node:fs';
import { AgentError } from '../errors.js';
import { renderJoinConfig } from '../host/kubeadm.js';
import { ensureServiceRunning } from '../host/services.js';
import { caCertHash, clusterCaCert, readJoinToken } from './bootstrap.js';
import { requireApiEndpoint, waitForControlPlane } from './cluster.js';
import type { BootContext, BootPhase, PhaseOutcome } from './context.js';
import { kubeadm, kubeFiles, writeKubeadmConfig } from './kubeadm-run.js';
import { nodeNameOf, nodeRegistrationFor } from './registration.js';

/**
 * A worker joins with the bootstrap token and the CA hash, after the control plane answers
 * (kube-version has waited for it already; the wait here is then one quick look). A worker
 * that joined before only makes sure kubelet runs.
 */
export const workerJoinPhase: BootPhase = {
  name: 'worker-join',
  budgetMs: (c) => (c.boot.controlPlaneWait + c.boot.kubeadmTimeout + 300) * 1000,
  run: async (ctx) => joinAsWorker(ctx),
};

async function joinAsWorker(ctx: BootContext): Promise<PhaseOutcome> {
  const { config, identity } = ctx;
  if (fs.existsSync(kubeFiles(ctx).kubeletConf)) {
    ctx.shared.joinMode = 'already-joined';
    const started = await ensureServiceRunning(ctx.exec, 'kubelet');
    return { detail: `already joined${started ? '; started kubelet' : ''}`, changed: started };
  }
  const ep = requireApiEndpoint(config);
  if (!ctx.shared.apiReachable) await waitForControlPlane(ctx, ep);
  const [token, ca] = await Promise.all([readJoinToken(ctx), clusterCaCert(ctx)]);
  if (!token || !ca) {
    throw new AgentError('BootstrapMaterialMissing', `cannot join: the ${!token ? 'bootstrap token' : 'cluster CA'} is not at ${config.cluster?.bootstrap.s3Uri ?? '(no cluster.bootstrap.s3Uri)'}`, {
      hint: 'controller 00 publishes token and pki/ca.crt to cluster.bootstrap.s3Uri; check that the worker role may read them',
    });
  }
  // A join that was interrupted (kill, power loss) leaves kubeadm's files behind, and kubeadm's
  // preflight then refuses to join. On a worker `kubeadm reset` only removes what that join
  // made (there is no etcd data here), so it is the way back; never on a controller.
  const leftovers = ['/etc/kubernetes/bootstrap-kubelet.conf', '/etc/kubernetes/pki/ca.crt'].filter((f) => fs.existsSync(ctx.paths.at(f)));
  if (leftovers.length) {
    ctx.log.warn('an earlier join did not finish; resetting what it left', { files: leftovers.join(' ') });
    await kubeadm(ctx, ['reset', '--force'], 'kubeadm reset of an interrupted join');
  }
  const file = writeKubeadmConfig(
    ctx,
    'join.yaml',
    renderJoinConfig({ node: nodeRegistrationFor(config, identity), apiServerEndpoint: ep.hostPort, token, caCertHashes: [caCertHash(ca)] }),
  );
  await kubeadm(ctx, ['join', '--config', file], 'kubeadm join');
  ctx.shared.joinMode = 'worker';
  ctx.state.facts.joinMode = 'worker';
  return { detail: `joined ${ep.hostPort} as ${nodeNameOf(identity)} (${ctx.shared.versions?.install ?? '?'})`, changed: true };
}
