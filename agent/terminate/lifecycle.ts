import { sdk, type Aws } from '../host/aws.js';
import type { Logger } from '../log/logger.js';

/**
 * The Auto Scaling terminating lifecycle hook: heartbeats while terminate runs, then
 * CompleteLifecycleAction CONTINUE at the end, also when the drain ran out of time (an
 * instance left in Terminating:Wait holds its replacement until the hook times out).
 */

export interface LifecycleTarget {
  asgName: string;
  hookName: string;
  instanceId: string;
}

/** The hook to complete: the configured one, or the ASG's terminating hook. Undefined when there is none. */
export async function findTerminatingHook(
  aws: Aws,
  o: { asgName: string; instanceId: string; configured?: string | undefined; signal: AbortSignal },
): Promise<LifecycleTarget | undefined> {
  if (o.configured) return { asgName: o.asgName, hookName: o.configured, instanceId: o.instanceId };
  const { DescribeLifecycleHooksCommand } = await sdk.autoscaling();
  const as = await aws.autoscaling();
  const out = await as.send(new DescribeLifecycleHooksCommand({ AutoScalingGroupName: o.asgName }), { abortSignal: o.signal });
  const hook = out.LifecycleHooks?.find((h) => h.LifecycleTransition === 'autoscaling:EC2_INSTANCE_TERMINATING');
  return hook?.LifecycleHookName ? { asgName: o.asgName, hookName: hook.LifecycleHookName, instanceId: o.instanceId } : undefined;
}

export async function heartbeat(aws: Aws, t: LifecycleTarget, signal: AbortSignal): Promise<void> {
  const { RecordLifecycleActionHeartbeatCommand } = await sdk.autoscaling();
  const as = await aws.autoscaling();
  await as.send(new RecordLifecycleActionHeartbeatCommand({ AutoScalingGroupName: t.asgName, LifecycleHookName: t.hookName, InstanceId: t.instanceId }), { abortSignal: signal });
}

export async function completeContinue(aws: Aws, t: LifecycleTarget, signal: AbortSignal): Promise<void> {
  const { CompleteLifecycleActionCommand } = await sdk.autoscaling();
  const as = await aws.autoscaling();
  await as.send(
    new CompleteLifecycleActionCommand({ AutoScalingGroupName: t.asgName, LifecycleHookName: t.hookName, InstanceId: t.instanceId, LifecycleActionResult: 'CONTINUE' }),
    { abortSignal: signal },
  );
}

/** Heartbeats every `intervalMs` until stopped; failures are logged, never thrown. */
export function startHeartbeats(aws: Aws, t: LifecycleTarget, intervalMs: number, log: Logger): { stop(): void; count(): number } {
  let n = 0;
  let stopped = false;
  const beat = async () => {
    try {
      await heartbeat(aws, t, AbortSignal.timeout(Math.min(intervalMs, 5000)));
      n++;
      log.debug('lifecycle heartbeat', { hook: t.hookName });
    } catch (err) {
      log.warn('lifecycle heartbeat failed', { hook: t.hookName, err: (err as Error).message });
    }
  };
  void beat();
  const timer = setInterval(() => {
    if (!stopped) void beat();
  }, intervalMs);
  timer.unref();
  return {
    stop: () => {
      stopped = true;
      clearInterval(timer);
    },
    count: () => n,
  };
}
