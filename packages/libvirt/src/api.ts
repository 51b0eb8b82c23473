/**
 * Typed API over the libvirt procedures the Kloudak agent uses.
 *
 * Each method encodes its procedure's `_args` struct, calls it on the {@link LibvirtConnection}
 * and decodes the `_ret` struct. Field order follows libvirt's wire structs; the codecs are
 * hand-written (see README). Flags are the plain numbers of libvirt's public headers; the most
 * used ones are exported below under short names.
 *
 * Calls use the connection's default timeout. Methods that can legitimately take long (starting
 * or stopping a domain, device hot-plug, pool and volume creation, cloning, deletion) take a
 * trailing {@link CallOptions} to override it.
 */
import type { Readable } from 'node:stream';
import { LibvirtConnection } from './client.js';
import { LibvirtError } from './errors.js';
import type { CallOptions, Caller, ConnectionOptions, ConnectionState } from './client.js';
import {
  Proc,
  readDomain,
  readPool,
  readTypedParam,
  readVol,
  uuidFromString,
  writeTypedParam,
  uuidToString,
  writeDomain,
  writePool,
  writeVol,
} from './protocol.js';
import type { DomainRef, StoragePoolRef, StorageVolRef, TypedParam, TypedParamValue } from './protocol.js';
import { XdrReader, XdrWriter } from './xdr.js';

/** `virDomainState`. */
export const DomainState = {
  NOSTATE: 0,
  RUNNING: 1,
  BLOCKED: 2,
  PAUSED: 3,
  SHUTDOWN: 4,
  SHUTOFF: 5,
  CRASHED: 6,
  PMSUSPENDED: 7,
} as const;

/** `virDomainEventType` (the `event` of a lifecycle event). */
export const DomainEventType = {
  DEFINED: 0,
  UNDEFINED: 1,
  STARTED: 2,
  SUSPENDED: 3,
  RESUMED: 4,
  STOPPED: 5,
  SHUTDOWN: 6,
  PMSUSPENDED: 7,
  CRASHED: 8,
} as const;

/** `virDomainEventID` values used here. */
export const DomainEventId = { LIFECYCLE: 0 } as const;

/** `virStoragePoolState`. */
export const StoragePoolState = { INACTIVE: 0, BUILDING: 1, RUNNING: 2, DEGRADED: 3, INACCESSIBLE: 4 } as const;

/** `virStorageVolType`. */
export const StorageVolType = { FILE: 0, BLOCK: 1, DIR: 2, NETWORK: 3, NETDIR: 4, PLOOP: 5 } as const;

/** Frequently used flags (values from libvirt-domain.h and libvirt-storage.h). */
export const Flags = {
  /** `VIR_DOMAIN_AFFECT_*` (device attach/detach). */
  AFFECT_CURRENT: 0,
  AFFECT_LIVE: 1 << 0,
  AFFECT_CONFIG: 1 << 1,
  /** `VIR_DOMAIN_DESTROY_GRACEFUL`: SIGTERM only, no SIGKILL. */
  DESTROY_GRACEFUL: 1 << 0,
  /** `VIR_DOMAIN_UNDEFINE_*`. */
  UNDEFINE_MANAGED_SAVE: 1 << 0,
  UNDEFINE_SNAPSHOTS_METADATA: 1 << 1,
  UNDEFINE_NVRAM: 1 << 2,
  UNDEFINE_CHECKPOINTS_METADATA: 1 << 4,
  UNDEFINE_TPM: 1 << 5,
  /** `VIR_DOMAIN_XML_*`. */
  XML_SECURE: 1 << 0,
  XML_INACTIVE: 1 << 1,
  /** `VIR_DOMAIN_DEFINE_VALIDATE` (validate the XML against the schema). */
  DEFINE_VALIDATE: 1 << 0,
  /** `VIR_DOMAIN_START_PAUSED`. */
  START_PAUSED: 1 << 0,
  /** `VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN`, `..._GUEST_AGENT`. */
  SHUTDOWN_ACPI_POWER_BTN: 1 << 0,
  SHUTDOWN_GUEST_AGENT: 1 << 1,
  /** `VIR_CONNECT_LIST_DOMAINS_*`. */
  LIST_DOMAINS_ACTIVE: 1 << 0,
  LIST_DOMAINS_INACTIVE: 1 << 1,
  LIST_DOMAINS_PERSISTENT: 1 << 2,
  LIST_DOMAINS_TRANSIENT: 1 << 3,
  LIST_DOMAINS_RUNNING: 1 << 4,
  LIST_DOMAINS_PAUSED: 1 << 5,
  LIST_DOMAINS_SHUTOFF: 1 << 6,
  /** `VIR_STORAGE_POOL_CREATE_WITH_BUILD` (create the pool's directory first). */
  POOL_CREATE_WITH_BUILD: 1 << 0,
  /** `VIR_STORAGE_VOL_CREATE_PREALLOC_METADATA`. */
  VOL_CREATE_PREALLOC_METADATA: 1 << 0,
  /** `VIR_STORAGE_VOL_DELETE_ZEROED`. */
  VOL_DELETE_ZEROED: 1 << 0,
} as const;

