// A TCP relay between an agent and the orchestrator's agent port that a test or a benchmark can
// cut (streams reset, new connections refused) without touching either process: how "orchestrator
// unreachable past the lease" is made (agent-link e2e, the failover bench's partition).
import { createServer, connect, type Server, type Socket } from 'node:net';

/** A TCP relay from a local port to the orchestrator's agent port that its owner can cut. */
export class Relay {
  private readonly sockets = new Set<Socket>();
  private open = true;
  private constructor(
    private readonly server: Server,
    readonly port: number,
  ) {}

  /** Listen on a free loopback port, relaying each connection to 127.0.0.1:`targetPort`. */
  static async start(targetPort: number): Promise<Relay> {
    const server = createServer();
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const address = server.address();
    const relay = new Relay(server, typeof address === 'object' && address ? address.port : 0);
    server.on('connection', (client) => {
      if (!relay.open) return client.destroy();
      const upstream = connect(targetPort, '127.0.0.1');
      for (const s of [client, upstream]) {
        relay.sockets.add(s);
        s.on('close', () => relay.sockets.delete(s));
        s.on('error', () => undefined);
      }
      client.pipe(upstream).pipe(client);
      client.on('close', () => upstream.destroy());
      upstream.on('close', () => client.destroy());
    });
    return relay;
  }

  /** Reset every connection and refuse new ones until {@link heal}. */
  cut(): void {
    this.open = false;
    for (const s of this.sockets) s.resetAndDestroy();
  }

  /** Accept connections again (the agent reconnects on its own). */
  heal(): void {
    this.open = true;
  }

  /** Cut, and stop listening. */
  async close(): Promise<void> {
    this.cut();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}
