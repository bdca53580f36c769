import { createHash } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { SnapshotParser } from '../../agent/etcd/snapshot.js';
import { parseEtcdJson } from '../../agent/etcd/leave.js';
import { selectExpired } from '../../agent/etcd/retention.js';
import { backupKey, parseBackupKey, type BackupObject } from '../../agent/etcd/store.js';
import { readTar, tarEnd, tarEntry, tarHeader, tarPadding } from '../../agent/etcd/tar.js';

async function* chunks(buf: Buffer, size: number): AsyncGenerator<Buffer> {
  for (let i = 0; i < buf.length; i += size) yield buf.subarray(i, i + size);
}

describe('the backup tar', () => {
  it('is read back by GNU tar, and by readTar in odd chunk sizes', async () => {
    const long = `pki/${'d'.repeat(80)}/${'f'.repeat(60)}.crt`;
    const archive = Buffer.concat([tarEntry('pki/ca.key', Buffer.from('secret\n'), 0o600), tarEntry(long, Buffer.alloc(1000, 7)), tarEntry('empty', Buffer.alloc(0)), tarEnd()]);
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'zdt-tar-'));
    try {
      fs.writeFileSync(path.join(dir, 'a.tar'), archive);
      const list = spawnSync('tar', ['-tvf', path.join(dir, 'a.tar')], { encoding: 'utf8' });
      expect(list.status).toBe(0);
      expect(list.stdout).toMatch(/-rw------- root\/root\s+7 .* pki\/ca\.key/);
      expect(list.stdout).toContain(long);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
    for (const size of [1, 100, 511, 513, 4096]) {
      const got: Array<[string, number, string]> = [];
      for await (const e of readTar(chunks(archive, size))) {
        const parts: Buffer[] = [];
        for await (const c of e.body) parts.push(c);
        got.push([e.name, e.mode, createHash('sha256').update(Buffer.concat(parts)).digest('hex').slice(0, 8)]);
      }
      expect(got.map((g) => g[0])).toEqual(['pki/ca.key', long, 'empty']);
      expect(got[0]![1]).toBe(0o600);
    }
  });

  it('refuses a truncated archive and a damaged header', async () => {
    const good = Buffer.concat([tarEntry('a', Buffer.alloc(2000, 1)), tarEnd()]);
    const read = async (b: Buffer) => {
      for await (const e of readTar(chunks(b, 700))) for await (const _ of e.body) void _;
    };
    await expect(read(good.subarray(0, 1500))).rejects.toMatchObject({ code: 'BackupCorrupt' });
    const bad = Buffer.from(good);
    bad[10] = 0x41;
    await expect(read(bad)).rejects.toThrow(/checksum/);
  });

  it('writes sizes of 8 GiB and more in base-256', () => {
    const h = tarHeader({ name: 'etcd/snapshot.db', size: 9 * 1024 ** 3, mode: 0o600 });
    expect(h[124]).toBe(0x80);
    expect(Number(h.readBigUInt64BE(128))).toBe(9 * 1024 ** 3);
    expect(tarPadding(512)).toHaveLength(0);
    expect(tarPadding(513)).toHaveLength(511);
  });
});

