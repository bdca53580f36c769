import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { CommandContext } from '../context.js';
import { AgentError } from '../errors.js';
import { fileError, writeFileAtomic } from '../host/atomic.js';
import { decryptStream, isEnvelope } from './envelope.js';
import { BACKUP_FORMAT, KUBEADM_PREFIX, MANIFEST_NAME, PKI_PREFIX, SNAPSHOT_NAME, ETCD_DIGEST_BYTES, type Manifest, type ManifestPart } from './manifest.js';
import { backupLocation, listBackups, type BackupObject } from './store.js';
import { readTar } from './tar.js';
import { sdk } from '../host/aws.js';

/**
 * Restore from a backup set (docs/etcd-backup.md): download, verify every checksum into a
 * staging directory inside the data dir, and only then write the PKI and the kubeadm config
 * and run `etcdctl snapshot restore`, whose `member/` directory is renamed into place.
 * Used by `zdt-agent etcd restore` and by boot's disaster recovery.
 */

/** What the etcd code needs of a command context (boot and `etcd restore` pass theirs). */
export type EtcdContext = Pick<CommandContext, 'paths' | 'config' | 'log' | 'aws' | 'exec'>;

export interface RestoreOptions {
  ctx: EtcdContext;
  /** 'latest': the newest valid backup of this cluster (emergency or hourly); or one S3 key. */
  from: 'latest' | string;
  /** Node path of the etcd data dir (e.g. /var/lib/etcd); must hold no `member/` yet. */
  dataDir: string;
  /** This member's etcd name; default: the name in the backup. */
  memberName?: string | undefined;
  /** This member's peer URL; default: the backed-up member's first peer URL. */
  peerUrl?: string | undefined;
  /** --initial-cluster; default `<memberName>=<peerUrl>` (a one-member cluster, the DR case). */
  initialCluster?: string | undefined;
  /** --initial-cluster-token; default the cluster name. */
  clusterToken?: string | undefined;
  /** Node path the PKI goes to; default etcd.backup.pkiDir (/etc/kubernetes/pki). */
  pkiDir?: string | undefined;
  /** Restore the PKI and kubeadm config only (no snapshot): a volume that still has its data. */
  pkiOnly?: boolean | undefined;
  /** Limit for `etcdctl snapshot restore`; default 10 minutes. */
  timeoutMs?: number | undefined;
  signal?: AbortSignal | undefined;
}

export interface RestoreResult {
  key: string;
  manifest: Manifest;
  /** Node paths written (PKI files, kubeadm config). */
  files: string[];
  dataDir: string;
  durationMs: number;
}

const LATEST_TRIES = 5;

/** The cluster's backups, newest first (emergency and hourly). */
export async function findBackups(ctx: EtcdContext, signal?: AbortSignal): Promise<BackupObject[]> {
  return listBackups(await ctx.aws.s3(), backupLocation(ctx.config), ['emergency', 'hourly'], signal);
}

export async function restoreBackup(o: RestoreOptions): Promise<RestoreResult> {
  const { ctx } = o;
  const started = Date.now();
  const dataHost = o.ctx.paths.at(o.dataDir);
  if (!o.pkiOnly && fs.existsSync(path.join(dataHost, 'member'))) {
    throw new AgentError('DataDirNotEmpty', `${o.dataDir}/member exists: etcd data is already there`, {
      hint: 'restore only onto a blank data dir; move the old member/ away first if it is really to be replaced',
    });
  }
  let keys: string[];
  if (o.from === 'latest') {
    const all = await findBackups(ctx, o.signal);
    if (all.length === 0) {
      const loc = backupLocation(ctx.config);
      throw new AgentError('NoBackupFound', `no backup of cluster ${loc.cluster} in s3://${loc.bucket}/${loc.prefix}/${loc.cluster}/`, {
        hint: 'check etcd.backup.bucket/prefix and cluster.name, or bootstrap a new cluster',
      });
    }
    keys = all.slice(0, LATEST_TRIES).map((b) => b.key);
  } else keys = [o.from];

  let lastError: unknown;
  for (const key of keys) {
    try {
      const r = await restoreOne(o, key);
      return { ...r, durationMs: Date.now() - started };
    } catch (err) {
      // An explicit key, an abort, or a refusal ends here; 'latest' moves on to an older backup.
      if (o.from !== 'latest' || o.signal?.aborted || (err instanceof AgentError && (err.code === 'DataDirNotEmpty' || err.code === 'CommandTimedOut'))) throw err;
      lastError = err;
      ctx.log.warn('backup not usable; trying the next older one', { key, err: (err as Error).message });
    }
  }
  throw lastError;
}

