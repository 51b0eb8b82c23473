/**
 * Host drain and the area's n+1 check (issue 11, "Admin actions"). Pure — data in, data out.
 *
 * Both ask planEvacuation (domain/evacuation.ts) where a host's VMs would go, with the same
 * capacity and placement filters as a failover, the host itself excluded:
 * - {@link planDrain}: a host is being emptied on purpose. Every VM whose disk is on a shared pool
 *   may move, HA or not: a running one live (or, in `restart` mode, stopped here and started there
 *   from the same disk), a stopped one is re-homed (defined there, left stopped). VMs that cannot
 *   move (a host-local disk, a task working on them, no room) are reported and stay.
 * - {@link nextDrainMoves}: which planned moves a drain starts next, a few at a time.
 * - {@link checkNPlusOne}: would the area survive the loss of its largest host (by the vCPU and RAM
 *   its VMs claim)? Planned as a failover would be — every VM as if settled — once for its HA VMs
 *   (what a failover restarts) and once for all of its VMs.
 */
import { planEvacuation, type EvacuationLeftBehind, type EvacuationVm } from './evacuation.js';
import type { PlacementPolicy, PlacementSnapshot } from './placement.js';

/** How a drain moves a running VM. */
export type DrainMode = 'live' | 'restart';

/** One VM a drain moves. */
export interface DrainMove {
  vmId: string;
  vmName: string;
  workspaceId: string;
  toHostId: string;
  toHostName: string;
  /** live: live migration; restart: stop here, start there; define: a stopped VM defined there. */
  how: 'live' | 'restart' | 'define';
}

/** A VM a drain cannot move, and why. */
export interface DrainLeftBehind {
  vmId: string;
  vmName: string;
  workspaceId: string;
  /** no_capacity, local_pool, no_pool, busy (a task is working on it) or already_lost. */
  code: EvacuationLeftBehind['code'];
  message: string;
  /** For no_capacity: each host and the filter that refused it. */
  rejections?: { hostId: string; hostName: string; filter: string; message: string }[];
}

/** The outcome of {@link planDrain}. */
export interface DrainPlan {
  hostId: string;
  moves: DrainMove[];
  cannotMove: DrainLeftBehind[];
}

function leftBehind(l: EvacuationLeftBehind, drain: boolean): DrainLeftBehind {
  const message =
    l.code === 'local_pool' ? `its disk is on a host-local pool: it cannot ${drain ? 'leave' : 'survive the loss of'} this host` : l.message;
  return {
    vmId: l.vmId,
    vmName: l.vmName,
    workspaceId: l.workspaceId,
    code: l.code,
    message,
    ...(l.rejections ? { rejections: l.rejections.map((r) => ({ hostId: r.hostId, hostName: r.hostName, filter: r.filter, message: r.message })) } : {}),
  };
}

/**
 * Where the VMs of `hostId` go when it is drained: `snapshot` is the area's placement snapshot
 * (with the host's own claims still in it; the host is excluded as a target, and is normally in
 * maintenance already), `vms` the VMs placed on it.
 */
export function planDrain(snapshot: PlacementSnapshot, vms: readonly EvacuationVm[], hostId: string, mode: DrainMode, policy?: PlacementPolicy): DrainPlan {
  const plan = planEvacuation({ placement: snapshot, vms }, hostId, { allVms: true, ...(policy ? { policy } : {}) });
  const state = new Map(vms.map((v) => [v.id, v.state]));
  return {
    hostId,
    moves: plan.moves.map((m) => ({
      vmId: m.vmId,
      vmName: m.vmName,
      workspaceId: m.workspaceId,
      toHostId: m.toHostId,
      toHostName: m.toHostName,
      how: !m.start || state.get(m.vmId) === 'stopped' ? 'define' : mode,
    })),
    cannotMove: [...plan.unplaced, ...plan.lost, ...plan.skipped].map((l) => leftBehind(l, true)),
  };
}

/**
 * Which moves of a drain to start now, with `inFlight` still under way and the VMs in `started`
 * already begun (finished, failed or in flight): at most `limit` moves run at once. The free slots
 * go to the moves not started yet, each to the one whose destination has the fewest moves in
 * flight (moves in flight counted as the picks go), ties in plan order — so a drain to several
 * hosts receives on all of them before any gets a second incoming VM, and the plan's order (HA
 * VMs first, then the largest) decides otherwise.
 *
 * Capacity is not decided here: the plan counted every move's vCPU and RAM on its destination
 * together (planDrain), so any subset in flight fits; each move still holds its claim on the
 * destination before it starts (tasks/drain.ts), so a create since the plan cannot over-commit it.
 */
