import { createHash, randomBytes } from 'node:crypto';
import http2 from 'node:http2';
import net, { type AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { HpackDecoder, hpackEncodeLiteral } from '../../agent/etcd/hpack.js';
import { openSnapshot, SnapshotParser } from '../../agent/etcd/snapshot.js';
import { PartCutter, type BodyWriter } from '../../agent/etcd/upload.js';

const sha256 = (b: Buffer) => createHash('sha256').update(b).digest();

describe('HPACK decoding (the status of the snapshot call)', () => {
  it('decodes the examples of RFC 7541 C.4: Huffman-coded strings and the dynamic table across header blocks', () => {
    const d = new HpackDecoder();
    expect(d.decode(Buffer.from('828684418cf1e3c2e5f23a6ba0ab90f4ff', 'hex'))).toEqual([
      [':method', 'GET'],
      [':scheme', 'http'],
      [':path', '/'],
      [':authority', 'www.example.com'],
    ]);
    expect(d.decode(Buffer.from('828684be5886a8eb10649cbf', 'hex'))).toEqual([
      [':method', 'GET'],
      [':scheme', 'http'],
      [':path', '/'],
      [':authority', 'www.example.com'],
      ['cache-control', 'no-cache'],
    ]);
    expect(d.decode(Buffer.from('828785bf408825a849e95ba97d7f8925a849e95bb8e8b4bf', 'hex'))).toEqual([
      [':method', 'GET'],
      [':scheme', 'https'],
      [':path', '/index.html'],
      [':authority', 'www.example.com'],
      ['custom-key', 'custom-value'],
    ]);
  });

  it('reads back what the request encoder writes, and refuses an index past the tables', () => {
    const fields: Array<[string, string]> = [
      [':path', '/etcdserverpb.Maintenance/Snapshot'],
      ['x-long', 'v'.repeat(300)],
    ];
    expect(new HpackDecoder().decode(hpackEncodeLiteral(fields))).toEqual(fields);
    expect(() => new HpackDecoder().decode(Buffer.from([0xff, 0x00]))).toThrow(/out of range/);
  });
});

describe('the snapshot parser over one reused read buffer', () => {
  it('copies what it keeps across reads (detach), however the stream is cut', () => {
    const grpc = (msg: Buffer) => Buffer.concat([Buffer.from([0, 0, 0, 0, msg.length]), msg]);
    const blob = randomBytes(40);
    const stream = Buffer.concat([grpc(Buffer.concat([Buffer.from([0x10, 0x02, 0x1a, blob.length]), blob])), grpc(Buffer.from([0x1a, 0x02, 0x41, 0x42]))]);
    for (let size = 1; size <= 12; size++) {
      const read = Buffer.alloc(size);
      const data: Buffer[] = [];
      const p = new SnapshotParser({ blobStart: () => undefined, data: (b) => void data.push(Buffer.from(b)) });
      for (let off = 0; off < stream.length; off += size) {
        const n = stream.copy(read, 0, off, off + size);
        p.push(read.subarray(0, n));
        p.detach();
        read.fill(0xee); // the next read overwrites the buffer
      }
      p.end();
      expect(Buffer.concat(data)).toEqual(Buffer.concat([blob, Buffer.from('AB')]));
    }
  });
});

describe('cutting a written body into parts', () => {
  it('parts of exactly the part size with their SHA-256, whatever the write sizes', async () => {
    const body = randomBytes(100_000);
    const c = new PartCutter(16_384, 100);
    for (let off = 0, n = 1; off < body.length; off += n, n = (n * 7) % 5000) c.write(body.subarray(off, off + n));
    c.end();
    const parts: Buffer[] = [];
    for (let p = await c.next(); p; p = await c.next()) {
      expect(p.digest).toEqual(sha256(p.data));
      parts.push(Buffer.from(p.data));
    }
    expect(parts.map((p) => p.length)).toEqual([...Array(6).fill(16_384), 100_000 - 6 * 16_384]);
    expect(Buffer.concat(parts)).toEqual(body);
    expect(await c.moreThanOnePart).toBe(true);
  });

  it('holds the writer once every buffer is taken, until an upload gives one back', async () => {
    const c = new PartCutter(10, 2);
    c.write(Buffer.alloc(25, 1)); // two full parts, five bytes held
    const wait = c.ready();
    expect(wait).toBeInstanceOf(Promise);
    const first = (await c.next())!;
    const second = (await c.next())!;
    expect([first.data.length, second.data.length]).toEqual([10, 10]);
    let resumed = false;
    void wait!.then(() => (resumed = true));
    await new Promise((r) => setImmediate(r));
    expect(resumed).toBe(false);
    first.release(); // its buffer takes the held bytes
    await wait;
    expect(c.ready()).toBeUndefined();
    c.end();
    expect((await c.next())!.data).toEqual(Buffer.alloc(5, 1));
    expect(await c.next()).toBeUndefined();
  });

  it('says whether the body is more than one part; a failure reaches both sides', async () => {
    const short = new PartCutter(10, 2);
    short.write(Buffer.alloc(10));
    short.end();
    expect(await short.moreThanOnePart).toBe(false);

    const c = new PartCutter(10, 1);
    c.write(Buffer.alloc(15));
    const wait = c.ready()!;
    c.fail(new Error('S3 refused a part'));
    await expect(wait).rejects.toThrow('S3 refused a part');
    await expect(c.next()).rejects.toThrow('S3 refused a part');
    expect(() => c.write(Buffer.alloc(1))).toThrow('S3 refused a part');
  });
});

describe('the snapshot call over HTTP/2 (a node:http2 server speaking the gRPC framing)', () => {
  let server: http2.Http2Server | undefined;
  const sessions = new Set<http2.ServerHttp2Session>();
  const stop = () =>
    new Promise<void>((r) => {
      for (const s of sessions) s.destroy();
      sessions.clear();
      if (server) server.close(() => r());
      else r();
    });
  afterEach(stop);

  /** Serves one Snapshot call: `respond` writes the response on the stream. */
  async function serve(respond: (stream: http2.ServerHttp2Stream) => void, options: http2.ServerOptions = {}): Promise<string> {
    server = http2.createServer(options);
    server.on('session', (s) => sessions.add(s));
    server.on('stream', (stream, headers) => {
      expect(headers[':path']).toBe('/etcdserverpb.Maintenance/Snapshot');
      expect(headers['content-type']).toBe('application/grpc');
      stream.on('data', () => undefined);
      respond(stream);
    });
    await new Promise<void>((r) => server!.listen(0, '127.0.0.1', r));
    return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  }

  /** SnapshotResponse messages as etcd sends them: `db` in blobs of `blob` bytes, then its SHA-256. */
  function messages(db: Buffer, blob: number): Buffer[] {
    const out: Buffer[] = [];
    const blobs: Buffer[] = [];
    for (let off = 0; off < db.length; off += blob) blobs.push(db.subarray(off, off + blob));
    blobs.push(sha256(db));
    let left = db.length;
    for (const b of blobs) {
      left = Math.max(0, left - b.length);
      const remaining = left;
      const varint = (n: number) => {
        const bytes = [];
        for (; n >= 128; n = Math.floor(n / 128)) bytes.push((n % 128) | 0x80);
        return [...bytes, n];
      };
      const msg = Buffer.concat([Buffer.from([0x10, ...varint(remaining), 0x1a, ...varint(b.length)]), b]);
      const prefix = Buffer.alloc(5);
      prefix.writeUInt32BE(msg.length, 1);
      out.push(prefix, msg);
    }
    return out;
  }

  const collect = (): BodyWriter & { bytes(): Buffer } => {
    const got: Buffer[] = [];
    return { write: (b) => void got.push(Buffer.from(b)), ready: () => undefined, bytes: () => Buffer.concat(got) };
  };

  it('streams the database and its digest from padded DATA frames; the trailers carry grpc-status 0', async () => {
    const db = randomBytes(300_000);
    const url = await serve(
      (stream) => {
        stream.respond({ ':status': 200, 'content-type': 'application/grpc' }, { waitForTrailers: true });
        stream.on('wantTrailers', () => stream.sendTrailers({ 'grpc-status': '0' }));
        for (const m of messages(db, 32 * 1024)) stream.write(m);
        stream.end();
      },
      { paddingStrategy: http2.constants.PADDING_STRATEGY_MAX },
    );
    const snap = await openSnapshot({ url });
    expect(snap.size).toBe(db.length + 32);
    const w = collect();
    await snap.writeTo(w);
    expect(w.bytes()).toEqual(Buffer.concat([db, sha256(db)]));
    expect(snap.databaseSha256()).toBe(sha256(db).toString('hex'));
  });

  it("names etcd's gRPC error from the trailers, and a stream that ends early", async () => {
    const refused = await serve((stream) => {
      stream.respond({ ':status': 200, 'content-type': 'application/grpc', 'grpc-status': '7', 'grpc-message': 'etcdserver: permission denied' }, { endStream: true });
    });
    await expect(openSnapshot({ url: refused })).rejects.toThrow('etcd refused the snapshot: gRPC status 7 etcdserver: permission denied');
    await stop();

    const db = randomBytes(100_000);
    const cut = await serve((stream) => {
      stream.respond({ ':status': 200, 'content-type': 'application/grpc' }, { waitForTrailers: true });
      stream.on('wantTrailers', () => stream.sendTrailers({ 'grpc-status': '0' }));
      stream.end(Buffer.concat(messages(db, 32 * 1024).slice(0, 4)));
    });
    const snap = await openSnapshot({ url: cut });
    await expect(snap.writeTo(collect())).rejects.toThrow('the etcd snapshot stream ended after 65536 of 100032 bytes');
  });
});

describe('the snapshot client against a peer that breaks HTTP/2 (a raw TCP server)', () => {
  const servers = new Set<net.Server>();
  afterEach(() => {
    for (const s of servers) s.close();
    servers.clear();
  });
  const rawFrame = (type: number, flags: number, stream: number, payload: Buffer, declared = payload.length) => {
    const h = Buffer.alloc(9);
    h.writeUIntBE(declared, 0, 3);
    h[3] = type;
    h[4] = flags;
    h.writeUInt32BE(stream, 5);
    return Buffer.concat([h, payload]);
  };
  /** Answers the client's preface with `bytes`, written in pieces, and keeps the connection open. */
  async function rawPeer(bytes: () => Buffer[]): Promise<string> {
    const server = net.createServer((sock) => {
      sock.on('error', () => undefined);
      sock.once('data', () => {
        for (const b of bytes()) if (!sock.destroyed) sock.write(b);
      });
    });
    servers.add(server);
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  }

  it('refuses a frame larger than the default SETTINGS_MAX_FRAME_SIZE before buffering it', async () => {
    const url = await rawPeer(() => [rawFrame(4, 0, 0, Buffer.alloc(0)), rawFrame(1, 0, 1, Buffer.alloc(0), 16_777_215)]);
    await expect(openSnapshot({ url })).rejects.toThrow(/frame of 16777215 bytes, more than the 16384 allowed/);
  });

  it('refuses a header block that never ends (CONTINUATION after CONTINUATION) once it passes 64 KiB', async () => {
    const url = await rawPeer(() => [rawFrame(1, 0, 1, Buffer.alloc(16_000, 0x82)), ...Array.from({ length: 8 }, () => rawFrame(9, 0, 1, Buffer.alloc(16_000, 0x82)))]);
    await expect(openSnapshot({ url })).rejects.toThrow(/header block of more than 65536 bytes/);
  });

  it('refuses an HPACK dynamic table larger than the default SETTINGS_HEADER_TABLE_SIZE', () => {
    // 0x3f 0x81 0x20: a dynamic table size update to 31 + 1 + 32 * 128 = 4128.
    expect(() => new HpackDecoder().decode(Buffer.from([0x3f, 0x81, 0x20]))).toThrow('dynamic table size 4128 above the 4096 the client allows');
    expect(new HpackDecoder().decode(Buffer.from([0x3f, 0xe1, 0x1f]))).toEqual([]); // 4096 itself is allowed
  });
});
