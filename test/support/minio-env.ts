import { S3Client } from '@aws-sdk/client-s3';
import { startMinio, type Minio } from '../testbed/minio.js';
import { REGION, makeBucket } from './terminate-env.js';

/**
 * MinIO as the S3 of the backup, restore and retention tests: it checks the
 * `x-amz-checksum-sha256` of every PutObject and UploadPart, which moto stores unchecked
 * (test/testbed/README.md, "MinIO").
 */

export interface MinioS3 {
  minio: Minio;
  /** A client with MinIO's credentials, for what a test looks at in the bucket. */
  s3: S3Client;
  endpoint: string;
  /** The AWS credentials for a binary the test starts (the in-process agent has them already). */
  env: { AWS_ACCESS_KEY_ID: string; AWS_SECRET_ACCESS_KEY: string };
  stop(): Promise<void>;
}

/**
 * Starts MinIO with `buckets` made and puts its root credentials into the process's
 * environment, where the agent's clients read theirs: one set for every service, and moto
 * (KMS, EC2 and the rest, at `aws.endpoint`) accepts any. So call it after
 * useTestCredentials (which startAwsWorld calls too). `kmsKeyId`: the name of MinIO's SSE-KMS
 * key; give it the moto KMS key's id when the same `etcd.backup.kmsKeyId` also serves the
 * client-side envelope encryption.
 */
export async function startMinioS3(buckets: readonly string[], o: { kmsKeyId?: string } = {}): Promise<MinioS3> {
  const minio = await startMinio({ region: REGION, ...o });
  try {
    const credentials = { accessKeyId: minio.accessKeyId, secretAccessKey: minio.secretAccessKey };
    const s3 = new S3Client({ region: REGION, endpoint: minio.endpoint, forcePathStyle: true, credentials });
    for (const b of buckets) await makeBucket(s3, b);
    const env = { AWS_ACCESS_KEY_ID: minio.accessKeyId, AWS_SECRET_ACCESS_KEY: minio.secretAccessKey };
    Object.assign(process.env, env);
    delete process.env.AWS_SESSION_TOKEN;
    delete process.env.AWS_PROFILE;
    return {
      minio,
      s3,
      endpoint: minio.endpoint,
      env,
      stop: async () => {
        s3.destroy();
        await minio.stop();
      },
    };
  } catch (err) {
    await minio.stop();
    throw err;
  }
}
