import fs from 'node:fs';
import path from 'node:path';
import { AgentError, DeadlineError } from '../errors.js';
import { upsertStableName } from '../host/dns.js';
import { KubeApiError } from '../host/kube.js';
import { renderEtcdPatch, renderInitConfig, renderJoinConfig } from '../host/kubeadm.js';
import { waitFor } from '../host/retry.js';
import { writeFileAtomic } from '../host/atomic.js';
import { ensureServiceRunning, ensureServiceStopped } from '../host/services.js';
import { registerSecret } from '../log/redact.js';
import { isFirstController } from '../node.js';
import { applyNodeSelfDeleteRbac, NODE_SELF_DELETE } from '../node-rbac.js';
import {
  caCertHash,
  clusterCaCert,
  installSharedPki,
  newBootstrapToken,
  readJoinToken,
  SHARED_PKI_FILES,
  uploadSharedPki,
  writeBootstrapObject,
} from './bootstrap.js';
import { ETCD_SLOTS, otherEtcdMembersAnswering, requireApiEndpoint } from './cluster.js';
import type { BootContext, BootPhase, JoinMode, MountedVolume, PhaseOutcome } from './context.js';
import { addThisMember, initialClusterOf, listMembers, type EtcdAccess } from './etcd-members.js';
import { holdsEtcdData, readVolumeIdentity, volumeSettings, writeVolumeIdentity } from './etcd-volume.js';
import { dirAvailableCheck, fileAvailableCheck, kubeadm, kubeFiles, openAdminKube, removeStaleSlotNodes, writeKubeadmConfig, writePatch, type AdminKube } from './kubeadm-run.js';
import { clusterSettingsFor, nodeNameOf, nodeRegistrationFor, stableEtcdName } from './registration.js';

/**
 * A controller becomes part of the control plane in one of three ways (KubeZero's controller
 * flow, unattended):
 *
 * - bootstrap: controller 00, no running cluster, blank etcd data: `kubeadm init`.
 * - restore:   controller 00, no running cluster, etcd data on the volume (its predecessor's,
 *              or restored from S3 by etcd-restore): the cluster's PKI, then `kubeadm init`
 *              on the existing data (its phases write manifests and API objects, never etcd's
 *              data directory).
 * - join:      a running cluster: `kubeadm join --control-plane`; with stable names the
 *              agent manages this slot's etcd member itself.
 *
 * After bootstrap and restore, controller 00 grants nodes the deletion of their own Node
 * (what a retiring worker's terminate needs; docs/terminate.md).
 *
 * A node that has joined before (kubelet.conf and the API server manifest exist) only makes
 * sure kubelet runs (and controller 00 that the grant was applied).
 */

const BIND_PORT = 6443;
/** State fact: controller 00 applied the node self-delete grant from this node. */
const NODE_RBAC_FACT = 'nodeSelfDeleteRbac';
/** State fact: controller 00 published the PKI kubeadm init generated to cluster.bootstrap.s3Uri. */
const PKI_PUBLISHED_FACT = 'bootstrapPkiPublished';

export const controlPlanePhase: BootPhase = {
  name: 'control-plane',
  budgetMs: (c) => (c.boot.controlPlaneWait + c.boot.kubeadmTimeout * 4 + c.boot.dnsWait + 900) * 1000,
  run: async (ctx) => bringUpControlPlane(ctx),
};

