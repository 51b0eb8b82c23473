/**
 * The `host.drain` task (issue 11, "Admin actions: drain a host"): put a host in maintenance, then
 * move every VM it can off it, to hosts of its area that placement chooses.
 *
 * Steps (each recorded before it runs, retried, undone in reverse on rollback — tasks/engine.ts):
 * 1. `maintenance`: the host takes no new VM. Undo: its previous admin state again.
 * 2. `plan`: inside the area's claims lock, the pure planDrain() (domain/drain.ts) picks a target
 *    for each VM (capacity, filters, anti-affinity, the VM's own shared pool) and lists those that
 *    cannot move (a host-local disk, a task working on it, no room). Kept on the task
 *    (`placement`), with the progress.
 * 3. `move`: a few VMs at a time (`concurrency`, the orchestrator's drainConcurrency; which ones
 *    the pure nextDrainMoves() in domain/drain.ts decides: spread over the destinations, in plan
 *    order), each on its own; a failed one does not stop the others —
 *    Before it moves, the VM holds its vCPU and RAM on the destination too (`migratingToHostId`,
 *    counted by every placement snapshot), set in the area's claims lock once it still fits there.
 *    - running, `live` mode: the destination agent prepares (bridges, VLANs, the disk must be in
 *      the pool; it answers its libvirt URI, migration address and domain XML), then the source
 *      agent runs libvirt's peer-to-peer live migration. The VM's host claim moves only once the
 *      destination reports the domain running; a failed migration leaves it running on the source
 *      (libvirt's own rollback), and its claim where it was.
 *    - running, `restart` mode: stopped on the source, started on the destination from the same
 *      disk, then removed from the source; if the start fails it is removed from the destination
 *      and started on the source again.
 *    - stopped: defined on the destination, removed from the source.
 *    A VM already on its destination (a retry, or a resumed task) is skipped; one that failed is
 *    settled (its claim follows where the domain runs) and the step fails once every move under way
 *    has ended, to be retried. No move starts once the step is aborted (lost lease, shutdown) or
 *    past its deadline, and the step does not end while one is under way. Undo:
 *    every planned VM's claim follows where it really runs (a migration that completed although
 *    its answer was lost counts as done). VMs that moved are never moved back.
 *
 * While it moves, a VM is `migrating` (power and network actions answer 409).
 */
import type { PrismaClient } from '@kloudak/prisma';
import type { AgentChannel } from '../agent-api/channel.js';
import type { HostInventory } from '../domain/agent.js';
import { nextDrainMoves, planDrain, type DrainMode, type DrainMove, type DrainPlan } from '../domain/drain.js';
import { schedule, type PlacementPolicy } from '../domain/placement.js';
import type { EventInput } from '../events/event.js';
import { areaPlacementSnapshot, lockArea } from '../store/claims.js';
import { vmsForEvacuation } from '../store/evacuations.js';
import { appendEvents } from '../store/outbox.js';
import { runCommand } from './commands.js';
import { StepError, type StepContext, type TaskDefinition } from './types.js';
import { vmDefinition } from './vm.js';

/** Task kinds of hosts. */
export const HOST_TASKS = {
  drain: 'host.drain',
} as const;

/** What the drain task needs besides the database. */
export interface DrainTaskDeps {
  agents: AgentChannel;
  /** Whether a host's agent holds a session (a target must). */
  connected: (hostId: string) => boolean;
  placement: Readonly<PlacementPolicy>;
  /** How often to ask a host whether a VM runs there. */
  pollMs: number;
  /** How long a graceful stop may take (restart mode). */
  stopTimeoutMs: number;
  /** How long one live migration may take before the source agent cancels it. */
  migrationTimeoutMs: number;
  /** How long the move step may take in all (every VM of the host). */
  moveStepTimeoutMs: number;
  /** How many VMs the move step moves at once (at least 1). */
  concurrency: number;
}

/** What the plan step keeps (and the move step follows). */
interface PlanResult {
  areaId: string;
  hostName: string;
  mode: DrainMode;
  moves: DrainMove[];
  cannotMove: DrainPlan['cannotMove'];
}

/** Command numbers of one VM's move inside the step's attempt (a step may send many commands). */
const COMMANDS_PER_VM = 200;

function hostIdOf(ctx: StepContext): string {
  return ctx.task.targetId;
}

function modeOf(ctx: StepContext): DrainMode {
  return ctx.task.input['mode'] === 'restart' ? 'restart' : 'live';
}