describe('etcd snapshot messages (gRPC SnapshotResponse)', () => {
  /** Runs messages through the parser in the given pieces; what the sink saw. */
  function parse(pieces: Buffer[]): { starts: Array<[number, number]>; data: Buffer } {
    const starts: Array<[number, number]> = [];
    const data: Buffer[] = [];
    const p = new SnapshotParser({ blobStart: (r, l) => void starts.push([r, l]), data: (b) => void data.push(b) });
    for (const piece of pieces) p.push(piece);
    p.end();
    return { starts, data: Buffer.concat(data) };
  }
  const grpc = (msg: Buffer) => Buffer.concat([Buffer.from([0, 0, 0, 0, msg.length]), msg]);

  it('are parsed field by field (header skipped, remaining bytes, blob, version skipped), however the stream is cut', () => {
    const blob = Buffer.from('hello snapshot');
    // header {cluster_id: 1} | remaining_bytes 300 (varint ac 02) | blob | version "3.6.0"
    const first = grpc(
      Buffer.concat([Buffer.from([0x0a, 0x02, 0x08, 0x01]), Buffer.from([0x10, 0xac, 0x02]), Buffer.from([0x1a, blob.length]), blob, Buffer.from([0x22, 0x05]), Buffer.from('3.6.0')]),
    );
    const last = grpc(Buffer.from([0x1a, 0x02, 0x41, 0x42])); // remaining_bytes 0 is left out (proto3)
    const stream = Buffer.concat([first, last]);
    // Every way of cutting the stream in two, and byte by byte.
    const cuts = [...Array.from({ length: stream.length + 1 }, (_, i) => [stream.subarray(0, i), stream.subarray(i)]), [...stream].map((b) => Buffer.from([b]))];
    for (const pieces of cuts) {
      const r = parse(pieces);
      expect(r.starts).toEqual([
        [300, blob.length],
        [0, 2],
      ]);
      expect(r.data.toString()).toBe('hello snapshotAB');
    }
  });

  it('refuses a stream cut inside a message, a compressed message and a field longer than its message', () => {
    const msg = grpc(Buffer.from([0x1a, 0x03, 0x41, 0x42, 0x43]));
    expect(() => parse([msg.subarray(0, msg.length - 1)])).toThrow(/ended inside a message/);
    expect(() => parse([Buffer.from([1, 0, 0, 0, 0])])).toThrow(/compressed/);
    expect(() => parse([Buffer.concat([Buffer.from([0, 0, 0, 0, 3]), Buffer.from([0x1a, 0x05, 0x41])]), Buffer.from('BCDE')])).toThrow(/longer than its frame/);
  });

  it("etcdctl's uint64 ids keep every digit", () => {
    const r = parseEtcdJson<{ members: Array<{ ID: string }> }>('{"members":[{"ID":13668033151171901709,"name":"a"}]}');
    expect(r.members[0]!.ID).toBe('13668033151171901709');
  });
});

describe('backup keys and retention', () => {
  const loc = { bucket: 'b', prefix: 'etcd-backups', cluster: 'prod' };

  it('keys carry kind, UTC time and instance, and parse back', () => {
    const key = backupKey(loc, 'hourly', new Date('2026-01-02T03:04:05.678Z'), 'i-0abc');
    expect(key).toBe('etcd-backups/prod/hourly/20260102T030405Z-i-0abc.tar');
    expect(parseBackupKey(loc, key)).toMatchObject({ kind: 'hourly', instanceId: 'i-0abc', time: new Date('2026-01-02T03:04:05Z') });
    expect(parseBackupKey(loc, 'etcd-backups/prod/hourly/notes.txt')).toBeUndefined();
    expect(parseBackupKey(loc, 'etcd-backups/other/hourly/20260102T030405Z-i-0abc.tar')).toBeUndefined();
  });

  it('keeps the newest per hour for 24 hours and per day for 7 days, and always the newest', () => {
    const now = Date.parse('2026-03-10T12:10:00Z');
    const list: BackupObject[] = [];
    // Two backups an hour for 10 days (a leader change doubled them).
    for (let m = 0; m < 10 * 24 * 60; m += 30) {
      const time = new Date(now - m * 60_000);
      list.push({ key: `k${m}`, kind: 'hourly', time, instanceId: 'i', size: 1 });
    }
    const expired = new Set(selectExpired(list, { hourly: 24, daily: 7 }, undefined).map((b) => b.key));
    const kept = list.filter((b) => !expired.has(b.key));
    const hours = new Set(kept.map((b) => b.time.toISOString().slice(0, 13)));
    const days = new Set(kept.map((b) => b.time.toISOString().slice(0, 10)));
    expect(kept[0]!.key).toBe('k0');
    expect(hours.size).toBe(kept.length); // one per hour at most
    expect(days.size).toBe(7);
    expect(kept.length).toBe(24 + 5); // today and yesterday are covered by the hourly ones
    expect(selectExpired(list, { hourly: 1, daily: 0 }, 'k600').map((b) => b.key)).not.toContain('k600');
  });
});
