/**
 * The {@link Storage} port over libvirt storage pools (@kloudak/libvirt): VM root disks are qcow2
 * overlays backed by a template volume of the same pool; cloud-init seeds are raw volumes written
 * through an upload stream.
 *
 * Files can appear in a pool directory without libvirt knowing (a template copied in by an
 * operator, a volume another host of the area made on shared storage): a lookup that misses
 * refreshes the pool once and looks again — but only when the file may exist. For directory-backed
 * pools the agent checks the path first, since a refresh reads every volume of the pool
 * (measured: with 300 volumes in the pool, two refreshes per CreateVm cost about 45 ms).
 *
 * Changes to one volume (clone, put, delete) are serialised per pool and name: libvirt lists a
 * volume as soon as its creation starts, so a concurrent "already exists → no-op" would otherwise
 * report a half-built volume (its size not yet the final one).
 */
import { access } from 'node:fs/promises';
import { join } from 'node:path';
import { AlreadyExistsError, NotFoundError } from '@kloudak/libvirt';
import type { Libvirt, StoragePoolRef, StorageVolRef } from '@kloudak/libvirt';
import type { Storage, VolumeStatus } from '../ports.js';
import { overlayVolumeXml, rawVolumeXml } from '../xml/volume.js';
import type { VolumeFormat } from '../xml/volume.js';

const GIB = 1024n * 1024n * 1024n;

