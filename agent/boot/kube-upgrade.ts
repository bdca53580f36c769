import { renderUpgradeConfig } from '../host/kubeadm.js';
import { installExact, offeredVersions, PackageVersionMissing } from '../host/packages.js';
import { restartService } from '../host/services.js';
import { requireApiEndpoint, waitForControlPlane } from './cluster.js';
import type { BootContext, BootPhase, PhaseOutcome } from './context.js';
import { readVolumeIdentity, writeVolumeIdentity } from './etcd-volume.js';
import { kubeadm, writeKubeadmConfig } from './kubeadm-run.js';
import { compareVersions, decideVersions, packageVersionFor } from './versions.js';

/**
 * Controller 00 moves the cluster to the configured version once its control plane runs:
 * kubeadm of the new version, `kubeadm upgrade apply`, then kubelet and kubectl. The version
 * is read from the API again first, so a re-run after an interrupted upgrade sees where the
 * cluster is.
 */
export const kubeUpgradePhase: BootPhase = {
  name: 'kube-upgrade',
  budgetMs: (c) => (c.boot.controlPlaneWait + c.boot.kubeadmTimeout + 900) * 1000,
  run: async (ctx) => upgradeCluster(ctx),
};

async function upgradeCluster(ctx: BootContext): Promise<PhaseOutcome> {
  const desired = ctx.shared.versions?.desired;
  const installed = ctx.shared.versions?.install;
  if (!desired || !installed) return { detail: 'no target version', changed: false, skipped: true };
  if (compareVersions(desired, installed) <= 0) return { detail: `the cluster runs ${installed}, the configured version`, changed: false };

  const ep = requireApiEndpoint(ctx.config);
  const { version: current } = await waitForControlPlane(ctx, ep);
  decideVersions({ firstController: true, desired, cluster: current }); // refuses a downgrade or a skipped minor
  const packages = ctx.config.boot.kubernetesPackages;
  const offered = await offeredVersions(ctx.exec, packages);
  const pick = (name: string) => {
    const v = packageVersionFor(desired, offered.get(name) ?? []);
    if (!v) throw new PackageVersionMissing(name, desired, offered.get(name) ?? []);
    return { name, version: v };
  };
  const [main, ...rest] = packages.map(pick);

  if (compareVersions(desired, current) > 0) {
    ctx.log.info('upgrading the cluster', { from: current, to: desired });
    await installExact(ctx.exec, [main!]);
    ctx.state.facts[`package:${main!.name}`] = main!.version;
    const file = writeKubeadmConfig(ctx, 'upgrade.yaml', renderUpgradeConfig({ kubernetesVersion: desired }));
    await kubeadm(ctx, ['upgrade', 'apply', '--config', file, '--yes'], `kubeadm upgrade apply v${desired}`);
  }
  // kubelet follows the control plane, never leads it.
  await installExact(ctx.exec, rest);
  for (const p of rest) ctx.state.facts[`package:${p.name}`] = p.version;
  await restartService(ctx.exec, 'kubelet');
  ctx.state.facts.kubernetesVersion = desired;
  if (ctx.shared.versions) ctx.shared.versions.install = desired;
  const vol = ctx.shared.volume;
  const id = vol ? readVolumeIdentity(vol.mountPoint) : undefined;
  if (vol && id) writeVolumeIdentity(vol.mountPoint, { ...id, kubernetesVersion: desired });
  return { detail: `upgraded the cluster from ${current} to ${desired}`, changed: true };
}
