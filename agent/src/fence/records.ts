/**
 * Fence records (AGENT-LINK.md, "Self-fencing"): `<dataDir>/fence/<ISO time>.json` holding
 * `{leaseExpiredAt, reason, domains, fencedAt}`. A record is written and fsynced BEFORE any domain
 * is destroyed, so a crash mid-fence still leaves evidence that fencing began; it is rewritten with
 * the domains destroyed; it is deleted once the orchestrator has surely processed its report.
 */
import { mkdir, readdir, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { writeFileAtomic } from '../link/identity.js';

/** A domain destroyed by fencing. */
export interface FencedDomainRecord {
  domainName: string;
  vmId: string;
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

  /** Rewrites a record (fsynced, atomically). */
  async update(file: string, record: FenceRecord): Promise<void> {
    await writeFileAtomic(join(this.dir, file), `${JSON.stringify(record, null, 2)}\n`, 0o600);
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
    for (const file of names.filter((n) => n.endsWith('.json')).sort()) {
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

  /** Number of records on disk. */
  async count(): Promise<number> {
    return (await this.list()).length;
  }

  async delete(file: string): Promise<void> {
    await rm(join(this.dir, file), { force: true });
  }
}
