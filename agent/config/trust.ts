import type { ConfigProblem, Layer, SourceName } from './load.js';

/**
 * Who may decide what: the trust model of the config sources (docs/config.md, "Trust").
 *
 * Each source is written by different people:
 *
 *   /etc/zdt-agent/config.yaml  the image builders (root on the AMI)
 *   --config FILE               the operator running the command (root on the node)
 *   user-data                   whoever may launch the instance or change its launch template
 *                               (ec2:RunInstances, ec2:ModifyInstanceAttribute, ...)
 *   instance tags zdt:*         anyone with ec2:CreateTags on the instance, often granted widely
 *
 * Every key of the schema has one of these levels, in TRUST below (test/unit/config-trust.test.ts
 * fails for a key without one):
 *
 *   open    describes the node or the cluster; any source may set it (tags only the keys a
 *           zdt:* tag maps to, load.ts TAG_KEYS)
 *   local   decides where credentials, tokens, data or backups go, what runs, or who may log
 *           in: only the local files set it, unless a local file allows a source per key
 *           (`trust: { userData: [...], tags: [...] }`)
 *   fixed   local files only, and no allowing: the IMDS endpoint and its timeout (user-data
 *           and tags are read from IMDS, so IMDS cannot be chosen by them) and the trust
 *           section itself
 *
 * A key set by a source that may not set it is a config error (exit 2), not a warning: a
 * launch template that means to send backups to its bucket must not boot a node that sends
 * them elsewhere, or to none, with a line nobody reads. (Someone who can write tags can stop
 * a boot either way, with any invalid value of an open key.)
 */

export type TrustLevel = 'open' | 'local' | 'fixed';

/** What a local key decides; the reason an error names. */
export type TrustReason = 'data' | 'runs' | 'login' | 'imds';

export interface KeyTrust {
  level: TrustLevel;
  reason?: TrustReason;
}

const open: KeyTrust = { level: 'open' };
/** Where credentials, tokens, data or backups go (or come from), and what is kept of them. */
const data: KeyTrust = { level: 'local', reason: 'data' };
/** What runs on the node: commands, hooks, packages, modules, component arguments. */
const runs: KeyTrust = { level: 'local', reason: 'runs' };
/** Who may log in, and as whom. */
const login: KeyTrust = { level: 'local', reason: 'login' };
/** IMDS itself, and the trust section: local files only. */
const fixed: KeyTrust = { level: 'fixed', reason: 'imds' };

export const REASONS: Record<TrustReason, string> = {
  data: 'where credentials, data or backups go',
  runs: 'what runs on the node',
  login: 'who may log in',
  imds: 'how IMDS is reached, and what other sources may decide',
};

/**
 * Every key of the schema (maps and lists are one key). Why the open keys that look sensitive
 * are open:
 * - cluster.apiEndpoint: the API is reached with TLS verified against the cluster CA, and a
 *   join pins the CA by hash (caCertHashes): a wrong endpoint fails, it receives no token.
 * - cluster.name, node.role, node.controllerIndex: the node's place in the cluster, set per
 *   ASG by propagated tags; they pick resources inside what the local keys allow (the etcd
 *   volume by tag, the backup prefix inside the local bucket).
 * - cluster.kubernetesVersion: a version of the packages boot.kubernetesPackages names (local),
 *   from the node's own repositories.
 * - aws.region: every region is AWS; requests are signed for it (SigV4 never sends the secret).
 * - node.labels, node.taints: the kubelet registers them; NodeRestriction limits what a node
 *   may label itself with.
 */
