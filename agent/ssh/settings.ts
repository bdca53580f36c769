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

export function settingsFromConfig(config: Config, facts: { region?: string | undefined; instanceId?: string | undefined } = {}): SshSettings {
  if (!config.ssh) {
    throw new ConfigError('SshNotConfigured', 'the configuration has no ssh section', {
      hint: 'set ssh.iamGroup (and node.role: bastion) in /etc/zdt-agent/config.yaml or the user-data',
    });
  }
  return { ssh: config.ssh, aws: config.aws, log: config.log, metrics: config.metrics, region: facts.region, instanceId: facts.instanceId };
}

/** RoleSessionName: 2-64 of [\w+=,.@-]; the instance id when known. */
export function roleSessionName(s: SshSettings, hostname: string): string {
  const base = s.instanceId ?? hostname.replace(/[^\w+=,.@-]/g, '-');
  return `zdt-agent-${base}`.slice(0, 64);
}
