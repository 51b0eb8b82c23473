import { connect, type NatsConnection } from '@nats-io/transport-node';
import type { Logger } from '@kloudak/common';
import { UnavailableError } from '@kloudak/common';
import type { EventBus } from './bus.js';

/**
 * The EventBus over NATS. It connects once at start (failing start-up if the server cannot be
 * reached, so a misconfigured URL is seen at once) and then reconnects forever; while
 * disconnected, the client buffers what is published and sends it on reconnection.
 */
export class NatsEventBus implements EventBus {
  private constructor(
    private readonly nc: NatsConnection,
    private readonly log: Logger,
  ) {}

  static async connect(url: string, log: Logger, name = 'kloudak-orchestrator'): Promise<NatsEventBus> {
    let nc: NatsConnection;
    try {
      nc = await connect({ servers: url.split(',').map((s) => s.trim()), name, maxReconnectAttempts: -1, reconnectTimeWait: 1000 });
    } catch (err) {
      throw new UnavailableError(`cannot reach NATS at ${url}`, err);
    }
    const bus = new NatsEventBus(nc, log.child({ component: 'events' }));
    void bus.watch();
    return bus;
  }

  private async watch(): Promise<void> {
    for await (const s of this.nc.status()) {
      if (s.type === 'disconnect' || s.type === 'reconnect') this.log.warn({ nats: s.type, server: s.server }, 'NATS connection status');
    }
  }

  publish(subject: string, payload: Record<string, unknown>): void {
    try {
      this.nc.publish(subject, JSON.stringify(payload));
    } catch (err) {
      this.log.error({ err, subject }, 'event not published');
    }
  }

  async close(): Promise<void> {
    if (this.nc.isClosed()) return;
    try {
      await this.nc.drain();
    } catch {
      await this.nc.close();
    }
  }
}
