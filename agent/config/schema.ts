import { z } from 'zod';
import { LOG_FORMATS, LOG_LEVELS } from '../log/logger.js';

/**
 * The one configuration schema. Types are inferred from it; docs/config.md is checked
 * against it by a test. Durations are whole seconds unless the key says otherwise.
 */

const seconds = (what: string) => z.number().int(`${what} must be a whole number of seconds`).positive(`${what} must be greater than 0`);

const dnsLabel = z
  .string()
  .regex(/^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$/, 'use 1-40 lower-case letters, digits and dashes, starting and ending with a letter or digit');

export const kubernetesVersionPattern = /^1\.(\d+)\.(\d+|X)$/;

const endpointUrl = z.url({ protocol: /^https?$/, error: 'must be an http(s) URL such as https://ec2.eu-central-1.amazonaws.com' });

const taint = z
  .object({
    key: z.string().min(1),
    value: z.string().optional(),
    effect: z.enum(['NoSchedule', 'PreferNoSchedule', 'NoExecute']),
  })
  .strict();

export const clusterSchema = z
  .object({
    name: dnsLabel.describe('Cluster name; tags, backups and etcd identity files carry it'),
    apiEndpoint: z
      .string()
      .regex(/^[A-Za-z0-9.-]+(:\d{1,5})?$/, 'use host[:port], e.g. k8s.prod.example.com:6443')
      .optional()
      .describe('controlPlaneEndpoint (host:port) that workers and joining controllers wait for'),
    kubernetesVersion: z
      .string()
      .regex(kubernetesVersionPattern, "use an exact version '1.31.4' or a minor with X '1.31.X'")
      .optional()
      .describe('Version controller 00 installs or upgrades to; other nodes follow the cluster'),
    domain: z
      .string()
      .regex(/^[a-z0-9.-]+$/, 'use a DNS domain such as prod.example.internal')
      .optional()
      .describe('DNS domain of the stable per-slot names (etcd00.<domain>)'),
    route53ZoneId: z.string().min(1).optional().describe('Private hosted zone where controllers upsert their stable name'),
    podSubnet: z.string().optional().describe('Pod network CIDR (kubeadm networking.podSubnet)'),
    serviceSubnet: z.string().optional().describe('Service CIDR (kubeadm networking.serviceSubnet)'),
    extraArgs: z
      .object({
        apiServer: z.record(z.string(), z.string()).default({}),
        controllerManager: z.record(z.string(), z.string()).default({}),
        scheduler: z.record(z.string(), z.string()).default({}),
        etcd: z.record(z.string(), z.string()).default({}),
      })
      .strict()
      .prefault({})
      .describe('Extra command-line arguments of the control-plane components (kubeadm extraArgs)'),
    bootstrap: z
      .object({
        s3Uri: z
          .string()
          .regex(/^s3:\/\/[a-z0-9.-]{3,63}(\/.*)?$/, 'use s3://bucket/prefix')
          .optional()
          .describe('Where a pre-generated CA and the join token live'),
        tokenTtl: z
          .string()
          .regex(/^\d+[hms]$|^0$/, "use a duration such as '24h', or '0' for a token that never expires")
          .default('0')
          .describe("TTL of the bootstrap token kubeadm init creates ('0': never expires, because ASGs add workers at any time)"),
      })
      .strict()
      .prefault({}),
  })
  .strict();

export const nodeSchema = z
  .object({
    role: z.enum(['controller', 'worker', 'bastion', 'nat', 'vpngw']).describe('What this node is'),
    controllerIndex: z
      .string()
      .regex(/^\d{2}$/, "use two digits, e.g. '00'")
      .optional()
      .describe("Controller slot; '00' bootstraps and upgrades"),
    labels: z.record(z.string(), z.string()).default({}).describe('Extra node labels'),
    taints: z.array(taint).default([]).describe('Node taints'),
    kubeletRootDir: z.string().startsWith('/').default('/var/lib/containers').describe('kubelet --root-dir'),
    kubeletExtraArgs: z.record(z.string(), z.string()).default({}).describe('Extra kubelet arguments (kubeadm nodeRegistration.kubeletExtraArgs)'),
  })
  .strict();