/** Format of a volume's own data (`<target><format type='…'/>`), from its XML. */
export function volumeFormat(volumeXml: string): string | null {
  const target = /<target>([\s\S]*?)<\/target>/.exec(volumeXml)?.[1];
  if (target === undefined) return null;
  return /<format\s+type=(['"])([^'"]+)\1/.exec(target)?.[2] ?? null;
}

/** Backing-file path recorded in a volume's XML (`<backingStore><path>`), or null. */
export function backingPath(volumeXml: string): string | null {
  const bs = /<backingStore>([\s\S]*?)<\/backingStore>/.exec(volumeXml)?.[1];
  const p = bs === undefined ? undefined : /<path>([^<]*)<\/path>/.exec(bs)?.[1];
  return p === undefined ? null : unescapeXml(p);
}

function unescapeXml(s: string): string {
  return s.replace(/&(lt|gt|amp|quot|apos|#\d+|#x[0-9a-fA-F]+);/g, (_, e: string) => {
    switch (e) {
      case 'lt':
        return '<';
      case 'gt':
        return '>';
      case 'amp':
        return '&';
      case 'quot':
        return '"';
      case 'apos':
        return "'";
      default:
        return String.fromCodePoint(e.startsWith('#x') ? Number.parseInt(e.slice(2), 16) : Number.parseInt(e.slice(1), 10));
    }
  });
}

/**
 * A volume a command needs (a template) is not in its pool. Answered NOT_FOUND, which the
 * orchestrator retries: an operator may still be copying the template in.
 */
export class VolumeNotFoundError extends Error {
  constructor(
    readonly pool: string,
    readonly volume: string,
  ) {
    super(`template volume ${JSON.stringify(volume)} not found in pool ${JSON.stringify(pool)}`);
    this.name = 'VolumeNotFoundError';
  }
}

export interface LibvirtStorageOptions {
  /** Time allowed for volume creation and deletion. Default 120 s. */
  slowCallTimeoutMs?: number;
  /** Time allowed for the daemon to confirm the end of an upload. Default 120 s. */
  uploadFinishTimeoutMs?: number;
}

/** Storage pools' volumes, for the agent. The {@link Libvirt} connection is the caller's. */
export class LibvirtStorage implements Storage {
  private readonly slow: { timeoutMs: number };
  private readonly uploadFinishTimeoutMs: number;
  /** Tail of the queue of changes per `pool\0volume`. */
  private readonly queues = new Map<string, Promise<void>>();

  constructor(
    private readonly lv: Libvirt,
    options: LibvirtStorageOptions = {},
  ) {
    this.slow = { timeoutMs: options.slowCallTimeoutMs ?? 120_000 };
    this.uploadFinishTimeoutMs = options.uploadFinishTimeoutMs ?? 120_000;
  }

  /** Runs `fn` after every earlier change of the same volume has settled. */
  private async exclusive<T>(pool: string, name: string, fn: () => Promise<T>): Promise<T> {
    const key = `${pool}\0${name}`;
    const previous = this.queues.get(key) ?? Promise.resolve();
    const result = previous.then(fn);
    const tail = result.then(
      () => undefined,
      () => undefined,
    );
    this.queues.set(key, tail);
    try {
      return await result;
    } finally {
      if (this.queues.get(key) === tail) this.queues.delete(key);
    }
  }

  private pool(name: string): Promise<StoragePoolRef> {
    return this.lv.lookupStoragePoolByName(name);
  }

  /** Rescans the pool; best effort (libvirt refuses while the pool has a volume being built). */
  private async refresh(pool: StoragePoolRef): Promise<void> {
    try {
      await this.lv.refreshStoragePool(pool, 0, this.slow);
    } catch {
      // The second lookup decides.
    }
  }

  /** Target directory of directory-backed pools (dir, fs, netfs), null for others; cached per pool (name and UUID). */
  private readonly poolDirs = new Map<string, Promise<string | null>>();

  private poolDir(pool: StoragePoolRef): Promise<string | null> {
    const key = `${pool.name}\0${Buffer.from(pool.uuid).toString('hex')}`;
    let dir = this.poolDirs.get(key);
    if (!dir) {
      dir = this.lv.getStoragePoolXml(pool).then((xml) => {
        const type = /<pool\s+type=(['"])([^'"]+)\1/.exec(xml)?.[2];
        const path = /<target>[\s\S]*?<path>([^<]*)<\/path>/.exec(xml)?.[1];
        return type !== undefined && ['dir', 'fs', 'netfs'].includes(type) && path !== undefined ? unescapeXml(path) : null;
      });
      dir.catch(() => this.poolDirs.delete(key));
      this.poolDirs.set(key, dir);
    }
    return dir;
  }

  /** Whether a volume libvirt does not list may still exist (so a refresh could find it). */
  private async mayExist(pool: StoragePoolRef, name: string): Promise<boolean> {
    const dir = await this.poolDir(pool).catch(() => null);
    if (dir === null) return true;
    return access(join(dir, name)).then(
      () => true,
      () => false,
    );
  }

  /** The volume, or null; refreshes the pool once on a miss when the volume may exist. */
  private async lookup(pool: StoragePoolRef, name: string): Promise<StorageVolRef | null> {
    for (let attempt = 0; attempt < 2; attempt++) {
      try {
        return await this.lv.lookupVolumeByName(pool, name);
      } catch (e) {
        if (!(e instanceof NotFoundError)) throw e;
        if (attempt === 0) {
          if (!(await this.mayExist(pool, name))) return null;
          await this.refresh(pool);
        }
      }
    }
    return null;
  }

  private async status(vol: StorageVolRef): Promise<VolumeStatus> {
    const [path, info] = await Promise.all([this.lv.getVolumePath(vol), this.lv.getVolumeInfo(vol)]);
    return { name: vol.name, path, capacityBytes: info.capacity, allocationBytes: info.allocation };
  }

  cloneOverlay(poolName: string, template: string, name: string, capacityGb: number): Promise<VolumeStatus> {
    if (!Number.isInteger(capacityGb) || capacityGb < 0) return Promise.reject(new RangeError(`bad capacity ${capacityGb} GiB`));
    return this.exclusive(poolName, name, () => this.doCloneOverlay(poolName, template, name, capacityGb));
  }

  private async doCloneOverlay(poolName: string, template: string, name: string, capacityGb: number): Promise<VolumeStatus> {
    const pool = await this.pool(poolName);
    const existing = await this.lookup(pool, name);
    if (existing) return this.status(existing);

    const tmpl = await this.lookup(pool, template);
    if (!tmpl) throw new VolumeNotFoundError(poolName, template);
    const [path, info, tmplXml] = await Promise.all([this.lv.getVolumePath(tmpl), this.lv.getVolumeInfo(tmpl), this.lv.getVolumeXml(tmpl)]);
    const format = volumeFormat(tmplXml);
    if (format !== 'qcow2' && format !== 'raw') {
      throw new Error(`template volume ${JSON.stringify(template)} has format ${String(format)}; qcow2 or raw expected`);
    }
    const wanted = BigInt(capacityGb) * GIB;
    const xml = overlayVolumeXml({
      name,
      capacityBytes: wanted > info.capacity ? wanted : info.capacity,
      backingPath: path,
      backingFormat: format satisfies VolumeFormat,
    });
    try {
      return await this.status(await this.lv.createVolume(pool, xml, 0, this.slow));
    } catch (e) {
      // Created concurrently by a retry of the same command: the port's no-op.
      if (e instanceof AlreadyExistsError) {
        const now = await this.lookup(pool, name);
        if (now) return this.status(now);
      }
      throw e;
    }
  }

  putRaw(poolName: string, name: string, data: Uint8Array): Promise<VolumeStatus> {
    return this.exclusive(poolName, name, () => this.doPutRaw(poolName, name, data));
  }

  private async doPutRaw(poolName: string, name: string, data: Uint8Array): Promise<VolumeStatus> {
    const pool = await this.pool(poolName);
    const existing = await this.lookup(pool, name);
    if (existing) await this.deleteVol(existing);
    const vol = await this.lv.createVolume(pool, rawVolumeXml({ name, capacityBytes: BigInt(data.length) }), 0, this.slow);
    try {
      if (data.length > 0) await this.lv.uploadVolume(vol, data, { finishTimeoutMs: this.uploadFinishTimeoutMs });
    } catch (e) {
      // No half-written seed is left behind; the next attempt starts over anyway.
      await this.deleteVol(vol).catch(() => undefined);
      throw e;
    }
    return this.status(vol);
  }

  private async deleteVol(vol: StorageVolRef): Promise<void> {
    try {
      await this.lv.deleteVolume(vol, 0, this.slow);
    } catch (e) {
      if (!(e instanceof NotFoundError)) throw e;
    }
  }

  delete(poolName: string, name: string): Promise<void> {
    return this.exclusive(poolName, name, async () => {
      const pool = await this.pool(poolName);
      const vol = await this.lookup(pool, name);
      if (vol) await this.deleteVol(vol);
    });
  }

  async get(poolName: string, name: string): Promise<VolumeStatus | null> {
    const pool = await this.pool(poolName);
    const vol = await this.lookup(pool, name);
    if (!vol) return null;
    try {
      return await this.status(vol);
    } catch (e) {
      if (e instanceof NotFoundError) return null; // deleted meanwhile
      throw e;
    }
  }

  /** Every volume of the pool, after a refresh (so files added outside libvirt show). */
  async list(poolName: string): Promise<VolumeStatus[]> {
    const pool = await this.pool(poolName);
    await this.refresh(pool);
    const vols = await this.lv.listAllVolumes(pool);
    const out = await Promise.all(
      vols.map(async (v) => {
        try {
          return await this.status(v);
        } catch (e) {
          if (e instanceof NotFoundError) return null; // deleted meanwhile
          throw e;
        }
      }),
    );
    return out.filter((s): s is VolumeStatus => s !== null).sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  }
}
