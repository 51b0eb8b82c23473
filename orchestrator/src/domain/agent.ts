// The orchestrator's own types for what it exchanges with agents. The gRPC messages
// (@kloudak/proto/agent) are mapped to and from these in agent-api/convert.ts and go no further.

/** A VM network interface as a command carries it. */
export interface NicSpec {
  networkId: string;
  mac: string;
  /** OVS bridge; empty: the host's default bridge. */
  bridge: string;
  /** Access VLAN 1..4094; 0 untagged. */
  vlan: number;
  /** "10.1.0.5/24"; empty for DHCP. */
  address: string;
  gateway: string;
  dnsServers: string[];
}

/** A VM's definition as a create (or a migration's destination) needs it. */
export interface VmDefinition {
  hostname: string;
  cpu: number;
  ramMb: number;
  diskGb: number;
  pool: string;
  templateVolume: string;
  nics: NicSpec[];
  sshAuthorizedKeys: string[];
  /** crypt(3) hash, never a clear-text password; empty: none. */
  passwordHash: string;
  ha: boolean;
  boot?: { kernel: string; initrd: string; cmdline: string };
  /** The user's own cloud-init user-data (a secret: never logged or put in a task). */
  userData?: string;
}

/** How a source host migrates a VM to a destination (the destination's answer to prepareMigration). */
export interface MigrationTarget {
  /** The destination's libvirtd as the source's libvirtd reaches it. */
  libvirtUri: string;
  /** Where QEMU streams the memory. */
  migrateUri: string;
  /** The domain XML as the destination defines it. */
  domainXml: string;
}

/** What a command asks an agent to do. VM commands name the VM in {@link AgentCommand.vmId}. */
export type CommandAction =
  /** Live migration, destination side: get ready to receive the VM (its disk is on the shared pool). */
  | { kind: 'prepareMigration'; vm: VmDefinition }
  /** Live migration, source side: peer-to-peer live migration to the prepared destination. */
  | { kind: 'migrateVm'; target: MigrationTarget; sharedStorage: boolean; timeoutMs: number }
  | {
      kind: 'createVm';
      hostname: string;
      cpu: number;
      ramMb: number;
      diskGb: number;
      pool: string;
      templateVolume: string;
      nics: NicSpec[];
      sshAuthorizedKeys: string[];
      /** crypt(3) hash, never a clear-text password; empty: none. */
      passwordHash: string;
      ha: boolean;
      boot?: { kernel: string; initrd: string; cmdline: string };
      /** The user's own cloud-init user-data (a secret: never logged or put in a task). */
      userData?: string;
      /** Failover: boot from the existing root volume on the shared pool (never re-cloned); `start: false` defines only. */
      recover?: { start: boolean };
    }
  | { kind: 'deleteVm'; pool: string; bridges: string[] }
  /** Remove a VM's domain and ports from a host, never its volumes (it runs on another host now). */
  | { kind: 'evictVm'; bridges: string[] }
  | { kind: 'startVm' }
  | { kind: 'stopVm'; timeoutMs: number; force: boolean }
  | { kind: 'rebootVm' }
  | { kind: 'attachInterface'; index: number; nic: NicSpec }
  | { kind: 'detachInterface'; index: number; nic: NicSpec }
  | { kind: 'ensureNetwork'; networkId: string; vlan: number; bridge: string }
  | { kind: 'deleteNetwork'; networkId: string; vlan: number; bridge: string }
  | { kind: 'fence'; vmIds: string[]; reason: string }
  | { kind: 'readConsole'; maxBytes: number }
  | { kind: 'getInventory' };

/** A command for an agent, before the channel gives it an id and a deadline. */
export interface AgentCommand {
  /** The VM the command is about (lower-case UUID); absent for network, fence and inventory commands. */
  vmId?: string;
  action: CommandAction;
}

/** Classes of command failure (AGENT-LINK.md, "Error codes"). */
export type CommandErrorCode =
  | 'invalid_argument'
  | 'not_found'
  | 'already_exists'
  | 'deadline_exceeded'
  | 'resource_exhausted'
  | 'failed_precondition'
  | 'unimplemented'
  | 'unavailable'
  | 'internal';

/** A libvirt domain found on a host. */
export interface InventoryDomain {
  name: string;
  uuid: string;
  vmId: string;
  state: string;
  vcpus: number;
  memoryBytes: number;
}

/** What exists on a host: domains, volumes and OVS ports. */
export interface HostInventory {
  domains: InventoryDomain[];
  volumes: { pool: string; name: string; path: string; capacityBytes: number; allocationBytes: number; vmId: string }[];
  ovsPorts: { name: string; bridge: string; vlan: number; mac: string; vmId: string }[];
}

