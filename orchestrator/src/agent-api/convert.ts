// The edge between the agent link's protobuf messages and the orchestrator's domain types.
// Nothing outside agent-api/ sees a proto type.
import * as pb from '@kloudak/proto/agent';
import type {
  AgentCommand,
  AgentHeartbeat,
  AgentHello,
  BridgeInfo,
  CommandErrorCode,
  CommandResult,
  DomainLifecycleEvent,
  FenceEvidence,
  PeerLeaseReport,
  HostInventory,
  NicSpec,
  PoolInfo,
} from '../domain/agent.js';

/** A bigint counter as a number; byte counts stay exact below 2^53 (8 PiB). */
/**
 * The largest byte figure an agent may report (2^53, 8 PiB): what a number holds exactly, and more
 * than any host or pool. An agent is not trusted: a memory figure of 2^51 bytes once overflowed an
 * int column, and the batched insert of that minute then lost every host's usage (issue 11); the
 * columns' own ranges are enforced where rows are built (usage.ts, store/agent-hosts.ts).
 */
export const MAX_REPORTED_BYTES = 2 ** 53;

/** A 64-bit counter from the wire as a number in 0..MAX_REPORTED_BYTES. */
function num(v: bigint | number | undefined): number {
  if (v === undefined) return 0;
  const n = Number(v);
  return Number.isFinite(n) ? Math.min(MAX_REPORTED_BYTES, Math.max(0, n)) : 0;
}

function nicToProto(n: NicSpec): pb.Nic {
  return { networkId: n.networkId, mac: n.mac, bridge: n.bridge, vlan: n.vlan, address: n.address, gateway: n.gateway, dnsServers: [...n.dnsServers] };
}

/** A domain command with its id and deadline, as the wire carries it. */
export function commandToProto(commandId: string, deadline: Date, c: AgentCommand): pb.Command {
  const a = c.action;
  let action: pb.Command['action'];
  switch (a.kind) {
    case 'createVm':
      action = {
        $case: 'createVm',
        createVm: {
          hostname: a.hostname,
          cpu: a.cpu,
          ramMb: a.ramMb,
          diskGb: a.diskGb,
          pool: a.pool,
          templateVolume: a.templateVolume,
          nics: a.nics.map(nicToProto),
          sshAuthorizedKeys: [...a.sshAuthorizedKeys],
          passwordHash: a.passwordHash,
          ha: a.ha,
          boot: a.boot ? { ...a.boot } : undefined,
          userData: a.userData ?? '',
          recover: a.recover !== undefined,
          defineOnly: a.recover !== undefined && !a.recover.start,
        },
      };
      break;
    case 'deleteVm':
      action = { $case: 'deleteVm', deleteVm: { pool: a.pool, bridges: [...a.bridges] } };
      break;
    case 'evictVm':
      action = { $case: 'evictVm', evictVm: { bridges: [...a.bridges] } };
      break;
    case 'startVm':
      action = { $case: 'startVm', startVm: {} };
      break;
    case 'stopVm':
      action = { $case: 'stopVm', stopVm: { timeoutMs: a.timeoutMs, force: a.force } };
      break;
    case 'rebootVm':
      action = { $case: 'rebootVm', rebootVm: {} };
      break;
    case 'attachInterface':
      action = { $case: 'attachInterface', attachInterface: { index: a.index, nic: nicToProto(a.nic) } };
      break;
    case 'detachInterface':
      action = { $case: 'detachInterface', detachInterface: { index: a.index, nic: nicToProto(a.nic) } };
      break;
    case 'ensureNetwork':
      action = { $case: 'ensureNetwork', ensureNetwork: { networkId: a.networkId, vlan: a.vlan, bridge: a.bridge } };
      break;
    case 'deleteNetwork':
      action = { $case: 'deleteNetwork', deleteNetwork: { networkId: a.networkId, vlan: a.vlan, bridge: a.bridge } };
      break;
    case 'fence':
      action = { $case: 'fence', fence: { vmIds: [...a.vmIds], reason: a.reason } };
      break;
    case 'readConsole':
      action = { $case: 'readConsole', readConsole: { maxBytes: a.maxBytes } };
      break;
    case 'getInventory':
      action = { $case: 'getInventory', getInventory: {} };
      break;
    case 'prepareMigration': {
      const v = a.vm;
      action = {
        $case: 'prepareMigration',
        prepareMigration: {
          vm: {
            hostname: v.hostname,
            cpu: v.cpu,
            ramMb: v.ramMb,
            diskGb: v.diskGb,
            pool: v.pool,
            templateVolume: v.templateVolume,
            nics: v.nics.map(nicToProto),
            sshAuthorizedKeys: [...v.sshAuthorizedKeys],
            passwordHash: v.passwordHash,
            ha: v.ha,
            boot: v.boot ? { ...v.boot } : undefined,
            userData: v.userData ?? '',
            recover: true,
            defineOnly: false,
          },
        },
      };
      break;
    }
    case 'migrateVm':
      action = {
        $case: 'migrateVm',
        migrateVm: { destLibvirtUri: a.target.libvirtUri, migrateUri: a.target.migrateUri, destDomainXml: a.target.domainXml, sharedStorage: a.sharedStorage, timeoutMs: a.timeoutMs },
      };
      break;
  }
  return { commandId, deadline, vmId: c.vmId ?? '', action };
}

