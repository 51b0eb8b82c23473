import type { Logger } from '@kloudak/common';
import type { PrismaClient } from '@kloudak/prisma';
import type { Clock } from '../clock.js';
import type { HostUsage } from '../domain/agent.js';

/** Width of a usage bucket: one row per host per minute. */
export const BUCKET_SECONDS = 60;
const BUCKET_MS = BUCKET_SECONDS * 1000;
const MIB = 1024 * 1024;
const GIB = 1024 * MIB;

/** The last usage a host reported, kept in memory for GET /hosts/{id}. */
export interface CurrentUsage extends HostUsage {
  /** When it arrived (orchestrator clock). */
  at: Date;
  /** Whether the agent's libvirt connection was up (false while libvirtd restarts). */
  libvirtConnected: boolean;
}

interface Bucket {
  start: number;
  n: number;
  cpu: number;
  memUsed: number;
  memTotal: number;
  diskUsed: number;
  diskTotal: number;
}

/** One averaged bucket, ready to be stored. */
export interface UsageRow {
  hostId: string;
  at: Date;
  cpuPct: number;
  memUsedMb: number;
  memTotalMb: number;
  diskUsedGb: number;
  diskTotalGb: number;
  samples: number;
}

/**
 * Downsamples heartbeat usage into HostUsageSample rows (AGENT-LINK.md, "Usage"): samples are
 * summed in memory per host and minute; a bucket is written when a sample of a later minute
 * arrives or {@link flushDue} finds it over. Writing is an upsert that averages with what a row
 * already holds (weighted by sample counts), so a bucket written twice (a flush at shutdown, a
 * host reconnecting to another instance) stays one correct row. Heartbeats are never rows.
 */
export class UsageRecorder {
  private readonly current = new Map<string, CurrentUsage>();
  private readonly buckets = new Map<string, Bucket>();
  /** Finished buckets waiting for the next batched write (hosts cross a minute all at once). */
  private readonly finished: UsageRow[] = [];
  private finishTimer: NodeJS.Timeout | undefined;
  private writing: Promise<void> = Promise.resolve();

  constructor(
    private readonly db: PrismaClient,
    private readonly clock: Clock,
    private readonly log: Logger,
  ) {}

  /** Latest usage of a host, if it reported any since this process started. */
  latest(hostId: string): CurrentUsage | undefined {
    return this.current.get(hostId);
  }

  /** Record one heartbeat's usage. */
  record(hostId: string, u: HostUsage, libvirtConnected = true): void {
    const now = this.clock.now();
    this.current.set(hostId, { ...u, at: new Date(now), libvirtConnected });
    const start = Math.floor(now / BUCKET_MS) * BUCKET_MS;
    let b = this.buckets.get(hostId);
    if (b && b.start !== start) {
      // Every host crosses the minute within one heartbeat interval: gather their rows for a
      // second and write them in one statement instead of one each.
      this.finished.push(toRow(hostId, b));
      this.finishTimer ??= setTimeout(() => {
        this.finishTimer = undefined;
        this.write(this.finished.splice(0));
      }, 1000).unref();
      b = undefined;
    }
    if (!b) {
      b = { start, n: 0, cpu: 0, memUsed: 0, memTotal: 0, diskUsed: 0, diskTotal: 0 };
      this.buckets.set(hostId, b);
    }
    b.n += 1;
    b.cpu += u.cpuPercent;
    b.memUsed += u.memoryUsedBytes;
    b.memTotal += u.memoryTotalBytes;
    b.diskUsed += u.diskUsedBytes;
    b.diskTotal += u.diskTotalBytes;
  }

  /** Forget a host (deleted): its open bucket is dropped, its row would fail the foreign key. */
  forget(hostId: string): void {
    this.current.delete(hostId);
    this.buckets.delete(hostId);
  }

  /** Write the buckets whose minute is over (all of them with `all`, at shutdown). */
  async flushDue(all = false): Promise<void> {
    const now = this.clock.now();
    clearTimeout(this.finishTimer);
    this.finishTimer = undefined;
    const rows: UsageRow[] = this.finished.splice(0);
    for (const [hostId, b] of this.buckets) {
      if (all || b.start + BUCKET_MS <= now) {
        rows.push(toRow(hostId, b));
        this.buckets.delete(hostId);
      }
    }
    if (rows.length > 0) this.write(rows);
    await this.writing;
  }

  /** Writes are chained so they reach the database in order and flushDue can await them. */
  private write(rows: UsageRow[]): void {
    this.writing = this.writing.then(async () => {
      try {
        await upsertUsage(this.db, rows);
      } catch (err) {
        // Usage is telemetry: a failed write loses a minute of a chart, never the link.
        this.log.warn({ component: 'agent-link', err, rows: rows.length }, 'usage samples not stored');
      }
    });
  }
}