export const TRUST: Readonly<Record<string, KeyTrust>> = {
  'cluster.name': open,
  'cluster.apiEndpoint': open,
  'cluster.kubernetesVersion': open,
  'cluster.domain': open,
  'cluster.route53ZoneId': data, // which zone gets this node's address under a stable name
  'cluster.podSubnet': open,
  'cluster.serviceSubnet': open,
  'cluster.extraArgs.apiServer': runs, // any flag: authorization, audit webhooks, ...
  'cluster.extraArgs.controllerManager': runs,
  'cluster.extraArgs.scheduler': runs,
  'cluster.extraArgs.etcd': runs,
  'cluster.bootstrap.s3Uri': data, // where the CA keys and the join token come from
  'cluster.bootstrap.tokenTtl': open,
  'node.role': open,
  'node.controllerIndex': open,
  'node.labels': open,
  'node.taints': open,
  'node.kubeletRootDir': data, // where pods' secret volumes are written
  'node.kubeletExtraArgs': runs,
  'etcd.volume.clusterTagKey': data, // which volume is attached (and formatted when blank)
  'etcd.volume.roleTagKey': data,
  'etcd.volume.roleTagValue': data,
  'etcd.volume.filesystem': open,
  'etcd.volume.label': open,
  'etcd.volume.mountPoint': data,
  'etcd.volume.dataDir': data,
  'etcd.volume.device': open,
  'etcd.volume.attachTimeout': open,
  'etcd.volume.detachTimeout': open,
  'etcd.volume.deviceTimeout': open,
  'etcd.restore': open,
  'etcd.restoreRevisionBump': open,
  'etcd.clientUrl': data, // where the client certificate is presented and snapshots come from
  'etcd.caFile': data,
  'etcd.certFile': data,
  'etcd.keyFile': data,
  'etcd.backup.bucket': data,
  'etcd.backup.prefix': data,
  'etcd.backup.kmsKeyId': data,
  'etcd.backup.clientSideEncryption': data,
  'etcd.backup.pkiDir': data, // what is put into every backup
  'etcd.backup.kubeadmDir': data,
  'etcd.backup.partSizeMiB': open,
  'etcd.backup.concurrency': open,
  'etcd.backup.timeout': open,
  'etcd.backup.retention.hourly': data, // what is kept of the backups
  'etcd.backup.retention.daily': data,
  'notify.snsTopicArn': data, // events carry log lines
  'notify.consoleLinks': open,
  'notify.format': open, // how an event is rendered; where it goes is notify.snsTopicArn
  'metrics.textfileDir': data, // where root writes files
  // A service host's takeover (docs/takeover.md): where traffic goes, and a command run as root.
  'takeover.readinessCommand': runs,
  'takeover.readinessTimeout': open,
  'takeover.elasticIp.allocationId': data,
  'takeover.elasticIp.tags': data,
  'takeover.networkInterfaceId': data,
  'takeover.eniReleaseTimeout': open,
  'takeover.routeTables.ids': data,
  'takeover.routeTables.tags': data,
  'takeover.destinations': data,
  'takeover.budget': open,
  'terminate.budget': open,
  'terminate.drainTimeout': open,
  'terminate.hooksDir': runs,
  'terminate.hookTimeout': open,
  'terminate.blockedPods': open,
  'terminate.drainOnStop': open,
  'terminate.drainOnReboot': open,
  'terminate.kubeconfig': data, // whose credentials cordon and delete
  'terminate.backupTimeout': open,
  'terminate.lifecycleHook': open,
  'terminate.heartbeatInterval': open,
  'ssh.iamGroup': login,
  'ssh.roleArn': login,
  'ssh.externalId': login,
  'ssh.mode': login,
  'ssh.sharedUser': login,
  'ssh.keyOptions': login,
  'ssh.cacheTtl': login, // how long a removed member keeps access
  'ssh.staleMax': login,
  'ssh.deadline': open,
  'ssh.minUid': login,
  'ssh.shell': runs,
  'ssh.sudoGroup': login,
  'aws.region': open,
  'aws.endpoint': data, // requests carry the session token in a header
  'aws.endpoints.ec2': data,
  'aws.endpoints.s3': data,
  'aws.endpoints.sns': data,
  'aws.endpoints.sqs': data,
  'aws.endpoints.iam': data,
  'aws.endpoints.sts': data,
  'aws.endpoints.kms': data,
  'aws.endpoints.autoscaling': data,
  'aws.endpoints.cloudformation': data,
  'aws.endpoints.route53': data,
  'aws.imdsEndpoint': fixed,
  'aws.imdsTimeout': fixed,
  'aws.maxAttempts': open,
  'aws.connectTimeoutMs': open,
  'aws.requestTimeoutMs': open,
  'aws.s3ForcePathStyle': open,
  'boot.controlPlaneWait': open,
  'boot.neuronModule': runs, // modprobe'd by name
  'boot.neuronDeviceWait': open,
  'boot.launchLifecycleHook': open,
  'boot.kubernetesPackages': runs,
  'boot.dnsWait': open,
  'boot.kubeadmTimeout': open,
  'log.level': open,
  'log.format': open,
  // The watcher's own flows on IMDS notices: when and how the node retires itself.
  'watch.interval': open,
  'watch.backoffMax': open,
  'watch.on.asgTerminate': open,
  'watch.on.asgWarmed': open,
  'watch.on.spotTerminate': open,
  'watch.on.spotStop': open,
  'watch.on.scheduledStop': open,
  'watch.on.scheduledReboot': open,
  'watch.on.scheduledMaintenance': open,
  'watch.on.rebalance': open,
  'trust.userData': fixed,
  'trust.tags': fixed,
};

