/**
 * The agent's ports: everything host operations need from the machine, each with a real
 * implementation (libvirt through @kloudak/libvirt, Open vSwitch through ovs-vsctl, processes
 * through one CommandRunner). Host operations receive these; tests inject faults by wrapping them.
 */

/** What a finished process returned. */
export interface CommandResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Options of one process run. */
export interface RunOptions {
  /** Killed (SIGKILL) after this long; the run then fails with a CommandError. Default 30 s. */
  timeoutMs?: number;
  /** Written to the process's stdin. */
  input?: string | Uint8Array;
  /** Resolve with a non-zero exit code instead of throwing. */
  allowFailure?: boolean;
}

/**
 * The only place the agent spawns processes. Always an argv array, never a shell string, so no
 * value (a VM name, a path) can be interpreted by a shell.
 */
export interface CommandRunner {
  run(argv: readonly string[], opts?: RunOptions): Promise<CommandResult>;
}

/** A domain as the hypervisor reports it. */
export interface DomainStatus {
  name: string;
  uuid: string;
  state: DomainState;
}

/** Coarse domain states (libvirt's virDomainState). */
export type DomainState = 'running' | 'blocked' | 'paused' | 'shutdown' | 'shutoff' | 'crashed' | 'pmsuspended' | 'nostate';

/** Libvirt domains. Names are Kloudak-derived (see names.ts), never user-chosen alone. */
export interface Hypervisor {
  /** Define (or redefine) a persistent domain from XML. */
  define(xml: string): Promise<void>;
  /** Start a defined domain; starting a running domain succeeds. */
  start(name: string): Promise<void>;
  /** Ask the guest to shut down (ACPI); returns at once. */
  shutdown(name: string): Promise<void>;
  /** Power off now; a domain that is not running or does not exist succeeds. */
  destroy(name: string): Promise<void>;
  /** Remove the definition; a missing domain succeeds. */
  undefine(name: string): Promise<void>;
  reboot(name: string): Promise<void>;
  /** State, or null when no such domain exists. */
  state(name: string): Promise<DomainState | null>;
  list(): Promise<DomainStatus[]>;
  xml(name: string): Promise<string>;
  /** Live and persistent device hot-(un)plug. */
  attachDevice(name: string, xml: string): Promise<void>;
  detachDevice(name: string, xml: string): Promise<void>;
  /**
   * Live-migrate a running domain to another host's libvirtd, peer to peer (this daemon connects
   * to `peerUri` itself). Resolves once it runs there, defined persistently, and is undefined here;
   * on failure it keeps running here.
   */
  migrate(name: string, to: MigrationRequest): Promise<void>;
}

/** Where and how {@link Hypervisor.migrate} moves a domain. */
export interface MigrationRequest {
  /** The destination libvirtd's URI, as this host's libvirtd reaches it. */
  peerUri: string;
  /** Where QEMU streams the memory, e.g. `tcp:10.0.0.12`. */
  migrateUri: string;
  /** The domain's XML on the destination (same name and UUID). */
  xml: string;
  /** The disks are on storage both hosts mount (the orchestrator knows: the area's shared pool). */
  sharedStorage: boolean;
  /** Cancel after this long. */
  timeoutMs: number;
}

/** A volume in a storage pool. */
export interface VolumeStatus {
  name: string;
  path: string;
  capacityBytes: bigint;
  allocationBytes: bigint;
}

/** Storage pool volumes. */
export interface Storage {
  /** A qcow2 overlay of `template` named `name`, grown to `capacityGb`. Existing volume → no-op. */
  cloneOverlay(pool: string, template: string, name: string, capacityGb: number): Promise<VolumeStatus>;
  /** A raw volume holding exactly `data` (cloud-init seeds). Existing volume → replaced. */
  putRaw(pool: string, name: string, data: Uint8Array): Promise<VolumeStatus>;
  /** Delete; a missing volume succeeds. */
  delete(pool: string, name: string): Promise<void>;
  get(pool: string, name: string): Promise<VolumeStatus | null>;
  list(pool: string): Promise<VolumeStatus[]>;
}

/** An Open vSwitch port as ovs-vsctl reports it. */
export interface OvsPort {
  name: string;
  bridge: string;
  /** Access VLAN tag, or null for none. */
  tag: number | null;
  /** external_ids, where Kloudak records which VM and network a port belongs to. */
  externalIds: Record<string, string>;
}

/** Open vSwitch, through ovs-vsctl. */
export interface NetworkDriver {
  /** Create the bridge (with the configured datapath type) if missing. */
  ensureBridge(bridge: string): Promise<void>;
  /** Allow `vlan` on the bridge's uplink trunk port, if one is configured. */
  ensureVlan(bridge: string, vlan: number): Promise<void>;
  /** Stop carrying `vlan` on the uplink; absent → success. */
  removeVlan(bridge: string, vlan: number): Promise<void>;
  listPorts(bridge: string): Promise<OvsPort[]>;
  /** Delete a port; a missing port succeeds. */
  deletePort(bridge: string, port: string): Promise<void>;
}

/** Files of a cloud-init NoCloud seed. */
export interface SeedFiles {
  metaData: string;
  userData: string;
  networkConfig: string;
}

/** Builds the NoCloud seed image (an ISO 9660 volume labelled `cidata`). */
export interface SeedBuilder {
  build(files: SeedFiles): Promise<Uint8Array>;
}
