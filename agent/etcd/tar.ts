import { AgentError } from '../errors.js';
import { ByteReader } from './bytes.js';

/**
 * The few bytes of POSIX ustar the backup archive needs: regular files only, written as a
 * stream (header, data, padding) and read back as a stream. Sizes of 8 GiB and more use the
 * GNU base-256 size field, which GNU tar and bsdtar read.
 *
 * Why not the `tar` or `tar-stream` packages: the archive holds a handful of regular files
 * whose sizes are known before their data, so writing is one 512-byte header function and
 * reading is a loop; both packages bring stream machinery (and dependencies) into the
 * binary for features the agent never uses (links, devices, pax, gzip).
 */

const BLOCK = 512;
const OCTAL_SIZE_MAX = 8 ** 11 - 1;

export interface TarFile {
  name: string;
  size: number;
  mode: number;
  mtime?: Date | undefined;
}

function writeString(buf: Buffer, s: string, off: number, len: number): void {
  const b = Buffer.from(s, 'utf8');
  if (b.length > len) throw new AgentError('TarNameTooLong', `tar field '${s}' is longer than ${len} bytes`);
  b.copy(buf, off);
}

function writeOctal(buf: Buffer, n: number, off: number, len: number): void {
  writeString(buf, `${n.toString(8).padStart(len - 1, '0')}\0`, off, len);
}

/** The 512-byte header of one regular file. */
export function tarHeader(f: TarFile): Buffer {
  const h = Buffer.alloc(BLOCK);
  let name = f.name;
  let prefix = '';
  if (Buffer.byteLength(name) > 100) {
    const cut = name.lastIndexOf('/', 155);
    if (cut <= 0 || Buffer.byteLength(name.slice(cut + 1)) > 100) throw new AgentError('TarNameTooLong', `path too long for ustar: ${name}`);
    prefix = name.slice(0, cut);
    name = name.slice(cut + 1);
  }
  writeString(h, name, 0, 100);
  writeOctal(h, f.mode & 0o7777, 100, 8);
  writeOctal(h, 0, 108, 8);
  writeOctal(h, 0, 116, 8);
  if (f.size <= OCTAL_SIZE_MAX) writeOctal(h, f.size, 124, 12);
  else {
    // GNU base-256: high bit set, big-endian binary in the remaining 11 bytes.
    h[124] = 0x80;
    h.writeBigUInt64BE(BigInt(f.size), 124 + 4);
  }
  writeOctal(h, Math.floor((f.mtime ?? new Date()).getTime() / 1000), 136, 12);
  h.fill(0x20, 148, 156); // checksum field counts as spaces
  h[156] = 0x30; // '0': regular file
  writeString(h, 'ustar\0', 257, 6);
  writeString(h, '00', 263, 2);
  writeString(h, 'root', 265, 32);
  writeString(h, 'root', 297, 32);
  writeString(h, prefix, 345, 155);
  let sum = 0;
  for (const byte of h) sum += byte;
  writeString(h, `${sum.toString(8).padStart(6, '0')}\0 `, 148, 8);
  return h;
}

/** Zero bytes that pad a file's data to a whole block. */
export function tarPadding(size: number): Buffer {
  const rest = size % BLOCK;
  return Buffer.alloc(rest === 0 ? 0 : BLOCK - rest);
}

/** The end-of-archive marker: two zero blocks. */
export const tarEnd = (): Buffer => Buffer.alloc(BLOCK * 2);

/** One whole small file: header, data, padding. */
export function tarEntry(name: string, data: Buffer, mode = 0o644, mtime?: Date): Buffer {
  return Buffer.concat([tarHeader({ name, size: data.length, mode, mtime }), data, tarPadding(data.length)]);
}

export class TarFormatError extends AgentError {
  constructor(message: string) {
    super('BackupCorrupt', message, { hint: 'the archive is damaged or not a zdt-agent backup; try an older backup' });
  }
}

export interface TarEntryReader {
  name: string;
  size: number;
  mode: number;
  /** The data, in pieces; must be read to the end before the next entry. */
  body: AsyncGenerator<Buffer>;
}

function parseOctal(b: Buffer): number {
  const s = b.toString('latin1').replace(/\0.*$/s, '').trim();
  return s === '' ? 0 : Number.parseInt(s, 8);
}

function parseSize(b: Buffer): number {
  if ((b[0]! & 0x80) !== 0) return Number(b.readBigUInt64BE(4));
  return parseOctal(b);
}

/** The regular files of a ustar stream, in order. Other entry types are refused. */
export async function* readTar(source: AsyncIterable<Uint8Array>): AsyncGenerator<TarEntryReader> {
  const r = new ByteReader(source[Symbol.asyncIterator](), (left) => new TarFormatError(`the archive ends ${left} bytes into a file`));
  for (;;) {
    const h = await r.read(BLOCK);
    if (h.length === 0) throw new TarFormatError('the archive ends without its end marker');
    if (h.length < BLOCK) throw new TarFormatError('the archive ends inside a header');
    if (h.every((b) => b === 0)) return;
    let sum = 0;
    for (let i = 0; i < BLOCK; i++) sum += i >= 148 && i < 156 ? 0x20 : h[i]!;
    if (sum !== parseOctal(h.subarray(148, 156))) throw new TarFormatError('a tar header checksum does not match');
    const type = String.fromCharCode(h[156]!);
    if (type !== '0' && type !== '\0') throw new TarFormatError(`unexpected tar entry type '${type}'`);
    const cstr = (s: Buffer) => s.toString('utf8').replace(/\0.*$/s, '');
    const prefix = cstr(h.subarray(345, 500));
    const name = (prefix ? `${prefix}/` : '') + cstr(h.subarray(0, 100));
    const size = parseSize(h.subarray(124, 136));
    const mode = parseOctal(h.subarray(100, 108));
    const pad = tarPadding(size).length;
    const body = r.pieces(size);
    let consumed = false;
    const wrapped = (async function* () {
      yield* body;
      consumed = true;
    })();
    yield { name, size, mode, body: wrapped };
    if (!consumed) for await (const _ of wrapped) void _;
    if (pad) await r.read(pad);
  }
}
