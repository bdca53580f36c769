import { AssumeRoleCommand } from '../host/sdk/sts.js';
import type { AwsCredentialIdentity } from '@smithy/types';
import fs from 'node:fs';
import { AgentError, DeadlineError } from '../errors.js';
import { writeFileAtomic } from '../host/atomic.js';
import type { Aws } from '../host/aws.js';
import type { Paths } from '../host/paths.js';
import type { Logger } from '../log/logger.js';
import { registerAwsCredentials } from '../log/redact.js';

/**
 * Credentials of ssh.roleArn (IAM in a central account), cached for their lifetime so that
 * logins do not call STS each time. The file holds secrets: root's alone (0600), and only
 * root uses it; the unprivileged AuthorizedKeysCommandUser assumes the role itself on the
 * rare cold lookup it makes.
 */

const DURATION_S = 3600;
/** Renew this long before expiry, so a lookup never starts with credentials about to lapse. */
const RENEW_MARGIN_MS = 5 * 60_000;

interface CachedRole {
  roleArn: string;
  externalId: string | null;
  accessKeyId: string;
  secretAccessKey: string;
  sessionToken: string;
  expiration: string;
}

export function roleCredentialsFile(paths: Paths): string {
  return paths.at('/var/lib/zdt-agent/ssh-role-credentials.json');
}

const isRoot = () => process.geteuid?.() === 0;

export async function assumeSshRole(o: {
  aws: Aws;
  roleArn: string;
  externalId: string | undefined;
  /** Asked only when STS is called (it may need IMDS). */
  sessionName: () => Promise<string>;
  paths: Paths;
  log: Logger;
  signal: AbortSignal;
  now?: () => number;
}): Promise<AwsCredentialIdentity> {
  const now = o.now ?? Date.now;
  const file = roleCredentialsFile(o.paths);
  if (isRoot()) {
    const cached = readCachedRole(file);
    if (cached && cached.roleArn === o.roleArn && cached.externalId === (o.externalId ?? null) && Date.parse(cached.expiration) - RENEW_MARGIN_MS > now()) {
      registerAwsCredentials(cached);
      return { accessKeyId: cached.accessKeyId, secretAccessKey: cached.secretAccessKey, sessionToken: cached.sessionToken, expiration: new Date(cached.expiration) };
    }
  }
  const sts = await o.aws.sts();
  let out;
  try {
    out = await sts.send(
      new AssumeRoleCommand({ RoleArn: o.roleArn, RoleSessionName: await o.sessionName(), ExternalId: o.externalId, DurationSeconds: DURATION_S }),
      { abortSignal: o.signal },
    );
  } catch (err) {
    if (o.signal.aborted) throw new DeadlineError('SshKeysDeadline', `sts:AssumeRole ${o.roleArn} did not answer in time`, { hint: 'check STS latency; ssh.deadline bounds the lookup', cause: err });
    throw new AgentError('StsAssumeRoleFailed', `sts:AssumeRole ${o.roleArn}: ${(err as Error).name}: ${(err as Error).message}`, {
      hint: "check the role's trust policy (this instance role as principal, the external id) and sts:AssumeRole in the instance role",
      cause: err,
    });
  }
  const c = out.Credentials;
  if (!c?.AccessKeyId || !c.SecretAccessKey || !c.SessionToken || !c.Expiration) {
    throw new AgentError('StsAssumeRoleFailed', `sts:AssumeRole ${o.roleArn} answered without credentials`, { hint: 'check the STS endpoint' });
  }
  const creds = { accessKeyId: c.AccessKeyId, secretAccessKey: c.SecretAccessKey, sessionToken: c.SessionToken, expiration: c.Expiration };
  registerAwsCredentials(creds);
  if (isRoot()) {
    const record: CachedRole = { roleArn: o.roleArn, externalId: o.externalId ?? null, ...creds, expiration: c.Expiration.toISOString() };
    try {
      writeFileAtomic(file, `${JSON.stringify(record)}\n`, 0o600);
    } catch (err) {
      o.log.warn('cannot cache the assumed-role credentials', { file, err: (err as Error).message });
    }
  }
  return creds;
}

/** The cached credentials, if the file is root's alone (a regular file, 0600 or stricter). */
function readCachedRole(file: string): CachedRole | undefined {
  let fd: number;
  try {
    fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW | fs.constants.O_NONBLOCK);
  } catch {
    return undefined;
  }
  try {
    const st = fs.fstatSync(fd);
    if (!st.isFile() || st.uid !== 0 || st.mode & 0o077) return undefined;
    const v = JSON.parse(fs.readFileSync(fd, 'utf8')) as Partial<CachedRole>;
    const fields = [v.roleArn, v.accessKeyId, v.secretAccessKey, v.sessionToken, v.expiration];
    return fields.every((f) => typeof f === 'string') ? (v as CachedRole) : undefined;
  } catch {
    return undefined;
  } finally {
    fs.closeSync(fd);
  }
}
