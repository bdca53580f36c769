/**
 * HPACK (RFC 7541) decoding, the little of it the snapshot stream's HTTP/2 client needs: the
 * response headers and trailers of one gRPC call (`:status`, `grpc-status`, `grpc-message`),
 * which grpc-go encodes with the static and dynamic tables and Huffman-coded strings. Tables
 * from golang.org/x/net/http2/hpack (the RFC's appendices).
 */

export class HpackError extends Error {}

/** RFC 7541 Appendix A: the static table (index 1 is the first entry). */
const STATIC: ReadonlyArray<readonly [string, string]> = [
  [':authority', ''], [':method', 'GET'], [':method', 'POST'], [':path', '/'], [':path', '/index.html'], [':scheme', 'http'],
  [':scheme', 'https'], [':status', '200'], [':status', '204'], [':status', '206'], [':status', '304'], [':status', '400'],
  [':status', '404'], [':status', '500'], ['accept-charset', ''], ['accept-encoding', 'gzip, deflate'], ['accept-language', ''],
  ['accept-ranges', ''], ['accept', ''], ['access-control-allow-origin', ''], ['age', ''], ['allow', ''], ['authorization', ''],
  ['cache-control', ''], ['content-disposition', ''], ['content-encoding', ''], ['content-language', ''], ['content-length', ''],
  ['content-location', ''], ['content-range', ''], ['content-type', ''], ['cookie', ''], ['date', ''], ['etag', ''],
  ['expect', ''], ['expires', ''], ['from', ''], ['host', ''], ['if-match', ''], ['if-modified-since', ''],
  ['if-none-match', ''], ['if-range', ''], ['if-unmodified-since', ''], ['last-modified', ''], ['link', ''], ['location', ''],
  ['max-forwards', ''], ['proxy-authenticate', ''], ['proxy-authorization', ''], ['range', ''], ['referer', ''], ['refresh', ''],
  ['retry-after', ''], ['server', ''], ['set-cookie', ''], ['strict-transport-security', ''], ['transfer-encoding', ''],
  ['user-agent', ''], ['vary', ''], ['via', ''], ['www-authenticate', ''],
];

