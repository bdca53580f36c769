/**
 * The manifest of a backup archive: what it holds, where it came from, and the SHA-256 of
 * every part. It is the archive's last entry, because the snapshot's digest (etcd's, from the
 * end of its stream) is known only once the snapshot has streamed through.
 */

export const BACKUP_FORMAT = 'zdt-agent/etcd-backup/v1';
export const MANIFEST_NAME = 'manifest.json';
export const SNAPSHOT_NAME = 'etcd/snapshot.db';
export const PKI_PREFIX = 'pki/';
export const KUBEADM_PREFIX = 'kubeadm/';

/** etcd ends a snapshot with its SHA-256 of the database: this many bytes. */
export const ETCD_DIGEST_BYTES = 32;

export type BackupKind = 'emergency' | 'hourly';

export interface ManifestPart {
  /** Path inside the archive: etcd/snapshot.db, pki/<path under the PKI dir>, kubeadm/<path under the kubeadm dir>. */
  path: string;
  size: number;
  /** Hex SHA-256 of the part's bytes; with `digestOf: 'etcd-database'`, of the database only. */
  sha256: string;
  /**
   * 'etcd-database' (the snapshot): `sha256` is etcd's own digest of the database, the part
   * without its last 32 bytes, which hold that same digest. The agent records it instead of
   * hashing the snapshot a second time; restore checks both the bytes and the trailer.
   */
  digestOf?: 'etcd-database' | undefined;
  /** File mode (permission bits) to restore with. */
  mode: number;
}

export interface Manifest {
  format: typeof BACKUP_FORMAT;
  cluster: string;
  kind: BackupKind;
  createdAt: string;
  instanceId: string;
  agentVersion: string;
  etcd: { version: string; memberName: string; memberId: string; peerUrls: string[]; clusterId: string; revision: string; dbSizeBytes: number };
  kubernetesVersion: string | undefined;
  /** Node directory the kubeadm configs were read from (restored to the same place). */
  kubeadmDir: string | undefined;
  parts: ManifestPart[];
}
