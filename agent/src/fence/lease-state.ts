/**
 * Where the lease ends, on a clock every process of the host shares (AGENT-LINK.md, "Self-fencing").
 *
 * The lease lives in the agent's memory, on a clock of that process (`performance.now()`). Two
 * things outlive the process or run beside it and must know the same end:
 *
 * - the next agent process (a crash, a restart, an upgrade): its provisional lease ends where the
 *   previous one ended, not a whole lease after its own start. Otherwise an agent restarted after
 *   the orchestrator's last grant could let HA VMs run past the orchestrator's restart deadline
 *   (grant + lease + margin) while it waits for a grant that a partition keeps from it;
 * - the fence guard (fence/guard.ts), which kills HA QEMUs when the agent itself cannot.
 *
 * Both use the host's monotonic clock (`CLOCK_MONOTONIC`, `process.hrtime`): the same in every
 * process, never stepped by NTP. It restarts at boot, so the file also names the boot
 * (`/proc/sys/kernel/random/boot_id`); a record of another boot means nothing (and nothing of that
 * boot runs any more). The file is rewritten at every grant without fsync: losing it in a power cut
 * loses nothing (the VMs are gone too), and a crash of the agent alone keeps the page cache.
 */
import { readFileSync } from 'node:fs';
import { readFile, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

/** The host's monotonic clock in milliseconds, the same in every process (CLOCK_MONOTONIC). */
export function hostMonoMs(): number {
  return Number(process.hrtime.bigint() / 1000n) / 1000;
}

let cachedBootId: string | null = null;

/** This boot's id (`/proc/sys/kernel/random/boot_id`), or '' where the kernel does not say. */
export function bootId(): string {
  if (cachedBootId === null) {
    try {
      cachedBootId = readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
    } catch {
      cachedBootId = '';
    }
  }
  return cachedBootId;
}

/** The lease state as kept on disk. */
export interface LeaseState {
  bootId: string;
  /** The lease's end on {@link hostMonoMs}'s clock. */
  endHostMonoMs: number;
  /** The agent process that wrote it. */
  pid: number;
}

/**
 * How long the provisional lease of a starting agent may be: what is left of the lease `state`
 * records, never more than `maxMs`; `maxMs` without a record of this boot (the first start, or a
 * record that cannot be read: the rule before this file existed).
 *
 * A lease already over gets `overdueMs` (at most `maxMs`) to reach the orchestrator: the host was
 * without a lease for a while already (the agent was stopped, not crashed, so nothing fenced), and
 * if the orchestrator answers, its clean-up of a returning host removes whatever now runs
 * elsewhere and takes the rest back, so fencing at once would only stop VMs that nobody restarted
 * (a one-host area, VMs that fitted nowhere, an orchestrator that was down as well).
 */
export function provisionalLeaseMs(state: LeaseState | null, o: { bootId: string; nowHostMonoMs: number; maxMs: number; overdueMs: number }): number {
  if (state === null || state.bootId === '' || state.bootId !== o.bootId) return o.maxMs;
  const left = state.endHostMonoMs - o.nowHostMonoMs;
  return Math.min(o.maxMs, left > 0 ? left : o.overdueMs);
}

function isLeaseState(v: unknown): v is LeaseState {
  const o = v as Partial<LeaseState> | null;
  return typeof o === 'object' && o !== null && typeof o.bootId === 'string' && typeof o.endHostMonoMs === 'number' && Number.isFinite(o.endHostMonoMs) && typeof o.pid === 'number';
}

/** `<dataDir>/lease.json`: see the module comment. Writes are coalesced: only the newest end is written. */
export class LeaseStateFile {
  readonly path: string;
  private pending: number | null = null;
  private writing: Promise<void> | null = null;

  constructor(
    dataDir: string,
    private readonly onError: (err: unknown) => void = () => undefined,
  ) {
    this.path = join(dataDir, 'lease.json');
  }

  /** The recorded state, or null (none, unreadable, or not a state). */
  async load(): Promise<LeaseState | null> {
    try {
      const v: unknown = JSON.parse(await readFile(this.path, 'utf8'));
      return isLeaseState(v) ? v : null;
    } catch {
      return null;
    }
  }

  /** Records `endHostMonoMs` (in the background; see {@link flush}). */
  save(endHostMonoMs: number): void {
    this.pending = endHostMonoMs;
    this.writing ??= this.drain();
  }

  /** Resolves once every saved end is on disk (or failed, reported to `onError`). */
  async flush(): Promise<void> {
    while (this.writing) await this.writing;
  }

  private async drain(): Promise<void> {
    try {
      while (this.pending !== null) {
        const state: LeaseState = { bootId: bootId(), endHostMonoMs: this.pending, pid: process.pid };
        this.pending = null;
        const tmp = `${this.path}.tmp`;
        try {
          await writeFile(tmp, `${JSON.stringify(state)}\n`, { mode: 0o600 });
          await rename(tmp, this.path);
        } catch (err) {
          this.onError(err);
        }
      }
    } finally {
      this.writing = null;
    }
  }
}