async function bringUpControlPlane(ctx: BootContext): Promise<PhaseOutcome> {
  const { config, log, identity } = ctx;
  const files = kubeFiles(ctx);
  const volume = ctx.shared.volume;
  const version = ctx.shared.versions?.install;
  if (!volume || !version) throw new AgentError('BootOrder', 'control-plane needs the etcd volume and the version decision', { hint: 'a bug: see the phase order' });

  const interrupted = interruptedKubeadm(ctx);
  if (interrupted) await undoInterruptedKubeadm(ctx, interrupted);
  else if (fs.existsSync(files.kubeletConf) && fs.existsSync(files.apiServerManifest)) {
    ctx.shared.joinMode = 'already-joined';
    const started = await ensureServiceRunning(ctx.exec, 'kubelet');
    recordVersionOnVolume(volume, version);
    // A boot cut off between kubeadm init and the grant or the PKI upload (or one of an older
    // agent) does them now: nothing else would, once kubeadm's files are in place.
    const granted = isFirstController(config) && ctx.state.facts[NODE_RBAC_FACT] !== true;
    if (granted) await withAdminKube(ctx, (admin) => grantNodeSelfDelete(ctx, admin));
    const published = isFirstController(config) && ctx.state.facts[PKI_PUBLISHED_FACT] !== true ? await publishSharedPki(ctx) : [];
    const did = [started && 'started kubelet', granted && `applied ${NODE_SELF_DELETE}`, published.length > 0 && `published the cluster PKI (${published.join(' ')})`].filter(Boolean);
    return { detail: ['already a control-plane node', ...did].join('; '), changed: did.length > 0 };
  }

  const first = isFirstController(config);
  const hasData = holdsEtcdData(volume.dataDir);
  const mode: JoinMode = first && !ctx.shared.apiReachable ? (hasData ? 'restore' : 'bootstrap') : 'join';
  ctx.shared.joinMode = mode;
  ctx.state.facts.joinMode = mode;
  log.info('control-plane mode', {
    mode,
    why:
      mode === 'join'
        ? 'the control plane answers'
        : `controller 00, no control plane answers, ${hasData ? 'etcd data on the volume' : 'blank etcd data'}`,
  });

  if (mode !== 'join') await refuseSecondCluster(ctx);
  const stable = stableEtcdName(config);
  if (stable && config.cluster?.route53ZoneId) {
    await upsertStableName({
      aws: ctx.aws,
      zoneId: config.cluster.route53ZoneId,
      name: stable,
      ip: identity.privateIp,
      resolveWaitMs: config.boot.dnsWait * 1000,
      log,
      signal: ctx.signal,
    });
  }
  const pki = await installSharedPki(ctx);
  if (pki.length) log.info('installed the cluster PKI from the bootstrap location', { files: pki.join(' ') });

  if (mode === 'join') await joinControlPlane(ctx, volume, version, stable);
  else await initControlPlane(ctx, volume, version, stable, mode === 'restore');

  recordVersionOnVolume(volume, version);
  // One admin client for both (one kubeconfig parse, one TLS session).
  const removed = await withAdminKube(ctx, async (admin) => {
    if (mode !== 'join') await grantNodeSelfDelete(ctx, admin);
    return removeStaleSlotNodes(ctx, nodeNameOf(identity), admin).catch((err: Error) => {
      log.warn('could not remove stale Node objects of this slot', { err: err.message });
      return [] as string[];
    });
  });
  const extra = removed.length ? `; removed stale Node ${removed.join(', ')}` : '';
  return { detail: `${mode}: control plane ${version} on ${nodeNameOf(identity)}${stable ? ` (etcd ${stable})` : ''}${extra}`, changed: true };
}

/** Present while `kubeadm init` runs (agent/boot/control-plane.ts, docs/boot.md). */
const INIT_MARKER = '/var/lib/zdt-agent/kubeadm-init.started';
const initMarker = (ctx: BootContext) => ctx.paths.at(INIT_MARKER);
/** The static pods `kubeadm init` and `join --control-plane` write, which their preflight refuses to find. */
const STATIC_POD_MANIFESTS = ['kube-apiserver', 'kube-controller-manager', 'kube-scheduler', 'etcd'].map((n) => `/etc/kubernetes/manifests/${n}.yaml`);
/**
 * Given to `kubeadm reset phase cleanup-node --cert-dir`: a directory that never holds
 * anything, so that the cleanup keeps the cluster's PKI (its default, /etc/kubernetes/pki,
 * would delete the CA that the etcd data and the other nodes depend on).
 */