const ERROR_CODES: Record<number, CommandErrorCode> = {
  [pb.ErrorCode.ERROR_CODE_INVALID_ARGUMENT]: 'invalid_argument',
  [pb.ErrorCode.ERROR_CODE_NOT_FOUND]: 'not_found',
  [pb.ErrorCode.ERROR_CODE_ALREADY_EXISTS]: 'already_exists',
  [pb.ErrorCode.ERROR_CODE_DEADLINE_EXCEEDED]: 'deadline_exceeded',
  [pb.ErrorCode.ERROR_CODE_RESOURCE_EXHAUSTED]: 'resource_exhausted',
  [pb.ErrorCode.ERROR_CODE_FAILED_PRECONDITION]: 'failed_precondition',
  [pb.ErrorCode.ERROR_CODE_UNIMPLEMENTED]: 'unimplemented',
  [pb.ErrorCode.ERROR_CODE_UNAVAILABLE]: 'unavailable',
  [pb.ErrorCode.ERROR_CODE_INTERNAL]: 'internal',
};

/** The domain code of a command error; unknown or unspecified codes count as internal. */
export function errorCodeFromProto(code: pb.ErrorCode): CommandErrorCode {
  return ERROR_CODES[code] ?? 'internal';
}

/** The proto code of a domain command error (for the simulated agent and tests). */
export function errorCodeToProto(code: CommandErrorCode): pb.ErrorCode {
  const found = Object.entries(ERROR_CODES).find(([, c]) => c === code);
  return found ? (Number(found[0]) as pb.ErrorCode) : pb.ErrorCode.ERROR_CODE_INTERNAL;
}

const DOMAIN_STATES: Record<number, string> = {
  [pb.DomainState.DOMAIN_STATE_RUNNING]: 'running',
  [pb.DomainState.DOMAIN_STATE_BLOCKED]: 'blocked',
  [pb.DomainState.DOMAIN_STATE_PAUSED]: 'paused',
  [pb.DomainState.DOMAIN_STATE_SHUTTING_DOWN]: 'shutting_down',
  [pb.DomainState.DOMAIN_STATE_SHUTOFF]: 'shutoff',
  [pb.DomainState.DOMAIN_STATE_CRASHED]: 'crashed',
  [pb.DomainState.DOMAIN_STATE_PMSUSPENDED]: 'pmsuspended',
};

export function inventoryFromProto(i: pb.Inventory | undefined): HostInventory {
  return {
    domains: (i?.domains ?? []).map((d) => ({
      name: d.name,
      uuid: d.uuid,
      vmId: d.vmId,
      state: DOMAIN_STATES[d.state] ?? 'unspecified',
      vcpus: d.vcpus,
      memoryBytes: num(d.memoryBytes),
    })),
    volumes: (i?.volumes ?? []).map((v) => ({
      pool: v.pool,
      name: v.name,
      path: v.path,
      capacityBytes: num(v.capacityBytes),
      allocationBytes: num(v.allocationBytes),
      vmId: v.vmId,
    })),
    ovsPorts: (i?.ovsPorts ?? []).map((p) => ({ name: p.name, bridge: p.bridge, vlan: p.vlan, mac: p.mac, vmId: p.vmId })),
  };
}

/** A command result from the wire; `completedAt` falls back to `receivedAt` when the agent left it out. */
export function commandResultFromProto(r: pb.CommandResult, receivedAt: Date): CommandResult {
  const out: CommandResult = { commandId: r.commandId, ok: r.ok, completedAt: r.completedAt ?? receivedAt };
  if (!r.ok) out.error = { code: r.error ? errorCodeFromProto(r.error.code) : 'internal', message: r.error?.message ?? '' };
  if (r.payload?.$case === 'inventory') out.inventory = inventoryFromProto(r.payload.inventory);
  if (r.payload?.$case === 'migrationTarget') out.migrationTarget = { ...r.payload.migrationTarget };
  if (r.payload?.$case === 'consoleOutput') out.console = { data: Buffer.from(r.payload.consoleOutput.data), truncated: r.payload.consoleOutput.truncated };
  return out;
}

export function poolsFromProto(pools: pb.PoolStatus[]): PoolInfo[] {
  return pools.map((p) => ({
    name: p.name,
    path: p.path,
    capacityBytes: num(p.capacityBytes),
    allocationBytes: num(p.allocationBytes),
    availableBytes: num(p.availableBytes),
    active: p.active,
  }));
}

