import type { Config } from './config/schema.js';
import type { Identity } from './host/identity.js';

/** What boot and terminate decide from: the validated config and the instance identity. */
export interface NodeFacts {
  config: Config;
  identity: Identity;
}

/** What a shutdown (or a notice of one) is: terminate decides its steps from it, the watcher names it. */
export type ShutdownEvent = 'reboot' | 'stop' | 'terminate' | 'unknown';

/**
 * Whether one step of a flow (a boot phase, a terminate step) applies to this node, and why.
 * The runners act on these decisions and `zdt-agent plan` prints them, so the two cannot drift.
 */
export interface PhaseDecision {
  name: string;
  applies: boolean;
  why: string;
}

const NEURON_FAMILIES = new Set(['inf1', 'inf2', 'trn1', 'trn1n', 'trn2', 'trn2u']);

/** inf1.xlarge -> inf1; trn1n.32xlarge -> trn1n. */
export function instanceFamily(instanceType: string): string {
  return instanceType.split('.')[0] ?? instanceType;
}

export function hasNeuron(instanceType: string): boolean {
  return NEURON_FAMILIES.has(instanceFamily(instanceType));
}

export const isController = (c: Config): boolean => c.node.role === 'controller';
export const isKubernetesNode = (c: Config): boolean => c.node.role === 'controller' || c.node.role === 'worker';
/** Controller 00 is the one that may bootstrap a cluster and change its version. */
export const isFirstController = (c: Config): boolean => isController(c) && c.node.controllerIndex === '00';
