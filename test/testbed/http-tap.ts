import http from 'node:http';
import { Transform } from 'node:stream';
import { freePort } from './ports.js';

export interface HttpTap {
  endpoint: string;
  stop(): Promise<void>;
}

/**
 * An answer of the tap's own: a status, with a body, or with `write` streaming one (for
 * answers that never end).
 */
export interface TapAnswer {
  status: number;
  body?: string | Buffer;
  write?: (res: http.ServerResponse) => void;
}

export interface TapOptions {
  /**
   * Rewrites the body of each forwarded request it returns a function for, chunk by chunk
   * (`offset`: where the chunk starts in the body). The headers go on unchanged, so a rewrite
   * keeps the length. The S3 tests flip one byte of an UploadPart body: its
   * `x-amz-checksum-sha256` no longer matches, while the signature (over the headers, with
   * UNSIGNED-PAYLOAD) still does, and the server has to find the damage itself.
   */
  rewriteBody?: (req: http.IncomingMessage) => ((chunk: Buffer, offset: number) => Buffer) | undefined;
}

/**
 * A pass-through HTTP proxy on a free loopback port that shows every request to `onRequest`
 * first (to count what a client sends); `onRequest` may answer itself by returning a status
 * or a TapAnswer, and the request then goes no further.
 *
 * The IMDS tests put it in front of amazon-ec2-metadata-mock to serve what AEMM cannot: a
 * body that is not JSON, `null`, an answer of megabytes or one that never ends. AEMM serves
 * its identity document from typed fields and user data from base64 config, so the real
 * token handshake goes through AEMM and only the answer under test is replaced.
 */
export async function startHttpTap(target: string, onRequest: (req: http.IncomingMessage) => number | TapAnswer | void, o: TapOptions = {}): Promise<HttpTap> {
  const server = http.createServer((req, res) => {
    const answer = onRequest(req);
    if (typeof answer === 'number') return void res.writeHead(answer).end();
    if (answer !== undefined) {
      res.writeHead(answer.status);
      if (answer.write) return answer.write(res);
      return void res.end(answer.body);
    }
    const up = http.request(`${target}${req.url}`, { method: req.method, headers: req.headers }, (r) => {
      res.writeHead(r.statusCode ?? 502, r.headers);
      r.pipe(res);
    });
    up.on('error', () => res.writeHead(502).end());
    const rewrite = o.rewriteBody?.(req);
    if (!rewrite) return void req.pipe(up);
    let offset = 0;
    const rewriting = new Transform({
      transform(chunk: Buffer, _enc, done) {
        const out = rewrite(chunk, offset);
        offset += chunk.length;
        done(null, out);
      },
    });
    req.pipe(rewriting).pipe(up);
  });
  const port = await freePort();
  await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', resolve));
  return {
    endpoint: `http://127.0.0.1:${port}`,
    stop: () => new Promise<void>((resolve) => server.close(() => resolve()).closeAllConnections()),
  };
}

/**
 * TapOptions that flip the byte at `at` in the body of the first request `pick` chooses (and
 * of no other); `damaged()` says whether that happened.
 */
export function damageOnce(pick: (req: http.IncomingMessage) => boolean, at = 0): Required<TapOptions> & { damaged(): boolean } {
  let damaged = false;
  return {
    damaged: () => damaged,
    rewriteBody: (req) => {
      if (damaged || !pick(req)) return undefined;
      damaged = true;
      return (chunk, offset) => {
        const i = at - offset;
        if (i < 0 || i >= chunk.length) return chunk;
        const out = Buffer.from(chunk);
        out.writeUInt8(out.readUInt8(i) ^ 0xff, i);
        return out;
      };
    },
  };
}
