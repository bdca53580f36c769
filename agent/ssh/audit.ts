import fs from 'node:fs';
import type { Paths } from '../host/paths.js';
import type { Logger } from '../log/logger.js';

/**
 * One audit line per ssh-keys answer, to syslog (facility authpriv, next to sshd's own lines)
 * and to the agent log. sshd's AuthorizedKeysCommandUser usually cannot write the agent log,
 * so syslog is the record that always exists.
 *
 * Syslog goes through logger(1) (util-linux on Debian, busybox on Alpine), not a socket of
 * our own: /dev/log is a datagram socket and Node has no Unix datagram sockets, and logger
 * knows each platform's socket and framing. It is spawned directly rather than through
 * host/exec because it is not waited for (see syslog below): waiting would cost every key
 * offer the spawn's round trip, and logger's exit code says nothing.
 */

export type Outcome =
  | 'keys' // key lines printed
  | 'no-keys' // a member without active keys
  | 'not-in-group' // no group member maps to this login
  | 'not-shared-user' // shared mode, another login
  | 'invalid-user' // refused before any lookup
  | 'system-user' // root or a uid below ssh.minUid
  | 'ambiguous' // two members map to this login
  | 'error' // IAM/STS/config error: no output, non-zero exit
  | 'deadline'; // ssh.deadline ran out: no output, non-zero exit

export interface AuditRecord {
  user: string;
  outcome: Outcome;
  /** The IAM user the login maps to (per-user), or the members whose keys were printed (shared). */
  iamUser?: string | undefined;
  keys?: number | undefined;
  /** %f, the fingerprint of the key the client offers. */
  offered?: string | undefined;
  /** Which IAM user the offered key belongs to ("none": not a key of the group). */
  offeredBy?: string | undefined;
  source?: 'cache' | 'stale-cache' | 'iam' | undefined;
  detail?: string | undefined;
}

const LOGGER_BIN = '/usr/bin/logger';
/** coreutils on Debian, busybox on Alpine: both take `-s KILL SECS PROG ARGS`. */
const TIMEOUT_BIN = '/usr/bin/timeout';
const LOGGER_TIMEOUT_S = 5;

/** Printable ASCII only (the values come from sshd arguments and IAM); quotes and backslashes escaped. */
function clean(v: string, max = 96): string {
  const s = v.length > max ? `${v.slice(0, max)}...` : v;
  return s.replace(/[^\x20-\x7e]|["\\]/g, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`);
}

export function auditFields(r: AuditRecord): Record<string, string | number | undefined> {
  return {
    user: clean(r.user, 40),
    iam: r.iamUser === undefined ? undefined : clean(r.iamUser),
    result: r.outcome,
    keys: r.keys,
    offered: r.offered === undefined ? undefined : clean(r.offered, 64),
    'offered-by': r.offeredBy === undefined ? undefined : clean(r.offeredBy),
    source: r.source,
    detail: r.detail === undefined ? undefined : clean(r.detail, 300),
  };
}

/** `ssh-keys key=value …`, a value with blanks in double quotes (as the agent log writes it). */
export function auditMessage(r: AuditRecord): string {
  const parts = Object.entries(auditFields(r))
    .filter(([, v]) => v !== undefined)
    .map(([k, v]) => `${k}=${/[\s=]/.test(String(v)) || v === '' ? `"${v}"` : v}`);
  return `ssh-keys ${parts.join(' ')}`;
}

function priorityOf(o: Outcome): string {
  if (o === 'error' || o === 'deadline') return 'authpriv.err';
  if (o === 'invalid-user' || o === 'system-user' || o === 'ambiguous') return 'authpriv.warning';
  return 'authpriv.info';
}

/**
 * Under a root prefix (tests) the socket is <root>/dev/log, given with `-u` (util-linux); on a
 * node logger finds /dev/log itself (busybox's logger has no `-u`).
 */
export function loggerArgs(paths: Paths, r: AuditRecord): string[] {
  const socket = paths.root === '/' ? [] : ['-u', paths.at('/dev/log')];
  return ['-p', priorityOf(r.outcome), '-t', 'zdt-agent', ...socket, '--', auditMessage(r)];
}

/** Write the audit line to the agent log and syslog; a syslog failure is logged, never thrown. */
export function audit(paths: Paths, log: Logger, r: AuditRecord): void {
  const fields = auditFields(r);
  if (r.outcome === 'error' || r.outcome === 'deadline') log.error('ssh-keys', fields);
  else if (r.outcome === 'invalid-user' || r.outcome === 'system-user' || r.outcome === 'ambiguous') log.warn('ssh-keys', fields);
  else log.info('ssh-keys', fields);
  const problem = syslog(loggerArgs(paths, r));
  if (problem) log.warn('ssh-keys: no syslog audit line', { why: problem });
}

/**
 * logger runs in a session of its own and is not waited for. Waiting would add its run time
 * (3-5 ms) to every key sshd asks about and tell us nothing, since util-linux logger exits 0
 * even when no syslog daemon listens; the line is delivered after this process has answered.
 * timeout(1) bounds it, so a wedged syslog daemon cannot pile up blocked loggers.
 */
function syslog(args: string[]): string | undefined {
  if (!fs.existsSync(LOGGER_BIN)) return `${LOGGER_BIN} is missing`;
  const [file, argv] = fs.existsSync(TIMEOUT_BIN) ? [TIMEOUT_BIN, ['-s', 'KILL', String(LOGGER_TIMEOUT_S), LOGGER_BIN, ...args]] : [LOGGER_BIN, args];
  // Loaded here, not at the top: child_process and its stream modules are a third of the hot path.
  const { spawn } = process.getBuiltinModule('node:child_process');
  const child = spawn(file, argv, { stdio: 'ignore', detached: true });
  child.once('error', () => undefined);
  child.unref();
  return undefined;
}
