import fs from 'node:fs';
import type { Paths } from '../host/paths.js';
import type { AuditRecord } from './audit.js';
import type { GroupSnapshot } from './cache.js';
import { checkBlob, fingerprintOf, isFingerprint, keyLine, type PublicKey } from './keys.js';
import { localNameProblem, membersByLogin } from './names.js';
import type { SshSettings } from './settings.js';

/**
 * The decision of ssh-keys, from a snapshot of the group: which key lines a login gets, and
 * the audit record that says why. No I/O here except the passwd lookup of checkLogin.
 */

export interface Request {
  user: string;
  fingerprint?: string | undefined;
}

export interface Answer {
  lines: string[];
  record: AuditRecord;
}

/** Refusals that need no lookup at all: a bad name, or a system account in per-user mode. */
export function checkLogin(req: Request, settings: SshSettings | undefined, paths: Paths): AuditRecord | undefined {
  const problem = localNameProblem(req.user);
  if (problem) return { user: req.user, outcome: 'invalid-user', detail: problem, offered: req.fingerprint };
  if (!settings) return undefined;
  if (settings.ssh.mode === 'shared') {
    return req.user === settings.ssh.sharedUser ? undefined : { user: req.user, outcome: 'not-shared-user', offered: req.fingerprint };
  }
  // An IAM user named root never becomes root, whatever ssh.minUid says.
  if (req.user === 'root') return { user: req.user, outcome: 'system-user', detail: 'root', offered: req.fingerprint };
  const uid = passwdUid(paths, req.user);
  if (uid !== undefined && uid < settings.ssh.minUid) {
    return { user: req.user, outcome: 'system-user', detail: `uid ${uid} is below ssh.minUid ${settings.ssh.minUid}`, offered: req.fingerprint };
  }
  return undefined;
}

/** The uid /etc/passwd gives `user`, or undefined (not listed there, e.g. from another NSS source). */
export function passwdUid(paths: Paths, user: string): number | undefined {
  let text: string;
  try {
    text = fs.readFileSync(paths.at('/etc/passwd'), 'utf8');
  } catch {
    return undefined;
  }
  const prefix = `${user}:`;
  for (const line of text.split('\n')) {
    if (!line.startsWith(prefix)) continue;
    const uid = Number(line.split(':')[2]);
    return Number.isInteger(uid) ? uid : undefined;
  }
  return undefined;
}

function checkedKeys(keys: readonly PublicKey[] | undefined): PublicKey[] {
  const out: PublicKey[] = [];
  for (const k of keys ?? []) {
    const r = checkBlob(k.type, k.blob);
    if (r.ok) out.push({ ...r.key, sha256: k.sha256 });
  }
  return out;
}

/** Key lines for `req.user` (checkLogin passed) from `snapshot`. */
export function answerFrom(snapshot: GroupSnapshot, settings: SshSettings, req: Request, source: AuditRecord['source']): Answer {
  const base = { user: req.user, source, offered: req.fingerprint };
  let granted: Array<{ iamUser: string; keys: PublicKey[] }>;
  let iamUser: string | undefined;
  if (settings.ssh.mode === 'shared') {
    granted = snapshot.members.map((m) => ({ iamUser: m.iamUser, keys: checkedKeys(m.keys) }));
    iamUser = `${granted.filter((g) => g.keys.length > 0).length}-members`;
  } else {
    const { logins, ambiguous } = membersByLogin(snapshot.members.map((m) => m.iamUser));
    const clash = ambiguous.get(req.user);
    if (clash) {
      return { lines: [], record: { ...base, outcome: 'ambiguous', detail: `IAM users ${clash.join(',')} all map to this login` } };
    }
    iamUser = logins.get(req.user);
    const member = iamUser === undefined ? undefined : snapshot.members.find((m) => m.iamUser === iamUser);
    if (!member) return { lines: [], record: { ...base, outcome: 'not-in-group', offeredBy: offeredBy(snapshot, req) } };
    granted = [{ iamUser: member.iamUser, keys: checkedKeys(member.keys) }];
  }
  const lines = granted.flatMap((g) => g.keys.map((k) => keyLine(k, settings.ssh.keyOptions, g.iamUser)));
  return {
    lines,
    record: { ...base, iamUser, outcome: lines.length > 0 ? 'keys' : 'no-keys', keys: lines.length, offeredBy: offeredBy(snapshot, req) },
  };
}

/**
 * The IAM user whose key has fingerprint %f; "none" when no member's key has it ("unknown"
 * when the snapshot lacks some members' keys); undefined without %f.
 */
function offeredBy(snapshot: GroupSnapshot, req: Request): string | undefined {
  const fp = req.fingerprint;
  if (fp === undefined) return undefined;
  if (!isFingerprint(fp)) return 'unreadable-fingerprint';
  for (const m of snapshot.members) {
    for (const k of m.keys ?? []) if (fingerprintOf(k, fp) === fp) return m.iamUser;
  }
  return snapshot.members.every((m) => m.keys !== undefined) ? 'none' : 'unknown';
}
