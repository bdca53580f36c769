import type { Config } from '../config/schema.js';
import type { Aws } from '../host/aws.js';
import type { Exec } from '../host/exec.js';
import type { Identity } from '../host/identity.js';
import type { Imds } from '../host/imds.js';
import type { Paths } from '../host/paths.js';
import type { Logger } from '../log/logger.js';
import type { AgentState } from '../log/state.js';
import type { BootPhaseName } from './plan.js';

/** The etcd volume as the etcd-volume phase left it. */
export interface MountedVolume {
  volumeId: string;
  device: string;
  mountPoint: string;
  /** The etcd data directory on the volume. */
  dataDir: string;
  /** Formatted by this boot (blank before). */
  formatted: boolean;
}

/** How this node becomes part of the cluster. */
export type JoinMode = 'bootstrap' | 'restore' | 'join' | 'worker' | 'already-joined';

/** Kubernetes versions as the kube-version phase decided them (no leading v). */
export interface VersionDecision {
  /** What this node installs now and joins with. */
  install: string;
  /** What the cluster runs, when known. */
  cluster: string | undefined;
  /** Controller 00 only: the configured target, resolved (1.31.X -> 1.31.7). */
  desired: string | undefined;
}

/** Values one phase hands to later ones in the same run. */
export interface BootShared {
  volume?: MountedVolume | undefined;
  /** The backup key restored onto the blank volume by this boot. */
  restoredFrom?: string | undefined;
  versions?: VersionDecision | undefined;
  /** The API answered /readyz (learned by kube-version, used by control-plane). */
  apiReachable?: boolean | undefined;
  joinMode?: JoinMode | undefined;
  neuronDevices?: number | undefined;
}

/** What boot works with on the node: config and the host boundaries (built by context.ts). */
export interface NodeHost {
  config: Config;
  paths: Paths;
  log: Logger;
  imds: Imds;
  aws: Aws;
  exec: Exec;
}

export interface BootContext extends NodeHost {
  /** The phase's logger (lines carry `[phase]`). */
  log: Logger;
  identity: Identity;
  /** Persistent facts (state file); phases read earlier boots' facts and add their own. */
  state: AgentState;
  shared: BootShared;
  /** Aborted when the phase's budget runs out. */
  signal: AbortSignal;
  /** Set for the reporting phases: the phase that failed and its error. */
  failure?: { phase: BootPhaseName; error: string } | undefined;
}

/** What a phase reports. `changed: false` means it found everything done already. */
export interface PhaseOutcome {
  detail: string;
  changed: boolean;
  /** It applied in general but had nothing to do on this node now (e.g. no backup to restore). */
  skipped?: boolean;
}

export interface BootPhase {
  name: BootPhaseName;
  /** Upper bound for the whole phase, from the config's waits plus the work itself. */
  budgetMs(config: Config): number;
  run(ctx: BootContext): Promise<PhaseOutcome>;
}

export const done = (detail: string): PhaseOutcome => ({ detail, changed: false });
export const did = (detail: string): PhaseOutcome => ({ detail, changed: true });