/** `virDomainMigrateFlags` (libvirt-domain.h). */
export const MigrateFlags = {
  /** Keep the domain running while its memory is copied. */
  LIVE: 1 << 0,
  /** The source daemon connects to the destination daemon itself (the client only starts it). */
  PEER2PEER: 1 << 1,
  /** Define the domain persistently on the destination. */
  PERSIST_DEST: 1 << 3,
  /** Undefine the domain on the source once the migration succeeded. */
  UNDEFINE_SOURCE: 1 << 4,
  /** Skip libvirt's safety checks (disk cache modes on storage it does not know to be shared). */
  UNSAFE: 1 << 9,
  /** Cancel the migration when a disk I/O error happens on the source. */
  ABORT_ON_ERROR: 1 << 12,
} as const;

/** Typed parameters of a migration (`VIR_MIGRATE_PARAM_*`, libvirt-domain.h). */
export interface MigrateParams {
  /** `migrate_uri`: where the hypervisor streams memory, e.g. `tcp:10.0.0.2` (the destination picks a port). */
  migrateUri?: string;
  /** `destination_xml`: the domain's XML as the destination must run it (its host-local paths and names). */
  destinationXml?: string;
  /** `persistent_xml`: the persistent definition on the destination (with PERSIST_DEST). */
  persistentXml?: string;
  /** `bandwidth` in MiB/s; unset: unlimited. */
  bandwidthMiBs?: number;
}

/** Stat groups of CONNECT_GET_ALL_DOMAIN_STATS (`VIR_DOMAIN_STATS_*`). */
export const DomainStatsGroup = {
  STATE: 1 << 0,
  CPU_TOTAL: 1 << 1,
  BALLOON: 1 << 2,
  VCPU: 1 << 3,
  INTERFACE: 1 << 4,
  BLOCK: 1 << 5,
  PERF: 1 << 6,
  IOTHREAD: 1 << 7,
  MEMORY: 1 << 8,
} as const;

/** Host facts (NODE_GET_INFO). */
export interface NodeInfo {
  /** CPU model (e.g. `x86_64`). */
  model: string;
  /** Memory in KiB. */
  memoryKiB: bigint;
  cpus: number;
  mhz: number;
  nodes: number;
  sockets: number;
  cores: number;
  threads: number;
}

/** DOMAIN_GET_STATE: `state` is a {@link DomainState}, `reason` its state-specific reason. */
export interface DomainStateInfo {
  state: number;
  reason: number;
}

/** DOMAIN_GET_INFO. */
export interface DomainInfo {
  state: number;
  maxMemoryKiB: bigint;
  memoryKiB: bigint;
  vcpus: number;
  /** CPU time used, in nanoseconds. */
  cpuTimeNs: bigint;
}

/** One domain's record of CONNECT_GET_ALL_DOMAIN_STATS. */
export interface DomainStatsRecord {
  domain: DomainRef;
  /** Parameters in the daemon's order, with their wire types. */
  params: TypedParam[];
  /** The same values by field name (`cpu.time`, `block.0.rd.bytes`, …). */
  values: Map<string, TypedParamValue>;
}

/** STORAGE_POOL_GET_INFO; sizes in bytes. */
export interface StoragePoolInfo {
  state: number;
  capacity: bigint;
  allocation: bigint;
  available: bigint;
}

/** STORAGE_VOL_GET_INFO; sizes in bytes. */
export interface StorageVolInfo {
  type: number;
  capacity: bigint;
  allocation: bigint;
}

/** A lifecycle event (DOMAIN_EVENT_CALLBACK_LIFECYCLE). */
export interface DomainLifecycleEvent {
  domain: DomainRef;
  /** Domain name (same as `domain.name`). */
  name: string;
  /** Domain UUID as a string. */
  uuid: string;
  /** A {@link DomainEventType}. */
  event: number;
  /** Event-specific detail (e.g. `VIR_DOMAIN_EVENT_STOPPED_DESTROYED` = 1). */
  detail: number;
}

/** A live event subscription. */
export interface EventSubscription {
  /** Stops delivery and deregisters on the daemon (best effort when disconnected). */
  unsubscribe(): Promise<void>;
}