/**
 * The digests a manifest part may name, from one pass over the entry: SHA-256 of all of it,
 * and for an etcd snapshot SHA-256 of all but its last 32 bytes (the database) and those
 * bytes (etcd's digest of the database).
 */
class EntryDigests {
  private readonly whole = createHash('sha256');
  private readonly head = createHash('sha256');
  private held: Buffer = Buffer.alloc(0);

  update(c: Buffer): void {
    this.whole.update(c);
    if (c.length >= ETCD_DIGEST_BYTES) {
      this.head.update(this.held);
      this.head.update(c.subarray(0, c.length - ETCD_DIGEST_BYTES));
      this.held = Buffer.from(c.subarray(c.length - ETCD_DIGEST_BYTES));
    } else {
      const all = Buffer.concat([this.held, c]);
      this.head.update(all.subarray(0, Math.max(0, all.length - ETCD_DIGEST_BYTES)));
      this.held = all.subarray(Math.max(0, all.length - ETCD_DIGEST_BYTES));
    }
  }

  matches(part: ManifestPart): boolean {
    if (part.digestOf === 'etcd-database') {
      const db = this.head.digest('hex');
      return this.held.length === ETCD_DIGEST_BYTES && db === part.sha256 && this.held.toString('hex') === part.sha256;
    }
    return this.whole.digest('hex') === part.sha256;
  }
}

async function restoreOne(o: RestoreOptions, key: string): Promise<Omit<RestoreResult, 'durationMs'>> {
  const { ctx, signal } = o;
  const loc = backupLocation(ctx.config);
  const s3sdk = await sdk.s3();
  const s3 = await ctx.aws.s3();
  const head = await s3.send(new s3sdk.HeadObjectCommand({ Bucket: loc.bucket, Key: key }), { abortSignal: signal });
  const owner = head.Metadata?.['zdt-cluster'];
  if (owner !== undefined && owner !== loc.cluster) throw anotherCluster(key, owner, loc.cluster);
  ctx.log.info('restoring from backup', { bucket: loc.bucket, key, bytes: head.ContentLength });

  const dataHost = ctx.paths.at(o.dataDir);
  fs.mkdirSync(dataHost, { recursive: true, mode: 0o700 });
  const staging = path.join(dataHost, `.zdt-restore-${process.pid}`);
  fs.rmSync(staging, { recursive: true, force: true });
  fs.mkdirSync(staging, { mode: 0o700 });
  try {
    const got = await s3.send(new s3sdk.GetObjectCommand({ Bucket: loc.bucket, Key: key }), { abortSignal: signal });
    const body = got.Body as Readable | undefined;
    if (!body) throw corrupt(key, 'S3 returned no body');
    const plain = await maybeDecrypt(ctx, loc.cluster, body, signal);
    const staged = new Map<string, { size: number; digests: EntryDigests; file: string | undefined; mode: number }>();
    let manifestBytes: Buffer | undefined;
    for await (const entry of readTar(plain)) {
      if (entry.name.includes('..') || path.isAbsolute(entry.name)) throw corrupt(key, `unsafe path ${entry.name} in the archive`);
      if (entry.name === MANIFEST_NAME) {
        const chunks: Buffer[] = [];
        for await (const c of entry.body) chunks.push(c);
        manifestBytes = Buffer.concat(chunks);
        continue;
      }
      const h = new EntryDigests();
      // The snapshot is only hashed when no snapshot is wanted (pkiOnly).
      const keep = !(o.pkiOnly && entry.name === SNAPSHOT_NAME);
      const file = keep ? path.join(staging, 'files', entry.name) : undefined;
      if (file) {
        fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
        const hashing = async function* () {
          for await (const c of entry.body) {
            h.update(c);
            yield c;
          }
        };
        try {
          await pipeline(Readable.from(hashing()), fs.createWriteStream(file, { mode: 0o600 }), { signal });
        } catch (err) {
          // A write error (a full etcd volume) names the file; other errors are the stream's own.
          throw (err as NodeJS.ErrnoException).syscall ? fileError(err, file, 'write') : err;
        }
      } else {
        for await (const c of entry.body) h.update(c);
      }
      staged.set(entry.name, { size: entry.size, digests: h, file, mode: entry.mode });
    }
    if (!manifestBytes) throw corrupt(key, 'the archive has no manifest');
    let manifest: Manifest;
    try {
      manifest = JSON.parse(manifestBytes.toString('utf8')) as Manifest;
    } catch {
      throw corrupt(key, 'the manifest is not JSON');
    }
    if (manifest.format !== BACKUP_FORMAT) throw corrupt(key, `unknown backup format ${String(manifest.format)}`);
    if (manifest.cluster !== loc.cluster) throw anotherCluster(key, manifest.cluster, loc.cluster);
    for (const part of manifest.parts) {
      const s = staged.get(part.path);
      if (!s) throw corrupt(key, `${part.path} is in the manifest but not in the archive`);
      if (s.size !== part.size || !s.digests.matches(part)) throw corrupt(key, `${part.path} does not match its SHA-256 in the manifest`);
    }
    for (const name of staged.keys()) if (!manifest.parts.some((p) => p.path === name)) throw corrupt(key, `${name} is in the archive but not in the manifest`);
    if (!o.pkiOnly && !staged.has(SNAPSHOT_NAME)) throw corrupt(key, 'the archive has no etcd snapshot');
    ctx.log.info('backup verified', { key, parts: manifest.parts.length, etcd: manifest.etcd.version, kubernetes: manifest.kubernetesVersion });

    // Everything matched: now the node is changed.
    const written: string[] = [];
    const pkiDir = o.pkiDir ?? ctx.config.etcd?.backup.pkiDir ?? '/etc/kubernetes/pki';
    for (const part of manifest.parts) {
      const s = staged.get(part.path)!;
      let target: string | undefined;
      if (part.path.startsWith(PKI_PREFIX)) target = `${pkiDir}/${part.path.slice(PKI_PREFIX.length)}`;
      else if (part.path.startsWith(KUBEADM_PREFIX)) target = `${manifest.kubeadmDir ?? ctx.config.etcd?.backup.kubeadmDir ?? '/etc/kubernetes/zdt-agent'}/${part.path.slice(KUBEADM_PREFIX.length)}`;
      if (!target || !s.file) continue;
      writeFileAtomic(ctx.paths.at(target), fs.readFileSync(s.file), part.mode || 0o600);
      written.push(target);
    }
    ctx.log.info('restored PKI and kubeadm config', { files: written.length, pkiDir });

    if (!o.pkiOnly) await restoreSnapshot(o, manifest, path.join(staging, 'files', SNAPSHOT_NAME), staging);
    return { key, manifest, files: written, dataDir: o.dataDir };
  } finally {
    fs.rmSync(staging, { recursive: true, force: true });
  }
}

