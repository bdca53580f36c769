import net from 'node:net';
import { freePort } from './ports.js';

export interface TcpRelay {
  /** `127.0.0.1:<port>` to give the client instead of the target. */
  hostPort: string;
  /** Bytes the target has sent to clients so far. */
  bytesFromTarget(): number;
  /** Stops forwarding in both directions; connections stay open (a peer that stopped mid-stream). */
  freeze(): void;
  stop(): Promise<void>;
}

/**
 * A TCP relay on a free loopback port in front of `target` (`host:port`). It sees bytes, not
 * protocols (TLS and HTTP/2 pass through), which is enough to stop a server at a chosen point
 * of a stream: `onBytes` hears the running count of bytes from the target, and `freeze()`
 * holds everything from then on, also what the kernel would still have delivered after the
 * server itself was stopped.
 */
export async function startTcpRelay(target: string, onBytes?: (total: number) => void): Promise<TcpRelay> {
  const [host, port] = [target.slice(0, target.lastIndexOf(':')), Number(target.slice(target.lastIndexOf(':') + 1))];
  const sockets = new Set<net.Socket>();
  let fromTarget = 0;
  let frozen = false;
  const server = net.createServer((client) => {
    const upstream = net.connect({ host, port });
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on('close', () => sockets.delete(s));
      s.on('error', () => {
        client.destroy();
        upstream.destroy();
      });
    }
    client.on('data', (d: Buffer) => {
      if (!frozen) upstream.write(d);
    });
    upstream.on('data', (d: Buffer) => {
      if (frozen) return;
      fromTarget += d.length;
      client.write(d);
      onBytes?.(fromTarget);
    });
    client.on('end', () => upstream.end());
    upstream.on('end', () => client.end());
  });
  const listenPort = await freePort();
  await new Promise<void>((resolve) => server.listen(listenPort, '127.0.0.1', resolve));
  return {
    hostPort: `127.0.0.1:${listenPort}`,
    bytesFromTarget: () => fromTarget,
    freeze: () => {
      frozen = true;
      for (const s of sockets) s.pause();
    },
    stop: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}
