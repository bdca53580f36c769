import http from 'node:http';
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
export async function startHttpTap(target: string, onRequest: (req: http.IncomingMessage) => number | TapAnswer | void): Promise<HttpTap> {
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
    req.pipe(up);
  });
  const port = await freePort();
  await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', resolve));
  return {
    endpoint: `http://127.0.0.1:${port}`,
    stop: () => new Promise<void>((resolve) => server.close(() => resolve()).closeAllConnections()),
  };
}