const RESET_CERT_DIR = '/etc/kubernetes/zdt-agent/reset-keeps-the-pki';

/**
 * Why the last `kubeadm init` or `join` on this node did not finish, if it did not: the
 * marker of an init that was killed or failed (also one that got as far as kubelet.conf and
 * the manifests), or static pod manifests without the kubelet.conf a finished run leaves.
 */
export function interruptedKubeadm(ctx: BootContext): string | undefined {
  const marker = initMarker(ctx);
  if (fs.existsSync(marker)) return `kubeadm init started at ${fs.readFileSync(marker, 'utf8').trim() || '?'} and did not finish`;
  // init writes kubelet.conf before the manifests; a join writes the manifests first.
  const manifests = STATIC_POD_MANIFESTS.filter((m) => fs.existsSync(ctx.paths.at(m)));
  if (manifests.length && !fs.existsSync(kubeFiles(ctx).kubeletConf)) return `${manifests.join(', ')} exist without kubelet.conf`;
  return undefined;
}

/**
 * Undoes what an interrupted kubeadm left, so that the next init or join passes its
 * preflight (existing manifests, ports held by kubelet and static pods): kubelet stopped,
 * then `kubeadm reset phase cleanup-node`, which removes the kubelet's state and the
 * containers it ran, the static pod manifests and the kubeconfigs. It keeps what init reuses
 * or what holds data: the PKI (see RESET_CERT_DIR), the etcd data (only the
 * remove-etcd-member phase, not run, would delete it; an init that got as far as starting
 * etcd is then re-run on its data like a restore) and the agent's kubeadm configs.
 */
async function undoInterruptedKubeadm(ctx: BootContext, why: string): Promise<void> {
  ctx.log.warn('the last kubeadm run on this node did not finish: undoing what it left before running it again', { why });
  await ensureServiceStopped(ctx.exec, 'kubelet');
  // --rootfs: under --root (tests, chroots) kubeadm cleans that root, not the host's.
  const rootfs = ctx.paths.root === '/' ? [] : ['--rootfs', ctx.paths.root];
  await kubeadm(ctx, ['reset', 'phase', 'cleanup-node', '--cert-dir', RESET_CERT_DIR, ...rootfs], 'cleaning up after an interrupted kubeadm run');
  fs.rmSync(initMarker(ctx), { force: true });
}

/** Bootstrap and restore start a cluster of one: never while other controllers' etcd runs. */
export async function refuseSecondCluster(ctx: BootContext): Promise<void> {
  const running = await otherEtcdMembersAnswering(ctx.config);
  if (running.length) {
    throw new AgentError('ClusterRunningElsewhere', `the API endpoint does not answer, but the etcd of ${running.join(', ')} does`, {
      hint: 'not starting a second cluster next to a running one: check the API load balancer and DNS for cluster.apiEndpoint, then boot again',
    });
  }
}

function nodePathOf(ctx: BootContext, volume: MountedVolume): string {
  const v = volumeSettings(ctx.config);
  return path.posix.join(v.mountPoint, path.relative(volume.mountPoint, volume.dataDir));
}

