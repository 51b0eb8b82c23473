import type { NatsConnection, Subscription } from '@nats-io/transport-node';
import type { Logger } from '@kloudak/common';

/**
 * Events that revoke a host's client certificates: a re-key and a re-enrollment. Each carries
 * the revoked serials (`data.revokedSerials`), so a session opened since with the new
 * certificate is left alone.
 */
export const HOST_REVOCATION_SUBJECTS = ['kloudak.infra.host.rekeyed', 'kloudak.infra.host.reenrolled'] as const;

/** What the listener acts on: the agent link of this orchestrator. */
export interface HostRevocationTarget {
  hostRevoked(hostId: string, why: string, serials: readonly string[]): void;
}

/** The host id and revoked serials of a published event, or null when it names neither. */
export function revokedHost(payload: unknown): { hostId: string; serials: string[] } | null {
  if (typeof payload !== 'object' || payload === null) return null;
  const p = payload as { id?: unknown; data?: { revokedSerials?: unknown } };
  const serials = p.data?.revokedSerials;
  if (typeof p.id !== 'string' || !Array.isArray(serials)) return null;
  return { hostId: p.id, serials: serials.filter((s): s is string => typeof s === 'string') };
}

/**
 * Ends, on this orchestrator, the sessions of certificates another instance revoked (a re-key or
 * a re-enrollment served there): the outbox relay publishes the event once its transaction
 * commits, and each orchestrator ends its own session on the revoked serials. The instance that
 * served the request has done so already; hearing its own event again is harmless.
 */
export class HostRevocationListener {
  private constructor(private readonly subs: Subscription[]) {}

  /** Start applying the revocations heard on `nc` to `target`. */
  static async start(nc: NatsConnection, target: HostRevocationTarget, log: Logger): Promise<HostRevocationListener> {
    const l = log.child({ component: 'host-revocations' });
    const subs = HOST_REVOCATION_SUBJECTS.map((subject) =>
      nc.subscribe(subject, {
        callback: (err, msg) => {
          if (err) {
            l.warn({ err, subject }, 'host revocation subscription failed');
            return;
          }
          let r: ReturnType<typeof revokedHost> = null;
          try {
            r = revokedHost(msg.json());
          } catch {
            r = null;
          }
          if (r && r.serials.length > 0) target.hostRevoked(r.hostId, subject.endsWith('rekeyed') ? 'the host was re-keyed' : 'the host enrolled again', r.serials);
        },
      }),
    );
    await nc.flush();
    return new HostRevocationListener(subs);
  }

  /** Stop listening (the connection stays: it is the orchestrator's). */
  close(): void {
    for (const s of this.subs) s.unsubscribe();
  }
}