/** Options of a volume transfer. */
export interface VolumeTransferOptions {
  /** Byte offset in the volume (default 0). */
  offset?: bigint;
  /** Bytes to transfer; 0 = up to the end (default: the data's length for uploads, 0 for downloads). */
  length?: bigint;
  /** `VIR_STORAGE_VOL_UPLOAD_*` / `VIR_STORAGE_VOL_DOWNLOAD_*` flags (default 0). */
  flags?: number;
  /** Time allowed for the daemon to confirm the end of the transfer (default 60 000 ms). */
  finishTimeoutMs?: number;
}

interface LifecycleSub {
  handler: (e: DomainLifecycleEvent) => void;
  domain: DomainRef | null;
  callbackId: number | null;
  active: boolean;
}

/** Encodes a call's arguments. */
function args(write: (w: XdrWriter) => void): Buffer {
  const w = new XdrWriter(128);
  write(w);
  return w.finish();
}

/** Decodes a reply body and checks that nothing is left over. */
function ret<T>(body: Buffer, read: (r: XdrReader) => T): T {
  const r = new XdrReader(body);
  const v = read(r);
  r.end();
  return v;
}

/** Reads `char model[32]`: XDR encodes each char as a 4-byte int; the C string ends at NUL. */
function readCharArray(r: XdrReader, size: number): string {
  const bytes = r.fixedArray(size, (x) => x.int() & 0xff);
  const end = bytes.indexOf(0);
  return Buffer.from(end === -1 ? bytes : bytes.slice(0, end)).toString('utf8');
}

function toUuidBytes(uuid: Uint8Array | string): Uint8Array {
  return typeof uuid === 'string' ? uuidFromString(uuid) : uuid;
}

/** The typed libvirt API. Owns a {@link LibvirtConnection} (see {@link Libvirt.connection}). */
export class Libvirt {
  private readonly lifecycleSubs = new Set<LifecycleSub>();
  private readonly subsByCallbackId = new Map<number, LifecycleSub>();
  /** Registrations waiting for their reply; events for unknown callback ids are held meanwhile. */
  private registrationsInFlight = 0;
  private earlyLifecycleEvents: { callbackId: number; event: DomainLifecycleEvent }[] = [];

  constructor(readonly connection: LibvirtConnection) {
    connection.onEvent(Proc.DOMAIN_EVENT_CALLBACK_LIFECYCLE, (body) => this.onLifecycleMessage(body));
    // Event registrations live in the daemon's per-connection state and die with the socket.
    connection.addReconnectHook(async (call) => {
      this.subsByCallbackId.clear();
      let refused: unknown = null;
      for (const sub of [...this.lifecycleSubs]) {
        sub.callbackId = null;
        try {
          await this.registerLifecycle(sub, call);
        } catch (e) {
          // The daemon refusing one registration must not cost the others theirs; a lost
          // socket (any other error) fails the whole attempt, which is then retried.
          if (!(e instanceof LibvirtError)) throw e;
          refused ??= e;
        }
      }
      if (refused) throw refused;
    });
  }

  /** Connects (see {@link LibvirtConnection.connect}) and returns the API over it. */
  static async connect(options: ConnectionOptions): Promise<Libvirt> {
    return new Libvirt(await LibvirtConnection.connect(options));
  }

  /** The connection's state. */
  get state(): ConnectionState {
    return this.connection.state;
  }

  /** Closes the connection for good. */
  close(): Promise<void> {
    return this.connection.close();
  }

  private call(proc: number, body?: Uint8Array, options?: CallOptions): Promise<Buffer> {
    return this.connection.call(proc, body, options);
  }

  // -------------------------------------------------------------------------------------------
  // Connection and host

  /** Driver name (CONNECT_GET_TYPE), e.g. `QEMU` or `TEST`. */
  async getType(): Promise<string> {
    return ret(await this.call(Proc.CONNECT_GET_TYPE), (r) => r.string());
  }

  /** Hypervisor version (CONNECT_GET_VERSION) as major * 1 000 000 + minor * 1000 + release. */
  async getVersion(): Promise<number> {
    return ret(await this.call(Proc.CONNECT_GET_VERSION), (r) => Number(r.uhyper()));
  }

  /** libvirt version of the daemon (CONNECT_GET_LIB_VERSION), same encoding as {@link getVersion}. */
  async getLibVersion(): Promise<number> {
    return ret(await this.call(Proc.CONNECT_GET_LIB_VERSION), (r) => Number(r.uhyper()));
  }

  /** Host name (CONNECT_GET_HOSTNAME). */
  async getHostname(): Promise<string> {
    return ret(await this.call(Proc.CONNECT_GET_HOSTNAME), (r) => r.string());
  }

