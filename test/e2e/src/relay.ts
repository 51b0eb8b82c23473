// A TCP relay between an agent and the orchestrator's agent port that a test or a benchmark can
// cut (streams reset, new connections refused) or stall (connections stay open and every byte is
// dropped, as on a path that silently loses packets) without touching either process: how
// "orchestrator unreachable past the lease" is made in the agent-link e2e.
import { createServer, connect, type Server, type Socket } from 'node:net';

/** A TCP relay from a local port to the orchestrator's agent port that its owner can cut. */
export class Relay {
  private readonly sockets = new Set<Socket>();
  private open = true;
  private stalled = false;
  /** Connections that lost bytes to a stall: broken streams, ended by {@link heal}. */
  private readonly damaged = new Set<Socket>();
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
      const forward = (from: Socket, to: Socket): void => {
        from.on('data', (d: Buffer) => {
          if (relay.stalled) {
            relay.damaged.add(from);
            return;
          }
          if (!to.write(d)) from.pause();
        });
        to.on('drain', () => from.resume());
      };
      forward(client, upstream);
      forward(upstream, client);
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

  /**
   * Keep every connection open, accept new ones, and drop every byte either way until
   * {@link heal}: neither end sees the connection end; only its own timeouts (leases, HTTP/2
   * keepalive pings) tell it.
   */
  stall(): void {
    this.stalled = true;
  }

  /**
   * Accept and forward again (the agent reconnects on its own). A connection that lost bytes to a
   * stall is reset: its stream cannot be resumed.
   */
  heal(): void {
    this.open = true;
    this.stalled = false;
    for (const s of this.damaged) s.resetAndDestroy();
    this.damaged.clear();
  }

  /** Cut, and stop listening. */
  async close(): Promise<void> {
    this.cut();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}