export function nextDrainMoves<M extends Pick<DrainMove, 'vmId' | 'toHostId'>>(
  moves: readonly M[],
  started: ReadonlySet<string>,
  inFlight: readonly Pick<DrainMove, 'toHostId'>[],
  limit: number,
): M[] {
  const slots = Math.max(1, Math.floor(limit)) - inFlight.length;
  if (slots <= 0) return [];
  const incoming = new Map<string, number>();
  for (const m of inFlight) incoming.set(m.toHostId, (incoming.get(m.toHostId) ?? 0) + 1);
  const pending = moves.filter((m) => !started.has(m.vmId));
  const picks: M[] = [];
  while (picks.length < slots && pending.length > 0) {
    let best = 0;
    for (let i = 1; i < pending.length; i++) {
      if ((incoming.get(pending[i]!.toHostId) ?? 0) < (incoming.get(pending[best]!.toHostId) ?? 0)) best = i;
    }
    const [m] = pending.splice(best, 1);
    picks.push(m!);
    incoming.set(m!.toHostId, (incoming.get(m!.toHostId) ?? 0) + 1);
  }
  return picks;
}

/** A VM of the area, with the host it is placed on. */
export interface AreaVm extends EvacuationVm {
  hostId: string | null;
}

/** One half of the n+1 answer: a set of the largest host's VMs, and whether the others take them all. */
export interface NPlusOneOutcome {
  /** VMs of the set. */
  vms: number;
  /** VMs the other hosts would take. */
  placed: number;
  /** Those they would not, and why. */
  left: DrainLeftBehind[];
  /** True when every VM of the set would be placed. */
  survives: boolean;
}

/** The answer of {@link checkNPlusOne}. */
export interface NPlusOneReport {
  areaId: string;
  /** The host whose loss is tested: the one whose VMs claim the most RAM (then vCPUs); null when the area has no host. */
  largestHost: { id: string; name: string; claimedCpu: number; claimedRamMb: number; vms: number } | null;
  /** Its HA VMs: what a failover restarts elsewhere. */
  ha: NPlusOneOutcome;
  /** All of its VMs (HA or not), as if each could restart elsewhere. */
  all: NPlusOneOutcome;
  /** The n+1 verdict: every HA VM of the largest host would run again on the others. */
  survives: boolean;
}

function outcome(snapshot: PlacementSnapshot, vms: readonly EvacuationVm[], hostId: string, allVms: boolean, policy?: PlacementPolicy): NPlusOneOutcome {
  const plan = planEvacuation({ placement: snapshot, vms }, hostId, { allVms, ...(policy ? { policy } : {}) });
  const left = [...plan.unplaced, ...plan.lost, ...plan.skipped].map((l) => leftBehind(l, false));
  return { vms: vms.length, placed: plan.moves.length, left, survives: left.length === 0 };
}

/**
 * The n+1 check of an area: pick its largest host (by the vCPU and RAM its VMs claim, then name)
 * and plan the evacuation of its HA VMs, then of all its VMs, on the other hosts as they are now
 * (up, active, connected, with room: the placement filters). A VM in the middle of a task counts
 * as settled (the question is what the area can hold, not what a failover would do this second);
 * a lost one as running.
 */
export function checkNPlusOne(areaId: string, snapshot: PlacementSnapshot, vms: readonly AreaVm[], policy?: PlacementPolicy): NPlusOneReport {
  const hosts = snapshot.areas.get(areaId)?.hosts ?? [];
  const largest = [...hosts].sort(
    (a, b) => b.claimedRamMb - a.claimedRamMb || b.claimedCpu - a.claimedCpu || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0),
  )[0];
  const none: NPlusOneOutcome = { vms: 0, placed: 0, left: [], survives: true };
  if (!largest) return { areaId, largestHost: null, ha: none, all: none, survives: true };
  const onIt: EvacuationVm[] = vms
    .filter((v) => v.hostId === largest.id)
    .map((v) => ({ ...v, state: v.state === 'stopped' ? 'stopped' : 'running' }));
  const ha = outcome(snapshot, onIt.filter((v) => v.ha), largest.id, false, policy);
  const all = outcome(snapshot, onIt, largest.id, true, policy);
  return {
    areaId,
    largestHost: { id: largest.id, name: largest.name, claimedCpu: largest.claimedCpu, claimedRamMb: largest.claimedRamMb, vms: onIt.length },
    ha,
    all,
    survives: ha.survives,
  };
}