  /** Capabilities XML (CONNECT_GET_CAPABILITIES). */
  async getCapabilities(): Promise<string> {
    return ret(await this.call(Proc.CONNECT_GET_CAPABILITIES), (r) => r.string());
  }

  /** Whether the driver supports a `VIR_DRV_FEATURE_*` (CONNECT_SUPPORTS_FEATURE). */
  async supportsFeature(feature: number): Promise<boolean> {
    return ret(await this.call(Proc.CONNECT_SUPPORTS_FEATURE, args((w) => w.int(feature))), (r) => r.int() !== 0);
  }

  /** Host CPU and memory (NODE_GET_INFO). */
  async getNodeInfo(): Promise<NodeInfo> {
    return ret(await this.call(Proc.NODE_GET_INFO), (r) => ({
      model: readCharArray(r, 32),
      memoryKiB: r.uhyper(),
      cpus: r.int(),
      mhz: r.int(),
      nodes: r.int(),
      sockets: r.int(),
      cores: r.int(),
      threads: r.int(),
    }));
  }

  // -------------------------------------------------------------------------------------------
  // Domains

  /** All domains matching `flags` (`Flags.LIST_DOMAINS_*`; 0 = all) (CONNECT_LIST_ALL_DOMAINS). */
  async listAllDomains(flags = 0): Promise<DomainRef[]> {
    return ret(await this.call(Proc.CONNECT_LIST_ALL_DOMAINS, args((w) => w.int(1).uint(flags))), (r) => {
      const domains = r.array(readDomain);
      r.uint(); // count, same as domains.length when results are requested
      return domains;
    });
  }

  /** DOMAIN_LOOKUP_BY_NAME; {@link NotFoundError} if there is none. */
  async lookupDomainByName(name: string): Promise<DomainRef> {
    return ret(await this.call(Proc.DOMAIN_LOOKUP_BY_NAME, args((w) => w.string(name))), readDomain);
  }

  /** DOMAIN_LOOKUP_BY_UUID (bytes or string). */
  async lookupDomainByUuid(uuid: Uint8Array | string): Promise<DomainRef> {
    const bytes = toUuidBytes(uuid);
    return ret(await this.call(Proc.DOMAIN_LOOKUP_BY_UUID, args((w) => w.fixedOpaque(bytes, 16))), readDomain);
  }

  /** Defines (or updates) a persistent domain from XML (DOMAIN_DEFINE_XML_FLAGS). */
  async defineDomain(xml: string, flags = 0): Promise<DomainRef> {
    return ret(await this.call(Proc.DOMAIN_DEFINE_XML_FLAGS, args((w) => w.string(xml).uint(flags))), readDomain);
  }

  /** Starts a defined domain (DOMAIN_CREATE_WITH_FLAGS); returns the handle with its new id. */
  async createDomain(dom: DomainRef, flags = 0, call?: CallOptions): Promise<DomainRef> {
    return ret(await this.call(Proc.DOMAIN_CREATE_WITH_FLAGS, args((w) => (writeDomain(w, dom), w.uint(flags))), call), readDomain);
  }

  /** Asks the guest to shut down (DOMAIN_SHUTDOWN_FLAGS); returns before it has. */
  async shutdownDomain(dom: DomainRef, flags = 0, call?: CallOptions): Promise<void> {
    ret(await this.call(Proc.DOMAIN_SHUTDOWN_FLAGS, args((w) => (writeDomain(w, dom), w.uint(flags))), call), () => undefined);
  }

  /** Stops a domain now (DOMAIN_DESTROY_FLAGS; `Flags.DESTROY_GRACEFUL` to avoid SIGKILL). */
  async destroyDomain(dom: DomainRef, flags = 0, call?: CallOptions): Promise<void> {
    ret(await this.call(Proc.DOMAIN_DESTROY_FLAGS, args((w) => (writeDomain(w, dom), w.uint(flags))), call), () => undefined);
  }

