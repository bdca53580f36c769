/**
 * OpenSSH public keys from IAM, checked down to the wire format and written out again from
 * the parsed parts. Nothing of the uploaded text survives except the key type and the
 * base64 blob that was decoded and checked, so an IAM key body can never smuggle options
 * (`command="…"`), a second line, or a key of another type into authorized_keys.
 */

export const KEY_TYPES = [
  'ssh-ed25519',
  'ecdsa-sha2-nistp256',
  'ecdsa-sha2-nistp384',
  'ecdsa-sha2-nistp521',
  'sk-ssh-ed25519@openssh.com',
  'sk-ecdsa-sha2-nistp256@openssh.com',
  'ssh-rsa',
] as const;
export type KeyType = (typeof KEY_TYPES)[number];

export const RSA_MIN_BITS = 2048;
/** OpenSSH's own upper bound (SSH_RSA_MAXIMUM_MODULUS_SIZE). */
const RSA_MAX_BITS = 16384;

/** A checked key: `type` and `blob` (canonical base64) are all an authorized_keys line needs. */
export interface PublicKey {
  type: KeyType;
  blob: string;
  /**
   * Its SHA256 fingerprint, stored by the cache writer so that the hot path can name the
   * owner of an offered key without loading node:crypto (which costs more than the rest).
   */
  sha256?: string | undefined;
}

export type KeyProblem =
  | 'empty'
  | 'several-lines'
  | 'options-or-unknown-type'
  | 'no-blob'
  | 'bad-base64'
  | 'type-mismatch'
  | 'malformed-blob'
  | 'rsa-too-short'
  | 'rsa-too-long';

export type ParseResult = { ok: true; key: PublicKey } | { ok: false; problem: KeyProblem };

const isKeyType = (t: string): t is KeyType => (KEY_TYPES as readonly string[]).includes(t);
const BASE64 = /^[A-Za-z0-9+/]+={0,2}$/;

/** One key body as IAM returns it with Encoding=SSH: `TYPE BASE64 [comment]`, one line. */
export function parsePublicKey(body: string): ParseResult {
  const text = body.replace(/\r?\n$/, '');
  if (text.trim() === '') return { ok: false, problem: 'empty' };
  if (/[\r\n]/.test(text)) return { ok: false, problem: 'several-lines' };
  const fields = text.trim().split(/[ \t]+/);
  const type = fields[0] as string;
  // Options come first in an authorized_keys line; a body that does not start with a known
  // type is either that or a key we do not accept.
  if (!isKeyType(type)) return { ok: false, problem: 'options-or-unknown-type' };
  const b64 = fields[1];
  if (b64 === undefined) return { ok: false, problem: 'no-blob' };
  return checkBlob(type, b64);
}

/** Check a declared type and its base64 blob (also used on cache lines, which hold just these). */
export function checkBlob(type: string, b64: string): ParseResult {
  if (!isKeyType(type)) return { ok: false, problem: 'options-or-unknown-type' };
  if (!BASE64.test(b64) || b64.length % 4 !== 0) return { ok: false, problem: 'bad-base64' };
  const blob = Buffer.from(b64, 'base64');
  // Node's decoder skips what it cannot read; a round trip proves there was nothing to skip.
  if (blob.toString('base64') !== b64) return { ok: false, problem: 'bad-base64' };
  const r = new WireReader(blob);
  const inner = r.string();
  if (inner === undefined) return { ok: false, problem: 'malformed-blob' };
  if (inner.toString('latin1') !== type) return { ok: false, problem: 'type-mismatch' };
  const problem = checkFields(type, r);
  if (problem) return { ok: false, problem };
  if (!r.atEnd()) return { ok: false, problem: 'malformed-blob' };
  return { ok: true, key: { type, blob: b64 } };
}

const CURVES: Record<string, { id: string; pointLength: number }> = {
  'ecdsa-sha2-nistp256': { id: 'nistp256', pointLength: 65 },
  'sk-ecdsa-sha2-nistp256@openssh.com': { id: 'nistp256', pointLength: 65 },
  'ecdsa-sha2-nistp384': { id: 'nistp384', pointLength: 97 },
  'ecdsa-sha2-nistp521': { id: 'nistp521', pointLength: 133 },
};

