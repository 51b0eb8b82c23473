/**
 * The edge between the proto types of the agent link (@kloudak/proto/agent) and the agent's own
 * types. Nothing past this module sees a proto type; nothing before it sees a VmSpec.
 */
import * as pb from '@kloudak/proto/agent';
import { DomainEventType as LvEvent, type DomainLifecycleEvent } from '@kloudak/libvirt';
import { checkId, vmIdOfDomain } from '../names.js';
import type { DomainState } from '../ports.js';
import { SpecError, checkVlan, type NicSpec, type VmSpec } from '../spec.js';
import type { AgentAction, AgentCommand, CommandErrorCode, CommandOutcome } from '../runner/commands.js';
import type { FenceRecord } from '../fence/records.js';
import type { PoolFigures, VmCounters } from '../telemetry/libvirt-stats.js';
import type { BridgeInfo, Capacity, HeartbeatSample, InventoryReport } from '../telemetry/inventory.js';
import type { PeerLeaseObservation } from '../storage/pool-lease.js';

function id(what: string, v: string): string {
  try {
    return checkId(v);
  } catch {
    throw new SpecError(`${what} is not a lower-case UUID: ${JSON.stringify(v)}`);
  }
}

/** proto Nic → NicSpec (empty strings are "unset"). */
export function nicFromProto(n: pb.Nic | undefined, index: number): NicSpec {
  if (!n) throw new SpecError(`nic ${index} is missing`);
  const nic: NicSpec = { networkId: n.networkId, mac: n.mac, vlan: n.vlan };
  if (n.bridge !== '') nic.bridge = n.bridge;
  if (n.address !== '') {
    nic.ip = { address: n.address };
    if (n.gateway !== '') nic.ip.gateway = n.gateway;
    if (n.dnsServers.length > 0) nic.ip.dns = [...n.dnsServers];
  } else if (n.gateway !== '' || n.dnsServers.length > 0) {
    throw new SpecError(`nic ${index}: a gateway or DNS servers without an address`);
  }
  return nic;
}

/** proto CreateVm → VmSpec (validated later by HostOperations.createVm). */
export function vmSpecFromProto(vmId: string, c: pb.CreateVm): VmSpec {
  const spec: VmSpec = {
    vmId: id('vm_id', vmId),
    hostname: c.hostname,
    cpu: c.cpu,
    ramMb: c.ramMb,
    diskGb: c.diskGb,
    pool: c.pool,
    templateVolume: c.templateVolume,
    nics: c.nics.map((n, i) => nicFromProto(n, i)),
    sshKeys: [...c.sshAuthorizedKeys],
    ha: c.ha,
  };
  if (c.passwordHash !== '') spec.passwordHash = c.passwordHash;
  if (c.boot) spec.boot = { kernel: c.boot.kernel, initrd: c.boot.initrd, cmdline: c.boot.cmdline };
  if (c.userData !== '') spec.userData = c.userData;
  if (c.recover) spec.recover = { start: !c.defineOnly };
  return spec;
}

function vlanOf(v: number): number {
  return checkVlan('vlan', v);
}

function bridgeOf(b: string): string | undefined {
  if (b === '') return undefined;
  if (!/^[A-Za-z0-9_.-]{1,15}$/.test(b) || b.startsWith('-')) throw new SpecError(`not a bridge name: ${JSON.stringify(b)}`);
  return b;
}