/** The outcome of a command: exactly one per command. */
export interface CommandResult {
  commandId: string;
  ok: boolean;
  /** Set when `ok` is false. */
  error?: { code: CommandErrorCode; message: string };
  completedAt: Date;
  /** Answer of getInventory. */
  inventory?: HostInventory;
  /** Answer of readConsole. */
  console?: { data: Buffer; truncated: boolean };
  /** Answer of prepareMigration. */
  migrationTarget?: MigrationTarget;
  /** Set on a failure when the command never reached any session: the agent cannot have acted on it. */
  notSent?: boolean;
}

/** Hardware of a host from its Hello. */
export interface HostCapacity {
  cpuCount: number;
  memoryBytes: bigint;
  diskBytes: bigint;
}

/** A bridge reported in Hello. */
export interface BridgeInfo {
  name: string;
  kind: 'ovs' | 'linux' | 'unspecified';
  mtu: number;
  up: boolean;
}

/** A storage pool as a host sees it. */
export interface PoolInfo {
  name: string;
  path: string;
  capacityBytes: number;
  allocationBytes: number;
  availableBytes: number;
  active: boolean;
}

/** The Hello of a session, in domain terms. */
export interface AgentHello {
  hostId: string;
  hostName: string;
  agentVersion: string;
  capacity: HostCapacity;
  bridges: BridgeInfo[];
  pools: PoolInfo[];
  inventory: HostInventory;
  agentStartedAt: Date | null;
}

/** Host-wide usage from one heartbeat. */
export interface HostUsage {
  /** 0..100 across all logical CPUs. */
  cpuPercent: number;
  memoryUsedBytes: number;
  memoryTotalBytes: number;
  /** Sum over the pools the host reported. */
  diskUsedBytes: number;
  diskTotalBytes: number;
}

/** A heartbeat, in domain terms. */
export interface AgentHeartbeat {
  sequence: bigint;
  sentAt: Date | null;
  usage: HostUsage;
  libvirtConnected: boolean;
  pendingFenceReports: number;
  /** Other hosts' pool lease files as this host read them (evidence only). */
  peerLeases: PeerLeaseReport[];
}

/**
 * One host's reading of another host's lease file on a shared pool (proto PeerLease). Times in
 * the file are the peer's clock; `unchangedForMs` is the observer's monotonic measure.
 */
export interface PeerLeaseReport {
  poolName: string;
  hostId: string;
  sequence: bigint;
  writtenAt: Date | null;
  validUntil: Date | null;
  fenced: boolean;
  fencedAt: Date | null;
  unchangedForMs: number;
  renewalSeen: boolean;
  fileModifiedAt: Date | null;
}

/** One observer's latest reading of a host's file on one pool. */
export interface PoolLeaseObservation {
  observerHostId: string;
  poolName: string;
  sequence: string;
  /** The subject's wall clock when it wrote the file (ISO), as written. */
  writtenAt: string | null;
  /** The end of its orchestrator lease as it wrote it (its clock, ISO). */
  validUntil: string | null;
  fenced: boolean;
  fencedAt: string | null;
  /** The observer saw the sequence change while it watched. */
  renewalSeen: boolean;
  /** How long the observer had read the same sequence, at its report. */
  unchangedForMs: number;
  /** Milliseconds since the observer's report arrived. */
  reportAgeMs: number;
  /** Milliseconds since the observer last saw the file change (unchanged + report age), when it saw one. */
  lastRenewalSeenMsAgo: number | null;
  /** The file's modification time (the storage's clock, ISO). */
  fileModifiedAt: string | null;
}

/** Everything known of a host's lease files, for the host-down record and the failover code. */
export interface PoolLeaseEvidence {
  hostId: string;
  /** Observations, newest report first. */
  observations: PoolLeaseObservation[];
  /** The most recent renewal any observer saw, ms ago; null when none saw one. */
  lastRenewalSeenMsAgo: number | null;
  /** Some observer read "fenced" in its latest reading of the host's file. */
  fenced: boolean;
  /** The latest fence time any file gave. */
  fencedAt: string | null;
}

/** An agent's report that it fenced itself. */
export interface FenceEvidence {
  fencedAt: Date;
  leaseExpiredAt: Date;
  reason: string;
  domains: { domainName: string; vmId: string }[];
}

/** A libvirt lifecycle event of a domain. */
export interface DomainLifecycleEvent {
  vmId: string;
  domainName: string;
  event: 'started' | 'stopped' | 'crashed' | 'shutdown' | 'suspended' | 'resumed' | 'unspecified';
  detail: string;
  occurredAt: Date | null;
}
