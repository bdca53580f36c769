import { isController, type NodeFacts, type PhaseDecision, type ShutdownEvent } from '../node.js';

/**
 * The terminate steps in order, and for an event whether each applies and why. Shared by
 * the terminate runner (terminate/run.ts acts on exactly these decisions) and
 * `zdt-agent plan --event`. What only the run can know (how many etcd members there are,
 * whether a lifecycle hook holds the instance) is decided by the step itself and logged.
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
  // An unknown shutdown may be the last one: a backup changes nothing and may save the cluster.
  const backupEvent = event === 'terminate' || event === 'stop' || event === 'unknown';
  add(
    'etcd-backup',
    ctl && backupEvent && !!config.etcd?.backup.bucket,
    !ctl
      ? 'not a controller'
      : !config.etcd?.backup.bucket
        ? 'no etcd.backup.bucket configured'
        : backupEvent
          ? `if etcd has a single member: emergency backup to s3://${config.etcd.backup.bucket}/${config.etcd.backup.prefix}/${config.cluster?.name}/emergency/ within ${t.backupTimeout}s`
          : `no backup on ${event}`,
  );
  add(
    'etcd-leave',
    ctl && event === 'terminate',
    !ctl ? 'not a controller' : event === 'terminate' ? 'if etcd has several members: remove this member, only when the rest keep quorum' : `never on ${event}`,
  );
  const terminating = event === 'terminate' || event === 'unknown';
  add(
    'lifecycle',
    !!identity.asgName && terminating,
    !identity.asgName
      ? 'not in an Auto Scaling group'
      : terminating
        ? `if ${identity.asgName} has a terminating lifecycle hook: heartbeats every ${t.heartbeatInterval}s, then CONTINUE (also when time runs out)`
        : `a ${event} holds no terminating lifecycle hook`,
  );
  add('notify', !!config.notify.snsTopicArn, config.notify.snsTopicArn ? `terminate.started / terminate.finished to ${config.notify.snsTopicArn}` : 'no notify.snsTopicArn configured');
  return steps;
}
