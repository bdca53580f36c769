import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { freePort } from './ports.js';
import { startServer, testbedBinDir } from './process.js';

/**
 * MinIO, a real S3 server, for what moto cannot show: MinIO checks `x-amz-checksum-sha256`
 * of PutObject and UploadPart and refuses a body that does not match
 * (`XAmzContentChecksumMismatch`), as S3 does, where moto 5.2.1 stores the header unchecked.
 * It also does SSE-KMS with one static key (`MINIO_KMS_SECRET_KEY`), whose name is the only
 * key id it accepts. Built by minio/build.sh into `<cache>/bin/minio/minio`.
 *
 * Only S3: KMS for the agent's client-side envelope encryption stays on moto (point
 * `aws.endpoints.s3` at MinIO and `aws.endpoint` at moto).
 */
export interface Minio {
  /** `http://127.0.0.1:<port>`: path-style S3 (`s3ForcePathStyle: true`). */
  endpoint: string;
  region: string;
  accessKeyId: string;
  secretAccessKey: string;
  /** The static SSE-KMS key's name: the `kmsKeyId` to configure. */
  kmsKeyId: string;
  /** The data directory (one drive): objects and multipart parts live under it. */
  dataDir: string;
  pid: number;
  stop(): Promise<void>;
}

export function minioBinary(): string {
  return testbedBinDir('minio', 'minio');
}

export async function minioAvailable(): Promise<boolean> {
  return fs.access(minioBinary()).then(
    () => true,
    () => false,
  );
}

/**
 * `accessKeyId`/`secretAccessKey`: the root credentials (MinIO wants at least 3 and 8
 * characters), random by default. The agent's clients read credentials from the environment,
 * one set for every service: tests put MinIO's there (test/support/minio-env.ts), which moto
 * accepts as it accepts any.
 */
export async function startMinio(o: { region?: string; kmsKeyId?: string; accessKeyId?: string; secretAccessKey?: string } = {}): Promise<Minio> {
  const [port, consolePort] = [await freePort(), await freePort()];
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'zdt-minio-'));
  const dataDir = path.join(dir, 'data');
  await fs.mkdir(dataDir);
  const endpoint = `http://127.0.0.1:${port}`;
  const region = o.region ?? 'eu-central-1';
  const kmsKeyId = o.kmsKeyId ?? 'zdt-backup-key';
  const accessKeyId = o.accessKeyId ?? 'zdtminio';
  const secretAccessKey = o.secretAccessKey ?? randomBytes(18).toString('base64url');
  if (accessKeyId.length < 3 || secretAccessKey.length < 8) throw new Error('MinIO wants an access key of 3 characters or more and a secret key of 8 or more');
  const { CI: _ci, ...env } = process.env;
  const server = await startServer({
    what: 'minio',
    file: minioBinary(),
    args: ['server', dataDir, '--address', `127.0.0.1:${port}`, '--console-address', `127.0.0.1:${consolePort}`, '--quiet'],
    env: {
      ...env,
      MINIO_ROOT_USER: accessKeyId,
      MINIO_ROOT_PASSWORD: secretAccessKey,
      MINIO_REGION: region,
      MINIO_KMS_SECRET_KEY: `${kmsKeyId}:${randomBytes(32).toString('base64')}`,
      MINIO_BROWSER: 'off',
      MINIO_UPDATE: 'off',
      // Its certificate directory (~/.minio/certs) under the temporary directory.
      HOME: dir,
    },
    timeoutMs: 60_000,
    // The health check answers 503 until the drive is initialised; an unsigned request is
    // refused with AccessDenied (403) only once the IAM subsystem, which checks every
    // signature, has loaded (503 XMinioServerNotInitialized before).
    ready: async () =>
      (await fetch(`${endpoint}/minio/health/ready`, { signal: AbortSignal.timeout(1000) })).ok &&
      (await fetch(`${endpoint}/`, { signal: AbortSignal.timeout(1000) })).status === 403,
  });
  return {
    endpoint,
    region,
    accessKeyId,
    secretAccessKey,
    kmsKeyId,
    dataDir,
    pid: server.pid,
    stop: async () => {
      await server.stop();
      await fs.rm(dir, { recursive: true, force: true });
    },
  };
}
