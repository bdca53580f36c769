import fs from 'node:fs';
import { AgentError } from '../errors.js';
import { writeFileAtomic } from '../host/atomic.js';
import type { Exec } from '../host/exec.js';
import type { Paths } from '../host/paths.js';
import type { Logger } from '../log/logger.js';
import type { GroupSnapshot } from './cache.js';
import { membersByLogin } from './names.js';
import type { SshSettings } from './settings.js';

/**
 * Local accounts for the group's members (per-user mode). The agent creates an account for a
 * member that has none, records it in /var/lib/zdt-agent/ssh-users.json, and removes only
 * accounts recorded there once their IAM user has left the group. An account it did not
 * create is never changed, whatever its name.
 *
 * Accounts are made with shadow's useradd/userdel where installed (Debian; Alpine with the
 * `shadow` package), else with busybox adduser/deluser (Alpine's default). The password
 * field is `*`: no password login, but not "locked" (`!`), which sshd without PAM (Alpine's
 * build) would refuse even for key logins.
 */

export interface ManagedUsers {
  schema: 1;
  /** Accounts the agent created, with the uid they got: a same-named account made later by someone else is not ours. */
  users: Record<string, { iamUser: string; uid: number | null; createdAt: string }>;
}

export interface UserSyncResult {
  created: string[];
  removed: string[];
  /** Members with a login of their own already (made by someone else): left alone. */
  unmanaged: string[];
  failed: Array<{ user: string; error: string }>;
}

export function usersStateFile(paths: Paths): string {
  return paths.at('/var/lib/zdt-agent/ssh-users.json');
}

export function readManagedUsers(file: string): ManagedUsers {
  try {
    const v = JSON.parse(fs.readFileSync(file, 'utf8')) as Partial<ManagedUsers>;
    if (v.schema === 1 && v.users && typeof v.users === 'object') return v as ManagedUsers;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') {
      // Without the record the agent cannot tell its accounts from others: stop, change nothing.
      throw new AgentError('SshUsersStateUnreadable', `cannot read ${file}: ${(err as Error).message}`, {
        hint: 'restore or fix the file; until then no account is created or removed',
      });
    }
  }
  return { schema: 1, users: {} };
}

/** Login names in <root>/etc/passwd, with their uids. */
export function localAccounts(paths: Paths): Map<string, number> {
  let text: string;
  try {
    text = fs.readFileSync(paths.at('/etc/passwd'), 'utf8');
  } catch (err) {
    throw new AgentError('SshUsersNoPasswd', `cannot read ${paths.at('/etc/passwd')}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`, {
      hint: 'per-user mode manages local accounts; check the root prefix',
    });
  }
  const out = new Map<string, number>();
  for (const line of text.split('\n')) {
    const [name, , uid] = line.split(':');
    if (name) out.set(name, Number(uid));
  }
  return out;
}

interface AccountTool {
  name: string;
  create(user: string, o: { shell: string; sudoGroup: string | undefined }): Promise<void>;
  remove(user: string): Promise<void>;
}

const TIMEOUT_MS = 30_000;
/** The tools of this machine, whatever the root prefix. */
const onHost = (candidates: string[]) => candidates.find((c) => fs.existsSync(c));

