import { AgentError } from '../errors.js';
import { upstreamVersion } from '../host/packages.js';
import type { VersionDecision } from './context.js';

/**
 * The Kubernetes version policy, as pure functions:
 * - `kubernetesVersion` is exact (1.31.4) or a minor with X (1.31.X: the newest patch offered);
 * - only controller 00 changes the cluster's version, one minor at a time, never down;
 * - every other node installs exactly what the cluster runs.
 */

export type Version = readonly [number, number, number];

export function parseVersion(v: string): Version {
  const m = /^v?(\d+)\.(\d+)\.(\d+)/.exec(v);
  if (!m) throw new AgentError('VersionInvalid', `${v} is not a Kubernetes version`, { hint: 'use major.minor.patch, e.g. 1.31.4' });
  return [Number(m[1]), Number(m[2]), Number(m[3])];
}

export function compareVersions(a: string, b: string): number {
  const x = parseVersion(a);
  const y = parseVersion(b);
  return x[0] - y[0] || x[1] - y[1] || x[2] - y[2];
}

/** Resolves `1.31.X` against the versions the package source offers (apk versions, e.g. 1.31.4-r0). */
export function resolveConfiguredVersion(configured: string, offered: readonly string[]): string {
  const m = /^1\.(\d+)\.X$/.exec(configured);
  if (!m) return configured;
  const candidates = offered.map(upstreamVersion).filter((v) => v.startsWith(`1.${m[1]}.`) && /^\d+\.\d+\.\d+$/.test(v));
  if (candidates.length === 0) {
    throw new AgentError('KubernetesVersionNotOffered', `the package source offers no 1.${m[1]} version (offered: ${offered.join(', ') || 'none'})`, {
      hint: 'add the repository that carries this Kubernetes minor to /etc/apk/repositories, or change cluster.kubernetesVersion',
    });
  }
  return candidates.sort(compareVersions).at(-1)!;
}

/** The newest package version (with its -rN) of an upstream version, if offered. */
export function packageVersionFor(version: string, offered: readonly string[]): string | undefined {
  const matching = offered.filter((v) => upstreamVersion(v) === version);
  return matching.sort((a, b) => Number(/-r(\d+)$/.exec(a)?.[1] ?? 0) - Number(/-r(\d+)$/.exec(b)?.[1] ?? 0)).at(-1);
}

/**
 * What this node installs. `desired` is the resolved configured version (controller 00 only),
 * `cluster` what the cluster runs (undefined: no cluster yet, or unreachable).
 */
export function decideVersions(o: { firstController: boolean; desired: string | undefined; cluster: string | undefined }): VersionDecision {
  if (!o.firstController) {
    if (!o.cluster) throw new AgentError('ClusterVersionUnknown', 'the cluster version is not known', { hint: 'the control plane must answer /version first' });
    return { install: o.cluster, cluster: o.cluster, desired: undefined };
  }
  if (o.desired && o.cluster) {
    const d = parseVersion(o.desired);
    const c = parseVersion(o.cluster);
    if (compareVersions(o.desired, o.cluster) < 0) {
      throw new AgentError('KubernetesDowngradeRefused', `the cluster runs ${o.cluster}; cluster.kubernetesVersion asks for the older ${o.desired}`, {
        hint: 'Kubernetes is never downgraded: set cluster.kubernetesVersion to the running version or newer (restore a backup to go back)',
      });
    }
    if (d[0] !== c[0] || d[1] > c[1] + 1) {
      throw new AgentError('KubernetesUpgradeTooFar', `the cluster runs ${o.cluster}; ${o.desired} skips a minor version`, {
        hint: `upgrade one minor at a time: set cluster.kubernetesVersion to 1.${c[1] + 1}.X first`,
      });
    }
  }
  const install = o.cluster ?? o.desired;
  if (!install) {
    throw new AgentError('KubernetesVersionUnknown', 'no cluster.kubernetesVersion is configured and no running cluster tells its version', {
      hint: 'set cluster.kubernetesVersion for controller 00 (e.g. 1.31.X)',
    });
  }
  return { install, cluster: o.cluster, desired: o.desired };
}
