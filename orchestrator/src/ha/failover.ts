/**
 * Failover: what happens when a host dies and when it comes back (issue 11, "Host failure and
 * evacuation").
 *
 * - The agent link declares a host `down` only once the last lease it granted has surely ended
 *   (lease + margin: the host has fenced its HA domains by then). That write creates the host-down
 *   episode's Evacuation row, with the evidence, in the same transaction (store/agent-hosts.ts).
 * - {@link evacuateHost} plans it: inside the area's claims lock it reads the placement snapshot
 *   and the host's VMs, calls the pure planEvacuation(), moves each HA VM's host claim to its new
 *   host and queues its `vm.recover` task, marks the VMs that cannot restart `lost` (with why),
 *   and marks the evacuation planned — one transaction, so it happens once per episode however
 *   often it is called (the row is locked and must be pending), by this orchestrator or another.
 * - {@link sweepEvacuations} is the periodic part (the leader's sweep when there are several
 *   orchestrators): pending evacuations left by a crash, and lost HA VMs that may fit now.
 * - {@link cleanReturningHost} runs on a host's Hello before any other command is released to it:
 *   domains of VMs now placed on another host are evicted (destroyed, undefined, ports removed —
 *   never their volumes, which live on the shared pool and are in use elsewhere); domains of no VM
 *   at all are deleted with their volumes; lost VMs of that host take the state it reports, and
 *   other VMs whose domains are not in the state recorded follow them (domain/vm-follow.ts).
 * - {@link followDomainEvent}: the same rule for a lifecycle event of a connected host's domain
 *   (an HA VM that crashed there is started again there).
 */
import type { Logger } from '@kloudak/common';
import type { PrismaClient } from '@kloudak/prisma';
import type { HostLifecycleHooks } from '../agent-api/link.js';
import type { Clock } from '../clock.js';
import type { AgentCommand, CommandResult, DomainLifecycleEvent, HostInventory } from '../domain/agent.js';
import type { PoolLeaseEvidence } from '../domain/agent.js';
import { lostRetryDue, planEvacuation, planReturn, restartHold, restartVerdict, type EvacuationPlan, type RestartVerdict, type ReturnAction } from '../domain/evacuation.js';
import type { PlacementPolicy } from '../domain/placement.js';
import { observedFromEvent } from '../domain/vm-follow.js';
import { areaPlacementSnapshot, lockArea } from '../store/claims.js';
import {
  cancelEvacuation,
  downHostsWithLeftovers,
  downHostsWithLostHaVms,
  failedRecovers,
  hostForEvacuation,
  knownVms,
  lockEvacuation,
  markPlanned,
  pendingEvacuationHost,
  pendingEvacuations,
  reconcileLostVm,
  restartFencedVm,
  recordHeld,
  recordHostCleanUp,
  vmsForEvacuation,
  writeLost,
  writeMoves,
  type FailedRecovers,
} from '../store/evacuations.js';
import { followVmDomain, type RestartTaskSettings } from '../store/vm-follow.js';
import { VM_TASKS } from '../tasks/vm.js';

/** What failover needs. */
export interface FailoverDeps {
  db: PrismaClient;
  clock: Clock;
  log: Logger;
  /** Whether a host's agent holds a session (a restart target must). */
  connected: (hostId: string) => boolean;
  placement: Readonly<PlacementPolicy>;
  /** Wake the task worker (recover tasks were queued). */
  kickTasks: () => void;
  /** Attempts of each recover step, and how long a recover task may take in all. */
  taskMaxAttempts: number;
  recoverTimeoutMs: number;
  /** How long each clean-up command of a returning host may take. */
  commandTimeoutMs: number;
  /** The lease granted to agents: a lease file renewed within it is a host alive on the storage. */
  leaseMs: number;
  /**
   * What the peers of a down host (`peers`: the other hosts of its area) read of its pool lease
   * files, from every instance (ha/pool-lease-evidence.ts); absent: restarts follow the lease
   * rule alone.
   */
  poolLeaseEvidence?: (hostId: string, peers: readonly string[]) => Promise<PoolLeaseEvidence>;
}