async function restoreSnapshot(o: RestoreOptions, manifest: Manifest, snapshotFile: string, staging: string): Promise<void> {
  const { ctx } = o;
  const name = o.memberName ?? manifest.etcd.memberName;
  const peerUrl = o.peerUrl ?? manifest.etcd.peerUrls[0];
  if (!name || !peerUrl) {
    throw new AgentError('RestoreMemberUnknown', 'the etcd member name or peer URL is not known', { hint: 'pass memberName and peerUrl (boot derives them from the controller slot)' });
  }
  const out = path.join(staging, 'etcd');
  await ctx.exec(
    'etcdctl',
    [
      'snapshot',
      'restore',
      snapshotFile,
      `--data-dir=${out}`,
      `--name=${name}`,
      `--initial-advertise-peer-urls=${peerUrl}`,
      `--initial-cluster=${o.initialCluster ?? `${name}=${peerUrl}`}`,
      `--initial-cluster-token=${o.clusterToken ?? manifest.cluster}`,
    ],
    { timeoutMs: o.timeoutMs ?? 600_000, env: { ETCDCTL_API: '3' }, hint: 'check that etcdctl (3.4 or newer) is installed and the data dir has room' },
  );
  const target = path.join(ctx.paths.at(o.dataDir), 'member');
  fs.renameSync(path.join(out, 'member'), target);
  ctx.log.info('etcd snapshot restored', { dataDir: o.dataDir, member: name, peerUrl, revision: manifest.etcd.revision });
}

/** The archive bytes: the object itself, or its decryption when it is envelope-encrypted. */
async function maybeDecrypt(ctx: EtcdContext, cluster: string, body: Readable, signal: AbortSignal | undefined): Promise<AsyncIterable<Buffer>> {
  const it = (body as AsyncIterable<Buffer>)[Symbol.asyncIterator]();
  const first = await it.next();
  const head = first.done ? Buffer.alloc(0) : Buffer.from(first.value);
  async function* rest(): AsyncGenerator<Buffer> {
    if (head.length) yield head;
    for (;;) {
      const r = await it.next();
      if (r.done) return;
      yield r.value;
    }
  }
  return isEnvelope(head) ? decryptStream(ctx.aws, cluster, rest(), signal) : rest();
}

function corrupt(key: string, why: string): AgentError {
  return new AgentError('BackupCorrupt', `${key}: ${why}`, { hint: 'try an older backup (--from KEY)' });
}

function anotherCluster(key: string, owner: string, cluster: string): AgentError {
  return new AgentError('BackupOfAnotherCluster', `${key} is a backup of cluster '${owner}', not of '${cluster}'`, {
    hint: 'a cluster is only restored from its own backups; check cluster.name and --from',
  });
}