/** useradd when installed, else busybox adduser; under a root prefix useradd's --prefix (tests). */
export function accountTool(paths: Paths, exec: Exec): AccountTool {
  const useradd = onHost(['/usr/sbin/useradd', '/sbin/useradd']);
  const userdel = onHost(['/usr/sbin/userdel', '/sbin/userdel']);
  const prefix = paths.root === '/' ? [] : ['--prefix', paths.root];
  if (useradd && userdel) {
    return {
      name: 'useradd',
      create: async (user, o) => {
        await exec(useradd, [...prefix, '--create-home', '--shell', o.shell, '--password', '*', '--comment', 'zdt-agent', ...(o.sudoGroup ? ['--groups', o.sudoGroup] : []), user], {
          timeoutMs: TIMEOUT_MS,
          hint: `check that ${o.sudoGroup ? `group ${o.sudoGroup} exists and ` : ''}${user} is a valid name here`,
        });
      },
      // 6: no such user (already gone); 12: the account is gone, its home could not be removed.
      remove: async (user) => {
        await exec(userdel, [...prefix, '--remove', user], { timeoutMs: TIMEOUT_MS, okExitCodes: [6, 12], hint: `check whether ${user} is still logged in` });
      },
    };
  }
  if (paths.root !== '/') throw new AgentError('SshUsersNoTool', 'a root prefix needs shadow useradd (--prefix)', { hint: 'install the shadow package' });
  return {
    name: 'busybox adduser',
    create: async (user, o) => {
      await exec('adduser', ['-D', '-s', o.shell, '-g', 'zdt-agent', user], { timeoutMs: TIMEOUT_MS });
      await exec('chpasswd', ['-e'], { timeoutMs: TIMEOUT_MS, input: `${user}:*\n` });
      if (o.sudoGroup) await exec('addgroup', [user, o.sudoGroup], { timeoutMs: TIMEOUT_MS, hint: `check that group ${o.sudoGroup} exists` });
    },
    remove: async (user) => {
      await exec('deluser', ['--remove-home', user], { timeoutMs: TIMEOUT_MS, hint: `check whether ${user} is still logged in` });
    },
  };
}

/**
 * Bring the agent's accounts in line with the group. Call only with a snapshot that IAM
 * answered in full: an empty member list here removes every account the agent made.
 */
export async function reconcileUsers(o: { snapshot: GroupSnapshot; settings: SshSettings; paths: Paths; exec: Exec; log: Logger }): Promise<UserSyncResult> {
  const file = usersStateFile(o.paths);
  const state = readManagedUsers(file);
  const save = () => writeFileAtomic(file, `${JSON.stringify(state, null, 2)}\n`, 0o600);
  const result: UserSyncResult = { created: [], removed: [], unmanaged: [], failed: [] };
  const { logins, ambiguous, unmappable } = membersByLogin(o.snapshot.members.map((m) => m.iamUser));
  for (const u of unmappable) o.log.warn('IAM user has no valid login name; no account', { iamUser: u });
  for (const [login, users] of ambiguous) o.log.warn('IAM users map to the same login; no account', { login, iamUsers: users.join(',') });
  const tool = accountTool(o.paths, o.exec);
  let existing = localAccounts(o.paths);

  // Forget records of accounts someone else deleted (or deleted and made again: another uid),
  // so that a returning member gets a new account and a stranger's is never removed.
  for (const [user, record] of Object.entries(state.users)) {
    if (!existing.has(user) || (record.uid !== null && existing.get(user) !== record.uid)) {
      o.log.warn('forgetting an account the agent made: it is gone or was replaced', { user, iamUser: record.iamUser });
      delete state.users[user];
      save();
    }
  }

  for (const [user, record] of Object.entries(state.users)) {
    if (logins.get(user) === record.iamUser) continue;
    try {
      await tool.remove(user);
      delete state.users[user];
      save();
      result.removed.push(user);
      o.log.info('removed the account of a user who left the group', { user, iamUser: record.iamUser });
    } catch (err) {
      result.failed.push({ user, error: (err as Error).message });
      o.log.warn('cannot remove account', { user, err: (err as Error).message });
    }
  }

  existing = localAccounts(o.paths);
  for (const [user, iamUser] of logins) {
    if (state.users[user]) continue;
    if (existing.has(user)) {
      result.unmanaged.push(user);
      continue;
    }
    try {
      await tool.create(user, { shell: o.settings.ssh.shell, sudoGroup: o.settings.ssh.sudoGroup });
      state.users[user] = { iamUser, uid: localAccounts(o.paths).get(user) ?? null, createdAt: new Date().toISOString() };
      save();
      result.created.push(user);
      o.log.info('created an account for a group member', { user, iamUser, tool: tool.name });
    } catch (err) {
      result.failed.push({ user, error: (err as Error).message });
      o.log.warn('cannot create account', { user, iamUser, err: (err as Error).message });
    }
  }
  if (result.unmanaged.length > 0) o.log.info('group members with accounts the agent did not create (left alone)', { users: result.unmanaged.join(',') });
  return result;
}
