import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { AgentError } from '../errors.js';
import { sdk, type Aws } from '../host/aws.js';
import { registerSecret } from '../log/redact.js';
import { writeAndWait, type BodyWriter } from './upload.js';

/**
 * Client-side envelope encryption of a backup (etcd.backup.clientSideEncryption): a fresh
 * AES-256 data key from KMS GenerateDataKey per backup, AES-256-GCM over the whole archive
 * as one stream, the KMS-encrypted data key in a small header in front. The header is the
 * GCM additional data, so changing it breaks the tag. Decryption needs kms:Decrypt on the
 * key with the same encryption context (cluster name), so a backup cannot be opened as the
 * backup of another cluster.
 *
 * Layout: `ZDTENC1\n`, uint32 BE header length, header JSON, ciphertext, 16-byte GCM tag.
 */

export const ENVELOPE_MAGIC = Buffer.from('ZDTENC1\n');
const TAG_BYTES = 16;

export interface EnvelopeHeader {
  alg: 'AES-256-GCM';
  kmsKeyId: string;
  /** base64 of the KMS CiphertextBlob of the data key. */
  encryptedDataKey: string;
  iv: string;
  context: Record<string, string>;
}

export const encryptionContext = (cluster: string): Record<string, string> => ({ 'zdt:cluster': cluster, 'zdt:purpose': 'etcd-backup' });

/** A fresh data key and cipher for one backup: the envelope header, then ciphertext, then `final()`. */
async function newEnvelope(aws: Aws, o: { kmsKeyId: string; cluster: string; signal?: AbortSignal | undefined }): Promise<{ header: Buffer; update(b: Buffer): Buffer; final(): Buffer }> {
  const { GenerateDataKeyCommand } = await sdk.kms();
  const kms = await aws.kms();
  const context = encryptionContext(o.cluster);
  const out = await kms.send(new GenerateDataKeyCommand({ KeyId: o.kmsKeyId, KeySpec: 'AES_256', EncryptionContext: context }), { abortSignal: o.signal });
  if (!out.Plaintext || !out.CiphertextBlob) throw new AgentError('KmsNoDataKey', `KMS GenerateDataKey for ${o.kmsKeyId} returned no key`, { hint: 'check the KMS key' });
  // The redactor keeps its text forms for the life of this short process: the price of never
  // seeing the key in a log line or an SDK error, whatever form it is quoted in.
  registerSecret(out.Plaintext, 'kms-data-key');
  const iv = randomBytes(12);
  const header: EnvelopeHeader = { alg: 'AES-256-GCM', kmsKeyId: out.KeyId ?? o.kmsKeyId, encryptedDataKey: Buffer.from(out.CiphertextBlob).toString('base64'), iv: iv.toString('base64'), context };
  const headerBytes = Buffer.from(JSON.stringify(header));
  const len = Buffer.alloc(4);
  len.writeUInt32BE(headerBytes.length);
  const cipher = createCipheriv('aes-256-gcm', Buffer.from(out.Plaintext), iv);
  out.Plaintext.fill(0);
  cipher.setAAD(headerBytes);
  return {
    header: Buffer.concat([ENVELOPE_MAGIC, len, headerBytes]),
    update: (b) => cipher.update(b),
    final: () => Buffer.concat([cipher.final(), cipher.getAuthTag()]),
  };
}

/**
 * Encrypts a body that is written (the backup's archive): the returned function writes the
 * header, then `write`'s plaintext through the cipher, then the tag into its writer.
 */
export async function encryptingWriter(
  aws: Aws,
  o: { kmsKeyId: string; cluster: string; signal?: AbortSignal | undefined },
  write: (w: BodyWriter) => Promise<void>,
): Promise<(w: BodyWriter) => Promise<void>> {
  const envelope = await newEnvelope(aws, o);
  return async (w) => {
    w.write(envelope.header);
    await write({
      write: (b) => {
        const c = envelope.update(b);
        if (c.length) w.write(c);
      },
      ready: () => w.ready(),
    });
    await writeAndWait(w, envelope.final());
  };
}