/**
 * Plan every pending evacuation of `hostId` (normally one: the episode that just began). Returns
 * the plans made; an evacuation already planned (by another call or orchestrator) is skipped.
 */
export async function evacuateHost(deps: FailoverDeps, hostId: string): Promise<EvacuationPlan[]> {
  const plans: EvacuationPlan[] = [];
  for (const id of await pendingEvacuations(deps.db, hostId)) {
    const p = await planOne(deps, id);
    if (p) plans.push(p);
  }
  if (plans.some((p) => p.moves.length > 0)) deps.kickTasks();
  return plans;
}

/**
 * Whether a pending evacuation's restart is held back: by an admin's word or the host's agent's
 * Goodbye (restartHold), else by its pool lease files (restartVerdict). Read outside the plan's
 * transaction: gathering asks the other instances. A hold whose host is not down any more (it came
 * back with its VMs) cancels the evacuation. Returns null when there is nothing to plan.
 */
async function heldBack(deps: FailoverDeps, evacuationId: string): Promise<{ verdict: RestartVerdict; evidence: PoolLeaseEvidence | null } | null> {
  const head = await pendingEvacuationHost(deps.db, evacuationId);
  if (!head) return null;
  let verdict = restartHold(head.hostId, head);
  let evidence: PoolLeaseEvidence | null = null;
  if (verdict === null) {
    evidence = deps.poolLeaseEvidence ? await deps.poolLeaseEvidence(head.hostId, head.peers) : null;
    verdict = restartVerdict(evidence, deps.leaseMs);
  }
  // Back before its plan (held, or not planned yet): the host keeps its VMs; the HA VMs it fenced
  // meanwhile are started there again by its clean-up (cleanReturningHost).
  if (head.hostState !== 'down') {
    const why = `the host is ${head.hostState} again: it keeps its VMs`;
    if (await cancelEvacuation(deps.db, evacuationId, head.hostName, why, new Date(deps.clock.now()))) {
      deps.log.warn({ component: 'failover', host_id: head.hostId, evacuation_id: evacuationId, held: head.heldWhy }, 'held evacuation cancelled: the host came back');
    }
    return null;
  }
  if (verdict.hold) {
    const first = await recordHeld(deps.db, evacuationId, head.hostId, head.hostName, { why: verdict.why, message: verdict.message, evidence }, new Date(deps.clock.now()));
    deps.log[first ? 'warn' : 'debug']({ component: 'failover', host_id: head.hostId, evacuation_id: evacuationId, reason: verdict.message }, 'host evacuation held back');
  } else if (head.heldWhy !== null) {
    deps.log.warn({ component: 'failover', host_id: head.hostId, evacuation_id: evacuationId, why: verdict.why }, 'host evacuation no longer held back');
  }
  return { verdict, evidence };
}

async function planOne(deps: FailoverDeps, evacuationId: string): Promise<EvacuationPlan | null> {
  const started = deps.clock.now();
  const gate = await heldBack(deps, evacuationId);
  if (!gate || gate.verdict.hold) return null;
  const result = await deps.db.$transaction(
    async (tx) => {
      const e = await lockEvacuation(tx, evacuationId);
      if (!e || e.state !== 'pending') return null;
      const host = await hostForEvacuation(tx, e.hostId);
      // Back since the gate was read: no plan (the next sweep cancels it).
      if (!host || host.state !== 'down') return null;
      await lockArea(tx, host.areaId);
      const placement = await areaPlacementSnapshot(tx, host.areaId, deps.connected);
      const vms = await vmsForEvacuation(tx, host.id);
      const plan = planEvacuation({ placement, vms }, host.id, { policy: deps.placement });
      const moved = await writeMoves(tx, host.id, plan.moves, ['running', 'stopped'], {
        kind: VM_TASKS.recover,
        maxAttempts: deps.taskMaxAttempts,
        deadline: new Date(deps.clock.now() + deps.recoverTimeoutMs),
        evacuationId,
      });
      await writeLost(tx, host.id, [...plan.unplaced, ...plan.lost], evacuationId);
      await markPlanned(tx, evacuationId, host.id, host.name, plan, new Date(deps.clock.now()), { restart: gate.verdict.why });
      return { plan, host, moved: moved.length };
    },
    { timeout: 30_000 },
  );
  if (!result) return null;
  const { plan, host } = result;
  deps.log.warn(
    {
      component: 'failover',
      host_id: host.id,
      evacuation_id: evacuationId,
      moves: result.moved,
      unplaced: plan.unplaced.length,
      lost: plan.lost.length,
      skipped: plan.skipped.length,
      ms: deps.clock.now() - started,
    },
    'host evacuation planned',
  );
  return plan;
}