/** An int column's value: one bad figure must never fail the batched insert of every host's row. */
function int32(v: number): number {
  return Number.isFinite(v) ? Math.min(2_147_483_647, Math.max(0, Math.round(v))) : 0;
}

function toRow(hostId: string, b: Bucket): UsageRow {
  return {
    hostId,
    at: new Date(b.start),
    cpuPct: b.cpu / b.n,
    memUsedMb: int32(b.memUsed / b.n / MIB),
    memTotalMb: int32(b.memTotal / b.n / MIB),
    diskUsedGb: b.diskUsed / b.n / GIB,
    diskTotalGb: b.diskTotal / b.n / GIB,
    samples: b.n,
  };
}

/** Rows of one statement at most (its columns travel as 8 array parameters; this bounds their size). */
const UPSERT_CHUNK = 2000;

/**
 * Insert buckets, or average them into existing rows of the same host and minute, in one statement
 * per {@link UPSERT_CHUNK} rows. Rows of the same host and minute are merged first: one statement
 * may not update a row twice.
 */
export async function upsertUsage(db: PrismaClient, rows: readonly UsageRow[]): Promise<void> {
  const merged = new Map<string, UsageRow>();
  for (const r of rows) {
    const key = `${r.hostId}/${r.at.getTime()}`;
    const m = merged.get(key);
    merged.set(key, m ? mergeRows(m, r) : r);
  }
  const all = [...merged.values()];
  for (let i = 0; i < all.length; i += UPSERT_CHUNK) {
    const c = all.slice(i, i + UPSERT_CHUNK);
    // A host deleted meanwhile: the join finds no host row and inserts nothing for it.
    await db.$executeRaw`
      INSERT INTO "HostUsageSample" ("hostId", "at", "resolution", "cpuPct", "memUsedMb", "memTotalMb", "diskUsedGb", "diskTotalGb", "samples")
      SELECT v."hostId", v."at", ${BUCKET_SECONDS}, v."cpuPct", v."memUsedMb", v."memTotalMb", v."diskUsedGb", v."diskTotalGb", v."samples"
      FROM unnest(
        ${c.map((r) => r.hostId)}::uuid[],
        ${c.map((r) => r.at.toISOString())}::timestamp(3)[],
        ${c.map((r) => r.cpuPct)}::float8[],
        ${c.map((r) => r.memUsedMb)}::int[],
        ${c.map((r) => r.memTotalMb)}::int[],
        ${c.map((r) => r.diskUsedGb)}::float8[],
        ${c.map((r) => r.diskTotalGb)}::float8[],
        ${c.map((r) => r.samples)}::int[]
      ) AS v("hostId", "at", "cpuPct", "memUsedMb", "memTotalMb", "diskUsedGb", "diskTotalGb", "samples")
      JOIN "Host" h ON h."id" = v."hostId"
      ON CONFLICT ("hostId", "resolution", "at") DO UPDATE SET
        "cpuPct" = ("HostUsageSample"."cpuPct" * "HostUsageSample"."samples" + EXCLUDED."cpuPct" * EXCLUDED."samples") / ("HostUsageSample"."samples" + EXCLUDED."samples"),
        "memUsedMb" = round(("HostUsageSample"."memUsedMb"::float8 * "HostUsageSample"."samples" + EXCLUDED."memUsedMb"::float8 * EXCLUDED."samples") / ("HostUsageSample"."samples" + EXCLUDED."samples"))::int,
        "memTotalMb" = EXCLUDED."memTotalMb",
        "diskUsedGb" = ("HostUsageSample"."diskUsedGb" * "HostUsageSample"."samples" + EXCLUDED."diskUsedGb" * EXCLUDED."samples") / ("HostUsageSample"."samples" + EXCLUDED."samples"),
        "diskTotalGb" = EXCLUDED."diskTotalGb",
        "samples" = "HostUsageSample"."samples" + EXCLUDED."samples"`;
  }
}

/** Two rows of one host and minute as one, averaged by their sample counts (the later totals kept). */
function mergeRows(a: UsageRow, b: UsageRow): UsageRow {
  const n = a.samples + b.samples;
  const avg = (x: number, y: number) => (x * a.samples + y * b.samples) / n;
  return {
    hostId: a.hostId,
    at: a.at,
    cpuPct: avg(a.cpuPct, b.cpuPct),
    memUsedMb: Math.round(avg(a.memUsedMb, b.memUsedMb)),
    memTotalMb: b.memTotalMb,
    diskUsedGb: avg(a.diskUsedGb, b.diskUsedGb),
    diskTotalGb: b.diskTotalGb,
    samples: n,
  };
}
