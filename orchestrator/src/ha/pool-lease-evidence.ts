/**
 * Pool lease evidence across orchestrator instances. Each instance learns what agents read of
 * each other's pool lease files only from the heartbeats of the sessions it holds
 * (agent-api/pool-lease-view.ts); with several instances, the peers of a down host are spread
 * over them. Before a down host's VMs restart, the planner asks every instance on NATS
 * (request, many replies, for a short while) and merges their observations with its own.
 *
 * Evidence can only hold a restart back (domain/evacuation.ts restartVerdict): an instance that
 * does not answer in time, or NATS being down, leaves the planner with fewer witnesses — the same
 * as a pool nobody reads, where the lease rule alone decides. Never the other way round: no
 * answer, or a missing one, can make a restart happen earlier than the lease rule allows.
 */
import type { NatsConnection, Subscription } from '@nats-io/transport-node';
import type { Logger } from '@kloudak/common';
import type { PoolLeaseEvidence, PoolLeaseObservation } from '../domain/agent.js';
import { summarizeEvidence, type PoolLeaseQuery, type PoolLeaseView } from '../agent-api/pool-lease-view.js';

/** Where the instances answer questions about a host's lease files (core NATS, never stored). */
export const POOL_LEASE_SUBJECT = 'kloudak.ha.pool-leases';

/** How long the planner waits for the other instances' answers at most. */
export const GATHER_MS = 300;

/** It stops waiting once no answer came for this long (its own comes at once). */
export const GATHER_STALL_MS = 100;

/** The most observer ids a question may name (an area's hosts). */
const MAX_OBSERVERS = 10_000;

interface Question {
  hostId: string;
  observers?: string[];
  maxReportAgeMs?: number;
}

interface Answer {
  instanceId: string;
  observations: PoolLeaseObservation[];
}

/** Parse a question from another instance; null when malformed (it is then not answered). */
export function parseQuestion(data: unknown): Question | null {
  if (typeof data !== 'object' || data === null) return null;
  const o = data as Record<string, unknown>;
  if (typeof o['hostId'] !== 'string' || o['hostId'].length > 64) return null;
  const q: Question = { hostId: o['hostId'] };
  if (o['observers'] !== undefined) {
    if (!Array.isArray(o['observers']) || o['observers'].length > MAX_OBSERVERS || !o['observers'].every((x) => typeof x === 'string')) return null;
    q.observers = o['observers'] as string[];
  }
  if (o['maxReportAgeMs'] !== undefined) {
    if (typeof o['maxReportAgeMs'] !== 'number' || !Number.isFinite(o['maxReportAgeMs']) || o['maxReportAgeMs'] < 0) return null;
    q.maxReportAgeMs = o['maxReportAgeMs'];
  }
  return q;
}

/**
 * Answers the other instances' questions from this instance's view, and asks them when this
 * instance plans an evacuation.
 */
export class SharedPoolLeaseEvidence {
  private sub: Subscription | undefined;
  private readonly log: Logger;

  constructor(
    private readonly deps: { nc: NatsConnection | undefined; view: PoolLeaseView; instanceId: string; log: Logger },
    private readonly gatherMs = GATHER_MS,
  ) {
    this.log = deps.log.child({ component: 'pool-lease-evidence' });
  }

  /** Start answering. */
  start(): void {
    const nc = this.deps.nc;
    if (!nc || this.sub) return;
    this.sub = nc.subscribe(POOL_LEASE_SUBJECT, {
      callback: (err, msg) => {
        if (err || !msg.reply) return;
        let q: Question | null = null;
        try {
          q = parseQuestion(msg.json());
        } catch {
          q = null;
        }
        if (!q) {
          this.log.warn({ subject: msg.subject }, 'malformed pool lease question ignored');
          return;
        }
        const answer: Answer = { instanceId: this.deps.instanceId, observations: this.deps.view.evidence(q.hostId, query(q)).observations };
        try {
          msg.respond(JSON.stringify(answer));
        } catch (e) {
          this.log.debug({ err: e }, 'could not answer a pool lease question');
        }
      },
    });
  }

  /** Stop answering. */
  stop(): void {
    this.sub?.unsubscribe();
    this.sub = undefined;
  }

  /**
   * What every reachable instance knows of `hostId`'s lease files, counting only the
   * `observers` given (the other hosts of its area) and reports no older than `maxReportAgeMs`.
   */
  async gather(hostId: string, observers: readonly string[], maxReportAgeMs: number): Promise<PoolLeaseEvidence> {
    const q: Question = { hostId, observers: [...observers], maxReportAgeMs };
    const all = [...this.deps.view.evidence(hostId, query(q)).observations];
    const nc = this.deps.nc;
    if (nc && !nc.isClosed()) {
      try {
        const replies = await nc.requestMany(POOL_LEASE_SUBJECT, JSON.stringify(q), { strategy: 'stall', maxWait: this.gatherMs, stall: Math.min(GATHER_STALL_MS, this.gatherMs) });
        for await (const m of replies) {
          try {
            const a = m.json<Answer>();
            if (a.instanceId === this.deps.instanceId || !Array.isArray(a.observations)) continue;
            // Another instance's word about the observers we asked for only.
            all.push(...a.observations.filter((o) => typeof o === 'object' && o !== null && observers.includes(o.observerHostId)));
          } catch {
            // a malformed answer counts as none
          }
        }
      } catch (err) {
        this.log.warn({ host_id: hostId, err }, 'could not ask the other instances for pool lease evidence; deciding on this one\'s');
      }
    }
    return summarizeEvidence(hostId, all);
  }
}

function query(q: Question): PoolLeaseQuery {
  return {
    ...(q.observers ? { observers: new Set(q.observers) } : {}),
    ...(q.maxReportAgeMs !== undefined ? { maxReportAgeMs: q.maxReportAgeMs } : {}),
  };
}