/**
 * The periodic sweep: evacuations still pending (an orchestrator died between the down state
 * and its plan), then lost HA VMs of down hosts that may fit somewhere now.
 */
export async function sweepEvacuations(deps: FailoverDeps): Promise<{ planned: number; retried: number }> {
  const planned = await sweepPending(deps);
  let retried = 0;
  for (const hostId of await downHostsWithLostHaVms(deps.db)) retried += await replanDownHost(deps, hostId, 'lost');
  for (const hostId of await downHostsWithLeftovers(deps.db)) retried += await replanDownHost(deps, hostId, 'leftovers');
  if (retried > 0) deps.kickTasks();
  return { planned, retried };
}

/** Plan the evacuations still pending; returns how many were planned. */
async function sweepPending(deps: FailoverDeps): Promise<number> {
  let planned = 0;
  for (const id of await pendingEvacuations(deps.db)) if (await planOne(deps, id)) planned++;
  if (planned > 0) deps.kickTasks();
  return planned;
}

/**
 * Plan again the VMs still on a down host, in one of two cases:
 * - `lost`: its lost HA VMs, which may fit somewhere now;
 * - `leftovers`: VMs its evacuation skipped as busy and that have settled since (their task ended,
 *   leaving them on the dead host): HA ones restart elsewhere, the rest are lost — what the
 *   evacuation would have done had they been settled then. The episode's evacuation is planned,
 *   so its restart gate was passed already.
 */
async function replanDownHost(deps: FailoverDeps, hostId: string, which: 'lost' | 'leftovers'): Promise<number> {
  const lost = which === 'lost';
  return deps.db.$transaction(
    async (tx) => {
      const host = await hostForEvacuation(tx, hostId);
      if (!host || host.state !== 'down') return 0;
      await lockArea(tx, host.areaId);
      const placement = await areaPlacementSnapshot(tx, host.areaId, deps.connected);
      let vms = (await vmsForEvacuation(tx, host.id)).filter((v) => (lost ? v.state === 'lost' && v.ha : v.state === 'running' || v.state === 'stopped'));
      // A lost VM whose restart failed waits (backoff), and is tried on another host first.
      const failed = lost ? await failedRecovers(tx, host.id, vms.map((v) => v.id), VM_TASKS.recover) : new Map<string, FailedRecovers>();
      const now = deps.clock.now();
      vms = vms.filter((v) => lostRetryDue(failed.get(v.id)?.count ?? 0, failed.get(v.id)?.lastAt ?? null, now));
      if (vms.length === 0) return 0;
      const failedOn = new Map([...failed].map(([id, f]) => [id, f.hosts]));
      const plan = planEvacuation({ placement, vms }, host.id, { policy: deps.placement, retryLost: lost, failedOn });
      const moved = await writeMoves(tx, host.id, plan.moves, lost ? ['lost'] : ['running', 'stopped'], {
        kind: VM_TASKS.recover,
        maxAttempts: deps.taskMaxAttempts,
        deadline: new Date(deps.clock.now() + deps.recoverTimeoutMs),
        evacuationId: null,
      });
      if (lost) {
        if (moved.length > 0) deps.log.warn({ component: 'failover', host_id: hostId, moves: moved.length }, 'lost HA VMs fit now: recovering them');
      } else {
        const left = await writeLost(tx, host.id, [...plan.unplaced, ...plan.lost], null);
        deps.log.warn({ component: 'failover', host_id: hostId, moves: moved.length, lost: left.length }, 'VMs left on a down host by a task that ended: evacuated now');
      }
      return moved.length;
    },
    { timeout: 30_000 },
  );
}

