/**
 * Evacuation planning: where the VMs of a dead host go. Pure — data in, data out, no I/O.
 *
 * The caller (ha/failover.ts) reads, inside the claims transaction of the host's area, the area's
 * placement snapshot and the VMs placed on the dead host, calls {@link planEvacuation}, and writes
 * the plan (claims moved, recover tasks queued, VM states) in the same transaction.
 *
 * Rules (book chapter 2: an area is a failover domain; every host of it mounts its shared pools):
 * - an HA VM that was running or stopped restarts (or is re-homed, stopped) on another host of its
 *   area, from its disk on the shared pool: the placement filters of domain/placement.ts apply
 *   (host up, active, agent connected, vCPU and RAM under the ratios) and the target must have
 *   the VM's own pool active — the disk is not copied, so no other pool will do, and no disk is
 *   claimed again (it already is, in that pool);
 * - HA VMs are placed largest first (RAM, then vCPU), each decision seeing the earlier ones
 *   (applyPlacement), with the spread weigher and the anti-affinity of a workspace's HA VMs;
 * - an HA VM no host can take is `unplaced`, with the filter that rejected each host: it stays
 *   listed, and a later sweep retries it when capacity appears; one whose restart failed is
 *   retried after a backoff ({@link lostRetryDue}), on another host first (`failedOn`);
 * - a VM without HA, or whose disk is on a host-local pool (gone with the host), is `lost`;
 * - a VM in the middle of a task (creating, deleting, recovering, …), in error, or already lost is
 *   `skipped`: its task or the host's return decides (the retry sweep plans lost HA VMs again).
 * Deterministic: the same snapshot gives the same plan (VMs ordered by size, then name, then id).
 */
import {
  applyPlacement,
  DEFAULT_PLACEMENT_POLICY,
  schedule,
  type HostRejection,
  type PlacementPolicy,
  type PlacementReason,
  type PlacementRequest,
  type PlacementSnapshot,
} from './placement.js';
import type { PoolLeaseEvidence } from './agent.js';

/** A VM placed on the dead host, as the planner sees it. */
export interface EvacuationVm {
  id: string;
  name: string;
  workspaceId: string;
  areaId: string;
  cpu: number;
  ramMb: number;
  diskGb: number;
  ha: boolean;
  /** The pool holding its disk (null: never placed in one). */
  poolId: string | null;
  /** Whether that pool is shared by the area's hosts (false for a host-local pool). */
  poolShared: boolean;
  /** The VM's state (Vm.state). */
  state: string;
  /** A lost VM: the state it was lost from; a lost HA VM restarts started unless it was stopped. */
  lostFrom?: string | null;
}

/** Everything the planner needs. */
export interface EvacuationSnapshot {
  /** The placement snapshot of the dead host's area (or areas). */
  placement: PlacementSnapshot;
  /** The VMs placed on the dead host. */
  vms: readonly EvacuationVm[];
}

/** An HA VM that restarts (or, stopped, is re-homed) on another host. */
export interface EvacuationMove {
  vmId: string;
  vmName: string;
  workspaceId: string;
  toHostId: string;
  toHostName: string;
  poolId: string;
  /** Start it there (it was running); false: define it only (it was stopped). */
  start: boolean;
  reason: PlacementReason;
}

/** Why a VM cannot be restarted, and, for an HA VM that did not fit, each host's rejection. */
export interface EvacuationLeftBehind {
  vmId: string;
  vmName: string;
  workspaceId: string;
  /** no_capacity: an HA VM no host can take now (retried later); not_ha; local_pool; no_pool; busy; already_lost. */
  code: 'no_capacity' | 'not_ha' | 'local_pool' | 'no_pool' | 'busy' | 'already_lost';
  /** One line, for the VM's event and people. */
  message: string;
  rejections?: HostRejection[];
}

/** The outcome of {@link planEvacuation}. */
export interface EvacuationPlan {
  hostId: string;
  /** HA VMs that restart elsewhere. */
  moves: EvacuationMove[];
  /** HA VMs that fit nowhere now (`no_capacity`): reported, kept, retried. */
  unplaced: EvacuationLeftBehind[];
  /** VMs that cannot restart elsewhere (not HA, or a disk on a host-local pool): state `lost`. */
  lost: EvacuationLeftBehind[];
  /** VMs left as they are (a task is working on them, or they are lost already). */
  skipped: EvacuationLeftBehind[];
}

/** VM states the planner acts on; anything else belongs to a task in progress. */
const SETTLED = new Set(['running', 'stopped']);

