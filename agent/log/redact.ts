/**
 * Secret redaction, applied to every log line, the state file, and every message sent.
 * Kept in one place so that a new kind of secret is added once.
 */

const REDACTED = '[REDACTED]';

interface Rule {
  readonly name: string;
  readonly pattern: RegExp;
  readonly replace: (match: string, ...groups: string[]) => string;
}

const rules: readonly Rule[] = [
  {
    // PEM private keys of any kind (RSA, EC, PKCS#8, OpenSSH), possibly without the END line.
    name: 'private-key',
    pattern: /-----BEGIN ([A-Z0-9 ]*)PRIVATE KEY-----[\s\S]*?(?:-----END \1PRIVATE KEY-----|$)/g,
    replace: (_m, kind) => `-----BEGIN ${kind}PRIVATE KEY----- ${REDACTED}`,
  },
  {
    // kubeadm certificate key: `--certificate-key abc…` / `--certificate-key=abc…` / `certificateKey: abc…`
    name: 'certificate-key',
    pattern: /(--certificate-key[= ]|certificateKey["']?\s*[:=]\s*["']?)([0-9a-fA-F]{16,})/g,
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
      /((?:aws_secret_access_key|secretAccessKey|SecretAccessKey|AWS_SECRET_ACCESS_KEY|aws_session_token|sessionToken|SessionToken|AWS_SESSION_TOKEN)["']?\s*[:=]\s*["']?)([A-Za-z0-9/+=]{16,})/g,
    replace: (_m, prefix) => `${prefix}${REDACTED}`,
  },
  {
    // A bare 40-character secret key next to an access key id (AKIA…/ASIA…).
    name: 'aws-secret-bare',
    pattern: /\b((?:AKIA|ASIA)[A-Z0-9]{16})([\s:,="']+)([A-Za-z0-9/+]{40})\b/g,
    replace: (_m, id, sep) => `${id}${sep}${REDACTED}`,
  },
  {
    // Discovery hashes are not secret, but a token passed as `--token X` in any form is.
    name: 'token-flag',
    pattern: /(--(?:token|discovery-token|tls-bootstrap-token)[= ])(\S+)/g,
    replace: (_m, prefix) => `${prefix}${REDACTED}`,
  },
];

/** Extra literal secrets learned at run time (e.g. a token read from S3). */
const literals = new Set<string>();

export function addSecret(value: string | undefined): void {
  if (value && value.length >= 6) literals.add(value);
}

export function redact(text: string): string {
  let out = text;
  for (const secret of literals) out = out.split(secret).join(REDACTED);
  for (const rule of rules) out = out.replace(rule.pattern, rule.replace as (m: string, ...a: string[]) => string);
  return out;
}

/** Redact every string inside a JSON-like value (for state and messages). */
export function redactDeep<T>(value: T): T {
  if (typeof value === 'string') return redact(value) as T;
  if (Array.isArray(value)) return value.map((v) => redactDeep(v)) as T;
  if (value && typeof value === 'object') {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value)) out[k] = redactDeep(v);
    return out as T;
  }
  return value;
}