/** The `vm.start` an HA restart on the VM's own host queues: the attempts and time limit of a recover. */
function startTask(deps: FailoverDeps): RestartTaskSettings {
  return { kind: VM_TASKS.start, maxAttempts: deps.taskMaxAttempts, deadline: new Date(deps.clock.now() + deps.recoverTimeoutMs) };
}

/** What {@link cleanReturningHost} did. */
export interface CleanUpReport {
  evicted: string[];
  deleted: string[];
  /** Lost VMs that took the state the host reports. */
  reconciled: string[];
  /** VMs whose state followed their domain's (domain/vm-follow.ts). */
  followed: string[];
  /** HA VMs it fenced while cut off, started again there. */
  restarted: string[];
  failed: { vmId: string; error: string }[];
}

/**
 * Clean a host that said Hello, from the domains it reported, before anything else is sent to it
 * (see the module comment). Throws when a domain of a VM placed elsewhere could not be evicted:
 * the link then ends the session, and the next Hello tries again.
 */
export async function cleanReturningHost(
  deps: FailoverDeps,
  hostId: string,
  inventory: HostInventory,
  send: (command: AgentCommand, deadline: Date) => Promise<CommandResult>,
): Promise<CleanUpReport> {
  const report: CleanUpReport = { evicted: [], deleted: [], reconciled: [], followed: [], restarted: [], failed: [] };
  const domains = inventory.domains.map((d) => ({ name: d.name, vmId: d.vmId, state: d.state }));
  if (domains.length === 0) return report;
  const known = await knownVms(deps.db, domains.map((d) => d.vmId));
  const volumes = inventory.volumes.map((v) => ({ pool: v.pool, vmId: v.vmId }));
  const actions = planReturn(hostId, domains, known, volumes);
  if (actions.length === 0) return report;
  const bridges = [...new Set(inventory.ovsPorts.map((p) => p.bridge))];
  let mustFail = false;
  await Promise.all(
    actions.map(async (a: ReturnAction) => {
      if (a.kind === 'reconcile') {
        if (await reconcileLostVm(deps.db, hostId, a.vmId, a.state)) report.reconciled.push(a.vmId);
        return;
      }
      if (a.kind === 'follow') {
        const out = await followVmDomain(deps.db, hostId, a.vmId, a.observed, a.cause, { task: startTask(deps), now: new Date(deps.clock.now()), hostMustBeUp: false });
        if (out.action.kind !== 'none') report.followed.push(a.vmId);
        return;
      }
      if (a.kind === 'restart') {
        // Queued now, sent once the clean-up ends (commands to this host wait for it).
        if (await restartFencedVm(deps.db, hostId, a.vmId, startTask(deps))) report.restarted.push(a.vmId);
        return;
      }
      const deadline = new Date(deps.clock.now() + deps.commandTimeoutMs);
      const results: CommandResult[] = [];
      if (a.kind === 'evict') {
        results.push(await send({ vmId: a.vmId, action: { kind: 'evictVm', bridges } }, deadline));
      } else {
        // A domain of no VM: nothing can reference its volumes (their names carry its id).
        if (a.pools.length === 0) results.push(await send({ vmId: a.vmId, action: { kind: 'evictVm', bridges } }, deadline));
        for (const pool of a.pools) results.push(await send({ vmId: a.vmId, action: { kind: 'deleteVm', pool, bridges } }, deadline));
      }
      const bad = results.find((r) => !r.ok);
      if (bad) {
        report.failed.push({ vmId: a.vmId, error: `${bad.error?.code ?? 'internal'}: ${bad.error?.message ?? ''}` });
        // A VM that may run elsewhere must be gone from here before anything else happens here.
        if (a.kind === 'evict' && a.placedOn !== null) mustFail = true;
        return;
      }
      (a.kind === 'evict' ? report.evicted : report.deleted).push(a.vmId);
    }),
  );
  const level = report.failed.length > 0 ? 'error' : 'warn';
  deps.log[level]({ component: 'failover', host_id: hostId, ...report }, 'returning host cleaned');
  if (report.restarted.length > 0) deps.kickTasks();
  await recordHostCleanUp(deps.db, hostId, { ...report });
  if (mustFail) throw new Error(`could not evict from host ${hostId}: ${report.failed.map((f) => `${f.vmId} (${f.error})`).join(', ')}`);
  return report;
}

