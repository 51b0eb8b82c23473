/**
 * Fence records (AGENT-LINK.md, "Self-fencing"): `<dataDir>/fence/<ISO time>.json` holding
 * `{leaseExpiredAt, reason, domains, fencedAt}`
 * (each domain with the `method` that fenced it). A record is written (fsynced, atomically) once,
 * AFTER its fencing destroyed the domains, so a record on disk is a finished one; it is deleted
 * once the orchestrator has surely processed its report. (Agents before this rule wrote a record
 * without `fencedAt` first; such a file is never reported, see {@link isFinished}.)
 */
import { mkdir, readdir, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { writeFileAtomic } from '../link/identity.js';

/**
 * How a domain was fenced: `libvirt` (destroyed through libvirt) or `pidfile` (libvirt did not
 * answer; its QEMU process, found from libvirt's pid file, was killed with SIGKILL).
 */
export type FenceMethod = 'libvirt' | 'pidfile';

/** A domain destroyed by fencing. */
export interface FencedDomainRecord {
  domainName: string;
  vmId: string;
  /** Absent in records of agents before pid-file fencing (those were all `libvirt`). */
  method?: FenceMethod;
}

/** One fencing, as kept on disk. */
export interface FenceRecord {
  /** When the lease ended (wall clock, ISO). */
  leaseExpiredAt: string;
  reason: string;
  domains: FencedDomainRecord[];
  /** When the destroys finished (ISO); absent while fencing is in progress (or was cut by a crash). */
  fencedAt?: string;
  /** Domains that could not be destroyed, with libvirt's message. */
  failures?: Array<{ domainName: string; error: string }>;
}

/** A record and its file name. */
export interface StoredFenceRecord {
  file: string;
  record: FenceRecord;
}

/**
 * Oldest first: by the lease expiry in the name, then by the suffix of records of the same expiry
 * (`X.json`, `X-1.json`, `X-2.json`; a plain string sort would put `X-1.json` before `X.json`).
 */
function byAge(a: string, b: string): number {
  const key = (n: string): [string, number] => {
    const m = /^(.*?)(?:-(\d+))?\.json$/.exec(n);
    return m && m[1]!.endsWith('Z') ? [m[1]!, Number(m[2] ?? 0)] : [n, 0];
  };
  const [ka, kb] = [key(a), key(b)];
  return ka[0] < kb[0] ? -1 : ka[0] > kb[0] ? 1 : ka[1] - kb[1];
}

/** Whether a record describes a finished fencing (it has `fencedAt`); only those are reported. */
export function isFinished(record: FenceRecord): boolean {
  return typeof record.fencedAt === 'string' && record.fencedAt !== '';
}

/** The fence/ directory of a data dir. */
export class FenceStore {
  readonly dir: string;

  constructor(dataDir: string) {
    this.dir = join(dataDir, 'fence');
  }

  /** Writes a new record (fsynced) and returns its file name. */
  async create(record: FenceRecord): Promise<string> {
    await mkdir(this.dir, { recursive: true, mode: 0o700 });
    const base = new Date(record.leaseExpiredAt).toISOString();
    const existing = new Set(await readdir(this.dir));
    let file = `${base}.json`;
    for (let i = 1; existing.has(file); i++) file = `${base}-${i}.json`;
    await writeFileAtomic(join(this.dir, file), `${JSON.stringify(record, null, 2)}\n`, 0o600);
    return file;
  }

  /** Every record, oldest first. Unreadable files are skipped (and left for an operator). */
  async list(): Promise<StoredFenceRecord[]> {
    let names: string[];
    try {
      names = await readdir(this.dir);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw err;
    }
    const out: StoredFenceRecord[] = [];
    for (const file of names.filter((n) => n.endsWith('.json')).sort(byAge)) {
      try {
        const record = JSON.parse(await readFile(join(this.dir, file), 'utf8')) as FenceRecord;
        if (typeof record.leaseExpiredAt !== 'string' || !Array.isArray(record.domains)) continue;
        out.push({ file, record });
      } catch {
        continue;
      }
    }
    return out;
  }

  /** The finished records (see {@link isFinished}), oldest first: the ones to report. */
  async finished(): Promise<StoredFenceRecord[]> {
    return (await this.list()).filter((r) => isFinished(r.record));
  }

  /** Number of finished records on disk (not yet acknowledged by the orchestrator). */
  async count(): Promise<number> {
    return (await this.finished()).length;
  }

  async delete(file: string): Promise<void> {
    await rm(join(this.dir, file), { force: true });
  }
}
