import fs from 'node:fs';
import { sdk, type Aws } from '../host/aws.js';
import type { Exec } from '../host/exec.js';
import type { Imds } from '../host/imds.js';
import type { Logger } from '../log/logger.js';
import type { ShutdownEvent } from '../node.js';

/**
 * What kind of shutdown this is, from every signal there is, turned into one value (as
 * aws-node-termination-handler's monitors do). In order of precedence:
 *
 * 1. `--event` (an operator, or a test, knows better).
 * 2. The init system: OpenRC exports RC_REBOOT=YES when the runlevel is `reboot`; on
 *    systemd, a queued reboot.target job.
 * 3. IMDS `spot/instance-action` (terminate; stop and hibernate are a stop).
 * 4. IMDS `autoscaling/target-lifecycle-state` (`Terminated`; `Warmed:*` is a stop into the
 *    warm pool).
 * 5. The instance's own EC2 state (`shutting-down`/`terminated`, `stopping`/`stopped`).
 *
 * Anything else is `unknown`, which the plan treats as safely as it can (drain and back up,
 * keep the Node object and the etcd member).
 */

export interface Classification {
  event: ShutdownEvent;
  /** Which signal decided, e.g. 'imds autoscaling/target-lifecycle-state=Terminated'. */
  source: string;
  /** Everything that was read, for the log and the state file. */
  evidence: Record<string, string>;
  /** The instance is in a terminating lifecycle hook (heartbeat, then CONTINUE). */
  lifecycleTerminating: boolean;
}

export interface ClassifyInput {
  flag?: ShutdownEvent | undefined;
  env: NodeJS.ProcessEnv;
  imds: Imds;
  aws: Aws;
  exec: Exec;
  log: Logger;
  instanceId: string | undefined;
  signal: AbortSignal;
  /** Where to look for systemd (`/run/systemd/system` under the root prefix). */
  systemdMarker?: string | undefined;
}

async function ec2State(aws: Aws, instanceId: string, signal: AbortSignal): Promise<string | undefined> {
  const { DescribeInstancesCommand } = await sdk.ec2();
  const ec2 = await aws.ec2();
  const out = await ec2.send(new DescribeInstancesCommand({ InstanceIds: [instanceId] }), { abortSignal: signal });
  return out.Reservations?.[0]?.Instances?.[0]?.State?.Name;
}

async function systemdTarget(exec: Exec, signal: AbortSignal): Promise<string | undefined> {
  const r = await exec('systemctl', ['list-jobs', '--no-legend', '--plain'], { timeoutMs: 3000, okExitCodes: [1] });
  if (signal.aborted) return undefined;
  for (const t of ['reboot.target', 'kexec.target', 'poweroff.target', 'halt.target']) if (r.stdout.includes(t)) return t;
  return undefined;
}

export async function classifyEvent(i: ClassifyInput): Promise<Classification> {
  const evidence: Record<string, string> = {};
  if (i.flag) return { event: i.flag, source: '--event', evidence: { flag: i.flag }, lifecycleTerminating: false };

  // Ask everything at once; each answer is optional, and none may hold the shutdown up.
  const soft = async <T>(what: string, p: () => Promise<T>): Promise<T | undefined> => {
    try {
      return await p();
    } catch (err) {
      i.log.debug(`classify: ${what} unavailable`, { err: (err as Error).message });
      evidence[what] = `unavailable: ${(err as Error).message.slice(0, 120)}`;
      return undefined;
    }
  };
  const useSystemd = !i.env.RC_REBOOT && i.systemdMarker !== undefined && fs.existsSync(i.systemdMarker);
  const [target, spot, lifecycle, state] = await Promise.all([
    useSystemd ? soft('systemd', () => systemdTarget(i.exec, i.signal)) : Promise.resolve(undefined),
    soft('spot', () => i.imds.optional('latest/meta-data/spot/instance-action')),
    soft('lifecycle', () => i.imds.optional('latest/meta-data/autoscaling/target-lifecycle-state')),
    i.instanceId ? soft('ec2', () => ec2State(i.aws, i.instanceId!, i.signal)) : Promise.resolve(undefined),
  ]);
  if (i.env.RC_REBOOT !== undefined) evidence.RC_REBOOT = i.env.RC_REBOOT;
  if (target) evidence.systemd = target;
  let spotAction: string | undefined;
  if (spot) {
    try {
      spotAction = (JSON.parse(spot) as { action?: string }).action;
    } catch {
      spotAction = undefined;
    }
    evidence.spot = spot.trim();
  }
  const lc = lifecycle?.trim();
  if (lc) evidence.lifecycle = lc;
  if (state) evidence.ec2 = state;
  const lifecycleTerminating = lc === 'Terminated';
  const decide = (event: ShutdownEvent, source: string): Classification => ({ event, source, evidence, lifecycleTerminating });

  if (i.env.RC_REBOOT === 'YES') return decide('reboot', 'RC_REBOOT=YES (OpenRC reboot runlevel)');
  if (target === 'reboot.target' || target === 'kexec.target') return decide('reboot', `systemd ${target}`);
  if (spotAction === 'terminate') return decide('terminate', 'imds spot/instance-action=terminate');
  if (spotAction === 'stop' || spotAction === 'hibernate') return decide('stop', `imds spot/instance-action=${spotAction}`);
  if (lc === 'Terminated') return decide('terminate', 'imds autoscaling/target-lifecycle-state=Terminated');
  if (lc?.startsWith('Warmed:')) return decide('stop', `imds autoscaling/target-lifecycle-state=${lc}`);
  if (state === 'shutting-down' || state === 'terminated') return decide('terminate', `ec2 instance state ${state}`);
  if (state === 'stopping' || state === 'stopped') return decide('stop', `ec2 instance state ${state}`);
  return decide('unknown', 'no signal named reboot, stop or terminate');
}
