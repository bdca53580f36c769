import fs from 'node:fs';
import path from 'node:path';
import { writeFileAtomic } from '../host/atomic.js';
import { KubeClient, loadKubeconfig } from '../host/kube.js';
import { PATCHES_DIR } from '../host/kubeadm.js';
import type { BootContext } from './context.js';
import { CONTROLLER_INDEX_LABEL } from './registration.js';

/** Files kubeadm leaves behind, and running it: shared by control-plane, worker-join and kube-upgrade. */

export const CONFIG_DIR = '/etc/kubernetes/zdt-agent';

export function kubeFiles(ctx: Pick<BootContext, 'paths'>) {
  const at = (p: string) => ctx.paths.at(p);
  return {
    kubeletConf: at('/etc/kubernetes/kubelet.conf'),
    adminConf: at('/etc/kubernetes/admin.conf'),
    apiServerManifest: at('/etc/kubernetes/manifests/kube-apiserver.yaml'),
    configDir: at(CONFIG_DIR),
    patchesDir: at(PATCHES_DIR),
  };
}

/** The name kubeadm gives a preflight check of a directory or file (`DirAvailable--var-lib-etcd`). */
export const dirAvailableCheck = (p: string) => `DirAvailable-${p.replaceAll('/', '-')}`;
export const fileAvailableCheck = (p: string) => `FileAvailable-${p.replaceAll('/', '-')}`;

/** Writes a kubeadm config (0600: it carries the bootstrap token) and returns its path. */
export function writeKubeadmConfig(ctx: BootContext, name: string, text: string): string {
  const file = path.join(kubeFiles(ctx).configDir, name);
  writeFileAtomic(file, text, 0o600);
  return file;
}

export function writePatch(ctx: BootContext, name: string, text: string): void {
  writeFileAtomic(path.join(kubeFiles(ctx).patchesDir, name), text, 0o600);
}

export async function kubeadm(ctx: BootContext, args: readonly string[], what: string): Promise<void> {
  ctx.log.info(`kubeadm ${args[0]}${args[1] && !args[1].startsWith('-') ? ` ${args[1]}` : ''}`, { what });
  await ctx.exec('kubeadm', args, {
    timeoutMs: ctx.config.boot.kubeadmTimeout * 1000,
    hint: `${what} failed; see the kubeadm output in the log, 'journalctl'/'/var/log/kubelet.log' and 'crictl ps -a'`,
  });
}

/** A client with kubeadm's admin.conf, which a control-plane node has; undefined without one. */
export interface AdminKube {
  client: KubeClient;
  server: string;
}

export function openAdminKube(ctx: BootContext): AdminKube | undefined {
  const file = kubeFiles(ctx).adminConf;
  if (!fs.existsSync(file)) return undefined;
  const creds = loadKubeconfig(file, (p) => ctx.paths.at(p));
  return { client: new KubeClient(creds), server: creds.server };
}

/**
 * Deletes the Node objects a predecessor in this controller slot left behind (same slot
 * label, another name), with the admin client.
 */
export async function removeStaleSlotNodes(ctx: BootContext, ownName: string, admin: AdminKube | undefined): Promise<string[]> {
  const index = ctx.config.node.controllerIndex;
  if (!index || !admin) return [];
  const list = await admin.client.call<{ items?: Array<{ metadata: { name: string } }> }>(
    'GET',
    `/api/v1/nodes?labelSelector=${encodeURIComponent(`${CONTROLLER_INDEX_LABEL}=${index}`)}`,
  );
  const stale = (list.body.items ?? []).map((n) => n.metadata.name).filter((n) => n !== ownName);
  for (const name of stale) {
    ctx.log.info('deleting the Node object of the predecessor in this slot', { node: name });
    await admin.client.call('DELETE', `/api/v1/nodes/${encodeURIComponent(name)}`, { okStatus: [404] });
  }
  return stale;
}