  /**
   * Migrates a domain to another libvirtd (DOMAIN_MIGRATE_PERFORM3_PARAMS). With
   * `MigrateFlags.PEER2PEER` this daemon connects to `dconnuri` itself and drives the whole
   * migration; the call returns once it has finished (or failed, leaving the domain running here).
   * What a client's virDomainMigrateToURI3 sends in peer-to-peer mode: no cookie.
   */
  async migrateDomainPeerToPeer(dom: DomainRef, dconnuri: string, params: MigrateParams, flags: number, call?: CallOptions): Promise<void> {
    const list: TypedParam[] = [];
    if (params.migrateUri !== undefined) list.push({ field: 'migrate_uri', type: 'string', value: params.migrateUri });
    if (params.destinationXml !== undefined) list.push({ field: 'destination_xml', type: 'string', value: params.destinationXml });
    if (params.persistentXml !== undefined) list.push({ field: 'persistent_xml', type: 'string', value: params.persistentXml });
    if (params.bandwidthMiBs !== undefined) list.push({ field: 'bandwidth', type: 'ullong', value: BigInt(params.bandwidthMiBs) });
    const body = args((w) => {
      writeDomain(w, dom);
      w.optional(dconnuri, (x, v) => x.string(v));
      w.array(list, writeTypedParam);
      w.opaque(new Uint8Array(0));
      w.uint(flags);
    });
    // remote_domain_migrate_perform3_params_ret: the cookie (empty in peer-to-peer mode).
    ret(await this.call(Proc.DOMAIN_MIGRATE_PERFORM3_PARAMS, body, call), (r) => void r.opaque());
  }

  /** Cancels the domain's running job, a migration say (DOMAIN_ABORT_JOB); fails when none runs. */
  async abortDomainJob(dom: DomainRef): Promise<void> {
    ret(await this.call(Proc.DOMAIN_ABORT_JOB, args((w) => writeDomain(w, dom))), () => undefined);
  }

  /** Removes a domain's persistent definition (DOMAIN_UNDEFINE_FLAGS, `Flags.UNDEFINE_*`). */
  async undefineDomain(dom: DomainRef, flags = 0): Promise<void> {
    ret(await this.call(Proc.DOMAIN_UNDEFINE_FLAGS, args((w) => (writeDomain(w, dom), w.uint(flags)))), () => undefined);
  }

  /** State and reason (DOMAIN_GET_STATE). */
  async getDomainState(dom: DomainRef): Promise<DomainStateInfo> {
    return ret(await this.call(Proc.DOMAIN_GET_STATE, args((w) => (writeDomain(w, dom), w.uint(0)))), (r) => ({
      state: r.int(),
      reason: r.int(),
    }));
  }

  /** Memory, vCPUs and CPU time (DOMAIN_GET_INFO). */
  async getDomainInfo(dom: DomainRef): Promise<DomainInfo> {
    return ret(await this.call(Proc.DOMAIN_GET_INFO, args((w) => writeDomain(w, dom))), (r) => ({
      state: r.uint(), // unsigned char, 4 bytes on the wire
      maxMemoryKiB: r.uhyper(),
      memoryKiB: r.uhyper(),
      vcpus: r.uint(), // unsigned short, 4 bytes on the wire
      cpuTimeNs: r.uhyper(),
    }));
  }

  /** Domain XML (DOMAIN_GET_XML_DESC, `Flags.XML_*`). */
  async getDomainXml(dom: DomainRef, flags = 0): Promise<string> {
    return ret(await this.call(Proc.DOMAIN_GET_XML_DESC, args((w) => (writeDomain(w, dom), w.uint(flags)))), (r) => r.string());
  }

  /** Attaches a device (DOMAIN_ATTACH_DEVICE_FLAGS, `Flags.AFFECT_*`). */
  async attachDevice(dom: DomainRef, xml: string, flags: number = Flags.AFFECT_CURRENT, call?: CallOptions): Promise<void> {
    const body = args((w) => (writeDomain(w, dom), w.string(xml).uint(flags)));
    ret(await this.call(Proc.DOMAIN_ATTACH_DEVICE_FLAGS, body, call), () => undefined);
  }

  /** Detaches a device (DOMAIN_DETACH_DEVICE_FLAGS, `Flags.AFFECT_*`). */
  async detachDevice(dom: DomainRef, xml: string, flags: number = Flags.AFFECT_CURRENT, call?: CallOptions): Promise<void> {
    const body = args((w) => (writeDomain(w, dom), w.string(xml).uint(flags)));
    ret(await this.call(Proc.DOMAIN_DETACH_DEVICE_FLAGS, body, call), () => undefined);
  }

  /**
   * Bulk statistics (CONNECT_GET_ALL_DOMAIN_STATS) for `domains`, or for all domains matching
   * `flags` when the list is empty. `stats` is a mask of {@link DomainStatsGroup} (0 = every group
   * the driver supports). Counters come back as `bigint` (`ullong` parameters).
   */
  async getAllDomainStats(
    options: { domains?: DomainRef[]; stats?: number; flags?: number; timeoutMs?: number } = {},
  ): Promise<DomainStatsRecord[]> {
    const body = args((w) => {
      w.array(options.domains ?? [], (x, d) => writeDomain(x, d));
      w.uint(options.stats ?? 0).uint(options.flags ?? 0);
    });
    const call = options.timeoutMs === undefined ? undefined : { timeoutMs: options.timeoutMs };
    return ret(await this.call(Proc.CONNECT_GET_ALL_DOMAIN_STATS, body, call), (r) =>
      r.array((x) => {
        const domain = readDomain(x);
        const params = x.array(readTypedParam);
        return { domain, params, values: new Map(params.map((p) => [p.field, p.value])) };
      }),
    );
  }