async function initControlPlane(ctx: BootContext, volume: MountedVolume, version: string, stable: string | undefined, restore: boolean): Promise<void> {
  const { config, identity, log } = ctx;
  const dataDir = nodePathOf(ctx, volume);
  if (restore) {
    // Existing etcd data with a new CA would be a cluster nobody can talk to.
    const missing = ['ca.crt', 'ca.key', 'etcd/ca.crt', 'etcd/ca.key', 'sa.key', 'sa.pub'].filter((f) => !fs.existsSync(ctx.paths.at(`/etc/kubernetes/pki/${f}`)));
    if (missing.length) {
      throw new AgentError('ClusterPkiMissing', `the etcd volume holds cluster data but the cluster's PKI is missing (${missing.join(', ')})`, {
        hint: 'put the PKI at <cluster.bootstrap.s3Uri>/pki/ (or keep a backup with etcd.backup.bucket); the agent never pairs existing data with a new CA',
      });
    }
  }
  let token = await readJoinToken(ctx);
  const generated = !token;
  token ??= newBootstrapToken();
  registerSecret(token, 'bootstrap-token');
  const ignore = restore ? [dirAvailableCheck(dataDir)] : [];
  // Published before kubeadm init: a boot that fails after it (the PKI upload, the grant)
  // leaves a node whose next boot only sees kubeadm's files, and the others still need the
  // token; one that fails before init uses this token at the next try.
  if (generated && config.cluster?.bootstrap.s3Uri) {
    await writeBootstrapObject(ctx, 'token', `${token}\n`);
    log.info('published the join token', { to: config.cluster.bootstrap.s3Uri });
  }
  const initYaml = renderInitConfig({
    node: nodeRegistrationFor(config, identity, ignore),
    cluster: clusterSettingsFor(config, { kubernetesVersion: version, etcdDataDir: dataDir }),
    advertiseAddress: identity.privateIp,
    bindPort: BIND_PORT,
    bootstrapToken: { token, ttl: config.cluster!.bootstrap.tokenTtl },
  });
  const file = writeKubeadmConfig(ctx, 'init.yaml', initYaml);
  if (stable) {
    const peerUrl = `https://${stable}:2380`;
    writePatch(ctx, 'etcd+json.yaml', renderEtcdPatch({ name: stable, peerUrl, initialCluster: `${stable}=${peerUrl}`, initialClusterState: 'new' }));
  }
  // Written before, removed after: a boot killed in between finds it and undoes the half.
  writeFileAtomic(initMarker(ctx), `${new Date().toISOString()} ${restore ? 'restore' : 'bootstrap'}\n`, 0o600);
  await kubeadm(ctx, ['init', '--config', file, '--skip-token-print'], restore ? 'kubeadm init on the existing etcd data' : 'kubeadm init of a new cluster');
  fs.rmSync(initMarker(ctx), { force: true });

  // Others join with what controller 00 used: publish what S3 does not have yet.
  if (config.cluster?.bootstrap.s3Uri) await publishSharedPki(ctx);
  else if (generated) log.warn('no cluster.bootstrap.s3Uri: workers and other controllers cannot learn the join token');
}

/**
 * Uploads the PKI files S3 does not have yet (what kubeadm init generated) and records that
 * it did; a failed upload fails the phase, and the next boot uploads again. Returns the files.
 */
async function publishSharedPki(ctx: BootContext): Promise<string[]> {
  if (!ctx.config.cluster?.bootstrap.s3Uri) return [];
  const uploaded = await uploadSharedPki(ctx);
  ctx.state.facts[PKI_PUBLISHED_FACT] = true;
  if (uploaded.length) ctx.log.info('published the cluster PKI', { files: uploaded.join(' '), to: ctx.config.cluster.bootstrap.s3Uri });
  return uploaded;
}

async function withAdminKube<T>(ctx: BootContext, fn: (admin: AdminKube | undefined) => Promise<T>): Promise<T> {
  const admin = openAdminKube(ctx);
  try {
    return await fn(admin);
  } finally {
    admin?.client.close();
  }
}

/**
 * Grants every node the deletion of its own Node object (node-rbac.ts), so that retired
 * workers leave no Node behind; with kubeadm's admin.conf, as soon as the new control plane
 * takes it, within boot.controlPlaneWait. Without the grant the cluster cannot retire workers
 * cleanly, so a grant that cannot be applied fails the phase (the next boot tries again).
 */