export const etcdSchema = z
  .object({
    volume: z
      .object({
        clusterTagKey: z.string().default('zdt:cluster').describe('Tag key whose value is the cluster name'),
        roleTagKey: z.string().default('zdt:role').describe('Tag key marking the etcd volume'),
        roleTagValue: z.string().default('etcd'),
        filesystem: z.enum(['ext4', 'xfs']).default('ext4').describe('Filesystem made on a blank volume'),
        label: z.string().max(12).default('etcd').describe('Filesystem label'),
        mountPoint: z.string().startsWith('/').default('/var/lib/etcd'),
        dataDir: z
          .string()
          .regex(/^[A-Za-z0-9._-]+$/, 'use a directory name (no slashes), e.g. data')
          .default('data')
          .describe('etcd data directory inside the mount point (a subdirectory: kubeadm wants it empty, lost+found is not)'),
        device: z.string().startsWith('/dev/').default('/dev/xvdz').describe('Device name requested at attach; the device is found by its NVMe serial, never by this name'),
        attachTimeout: seconds('etcd.volume.attachTimeout').default(300).describe('Bound for the attach to complete'),
        detachTimeout: seconds('etcd.volume.detachTimeout')
          .default(180)
          .describe('Bound for a stopped or terminated predecessor to release the volume before it is force-detached'),
        deviceTimeout: seconds('etcd.volume.deviceTimeout').default(60).describe('Bound for the attached volume to appear as a block device'),
      })
      .strict()
      .prefault({}),
    restore: z.enum(['auto', 'never']).default('auto').describe('Restore the newest backup onto a blank volume'),
    restoreRevisionBump: z
      .number()
      .int()
      .min(0)
      .default(1_000_000_000)
      .describe('How far a restore moves the etcd revision up (--bump-revision with --mark-compacted, etcd tools 3.5.10+), so watchers relist; 0: no bump'),
    clientUrl: endpointUrl.default('https://127.0.0.1:2379').describe('Client URL of the local etcd member (backup, leave)'),
    caFile: z.string().startsWith('/').default('/etc/kubernetes/pki/etcd/ca.crt').describe('CA of the etcd client URL'),
    certFile: z.string().startsWith('/').default('/etc/kubernetes/pki/etcd/healthcheck-client.crt').describe('etcd client certificate'),
    keyFile: z.string().startsWith('/').default('/etc/kubernetes/pki/etcd/healthcheck-client.key').describe('etcd client key'),
    backup: z
      .object({
        bucket: z.string().min(3).optional().describe('S3 bucket of the backups'),
        prefix: z.string().default('etcd-backups').describe('Key prefix; keys are <prefix>/<cluster>/{hourly,emergency}/…'),
        kmsKeyId: z.string().optional().describe('KMS key for SSE-KMS (SSE-S3 with a warning when unset)'),
        clientSideEncryption: z.boolean().default(false).describe('Envelope-encrypt with a KMS data key before upload (needs kmsKeyId)'),
        pkiDir: z.string().startsWith('/').default('/etc/kubernetes/pki').describe('PKI directory put into every backup'),
        kubeadmDir: z.string().startsWith('/').default('/etc/kubernetes/zdt-agent').describe('Directory of the kubeadm configs boot writes, put into every backup (skipped when absent)'),
        partSizeMiB: z.number().int().min(5).max(512).default(8).describe('Multipart upload part size; (concurrency + 1) parts are held in memory'),
        concurrency: z.number().int().min(1).max(16).default(3).describe('Parts uploaded at once (peak RSS of a backup about 110 MB + (concurrency + 1) × partSizeMiB)'),
        timeout: seconds('etcd.backup.timeout').default(900).describe('Limit for a scheduled backup (zdt-agent etcd backup)'),
        retention: z
          .object({ hourly: z.number().int().min(1).default(24), daily: z.number().int().min(0).default(7) })
          .strict()
          .prefault({}),
      })
      .strict()
      .prefault({}),
  })
  .strict();

export const notifySchema = z
  .object({
    snsTopicArn: z.string().regex(/^arn:aws[a-z-]*:sns:/, 'use an SNS topic ARN').optional(),
    consoleLinks: z.boolean().default(true).describe('Add AWS console deep links to messages'),
    format: z
      .enum(['zdt', 'chat', 'both'])
      .default('zdt')
      .describe("zdt: the agent's JSON event (docs/events.md); chat: the Amazon Q Developer in chat applications (AWS Chatbot) custom notification; both: one of each, told apart by the SNS message attribute 'format'"),
  })
  .strict();