  // -------------------------------------------------------------------------------------------
  // Storage pools

  /** All pools matching `flags` (`VIR_CONNECT_LIST_STORAGE_POOLS_*`; 0 = all). */
  async listAllStoragePools(flags = 0): Promise<StoragePoolRef[]> {
    return ret(await this.call(Proc.CONNECT_LIST_ALL_STORAGE_POOLS, args((w) => w.int(1).uint(flags))), (r) => {
      const pools = r.array(readPool);
      r.uint();
      return pools;
    });
  }

  /** STORAGE_POOL_LOOKUP_BY_NAME. */
  async lookupStoragePoolByName(name: string): Promise<StoragePoolRef> {
    return ret(await this.call(Proc.STORAGE_POOL_LOOKUP_BY_NAME, args((w) => w.string(name))), readPool);
  }

  /** STORAGE_POOL_LOOKUP_BY_UUID. */
  async lookupStoragePoolByUuid(uuid: Uint8Array | string): Promise<StoragePoolRef> {
    const bytes = toUuidBytes(uuid);
    return ret(await this.call(Proc.STORAGE_POOL_LOOKUP_BY_UUID, args((w) => w.fixedOpaque(bytes, 16))), readPool);
  }

  /** Defines a persistent pool from XML (STORAGE_POOL_DEFINE_XML); it is inactive until created. */
  async defineStoragePool(xml: string, flags = 0): Promise<StoragePoolRef> {
    return ret(await this.call(Proc.STORAGE_POOL_DEFINE_XML, args((w) => w.string(xml).uint(flags))), readPool);
  }

  /** Starts a defined pool (STORAGE_POOL_CREATE; `Flags.POOL_CREATE_WITH_BUILD` builds it first). */
  async createStoragePool(pool: StoragePoolRef, flags = 0, call?: CallOptions): Promise<void> {
    ret(await this.call(Proc.STORAGE_POOL_CREATE, args((w) => (writePool(w, pool), w.uint(flags))), call), () => undefined);
  }

  /** Defines and starts a pool in one step, transient (STORAGE_POOL_CREATE_XML). */
  async createStoragePoolXml(xml: string, flags = 0): Promise<StoragePoolRef> {
    return ret(await this.call(Proc.STORAGE_POOL_CREATE_XML, args((w) => w.string(xml).uint(flags))), readPool);
  }

  /** Builds the pool's underlying storage (STORAGE_POOL_BUILD). */
  async buildStoragePool(pool: StoragePoolRef, flags = 0, call?: CallOptions): Promise<void> {
    ret(await this.call(Proc.STORAGE_POOL_BUILD, args((w) => (writePool(w, pool), w.uint(flags))), call), () => undefined);
  }

  /** Stops a pool (STORAGE_POOL_DESTROY); its data stays. */
  async destroyStoragePool(pool: StoragePoolRef): Promise<void> {
    ret(await this.call(Proc.STORAGE_POOL_DESTROY, args((w) => writePool(w, pool))), () => undefined);
  }

  /** Deletes the pool's underlying storage (STORAGE_POOL_DELETE); the pool must be inactive. */
  async deleteStoragePool(pool: StoragePoolRef, flags = 0, call?: CallOptions): Promise<void> {
    ret(await this.call(Proc.STORAGE_POOL_DELETE, args((w) => (writePool(w, pool), w.uint(flags))), call), () => undefined);
  }

  /** Removes a pool's persistent definition (STORAGE_POOL_UNDEFINE). */
  async undefineStoragePool(pool: StoragePoolRef): Promise<void> {
    ret(await this.call(Proc.STORAGE_POOL_UNDEFINE, args((w) => writePool(w, pool))), () => undefined);
  }

  /** Rescans the pool's volumes (STORAGE_POOL_REFRESH). */
  async refreshStoragePool(pool: StoragePoolRef, flags = 0, call?: CallOptions): Promise<void> {
    ret(await this.call(Proc.STORAGE_POOL_REFRESH, args((w) => (writePool(w, pool), w.uint(flags))), call), () => undefined);
  }