async function grantNodeSelfDelete(ctx: BootContext, admin: AdminKube | undefined): Promise<void> {
  const objects = `ClusterRole and ClusterRoleBinding ${NODE_SELF_DELETE}`;
  const adminConf = ctx.paths.at('/etc/kubernetes/admin.conf');
  if (!admin) {
    throw new AgentError('NodeRbacNotApplied', `cannot apply the ${objects}: kubeadm init left no ${adminConf}`, {
      hint: 'check the kubeadm init output in the log; workers need this grant to delete their own Node when they are retired (docs/terminate.md)',
    });
  }
  const hint =
    `check that the API server at ${admin.server} answers (crictl ps -a, the kubelet log) and that ${adminConf} is kubeadm's admin kubeconfig; ` +
    'workers need this grant to delete their own Node when they are retired (docs/terminate.md); the next boot applies it again';
  const kube = admin.client;
  try {
    const done = await waitFor({
      what: `the API server at ${admin.server} to take the ${objects}`,
      timeoutMs: ctx.config.boot.controlPlaneWait * 1000,
      initialDelayMs: 1000,
      maxDelayMs: 15_000,
      progressEveryMs: 30_000,
      log: ctx.log,
      signal: ctx.signal,
      code: 'NodeRbacNotApplied',
      hint,
      retryable: apiStillStarting,
      check: () => applyNodeSelfDeleteRbac(kube, ctx.signal),
    });
    ctx.state.facts[NODE_RBAC_FACT] = true;
    ctx.log.info('nodes may delete their own Node object', { ...done });
  } catch (err) {
    if (!(err instanceof KubeApiError)) throw err;
    throw new AgentError('NodeRbacNotApplied', `cannot apply the ${objects} with ${adminConf}: ${err.message}`, { hint, cause: err });
  }
}

/**
 * What a control plane that is still starting answers: no connection, 404 (its API groups
 * come up one by one), 409 (an edit between our GET and PUT), 429, 5xx. Anything else (401,
 * 403, 422) will not change by waiting.
 */
function apiStillStarting(err: unknown): boolean {
  if (err instanceof KubeApiError) return err.status === 404 || err.status === 409 || err.status === 429 || err.status >= 500;
  // A request the API server did not answer in time: one that is starting, or stopped for a
  // while; the wait (boot.controlPlaneWait) decides, and its error names the grant.
  if (err instanceof DeadlineError) return true;
  return !(err instanceof AgentError);
}