/** Options of {@link planEvacuation}. */
export interface EvacuationOptions {
  policy?: PlacementPolicy;
  /**
   * Plan HA VMs already `lost` too (the sweep that retries the HA VMs an earlier plan could not
   * place, once capacity appears). Default false: a host-down plan leaves lost VMs as they are.
   */
  retryLost?: boolean;
  /**
   * Plan VMs without HA too, like HA ones (a drain moves every VM it can; the n+1 check asks
   * whether all of a host's VMs would fit elsewhere), HA VMs first. Anti-affinity still counts HA
   * VMs only.
   * Default false: a dead host's non-HA VMs are lost.
   */
  allVms?: boolean;
  /**
   * Hosts where a restart of a VM failed in this episode (VM id → host ids): tried last for that
   * VM. A recover that found no disk there (the pool not mounted after all) would fail again.
   */
  failedOn?: ReadonlyMap<string, ReadonlySet<string>>;
}

/** The first retry of a lost HA VM whose restart failed waits this long; each failure doubles it. */
export const LOST_RETRY_BASE_MS = 5_000;
/** The longest wait between two restarts of a lost HA VM. */
export const LOST_RETRY_MAX_MS = 10 * 60_000;

/**
 * Whether a lost HA VM is due for another restart (pure): at once when no restart of it has
 * failed in this episode; else {@link LOST_RETRY_BASE_MS} after the last failure, doubled per
 * failure, at most {@link LOST_RETRY_MAX_MS}. Without it a restart that cannot succeed (its disk
 * missing on the target) would be queued again at every sweep, for as long as the host is down.
 */
export function lostRetryDue(failures: number, lastFailedAtMs: number | null, nowMs: number): boolean {
  if (failures <= 0 || lastFailedAtMs === null) return true;
  const wait = Math.min(LOST_RETRY_MAX_MS, LOST_RETRY_BASE_MS * 2 ** Math.min(failures - 1, 30));
  return nowMs >= lastFailedAtMs + wait;
}

function bySize(a: EvacuationVm, b: EvacuationVm): number {
  return b.ramMb - a.ramMb || b.cpu - a.cpu || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0) || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0);
}

/**
 * Plan the evacuation of `hostId`: a host for each HA VM (see the module comment for the rules).
 * `snapshot.vms` are the VMs placed on that host; others are ignored.
 */
export function planEvacuation(snapshot: EvacuationSnapshot, hostId: string, options: EvacuationOptions = {}): EvacuationPlan {
  const policy = options.policy ?? DEFAULT_PLACEMENT_POLICY;
  const plan: EvacuationPlan = { hostId, moves: [], unplaced: [], lost: [], skipped: [] };
  let placement = snapshot.placement;
  const exclude = new Set([hostId]);
  const left = (vm: EvacuationVm, code: EvacuationLeftBehind['code'], message: string): EvacuationLeftBehind => ({
    vmId: vm.id,
    vmName: vm.name,
    workspaceId: vm.workspaceId,
    code,
    message,
  });
  // With allVms, HA VMs go first: when room runs out, a VM without HA is the one left behind.
  const order = options.allVms === true ? (a: EvacuationVm, b: EvacuationVm) => Number(b.ha) - Number(a.ha) || bySize(a, b) : bySize;
  for (const vm of [...snapshot.vms].sort(order)) {
    const retry = vm.state === 'lost' && vm.ha && options.retryLost === true;
    if (vm.state === 'lost' && !retry) {
      plan.skipped.push(left(vm, 'already_lost', 'already lost'));
      continue;
    }
    if (!retry && !SETTLED.has(vm.state)) {
      plan.skipped.push(left(vm, 'busy', `a task is working on it (state ${vm.state})`));
      continue;
    }
    if (!vm.ha && options.allVms !== true) {
      plan.lost.push(left(vm, 'not_ha', 'its host is down and it is not an HA VM: it returns with its host'));
      continue;
    }
    if (vm.poolId === null) {
      plan.lost.push(left(vm, 'no_pool', 'it has no disk in any pool to restart from'));
      continue;
    }
    if (!vm.poolShared) {
      plan.lost.push(left(vm, 'local_pool', 'its disk is on a host-local pool: it returns with its host'));
      continue;
    }
    // The disk exists already (claimed in its pool): only CPU and RAM are claimed again, on a host
    // that has this very pool active.
    const request: PlacementRequest = {
      areaId: vm.areaId,
      workspaceId: vm.workspaceId,
      cpu: vm.cpu,
      ramMb: vm.ramMb,
      diskGb: 0,
      ha: vm.ha,
      excludeHostIds: exclude,
      poolIds: new Set([vm.poolId]),
    };
    // Hosts where its restart failed go last: elsewhere first, there only when nowhere else fits.
    const failedOn = options.failedOn?.get(vm.id);
    let r = schedule(placement, failedOn && failedOn.size > 0 ? { ...request, excludeHostIds: new Set([...exclude, ...failedOn]) } : request, policy);
    if (!r.ok && failedOn && failedOn.size > 0) r = schedule(placement, request, policy);
    if (!r.ok) {
      plan.unplaced.push({ ...left(vm, 'no_capacity', r.message), rejections: r.rejections });
      continue;
    }
    placement = applyPlacement(placement, request, r);
    plan.moves.push({
      vmId: vm.id,
      vmName: vm.name,
      workspaceId: vm.workspaceId,
      toHostId: r.hostId,
      toHostName: r.hostName,
      poolId: r.poolId,
      start: vm.state === 'lost' ? vm.lostFrom !== 'stopped' : vm.state !== 'stopped',
      reason: r.reason,
    });
  }
  return plan;
}