function bridgeKind(k: pb.BridgeKind): BridgeInfo['kind'] {
  if (k === pb.BridgeKind.BRIDGE_KIND_OVS) return 'ovs';
  if (k === pb.BridgeKind.BRIDGE_KIND_LINUX) return 'linux';
  return 'unspecified';
}

export function helloFromProto(h: pb.Hello): AgentHello {
  return {
    hostId: h.hostId,
    hostName: h.hostName,
    agentVersion: h.agentVersion,
    capacity: {
      cpuCount: h.capacity?.cpuCount ?? 0,
      memoryBytes: BigInt(num(h.capacity?.memoryBytes)),
      diskBytes: BigInt(num(h.capacity?.diskBytes)),
    },
    bridges: h.bridges.map((b) => ({ name: b.name, kind: bridgeKind(b.kind), mtu: b.mtu, up: b.up })),
    pools: poolsFromProto(h.pools),
    inventory: inventoryFromProto(h.inventory),
    agentStartedAt: h.agentStartedAt ?? null,
  };
}

export function heartbeatFromProto(h: pb.Heartbeat): AgentHeartbeat {
  const pools = poolsFromProto(h.pools);
  const cpu = h.usage?.cpuPercent ?? 0;
  return {
    sequence: h.sequence,
    sentAt: h.sentAt ?? null,
    usage: {
      // An agent's rounding may stray outside 0..100; NaN (a bad sample) counts as idle.
      cpuPercent: Number.isFinite(cpu) ? Math.min(100, Math.max(0, cpu)) : 0,
      memoryUsedBytes: num(h.usage?.memoryUsedBytes),
      memoryTotalBytes: num(h.usage?.memoryTotalBytes),
      diskUsedBytes: pools.reduce((s, p) => s + p.allocationBytes, 0),
      diskTotalBytes: pools.reduce((s, p) => s + p.capacityBytes, 0),
    },
    libvirtConnected: h.libvirtConnected,
    pendingFenceReports: h.pendingFenceReports,
    peerLeases: peerLeasesFromProto(h.peerLeases),
  };
}

/** At most this many peer leases are kept from one heartbeat (a hostile agent may send more). */
export const MAX_PEER_LEASES = 1024;
const MAX_UNCHANGED_MS = 10 * 365 * 24 * 3600 * 1000;

/** PeerLease[] → PeerLeaseReport[]: bounded, ids and names of sane length, durations clamped. */
export function peerLeasesFromProto(list: readonly pb.PeerLease[]): PeerLeaseReport[] {
  const out: PeerLeaseReport[] = [];
  for (const p of list.slice(0, MAX_PEER_LEASES)) {
    if (p.hostId === '' || p.hostId.length > 128 || p.poolName.length > 256) continue;
    const unchanged = p.unchangedForMs > BigInt(MAX_UNCHANGED_MS) ? MAX_UNCHANGED_MS : Number(p.unchangedForMs);
    out.push({
      poolName: p.poolName,
      hostId: p.hostId,
      sequence: p.sequence,
      writtenAt: p.writtenAt ?? null,
      validUntil: p.validUntil ?? null,
      fenced: p.fenced,
      fencedAt: p.fencedAt ?? null,
      unchangedForMs: unchanged,
      renewalSeen: p.renewalSeen,
      fileModifiedAt: p.fileModifiedAt ?? null,
    });
  }
  return out;
}

export function fenceReportFromProto(f: pb.FenceReport, receivedAt: Date): FenceEvidence {
  return {
    fencedAt: f.fencedAt ?? receivedAt,
    leaseExpiredAt: f.leaseExpiredAt ?? f.fencedAt ?? receivedAt,
    reason: f.reason,
    domains: f.domains.map((d) => ({ domainName: d.domainName, vmId: d.vmId })),
  };
}

const DOMAIN_EVENTS: Record<number, DomainLifecycleEvent['event']> = {
  [pb.DomainEventType.DOMAIN_EVENT_TYPE_STARTED]: 'started',
  [pb.DomainEventType.DOMAIN_EVENT_TYPE_STOPPED]: 'stopped',
  [pb.DomainEventType.DOMAIN_EVENT_TYPE_CRASHED]: 'crashed',
  [pb.DomainEventType.DOMAIN_EVENT_TYPE_SHUTDOWN]: 'shutdown',
  [pb.DomainEventType.DOMAIN_EVENT_TYPE_SUSPENDED]: 'suspended',
  [pb.DomainEventType.DOMAIN_EVENT_TYPE_RESUMED]: 'resumed',
};

export function domainEventFromProto(e: pb.DomainEvent): DomainLifecycleEvent {
  return { vmId: e.vmId, domainName: e.domainName, event: DOMAIN_EVENTS[e.event] ?? 'unspecified', detail: e.detail, occurredAt: e.occurredAt ?? null };
}

/** A lease grant for the wire. */
export function leaseGrantToProto(sequence: bigint, durationMs: number, grantedAt: Date): pb.LeaseGrant {
  return { heartbeatSequence: sequence, durationMs, grantedAt };
}