async function joinControlPlane(ctx: BootContext, volume: MountedVolume, version: string, stable: string | undefined): Promise<void> {
  const { config, identity, log } = ctx;
  const ep = requireApiEndpoint(config);
  const token = await readJoinToken(ctx);
  const ca = await clusterCaCert(ctx);
  if (!token || !ca) {
    throw new AgentError('BootstrapMaterialMissing', `cannot join: the ${!token ? 'bootstrap token' : 'cluster CA'} is not at ${config.cluster?.bootstrap.s3Uri ?? '(no cluster.bootstrap.s3Uri)'}`, {
      hint: 'controller 00 publishes pki/ and token to cluster.bootstrap.s3Uri after kubeadm init; check that it ran and that this role may read them',
    });
  }
  const missing = SHARED_PKI_FILES.filter((f) => !fs.existsSync(ctx.paths.at(`/etc/kubernetes/pki/${f}`)));
  if (missing.length) {
    throw new AgentError('ClusterPkiMissing', `a joining controller needs the shared cluster PKI; missing ${missing.join(', ')}`, {
      hint: 'check <cluster.bootstrap.s3Uri>/pki/ and the instance role',
    });
  }
  const dataDir = nodePathOf(ctx, volume);
  const ignore: string[] = [dirAvailableCheck(dataDir)];
  const controlPlane = { advertiseAddress: identity.privateIp, bindPort: BIND_PORT };
  const skip: string[] = [];

  if (stable) {
    // kubeadm would add this member under its IP; with a stable name the agent does it and
    // writes etcd's manifest through `kubeadm init phase etcd local` plus the name patch.
    const clusterYaml = writeKubeadmConfig(
      ctx,
      'cluster.yaml',
      renderInitConfig({
        node: nodeRegistrationFor(config, identity),
        cluster: clusterSettingsFor(config, { kubernetesVersion: version, etcdDataDir: dataDir }),
        advertiseAddress: identity.privateIp,
        bindPort: BIND_PORT,
      }),
    );
    await kubeadm(ctx, ['init', 'phase', 'certs', 'etcd-healthcheck-client', '--config', clusterYaml], 'the etcd client certificate');
    const pki = (f: string) => ctx.paths.at(`/etc/kubernetes/pki/etcd/${f}`);
    const access: EtcdAccess = {
      endpoints: ETCD_SLOTS.filter((s) => s !== config.node.controllerIndex).map((s) => `https://${stableEtcdName(config, s)}:2379`),
      tls: { cacert: pki('ca.crt'), cert: pki('healthcheck-client.crt'), key: pki('healthcheck-client.key') },
    };
    const peerUrl = `https://${stable}:2380`;
    let initialCluster: string;
    const members = holdsEtcdData(volume.dataDir) ? await listMembers(ctx.exec, access) : [];
    if (members.find((m) => m.peerUrls.includes(peerUrl))?.isLearner) moveLearnerDataAside(volume, stable, log);
    if (holdsEtcdData(volume.dataDir)) {
      // The predecessor's volume: the same member with its data; etcd rejoins as itself.
      if (!members.some((m) => m.peerUrls.includes(peerUrl))) {
        throw new AgentError('EtcdMemberMissing', `the volume holds etcd data of ${stable}, but the cluster has no member with ${peerUrl}`, {
          hint: 'the member was removed while its volume was kept; move the old data aside (it is stale) and boot again to join as a new member',
        });
      }
      initialCluster = initialClusterOf(members, { name: stable, peerUrl });
      log.info('the etcd volume holds this slot member\'s data; rejoining as that member', { member: stable });
    } else {
      initialCluster = (await addThisMember({ exec: ctx.exec, access, name: stable, peerUrl, log })).initialCluster;
    }
    writePatch(ctx, 'etcd+json.yaml', renderEtcdPatch({ name: stable, peerUrl, initialCluster, initialClusterState: 'existing' }));
    await kubeadm(ctx, ['init', 'phase', 'etcd', 'local', '--config', clusterYaml], "etcd's static pod with the stable name");
    ignore.push(fileAvailableCheck('/etc/kubernetes/manifests/etcd.yaml'));
    skip.push('control-plane-join/etcd');
  }

  const joinYaml = writeKubeadmConfig(
    ctx,
    'join.yaml',
    renderJoinConfig({
      node: nodeRegistrationFor(config, identity, ignore),
      apiServerEndpoint: ep.hostPort,
      token,
      caCertHashes: [caCertHash(ca)],
      controlPlane,
    }),
  );
  await kubeadm(ctx, ['join', '--config', joinYaml, ...(skip.length ? [`--skip-phases=${skip.join(',')}`] : [])], 'kubeadm join --control-plane');
}

/**
 * The volume holds the data of this slot's learner: a join that died before the promotion.
 * A learner's data is a copy of the leader's, possibly partial, and nothing promotes it: it
 * goes aside on the volume (kept, not deleted), and the slot joins afresh, which removes the
 * learner (addThisMember).
 */
function moveLearnerDataAside(volume: MountedVolume, member: string, log: BootContext['log']): void {
  const aside = path.join(volume.mountPoint, `etcd-learner-${new Date().toISOString().replace(/[-:]|\.\d+/g, '')}`);
  fs.renameSync(path.join(volume.dataDir, 'member'), aside);
  log.warn("this slot's etcd member is a learner left by an unfinished join: its data moved aside, joining afresh", { member, movedTo: aside });
}

/** The version the cluster on this volume runs: what a replacement controller 00 starts with when the API is down. */
function recordVersionOnVolume(volume: MountedVolume, version: string): void {
  const id = readVolumeIdentity(volume.mountPoint);
  if (!id || id.kubernetesVersion === version) return;
  writeVolumeIdentity(volume.mountPoint, { ...id, kubernetesVersion: version });
}
