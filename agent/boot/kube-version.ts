import { installExact, installedVersions, offeredVersions, PackageVersionMissing, upstreamVersion } from '../host/packages.js';
import { isFirstController } from '../node.js';
import { apiCredentials, apiEndpoint, probeApi, requireApiEndpoint, waitForControlPlane } from './cluster.js';
import type { BootContext, BootPhase, PhaseOutcome } from './context.js';
import { readVolumeIdentity } from './etcd-volume.js';
import { decideVersions, packageVersionFor, resolveConfiguredVersion } from './versions.js';

/**
 * Decides the Kubernetes version this node runs (versions.ts) and installs exactly that
 * version of kubeadm, kubelet and kubectl. The cluster's version comes from the API server
 * (/version); controller 00 looks once, the others wait for the control plane until it
 * answers, because they must never install anything but what the cluster runs.
 */
export const kubeVersionPhase: BootPhase = {
  name: 'kube-version',
  budgetMs: (c) => (c.boot.controlPlaneWait + 900) * 1000,
  run: async (ctx) => settleVersion(ctx),
};

async function settleVersion(ctx: BootContext): Promise<PhaseOutcome> {
  const { config, log } = ctx;
  const first = isFirstController(config);
  const packages = config.boot.kubernetesPackages;
  let cluster: string | undefined;
  let source = '';

  if (first) {
    const ep = apiEndpoint(config);
    const creds = ep ? await apiCredentials(ctx, ep) : undefined;
    if (ep && creds) {
      const p = await probeApi(ep, creds);
      if (p.ready) {
        cluster = p.version;
        source = `API ${ep.hostPort}`;
        ctx.shared.apiReachable = true;
      } else {
        log.info('the control plane does not answer; taking this as no running cluster', { problem: p.problem });
      }
    }
    // A cluster that is down but whose data is here (single controller replaced, or restored).
    if (!cluster && ctx.shared.volume) {
      const v = readVolumeIdentity(ctx.shared.volume.mountPoint)?.kubernetesVersion;
      if (v) {
        cluster = v;
        source = 'the etcd volume';
      }
    }
  } else {
    const ep = requireApiEndpoint(config);
    cluster = (await waitForControlPlane(ctx, ep)).version;
    source = `API ${ep.hostPort}`;
    ctx.shared.apiReachable = true;
  }

  const installed = installedVersions(ctx.paths);
  const current = (name: string) => installed?.get(name) ?? (installed ? undefined : (ctx.state.facts[`package:${name}`] as string | undefined));
  const configured = first ? config.cluster?.kubernetesVersion : undefined;
  const resolvedAlready = !configured || !configured.endsWith('.X');
  // When no '.X' has to be resolved and the packages already are at the version, the package
  // source need not be asked (a process less on every boot of a booted node).
  if (resolvedAlready) {
    const decision = decideVersions({ firstController: first, desired: configured, cluster });
    if (packages.every((name) => upstreamVersion(current(name) ?? '') === decision.install)) {
      ctx.shared.versions = decision;
      ctx.state.facts.kubernetesVersion = decision.install;
      return { detail: `${decision.install} installed (${cluster ? `the cluster runs ${cluster}` : `new cluster at ${decision.install}`})`, changed: false };
    }
  }

  const offered = await offeredVersions(ctx.exec, packages);
  const main = packages[0]!;
  const desired = configured ? resolveConfiguredVersion(configured, offered.get(main) ?? []) : undefined;
  const decision = decideVersions({ firstController: first, desired, cluster });
  ctx.shared.versions = decision;
  log.info('Kubernetes version decided', { install: decision.install, cluster: cluster ?? 'none', from: source || undefined, desired });

  const wanted = packages.map((name) => {
    const version = packageVersionFor(decision.install, offered.get(name) ?? []);
    if (!version) throw new PackageVersionMissing(name, decision.install, offered.get(name) ?? []);
    return { name, version };
  });
  const missing = wanted.filter((p) => current(p.name) !== p.version);
  ctx.state.facts.kubernetesVersion = decision.install;
  const why = cluster ? `the cluster runs ${cluster}` : `new cluster at ${desired}`;
  if (missing.length === 0) return { detail: `${decision.install} installed (${why})`, changed: false };
  await installExact(ctx.exec, missing);
  for (const p of missing) ctx.state.facts[`package:${p.name}`] = p.version;
  return { detail: `installed ${missing.map((p) => `${p.name}=${p.version}`).join(' ')} (${why})`, changed: true };
}
