import { createHash, type Hash } from 'node:crypto';
import type { S3Client } from '@aws-sdk/client-s3';
import { AgentError } from '../errors.js';
import type { Logger } from '../log/logger.js';
import { sdk } from '../host/aws.js';

/**
 * A stream to one S3 object without a temporary file: parts of `partSize` bytes are cut
 * from the stream in memory and uploaded `concurrency` at a time, each with its SHA-256
 * (S3 checks it on receipt and refuses a part that does not match). A stream shorter than
 * one part goes up as one PutObject with its SHA-256. Afterwards HeadObject must show the
 * expected size, checksum and encryption before the upload counts.
 *
 * Why not @aws-sdk/lib-storage's Upload: it does the same part cutting, but adds a
 * dependency and hides the part checksums that the verification compares; this is about
 * as long as the code that would configure and check it.
 */

export type ServerSideEncryption = { mode: 'aws:kms'; kmsKeyId: string } | { mode: 'AES256' };

export interface UploadOptions {
  s3: S3Client;
  bucket: string;
  key: string;
  body: BodySource;
  sse: ServerSideEncryption;
  metadata: Record<string, string>;
  partSize: number;
  concurrency: number;
  log: Logger;
  signal?: AbortSignal | undefined;
}

export interface UploadResult {
  bucket: string;
  key: string;
  size: number;
  parts: number;
  /** The checksum S3 reports: base64 SHA-256 of the object, or of the part digests with `-<parts>`. */
  checksumSha256: string;
}

const sha256 = (b: Buffer) => createHash('sha256').update(b).digest();

/**
 * The body's SHA-256 travels as `x-amz-checksum-sha256`, which S3 checks; signing the payload
 * too (what the SDK does for a Buffer body) would hash every byte a second time. With
 * `x-amz-content-sha256: UNSIGNED-PAYLOAD` set before signing, the signer uses it as is
 * (SigV4 with an unsigned payload: the headers, the checksum among them, stay signed).
 */
function unsignedPayload<C extends { middlewareStack: { add: (mw: never, o: { step: 'build'; name: string }) => void } }>(command: C): C {
  const mw = (next: (a: { request: { headers: Record<string, string> } }) => Promise<unknown>) => async (args: { request: { headers: Record<string, string> } }) => {
    args.request.headers['x-amz-content-sha256'] = 'UNSIGNED-PAYLOAD';
    return next(args);
  };
  command.middlewareStack.add(mw as never, { step: 'build', name: 'zdtUnsignedPayload' });
  return command;
}

/**
 * Where a body is written, chunk by chunk. `write` copies the bytes into a part buffer at once;
 * only when every part buffer is taken does it keep the rest of `b` (a slice: `b` must not
 * change afterwards) until a part upload gives one back. Then `ready()` is a promise, and the
 * writer must wait for it before the next write; it rejects when the upload failed.
 */
export interface BodyWriter {
  write(b: Buffer): void;
  ready(): Promise<void> | undefined;
}

/**
 * What is uploaded: a function that writes the body and resolves at its end (the backup's
 * snapshot stream writes each received chunk straight into the part buffers: no promise per
 * chunk).
 */
export type BodySource = (w: BodyWriter) => Promise<void>;

/** Writes `b`, then waits while the writer holds bytes back (every part buffer taken). */
export async function writeAndWait(w: BodyWriter, b: Buffer): Promise<void> {
  w.write(b);
  await w.ready();
}

interface Part {
  data: Buffer;
  /** SHA-256 of `data`. */
  digest: Buffer;
  /** Gives the part's buffer back for the next part (once its upload is done). */
  release(): void;
}

/**
 * Cuts the written bytes into parts of exactly `size` bytes (the last one shorter), copied into
 * at most `maxBuffers` reused buffers: fresh 8 MiB buffers per part cost more in page faults and
 * garbage collection than the copying itself, and the bound keeps memory flat whatever the
 * database size.
 */
