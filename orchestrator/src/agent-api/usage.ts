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
      this.write([toRow(hostId, b)]);
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
    const rows: UsageRow[] = [];
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

function toRow(hostId: string, b: Bucket): UsageRow {
  return {
    hostId,
    at: new Date(b.start),
    cpuPct: b.cpu / b.n,
    memUsedMb: Math.round(b.memUsed / b.n / MIB),
    memTotalMb: Math.round(b.memTotal / b.n / MIB),
    diskUsedGb: b.diskUsed / b.n / GIB,
    diskTotalGb: b.diskTotal / b.n / GIB,
    samples: b.n,
  };
}

/** Insert buckets, or average them into existing rows of the same host and minute. */
export async function upsertUsage(db: PrismaClient, rows: UsageRow[]): Promise<void> {
  for (const r of rows) {
    // A host deleted meanwhile: the INSERT ... SELECT finds no host row and inserts nothing.
    await db.$executeRaw`
      INSERT INTO "HostUsageSample" ("hostId", "at", "resolution", "cpuPct", "memUsedMb", "memTotalMb", "diskUsedGb", "diskTotalGb", "samples")
      SELECT ${r.hostId}::uuid, ${r.at}, ${BUCKET_SECONDS}, ${r.cpuPct}, ${r.memUsedMb}, ${r.memTotalMb}, ${r.diskUsedGb}, ${r.diskTotalGb}, ${r.samples}
      WHERE EXISTS (SELECT 1 FROM "Host" WHERE "id" = ${r.hostId}::uuid)
      ON CONFLICT ("hostId", "resolution", "at") DO UPDATE SET
        "cpuPct" = ("HostUsageSample"."cpuPct" * "HostUsageSample"."samples" + EXCLUDED."cpuPct" * EXCLUDED."samples") / ("HostUsageSample"."samples" + EXCLUDED."samples"),
        "memUsedMb" = round(("HostUsageSample"."memUsedMb"::float8 * "HostUsageSample"."samples" + EXCLUDED."memUsedMb"::float8 * EXCLUDED."samples") / ("HostUsageSample"."samples" + EXCLUDED."samples"))::int,
        "memTotalMb" = EXCLUDED."memTotalMb",
        "diskUsedGb" = ("HostUsageSample"."diskUsedGb" * "HostUsageSample"."samples" + EXCLUDED."diskUsedGb" * EXCLUDED."samples") / ("HostUsageSample"."samples" + EXCLUDED."samples"),
        "diskTotalGb" = EXCLUDED."diskTotalGb",
        "samples" = "HostUsageSample"."samples" + EXCLUDED."samples"`;
  }
}
