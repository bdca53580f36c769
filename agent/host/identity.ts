import { AgentError } from '../errors.js';
import type { Logger } from '../log/logger.js';
import { sdk, type Aws } from './aws.js';
import { ImdsAnswerInvalid, type Imds } from './imds.js';

const DNS_NAME = /^(?=.{1,253}$)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*$/i;

/** Who this instance is, from IMDS (and EC2 when instance metadata tags are off). */
export interface Identity {
  instanceId: string;
  region: string;
  availabilityZone: string;
  instanceType: string;
  privateIp: string;
  privateDns: string | undefined;
  accountId: string | undefined;
  lifecycle: 'spot' | 'on-demand';
  asgName: string | undefined;
  stackName: string | undefined;
  logicalId: string | undefined;
  /** All instance tags (from IMDS, or DescribeInstances). */
  tags: Record<string, string>;
}

export async function readIdentity(
  imds: Imds,
  opts: { log: Logger; tags?: Record<string, string> | undefined; aws?: Aws | undefined },
): Promise<Identity> {
  const doc = await imds.identityDocument();
  const [privateDns, lifecycle] = await Promise.all([
    imds.optional('latest/meta-data/local-hostname'),
    imds.optional('latest/meta-data/instance-life-cycle'),
  ]);
  let tags = opts.tags ?? (await imds.tags());
  if (tags === undefined && opts.aws) {
    // Instance metadata tags are off: ask EC2 (needs ec2:DescribeInstances on the instance role).
    opts.log.info('instance metadata tags are off; reading tags with ec2:DescribeInstances');
    tags = await describeTags(opts.aws, doc.instanceId);
  }
  tags ??= {};
  // It names the Kubernetes node and lands in kubeadm's config: a DNS name or nothing.
  const dns = privateDns?.trim() || undefined;
  if (dns !== undefined && !DNS_NAME.test(dns)) throw new ImdsAnswerInvalid(`IMDS local-hostname is not a DNS name (${dns.length} characters)`);
  return {
    instanceId: doc.instanceId,
    region: doc.region,
    availabilityZone: doc.availabilityZone,
    instanceType: doc.instanceType,
    privateIp: doc.privateIp,
    privateDns: dns,
    accountId: doc.accountId,
    lifecycle: lifecycle?.trim() === 'spot' ? 'spot' : 'on-demand',
    asgName: tags['aws:autoscaling:groupName'],
    stackName: tags['aws:cloudformation:stack-name'],
    logicalId: tags['aws:cloudformation:logical-id'],
    tags,
  };
}

async function describeTags(aws: Aws, instanceId: string): Promise<Record<string, string>> {
  const { DescribeInstancesCommand } = await sdk.ec2();
  try {
    const ec2 = await aws.ec2();
    const out = await ec2.send(new DescribeInstancesCommand({ InstanceIds: [instanceId] }));
    const inst = out.Reservations?.[0]?.Instances?.[0];
    const tags: Record<string, string> = {};
    for (const t of inst?.Tags ?? []) if (t.Key && t.Value !== undefined) tags[t.Key] = t.Value;
    return tags;
  } catch (err) {
    throw new AgentError('InstanceTagsUnavailable', `cannot read the tags of ${instanceId}: ${(err as Error).message}`, {
      hint: 'enable instance metadata tags in the launch template, or allow ec2:DescribeInstances for the instance role',
      cause: err,
    });
  }
}