export class PartCutter implements BodyWriter {
  private readonly free: Buffer[] = [];
  private buffers = 0;
  private cur: Buffer | undefined;
  private have = 0;
  private hash: Hash | undefined;
  private parts = 0;
  private readonly full: Part[] = [];
  /** Slices written while every buffer was taken, in order. */
  private readonly held: Buffer[] = [];
  private ended = false;
  private error: { err: unknown } | undefined;
  private wakeConsumer: (() => void) | undefined;
  private wakeWriter: { promise: Promise<void>; resolve: () => void; reject: (err: unknown) => void } | undefined;
  private onSecondPart: ((more: boolean) => void) | undefined;
  /** True once a byte beyond the first part is written, false when the body ends within it. */
  readonly moreThanOnePart = new Promise<boolean>((resolve) => (this.onSecondPart = resolve));

  constructor(
    private readonly size: number,
    private readonly maxBuffers: number,
  ) {}

  write(b: Buffer): void {
    if (this.error) throw this.error.err;
    if (this.held.length > 0) {
      this.held.push(b);
      return;
    }
    let off = 0;
    while (off < b.length) {
      if (!this.cur) {
        const buf = this.free.pop() ?? (this.buffers < this.maxBuffers ? (this.buffers++, Buffer.allocUnsafeSlow(this.size)) : undefined);
        if (!buf) {
          this.held.push(off === 0 ? b : b.subarray(off));
          return;
        }
        this.cur = buf;
        this.have = 0;
        this.hash = createHash('sha256');
        if (++this.parts === 2) this.onSecondPart?.(true);
      }
      const n = b.copy(this.cur, this.have, off, Math.min(b.length, off + this.size - this.have));
      // Hashed right after the copy, while the bytes are in the CPU cache: hashing the whole
      // part afterwards reads it from memory again.
      this.hash!.update(this.cur.subarray(this.have, this.have + n));
      this.have += n;
      off += n;
      if (this.have === this.size) this.emit();
    }
  }

  ready(): Promise<void> | undefined {
    if (this.error) return Promise.reject(this.error.err);
    if (this.held.length === 0) return undefined;
    if (!this.wakeWriter) {
      let resolve!: () => void;
      let reject!: (err: unknown) => void;
      const promise = new Promise<void>((res, rej) => ((resolve = res), (reject = rej)));
      this.wakeWriter = { promise, resolve, reject };
    }
    return this.wakeWriter.promise;
  }

  private emit(): void {
    const buf = this.cur!;
    this.full.push({ data: buf.subarray(0, this.have), digest: this.hash!.digest(), release: () => this.release(buf) });
    this.cur = undefined;
    this.have = 0;
    this.wakeConsumer?.();
  }

  private release(buf: Buffer): void {
    this.free.push(buf);
    if (this.held.length === 0) return;
    const held = this.held.splice(0);
    for (const b of held) this.write(b);
    if (this.held.length === 0 && this.wakeWriter) {
      const w = this.wakeWriter;
      this.wakeWriter = undefined;
      w.resolve();
    }
  }

  /** The body is complete. */
  end(): void {
    if (this.held.length > 0) return this.fail(new Error('the body ended while its writer still had to wait'));
    if (this.have > 0) this.emit();
    this.ended = true;
    this.onSecondPart?.(false);
    this.wakeConsumer?.();
  }

  /** The body or the upload failed: both sides see `err` from now on. */
  fail(err: unknown): void {
    this.error ??= { err };
    this.onSecondPart?.(false);
    this.wakeConsumer?.();
    this.wakeWriter?.reject(err);
    this.wakeWriter?.promise.catch(() => undefined);
  }

  /** The next full part; undefined after the last. */
  async next(): Promise<Part | undefined> {
    for (;;) {
      if (this.error) throw this.error.err;
      const part = this.full.shift();
      if (part || this.ended) return part;
      await new Promise<void>((resolve) => (this.wakeConsumer = resolve));
      this.wakeConsumer = undefined;
    }
  }
}

function startWriting(write: BodySource, cutter: PartCutter): void {
  write(cutter).then(
    () => cutter.end(),
    (err: unknown) => cutter.fail(err),
  );
}