/** The fields after the type string, per RFC 4253 6.6, RFC 5656 3.1, RFC 8709 4, PROTOCOL.u2f. */
function checkFields(type: KeyType, r: WireReader): KeyProblem | undefined {
  switch (type) {
    case 'ssh-ed25519':
      return r.string()?.length === 32 ? undefined : 'malformed-blob';
    case 'sk-ssh-ed25519@openssh.com':
      if (r.string()?.length !== 32) return 'malformed-blob';
      return r.string() === undefined ? 'malformed-blob' : undefined; // application ("ssh:")
    case 'ecdsa-sha2-nistp256':
    case 'ecdsa-sha2-nistp384':
    case 'ecdsa-sha2-nistp521':
    case 'sk-ecdsa-sha2-nistp256@openssh.com': {
      const curve = CURVES[type] as { id: string; pointLength: number };
      if (r.string()?.toString('latin1') !== curve.id) return 'malformed-blob';
      const q = r.string();
      // Uncompressed point only (0x04 || X || Y), as OpenSSH writes and reads it.
      if (!q || q.length !== curve.pointLength || q[0] !== 0x04) return 'malformed-blob';
      if (type.startsWith('sk-') && r.string() === undefined) return 'malformed-blob';
      return undefined;
    }
    case 'ssh-rsa': {
      const e = r.mpint();
      const n = r.mpint();
      if (!e || !n || e.bits < 2 || !e.odd) return 'malformed-blob';
      if (n.bits < RSA_MIN_BITS) return 'rsa-too-short';
      if (n.bits > RSA_MAX_BITS) return 'rsa-too-long';
      return undefined;
    }
  }
}

class WireReader {
  private off = 0;
  constructor(private readonly buf: Buffer) {}

  string(): Buffer | undefined {
    if (this.off + 4 > this.buf.length) return undefined;
    const len = this.buf.readUInt32BE(this.off);
    if (this.off + 4 + len > this.buf.length) return undefined;
    const s = this.buf.subarray(this.off + 4, this.off + 4 + len);
    this.off += 4 + len;
    return s;
  }

  /** A non-negative mpint (RFC 4251 5): its bit length and parity. */
  mpint(): { bits: number; odd: boolean } | undefined {
    const s = this.string();
    if (!s) return undefined;
    if (s.length === 0) return { bits: 0, odd: false };
    const first = s[0] as number;
    if (first & 0x80) return undefined; // negative
    // Minimal encoding: a leading zero byte only before a byte with its high bit set.
    if (first === 0 && (s.length === 1 || !((s[1] as number) & 0x80))) return undefined;
    const start = first === 0 ? 1 : 0;
    const top = s[start] as number;
    return { bits: (s.length - start - 1) * 8 + (32 - Math.clz32(top)), odd: ((s[s.length - 1] as number) & 1) === 1 };
  }

  atEnd(): boolean {
    return this.off === this.buf.length;
  }
}

/**
 * The authorized_keys line: options from the config, the checked key, and the IAM user name
 * as its comment (IAM names hold no spaces).
 */
export function keyLine(key: PublicKey, options: string, comment: string): string {
  return `${options ? `${options} ` : ''}${key.type} ${key.blob} ${comment}`;
}

/** node:crypto, loaded on first use only (see PublicKey.sha256). */
const hash = (algorithm: 'sha256' | 'md5', key: PublicKey) =>
  process.getBuiltinModule('node:crypto').createHash(algorithm).update(Buffer.from(key.blob, 'base64'));

/** `SHA256:…` as ssh-keygen -l and sshd's %f print it. */
export function fingerprintSha256(key: PublicKey): string {
  return key.sha256 ?? `SHA256:${hash('sha256', key).digest('base64').replace(/=+$/, '')}`;
}

/** `MD5:aa:bb:…`, for sshd configured with FingerprintHash md5. */
export function fingerprintMd5(key: PublicKey): string {
  return `MD5:${hash('md5', key).digest('hex').match(/../g)?.join(':')}`;
}

/** The key with its SHA256 fingerprint, as the cache stores it. */
export function withFingerprint(key: PublicKey): PublicKey {
  return { type: key.type, blob: key.blob, sha256: fingerprintSha256({ type: key.type, blob: key.blob }) };
}

const FINGERPRINT = /^(SHA256:[A-Za-z0-9+/]{43}|MD5:([0-9a-f]{2}:){15}[0-9a-f]{2})$/;

/** A %f value we can compare; anything else is logged as "invalid" and not matched. */
export function isFingerprint(s: string): boolean {
  return FINGERPRINT.test(s);
}

export function fingerprintOf(key: PublicKey, like: string): string {
  return like.startsWith('MD5:') ? fingerprintMd5(key) : fingerprintSha256(key);
}
