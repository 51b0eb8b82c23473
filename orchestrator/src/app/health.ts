import type { Services } from './services.js';

/** What /readyz answers (its body, without `ready`) and the gRPC health service follows. */
export interface Readiness {
  ready: boolean;
  status: string;
  database: string;
  /** `connected` or `disconnected`; absent when this process has no bus to check. */
  nats?: string;
  pending?: string[];
}

/**
 * Whether this orchestrator can serve: its database answers and every migration is applied. The
 * one definition of "ready": /readyz answers it, and the gRPC health service reports it
 * (grpc/server.ts). NATS is reported, but its loss only makes the instance `degraded`, still
 * ready: every change writes its events to the outbox, which the relay publishes once NATS is
 * back, so requests keep working. Failing readiness on it would take every instance out of its
 * load balancer at once when the bus is down — an outage the outbox exists to prevent.
 */
export async function readiness(s: Services): Promise<Readiness> {
  const nats = s.bus ? { nats: s.bus.connected() ? 'connected' : 'disconnected' } : {};
  try {
    await s.db.ping();
    const pending = await s.db.pending();
    if (pending.length > 0) return { ready: false, status: 'migrations pending', database: s.db.kind, ...nats, pending };
    if (nats.nats === 'disconnected') return { ready: true, status: 'degraded: NATS unreachable (events wait in the outbox)', database: s.db.kind, ...nats, pending };
    return { ready: true, status: 'ready', database: s.db.kind, ...nats, pending };
  } catch {
    return { ready: false, status: 'database unreachable', database: s.db.kind, ...nats };
  }
}
