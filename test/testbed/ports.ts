import net from 'node:net';

/**
 * A TCP port on 127.0.0.1 that was free a moment ago: the kernel picks it, we release it,
 * the caller binds it next. Another process could take it in between; on a test machine
 * that is rare enough, and the server's start then fails loudly.
 */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.unref();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => {
        if (address && typeof address === 'object') resolve(address.port);
        else reject(new Error('freePort: the kernel gave no port'));
      });
    });
  });
}

/** A listener on 127.0.0.1 that accepts connections and never answers (a hung endpoint). */
export async function silentListener(): Promise<{ endpoint: string; close(): void }> {
  const server = net.createServer(() => {});
  const port = await freePort();
  await new Promise<void>((r) => server.listen(port, '127.0.0.1', r));
  return { endpoint: `http://127.0.0.1:${port}`, close: () => void server.close() };
}
