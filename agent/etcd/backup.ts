import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { parse as parseYaml } from 'yaml';
import { AgentError } from '../errors.js';
import { recordBackupMetrics } from './backup-metrics.js';
import { readState } from '../log/state.js';
import { agentVersion } from '../version.js';
import { encryptingWriter } from './envelope.js';
import { EtcdGateway, EtcdUnavailable, localEtcdEndpoint, type EtcdMember, type EtcdStatus } from './gateway.js';
import { openSnapshot } from './snapshot.js';
import { BACKUP_FORMAT, KUBEADM_PREFIX, MANIFEST_NAME, PKI_PREFIX, SNAPSHOT_NAME, type BackupKind, type Manifest, type ManifestPart } from './manifest.js';
import type { EtcdContext } from './restore.js';
import { backupKey, backupLocation, clusterPrefix } from './store.js';
import { tarEnd, tarEntry, tarHeader, tarPadding } from './tar.js';
import { abortStaleUploads, uploadStream, verifyUpload, writeAndWait, type BodyWriter, type ServerSideEncryption } from './upload.js';

/**
 * One backup set, streamed: the local etcd's snapshot (gRPC stream), the PKI
 * directory and the kubeadm config, in one tar with a manifest, optionally envelope-
 * encrypted, uploaded with SHA-256 checksums and verified with HeadObject. Nothing of the
 * snapshot touches the disk.
 */

export interface BackupResult {
  bucket: string;
  key: string;
  kind: BackupKind;
  sizeBytes: number;
  snapshotBytes: number;
  parts: number;
  encryption: string;
  durationMs: number;
  manifest: Manifest;
}

interface FilePart {
  name: string;
  nodePath: string;
  data: Buffer;
  mode: number;
}

/** Every regular file under a directory, sorted, as archive parts under `prefix`. */
function readTree(hostDir: string, nodeDir: string, prefix: string): FilePart[] {
  const out: FilePart[] = [];
  const walk = (rel: string) => {
    const dir = path.join(hostDir, rel);
    for (const e of fs.readdirSync(dir, { withFileTypes: true }).sort((a, b) => (a.name < b.name ? -1 : 1))) {
      const r = rel ? `${rel}/${e.name}` : e.name;
      if (e.isDirectory()) walk(r);
      else if (e.isFile()) {
        const st = fs.statSync(path.join(hostDir, r));
        out.push({ name: `${prefix}${r}`, nodePath: `${nodeDir}/${r}`, data: fs.readFileSync(path.join(hostDir, r)), mode: st.mode & 0o7777 });
      }
    }
  };
  walk('');
  return out;
}

/** The Kubernetes version: boot's state fact, else a ClusterConfiguration's kubernetesVersion. */
function kubernetesVersionOf(ctx: EtcdContext, kubeadmFiles: FilePart[]): string | undefined {
  const fact = readState(ctx.paths.stateFile, agentVersion).facts.kubernetesVersion;
  if (typeof fact === 'string') return fact;
  for (const f of kubeadmFiles.filter((k) => /\.ya?ml$/.test(k.name))) {
    try {
      for (const doc of f.data.toString('utf8').split(/^---$/m)) {
        const v = (parseYaml(doc, { logLevel: 'silent' }) as { kubernetesVersion?: unknown } | null)?.kubernetesVersion;
        if (typeof v === 'string') return v;
      }
    } catch {
      // A config we cannot parse is still backed up; the version is just not known from it.
    }
  }
  return undefined;
}

const sha256hex = (b: Buffer) => createHash('sha256').update(b).digest('hex');

export function serverSideEncryption(ctx: EtcdContext): ServerSideEncryption {
  const keyId = ctx.config.etcd?.backup.kmsKeyId;
  if (keyId) return { mode: 'aws:kms', kmsKeyId: keyId };
  ctx.log.warn('no etcd.backup.kmsKeyId: the backup (it holds the cluster CA keys) is encrypted with SSE-S3 only; configure a KMS key');
  return { mode: 'AES256' };
}

export interface BackupRequest {
  ctx: EtcdContext;
  instanceId: string;
  kind: BackupKind;
  signal?: AbortSignal | undefined;
  now?: Date;
  /** This member's status and the member list, when the caller has just asked etcd. */
  etcd?: { status: EtcdStatus; members: EtcdMember[] } | undefined;
}

/** One backup set, hourly or emergency; its outcome goes to the metrics either way. */
export async function takeBackup(o: BackupRequest): Promise<BackupResult> {
  const started = Date.now();
  try {
    const result = await streamBackup(o);
    recordBackupMetrics(o.ctx, o.kind, { ok: result, at: new Date() });
    return result;
  } catch (err) {
    recordBackupMetrics(o.ctx, o.kind, { failedAfterMs: Date.now() - started, at: new Date() });
    throw err;
  }
}

