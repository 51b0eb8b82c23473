// Host.lastHeartbeatAt, written in batches: at most every LAST_HEARTBEAT_WRITE_MS per host, and
// all hosts due in one statement a second. Hosts that connected together would otherwise write
// together every 30 s, a burst of single-row updates that delays lease grants (bench agent-link).
import type { Logger } from '@kloudak/common';
import type { PrismaClient } from '@kloudak/prisma';
import { writeLastHeartbeats } from '../store/agent-hosts.js';

/** Host.lastHeartbeatAt is written at most this often (and on every state change). */
export const LAST_HEARTBEAT_WRITE_MS = 30_000;

/** Queues heartbeat times and writes them in one statement per flush. */
export class HeartbeatWriter {
  /** When each host's time was last written or queued. */
  private readonly writtenAt = new Map<string, number>();
  private readonly toWrite = new Map<string, Date>();
  private writing: Promise<void> = Promise.resolve();

  constructor(
    private readonly db: PrismaClient,
    private readonly log: Logger,
  ) {}

  /** A heartbeat of `hostId` at `now`: queued when its time was last written long enough ago. */
  beat(hostId: string, now: number): void {
    const written = this.writtenAt.get(hostId) ?? 0;
    if (now - written >= LAST_HEARTBEAT_WRITE_MS) {
      this.writtenAt.set(hostId, now);
      this.toWrite.set(hostId, new Date(now));
    }
  }

  /** A state change writes the time along with the state at `now`: the next write can wait a full interval. */
  writtenWithState(hostId: string, now: number): void {
    this.writtenAt.set(hostId, now);
  }

  /** Write what is queued, in one statement; resolves when it (and any write before it) is done. */
  flush(): Promise<void> {
    if (this.toWrite.size === 0) return this.writing;
    const batch = [...this.toWrite].map(([hostId, at]) => ({ hostId, at }));
    this.toWrite.clear();
    this.writing = this.writing
      .then(() => writeLastHeartbeats(this.db, batch))
      .catch((err: unknown) => this.log.error({ err, hosts: batch.length }, 'lastHeartbeatAt not written'));
    return this.writing;
  }
}
