import { createHash, randomBytes, X509Certificate } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { AgentError, ConfigError } from '../errors.js';
import { writeFileAtomic } from '../host/atomic.js';
import { registerSecret } from '../log/redact.js';
import type { BootContext } from './context.js';
import { sdk } from '../host/aws.js';

/**
 * The cluster's bootstrap material in S3 (`cluster.bootstrap.s3Uri`), as kubecfn kept it:
 *
 *   <s3Uri>/pki/ca.crt, ca.key, sa.key, sa.pub, front-proxy-ca.crt, front-proxy-ca.key,
 *              etcd/ca.crt, etcd/ca.key      the shared cluster PKI (optional: pre-generated)
 *   <s3Uri>/token                             the kubeadm bootstrap token for joins
 *
 * Workers need only pki/ca.crt and token (grant them nothing else); controllers read the
 * whole PKI. Controller 00 uploads what kubeadm generated when nothing was pre-generated, so
 * that the other controllers and the workers find it.
 */

export const SHARED_PKI_FILES = ['ca.crt', 'ca.key', 'sa.key', 'sa.pub', 'front-proxy-ca.crt', 'front-proxy-ca.key', 'etcd/ca.crt', 'etcd/ca.key'] as const;

export function parseS3Uri(uri: string): { bucket: string; prefix: string } {
  const m = /^s3:\/\/([^/]+)\/?(.*)$/.exec(uri);
  if (!m) throw new ConfigError('S3UriInvalid', `${uri} is not an s3://bucket/prefix URI`, { hint: 'check cluster.bootstrap.s3Uri' });
  return { bucket: m[1]!, prefix: m[2]!.replace(/\/+$/, '') };
}

function location(ctx: BootContext): { bucket: string; prefix: string } | undefined {
  const uri = ctx.config.cluster?.bootstrap.s3Uri;
  return uri ? parseS3Uri(uri) : undefined;
}

const keyOf = (prefix: string, name: string) => (prefix ? `${prefix}/${name}` : name);

/** One object of the bootstrap material; undefined when it does not exist. */
export async function readBootstrapObject(ctx: BootContext, name: string): Promise<Buffer | undefined> {
  const loc = location(ctx);
  if (!loc) return undefined;
  const { GetObjectCommand } = await sdk.s3();
  const s3 = await ctx.aws.s3();
  try {
    const out = await s3.send(new GetObjectCommand({ Bucket: loc.bucket, Key: keyOf(loc.prefix, name) }), { abortSignal: ctx.signal });
    return Buffer.from(await out.Body!.transformToByteArray());
  } catch (err) {
    const n = (err as { name?: string }).name;
    if (n === 'NoSuchKey' || n === 'NotFound') return undefined;
    throw new AgentError('BootstrapMaterialUnreadable', `cannot read s3://${loc.bucket}/${keyOf(loc.prefix, name)}: ${(err as Error).message}`, {
      hint: 'check the instance role (s3:GetObject on the bootstrap prefix) and cluster.bootstrap.s3Uri',
      cause: err,
    });
  }
}

export async function writeBootstrapObject(ctx: BootContext, name: string, body: Buffer | string): Promise<void> {
  const loc = location(ctx);
  if (!loc) return;
  const { PutObjectCommand } = await sdk.s3();
  const s3 = await ctx.aws.s3();
  const kms = ctx.config.etcd?.backup.kmsKeyId;
  await s3.send(
    new PutObjectCommand({
      Bucket: loc.bucket,
      Key: keyOf(loc.prefix, name),
      Body: body,
      // It holds CA keys and the join token: always encrypted at rest.
      ServerSideEncryption: kms ? 'aws:kms' : 'AES256',
      ...(kms ? { SSEKMSKeyId: kms } : {}),
    }),
    { abortSignal: ctx.signal },
  );
}

/** The cluster CA certificate: the local one when this node has joined, else the bootstrap material's. */
export async function clusterCaCert(ctx: BootContext): Promise<Buffer | undefined> {
  const local = ctx.paths.at('/etc/kubernetes/pki/ca.crt');
  if (fs.existsSync(local)) return fs.readFileSync(local);
  return readBootstrapObject(ctx, 'pki/ca.crt');
}

/** kubeadm's discovery hash: sha256 of the CA certificate's SubjectPublicKeyInfo. */
export function caCertHash(caPem: Buffer | string): string {
  const spki = new X509Certificate(caPem).publicKey.export({ type: 'spki', format: 'der' });
  return `sha256:${createHash('sha256').update(spki).digest('hex')}`;
}

export const TOKEN_PATTERN = /^[a-z0-9]{6}\.[a-z0-9]{16}$/;

/** A new kubeadm bootstrap token ([a-z0-9]{6}.[a-z0-9]{16}). */
export function newBootstrapToken(): string {
  const alphabet = 'abcdefghijklmnopqrstuvwxyz0123456789';
  const pick = (n: number) => Array.from(randomBytes(n), (b) => alphabet[b % alphabet.length]).join('');
  return `${pick(6)}.${pick(16)}`;
}

export async function readJoinToken(ctx: BootContext): Promise<string | undefined> {
  const raw = await readBootstrapObject(ctx, 'token');
  if (!raw) return undefined;
  const token = raw.toString('utf8').trim();
  if (!TOKEN_PATTERN.test(token)) {
    throw new AgentError('BootstrapTokenInvalid', `the bootstrap token in ${ctx.config.cluster?.bootstrap.s3Uri}/token is not of the form [a-z0-9]{6}.[a-z0-9]{16}`, {
      hint: "write a token made by 'kubeadm token generate'",
    });
  }
  registerSecret(token, 'bootstrap-token');
  return token;
}

/**
 * Copies the shared PKI from S3 into /etc/kubernetes/pki (keys 0600), leaving files that
 * exist (restored from a backup, or an earlier run); returns the files written.
 */
export async function installSharedPki(ctx: BootContext, files: readonly string[] = SHARED_PKI_FILES): Promise<string[]> {
  const written: string[] = [];
  const dir = ctx.paths.at('/etc/kubernetes/pki');
  for (const f of files) {
    const target = path.join(dir, f);
    if (fs.existsSync(target)) continue;
    const body = await readBootstrapObject(ctx, `pki/${f}`);
    if (!body) continue;
    writeFileAtomic(target, body, f.endsWith('.key') ? 0o600 : 0o644);
    written.push(f);
  }
  return written;
}

/** Uploads the shared PKI kubeadm generated (only the files S3 does not have yet). */
export async function uploadSharedPki(ctx: BootContext): Promise<string[]> {
  const uploaded: string[] = [];
  for (const f of SHARED_PKI_FILES) {
    const local = ctx.paths.at(`/etc/kubernetes/pki/${f}`);
    if (!fs.existsSync(local)) continue;
    if (await readBootstrapObject(ctx, `pki/${f}`)) continue;
    await writeBootstrapObject(ctx, `pki/${f}`, fs.readFileSync(local));
    uploaded.push(f);
  }
  return uploaded;
}