  /** State and sizes (STORAGE_POOL_GET_INFO). */
  async getStoragePoolInfo(pool: StoragePoolRef): Promise<StoragePoolInfo> {
    return ret(await this.call(Proc.STORAGE_POOL_GET_INFO, args((w) => writePool(w, pool))), (r) => ({
      state: r.uint(), // unsigned char, 4 bytes on the wire
      capacity: r.uhyper(),
      allocation: r.uhyper(),
      available: r.uhyper(),
    }));
  }

  /** Pool XML (STORAGE_POOL_GET_XML_DESC). */
  async getStoragePoolXml(pool: StoragePoolRef, flags = 0): Promise<string> {
    return ret(await this.call(Proc.STORAGE_POOL_GET_XML_DESC, args((w) => (writePool(w, pool), w.uint(flags)))), (r) => r.string());
  }

  // -------------------------------------------------------------------------------------------
  // Storage volumes

  /** Volumes of a pool (STORAGE_POOL_LIST_ALL_VOLUMES). */
  async listAllVolumes(pool: StoragePoolRef, flags = 0): Promise<StorageVolRef[]> {
    return ret(await this.call(Proc.STORAGE_POOL_LIST_ALL_VOLUMES, args((w) => (writePool(w, pool), w.int(1).uint(flags)))), (r) => {
      const vols = r.array(readVol);
      r.uint();
      return vols;
    });
  }

  /** Creates a volume from XML (STORAGE_VOL_CREATE_XML). */
  async createVolume(pool: StoragePoolRef, xml: string, flags = 0, call?: CallOptions): Promise<StorageVolRef> {
    return ret(await this.call(Proc.STORAGE_VOL_CREATE_XML, args((w) => (writePool(w, pool), w.string(xml).uint(flags))), call), readVol);
  }

  /** Creates a volume whose content is a copy of `source` (STORAGE_VOL_CREATE_XML_FROM): a clone. */
  async cloneVolume(pool: StoragePoolRef, xml: string, source: StorageVolRef, flags = 0, call?: CallOptions): Promise<StorageVolRef> {
    const body = args((w) => {
      writePool(w, pool);
      w.string(xml);
      writeVol(w, source);
      w.uint(flags);
    });
    return ret(await this.call(Proc.STORAGE_VOL_CREATE_XML_FROM, body, call), readVol);
  }

  /** STORAGE_VOL_LOOKUP_BY_NAME. */
  async lookupVolumeByName(pool: StoragePoolRef, name: string): Promise<StorageVolRef> {
    return ret(await this.call(Proc.STORAGE_VOL_LOOKUP_BY_NAME, args((w) => (writePool(w, pool), w.string(name)))), readVol);
  }

  /** Type and sizes (STORAGE_VOL_GET_INFO). */
  async getVolumeInfo(vol: StorageVolRef): Promise<StorageVolInfo> {
    return ret(await this.call(Proc.STORAGE_VOL_GET_INFO, args((w) => writeVol(w, vol))), (r) => ({
      type: r.int(), // char, 4 bytes on the wire
      capacity: r.uhyper(),
      allocation: r.uhyper(),
    }));
  }

  /** Path of the volume on the host (STORAGE_VOL_GET_PATH). */
  async getVolumePath(vol: StorageVolRef): Promise<string> {
    return ret(await this.call(Proc.STORAGE_VOL_GET_PATH, args((w) => writeVol(w, vol))), (r) => r.string());
  }

  /** Volume XML (STORAGE_VOL_GET_XML_DESC). */
  async getVolumeXml(vol: StorageVolRef, flags = 0): Promise<string> {
    return ret(await this.call(Proc.STORAGE_VOL_GET_XML_DESC, args((w) => (writeVol(w, vol), w.uint(flags)))), (r) => r.string());
  }

  /** Deletes a volume (STORAGE_VOL_DELETE). */
  async deleteVolume(vol: StorageVolRef, flags = 0, call?: CallOptions): Promise<void> {
    ret(await this.call(Proc.STORAGE_VOL_DELETE, args((w) => (writeVol(w, vol), w.uint(flags))), call), () => undefined);
  }

  /**
   * Writes data into a volume through a stream (STORAGE_VOL_UPLOAD). Resolves when the daemon has
   * confirmed the end of the transfer. On failure the stream is aborted and the error rethrown.
   */
  async uploadVolume(vol: StorageVolRef, data: Uint8Array | AsyncIterable<Uint8Array>, options: VolumeTransferOptions = {}): Promise<void> {
    const length = options.length ?? (data instanceof Uint8Array ? BigInt(data.length) : 0n);
    const body = args((w) => {
      writeVol(w, vol);
      w.uhyper(options.offset ?? 0n).uhyper(length).uint(options.flags ?? 0);
    });
    const ch = await this.connection.openStream(Proc.STORAGE_VOL_UPLOAD, body);
    try {
      if (data instanceof Uint8Array) await ch.write(data);
      else for await (const chunk of data) await ch.write(chunk);
      await ch.finish(options.finishTimeoutMs ?? 60_000);
    } catch (e) {
      ch.abort(e instanceof Error ? e : new Error(String(e)));
      throw e;
    }
  }

