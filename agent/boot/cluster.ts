import dns from 'node:dns/promises';
import fs from 'node:fs';
import net from 'node:net';
import type { Config } from '../config/schema.js';
import { AgentError, ConfigError } from '../errors.js';
import { KubeClient, loadKubeconfig, type KubeCredentials } from '../host/kube.js';
import { waitFor } from '../host/retry.js';
import { clusterCaCert } from './bootstrap.js';
import type { BootContext } from './context.js';

/**
 * Reaching the cluster's API before this node is part of it: the configured endpoint, TLS
 * verified with the cluster CA, anonymous (/readyz and /version are public on kubeadm
 * clusters); on a node that has joined, with its own kubeconfig.
 */

export interface ApiEndpoint {
  host: string;
  port: number;
  /** host:port as kubeadm wants it. */
  hostPort: string;
  url: string;
}

export function apiEndpoint(config: Config): ApiEndpoint | undefined {
  const raw = config.cluster?.apiEndpoint;
  if (!raw) return undefined;
  const m = /^(.+?)(?::(\d+))?$/.exec(raw)!;
  const host = m[1]!;
  const port = m[2] ? Number(m[2]) : 6443;
  return { host, port, hostPort: `${host}:${port}`, url: `https://${host}:${port}` };
}

export function requireApiEndpoint(config: Config): ApiEndpoint {
  const ep = apiEndpoint(config);
  if (!ep) {
    throw new ConfigError('ApiEndpointMissing', `a ${config.node.role} needs cluster.apiEndpoint to find the control plane`, {
      hint: 'set cluster.apiEndpoint (host:port of the API load balancer), e.g. in the launch template user-data or tag zdt:api-endpoint',
    });
  }
  return ep;
}

/** Credentials for the API: this node's own kubeconfig once it has one, else anonymous with the cluster CA. */
export async function apiCredentials(ctx: BootContext, ep: ApiEndpoint): Promise<KubeCredentials | undefined> {
  for (const f of ['/etc/kubernetes/admin.conf', '/etc/kubernetes/kubelet.conf']) {
    const file = ctx.paths.at(f);
    if (fs.existsSync(file)) {
      try {
        return { ...loadKubeconfig(file, (p) => ctx.paths.at(p)), server: ep.url };
      } catch (err) {
        ctx.log.warn('cannot use the local kubeconfig', { file, err: (err as Error).message });
      }
    }
  }
  const ca = await clusterCaCert(ctx);
  return ca ? { server: ep.url, ca } : undefined;
}

export interface ApiProbe {
  ready: boolean;
  version?: string | undefined;
  /** Why it is not ready, for progress lines and errors. */
  problem?: string | undefined;
}

/** One look at the API: does the name resolve, does TLS verify, does /readyz answer ok, which version. */
export async function probeApi(ep: ApiEndpoint, creds: KubeCredentials, timeoutMs = 5000): Promise<ApiProbe> {
  if (!net.isIP(ep.host)) {
    try {
      await dns.lookup(ep.host);
    } catch (err) {
      return { ready: false, problem: `${ep.host} does not resolve (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})` };
    }
  }
  const client = new KubeClient(creds);
  try {
    if (!(await client.readyz(timeoutMs))) return { ready: false, problem: `${ep.url}/readyz is not ok yet` };
    const v = await client.version(timeoutMs);
    return { ready: true, version: v.gitVersion.replace(/^v/, '').replace(/[-+].*$/, '') };
  } catch (err) {
    return { ready: false, problem: `${ep.url}: ${(err as Error).message}` };
  } finally {
    client.close();
  }
}

/** The control-plane wait's backoff: 1 s doubling to 15 s, each delay jittered (retry.ts). */
export const CONTROL_PLANE_BACKOFF = { initialDelayMs: 1000, maxDelayMs: 15_000 } as const;