export const metricsSchema = z
  .object({
    textfileDir: z
      .string()
      .startsWith('/')
      .optional()
      .describe("node_exporter textfile collector directory; each command writes zdt_agent_<command>.prom there (off when unset; docs/metrics.md)"),
  })
  .strict();

export const terminateSchema = z
  .object({
    budget: seconds('terminate.budget').default(120).describe('Hard limit for the whole terminate command'),
    drainTimeout: seconds('terminate.drainTimeout').default(90),
    hooksDir: z.string().startsWith('/').default('/etc/zdt-agent/hooks'),
    hookTimeout: seconds('terminate.hookTimeout').default(20),
    blockedPods: z.enum(['stop', 'delete']).default('stop').describe('What to do with pods a PDB still blocks at the drain deadline'),
    drainOnStop: z.boolean().default(true),
    drainOnReboot: z.boolean().default(true),
    kubeconfig: z.string().startsWith('/').default('/etc/kubernetes/kubelet.conf').describe("Credentials for cordon, drain and self-delete (the node's own)"),
    backupTimeout: seconds('terminate.backupTimeout').default(60).describe('Limit for the emergency etcd backup inside the budget'),
    lifecycleHook: z.string().optional().describe('Terminating lifecycle hook to complete (default: found with DescribeLifecycleHooks)'),
    heartbeatInterval: seconds('terminate.heartbeatInterval').default(30).describe('Lifecycle heartbeats while terminate runs'),
  })
  .strict();

/** What the watcher does on a notice: retire (terminate's flow for the event the notice implies), cordon, log, or ignore. */
export const WATCH_ACTIONS = ['retire', 'cordon', 'log', 'ignore'] as const;
const watchAction = (dflt: (typeof WATCH_ACTIONS)[number], what: string) => z.enum(WATCH_ACTIONS).default(dflt).describe(what);

export const watchSchema = z
  .object({
    interval: z.number().min(0.01).max(60).default(1).describe('Seconds between two IMDS polls (jittered by up to 20 %); fractions allowed'),
    backoffMax: z.number().min(0.1).max(600).default(30).describe('Longest wait between polls while IMDS does not answer (seconds)'),
    on: z
      .object({
        asgTerminate: watchAction('retire', 'autoscaling/target-lifecycle-state Terminated (scale-in, instance refresh): retire as terminate'),
        asgWarmed: watchAction('retire', 'autoscaling/target-lifecycle-state Warmed:* (into the warm pool): retire as stop'),
        spotTerminate: watchAction('retire', 'spot/instance-action terminate: retire as terminate'),
        spotStop: watchAction('retire', 'spot/instance-action stop or hibernate: retire as stop'),
        scheduledStop: watchAction('retire', 'scheduled instance-stop or instance-retirement: retire as stop'),
        scheduledReboot: watchAction('cordon', 'scheduled system-reboot or instance-reboot: cordon, uncordon after the reboot (retire: as reboot)'),
        scheduledMaintenance: watchAction('log', 'scheduled system-maintenance (no reboot): log (retire: as stop)'),
        rebalance: watchAction('log', 'events/recommendations/rebalance: log (cordon to stop new pods; retire: as stop)'),
      })
      .strict()
      .prefault({})
      .describe('Action per kind of notice'),
  })
  .strict();

/** authorized_keys options: `name` or `name="value"`, comma-separated (e.g. `restrict,port-forwarding,from="10.0.0.0/8"`). */
const keyOptionsPattern = /^([A-Za-z0-9-]+(="([^"\\\x00-\x1f\x7f]|\\")*")?(,[A-Za-z0-9-]+(="([^"\\\x00-\x1f\x7f]|\\")*")?)*)?$/;

