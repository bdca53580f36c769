/**
 * Secret redaction, applied to every log line (at every level), the one stderr line, the
 * state file, every message sent and the errors made from a command's output. Kept in one
 * place so that a new kind of secret is added once.
 *
 * Two nets:
 *  - by value: every secret the agent creates, receives or derives is registered here when it
 *    enters the process (`registerSecret`), and replaced wherever it appears, also in the
 *    encodings it travels in (JSON-escaped, URL-encoded, base64; hex for key bytes). This is
 *    what catches a secret without a label: an AWS secret key on its own, a key on the line
 *    after the one that names it.
 *  - by pattern: secrets after a label the agent did not see enter (a key in a command's
 *    output, a PEM block in a hook's output).
 */

const REDACTED = '[REDACTED]';

/**
 * Shorter values are not registered: replacing every occurrence of a 6-character string
 * would mangle ordinary text (and a test's `testing` credentials), and no secret the agent
 * handles is that short (bootstrap token secrets are 16, AWS secret keys 40, IMDS tokens 56).
 */
export const MIN_SECRET_LENGTH = 8;

export type SecretKind =
  | 'bootstrap-token'
  | 'certificate-key'
  | 'aws-secret-access-key'
  | 'aws-session-token'
  | 'kms-data-key'
  | 'imds-token'
  | 'other';

interface Rule {
  readonly name: string;
  readonly pattern: RegExp;
  readonly replace: (match: string, ...groups: string[]) => string;
}

/** Between a label and its value: spaces, newlines, and their JSON-escaped forms (`\n`). */
const GAP = String.raw`(?:\s|\\[nrt]|\|)*`;