/**
 * Waits until the control plane answers: bounded by boot.controlPlaneWait (whole clusters
 * launch at once, so workers may start long before it), jittered backoff, progress every 30s.
 *
 * Without a pre-generated PKI the cluster CA reaches S3 only after controller 00's kubeadm
 * init, so a node of a cluster launched in one go finds no CA at first: it keeps looking, on
 * the same backoff, until the CA is there (docs/boot.md, "Many nodes at once"). Only a node
 * with no bootstrap location at all stops at once: nothing would ever bring it a CA.
 */
export async function waitForControlPlane(ctx: BootContext, ep: ApiEndpoint): Promise<{ version: string }> {
  const timeoutMs = ctx.config.boot.controlPlaneWait * 1000;
  const s3Uri = ctx.config.cluster?.bootstrap.s3Uri;
  let creds: KubeCredentials | undefined;
  let lastProblem = '';
  return waitFor({
    what: `the control plane at ${ep.url}`,
    timeoutMs,
    ...CONTROL_PLANE_BACKOFF,
    progressEveryMs: 30_000,
    log: ctx.log,
    signal: ctx.signal,
    code: 'ControlPlaneWaitTimeout',
    hint: `check that the controllers are up and the API load balancer forwards ${ep.hostPort}, and that controller 00 published ${s3Uri ?? '<cluster.bootstrap.s3Uri>'}/pki/ca.crt; boot.controlPlaneWait bounds this wait`,
    retryable: (err) => !(err instanceof AgentError && err.code === 'ClusterCaMissing'),
    check: async (attempt) => {
      creds ??= await apiCredentials(ctx, ep);
      if (!creds && !s3Uri) {
        throw new AgentError('ClusterCaMissing', 'the cluster CA certificate is not known, so the API server cannot be verified', {
          hint: 'set cluster.bootstrap.s3Uri: controller 00 publishes the cluster CA at <s3Uri>/pki/ca.crt after kubeadm init',
        });
      }
      if (!creds) {
        const problem = `no cluster CA at ${s3Uri}/pki/ca.crt yet (controller 00 publishes it after kubeadm init)`;
        if (attempt === 1) ctx.log.info('waiting for the control plane', { url: ep.url, limitS: ctx.config.boot.controlPlaneWait, problem });
        lastProblem = problem;
        throw new Error(problem);
      }
      const p = await probeApi(ep, creds);
      if (p.ready && p.version) return { version: p.version };
      if (attempt === 1) ctx.log.info('waiting for the control plane', { url: ep.url, limitS: ctx.config.boot.controlPlaneWait, problem: p.problem });
      else if (p.problem !== lastProblem) ctx.log.debug('control plane not ready', { problem: p.problem });
      lastProblem = p.problem ?? '';
      throw new Error(p.problem ?? 'not ready');
    },
  });
}

/** The slots whose stable etcd names are tried (etcd clusters have at most five members). */
export const ETCD_SLOTS = ['00', '01', '02', '03', '04'] as const;

/**
 * The stable etcd names of the other controller slots that accept a TCP connection on the
 * etcd client port. Controller 00 checks this before it bootstraps or restores: an API
 * endpoint that does not answer (load balancer, DNS) must not lead to a second cluster next to
 * a running one. Without cluster.domain there are no stable names and nothing to check.
 */
export async function otherEtcdMembersAnswering(config: Config, timeoutMs = 2000): Promise<string[]> {
  const domain = config.cluster?.domain;
  if (!domain) return [];
  const names = ETCD_SLOTS.filter((s) => s !== config.node.controllerIndex).map((s) => `etcd${s}.${domain}`);
  const answers = await Promise.all(
    names.map(
      (host) =>
        new Promise<string | undefined>((resolve) => {
          const socket = net.connect({ host, port: 2379, timeout: timeoutMs });
          const done = (ok: boolean) => {
            socket.destroy();
            resolve(ok ? host : undefined);
          };
          socket.once('connect', () => done(true));
          socket.once('timeout', () => done(false));
          socket.once('error', () => done(false));
        }),
    ),
  );
  return answers.filter((a): a is string => a !== undefined);
}

