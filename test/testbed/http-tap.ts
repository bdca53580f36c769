import http from 'node:http';
import { freePort } from './ports.js';

export interface HttpTap {
  endpoint: string;
  stop(): Promise<void>;
}

/** What `onRequest` decides: go on to the target (undefined), answer with this status, or never answer. */
export type TapAnswer = number | 'hang' | void;

/**
 * A pass-through HTTP proxy on a free loopback port that shows every request to `onRequest`
 * first (to count what a client sends); `onRequest` may answer itself by returning a status,
 * or hold the request unanswered ('hang': the connection stays open until the client gives
 * up or `stop()`), and the request then goes no further.
 */
export async function startHttpTap(target: string, onRequest: (req: http.IncomingMessage) => TapAnswer): Promise<HttpTap> {
  const server = http.createServer((req, res) => {
    const answer = onRequest(req);
    if (answer === 'hang') return;
    if (answer !== undefined) return void res.writeHead(answer).end();
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
