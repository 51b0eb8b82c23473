/**
 * Pool lease files (AGENT-LINK.md, "Pool lease files"): the second signal of a host's death. Every
 * heartbeat period, with or without a session to the orchestrator (a host cut off from it must
 * keep showing it is alive on the storage), the agent rewrites `<pool path>/.kloudak/leases/<host id>.json` on each active
 * file-based pool it mounts (types dir, fs, netfs: on an area's shared storage, every host of the
 * area sees it), atomically (a temporary file renamed over the old one), with a sequence that
 * increases at every write, its wall time, the end of its orchestrator lease, and whether it has
 * fenced itself. It then reads the other hosts' files on the same pools and keeps, per file, when
 * it first read the current sequence (its own monotonic clock): the heartbeat carries these
 * observations to the orchestrator (the last ones read, whenever it sends one).
 *
 * A host the orchestrator cannot reach but whose file its peers still see renewed is partitioned,
 * not dead; a file that stopped changing, or that says "fenced", is evidence it is gone. Only
 * evidence: a peer's file is its word, never a reason for this agent to do anything.
 *
 * Shared storage may hang (a dead NFS server): one round runs at a time, a round still running
 * when the next period comes is not doubled, and heartbeats never wait for it.
 */
import { mkdir, readdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { StoragePoolState, type Libvirt } from '@kloudak/libvirt';
import { writeFileAtomic } from '../link/identity.js';

/** The directory of lease files under a pool's path. */
export const LEASE_DIR = join('.kloudak', 'leases');

/** Pool types whose target path is a directory every host of the area may share. */
const FILE_POOL_TYPES = new Set(['dir', 'fs', 'netfs']);

/** Largest lease file read (a peer's file is not trusted). */
const MAX_FILE_BYTES = 4096;

const HOST_ID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

/** The content of a lease file (version 1). Times are ISO strings, by the writer's wall clock. */
export interface LeaseFile {
  v: 1;
  hostId: string;
  sequence: number;
  writtenAt: string;
  /** The end of the writer's orchestrator lease (its wall clock); `writtenAt` when it held none. */
  validUntil: string;
  /** The writer fenced itself and has had no lease since. */
  fenced: boolean;
  /** When it last fenced itself. */
  fencedAt?: string;
}

/** A pool a lease file goes on. */
export interface LeasePool {
  name: string;
  path: string;
}

/** What this agent read of another host's lease file. */
export interface PeerLeaseObservation {
  poolName: string;
  hostId: string;
  sequence: number;
  writtenAt: Date;
  validUntil: Date;
  fenced: boolean;
  fencedAt: Date | null;
  /** Milliseconds (this agent's monotonic clock) since it first read this sequence. */
  unchangedForMs: number;
  /** Whether it saw the sequence change while it watched. */
  renewalSeen: boolean;
  fileModifiedAt: Date;
}

function isoDate(v: unknown): Date | null {
  if (typeof v !== 'string' || v.length > 40) return null;
  const d = new Date(v);
  return Number.isNaN(d.getTime()) ? null : d;
}

/** Parses a lease file; null when it is not one (wrong shape, or names another host than `hostId`). */
export function parseLeaseFile(text: string, hostId: string): Omit<PeerLeaseObservation, 'poolName' | 'unchangedForMs' | 'renewalSeen' | 'fileModifiedAt'> | null {
  let j: unknown;
  try {
    j = JSON.parse(text);
  } catch {
    return null;
  }
  if (typeof j !== 'object' || j === null) return null;
  const o = j as Record<string, unknown>;
  if (o['v'] !== 1 || o['hostId'] !== hostId) return null;
  const seq = o['sequence'];
  if (typeof seq !== 'number' || !Number.isSafeInteger(seq) || seq < 0) return null;
  const writtenAt = isoDate(o['writtenAt']);
  const validUntil = isoDate(o['validUntil']);
  if (!writtenAt || !validUntil || typeof o['fenced'] !== 'boolean') return null;
  const fencedAt = o['fencedAt'] === undefined ? null : isoDate(o['fencedAt']);
  if (o['fencedAt'] !== undefined && fencedAt === null) return null;
  return { hostId, sequence: seq, writtenAt, validUntil, fenced: o['fenced'], fencedAt };
}

/** The active pools of libvirt whose type is file-based (dir, fs, netfs), with their paths. */
export async function fileBasedPools(lv: Libvirt): Promise<LeasePool[]> {
  const out: LeasePool[] = [];
  for (const pool of await lv.listAllStoragePools()) {
    try {
      const info = await lv.getStoragePoolInfo(pool);
      if (info.state !== StoragePoolState.RUNNING) continue;
      const xml = await lv.getStoragePoolXml(pool);
      const type = /<pool\s[^>]*type=(['"])([^'"]+)\1/.exec(xml)?.[2];
      const path = /<target>\s*<path>([^<]+)<\/path>/.exec(xml)?.[1];
      if (type && FILE_POOL_TYPES.has(type) && path?.startsWith('/')) out.push({ name: pool.name, path: unescapeXml(path) });
    } catch (err) {
      if ((err as Error).name === 'NotFoundError') continue; // removed meanwhile
      throw err;
    }
  }
  return out;
}

function unescapeXml(s: string): string {
  return s.replace(/&(lt|gt|quot|apos|amp);/g, (_, e: string) => ({ lt: '<', gt: '>', quot: '"', apos: "'", amp: '&' })[e]!);
}

/** Clocks of {@link PoolLeaseKeeper}, injectable for tests. */
export interface PoolLeaseClock {
  /** Wall clock (ms since the epoch), for what is written. */
  wallNow(): number;
  /** Monotonic ms, for how long a peer's file has not changed. */
  now(): number;
}

/** Dependencies of {@link PoolLeaseKeeper}. */
export interface PoolLeaseDeps {
  hostId: string;
  /** The pools to write on and read from (each round asks again). */
  pools: () => Promise<LeasePool[]>;
  /** Milliseconds left of the orchestrator lease (negative once over), null without one. */
  leaseRemainingMs: () => number | null;
  log: Logger;
  clock?: PoolLeaseClock;
}

interface Seen {
  obs: PeerLeaseObservation;
  /** Monotonic time the current sequence was first read. */
  since: number;
}

/** See the module comment. */
export class PoolLeaseKeeper {
  private readonly clock: PoolLeaseClock;
  private sequence = 0;
  private fencedAt: Date | null = null;
  private fenced = false;
  private round: Promise<void> | null = null;
  private timer: NodeJS.Timeout | null = null;
  private stopped = false;
  /** `<pool>\0<host id>` → what was read. */
  private seen = new Map<string, Seen>();
  /** Pools whose write failed in the last round (logged once per failure streak). */
  private failing = new Set<string>();

  constructor(private readonly d: PoolLeaseDeps) {
    if (!HOST_ID.test(d.hostId)) throw new Error(`host id ${JSON.stringify(d.hostId)} cannot name a lease file`);
    this.clock = d.clock ?? { wallNow: () => Date.now(), now: () => performance.now() };
  }

  /** Renews every `periodMs` from now on (a first round at once), until {@link stop}. */
  start(periodMs: number): void {
    if (this.timer) return;
    void this.renew();
    this.timer = setInterval(() => void this.renew(), periodMs);
    this.timer.unref?.();
  }

  /** No more rounds; resolves once the one running (if any) ended. The files stay (they simply stop changing). */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    await this.round;
  }

  /**
   * One round: write this host's file on every pool, then read the peers'. A round already
   * running is returned instead of starting another. Never throws (failures are logged).
   */
  renew(): Promise<void> {
    if (this.stopped) return Promise.resolve();
    this.round ??= this.runRound()
      .catch((err: unknown) => this.d.log.warn({ err }, 'pool lease round failed'))
      .finally(() => {
        this.round = null;
      });
    return this.round;
  }

  /** This host fenced itself at `at`: say so in its files now (and until a lease is held again). */
  markFenced(at: Date): Promise<void> {
    this.fenced = true;
    this.fencedAt = at;
    // A round in progress may have written the old state: write again after it.
    const pending = this.round ?? Promise.resolve();
    return pending.then(() => this.renew());
  }

  /** The last observations of other hosts' files, for the heartbeat. */
  peerLeases(): PeerLeaseObservation[] {
    const now = this.clock.now();
    return [...this.seen.values()].map((s) => ({ ...s.obs, unchangedForMs: Math.max(0, Math.round(now - s.since)) }));
  }

  /** What this host's file says now (the content of its next write, without the increment). */
  private content(): LeaseFile {
    const wall = this.clock.wallNow();
    const remaining = this.d.leaseRemainingMs();
    // The lease is back after a fence: no longer fenced (fencedAt stays, as history).
    if (this.fenced && remaining !== null && remaining > 0) this.fenced = false;
    const f: LeaseFile = {
      v: 1,
      hostId: this.d.hostId,
      sequence: this.sequence,
      writtenAt: new Date(wall).toISOString(),
      validUntil: new Date(wall + Math.max(0, remaining ?? 0)).toISOString(),
      fenced: this.fenced,
    };
    if (this.fencedAt) f.fencedAt = this.fencedAt.toISOString();
    return f;
  }

  private async runRound(): Promise<void> {
    const pools = await this.d.pools();
    this.sequence += 1;
    const text = `${JSON.stringify(this.content())}\n`;
    await Promise.all(pools.map((p) => this.write(p, text)));
    const next = new Map<string, Seen>();
    await Promise.all(pools.map((p) => this.read(p, next)));
    this.seen = next;
  }

  private async write(pool: LeasePool, text: string): Promise<void> {
    const dir = join(pool.path, LEASE_DIR);
    try {
      // The pool's own directory is never made here: a pool whose path is not a directory on this
      // machine (not mounted, or a simulated host's) gets no file.
      if (!(await stat(pool.path)).isDirectory()) return;
      await mkdir(dir, { recursive: true, mode: 0o755 });
      await writeFileAtomic(join(dir, `${this.d.hostId}.json`), text, 0o644);
      if (this.failing.delete(pool.name)) this.d.log.info({ pool: pool.name }, 'pool lease file written again');
    } catch (err) {
      if (!this.failing.has(pool.name)) this.d.log.warn({ pool: pool.name, path: pool.path, err }, 'cannot write the pool lease file');
      this.failing.add(pool.name);
    }
  }

  private async read(pool: LeasePool, into: Map<string, Seen>): Promise<void> {
    const dir = join(pool.path, LEASE_DIR);
    let names: string[];
    try {
      names = await readdir(dir);
    } catch {
      return;
    }
    const now = this.clock.now();
    await Promise.all(
      names.map(async (name) => {
        const m = /^(.+)\.json$/.exec(name);
        const hostId = m?.[1];
        if (!hostId || hostId === this.d.hostId || !HOST_ID.test(hostId)) return;
        const path = join(dir, name);
        try {
          const st = await stat(path);
          if (!st.isFile() || st.size > MAX_FILE_BYTES) return;
          const parsed = parseLeaseFile(await readFile(path, 'utf8'), hostId);
          if (!parsed) return;
          const key = `${pool.name}\0${hostId}`;
          const before = this.seen.get(key);
          const changed = before !== undefined && before.obs.sequence !== parsed.sequence;
          const obs: PeerLeaseObservation = {
            ...parsed,
            poolName: pool.name,
            unchangedForMs: 0,
            renewalSeen: changed || (before?.obs.renewalSeen ?? false),
            fileModifiedAt: st.mtime,
          };
          into.set(key, { obs, since: before && !changed ? before.since : now });
        } catch {
          // Gone meanwhile, or unreadable: not reported.
        }
      }),
    );
  }
}