export const sshSchema = z
  .object({
    iamGroup: z.string().regex(/^[\w+=,.@-]{1,128}$/, 'use an IAM group name').describe('IAM group whose members may log in'),
    roleArn: z
      .string()
      .regex(/^arn:aws[a-z-]*:iam::\d{12}:role\//, 'use an IAM role ARN')
      .optional()
      .describe('Role to assume for reading IAM in another (central) account'),
    externalId: z.string().min(2).optional().describe('External id the role trust policy demands'),
    mode: z
      .enum(['per-user', 'shared'])
      .default('per-user')
      .describe("per-user: each member logs in as their own account; shared: every member's keys open ssh.sharedUser"),
    sharedUser: z
      .string()
      .regex(/^[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}$/, 'use a login name (up to 32 letters, digits, _ . -)')
      .optional()
      .describe("Login name in 'shared' mode"),
    keyOptions: z
      .string()
      .regex(keyOptionsPattern, 'use comma-separated authorized_keys options such as restrict,port-forwarding')
      .default('')
      .describe('authorized_keys options put before every key'),
    cacheTtl: seconds('ssh.cacheTtl').default(60).describe('Key cache age up to which ssh-keys answers without asking IAM'),
    staleMax: z.number().int().min(0).default(600).describe('Serve a stale cache during an IAM outage this long past cacheTtl (0: never)'),
    deadline: seconds('ssh.deadline').default(5).describe('Bound for one ssh-keys answer; past it: no keys, non-zero exit'),
    minUid: z.number().int().min(0).default(1000).describe('per-user: logins with a lower uid (system accounts, root) get no keys'),
    shell: z.string().startsWith('/').default('/bin/sh').describe('Login shell of the accounts ssh-users sync creates'),
    sudoGroup: z.string().optional().describe('Group that synced users join'),
  })
  .strict();

const endpointsSchema = z
  .object({
    ec2: endpointUrl.optional(),
    s3: endpointUrl.optional(),
    sns: endpointUrl.optional(),
    sqs: endpointUrl.optional(),
    iam: endpointUrl.optional(),
    sts: endpointUrl.optional(),
    kms: endpointUrl.optional(),
    autoscaling: endpointUrl.optional(),
    cloudformation: endpointUrl.optional(),
    route53: endpointUrl.optional(),
  })
  .strict();

export const awsSchema = z
  .object({
    region: z.string().regex(/^[a-z]{2}(-[a-z]+)+-\d$/, 'use a region such as eu-central-1').optional().describe('Else AWS_REGION, AWS_DEFAULT_REGION, then the region from IMDS'),
    endpoint: endpointUrl.optional().describe('One endpoint for every service (the testbed)'),
    endpoints: endpointsSchema.prefault({}).describe('Per-service endpoints (VPC endpoints)'),
    imdsEndpoint: endpointUrl.default('http://169.254.169.254').describe('IMDS base URL'),
    imdsTimeout: seconds('aws.imdsTimeout').default(120).describe('How long required IMDS properties are retried (IMDS can be late at early boot)'),
    maxAttempts: z.number().int().min(1).max(20).default(5),
    connectTimeoutMs: z.number().int().positive().default(3000),
    requestTimeoutMs: z.number().int().positive().default(15000),
    s3ForcePathStyle: z.boolean().default(false),
  })
  .strict();

export const bootSchema = z
  .object({
    controlPlaneWait: seconds('boot.controlPlaneWait').default(1800).describe('How long a node waits for the API server (workers, joining controllers, controller 00 after kubeadm init)'),
    neuronModule: z.string().default('neuron'),
    neuronDeviceWait: seconds('boot.neuronDeviceWait').default(120),
    launchLifecycleHook: z.string().optional().describe('Name of the ASG launch lifecycle hook to complete'),
    kubernetesPackages: z
      .array(z.string().min(1))
      .min(1)
      .default(['kubeadm', 'kubelet', 'kubectl'])
      .describe('Packages installed at the cluster version; the first one (kubeadm) decides which versions are offered'),
    dnsWait: z.number().int().min(0).default(120).describe('How long a controller waits for its stable name to resolve after the Route53 upsert (0: do not wait)'),
    kubeadmTimeout: seconds('boot.kubeadmTimeout').default(600).describe('Bound for one kubeadm init, join or upgrade'),
  })
  .strict();

const tagFilter = z
  .record(z.string().min(1), z.string())
  .refine((t) => Object.keys(t).length > 0, 'name at least one tag: { key: value }');

const cidrBlock = z.string().regex(/^(\d{1,3}\.){3}\d{1,3}\/\d{1,2}$|^[0-9a-fA-F:]+\/\d{1,3}$/, 'use a CIDR block such as 0.0.0.0/0 or ::/0');

/** What a service host (bastion, nat, vpngw) takes over at boot (docs/takeover.md). */
export const takeoverSchema = z
  .object({
    readinessCommand: z
      .array(z.string().min(1))
      .min(1)
      .optional()
      .describe('Command (argv, no shell) that exits 0 once this host can serve its role; nothing moves before it does'),
    readinessTimeout: seconds('takeover.readinessTimeout').default(120).describe('Bound for the readiness command to succeed'),
    elasticIp: z
      .object({
        allocationId: z.string().regex(/^eipalloc-[0-9a-f]+$/, 'use an allocation id such as eipalloc-0123abcd').optional().describe('The Elastic IP to hold'),
        tags: tagFilter.optional().describe('Or a pool: Elastic IPs with all these tags (one held here, a free one, or one an earlier instance in this AZ holds)'),
      })
      .strict()
      .optional(),
    networkInterfaceId: z
      .string()
      .regex(/^eni-[0-9a-f]+$/, 'use a network interface id such as eni-0123abcd')
      .optional()
      .describe('Static secondary ENI attached at device index 1; routes and the Elastic IP then target it'),
    eniReleaseTimeout: seconds('takeover.eniReleaseTimeout').default(60).describe('Bound for the previous holder to release the ENI after the detach'),
    routeTables: z
      .object({
        ids: z.array(z.string().regex(/^rtb-[0-9a-f]+$/, 'use route table ids such as rtb-0123abcd')).min(1).optional(),
        tags: tagFilter.optional().describe('Or every route table with all these tags'),
      })
      .strict()
      .optional()
      .describe('nat/vpngw: route tables whose destinations must target this host'),
    destinations: z.array(cidrBlock).min(1).default(['0.0.0.0/0']).describe('Destination CIDRs routed to this host in each route table'),
    budget: seconds('takeover.budget').default(300).describe('Bound for the whole takeover phase (readiness wait included)'),
  })
  .strict();

export const logSchema = z
  .object({
    level: z.enum(LOG_LEVELS).default('info'),
    format: z.enum(LOG_FORMATS).default('human'),
  })
  .strict();

export const trustSchema = z
  .object({
    userData: z
      .array(z.string())
      .default([])
      .describe('Keys (or sections) the user-data part may set beyond the open ones; only read from the local files (docs/config.md, Trust)'),
    tags: z.array(z.string()).default([]).describe('Keys the zdt:* instance tags may set beyond the open ones; only read from the local files'),
  })
  .strict();

export const configSchema = z
  .object({
    cluster: clusterSchema.optional(),
    node: nodeSchema.prefault({ role: 'worker' }),
    etcd: etcdSchema.optional(),
    notify: notifySchema.prefault({}),
    terminate: terminateSchema.prefault({}),
    ssh: sshSchema.optional(),
    takeover: takeoverSchema.optional(),
    aws: awsSchema.prefault({}),
    boot: bootSchema.prefault({}),
    log: logSchema.prefault({}),
    trust: trustSchema.prefault({}),
    watch: watchSchema.prefault({}),
    metrics: metricsSchema.prefault({}),
  })
  .strict()
  .superRefine((c, ctx) => {
    for (const p of combinationProblems(c)) ctx.addIssue({ code: 'custom', path: p.path, message: p.message });
  });

/** The parts of a config that combination rules look at; also read from unvalidated input. */
export interface CombinationFacts {
  node?: { role?: unknown; controllerIndex?: unknown } | undefined;
  cluster?: { route53ZoneId?: unknown; domain?: unknown } | undefined;
  etcd?: unknown;
  ssh?: { mode?: unknown; sharedUser?: unknown; externalId?: unknown; roleArn?: unknown } | undefined;
  terminate?: { budget?: unknown; drainTimeout?: unknown; hookTimeout?: unknown } | undefined;
  takeover?:
    | {
        elasticIp?: { allocationId?: unknown; tags?: unknown } | undefined;
        routeTables?: { ids?: unknown; tags?: unknown } | undefined;
        readinessTimeout?: unknown;
        eniReleaseTimeout?: unknown;
        budget?: unknown;
      }
    | undefined;
}

/** Roles that take their function over from a predecessor at boot, and those of them that route traffic. */
export const serviceRoles: ReadonlySet<string> = new Set(['bastion', 'nat', 'vpngw']);
export const routingRoles: ReadonlySet<string> = new Set(['nat', 'vpngw']);

const num = (v: unknown, dflt: number): number => (typeof v === 'number' ? v : dflt);

/**
 * Rules across sections ("a worker with an etcd volume"). Run on the parsed config, and on
 * the raw input when parsing failed, so `config validate` lists these problems too.
 */
export function combinationProblems(c: CombinationFacts): Array<{ path: string[]; message: string }> {
  const out: Array<{ path: string[]; message: string }> = [];
  const add = (path: string[], message: string) => out.push({ path, message });
  const role = typeof c.node?.role === 'string' ? c.node.role : 'worker';
  const k8s = role === 'controller' || role === 'worker';
  if (k8s && !c.cluster) add(['cluster'], `a ${role} needs a cluster section (at least cluster.name)`);
  if (role === 'controller' && c.node?.controllerIndex === undefined) add(['node', 'controllerIndex'], "a controller needs its slot, e.g. controllerIndex: '00'");
  if (role !== 'controller' && c.node?.controllerIndex !== undefined) add(['node', 'controllerIndex'], `only controllers have a slot; this node is a ${role}`);
  if (role !== 'controller' && c.etcd !== undefined) add(['etcd'], `only controllers hold etcd; remove the etcd section from this ${role}'s config`);
  if (role === 'bastion' && !c.ssh) add(['ssh'], 'a bastion needs an ssh section with iamGroup');
  if (c.ssh?.mode === 'shared' && !c.ssh.sharedUser) add(['ssh', 'sharedUser'], "ssh.mode 'shared' needs ssh.sharedUser (the one login name)");
  if (c.ssh?.externalId && !c.ssh.roleArn) add(['ssh', 'externalId'], 'externalId is only used with ssh.roleArn');
  const budget = num(c.terminate?.budget, 120);
  const drain = num(c.terminate?.drainTimeout, 90);
  const hook = num(c.terminate?.hookTimeout, 20);
  if (budget > 0 && drain >= budget) {
    add(['terminate', 'drainTimeout'], `drainTimeout (${drain}s) must be shorter than the budget (${budget}s), or nothing is left for the rest`);
  }
  if (budget > 0 && hook >= budget) add(['terminate', 'hookTimeout'], `hookTimeout (${hook}s) must be shorter than terminate.budget (${budget}s)`);
  const t = c.takeover;
  if (t && !serviceRoles.has(role)) add(['takeover'], `only ${[...serviceRoles].join(', ')} hosts take a role over; remove the takeover section from this ${role}'s config`);
  if (t?.routeTables && !routingRoles.has(role)) add(['takeover', 'routeTables'], `only nat and vpngw hosts take routes over; this node is a ${role}`);
  const exactlyOne = (o: { [k: string]: unknown } | undefined, a: string, b: string, path: string[]) => {
    if (o && (o[a] === undefined) === (o[b] === undefined)) add(path, `set either ${a} or ${b}, not both or neither`);
  };
  exactlyOne(t?.elasticIp, 'allocationId', 'tags', ['takeover', 'elasticIp']);
  exactlyOne(t?.routeTables, 'ids', 'tags', ['takeover', 'routeTables']);
  if (t) {
    const waits = num(t.readinessTimeout, 120) + num(t.eniReleaseTimeout, 60);
    const takeoverBudget = num(t.budget, 300);
    if (waits >= takeoverBudget) {
      add(['takeover', 'budget'], `takeover.budget (${takeoverBudget}s) must be longer than readinessTimeout + eniReleaseTimeout (${waits}s), or nothing is left to move and verify`);
    }
  }
  if (c.cluster?.route53ZoneId && !c.cluster.domain) add(['cluster', 'domain'], 'route53ZoneId needs cluster.domain for the record names');
  return out;
}

export type Config = z.infer<typeof configSchema>;
export type ConfigInput = z.input<typeof configSchema>;
export type Role = Config['node']['role'];