function actionFromProto(c: pb.Command): AgentAction {
  const a = c.action;
  if (!a) throw new SpecError('the command has no action');
  const vm = (): string => id('vm_id', c.vmId);
  switch (a.$case) {
    case 'createVm':
      return { kind: 'createVm', spec: vmSpecFromProto(c.vmId, a.createVm) };
    case 'deleteVm':
      if (a.deleteVm.pool === '') throw new SpecError('DeleteVm needs its pool');
      return { kind: 'deleteVm', vmId: vm(), pool: a.deleteVm.pool, bridges: a.deleteVm.bridges.map((b) => bridgeOf(b)).filter((b): b is string => b !== undefined) };
    case 'startVm':
      return { kind: 'startVm', vmId: vm() };
    case 'stopVm': {
      const s: AgentAction = { kind: 'stopVm', vmId: vm(), force: a.stopVm.force };
      if (a.stopVm.timeoutMs > 0) s.timeoutMs = a.stopVm.timeoutMs;
      return s;
    }
    case 'rebootVm':
      return { kind: 'rebootVm', vmId: vm() };
    case 'attachInterface':
      return { kind: 'attachInterface', vmId: vm(), index: a.attachInterface.index, nic: nicFromProto(a.attachInterface.nic, a.attachInterface.index) };
    case 'detachInterface':
      return { kind: 'detachInterface', vmId: vm(), index: a.detachInterface.index, nic: nicFromProto(a.detachInterface.nic, a.detachInterface.index) };
    case 'ensureNetwork':
    case 'deleteNetwork': {
      const n = a.$case === 'ensureNetwork' ? a.ensureNetwork : a.deleteNetwork;
      const b = bridgeOf(n.bridge);
      return { kind: a.$case, networkId: n.networkId, vlan: vlanOf(n.vlan), ...(b === undefined ? {} : { bridge: b }) };
    }
    case 'fence':
      return { kind: 'fence', vmIds: a.fence.vmIds.map((v) => id('fence vm id', v)), reason: a.fence.reason };
    case 'readConsole':
      return { kind: 'readConsole', vmId: vm(), maxBytes: a.readConsole.maxBytes };
    case 'getInventory':
      return { kind: 'getInventory' };
    case 'evictVm':
      return { kind: 'evictVm', vmId: vm(), bridges: a.evictVm.bridges.map((b) => bridgeOf(b)).filter((b): b is string => b !== undefined) };
    case 'prepareMigration': {
      if (!a.prepareMigration.vm) throw new SpecError('PrepareMigration needs its vm');
      // The VM's disk exists on the shared pool: its spec is a recover's (never a clone).
      const spec = vmSpecFromProto(c.vmId, { ...a.prepareMigration.vm, recover: true, defineOnly: false });
      return { kind: 'prepareMigration', spec };
    }
    case 'migrateVm': {
      const m = a.migrateVm;
      if (m.destLibvirtUri === '' || m.migrateUri === '' || m.destDomainXml === '') throw new SpecError('MigrateVm needs the destination URI, the migration URI and the domain XML');
      const out: AgentAction = { kind: 'migrateVm', vmId: vm(), target: { libvirtUri: m.destLibvirtUri, migrateUri: m.migrateUri, domainXml: m.destDomainXml }, sharedStorage: m.sharedStorage };
      if (m.timeoutMs > 0) out.timeoutMs = m.timeoutMs;
      return out;
    }
  }
}

/** proto Command → AgentCommand. A malformed command becomes an `invalid` action (answered INVALID_ARGUMENT). */
export function commandFromProto(c: pb.Command): AgentCommand {
  let action: AgentAction;
  try {
    action = actionFromProto(c);
  } catch (err) {
    if (!(err instanceof SpecError)) throw err;
    action = { kind: 'invalid', message: err.message };
  }
  const cmd: AgentCommand = { commandId: c.commandId, action };
  if (c.deadline) cmd.deadline = c.deadline;
  return cmd;
}

const ERROR_CODES: Record<CommandErrorCode, pb.ErrorCode> = {
  INVALID_ARGUMENT: pb.ErrorCode.ERROR_CODE_INVALID_ARGUMENT,
  NOT_FOUND: pb.ErrorCode.ERROR_CODE_NOT_FOUND,
  ALREADY_EXISTS: pb.ErrorCode.ERROR_CODE_ALREADY_EXISTS,
  DEADLINE_EXCEEDED: pb.ErrorCode.ERROR_CODE_DEADLINE_EXCEEDED,
  RESOURCE_EXHAUSTED: pb.ErrorCode.ERROR_CODE_RESOURCE_EXHAUSTED,
  FAILED_PRECONDITION: pb.ErrorCode.ERROR_CODE_FAILED_PRECONDITION,
  UNIMPLEMENTED: pb.ErrorCode.ERROR_CODE_UNIMPLEMENTED,
  UNAVAILABLE: pb.ErrorCode.ERROR_CODE_UNAVAILABLE,
  INTERNAL: pb.ErrorCode.ERROR_CODE_INTERNAL,
};

