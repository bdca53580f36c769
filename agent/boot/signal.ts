import { AgentError } from '../errors.js';
import type { BootContext, BootPhase, PhaseOutcome } from './context.js';
import { sdk } from '../host/aws.js';

/**
 * Tells CloudFormation (SignalResource, for a resource with a CreationPolicy/UpdatePolicy that
 * waits for signals) and Auto Scaling (CompleteLifecycleAction, for a launch lifecycle hook)
 * whether this instance came up. Sent once per instance: a reboot does not signal again.
 *
 * "Nothing to signal" answers (the stack resource no longer waits, no active lifecycle action)
 * are expected after the first boot and are not errors.
 */

const SIGNAL_TIMEOUT_MS = 30_000;

export const signalPhase: BootPhase = {
  name: 'signal',
  budgetMs: () => 120_000,
  run: async (ctx) => sendSignals(ctx),
};

async function sendSignals(ctx: BootContext): Promise<PhaseOutcome> {
  const { identity, config, log, state } = ctx;
  const ok = !ctx.failure;
  const key = `signalled:${identity.instanceId}`;
  if (ok && state.facts[key] === true) return { detail: 'this instance signalled its launch already', changed: false };

  const sent: string[] = [];
  const errors: string[] = [];
  if (identity.stackName && identity.logicalId) {
    const status = ok ? 'SUCCESS' : 'FAILURE';
    try {
      const { SignalResourceCommand } = await sdk.cloudformation();
      const cfn = await ctx.aws.cloudformation();
      await cfn.send(
        new SignalResourceCommand({ StackName: identity.stackName, LogicalResourceId: identity.logicalId, UniqueId: identity.instanceId, Status: status }),
        { abortSignal: AbortSignal.any([ctx.signal, AbortSignal.timeout(SIGNAL_TIMEOUT_MS)]) },
      );
      sent.push(`SignalResource ${status} to ${identity.stackName}/${identity.logicalId}`);
    } catch (err) {
      const msg = (err as Error).message;
      if (/cannot be signaled|is in (CREATE|UPDATE)_COMPLETE|not in a state/i.test(msg)) {
        log.info('the stack resource waits for no signal (already complete)', { stack: identity.stackName, err: msg });
        sent.push(`no signal needed by ${identity.stackName}/${identity.logicalId}`);
      } else {
        errors.push(`SignalResource: ${msg}`);
      }
    }
  }
  const hook = config.boot.launchLifecycleHook;
  if (identity.asgName && hook) {
    const result = ok ? 'CONTINUE' : 'ABANDON';
    try {
      const { CompleteLifecycleActionCommand } = await sdk.autoscaling();
      const asg = await ctx.aws.autoscaling();
      await asg.send(
        new CompleteLifecycleActionCommand({
          AutoScalingGroupName: identity.asgName,
          LifecycleHookName: hook,
          InstanceId: identity.instanceId,
          LifecycleActionResult: result,
        }),
        { abortSignal: AbortSignal.any([ctx.signal, AbortSignal.timeout(SIGNAL_TIMEOUT_MS)]) },
      );
      sent.push(`CompleteLifecycleAction ${result} on ${identity.asgName}/${hook}`);
    } catch (err) {
      const msg = (err as Error).message;
      if (/No active Lifecycle Action/i.test(msg)) {
        log.info('no active launch lifecycle action for this instance', { asg: identity.asgName, hook });
        sent.push(`no active lifecycle action on ${identity.asgName}/${hook}`);
      } else {
        errors.push(`CompleteLifecycleAction: ${msg}`);
      }
    }
  }
  if (errors.length) {
    throw new AgentError('SignalFailed', errors.join('; '), {
      hint: 'check the instance role (cloudformation:SignalResource, autoscaling:CompleteLifecycleAction) and the endpoints',
    });
  }
  if (ok) state.facts[key] = true;
  return { detail: sent.join('; '), changed: true };
}