export async function uploadStream(o: UploadOptions): Promise<UploadResult> {
  const s3sdk = await sdk.s3();
  const sseParams = o.sse.mode === 'aws:kms' ? { ServerSideEncryption: 'aws:kms' as const, SSEKMSKeyId: o.sse.kmsKeyId } : { ServerSideEncryption: 'AES256' as const };
  const opts = { abortSignal: o.signal };
  const parts = new PartCutter(o.partSize, o.concurrency + 1);
  startWriting(o.body, parts);
  let uploadId: string | undefined;
  try {
    if (!(await parts.moreThanOnePart)) {
      // Small enough for one request.
      const part = await parts.next();
      const firstPart = part?.data ?? Buffer.alloc(0);
      const digest = (part?.digest ?? sha256(firstPart)).toString('base64');
      await o.s3.send(
        unsignedPayload(
          new s3sdk.PutObjectCommand({ Bucket: o.bucket, Key: o.key, Body: firstPart, ContentLength: firstPart.length, ChecksumAlgorithm: 'SHA256', ChecksumSHA256: digest, Metadata: o.metadata, ...sseParams }),
        ),
        opts,
      );
      return { bucket: o.bucket, key: o.key, size: firstPart.length, parts: 1, checksumSha256: digest };
    }
    // Created while the second part fills.
    const created = await o.s3.send(
      new s3sdk.CreateMultipartUploadCommand({ Bucket: o.bucket, Key: o.key, ChecksumAlgorithm: 'SHA256', Metadata: o.metadata, ContentType: 'application/x-tar', ...sseParams }),
      opts,
    );
    uploadId = created.UploadId;
  } catch (err) {
    parts.fail(err);
    throw err;
  }
  if (!uploadId) {
    const err = new AgentError('S3UploadFailed', `S3 gave no upload id for s3://${o.bucket}/${o.key}`, { hint: 'check the S3 endpoint' });
    parts.fail(err);
    throw err;
  }
  const done: Array<{ PartNumber: number; ETag: string; ChecksumSHA256: string; digest: Buffer }> = [];
  let size = 0;
  try {
    const inFlight = new Set<Promise<void>>();
    let n = 0;
    const send = (part: Part) => {
      const body = part.data;
      const PartNumber = ++n;
      size += body.length;
      const digest = part.digest;
      const ChecksumSHA256 = digest.toString('base64');
      const p = o.s3
        .send(
          unsignedPayload(
            new s3sdk.UploadPartCommand({ Bucket: o.bucket, Key: o.key, UploadId: uploadId, PartNumber, Body: body, ContentLength: body.length, ChecksumAlgorithm: 'SHA256', ChecksumSHA256 }),
          ),
          opts,
        )
        .then((r) => {
          done.push({ PartNumber, ETag: r.ETag ?? '', ChecksumSHA256: r.ChecksumSHA256 ?? ChecksumSHA256, digest });
          part.release();
        })
        .finally(() => inFlight.delete(p));
      inFlight.add(p);
      // A failed part must not become an unhandled rejection while the stream is read on.
      p.catch(() => undefined);
      return p;
    };
    const all: Promise<void>[] = [];
    for (let part = await parts.next(); part; part = await parts.next()) {
      while (inFlight.size >= o.concurrency) await Promise.race(inFlight);
      all.push(send(part));
    }
    o.log.debug('stream read; waiting for the last parts', { parts: n, inFlight: inFlight.size });
    await Promise.all(all);
    o.log.debug('parts uploaded; completing the multipart upload', { parts: n });
    done.sort((a, b) => a.PartNumber - b.PartNumber);
    await o.s3.send(
      new s3sdk.CompleteMultipartUploadCommand({
        Bucket: o.bucket,
        Key: o.key,
        UploadId: uploadId,
        MultipartUpload: { Parts: done.map(({ PartNumber, ETag, ChecksumSHA256 }) => ({ PartNumber, ETag, ChecksumSHA256 })) },
      }),
      opts,
    );
  } catch (err) {
    parts.fail(err);
    // Parts of an unfinished upload cost money until a lifecycle rule removes them. Awaited
    // (briefly): a command that exits right after the failure would otherwise drop the request.
    await o.s3.send(new s3sdk.AbortMultipartUploadCommand({ Bucket: o.bucket, Key: o.key, UploadId: uploadId }), { abortSignal: AbortSignal.timeout(5000) }).then(
      () => o.log.info('aborted the multipart upload of the failed backup', { key: o.key }),
      (e: Error) => o.log.warn('could not abort the multipart upload', { key: o.key, err: e.message }),
    );
    throw err;
  }
  const composite = `${sha256(Buffer.concat(done.map((d) => d.digest))).toString('base64')}-${done.length}`;
  return { bucket: o.bucket, key: o.key, size, parts: done.length, checksumSha256: composite };
}