/** RFC 7541 Appendix B: the Huffman code of each byte value and its length in bits. */
const HUFFMAN_CODES = [
  0x1ff8, 0x7fffd8, 0xfffffe2, 0xfffffe3, 0xfffffe4, 0xfffffe5, 0xfffffe6, 0xfffffe7, 0xfffffe8, 0xffffea, 0x3ffffffc, 0xfffffe9,
  0xfffffea, 0x3ffffffd, 0xfffffeb, 0xfffffec, 0xfffffed, 0xfffffee, 0xfffffef, 0xffffff0, 0xffffff1, 0xffffff2, 0x3ffffffe,
  0xffffff3, 0xffffff4, 0xffffff5, 0xffffff6, 0xffffff7, 0xffffff8, 0xffffff9, 0xffffffa, 0xffffffb, 0x14, 0x3f8, 0x3f9, 0xffa,
  0x1ff9, 0x15, 0xf8, 0x7fa, 0x3fa, 0x3fb, 0xf9, 0x7fb, 0xfa, 0x16, 0x17, 0x18, 0x0, 0x1, 0x2, 0x19, 0x1a, 0x1b, 0x1c, 0x1d,
  0x1e, 0x1f, 0x5c, 0xfb, 0x7ffc, 0x20, 0xffb, 0x3fc, 0x1ffa, 0x21, 0x5d, 0x5e, 0x5f, 0x60, 0x61, 0x62, 0x63, 0x64, 0x65, 0x66,
  0x67, 0x68, 0x69, 0x6a, 0x6b, 0x6c, 0x6d, 0x6e, 0x6f, 0x70, 0x71, 0x72, 0xfc, 0x73, 0xfd, 0x1ffb, 0x7fff0, 0x1ffc, 0x3ffc,
  0x22, 0x7ffd, 0x3, 0x23, 0x4, 0x24, 0x5, 0x25, 0x26, 0x27, 0x6, 0x74, 0x75, 0x28, 0x29, 0x2a, 0x7, 0x2b, 0x76, 0x2c, 0x8, 0x9,
  0x2d, 0x77, 0x78, 0x79, 0x7a, 0x7b, 0x7ffe, 0x7fc, 0x3ffd, 0x1ffd, 0xffffffc, 0xfffe6, 0x3fffd2, 0xfffe7, 0xfffe8, 0x3fffd3,
  0x3fffd4, 0x3fffd5, 0x7fffd9, 0x3fffd6, 0x7fffda, 0x7fffdb, 0x7fffdc, 0x7fffdd, 0x7fffde, 0xffffeb, 0x7fffdf, 0xffffec,
  0xffffed, 0x3fffd7, 0x7fffe0, 0xffffee, 0x7fffe1, 0x7fffe2, 0x7fffe3, 0x7fffe4, 0x1fffdc, 0x3fffd8, 0x7fffe5, 0x3fffd9,
  0x7fffe6, 0x7fffe7, 0xffffef, 0x3fffda, 0x1fffdd, 0xfffe9, 0x3fffdb, 0x3fffdc, 0x7fffe8, 0x7fffe9, 0x1fffde, 0x7fffea,
  0x3fffdd, 0x3fffde, 0xfffff0, 0x1fffdf, 0x3fffdf, 0x7fffeb, 0x7fffec, 0x1fffe0, 0x1fffe1, 0x3fffe0, 0x1fffe2, 0x7fffed,
  0x3fffe1, 0x7fffee, 0x7fffef, 0xfffea, 0x3fffe2, 0x3fffe3, 0x3fffe4, 0x7ffff0, 0x3fffe5, 0x3fffe6, 0x7ffff1, 0x3ffffe0,
  0x3ffffe1, 0xfffeb, 0x7fff1, 0x3fffe7, 0x7ffff2, 0x3fffe8, 0x1ffffec, 0x3ffffe2, 0x3ffffe3, 0x3ffffe4, 0x7ffffde, 0x7ffffdf,
  0x3ffffe5, 0xfffff1, 0x1ffffed, 0x7fff2, 0x1fffe3, 0x3ffffe6, 0x7ffffe0, 0x7ffffe1, 0x3ffffe7, 0x7ffffe2, 0xfffff2, 0x1fffe4,
  0x1fffe5, 0x3ffffe8, 0x3ffffe9, 0xffffffd, 0x7ffffe3, 0x7ffffe4, 0x7ffffe5, 0xfffec, 0xfffff3, 0xfffed, 0x1fffe6, 0x3fffe9,
  0x1fffe7, 0x1fffe8, 0x7ffff3, 0x3fffea, 0x3fffeb, 0x1ffffee, 0x1ffffef, 0xfffff4, 0xfffff5, 0x3ffffea, 0x7ffff4, 0x3ffffeb,
  0x7ffffe6, 0x3ffffec, 0x3ffffed, 0x7ffffe7, 0x7ffffe8, 0x7ffffe9, 0x7ffffea, 0x7ffffeb, 0xffffffe, 0x7ffffec, 0x7ffffed,
  0x7ffffee, 0x7ffffef, 0x7fffff0, 0x3ffffee,
];
const HUFFMAN_BITS = [
  13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28,
  6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, 5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, 13, 6, 7, 7, 7, 7,
  7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, 15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6,
  5, 6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, 20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23, 24, 24,
  22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, 22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, 21, 21,
  22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23, 26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, 19, 21,
  26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, 20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23, 26, 27,
  26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26,
];

/** Code length and code (as `bits * 2^32 + code`) to the byte it stands for. */
const HUFFMAN_DECODE = new Map<number, number>(HUFFMAN_CODES.map((code, byte) => [HUFFMAN_BITS[byte]! * 2 ** 32 + code, byte]));

function huffmanDecode(b: Buffer): string {
  const out: number[] = [];
  let code = 0;
  let bits = 0;
  for (const byte of b) {
    for (let i = 7; i >= 0; i--) {
      code = code * 2 + ((byte >> i) & 1);
      bits++;
      const sym = HUFFMAN_DECODE.get(bits * 2 ** 32 + code);
      if (sym !== undefined) {
        out.push(sym);
        code = 0;
        bits = 0;
      } else if (bits > 30) throw new HpackError('invalid Huffman code');
    }
  }
  // Padding: fewer than 8 bits, all ones (the EOS code's first bits).
  if (bits > 7 || code !== 2 ** bits - 1) throw new HpackError('invalid Huffman padding');
  return Buffer.from(out).toString('latin1');
}

