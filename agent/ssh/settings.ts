import type { Config } from '../config/schema.js';
import { ConfigError } from '../errors.js';

/**
 * What ssh-keys needs of the configuration: the ssh section, how to reach AWS, how to log,
 * and the two facts root learns from IMDS (region, instance id). Root resolves them from all
 * config sources and stores them in the key cache, because the unprivileged
 * AuthorizedKeysCommandUser may not read every source (the cached user-data is root's only).
 */
export interface SshSettings {
  ssh: NonNullable<Config['ssh']>;
  aws: Config['aws'];
  log: Config['log'];
  /** Where answers are counted (absent in caches written before metrics existed). */
  metrics?: Config['metrics'] | undefined;
  /** The region, when root resolved it from IMDS (aws.region wins when set). */
  region?: string | undefined;
  /** This instance, for the AssumeRole session name (CloudTrail shows which bastion read IAM). */
  instanceId?: string | undefined;
}

/** `configFile`: the AMI's config file as this command reads it (under --root), for the hint. */
export function settingsFromConfig(
  config: Config,
  facts: { region?: string | undefined; instanceId?: string | undefined } = {},
  configFile = '/etc/zdt-agent/config.yaml',
): SshSettings {
  if (!config.ssh) {
    // Not the user-data: who may log in is the local files' to decide (docs/config.md, Trust).
    throw new ConfigError('SshNotConfigured', 'the configuration has no ssh section', {
      hint: `set ssh.iamGroup (and node.role: bastion) in ${configFile} or with --config`,
    });
  }
  return { ssh: config.ssh, aws: config.aws, log: config.log, metrics: config.metrics, region: facts.region, instanceId: facts.instanceId };
}

/** RoleSessionName: 2-64 of [\w+=,.@-]; the instance id when known. */
export function roleSessionName(s: SshSettings, hostname: string): string {
  const base = s.instanceId ?? hostname.replace(/[^\w+=,.@-]/g, '-');
  return `zdt-agent-${base}`.slice(0, 64);
}
