import { connect, type NatsConnection } from '@nats-io/transport-node';
import type { Logger } from '@kloudak/common';
import { UnavailableError } from '@kloudak/common';

/**
 * Connect to NATS once at start (failing start-up if the server cannot be reached, so a
 * misconfigured URL is seen at once); the connection then reconnects forever. The outbox relay
 * publishes on it and the event hub listens on it.
 */
export async function connectNats(url: string, log: Logger, name = 'kloudak-orchestrator'): Promise<NatsConnection> {
  let nc: NatsConnection;
  try {
    nc = await connect({ servers: url.split(',').map((s) => s.trim()), name, maxReconnectAttempts: -1, reconnectTimeWait: 500 });
  } catch (err) {
    throw new UnavailableError(`cannot reach NATS at ${url}`, err);
  }
  const l = log.child({ component: 'events' });
  void (async () => {
    for await (const s of nc.status()) {
      if (s.type === 'disconnect' || s.type === 'reconnect') l.warn({ nats: s.type, server: s.server }, 'NATS connection status');
    }
  })().catch(() => undefined);
  return nc;
}

/** Flush and disconnect. */
export async function closeNats(nc: NatsConnection): Promise<void> {
  if (nc.isClosed()) return;
  try {
    await nc.drain();
  } catch {
    await nc.close();
  }
}

/**
 * Whether `nc` is connected now, followed from its status events (a disconnection is seen at once;
 * the client reconnects by itself). Readiness and the gRPC health service read it.
 */
export function connectionState(nc: NatsConnection): { connected(): boolean } {
  let up = !nc.isClosed();
  void (async () => {
    for await (const s of nc.status()) {
      if (s.type === 'disconnect' || s.type === 'close') up = false;
      else if (s.type === 'reconnect') up = true;
    }
  })().catch(() => undefined);
  return { connected: () => up && !nc.isClosed() };
}
