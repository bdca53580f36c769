import fs from 'node:fs';
import type { CommandContext } from '../context.js';
import { asAgentError } from '../errors.js';
import { readIdentity, type Identity } from '../host/identity.js';
import { Imds } from '../host/imds.js';
import { KubeClient, loadKubeconfig } from '../host/kube.js';
import { readState } from '../log/state.js';
import { buildEvent, publishEvent } from '../notify/events.js';
import { Budget } from '../terminate/budget.js';
import { cordon, isSchedulable, nodeNameOf, uncordon } from '../terminate/drain.js';
import { fallbackIdentity, runTerminate } from '../terminate/run.js';
import { agentVersion } from '../version.js';
import type { NodeActions } from '../watch/run.js';

/**
 * What the watcher does to the node (commands/watch.ts imports this module on the first
 * action, so an idle watcher never loads it): terminate's runner for a retire, cordon and
 * uncordon with the node's own credentials, SNS.
 */

// The watcher builds its whole context here, on its first action: context.ts brings the AWS
// clients, which the idle daemon's chunk must not carry.
export { buildContext } from '../context.js';

const KUBE_CALL_MS = 15_000;
const IDENTITY_MS = 5_000;
const NOTIFY_MS = 5_000;

export function nodeActions(ctx: CommandContext): NodeActions {
  const { config, log, paths } = ctx;
  let identity: Identity | undefined;
  const whoAmI = async (): Promise<Identity> => {
    if (identity) return identity;
    try {
      const quick = new Imds({ endpoint: config.aws.imdsEndpoint, log, requiredTimeoutMs: IDENTITY_MS, requestTimeoutMs: 2000 });
      identity = await readIdentity(quick, { log, tags: ctx.instance?.tags, aws: ctx.aws });
      return identity;
    } catch (err) {
      log.warn('watch: identity from IMDS unavailable; using what boot recorded', { err: asAgentError(err).oneLine() });
      return fallbackIdentity(readState(paths.stateFile, agentVersion), ctx);
    }
  };
  /** The node's own credentials and Node name, per action (kubelet.conf may appear after the watcher starts). */
  const withNode = async <T>(what: string, fn: (kube: KubeClient, nodeName: string, signal: AbortSignal) => Promise<T>, none: T): Promise<T> => {
    const file = paths.at(config.terminate.kubeconfig);
    if (!fs.existsSync(file)) {
      log.warn(`watch: cannot ${what}: no ${config.terminate.kubeconfig} (the node never joined)`);
      return none;
    }
    const creds = loadKubeconfig(file, paths.at);
    const nodeName = nodeNameOf(creds) ?? (await whoAmI()).privateDns;
    if (!nodeName) {
      log.warn(`watch: cannot ${what}: the Node name is unknown`);
      return none;
    }
    const kube = new KubeClient(creds);
    try {
      return await fn(kube, nodeName, AbortSignal.timeout(KUBE_CALL_MS));
    } finally {
      kube.close();
    }
  };

  return {
    retire: async (event, trigger) => {
      const budget = new Budget(config.terminate.budget * 1000);
      try {
        const out = await runTerminate({ ctx, budget, flag: event, trigger });
        const summary = Object.entries(out.record.phases)
          .map(([name, p]) => `${name}=${p.result}`)
          .join(' ');
        return { result: out.record.result ?? 'failed', detail: summary };
      } finally {
        budget.dispose();
      }
    },
    cordon: () =>
      withNode(
        'cordon',
        async (kube, name, signal) => {
          const before = await isSchedulable(kube, name, signal);
          if (before === undefined) return 'gone' as const;
          if (!before) return 'already' as const;
          return (await cordon(kube, name, signal)) ? ('cordoned' as const) : ('gone' as const);
        },
        'gone' as const,
      ),
    uncordon: () => withNode('uncordon', (kube, name, signal) => uncordon(kube, name, signal), false),
    schedulable: () => withNode('read the Node', (kube, name, signal) => isSchedulable(kube, name, signal), undefined),
    noticed: async (n, action) => {
      if (!config.notify.snsTopicArn) return;
      const id = await whoAmI();
      await publishEvent(
        ctx.aws,
        config.notify,
        buildEvent({
          event: 'interruption.noticed',
          config,
          identity: id,
          phases: {},
          details: { kind: n.kind, notice: n.text, eventId: n.id, action, ...(n.time ? { noticeTime: n.time } : {}), ...(n.state ? { state: n.state } : {}) },
        }),
        id,
        log,
        NOTIFY_MS,
      );
    },
  };
}
