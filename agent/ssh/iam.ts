import type { IAMClient } from '@aws-sdk/client-iam';
import { GetGroupCommand, GetSSHPublicKeyCommand, ListSSHPublicKeysCommand } from '../host/sdk/iam.js';
import { AgentError, DeadlineError } from '../errors.js';
import type { Logger } from '../log/logger.js';
import type { GroupSnapshot, Member } from './cache.js';
import { parsePublicKey, withFingerprint, type PublicKey } from './keys.js';

/**
 * The cold path: read the group's members and their active keys from IAM. Any API error
 * fails the whole read (an error is never an empty group); only NoSuchEntity for a member or
 * key that disappeared between two calls counts as "no keys". Per-member reads run with
 * bounded parallelism so that a large group neither takes seconds nor trips IAM throttling.
 */

export const IAM_PARALLELISM = 8;

export class IamReadError extends AgentError {
  constructor(what: string, cause: unknown) {
    const name = (cause as { name?: string }).name ?? 'Error';
    super('IamUnavailable', `${what}: ${name}: ${(cause as Error).message ?? String(cause)}`, {
      hint: 'check the instance role (iam:GetGroup, iam:ListSSHPublicKeys, iam:GetSSHPublicKey; sts:AssumeRole with ssh.roleArn) and the IAM endpoint',
      cause,
    });
  }
}

export interface FetchOptions {
  iam: IAMClient;
  group: string;
  roleArn: string | undefined;
  log: Logger;
  signal: AbortSignal;
  /** Whose keys to read: every member, or the ones this picks from the member list. */
  keysOf: 'all' | ((iamUsers: string[]) => string[]);
  now?: () => number;
}

const isNoSuchEntity = (err: unknown) => (err as { name?: string }).name === 'NoSuchEntityException' || (err as { name?: string }).name === 'NoSuchEntity';

export async function fetchGroupSnapshot(o: FetchOptions): Promise<GroupSnapshot> {
  const now = o.now ?? Date.now;
  const call = async <T>(what: string, f: () => Promise<T>): Promise<T> => {
    try {
      return await f();
    } catch (err) {
      if (o.signal.aborted) throw new DeadlineError('SshKeysDeadline', `${what} did not answer in time`, { hint: 'check IAM latency and throttling; ssh.deadline bounds the lookup', cause: err });
      throw err;
    }
  };
  const started = now();

  const users: string[] = [];
  let marker: string | undefined;
  do {
    const page = await call(`GetGroup ${o.group}`, () => o.iam.send(new GetGroupCommand({ GroupName: o.group, Marker: marker, MaxItems: 1000 }), { abortSignal: o.signal })).catch(
      (err: unknown) => {
        if (err instanceof AgentError) throw err;
        if (isNoSuchEntity(err)) {
          throw new AgentError('IamGroupNotFound', `IAM group ${o.group} does not exist${o.roleArn ? ` in the account of ${o.roleArn}` : ''}`, {
            hint: 'check ssh.iamGroup (and ssh.roleArn); nobody can log in until it names a group',
          });
        }
        throw new IamReadError(`GetGroup ${o.group}`, err);
      },
    );
    for (const u of page.Users ?? []) if (u.UserName) users.push(u.UserName);
    marker = page.IsTruncated ? page.Marker : undefined;
  } while (marker);

  const wanted = new Set(o.keysOf === 'all' ? users : o.keysOf(users));
  const members: Member[] = users.map((iamUser) => ({ iamUser }));
  const reading = members.filter((m) => wanted.has(m.iamUser));
  // Two rounds, each at most IAM_PARALLELISM requests in flight: key ids, then key bodies.
  const ids = new Map<Member, string[]>();
  await mapLimit(reading, IAM_PARALLELISM, async (m) => {
    ids.set(m, await activeKeyIds(o, m.iamUser, call));
  });
  const bodies = reading.flatMap((m) => (ids.get(m) ?? []).map((id) => ({ m, id })));
  const found = new Map<string, PublicKey>();
  await mapLimit(bodies, IAM_PARALLELISM, async ({ m, id }) => {
    const key = await activeKey(o, m.iamUser, id, call);
    if (key) found.set(id, key);
  });
  // Keys in the order IAM listed them, whatever order the reads finished in.
  for (const m of reading) m.keys = (ids.get(m) ?? []).flatMap((id) => found.get(id) ?? []);
  o.log.debug('read the IAM group', { group: o.group, members: users.length, keyReads: bodies.length, ms: now() - started });
  return { group: o.group, roleArn: o.roleArn ?? null, fetchedAt: started, members };
}

type Call = <T>(what: string, f: () => Promise<T>) => Promise<T>;

async function activeKeyIds(o: FetchOptions, user: string, call: Call): Promise<string[]> {
  const ids: string[] = [];
  let marker: string | undefined;
  try {
    do {
      const page = await call(`ListSSHPublicKeys ${user}`, () =>
        o.iam.send(new ListSSHPublicKeysCommand({ UserName: user, Marker: marker, MaxItems: 1000 }), { abortSignal: o.signal }),
      );
      for (const k of page.SSHPublicKeys ?? []) if (k.Status === 'Active' && k.SSHPublicKeyId) ids.push(k.SSHPublicKeyId);
      marker = page.IsTruncated ? page.Marker : undefined;
    } while (marker);
  } catch (err) {
    if (err instanceof AgentError) throw err;
    if (isNoSuchEntity(err)) return []; // deleted since GetGroup
    throw new IamReadError(`ListSSHPublicKeys ${user}`, err);
  }
  return ids;
}

async function activeKey(o: FetchOptions, user: string, id: string, call: Call): Promise<PublicKey | undefined> {
  let body: string | undefined;
  let status: string | undefined;
  try {
    const out = await call(`GetSSHPublicKey ${user} ${id}`, () =>
      o.iam.send(new GetSSHPublicKeyCommand({ UserName: user, SSHPublicKeyId: id, Encoding: 'SSH' }), { abortSignal: o.signal }),
    );
    body = out.SSHPublicKey?.SSHPublicKeyBody;
    status = out.SSHPublicKey?.Status;
  } catch (err) {
    if (err instanceof AgentError) throw err;
    if (isNoSuchEntity(err)) return undefined; // deleted since the list
    throw new IamReadError(`GetSSHPublicKey ${user} ${id}`, err);
  }
  // Deactivated between the two calls: the newer answer wins.
  if (status !== 'Active' || body === undefined) return undefined;
  const parsed = parsePublicKey(body);
  if (!parsed.ok) {
    o.log.warn('ignoring an IAM SSH key', { user, keyId: id, why: parsed.problem });
    return undefined;
  }
  return withFingerprint(parsed.key);
}

/** Run `f` over `items`, at most `limit` at a time; the first failure rejects (the rest finish unobserved). */
export async function mapLimit<T>(items: readonly T[], limit: number, f: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const item = items[next++] as T;
      await f(item);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
}