/**
 * Aborts the unfinished multipart uploads under `prefix` (this cluster's backups) that were
 * started longer than `olderThanMs` ago: a backup killed mid-upload (SIGKILL, power loss)
 * cannot abort its own, and its parts cost storage until a bucket lifecycle rule removes
 * them (docs/etcd-backup.md). Younger ones may belong to a backup still running on another
 * controller. Returns the keys of the uploads aborted.
 */
export async function abortStaleUploads(o: {
  s3: S3Client;
  bucket: string;
  prefix: string;
  olderThanMs: number;
  log: Logger;
  signal?: AbortSignal | undefined;
  now?: number;
}): Promise<string[]> {
  const { ListMultipartUploadsCommand, AbortMultipartUploadCommand } = await sdk.s3();
  const cutoff = (o.now ?? Date.now()) - o.olderThanMs;
  const aborted: string[] = [];
  let KeyMarker: string | undefined;
  let UploadIdMarker: string | undefined;
  for (;;) {
    const page = await o.s3.send(new ListMultipartUploadsCommand({ Bucket: o.bucket, Prefix: o.prefix, KeyMarker, UploadIdMarker }), { abortSignal: o.signal });
    for (const u of page.Uploads ?? []) {
      if (!u.Key || !u.UploadId || !u.Initiated || u.Initiated.getTime() > cutoff) continue;
      await o.s3.send(new AbortMultipartUploadCommand({ Bucket: o.bucket, Key: u.Key, UploadId: u.UploadId }), { abortSignal: o.signal });
      o.log.info('aborted an unfinished upload of an interrupted backup', { key: u.Key, initiated: u.Initiated.toISOString() });
      aborted.push(u.Key);
    }
    if (!page.IsTruncated) return aborted;
    KeyMarker = page.NextKeyMarker;
    UploadIdMarker = page.NextUploadIdMarker;
  }
}

/** HeadObject must show the size, SHA-256 and encryption the upload sent. */
export async function verifyUpload(s3: S3Client, u: UploadResult, sse: ServerSideEncryption, signal?: AbortSignal): Promise<void> {
  const { HeadObjectCommand } = await sdk.s3();
  const head = await s3.send(new HeadObjectCommand({ Bucket: u.bucket, Key: u.key, ChecksumMode: 'ENABLED' }), { abortSignal: signal });
  const problems: string[] = [];
  if (head.ContentLength !== u.size) problems.push(`size ${head.ContentLength} instead of ${u.size}`);
  // S3 reports a multipart object's checksum with or without the `-<parts>` suffix depending on the API.
  const base = (s: string | undefined) => s?.split('-')[0];
  if (!head.ChecksumSHA256) problems.push('no SHA-256 checksum');
  else if (base(head.ChecksumSHA256) !== base(u.checksumSha256)) problems.push(`SHA-256 ${head.ChecksumSHA256} instead of ${u.checksumSha256}`);
  if (head.ServerSideEncryption !== sse.mode) problems.push(`encryption ${head.ServerSideEncryption ?? 'none'} instead of ${sse.mode}`);
  if (sse.mode === 'aws:kms' && head.SSEKMSKeyId && !head.SSEKMSKeyId.endsWith(sse.kmsKeyId) && !sse.kmsKeyId.endsWith(head.SSEKMSKeyId)) {
    problems.push(`KMS key ${head.SSEKMSKeyId} instead of ${sse.kmsKeyId}`);
  }
  if (problems.length) {
    throw new AgentError('BackupVerifyFailed', `s3://${u.bucket}/${u.key} does not match what was uploaded: ${problems.join('; ')}`, {
      hint: 'the backup is not trustworthy; check the bucket (versioning, replication rules, default encryption)',
    });
  }
}