/** A domain a returning host reports (its inventory). */
export interface ReturningDomain {
  name: string;
  /** The VM id its name carries (lower case); '' when it carries none. */
  vmId: string;
  state: string;
}

/** What the orchestrator knows of a VM a returning host reports. */
export interface KnownVm {
  id: string;
  /** The host it is placed on now (null: none). */
  hostId: string | null;
  state: string;
  poolName: string | null;
  /** Whether it is an HA VM. */
  ha: boolean;
  /** A lost VM: the state it was lost from (null: unknown, or not lost). */
  lostFrom?: string | null;
}

/** What to do on a host that comes back, before any other command reaches it. */
export type ReturnAction =
  /** The VM is placed on another host now: destroy and undefine its domain here, keep its volumes. */
  | { kind: 'evict'; vmId: string; domain: string; placedOn: string | null }
  /** No VM has this id: delete the domain and its volumes (nobody else can reference them). */
  | { kind: 'deleteOrphan'; vmId: string; domain: string; pools: string[] }
  /** A VM marked lost is still here: its state is what the host reports. */
  | { kind: 'reconcile'; vmId: string; domain: string; state: 'running' | 'stopped' }
  /**
   * An HA VM placed here and running for the orchestrator (or lost from running: nowhere else could
   * take it), whose domain the host reports off: it fenced it while cut off, and no evacuation
   * moved it. Start it again.
   */
  | { kind: 'restart'; vmId: string; domain: string; domainState: string }
  /**
   * A VM placed here whose domain's state is not what the inventory says, outside of the cases
   * above: a non-HA VM `running` whose domain is off, or a VM `stopped` whose domain runs. Its
   * state follows the domain (domain/vm-follow.ts), unless a task is working on it.
   */
  | { kind: 'follow'; vmId: string; domain: string; observed: 'off' | 'running'; cause: string };

/** Domain states of a VM that is not running (a fenced domain is shut off). */
const DOMAIN_OFF = new Set(['shutoff', 'crashed']);

/**
 * Decide what to do with the domains a host reports on its return (pure). `known` are the VMs
 * with the reported ids (any host); `volumes` the host's Kloudak volumes (pool per VM id).
 */
export function planReturn(
  hostId: string,
  domains: readonly ReturningDomain[],
  known: ReadonlyMap<string, KnownVm>,
  volumes: readonly { pool: string; vmId: string }[],
): ReturnAction[] {
  const out: ReturnAction[] = [];
  for (const d of [...domains].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))) {
    const id = d.vmId.toLowerCase();
    if (id === '') continue;
    const vm = known.get(id);
    if (!vm) {
      const pools = [...new Set(volumes.filter((v) => v.vmId.toLowerCase() === id).map((v) => v.pool))].sort();
      out.push({ kind: 'deleteOrphan', vmId: id, domain: d.name, pools });
      continue;
    }
    if (vm.hostId !== hostId) {
      out.push({ kind: 'evict', vmId: id, domain: d.name, placedOn: vm.hostId });
      continue;
    }
    // An HA VM that was running (or lost from running) and whose domain is off starts again here.
    const wasRunning = vm.state === 'running' || (vm.state === 'lost' && vm.lostFrom === 'running');
    if (vm.ha && wasRunning && DOMAIN_OFF.has(d.state)) out.push({ kind: 'restart', vmId: id, domain: d.name, domainState: d.state });
    else if (vm.state === 'lost') out.push({ kind: 'reconcile', vmId: id, domain: d.name, state: d.state === 'running' ? 'running' : 'stopped' });
    else if (vm.state === 'running' && DOMAIN_OFF.has(d.state)) out.push({ kind: 'follow', vmId: id, domain: d.name, observed: 'off', cause: `its host reports its domain ${d.state}` });
    else if (vm.state === 'stopped' && d.state === 'running') out.push({ kind: 'follow', vmId: id, domain: d.name, observed: 'running', cause: 'its host reports its domain running' });
  }
  return out;
}

