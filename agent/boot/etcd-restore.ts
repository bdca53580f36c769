import path from 'node:path';
import { AgentError } from '../errors.js';
import { describeRestore, restoreBackup } from '../etcd/restore.js';
import { apiCredentials, apiEndpoint, probeApi } from './cluster.js';
import type { BootContext, BootPhase, PhaseOutcome } from './context.js';
import { refuseSecondCluster } from './control-plane.js';
import { holdsEtcdData, readVolumeIdentity, volumeSettings, writeVolumeIdentity } from './etcd-volume.js';
import { nodeNameOf, stableEtcdName } from './registration.js';

/**
 * Disaster recovery: controller 00 with a blank etcd volume and no running cluster restores
 * the newest valid backup of the cluster (etcd snapshot and PKI, checksums verified, see
 * docs/etcd-backup.md) before kubeadm runs, as this slot's member. No backup: a new cluster.
 */
export const etcdRestorePhase: BootPhase = {
  name: 'etcd-restore',
  budgetMs: () => 1800_000,
  run: async (ctx) => restoreIfBlank(ctx),
};

async function restoreIfBlank(ctx: BootContext): Promise<PhaseOutcome> {
  const { config, identity, log } = ctx;
  const volume = ctx.shared.volume;
  if (!volume) throw new AgentError('BootOrder', 'etcd-restore needs the mounted etcd volume', { hint: 'a bug: see the phase order' });
  if (holdsEtcdData(volume.dataDir)) return { detail: 'the volume holds etcd data; nothing to restore', changed: false, skipped: true };

  const ep = apiEndpoint(config);
  const creds = ep ? await apiCredentials(ctx, ep) : undefined;
  if (ep && creds && (await probeApi(ep, creds)).ready) {
    return { detail: `the control plane at ${ep.hostPort} answers: joining it, not restoring`, changed: false, skipped: true };
  }

  await refuseSecondCluster(ctx);
  const stable = stableEtcdName(config);
  const memberName = stable ?? nodeNameOf(identity);
  const peerUrl = `https://${stable ?? identity.privateIp}:2380`;
  const dataDir = path.posix.join(volumeSettings(config).mountPoint, path.relative(volume.mountPoint, volume.dataDir));
  try {
    const r = await restoreBackup({ ctx, from: 'latest', dataDir, memberName, peerUrl, signal: ctx.signal });
    ctx.shared.restoredFrom = r.key;
    ctx.state.facts.restoredFrom = r.key;
    // kube-version starts the restored cluster at the version it ran.
    const id = readVolumeIdentity(volume.mountPoint);
    if (id && r.manifest.kubernetesVersion) {
      writeVolumeIdentity(volume.mountPoint, { ...id, kubernetesVersion: r.manifest.kubernetesVersion.replace(/^v/, '') });
    }
    log.info('restored etcd from the backup', { key: r.key, member: memberName, kubernetes: r.manifest.kubernetesVersion, tool: r.tool?.file, revisionBump: r.revisionBump, ms: r.durationMs });
    return { detail: `restored ${r.key} as ${memberName} (${r.files.length} PKI/config files; ${describeRestore(r)})`, changed: true };
  } catch (err) {
    if (err instanceof AgentError && err.code === 'NoBackupFound') {
      return { detail: 'no backup of this cluster: a new cluster will be bootstrapped', changed: false, skipped: true };
    }
    throw err;
  }
}