/** True when the first bytes of an object are an envelope header. */
export const isEnvelope = (first: Buffer): boolean => first.length >= ENVELOPE_MAGIC.length && first.subarray(0, ENVELOPE_MAGIC.length).equals(ENVELOPE_MAGIC);

/**
 * Decrypts an envelope stream. The plaintext is unauthenticated until the generator has
 * finished without throwing: callers stage it and use it only after that.
 */
export async function* decryptStream(aws: Aws, cluster: string, source: AsyncIterable<Buffer>, signal?: AbortSignal): AsyncGenerator<Buffer> {
  const it = source[Symbol.asyncIterator]();
  let buf = Buffer.alloc(0);
  const need = async (n: number) => {
    while (buf.length < n) {
      const r = await it.next();
      if (r.done) throw corrupt('the encrypted backup ends inside its header');
      buf = Buffer.concat([buf, r.value]);
    }
  };
  await need(ENVELOPE_MAGIC.length + 4);
  if (!isEnvelope(buf)) throw corrupt('not an encrypted zdt-agent backup');
  const hlen = buf.readUInt32BE(ENVELOPE_MAGIC.length);
  if (hlen > 64 * 1024) throw corrupt('the encryption header is too long');
  await need(ENVELOPE_MAGIC.length + 4 + hlen);
  const headerBytes = buf.subarray(ENVELOPE_MAGIC.length + 4, ENVELOPE_MAGIC.length + 4 + hlen);
  buf = buf.subarray(ENVELOPE_MAGIC.length + 4 + hlen);
  let header: EnvelopeHeader;
  try {
    header = JSON.parse(headerBytes.toString('utf8')) as EnvelopeHeader;
  } catch {
    throw corrupt('the encryption header is not JSON');
  }
  if (header.alg !== 'AES-256-GCM') throw corrupt(`unknown encryption ${header.alg}`);
  if (header.context['zdt:cluster'] !== cluster) {
    throw new AgentError('BackupOfAnotherCluster', `the backup was encrypted for cluster '${header.context['zdt:cluster']}', not '${cluster}'`, {
      hint: 'restore only backups of this cluster (cluster.name)',
    });
  }
  const { DecryptCommand } = await sdk.kms();
  const kms = await aws.kms();
  let key: Uint8Array;
  try {
    const out = await kms.send(
      new DecryptCommand({ CiphertextBlob: Buffer.from(header.encryptedDataKey, 'base64'), EncryptionContext: header.context, KeyId: header.kmsKeyId }),
      { abortSignal: signal },
    );
    if (!out.Plaintext) throw new Error('no plaintext');
    registerSecret(out.Plaintext, 'kms-data-key');
    key = out.Plaintext;
  } catch (err) {
    throw new AgentError('KmsDecryptFailed', `KMS could not decrypt the backup's data key: ${(err as Error).message}`, {
      hint: `allow kms:Decrypt on ${header.kmsKeyId} for this instance role`,
      cause: err,
    });
  }
  const decipher = createDecipheriv('aes-256-gcm', Buffer.from(key), Buffer.from(header.iv, 'base64'));
  key.fill(0);
  decipher.setAAD(headerBytes);
  // Hold back the last 16 bytes: they are the tag once the stream ends.
  let tail = buf;
  for (;;) {
    const r = await it.next();
    if (r.done) break;
    tail = tail.length ? Buffer.concat([tail, r.value]) : Buffer.from(r.value);
    if (tail.length > TAG_BYTES) {
      const p = decipher.update(tail.subarray(0, tail.length - TAG_BYTES));
      tail = tail.subarray(tail.length - TAG_BYTES);
      if (p.length) yield p;
    }
  }
  if (tail.length !== TAG_BYTES) throw corrupt('the encrypted backup is cut off');
  decipher.setAuthTag(tail);
  let last: Buffer;
  try {
    last = decipher.final();
  } catch {
    throw corrupt('the encrypted backup fails its authentication tag (damaged or tampered with)');
  }
  if (last.length) yield last;
}

function corrupt(message: string): AgentError {
  return new AgentError('BackupCorrupt', message, { hint: 'try an older backup' });
}