/** Whether a down host's HA VMs may restart elsewhere now: an admin's word, its agent's Goodbye, its pool lease files. */
export type RestartVerdict =
  | { hold: false; why: 'fenced' | 'lease_file_stood_still' | 'no_witness' | 'confirmed_off' }
  | { hold: true; why: 'lease_file_renewed' | 'agent_stopped'; message: string };

/** What a down host's row and its evacuation say before its pool lease files are read. */
export interface RestartFacts {
  /** An admin confirmed the host is off (POST /hosts/{id}/confirm-off). */
  confirmedOff: { by: string; at: string } | null;
  /** Its agent stopped cleanly (Goodbye) and left these VMs running; cleared by its next Hello. */
  agentStopped: { at: string; vmIds: readonly string[] } | null;
  /** Why this evacuation was held before, if it was. */
  heldWhy: string | null;
}

/**
 * The restart gate's first part, before the pool lease files ({@link restartVerdict}) are asked:
 * - an admin confirmed the host is off → restart, whatever else says;
 * - its agent stopped cleanly and left VMs running → hold: nothing fenced them (the agent
 *   released its fence guard once the orchestrator recorded its Goodbye), so they may run on;
 *   the host keeps them when its agent returns (the evacuation is then cancelled), or they
 *   restart elsewhere once an admin confirms the host is off. Proxmox VE's "freeze" on shutdown.
 *   Once held for that, it stays held even when the record is gone (a Hello clears it before the
 *   host is up again): only the admin's word restarts those VMs;
 * - otherwise null: the pool lease files decide.
 * Pure.
 */
export function restartHold(hostId: string, facts: RestartFacts): RestartVerdict | null {
  if (facts.confirmedOff) return { hold: false, why: 'confirmed_off' };
  const stopped = facts.agentStopped;
  const then = `they stay with the host when its agent is back, or restart elsewhere once an admin confirms the host is off (POST /api/v1/hosts/${hostId}/confirm-off)`;
  if (stopped && stopped.vmIds.length > 0) {
    return { hold: true, why: 'agent_stopped', message: `its agent was stopped cleanly at ${stopped.at} and left ${stopped.vmIds.length} VM(s) running, which nothing fenced: ${then}` };
  }
  if (facts.heldWhy === 'agent_stopped') return { hold: true, why: 'agent_stopped', message: `its agent's clean stop left VMs running: ${then}` };
  return null;
}

/**
 * The second signal (issue 11, "A second signal"), read when a down host's evacuation is planned:
 * the lease rule has already passed (the last lease granted to the host surely ended, plus the
 * margin), so a host that works has fenced itself by now. Its pool lease files then tell:
 * - it wrote that it fenced itself → restart;
 * - a peer of its area saw its file renewed within the last lease, and it did not write that it
 *   fenced → hold: it is alive on the storage (partitioned from the orchestrators, not dead) and
 *   its fencing did not happen, so its VMs may still run and write their disks. Restarting them
 *   would run them twice. Planned again once it writes "fenced" or its files stand still;
 * - its files stood still, or no peer reads them (no shared file pool, no observer) → restart on
 *   the lease rule alone, as without this signal.
 * Pure.
 */
export function restartVerdict(evidence: PoolLeaseEvidence | null, leaseMs: number): RestartVerdict {
  if (evidence === null) return { hold: false, why: 'no_witness' };
  if (evidence.fenced) return { hold: false, why: 'fenced' };
  if (evidence.lastRenewalSeenMsAgo !== null && evidence.lastRenewalSeenMsAgo <= leaseMs) {
    const seen = evidence.observations.filter((o) => o.lastRenewalSeenMsAgo !== null && o.lastRenewalSeenMsAgo <= leaseMs);
    const pools = [...new Set(seen.map((o) => o.poolName))].sort().join(', ');
    return {
      hold: true,
      why: 'lease_file_renewed',
      message:
        `its lease file on ${pools} was renewed ${evidence.lastRenewalSeenMsAgo} ms ago (seen by ${new Set(seen.map((o) => o.observerHostId)).size} peer(s)) ` +
        'and does not say it fenced itself: the host may still run its VMs; they restart once it fences or its file stands still',
    };
  }
  if (evidence.observations.length > 0) return { hold: false, why: 'lease_file_stood_still' };
  return { hold: false, why: 'no_witness' };
}
