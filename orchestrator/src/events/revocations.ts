import type { NatsConnection, Subscription } from '@nats-io/transport-node';
import type { Logger } from '@kloudak/common';

/**
 * Subjects whose events mean "these users' tokens were refused": `kloudak.infra.user.revoked`
 * (logout, password change, removal from a workspace, workspace deletion; the payload's `id` is
 * the user's) and any later user event. A payload without a user id clears everything.
 */
export const REVOCATION_SUBJECTS = 'kloudak.infra.user.>';

/** What the listener keeps current: an orchestrator's cache of authenticated tokens. */
export interface RevocationTarget {
  forgetUsers(userIds: Iterable<string>): void;
  clear(): void;
  /** No revocation can be heard (NATS disconnected): stop using what is cached. */
  pause(): void;
  resume(): void;
}

/** The user id an event is about, if it names one (`id` of a user event, or `userId`). */
export function revokedUser(payload: unknown): string | undefined {
  if (typeof payload !== 'object' || payload === null) return undefined;
  const p = payload as Record<string, unknown>;
  if (typeof p['userId'] === 'string') return p['userId'];
  if (typeof p['id'] === 'string') return p['id'];
  return undefined;
}

/**
 * Applies token revocations — every orchestrator's, this one's too — to this orchestrator's
 * cache of principals, so that a token refused on any instance stops working on every instance
 * within moments of the commit (the outbox relay publishes the `user.revoked` event; the cache's
 * own TTL is only the bound for changes that send no event). While NATS is disconnected events
 * may be missed, so the cache is paused until the connection is back.
 */
export class RevocationListener {
  private closed = false;

  private constructor(private readonly sub: Subscription) {}

  /** Start applying the revocations heard on `nc` to `target`. */
  static async start(nc: NatsConnection, target: RevocationTarget, log: Logger): Promise<RevocationListener> {
    const l = log.child({ component: 'revocations' });
    const sub = nc.subscribe(REVOCATION_SUBJECTS, {
      callback: (err, msg) => {
        if (err) {
          l.warn({ err }, 'revocation subscription failed: authenticated tokens are not cached any more');
          target.pause();
          return;
        }
        let user: string | undefined;
        try {
          user = revokedUser(msg.json());
        } catch {
          user = undefined;
        }
        if (user === undefined) target.clear();
        else target.forgetUsers([user]);
      },
    });
    // The subscription is registered with the server once this round trip returns: no
    // revocation published from then on is missed.
    await nc.flush();
    const listener = new RevocationListener(sub);
    void (async () => {
      for await (const s of nc.status()) {
        if (listener.closed) return;
        if (s.type === 'disconnect') {
          l.warn({ nats: s.type }, 'NATS disconnected: authenticated tokens are not cached until it is back');
          target.pause();
        } else if (s.type === 'reconnect') {
          target.resume();
        }
      }
    })().catch(() => undefined);
    return listener;
  }

  /** Stop listening (the connection stays: it is the orchestrator's). */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.sub.unsubscribe();
  }
}
