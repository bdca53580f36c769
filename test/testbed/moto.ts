import { freePort } from './ports.js';
import { answersHttp, startServer } from './process.js';

export interface Moto {
  /** `http://127.0.0.1:<port>`: every AWS service on one port (S3 needs `forcePathStyle`). */
  endpoint: string;
  stop(): Promise<void>;
}

/**
 * A fresh moto_server (all services, empty state) on a free loopback port. Moto picks the
 * service from the SigV4 credential scope of each request, so any SDK client pointed at
 * `endpoint` with static test credentials works. Put `startFidelityProxy` in front of it
 * where moto differs from AWS in ways the agent depends on.
 */
export async function startMoto(): Promise<Moto> {
  const port = await freePort();
  const endpoint = `http://127.0.0.1:${port}`;
  const server = await startServer({
    what: 'moto_server',
    file: 'moto_server',
    args: ['-H', '127.0.0.1', '-p', String(port)],
    // Moto's start (Python imports) takes a few seconds on a busy two-core machine.
    timeoutMs: 60_000,
    ready: () => answersHttp(`${endpoint}/moto-api/`),
  });
  return { endpoint, stop: () => server.stop() };
}