const SOURCE_FIELD = { 'user-data': 'userData', tags: 'tags' } as const;
type RemoteSource = keyof typeof SOURCE_FIELD;

const isRemote = (s: SourceName): s is RemoteSource => s === 'user-data' || s === 'tags';
const isPlainObject = (v: unknown): v is Record<string, unknown> => !!v && typeof v === 'object' && !Array.isArray(v);
const under = (key: string, prefix: string) => key === prefix || key.startsWith(`${prefix}.`);

/** The level of `key`; own keys only (`constructor`, `toString` are YAML keys like any other). */
const trustOf = (key: string): KeyTrust | undefined => (Object.hasOwn(TRUST, key) ? TRUST[key] : undefined);

/** The classified keys a value at `path` sets: the key itself, or every key of a section. */
function keysAt(path: string): string[] {
  if (trustOf(path)) return [path];
  return Object.keys(TRUST).filter((k) => k.startsWith(`${path}.`));
}

/** Every (path, value) a layer sets, down to classified keys (a map or list is one key). */
function setPaths(data: Record<string, unknown>, prefix = ''): string[] {
  const out: string[] = [];
  for (const [k, v] of Object.entries(data)) {
    const p = prefix ? `${prefix}.${k}` : k;
    if (!trustOf(p) && isPlainObject(v)) out.push(...setPaths(v, p));
    else out.push(p);
  }
  return out;
}

/** The allow lists of the local files (the later one wins, as for any key); unvalidated input. */
function allowLists(layers: readonly Layer[]): Record<RemoteSource, string[]> {
  const lists: Record<RemoteSource, string[]> = { 'user-data': [], tags: [] };
  for (const l of layers) {
    if (isRemote(l.source) || !isPlainObject(l.data.trust)) continue;
    for (const source of ['user-data', 'tags'] as const) {
      const v = l.data.trust[SOURCE_FIELD[source]];
      if (Array.isArray(v)) lists[source] = v.filter((e): e is string => typeof e === 'string');
    }
  }
  return lists;
}

export interface TrustOptions {
  /** The AMI's config file as this command reads it (under --root), for the hints. */
  localFile: string;
  /** Config path -> the zdt:* tag that sets it (load.ts TAG_KEYS). */
  tagOf: Readonly<Record<string, string>>;
}

/**
 * Keys set by a source that may not set them, and allow-list entries that allow nothing;
 * empty when the layers keep to the trust model.
 */
export function trustProblems(layers: readonly Layer[], o: TrustOptions): ConfigProblem[] {
  const problems: ConfigProblem[] = [];
  const allowed = allowLists(layers);
  const how = `docs/config.md, "Trust"`;

  for (const source of ['user-data', 'tags'] as const) {
    const field = `trust.${SOURCE_FIELD[source]}`;
    for (const entry of allowed[source]) {
      const keys = keysAt(entry);
      const problem = (message: string, hint: string) => problems.push({ path: field, message, hint, origin: o.localFile });
      if (keys.length === 0) problem(`'${entry}' is no key or section of the configuration`, `list config keys such as ssh.iamGroup (${how})`);
      else if (keys.every((k) => trustOf(k)?.level === 'fixed')) problem(`'${entry}' can only come from the local files`, `remove it: ${REASONS.imds} is never decided by user-data or tags`);
      else if (source === 'tags' && !keys.some((k) => Object.hasOwn(o.tagOf, k))) {
        problem(`no instance tag sets '${entry}'`, `the zdt:* tags set ${Object.keys(o.tagOf).join(', ')}`);
      }
    }
  }

  for (const layer of layers) {
    if (!isRemote(layer.source)) continue;
    const allows = allowed[layer.source];
    for (const path of setPaths(layer.data)) {
      for (const key of keysAt(path)) {
        const t = trustOf(key) as KeyTrust;
        if (t.level === 'open') continue;
        if (t.level === 'local' && allows.some((a) => under(key, a))) continue;
        const reason = REASONS[t.reason ?? 'data'];
        const allow = t.level === 'fixed' ? '' : `, or allow it there with trust: { ${SOURCE_FIELD[layer.source]}: [${key}] }`;
        const tag = layer.source === 'tags' && Object.hasOwn(o.tagOf, key) ? o.tagOf[key] : undefined;
        problems.push({
          path: path === key ? key : path,
          message: `${layer.origin}${tag ? ` (${tag})` : ''} may not set it: it decides ${reason}`,
          hint: `set it in ${o.localFile} or with --config${allow} (${how})`,
          origin: layer.origin,
        });
        break; // one problem per path set
      }
    }
  }
  return problems;
}