/** Events of a VM's state, for its workspace, and the infrastructure's record of the move. */
function movedEvents(m: DrainMove, fromHostId: string, state: string, extra: Record<string, unknown>): EventInput[] {
  return [
    { workspaceId: m.workspaceId, entity: 'vm', entityId: m.vmId, event: 'state', state, name: m.vmName, data: { host: m.toHostName } },
    { workspaceId: null, entity: 'vm', entityId: m.vmId, event: 'migrated', state, name: m.vmName, data: { fromHostId, toHostId: m.toHostId, toHost: m.toHostName, how: m.how, ...extra } },
  ];
}

/** The drain task definition. */
export function drainTaskDefinitions(deps: DrainTaskDeps): TaskDefinition[] {
  const { agents } = deps;

  /** A VM's domain state on a host, from its inventory ('missing' when it has none). */
  async function domainOn(ctx: StepContext, hostId: string, vmId: string, n: number): Promise<string> {
    const r = await runCommand(agents, ctx, hostId, { action: { kind: 'getInventory' } }, n);
    const inv: HostInventory | undefined = r.inventory;
    return inv?.domains.find((d) => d.vmId.toLowerCase() === vmId)?.state ?? 'missing';
  }

  /** Poll a host until the VM runs there, within `ms`; true when it does. */
  async function runsOn(ctx: StepContext, hostId: string, vmId: string, firstN: number, ms: number): Promise<boolean> {
    const until = Date.now() + ms;
    for (let i = 0; ; i++) {
      if ((await domainOn(ctx, hostId, vmId, firstN + i)) === 'running') return true;
      if (Date.now() + deps.pollMs > until || i >= 90) return false;
      if (ctx.signal.aborted) throw new Error('aborted');
      await new Promise((r) => setTimeout(r, deps.pollMs));
    }
  }

  /** Move the VM's claim to its new host, with its state and events (only if still on `from`). */
  async function commitMove(db: PrismaClient, from: string, m: DrainMove, state: 'running' | 'stopped', extra: Record<string, unknown>): Promise<boolean> {
    return db.$transaction(async (tx) => {
      const r = await tx.vm.updateMany({ where: { id: m.vmId, hostId: from }, data: { hostId: m.toHostId, migratingToHostId: null, state, stateReason: null } });
      if (r.count === 0) return false;
      await appendEvents(tx, movedEvents(m, from, state, extra));
      return true;
    });
  }

  /** Put the VM back in a settled state where it is (after a failed move), with why. */
  async function settleInPlace(db: PrismaClient, from: string, m: DrainMove, state: 'running' | 'stopped', why: string): Promise<void> {
    await db.$transaction(async (tx) => {
      const r = await tx.vm.updateMany({ where: { id: m.vmId, hostId: from, state: 'migrating' }, data: { state, migratingToHostId: null, stateReason: why.slice(0, 1000) } });
      if (r.count === 0) return;
      await appendEvents(tx, [
        { workspaceId: m.workspaceId, entity: 'vm', entityId: m.vmId, event: 'state', state, name: m.vmName, data: { reason: why.slice(0, 1000) } },
        { workspaceId: null, entity: 'vm', entityId: m.vmId, event: 'migration_failed', state, name: m.vmName, data: { hostId: from, toHostId: m.toHostId, how: m.how, reason: why.slice(0, 1000) } },
      ]);
    });
  }

  /**
   * Where the VM really is now, between its source and its destination: its claim follows the
   * domain (a migration that completed although its answer was lost counts as done). Returns true
   * when it ended on the destination.
   */
  async function reconcile(ctx: StepContext, from: string, m: DrainMove, n: number, why: string): Promise<boolean> {
    const vm = await ctx.db.vm.findUnique({ where: { id: m.vmId }, select: { hostId: true, state: true } });
    if (!vm || vm.hostId !== from) return vm?.hostId === m.toHostId;
    const there = await domainOn(ctx, m.toHostId, m.vmId, n).catch(() => 'unknown');
    const here = await domainOn(ctx, from, m.vmId, n + 1).catch(() => 'unknown');
    if (there === 'running' && here !== 'running') {
      await commitMove(ctx.db, from, m, 'running', { reconciled: true });
      return true;
    }
    await settleInPlace(ctx.db, from, m, here === 'running' || m.how === 'live' ? 'running' : 'stopped', why);
    return false;
  }

  /** One VM's move (see the module comment). Returns how long it took. */
  async function moveOne(ctx: StepContext, from: string, m: DrainMove, base: number): Promise<{ ms: number; skipped?: string }> {
    const t0 = Date.now();
    const v = await vmDefinition(ctx.db, m.vmId);
    if (v.hostId === m.toHostId) return { ms: 0, skipped: 'already on its destination' };
    if (v.hostId !== from) return { ms: 0, skipped: 'no longer on this host' };
    const expected = m.how === 'define' ? 'stopped' : 'running';
    if (v.state !== expected && v.state !== 'migrating') return { ms: 0, skipped: `it is ${v.state} now` };
    // Reserve its vCPU and RAM on the destination (migratingToHostId counts there in every
    // placement snapshot) in the area's claims lock, once it is sure it still fits: creates since
    // the plan may have taken the room. The claim itself moves only once it runs there.
    await ctx.db.$transaction(
      async (tx) => {
        const row = await tx.vm.findUnique({ where: { id: m.vmId }, select: { areaId: true, workspaceId: true, poolId: true, haEnabled: true, cpu: true, ramMb: true, migratingToHostId: true } });
        if (!row) throw new StepError('the VM no longer exists', 'not_found', false);
        if (row.migratingToHostId !== m.toHostId) {
          await lockArea(tx, row.areaId);
          const snapshot = await areaPlacementSnapshot(tx, row.areaId, deps.connected);
          const others = new Set((snapshot.areas.get(row.areaId)?.hosts ?? []).map((h) => h.id).filter((id) => id !== m.toHostId));
          const fit = schedule(
            snapshot,
            { areaId: row.areaId, workspaceId: row.workspaceId, cpu: row.cpu, ramMb: row.ramMb, diskGb: 0, ha: row.haEnabled, excludeHostIds: others, ...(row.poolId ? { poolIds: new Set([row.poolId]) } : {}) },
            deps.placement,
          );
          if (!fit.ok) throw new StepError(`${m.toHostName} cannot take it any more: ${fit.message}`, 'resource_exhausted', true);
        }
        const r = await tx.vm.updateMany({
          where: { id: m.vmId, hostId: from, state: { in: [expected, 'migrating'] } },
          data: { state: 'migrating', migratingToHostId: m.toHostId, stateReason: `its host is being drained: moving to ${m.toHostName}` },
        });
        if (r.count > 0) await appendEvents(tx, [{ workspaceId: m.workspaceId, entity: 'vm', entityId: m.vmId, event: 'state', state: 'migrating', name: m.vmName, data: { toHost: m.toHostName } }]);
      },
      { timeout: 30_000 },
    );
    let n = base;
    try {
      if (m.how === 'live') {
        // Migrated by an earlier attempt whose answer was lost: running there already.
        if ((await domainOn(ctx, m.toHostId, m.vmId, n++)) !== 'running') {
          const prep = await runCommand(agents, ctx, m.toHostId, { vmId: m.vmId, action: { kind: 'prepareMigration', vm: v.def } }, n++);
          if (!prep.migrationTarget) throw new StepError('the destination answered no migration target', 'internal', true);
          const started = Date.now();
          try {
            await runCommand(
              agents,
              ctx,
              from,
              { vmId: m.vmId, action: { kind: 'migrateVm', target: prep.migrationTarget, sharedStorage: v.poolShared, timeoutMs: deps.migrationTimeoutMs } },
              n++,
            );
          } catch (err) {
            // Not running on the source: done already if it runs on the destination.
            if (!(err instanceof StepError && err.code === 'not_found') || (await domainOn(ctx, m.toHostId, m.vmId, n++)) !== 'running') throw err;
          }
          const migrateMs = Date.now() - started;
          if (!(await runsOn(ctx, m.toHostId, m.vmId, n, 30_000))) throw new StepError('the destination does not report the VM running after its migration', 'unavailable', true);
          n += 100;
          await commitMove(ctx.db, from, m, 'running', { migrateMs });
          return { ms: Date.now() - t0 };
        }
        await commitMove(ctx.db, from, m, 'running', { reconciled: true });
        return { ms: Date.now() - t0 };
      }
      // Stop and restart (or, stopped, re-home): the destination defines it from the same disk.
      const start = m.how === 'restart';
      if (start) await runCommand(agents, ctx, from, { vmId: m.vmId, action: { kind: 'stopVm', timeoutMs: deps.stopTimeoutMs, force: false } }, n++);
      try {
        await runCommand(agents, ctx, m.toHostId, { vmId: m.vmId, action: { kind: 'createVm', ...v.def, recover: { start } } }, n++);
        if (start && !(await runsOn(ctx, m.toHostId, m.vmId, n, 60_000))) throw new StepError('the destination does not report the VM running', 'unavailable', true);
        n += 100;
      } catch (err) {
        // Back where it was: gone from the destination, running again on the source.
        await runCommand(agents, ctx, m.toHostId, { vmId: m.vmId, action: { kind: 'evictVm', bridges: [] } }, n++).catch(() => undefined);
        if (start) await runCommand(agents, ctx, from, { vmId: m.vmId, action: { kind: 'startVm' } }, n++).catch(() => undefined);
        throw err;
      }
      await runCommand(agents, ctx, from, { vmId: m.vmId, action: { kind: 'evictVm', bridges: [] } }, n++);
      await commitMove(ctx.db, from, m, start ? 'running' : 'stopped', {});
      return { ms: Date.now() - t0 };
    } catch (err) {
      await reconcile(ctx, from, m, base + COMMANDS_PER_VM - 4, `the move to ${m.toHostName} failed: ${(err as Error).message}`).catch(() => undefined);
      throw err;
    }
  }

  const drain: TaskDefinition = {
    kind: HOST_TASKS.drain,
    steps: [
      {
        name: 'maintenance',
        // No new VM lands on the host from now on (placement's admin filter).
        async run(ctx) {
          const id = hostIdOf(ctx);
          return ctx.db.$transaction(async (tx) => {
            const h = await tx.host.findUnique({ where: { id }, select: { name: true, adminState: true, state: true } });
            if (!h) throw new StepError('the host no longer exists', 'not_found', false);
            const previous = typeof ctx.results['maintenance']?.['previous'] === 'string' ? String(ctx.results['maintenance']['previous']) : h.adminState;
            if (h.adminState !== 'maintenance') {
              await tx.host.update({ where: { id }, data: { adminState: 'maintenance' } });
              await appendEvents(tx, [{ workspaceId: null, entity: 'host', entityId: id, event: 'updated', state: h.state, name: h.name, taskId: ctx.task.id, data: { adminState: 'maintenance', reason: 'drain' } }]);
            }
            return { previous };
          });
        },
        async undo(ctx) {
          const previous = ctx.results['maintenance']?.['previous'];
          if (previous !== 'active') return;
          const id = hostIdOf(ctx);
          await ctx.db.$transaction(async (tx) => {
            const r = await tx.host.updateMany({ where: { id, adminState: 'maintenance' }, data: { adminState: 'active' } });
            if (r.count > 0) await appendEvents(tx, [{ workspaceId: null, entity: 'host', entityId: id, event: 'updated', state: null, taskId: ctx.task.id, data: { adminState: 'active', reason: 'drain rolled back' } }]);
          });
        },
      },
      {
        name: 'plan',
        async run(ctx) {
          const id = hostIdOf(ctx);
          const mode = modeOf(ctx);
          const result = await ctx.db.$transaction(
            async (tx) => {
              const h = await tx.host.findUnique({ where: { id }, select: { name: true, areaId: true } });
              if (!h) throw new StepError('the host no longer exists', 'not_found', false);
              await lockArea(tx, h.areaId);
              const snapshot = await areaPlacementSnapshot(tx, h.areaId, deps.connected);
              const plan = planDrain(snapshot, await vmsForEvacuation(tx, id), id, mode, deps.placement);
              const out: PlanResult = { areaId: h.areaId, hostName: h.name, mode, moves: plan.moves, cannotMove: plan.cannotMove };
              await appendEvents(tx, [
                {
                  workspaceId: null,
                  entity: 'host',
                  entityId: id,
                  event: 'drain_planned',
                  state: null,
                  name: h.name,
                  taskId: ctx.task.id,
                  data: {
                    mode,
                    moves: plan.moves.map((m) => ({ vmId: m.vmId, vm: m.vmName, toHost: m.toHostName, how: m.how })),
                    cannotMove: plan.cannotMove.map((c) => ({ vmId: c.vmId, vm: c.vmName, code: c.code, message: c.message })),
                  },
                },
              ]);
              return out;
            },
            { timeout: 30_000 },
          );
          await ctx.setPlacement({ drain: { mode, moves: result.moves, cannotMove: result.cannotMove, progress: { moved: 0, of: result.moves.length } } });
          return { ...result } as Record<string, unknown>;
        },
      },
      {
        name: 'move',
        timeoutMs: deps.moveStepTimeoutMs,
        async run(ctx) {
          const from = hostIdOf(ctx);
          const plan = ctx.results['plan'] as unknown as PlanResult | undefined;
          if (!plan) throw new StepError('no plan', 'failed_precondition', false);
          const moved: { vmId: string; vm: string; toHost: string; how: string; ms: number; skipped?: string }[] = [];
          const failed: { vmId: string; vm: string; toHost: string; error: string }[] = [];
          const index = new Map(plan.moves.map((m, i) => [m.vmId, i]));
          const started = new Set<string>();
          const inFlight = new Map<string, { move: DrainMove; done: Promise<void> }>();
          let aborted: unknown;
          const launch = (m: DrainMove): void => {
            started.add(m.vmId);
            // Each VM's commands are numbered from its place in the plan: distinct whatever the order.
            const done = moveOne(ctx, from, m, 1 + index.get(m.vmId)! * COMMANDS_PER_VM).then(
              (r) => void moved.push({ vmId: m.vmId, vm: m.vmName, toHost: m.toHostName, how: m.how, ms: r.ms, ...(r.skipped ? { skipped: r.skipped } : {}) }),
              (err: unknown) => {
                if (ctx.signal.aborted) aborted ??= err;
                else failed.push({ vmId: m.vmId, vm: m.vmName, toHost: m.toHostName, error: (err as Error).message.slice(0, 500) });
              },
            );
            inFlight.set(m.vmId, { move: m, done: done.finally(() => inFlight.delete(m.vmId)) });
          };
          const report = () =>
            ctx.setPlacement({
              drain: {
                mode: plan.mode,
                moves: plan.moves,
                cannotMove: plan.cannotMove,
                progress: {
                  moved: moved.length,
                  failed: failed.length,
                  of: plan.moves.length,
                  concurrency: deps.concurrency,
                  moving: [...inFlight.values()].map(({ move: m }) => ({ vmId: m.vmId, vm: m.vmName, toHost: m.toHostName, how: m.how })),
                  done: moved,
                  errors: failed,
                },
              },
            });
          // Once aborted (another worker resumes the step) or past the step's deadline (the engine
          // has given up on this attempt; a retry starts again), this attempt starts no move and
          // writes no progress: the attempt that carries on owns both.
          const current = () => !ctx.signal.aborted && Date.now() < ctx.deadline.getTime();
          try {
            for (;;) {
              if (current()) {
                for (const m of nextDrainMoves(plan.moves, started, [...inFlight.values()].map((f) => f.move), deps.concurrency)) launch(m);
                await report();
              }
              // Checked after the report (moves may end while it is written), with no wait before the race.
              if (inFlight.size === 0) break;
              await Promise.race([...inFlight.values()].map((f) => f.done));
            }
            // The last report may predate the end of the last moves.
            if (current()) await report();
          } finally {
            // Never leave a move running behind the step (a failed report, say): its VM would be
            // moved while the next attempt or the undo looks at it.
            await Promise.allSettled([...inFlight.values()].map((f) => f.done));
          }
          if (ctx.signal.aborted) throw aborted ?? new Error('aborted');
          // Past the deadline the engine has failed this attempt already (some VMs may not have started).
          if (!current()) throw new StepError(`the move step ran out of time (${started.size} of ${plan.moves.length} VMs started)`, 'deadline_exceeded', true);
          if (failed.length > 0) {
            throw new StepError(`${failed.length} of ${plan.moves.length} VMs could not move: ${failed.map((f) => `${f.vm} → ${f.toHost}: ${f.error}`).join('; ')}`.slice(0, 2000), 'unavailable', true);
          }
          await ctx.db.$transaction((tx) =>
            appendEvents(tx, [
              {
                workspaceId: null,
                entity: 'host',
                entityId: from,
                event: 'drained',
                state: null,
                name: plan.hostName,
                taskId: ctx.task.id,
                data: { mode: plan.mode, moved: moved.map((x) => ({ vm: x.vm, toHost: x.toHost, how: x.how, ms: x.ms })), cannotMove: plan.cannotMove.map((c) => ({ vmId: c.vmId, vm: c.vmName, code: c.code, message: c.message })) },
              },
            ]),
          );
          return { moved, cannotMove: plan.cannotMove.length };
        },
        // Every planned VM's claim follows where its domain runs; nothing is moved back.
        async undo(ctx) {
          const from = hostIdOf(ctx);
          const plan = ctx.results['plan'] as unknown as PlanResult | undefined;
          if (!plan) return;
          for (const [i, m] of plan.moves.entries()) await reconcile(ctx, from, m, 1 + i * COMMANDS_PER_VM + COMMANDS_PER_VM - 2, 'the drain was rolled back');
        },
      },
    ],
  };
  return [drain];
}
