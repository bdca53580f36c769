import { isController, type NodeFacts } from '../node.js';
import type { PhaseDecision } from '../boot/plan.js';

export type ShutdownEvent = 'reboot' | 'stop' | 'terminate' | 'unknown';

/**
 * The terminate steps in order, and for an event whether each applies and why. Shared by
 * the terminate command and `zdt-agent plan --event`.
 */
export function planTerminate({ config, identity }: NodeFacts, event: ShutdownEvent): PhaseDecision[] {
  const role = config.node.role;
  const k8s = role === 'controller' || role === 'worker';
  const t = config.terminate;
  const drainWanted = event === 'terminate' || event === 'unknown' || (event === 'stop' && t.drainOnStop) || (event === 'reboot' && t.drainOnReboot);
  const steps: PhaseDecision[] = [];
  const add = (name: string, applies: boolean, why: string) => steps.push({ name, applies, why });

  add('hooks', true, `run executables in ${t.hooksDir}/${event === 'unknown' ? 'terminate' : event}.d/ in lexical order, ${t.hookTimeout}s each`);
  add(
    'drain',
    k8s && drainWanted,
    !k8s
      ? `${role}s run no Kubernetes`
      : drainWanted
        ? `cordon, then evict pods (DaemonSet and mirror pods stay) within ${t.drainTimeout}s; pods a PDB still blocks then: ${t.blockedPods}`
        : `terminate.drainOn${event === 'stop' ? 'Stop' : 'Reboot'} is false`,
  );
  add(
    'self-delete',
    role === 'worker' && event === 'terminate',
    role !== 'worker'
      ? 'only workers delete their own Node object'
      : event === 'terminate'
        ? 'delete this Node object with the kubelet credentials (nothing else removes it on kubeadm)'
        : event === 'unknown'
          ? 'the event is unknown: the Node object is kept in case the instance comes back'
          : `a ${event} comes back: the Node object is kept`,
  );
  const ctl = isController(config);
  add(
    'etcd-backup',
    ctl && (event === 'terminate' || event === 'stop') && !!config.etcd?.backup.bucket,
    !ctl
      ? 'not a controller'
      : !config.etcd?.backup.bucket
        ? 'no etcd.backup.bucket configured'
        : event === 'terminate' || event === 'stop'
          ? `if etcd has a single member: emergency backup to s3://${config.etcd.backup.bucket}/${config.etcd.backup.prefix}/${config.cluster?.name}/emergency/`
          : `no backup on ${event}`,
  );
  add(
    'etcd-leave',
    ctl && event === 'terminate',
    !ctl ? 'not a controller' : event === 'terminate' ? 'if etcd has several members: remove this member, only when the rest keep quorum' : `never on ${event}`,
  );
  add(
    'lifecycle',
    !!identity.asgName,
    identity.asgName ? `if a terminating lifecycle hook holds the instance: heartbeats, then CONTINUE on ${identity.asgName}` : 'not in an Auto Scaling group',
  );
  add('notify', !!config.notify.snsTopicArn, config.notify.snsTopicArn ? `terminate.started / terminate.finished to ${config.notify.snsTopicArn}` : 'no notify.snsTopicArn configured');
  return steps;
}