/** CommandOutcome → proto CommandResult. */
export function commandResultToProto(o: CommandOutcome): pb.CommandResult {
  let payload: pb.CommandResult['payload'];
  if (o.payload?.kind === 'inventory') payload = { $case: 'inventory', inventory: inventoryToProto(o.payload.inventory) };
  else if (o.payload?.kind === 'console') payload = { $case: 'consoleOutput', consoleOutput: { data: o.payload.data, truncated: o.payload.truncated } };
  else if (o.payload?.kind === 'migrationTarget') payload = { $case: 'migrationTarget', migrationTarget: { ...o.payload.target } };
  return {
    commandId: o.commandId,
    ok: o.ok,
    error: o.error ? { code: ERROR_CODES[o.error.code], message: o.error.message } : undefined,
    completedAt: o.completedAt,
    payload,
  };
}

const DOMAIN_STATES: Record<DomainState, pb.DomainState> = {
  running: pb.DomainState.DOMAIN_STATE_RUNNING,
  blocked: pb.DomainState.DOMAIN_STATE_BLOCKED,
  paused: pb.DomainState.DOMAIN_STATE_PAUSED,
  shutdown: pb.DomainState.DOMAIN_STATE_SHUTTING_DOWN,
  shutoff: pb.DomainState.DOMAIN_STATE_SHUTOFF,
  crashed: pb.DomainState.DOMAIN_STATE_CRASHED,
  pmsuspended: pb.DomainState.DOMAIN_STATE_PMSUSPENDED,
  nostate: pb.DomainState.DOMAIN_STATE_UNSPECIFIED,
};

/** InventoryReport → proto Inventory. */
export function inventoryToProto(inv: InventoryReport): pb.Inventory {
  return {
    domains: inv.domains.map((d) => ({ name: d.name, uuid: d.uuid, vmId: d.vmId, state: DOMAIN_STATES[d.state], vcpus: d.vcpus, memoryBytes: d.memoryBytes })),
    volumes: inv.volumes.map((v) => ({
      pool: v.pool,
      name: v.name,
      path: v.path,
      capacityBytes: v.capacityBytes,
      allocationBytes: v.allocationBytes,
      vmId: v.vmId ?? '',
    })),
    ovsPorts: inv.ports.map((p) => ({ name: p.name, bridge: p.bridge, vlan: p.vlan, mac: p.mac, vmId: p.vmId ?? '' })),
  };
}

/** PoolFigures → proto PoolStatus. */
export function poolToProto(p: PoolFigures): pb.PoolStatus {
  return { ...p };
}

/** VmCounters → proto VmStats. */
export function vmStatsToProto(v: VmCounters): pb.VmStats {
  return { ...v };
}

/** BridgeInfo → proto Bridge. */
export function bridgeToProto(b: BridgeInfo): pb.Bridge {
  return { name: b.name, kind: b.kind === 'ovs' ? pb.BridgeKind.BRIDGE_KIND_OVS : pb.BridgeKind.BRIDGE_KIND_LINUX, mtu: b.mtu, up: b.up };
}

/** What Hello carries, in the agent's types. */
export interface HelloFacts {
  hostId: string;
  hostName: string;
  agentVersion: string;
  agentStartedAt: Date;
  capacity: Capacity;
  bridges: BridgeInfo[];
  pools: PoolFigures[];
  inventory: InventoryReport;
}

/** HelloFacts → the first AgentMessage of a session. */
export function helloToProto(h: HelloFacts): pb.AgentMessage {
  return {
    body: {
      $case: 'hello',
      hello: {
        hostId: h.hostId,
        hostName: h.hostName,
        agentVersion: h.agentVersion,
        agentStartedAt: h.agentStartedAt,
        capacity: { cpuCount: h.capacity.cpuCount, memoryBytes: h.capacity.memoryBytes, diskBytes: h.capacity.diskBytes },
        bridges: h.bridges.map(bridgeToProto),
        pools: h.pools.map(poolToProto),
        inventory: inventoryToProto(h.inventory),
      },
    },
  };
}

/** A heartbeat sample → AgentMessage. */
export function heartbeatToProto(
  sequence: bigint,
  sentAt: Date,
  s: HeartbeatSample,
  pendingFenceReports: number,
  peerLeases: readonly PeerLeaseObservation[] = [],
): pb.AgentMessage {
  return {
    body: {
      $case: 'heartbeat',
      heartbeat: {
        sequence,
        sentAt,
        usage: { cpuPercent: s.usage.cpuPercent, memoryUsedBytes: s.usage.memoryUsedBytes, memoryTotalBytes: s.usage.memoryTotalBytes },
        pools: s.pools.map(poolToProto),
        vms: s.libvirtConnected ? s.vms.map(vmStatsToProto) : [],
        libvirtConnected: s.libvirtConnected,
        pendingFenceReports,
        peerLeases: peerLeases.map(peerLeaseToProto),
      },
    },
  };
}

