import type { Clock } from '../clock.js';

/** What the cache needs of a principal: whose it is, and when its token expires (s since the epoch). */
export interface CachedPrincipal {
  userId: string;
  exp: number;
}

interface Entry<P> {
  principal: Readonly<P>;
  /** Clock time (ms) from which the entry is no longer used. */
  until: number;
}

/**
 * Principals of recently authenticated tokens, for a short while, so that a client sending many
 * requests does not pay a signature check and a user lookup on each (list bench: ~1 ms of CPU a
 * request together).
 *
 * Staleness is bounded three ways:
 * - every entry lives at most `ttlMs`, and never past its token's expiry;
 * - the use cases that refuse tokens (logout, password change, removal from a workspace,
 *   workspace deletion) forget their users here at once, and every orchestrator forgets them
 *   when the `kloudak.infra.user.revoked` event reaches it over NATS (events/revocations.ts);
 * - while this orchestrator cannot hear those events (NATS disconnected) the cache is paused.
 *
 * A lookup that started before an invalidation must not store what it read: the database row
 * it saw may predate the revocation. {@link generation} is taken before the lookup and
 * {@link put} stores only if no invalidation happened since.
 */
export class PrincipalCache<P extends CachedPrincipal> {
  private readonly entries = new Map<string, Entry<P>>();
  private gen = 0;
  private paused = false;

  /**
   * @param ttlMs how long an entry is used; 0 turns the cache off.
   * @param maxEntries most tokens kept; the oldest entry goes first when full.
   */
  constructor(
    private readonly clock: Clock,
    private readonly ttlMs: number,
    private readonly maxEntries = 10_000,
  ) {}

  /** Changes on every invalidation; pass what it was before a lookup to {@link put}. */
  get generation(): number {
    return this.gen;
  }

  /** Tokens held now (expired ones included until they are next looked at). */
  get size(): number {
    return this.entries.size;
  }

  /** The principal of `token` if it was authenticated recently and nothing refused it since. */
  get(token: string): Readonly<P> | undefined {
    const e = this.entries.get(token);
    if (e === undefined) return undefined;
    if (this.clock.now() >= e.until) {
      this.entries.delete(token);
      return undefined;
    }
    return e.principal;
  }

  /** Keep `token`'s principal, unless the cache was invalidated since `generation` was read. */
  put(token: string, principal: P, generation: number): void {
    if (this.ttlMs <= 0 || this.paused || generation !== this.gen) return;
    const now = this.clock.now();
    const until = Math.min(now + this.ttlMs, principal.exp * 1000);
    if (until <= now) return;
    this.entries.delete(token);
    if (this.entries.size >= this.maxEntries) {
      for (const [k, e] of this.entries) if (now >= e.until) this.entries.delete(k);
      // Still full: drop the oldest (a Map iterates in insertion order).
      if (this.entries.size >= this.maxEntries) this.entries.delete(this.entries.keys().next().value as string);
    }
    this.entries.set(token, { principal: Object.freeze({ ...principal }), until });
  }

  /** Forget every token of these users (their tokens were revoked, or they changed). */
  forgetUsers(userIds: Iterable<string>): void {
    this.gen++;
    const ids = new Set(userIds);
    if (ids.size === 0) return;
    for (const [k, e] of this.entries) if (ids.has(e.principal.userId)) this.entries.delete(k);
  }

  /** Forget everything (an invalidation whose users are unknown). */
  clear(): void {
    this.gen++;
    this.entries.clear();
  }

  /**
   * Stop caching (and forget everything) while invalidations from other orchestrators may be
   * missed, e.g. NATS is disconnected; `resume` when they are heard again.
   */
  pause(): void {
    this.paused = true;
    this.clear();
  }

  /** Cache again after {@link pause}. */
  resume(): void {
    this.paused = false;
    // What was read while paused was not stored; anything revoked meanwhile is in the database.
    this.gen++;
  }
}
