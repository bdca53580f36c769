/**
 * Exact byte counts from an async stream of chunks, copying as little as possible: `pieces`
 * hands out slices of the chunks as they arrive; only a `read` that spans chunks copies.
 */
export class ByteReader {
  private buf: Buffer = Buffer.alloc(0);
  private done = false;

  constructor(
    private readonly it: AsyncIterator<Uint8Array>,
    /** The error for a stream that ends `left` bytes before a `pieces` call is satisfied. */
    private readonly endedEarly: (left: number) => Error,
  ) {}

  private async fill(n: number): Promise<void> {
    while (this.buf.length < n && !this.done) {
      const r = await this.it.next();
      if (r.done) this.done = true;
      else {
        const chunk = Buffer.isBuffer(r.value) ? r.value : Buffer.from(r.value.buffer, r.value.byteOffset, r.value.byteLength);
        this.buf = this.buf.length === 0 ? chunk : Buffer.concat([this.buf, chunk]);
      }
    }
  }

  /** Exactly n bytes, or fewer at the end of the stream. */
  async read(n: number): Promise<Buffer> {
    await this.fill(n);
    const out = this.buf.subarray(0, n);
    this.buf = this.buf.subarray(out.length);
    return out;
  }

  /** n bytes in the pieces they arrive in. */
  async *pieces(n: number): AsyncGenerator<Buffer> {
    let left = n;
    while (left > 0) {
      if (this.buf.length === 0) await this.fill(1);
      if (this.buf.length === 0) throw this.endedEarly(left);
      const take = Math.min(left, this.buf.length);
      const out = this.buf.subarray(0, take);
      this.buf = this.buf.subarray(take);
      left -= take;
      yield out;
    }
  }
}
