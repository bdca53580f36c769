/**
 * Local login names <-> IAM user names (per-user mode).
 *
 * IAM user names are 1-64 of `A-Z a-z 0-9 _ + = , . @ -`; portable Linux login names allow
 * `A-Z a-z 0-9 _ . -` only. The four characters IAM allows and Linux does not are spelled out
 * between dots, as aws-ec2-ssh does (so accounts keep their names when a bastion moves over):
 *
 *   +  ->  .plus.      =  ->  .equal.      ,  ->  .comma.      @  ->  .at.
 *
 *   IAM `jane.doe@example.com`  <->  local `jane.doe.at.example.com`
 *   IAM `ci+deploy`             <->  local `ci.plus.deploy`
 *
 * Case is kept. A local name must be 1-32 characters (the utmp limit), must not start with
 * `.` or `-`; an IAM user whose mapped name is longer has no login. The mapping is reversible
 * for every name except the rare pair that collides (`a+b` and `a.plus.b` both map to
 * `a.plus.b`): a login that two group members map to is refused, never guessed.
 */

const TOKENS: ReadonlyArray<readonly [iam: string, local: string]> = [
  ['+', '.plus.'],
  ['=', '.equal.'],
  [',', '.comma.'],
  ['@', '.at.'],
];

export const LOCAL_NAME_MAX = 32;
const LOCAL_NAME = /^[A-Za-z0-9_][A-Za-z0-9_.-]*$/;
const IAM_NAME = /^[\w+=,.@-]{1,64}$/;

export type LocalNameProblem = 'empty' | 'too-long' | 'characters' | 'leading-dot-or-dash';

/**
 * Why `name` cannot be a login this agent answers for, or undefined when it can. Checked
 * before any file or AWS call: the name comes from sshd (%u) and ends up in log lines.
 */
export function localNameProblem(name: string): LocalNameProblem | undefined {
  if (name.length === 0) return 'empty';
  if (name.length > LOCAL_NAME_MAX) return 'too-long';
  if (name.startsWith('.') || name.startsWith('-')) return 'leading-dot-or-dash';
  if (!LOCAL_NAME.test(name)) return 'characters';
  return undefined;
}

export function isIamUserName(name: string): boolean {
  return IAM_NAME.test(name);
}

/** The login name of an IAM user, or undefined when it has none (too long, not an IAM name). */
export function localNameFor(iamUser: string): string | undefined {
  if (!isIamUserName(iamUser)) return undefined;
  let local = iamUser;
  for (const [iam, token] of TOKENS) local = local.split(iam).join(token);
  return localNameProblem(local) === undefined ? local : undefined;
}

/** The IAM user name a login stands for (the inverse of localNameFor where it is defined). */
export function iamNameFor(local: string): string | undefined {
  if (localNameProblem(local) !== undefined) return undefined;
  let iam = local;
  for (const [ch, token] of TOKENS) iam = iam.split(token).join(ch);
  return isIamUserName(iam) ? iam : undefined;
}

/**
 * Group members by login name. A login that more than one member maps to lands in
 * `ambiguous` and is answered for nobody.
 */
export function membersByLogin(iamUsers: readonly string[]): { logins: Map<string, string>; ambiguous: Map<string, string[]>; unmappable: string[] } {
  const all = new Map<string, string[]>();
  const unmappable: string[] = [];
  for (const u of iamUsers) {
    const local = localNameFor(u);
    if (local === undefined) {
      unmappable.push(u);
      continue;
    }
    const list = all.get(local);
    if (list) list.push(u);
    else all.set(local, [u]);
  }
  const logins = new Map<string, string>();
  const ambiguous = new Map<string, string[]>();
  for (const [local, users] of all) {
    if (users.length === 1) logins.set(local, users[0] as string);
    else ambiguous.set(local, users);
  }
  return { logins, ambiguous, unmappable };
}