const rules: readonly Rule[] = [
  {
    // PEM private keys of any kind (RSA, EC, PKCS#8, OpenSSH), possibly without the END line.
    name: 'private-key',
    pattern: /-----BEGIN ([A-Z0-9 ]*)PRIVATE KEY-----[\s\S]*?(?:-----END \1PRIVATE KEY-----|$)/g,
    replace: (_m, kind) => `-----BEGIN ${kind}PRIVATE KEY----- ${REDACTED}`,
  },
  {
    // kubeadm certificate key: `--certificate-key abc…` / `--certificate-key=abc…` / `certificateKey: abc…`,
    // and kubeadm's own `[upload-certs] Using certificate key:` with the key on the next line.
    name: 'certificate-key',
    pattern: new RegExp(String.raw`(--certificate-key[= ]|certificateKey["']?\s*[:=]\s*["']?|certificate key:${GAP})([0-9a-fA-F]{16,})`, 'gi'),
    replace: (_m, prefix) => `${prefix}${REDACTED}`,
  },
  {
    // kubeadm bootstrap token: [a-z0-9]{6}.[a-z0-9]{16}; the id half is kept for correlation.
    name: 'bootstrap-token',
    pattern: /\b([a-z0-9]{6})\.[a-z0-9]{16}\b/g,
    replace: (_m, id) => `${id}.${REDACTED}`,
  },
  {
    // AWS secret access keys and session tokens in key=value / JSON / env form.
    name: 'aws-secret',
    pattern:
      /((?:aws_secret_access_key|secretAccessKey|SecretAccessKey|AWS_SECRET_ACCESS_KEY|aws_session_token|sessionToken|SessionToken|AWS_SESSION_TOKEN|X-Amz-Security-Token)["']?\s*[:=]\s*["']?)([A-Za-z0-9/+=]{16,})/g,
    replace: (_m, prefix) => `${prefix}${REDACTED}`,
  },
  {
    // A bare 40-character secret key next to an access key id (AKIA…/ASIA…).
    name: 'aws-secret-bare',
    pattern: /\b((?:AKIA|ASIA)[A-Z0-9]{16})([\s:,="']+)([A-Za-z0-9/+]{40})\b/g,
    replace: (_m, id, sep) => `${id}${sep}${REDACTED}`,
  },
  {
    // The IMDSv2 session token in a header dump.
    name: 'imds-token',
    pattern: /(x-aws-ec2-metadata-token["']?\s*[:=]\s*["']?)([A-Za-z0-9_=-]{16,})/gi,
    replace: (_m, prefix) => `${prefix}${REDACTED}`,
  },
  {
    // Discovery hashes are not secret, but a token passed as `--token X` in any form is.
    name: 'token-flag',
    pattern: /(--(?:token|discovery-token|tls-bootstrap-token)[= ])(\S+)/g,
    replace: (_m, prefix) => `${prefix}${REDACTED}`,
  },
];

interface Registry {
  /** Every registered form of every registered secret. */
  literals: Set<string>;
  /** One alternation of `literals`, longest first; rebuilt after a registration. */
  pattern: RegExp | undefined;
}

/**
 * Kept on globalThis: the binary's main script and its CLI chunk each bundle a copy of this
 * module (scripts/build-binary.mjs), and a secret registered by one must be redacted by both.
 */
const registry: Registry = ((globalThis as Record<symbol, unknown>)[Symbol.for('zdt-agent.redact')] ??= {
  literals: new Set<string>(),
  pattern: undefined,
}) as Registry;

function addForm(form: string): void {
  if (form.length < MIN_SECRET_LENGTH || registry.literals.has(form)) return;
  registry.literals.add(form);
  registry.pattern = undefined;
}

/** The forms a text secret travels in. */
function textForms(value: string): string[] {
  const forms = [value, JSON.stringify(value).slice(1, -1), encodeURIComponent(value)];
  const b64 = Buffer.from(value, 'utf8').toString('base64');
  forms.push(b64, b64.replace(/=+$/, ''), Buffer.from(value, 'utf8').toString('base64url'));
  // A multi-line secret (a key file) may be quoted one line at a time.
  if (value.includes('\n')) for (const line of value.split(/\r?\n/)) if (line.trim().length >= 16) forms.push(line.trim());
  return forms;
}

/** The forms key bytes travel in: base64 (with and without padding, URL-safe), hex, a Buffer's inspection. */
function byteForms(bytes: Uint8Array): string[] {
  const b = Buffer.from(bytes);
  const b64 = b.toString('base64');
  const hex = b.toString('hex');
  return [b64, b64.replace(/=+$/, ''), b.toString('base64url'), hex, hex.toUpperCase(), hex.replace(/(..)(?!$)/g, '$1 '), [...b].join(',')];
}

/**
 * Registers a secret the moment it enters the process: from then on it is replaced in every
 * sink. Bytes (a KMS data key) are registered in their text encodings; a bootstrap token
 * only by its secret half, so that the token id stays visible for correlation.
 */
export function registerSecret(value: string | Uint8Array | null | undefined, kind: SecretKind): void {
  if (value === null || value === undefined) return;
  if (typeof value !== 'string') {
    for (const form of byteForms(value)) addForm(form);
    return;
  }
  const secret = kind === 'bootstrap-token' && /^[a-z0-9]{6}\.[a-z0-9]{16}$/.test(value) ? value.slice(7) : value;
  for (const form of textForms(secret)) addForm(form);
}

/** AWS credentials, however they were obtained (environment, IMDS role, STS); the key id is not secret. */
export function registerAwsCredentials(c: { secretAccessKey?: string | undefined; sessionToken?: string | undefined } | undefined): void {
  registerSecret(c?.secretAccessKey, 'aws-secret-access-key');
  registerSecret(c?.sessionToken, 'aws-session-token');
}

/** Credentials handed to the process in its environment (the SDK's env provider reads these). */
export function registerEnvironmentSecrets(env: NodeJS.ProcessEnv = process.env): void {
  registerAwsCredentials({ secretAccessKey: env.AWS_SECRET_ACCESS_KEY, sessionToken: env.AWS_SESSION_TOKEN });
}

/**
 * Secrets a command printed that the agent did not hand it (kubeadm generates a certificate
 * key and prints it on the line after `[upload-certs] Using certificate key:`): registered
 * before the output is logged, so every later mention is replaced too.
 */
export function registerSecretsPrintedIn(output: string): void {
  for (const m of output.matchAll(/certificate key:\s*([0-9a-fA-F]{16,})/gi)) registerSecret(m[1], 'certificate-key');
  for (const m of output.matchAll(/--certificate-key[= ]([0-9a-fA-F]{16,})/g)) registerSecret(m[1], 'certificate-key');
  for (const m of output.matchAll(/\b[a-z0-9]{6}\.[a-z0-9]{16}\b/g)) registerSecret(m[0], 'bootstrap-token');
}

const escapeRegExp = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

export function redact(text: string): string {
  let out = text;
  if (registry.literals.size) {
    registry.pattern ??= new RegExp([...registry.literals].sort((a, b) => b.length - a.length).map(escapeRegExp).join('|'), 'g');
    out = out.replace(registry.pattern, REDACTED);
  }
  for (const rule of rules) out = out.replace(rule.pattern, rule.replace as (m: string, ...a: string[]) => string);
  return out;
}

/** Redact every string inside a JSON-like value (for state and messages); keys too. */
export function redactDeep<T>(value: T): T {
  if (typeof value === 'string') return redact(value) as T;
  if (Array.isArray(value)) return value.map((v) => redactDeep(v)) as T;
  if (value instanceof Date) return value;
  if (value && typeof value === 'object') {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value)) out[redact(k)] = redactDeep(v);
    return out as T;
  }
  return value;
}

/** Forgets every registered secret (tests only: the process keeps its secrets for its life). */
export function forgetSecretsForTests(): void {
  registry.literals.clear();
  registry.pattern = undefined;
}