/** How often {@link startFailoverSweeps} plans pending evacuations (a restart held back waits at most this after its host fences). */
export const FAILOVER_SWEEP_MS = 1000;

/** Lost HA VMs are tried again every this many sweeps. */
const RETRY_LOST_EVERY = 5;

/**
 * Sweep every `everyMs` while `isLeader()` (with several orchestrators only the leader sweeps:
 * ha/leader.ts), until the returned function is called: pending evacuations each time (one left
 * by a crash, or held back by its host's pool lease files), lost HA VMs every fifth time
 * ({@link sweepEvacuations}).
 */
export function startFailoverSweeps(deps: FailoverDeps, isLeader: () => boolean, everyMs = FAILOVER_SWEEP_MS): () => void {
  let running = false;
  let n = 0;
  const timer = setInterval(() => {
    if (running || !isLeader()) return;
    running = true;
    const all = n++ % RETRY_LOST_EVERY === 0;
    (all ? sweepEvacuations(deps) : sweepPending(deps))
      .catch((err: unknown) => deps.log.error({ component: 'failover', err }, 'failover sweep failed'))
      .finally(() => (running = false));
  }, everyMs);
  timer.unref();
  return () => clearInterval(timer);
}

/** The link's hooks, wired to failover (the composition root calls `link.setHooks`). */
export function failoverHooks(deps: FailoverDeps): HostLifecycleHooks {
  return {
    hostDown(hostId) {
      void evacuateHost(deps, hostId).catch((err: unknown) =>
        deps.log.error({ component: 'failover', host_id: hostId, err }, 'planning the evacuation failed; the sweep tries again'),
      );
    },
    async hostReturned(hostId, inventory, send) {
      await cleanReturningHost(deps, hostId, inventory, send);
    },
    async domainChanged(hostId, event) {
      await followDomainEvent(deps, hostId, event);
    },
  };
}

/**
 * A VM's domain changed on a connected host, outside of any task (domain/vm-follow.ts): its state
 * follows, and an HA VM found off is started again there. Errors are logged, never thrown: the
 * event is already recorded, and the host's next Hello reports the domain again.
 */
export async function followDomainEvent(deps: FailoverDeps, hostId: string, event: DomainLifecycleEvent): Promise<void> {
  const seen = observedFromEvent(event.event, event.detail);
  if (!seen) return;
  const log = deps.log.child({ component: 'failover', host_id: hostId, vm_id: event.vmId });
  try {
    const out = await followVmDomain(deps.db, hostId, event.vmId, seen.observed, seen.cause, {
      task: startTask(deps),
      now: new Date(deps.clock.now()),
      hostMustBeUp: true,
    });
    if (out.action.kind === 'none') {
      log.debug({ event: event.event, detail: event.detail, why: out.action.why }, 'domain change left to its owner');
      return;
    }
    log.warn({ event: event.event, detail: event.detail, action: out.action.kind, reason: out.action.reason, task_id: out.taskId ?? undefined }, 'VM state follows its domain');
    if (out.taskId) deps.kickTasks();
  } catch (err) {
    log.error({ err, event: event.event }, 'following the domain change failed; the next Hello reports it again');
  }
}