async function streamBackup(o: BackupRequest): Promise<BackupResult> {
  const { ctx, signal } = o;
  const started = Date.now();
  const loc = backupLocation(ctx.config);
  const b = ctx.config.etcd!.backup;
  const sse = serverSideEncryption(ctx);
  if (b.clientSideEncryption && !b.kmsKeyId) {
    throw new AgentError('BackupKeyMissing', 'etcd.backup.clientSideEncryption needs etcd.backup.kmsKeyId', { hint: 'set etcd.backup.kmsKeyId' });
  }
  const now = o.now ?? new Date();
  const key = backupKey(loc, o.kind, now, o.instanceId);
  const log = ctx.log;

  // Alongside the backup, not before it: the emergency backup's window is short. Older than
  // the longest a backup may run, an unfinished upload belongs to a backup that was killed.
  const staleCleanup = ctx.aws
    .s3()
    .then((s3) =>
      abortStaleUploads({ s3, bucket: loc.bucket, prefix: clusterPrefix(loc), olderThanMs: Math.max(b.timeout, ctx.config.terminate.backupTimeout) * 1000, log, signal }),
    )
    .catch((err: Error) => {
      log.warn('could not abort the unfinished uploads of interrupted backups', { err: err.message, hint: 'allow s3:ListBucketMultipartUploads and s3:AbortMultipartUpload; the bucket lifecycle rule removes them too' });
    });
  const endpoint = localEtcdEndpoint(ctx);
  // The snapshot stream opens while the rest is gathered: etcd fills the stream's window
  // meanwhile (HTTP/2 flow control holds the rest until it is read).
  const snapshot = openSnapshot(endpoint, signal);
  snapshot.catch(() => undefined); // awaited below; a failure before that must not go unhandled
  const gateway = o.etcd ? undefined : new EtcdGateway(endpoint);
  try {
    const [status, members] = gateway ? await Promise.all([gateway.status(signal), gateway.members(signal)]) : [o.etcd!.status, o.etcd!.members];
    const self = members.find((m) => m.id === status.memberId);

    const pkiHost = ctx.paths.at(b.pkiDir);
    const pki = fs.existsSync(pkiHost) ? readTree(pkiHost, b.pkiDir, PKI_PREFIX) : [];
    if (pki.length === 0) log.warn('the backup holds no PKI files', { dir: b.pkiDir });
    const kubeadmHost = ctx.paths.at(b.kubeadmDir);
    const kubeadm = fs.existsSync(kubeadmHost) ? readTree(kubeadmHost, b.kubeadmDir, KUBEADM_PREFIX) : [];
    if (kubeadm.length === 0) log.warn('no kubeadm config to back up', { dir: b.kubeadmDir });
    const files: FilePart[] = [...pki, ...kubeadm];

    const snap = await snapshot;
    const size = snap.size;
    log.info('etcd snapshot stream open', { bytes: size, etcd: status.version, member: self?.name });
    const partsOut: ManifestPart[] = [];
    const manifest: Manifest = {
      format: BACKUP_FORMAT,
      cluster: loc.cluster,
      kind: o.kind,
      createdAt: now.toISOString(),
      instanceId: o.instanceId,
      agentVersion,
      etcd: { version: status.version, memberName: self?.name ?? '', memberId: status.memberId, peerUrls: self?.peerUrls ?? [], clusterId: status.clusterId, revision: status.revision, dbSizeBytes: status.dbSizeBytes },
      kubernetesVersion: kubernetesVersionOf(ctx, kubeadm),
      kubeadmDir: kubeadm.length ? b.kubeadmDir : undefined,
      parts: partsOut,
    };

    // The archive, written straight into the upload's part buffers (no promise per chunk).
    const writeArchive = async (w: BodyWriter) => {
      for (const f of files) {
        partsOut.push({ path: f.name, size: f.data.length, sha256: sha256hex(f.data), mode: f.mode });
        await writeAndWait(w, tarEntry(f.name, f.data, f.mode, now));
      }
      await writeAndWait(w, tarHeader({ name: SNAPSHOT_NAME, size, mode: 0o600, mtime: now }));
      // Not hashed here: the upload hashes every byte for its part checksums already, and etcd
      // ends the stream with its own SHA-256 of the database (about 0.3 s of CPU less for
      // 256 MiB, on a machine that etcd and the upload keep busy; docs/etcd-backup.md).
      await snap.writeTo(w);
      await writeAndWait(w, tarPadding(size));
      const databaseSha256 = snap.databaseSha256();
      if (!databaseSha256) throw new EtcdUnavailable('the etcd snapshot stream ended without its SHA-256');
      partsOut.push({ path: SNAPSHOT_NAME, size, sha256: databaseSha256, digestOf: 'etcd-database', mode: 0o600 });
      await writeAndWait(w, tarEntry(MANIFEST_NAME, Buffer.from(`${JSON.stringify(manifest, null, 2)}\n`), 0o644, now));
      await writeAndWait(w, tarEnd());
    };

    const body = b.clientSideEncryption ? await encryptingWriter(ctx.aws, { kmsKeyId: b.kmsKeyId!, cluster: loc.cluster, signal }, writeArchive) : writeArchive;
    const s3 = await ctx.aws.s3();
    const uploaded = await uploadStream({
      s3,
      bucket: loc.bucket,
      key,
      body,
      sse,
      metadata: {
        'zdt-format': BACKUP_FORMAT,
        'zdt-cluster': loc.cluster,
        'zdt-kind': o.kind,
        'zdt-instance': o.instanceId,
        'zdt-encryption': b.clientSideEncryption ? 'kms-envelope' : 'none',
      },
      partSize: b.partSizeMiB * 1024 * 1024,
      concurrency: b.concurrency,
      log,
      signal,
    });
    await verifyUpload(s3, uploaded, sse, signal);
    const result: BackupResult = {
      bucket: loc.bucket,
      key,
      kind: o.kind,
      sizeBytes: uploaded.size,
      snapshotBytes: size,
      parts: uploaded.parts,
      encryption: `${sse.mode}${b.clientSideEncryption ? '+kms-envelope' : ''}`,
      durationMs: Date.now() - started,
      manifest,
    };
    log.info('etcd backup uploaded and verified', {
      key,
      bytes: uploaded.size,
      parts: uploaded.parts,
      ms: result.durationMs,
      mibPerS: Math.round((uploaded.size / 1048576 / Math.max(1, result.durationMs)) * 1000 * 10) / 10,
    });
    return result;
  } finally {
    gateway?.close();
    // Ends the stream when the backup stopped before reading all of it (a no-op after), also
    // one still opening.
    snapshot.then((snap) => snap.close(), () => undefined);
    await staleCleanup;
  }
}