  /**
   * Reads a volume through a stream (STORAGE_VOL_DOWNLOAD). The returned stream ends once the
   * daemon has sent everything and the transfer is closed on both sides; it errors with the
   * daemon's error otherwise. A consumer slower than the daemon pauses the whole connection: use
   * a dedicated connection for large transfers.
   */
  async downloadVolume(vol: StorageVolRef, options: VolumeTransferOptions = {}): Promise<Readable> {
    const body = args((w) => {
      writeVol(w, vol);
      w.uhyper(options.offset ?? 0n).uhyper(options.length ?? 0n).uint(options.flags ?? 0);
    });
    const ch = await this.connection.openStream(Proc.STORAGE_VOL_DOWNLOAD, body);
    return ch.incoming;
  }

  // -------------------------------------------------------------------------------------------
  // Events

  /**
   * Subscribes to domain lifecycle events (CONNECT_DOMAIN_EVENT_CALLBACK_REGISTER_ANY with
   * `VIR_DOMAIN_EVENT_ID_LIFECYCLE`), for one domain or all. The registration is made again
   * after every reconnection; events that happened while disconnected are not replayed, so
   * resynchronise state (list domains) on the connection's `ready`.
   */
  async onDomainLifecycle(
    handler: (e: DomainLifecycleEvent) => void,
    options: { domain?: DomainRef } = {},
  ): Promise<EventSubscription> {
    const sub: LifecycleSub = { handler, domain: options.domain ?? null, callbackId: null, active: true };
    // In the set before the call, so a reconnection racing with it registers it again.
    this.lifecycleSubs.add(sub);
    try {
      await this.registerLifecycle(sub, (proc, body, o) => this.call(proc, body, o));
    } catch (e) {
      sub.active = false;
      this.lifecycleSubs.delete(sub);
      throw e;
    }
    return {
      unsubscribe: async () => {
        if (!sub.active) return;
        sub.active = false;
        this.lifecycleSubs.delete(sub);
        const id = sub.callbackId;
        if (id === null) return;
        this.subsByCallbackId.delete(id);
        // Without a connection the registration died with the old socket already.
        if (this.connection.state !== 'ready') return;
        ret(await this.call(Proc.CONNECT_DOMAIN_EVENT_CALLBACK_DEREGISTER_ANY, args((w) => w.int(id))), () => undefined);
      },
    };
  }

  private async registerLifecycle(sub: LifecycleSub, call: Caller): Promise<void> {
    const body = args((w) => {
      w.int(DomainEventId.LIFECYCLE);
      w.optional(sub.domain, (x, d) => writeDomain(x, d));
    });
    this.registrationsInFlight++;
    try {
      const id = ret(await call(Proc.CONNECT_DOMAIN_EVENT_CALLBACK_REGISTER_ANY, body), (r) => r.int());
      sub.callbackId = id;
      this.subsByCallbackId.set(id, sub);
      // The daemon can send an event for the new callback before we have read the reply that
      // tells us its id; such events were held back and are delivered now, in order.
      const held = this.earlyLifecycleEvents.filter((e) => e.callbackId === id);
      this.earlyLifecycleEvents = this.earlyLifecycleEvents.filter((e) => e.callbackId !== id);
      for (const e of held) this.deliver(sub, e.event);
    } finally {
      this.registrationsInFlight--;
      if (this.registrationsInFlight === 0) this.earlyLifecycleEvents = [];
    }
  }

  private onLifecycleMessage(body: Buffer): void {
    const { callbackId, event } = ret(body, (r) => {
      const id = r.int();
      const domain = readDomain(r);
      return {
        callbackId: id,
        event: { domain, name: domain.name, uuid: uuidToString(domain.uuid), event: r.int(), detail: r.int() },
      };
    });
    const sub = this.subsByCallbackId.get(callbackId);
    if (sub) {
      this.deliver(sub, event);
    } else if (this.registrationsInFlight > 0) {
      this.earlyLifecycleEvents.push({ callbackId, event });
    }
  }

  /** Calls a subscriber; its exceptions are reported, never thrown into the connection. */
  private deliver(sub: LifecycleSub, event: DomainLifecycleEvent): void {
    if (!sub.active) return;
    try {
      sub.handler(event);
    } catch (e) {
      this.connection.reportListenerError(e);
    }
  }
}
