import os from 'node:os';
import { AgentError } from '../errors.js';
import { makeAws, type Aws } from '../host/aws.js';
import { Imds } from '../host/imds.js';
import type { Paths } from '../host/paths.js';
import type { Logger } from '../log/logger.js';
import type { GroupSnapshot } from './cache.js';
import { assumeSshRole } from './credentials.js';
import { fetchGroupSnapshot, type FetchOptions } from './iam.js';
import { roleSessionName, type SshSettings } from './settings.js';

/**
 * One read of the group from IAM, as ssh-keys (cold path) and ssh-users sync both do it:
 * AWS clients from the settings, ssh.roleArn assumed when set, then the group and keys.
 */

export interface InstanceFacts {
  region: string | undefined;
  instanceId: string | undefined;
}

/**
 * AWS clients for the settings. Region and instance id come from the settings (root stored
 * them in the cache) or else from IMDS, asked once with a short bound.
 */
export function clientsFor(settings: SshSettings, log: Logger): { aws: Aws; facts: () => Promise<InstanceFacts> } {
  let factsP: Promise<InstanceFacts> | undefined;
  const facts = () =>
    (factsP ??= new Imds({ endpoint: settings.aws.imdsEndpoint, log, requiredTimeoutMs: 1500, requestTimeoutMs: 1000 })
      .identityDocument()
      .then((d) => ({ region: d.region, instanceId: d.instanceId }))
      .catch((err: unknown) => {
        log.debug('IMDS identity unavailable', { err: (err as Error).message });
        return { region: undefined, instanceId: undefined };
      }));
  const aws = makeAws({
    aws: settings.aws,
    region: async () => {
      const region = settings.region ?? (await facts()).region;
      if (!region) throw new AgentError('RegionUnknown', 'no aws.region configured and IMDS did not answer', { hint: 'set aws.region, or check IMDS' });
      return region;
    },
  });
  return { aws, facts };
}

export async function readGroup(o: {
  settings: SshSettings;
  paths: Paths;
  log: Logger;
  signal: AbortSignal;
  keysOf: FetchOptions['keysOf'];
  clients?: ReturnType<typeof clientsFor>;
}): Promise<GroupSnapshot> {
  const { settings, log, signal } = o;
  const { aws, facts } = o.clients ?? clientsFor(settings, log);
  const credentials = settings.ssh.roleArn
    ? await assumeSshRole({
        aws,
        roleArn: settings.ssh.roleArn,
        externalId: settings.ssh.externalId,
        sessionName: async () => roleSessionName({ ...settings, instanceId: settings.instanceId ?? (await facts()).instanceId }, os.hostname()),
        paths: o.paths,
        log,
        signal,
      })
    : undefined;
  const iam = await aws.iam(credentials);
  try {
    return await fetchGroupSnapshot({ iam, group: settings.ssh.iamGroup, roleArn: settings.ssh.roleArn, log, signal, keysOf: o.keysOf });
  } finally {
    iam.destroy();
  }
}
