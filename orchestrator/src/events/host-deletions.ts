import type { NatsConnection, Subscription } from '@nats-io/transport-node';
import type { Logger } from '@kloudak/common';

/** The event of a host's deletion (written in the deleting transaction, published by the outbox relay). */
export const HOST_DELETED_SUBJECT = 'kloudak.infra.host.deleted';

/** What the listener acts on: the agent link of this orchestrator. */
export interface HostDeletionTarget {
  hostDeleted(hostId: string): void;
}

/**
 * Ends, on this orchestrator, the session of a host deleted through another instance: with
 * several orchestrators the deleted host's agent may be connected to any of them. The event comes
 * from the outbox (so it is not lost while NATS is down: the relay publishes it when it can); the
 * instance that served the delete has ended its own session already, and hearing its own event
 * again is harmless. Should the event come late, the host's row is gone: the session's next
 * liveness write finds no host and ends it too.
 */
export class HostDeletionListener {
  private constructor(private readonly sub: Subscription) {}

  /** Start applying the deletions heard on `nc` to `target`. */
  static async start(nc: NatsConnection, target: HostDeletionTarget, log: Logger): Promise<HostDeletionListener> {
    const l = log.child({ component: 'host-deletions' });
    const sub = nc.subscribe(HOST_DELETED_SUBJECT, {
      callback: (err, msg) => {
        if (err) {
          l.warn({ err }, 'host deletion subscription failed');
          return;
        }
        let id: unknown;
        try {
          id = (msg.json() as { id?: unknown } | null)?.id;
        } catch {
          id = undefined;
        }
        if (typeof id === 'string') target.hostDeleted(id);
      },
    });
    await nc.flush();
    return new HostDeletionListener(sub);
  }

  /** Stop listening (the connection stays: it is the orchestrator's). */
  close(): void {
    this.sub.unsubscribe();
  }
}
