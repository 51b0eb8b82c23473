/**
 * What the agents say about each other's pool lease files (AGENT-LINK.md, "Pool lease files"):
 * the second signal of a host's death, kept in memory from the heartbeats this orchestrator
 * receives. Host X's agent rewrites `<pool>/.kloudak/leases/<X>.json` at each heartbeat; every
 * other host Y mounting the pool reads it and reports, per file, the sequence it read, how long
 * (Y's monotonic clock) it has read that same sequence, whether it saw it change, and whether X
 * wrote that it fenced itself.
 *
 * From that the failover code can ask: "has X's file been renewed within the last N ms,
 * according to its peers?" — yes: X is alive and writing to the storage (partitioned from us,
 * not dead); no: a peer that reads the pool has watched it stand still for N ms; unknown: nobody
 * is in a position to say. And "did X mark itself fenced?". Evidence only: the content of a file
 * is X's word, and an observation is Y's; never the sole reason to restart anything. A caller
 * that wants only the word of X's area passes its hosts as `observers`.
 *
 * Pure bookkeeping over an injected clock (monotonic time for ages). With several orchestrator
 * instances each sees only the heartbeats of the sessions it holds.
 */
import { monotonicNow, type Clock } from '../clock.js';
import type { PeerLeaseReport, PoolLeaseEvidence, PoolLeaseObservation } from '../domain/agent.js';

export type { PoolLeaseEvidence, PoolLeaseObservation };

interface Entry {
  report: PeerLeaseReport;
  /** Monotonic time (ours) of the heartbeat that carried it. */
  reportedAt: number;
}

/** At most this many observations are returned (newest reports first); the summary counts all. */
export const MAX_OBSERVATIONS = 64;

/** Options of a query. */
export interface PoolLeaseQuery {
  /** Count only these observers (e.g. the other hosts of the subject's area). */
  observers?: ReadonlySet<string>;
  /** Ignore reports older than this (default: no limit). */
  maxReportAgeMs?: number;
}

/** See the module comment. */
export class PoolLeaseView {
  /** subject host id → observer host id → pool name → entry. */
  private readonly bySubject = new Map<string, Map<string, Map<string, Entry>>>();
  /** observer host id → subjects it reported in its last heartbeat. */
  private readonly byObserver = new Map<string, Set<string>>();

  constructor(private readonly clock: Clock) {}

  /** A heartbeat of `observerHostId` reported these files: they replace what it reported before. */
  record(observerHostId: string, reports: readonly PeerLeaseReport[]): void {
    const now = monotonicNow(this.clock);
    this.dropObserver(observerHostId);
    if (reports.length === 0) return;
    const subjects = new Set<string>();
    for (const r of reports) {
      if (r.hostId === observerHostId) continue; // a host is no witness of itself
      let byObs = this.bySubject.get(r.hostId);
      if (!byObs) this.bySubject.set(r.hostId, (byObs = new Map()));
      let byPool = byObs.get(observerHostId);
      if (!byPool) byObs.set(observerHostId, (byPool = new Map()));
      byPool.set(r.poolName, { report: r, reportedAt: now });
      subjects.add(r.hostId);
    }
    this.byObserver.set(observerHostId, subjects);
  }

  /** A host was deleted: forget it as observer and as subject. */
  forget(hostId: string): void {
    this.dropObserver(hostId);
    this.bySubject.delete(hostId);
  }

  /** What is known of `hostId`'s lease files. */
  evidence(hostId: string, q: PoolLeaseQuery = {}): PoolLeaseEvidence {
    const now = monotonicNow(this.clock);
    const observations: PoolLeaseObservation[] = [];
    for (const [observer, byPool] of this.bySubject.get(hostId) ?? []) {
      if (q.observers && !q.observers.has(observer)) continue;
      for (const [poolName, e] of byPool) {
        const age = Math.max(0, Math.round(now - e.reportedAt));
        if (q.maxReportAgeMs !== undefined && age > q.maxReportAgeMs) continue;
        const r = e.report;
        observations.push({
          observerHostId: observer,
          poolName,
          sequence: r.sequence.toString(),
          writtenAt: r.writtenAt?.toISOString() ?? null,
          validUntil: r.validUntil?.toISOString() ?? null,
          fenced: r.fenced,
          fencedAt: r.fencedAt?.toISOString() ?? null,
          renewalSeen: r.renewalSeen,
          unchangedForMs: r.unchangedForMs,
          reportAgeMs: age,
          lastRenewalSeenMsAgo: r.renewalSeen ? r.unchangedForMs + age : null,
          fileModifiedAt: r.fileModifiedAt?.toISOString() ?? null,
        });
      }
    }
    return summarizeEvidence(hostId, observations);
  }

  /**
   * Whether `hostId`'s lease file was renewed within the last `withinMs`, according to its peers:
   * true when an observer saw it change that recently; false when an observer whose report is
   * fresh (no older than `withinMs`) had read the same sequence for at least `withinMs`; null when
   * no observer can tell. A renewal seen by anyone outweighs a standstill seen by another (that
   * one may read a stale cache or another mount).
   */
  renewedWithin(hostId: string, withinMs: number, q: PoolLeaseQuery = {}): boolean | null {
    const ev = this.evidence(hostId, q);
    if (ev.lastRenewalSeenMsAgo !== null && ev.lastRenewalSeenMsAgo <= withinMs) return true;
    if (ev.observations.some((o) => o.reportAgeMs <= withinMs && o.unchangedForMs >= withinMs)) return false;
    return null;
  }

  /** Whether some observer's latest reading of `hostId`'s file says it fenced itself; when, if so. */
  markedFenced(hostId: string, q: PoolLeaseQuery = {}): { fenced: boolean; fencedAt: string | null } {
    const ev = this.evidence(hostId, q);
    return { fenced: ev.fenced, fencedAt: ev.fenced ? ev.fencedAt : null };
  }

  private dropObserver(observerHostId: string): void {
    for (const subject of this.byObserver.get(observerHostId) ?? []) {
      const byObs = this.bySubject.get(subject);
      byObs?.delete(observerHostId);
      if (byObs?.size === 0) this.bySubject.delete(subject);
    }
    this.byObserver.delete(observerHostId);
  }
}

/**
 * The evidence of `hostId` from observations (one instance's, or several instances' together:
 * an observer reporting the same pool to two instances counts once, its freshest report).
 */
export function summarizeEvidence(hostId: string, all: readonly PoolLeaseObservation[]): PoolLeaseEvidence {
  const freshest = new Map<string, PoolLeaseObservation>();
  for (const o of all) {
    const k = `${o.observerHostId}\u0000${o.poolName}`;
    const cur = freshest.get(k);
    if (!cur || o.reportAgeMs < cur.reportAgeMs) freshest.set(k, o);
  }
  const observations = [...freshest.values()].sort((a, b) => a.reportAgeMs - b.reportAgeMs);
  const seen = observations.map((o) => o.lastRenewalSeenMsAgo).filter((v): v is number => v !== null);
  const fencedAts = observations.map((o) => o.fencedAt).filter((v): v is string => v !== null).sort();
  return {
    hostId,
    // Bounded: the evidence goes into an event, and hostile agents may report many pools.
    observations: observations.slice(0, MAX_OBSERVATIONS),
    lastRenewalSeenMsAgo: seen.length > 0 ? Math.min(...seen) : null,
    fenced: observations.some((o) => o.fenced),
    fencedAt: fencedAts.at(-1) ?? null,
  };
}