/** SETTINGS_HEADER_TABLE_SIZE's default (RFC 9113 6.5.2), which the client never raises. */
const HEADER_TABLE_SIZE = 4096;

/** One decoder per connection: the dynamic table lives across header blocks. */
export class HpackDecoder {
  private dynamic: Array<[string, string]> = [];
  private size = 0;
  private maxSize = HEADER_TABLE_SIZE;

  /** The header fields of one complete header block, in order. */
  decode(block: Buffer): Array<[string, string]> {
    const out: Array<[string, string]> = [];
    let pos = 0;
    const int = (prefixBits: number): number => {
      const max = 2 ** prefixBits - 1;
      let v = block[pos++]! & max;
      if (v < max) return v;
      let m = 1;
      for (;;) {
        if (pos >= block.length || m > 2 ** 28) throw new HpackError('truncated integer');
        const b = block[pos++]!;
        v += (b & 0x7f) * m;
        m *= 128;
        if ((b & 0x80) === 0) return v;
      }
    };
    const str = (): string => {
      if (pos >= block.length) throw new HpackError('truncated string');
      const huffman = (block[pos]! & 0x80) !== 0;
      const len = int(7);
      if (pos + len > block.length) throw new HpackError('truncated string');
      const raw = block.subarray(pos, pos + len);
      pos += len;
      return huffman ? huffmanDecode(raw) : raw.toString('latin1');
    };
    const entry = (index: number): readonly [string, string] => {
      const e = index >= 1 && index <= STATIC.length ? STATIC[index - 1] : this.dynamic[index - STATIC.length - 1];
      if (!e) throw new HpackError(`header index ${index} out of range`);
      return e;
    };
    while (pos < block.length) {
      const b = block[pos]!;
      if (b & 0x80) {
        const [name, value] = entry(int(7));
        out.push([name, value]);
      } else if (b & 0x40) {
        const index = int(6);
        const name = index ? entry(index)[0] : str();
        const value = str();
        out.push([name, value]);
        this.add(name, value);
      } else if (b & 0x20) {
        // Bounded by SETTINGS_HEADER_TABLE_SIZE, which the client leaves at its default.
        const max = int(5);
        if (max > HEADER_TABLE_SIZE) throw new HpackError(`dynamic table size ${max} above the ${HEADER_TABLE_SIZE} the client allows`);
        this.maxSize = max;
        this.evict(this.maxSize);
      } else {
        // Literal without indexing (0000) or never indexed (0001).
        const index = int(4);
        const name = index ? entry(index)[0] : str();
        out.push([name, str()]);
      }
    }
    return out;
  }

  private add(name: string, value: string): void {
    const size = name.length + value.length + 32;
    this.evict(this.maxSize - size);
    if (size > this.maxSize) return;
    this.dynamic.unshift([name, value]);
    this.size += size;
  }

  private evict(to: number): void {
    while (this.size > Math.max(0, to) && this.dynamic.length > 0) {
      const [n, v] = this.dynamic.pop()!;
      this.size -= n.length + v.length + 32;
    }
  }
}

/** A header block of literal fields without indexing or Huffman coding: simple, and the request is sent once. */
export function hpackEncodeLiteral(fields: Array<[string, string]>): Buffer {
  const parts: Buffer[] = [];
  const int = (v: number, prefixBits: number, first: number): void => {
    const max = 2 ** prefixBits - 1;
    if (v < max) return void parts.push(Buffer.from([first | v]));
    const bytes = [first | max];
    for (v -= max; v >= 128; v = Math.floor(v / 128)) bytes.push((v % 128) | 0x80);
    bytes.push(v);
    parts.push(Buffer.from(bytes));
  };
  for (const [name, value] of fields) {
    parts.push(Buffer.from([0x00]));
    for (const s of [name, value]) {
      const b = Buffer.from(s, 'latin1');
      int(b.length, 7, 0);
      parts.push(b);
    }
  }
  return Buffer.concat(parts);
}