/** PeerLeaseObservation → PeerLease. */
export function peerLeaseToProto(o: PeerLeaseObservation): pb.PeerLease {
  return {
    poolName: o.poolName,
    hostId: o.hostId,
    sequence: BigInt(o.sequence),
    writtenAt: o.writtenAt,
    validUntil: o.validUntil,
    fenced: o.fenced,
    fencedAt: o.fencedAt ?? undefined,
    unchangedForMs: BigInt(Math.max(0, Math.round(o.unchangedForMs))),
    renewalSeen: o.renewalSeen,
    fileModifiedAt: o.fileModifiedAt,
  };
}

/** CommandOutcome → AgentMessage. */
export function resultMessage(o: CommandOutcome): pb.AgentMessage {
  return { body: { $case: 'commandResult', commandResult: commandResultToProto(o) } };
}

/** FenceRecord → AgentMessage. */
export function fenceReportToProto(r: FenceRecord): pb.AgentMessage {
  return {
    body: {
      $case: 'fenceReport',
      fenceReport: {
        domains: r.domains.map((d) => ({ domainName: d.domainName, vmId: d.vmId })),
        fencedAt: r.fencedAt ? new Date(r.fencedAt) : undefined,
        leaseExpiredAt: new Date(r.leaseExpiredAt),
        reason: r.reason,
      },
    },
  };
}

/** A clean stop's Goodbye: the VMs left running, and why the agent stops. */
export function goodbyeToProto(runningVmIds: readonly string[], reason: string): pb.AgentMessage {
  return { body: { $case: 'goodbye', goodbye: { runningVmIds: [...runningVmIds], reason } } };
}

/** libvirt's lifecycle event → proto type and detail text, or null for events the link does not carry (defined, undefined, pmsuspended). */
export function domainEventKind(event: number, detail: number): { type: pb.DomainEventType; detail: string } | null {
  switch (event) {
    case LvEvent.STARTED:
      return { type: pb.DomainEventType.DOMAIN_EVENT_TYPE_STARTED, detail: ['booted', 'migrated', 'restored', 'from-snapshot', 'wakeup'][detail] ?? String(detail) };
    case LvEvent.STOPPED: {
      const text = ['shutdown', 'destroyed', 'crashed', 'migrated', 'saved', 'failed', 'from-snapshot'][detail] ?? String(detail);
      // STOPPED/CRASHED: the guest died; the link says so with its own type.
      return { type: detail === 2 ? pb.DomainEventType.DOMAIN_EVENT_TYPE_CRASHED : pb.DomainEventType.DOMAIN_EVENT_TYPE_STOPPED, detail: text };
    }
    case LvEvent.CRASHED:
      return { type: pb.DomainEventType.DOMAIN_EVENT_TYPE_CRASHED, detail: ['panicked', 'crashloaded'][detail] ?? String(detail) };
    case LvEvent.SHUTDOWN:
      return { type: pb.DomainEventType.DOMAIN_EVENT_TYPE_SHUTDOWN, detail: ['finished', 'guest', 'host'][detail] ?? String(detail) };
    case LvEvent.SUSPENDED:
      return { type: pb.DomainEventType.DOMAIN_EVENT_TYPE_SUSPENDED, detail: ['paused', 'migrated', 'ioerror', 'watchdog', 'restored', 'from-snapshot', 'api-error', 'postcopy', 'postcopy-failed'][detail] ?? String(detail) };
    case LvEvent.RESUMED:
      return { type: pb.DomainEventType.DOMAIN_EVENT_TYPE_RESUMED, detail: ['unpaused', 'migrated', 'from-snapshot', 'postcopy', 'postcopy-failed'][detail] ?? String(detail) };
    default:
      return null;
  }
}

/** A Kloudak domain's lifecycle event → AgentMessage, or null for foreign domains and events the link does not carry. */
export function domainEventToProto(e: Pick<DomainLifecycleEvent, 'name' | 'event' | 'detail'>, at: Date): pb.AgentMessage | null {
  const vmId = vmIdOfDomain(e.name);
  if (vmId === null) return null;
  const kind = domainEventKind(e.event, e.detail);
  if (!kind) return null;
  return { body: { $case: 'domainEvent', domainEvent: { vmId, domainName: e.name, event: kind.type, detail: kind.detail, occurredAt: at } } };
}
