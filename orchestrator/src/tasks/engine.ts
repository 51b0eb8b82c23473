import { createHash } from 'node:crypto';
import type { Logger } from '@kloudak/common';
import { Prisma, type PrismaClient } from '@kloudak/prisma';
import type { Clock } from '../clock.js';
import type { EventInput } from '../events/event.js';
import { appendEvents } from '../store/outbox.js';
import { StepError, type StepContext, type StepDefinition, type StepResult, type TaskDefinition, type TaskView, type TxClient } from './types.js';


/** Runs of a task that fail outside its steps before the task is ended failed (see giveUpIfStuck). */
export const MAX_RUNS = 50;

/** The most tasks claimed in one statement (the free slots, up to this). */
const CLAIM_BATCH = 16;

/** Settings of the {@link TaskEngine}. */
export interface TaskEngineOptions {
  /** This worker's name in the lease column (unique per orchestrator process). */
  owner: string;
  /** A claimed task is this worker's until the lease ends; it is renewed every third of it. */
  leaseMs: number;
  /** How often the worker looks for runnable tasks besides {@link TaskEngine.kick}. */
  pollMs: number;
  /** Tasks run at the same time by this worker. */
  concurrency: number;
  /** Default per-attempt timeout of a step. */
  stepTimeoutMs: number;
  /** Attempts of a step before rollback (the seed's default: 1 + 2 retries). */
  maxAttempts: number;
  /** Backoff before retry n is backoffMs·2^(n-1), at most backoffMaxMs. */
  backoffMs: number;
  backoffMaxMs: number;
}

type StepRow = { id: string; seq: number; name: string; state: string; attempts: number; result: unknown; error: string | null };
type TaskRow = {
  id: string;
  kind: string;
  workspaceId: string | null;
  targetType: string;
  targetId: string;
  state: string;
  maxAttempts: number;
  deadline: Date | null;
  input: unknown;
  error: string | null;
  rollbackLog: unknown;
  steps: StepRow[];
};

/** An entry of a task's rollback log. */
interface RollbackEntry {
  step: string;
  attempt: number;
  ok: boolean;
  skipped?: string;
  error?: string;
  at: string;
}

/**
 * Runs persisted tasks: claims them with a lease (so two orchestrators never run one task at the
 * same time and a restarted one resumes what was left), records every step before it runs,
 * retries failed steps with backoff, and undoes completed steps in reverse order when retries run
 * out or the task's deadline passes.
 *
 * Why a lease and not a lock held by a transaction: a step waits on agents for seconds, and no
 * transaction may stay open across that (ENVIRONMENT.md: PGlite serialises everything; on
 * PostgreSQL it would hold row locks). The claim is one short UPDATE; renewal is another.
 */
export class TaskEngine {
  private readonly defs = new Map<string, TaskDefinition>();
  private readonly running = new Map<string, { abort: AbortController; done: Promise<void> }>();
  private timer: NodeJS.Timeout | undefined;
  private pumping = false;
  private again = false;
  private closed = false;

  constructor(
    private readonly deps: { db: PrismaClient; clock: Clock; log: Logger },
    definitions: readonly TaskDefinition[],
    private readonly opts: TaskEngineOptions,
  ) {
    for (const d of definitions) this.defs.set(d.kind, d);
  }

  /** Start polling for runnable tasks. */
  start(): void {
    if (this.timer || this.closed) return;
    this.timer = setInterval(() => this.kick(), this.opts.pollMs);
    this.timer.unref();
    this.kick();
  }

  /** Look for runnable tasks now (a use case just committed one). */
  kick(): void {
    if (this.closed) return;
    if (this.pumping) {
      this.again = true;
      return;
    }
    this.pumping = true;
    void this.pump()
      .catch((err: unknown) => this.deps.log.error({ component: 'tasks', err }, 'claiming tasks failed'))
      .finally(() => {
        this.pumping = false;
        if (this.again) {
          this.again = false;
          this.kick();
        }
      });
  }

  /** Tasks this worker is running now. */
  get active(): number {
    return this.running.size;
  }

  /**
   * Stop: no new claims; running tasks are interrupted where they wait and their leases released,
   * so the next orchestrator to start resumes them at once (a step in flight is resumed with the
   * same command id: the agent never acts twice).
   */
  async close(): Promise<void> {
    this.closed = true;
    if (this.timer) clearInterval(this.timer);
    const runs = [...this.running.entries()];
    for (const [, r] of runs) r.abort.abort(new Error('the orchestrator is shutting down'));
    await Promise.allSettled(runs.map(([, r]) => r.done));
    for (const [id] of runs) await this.release(id).catch(() => undefined);
  }

  private async pump(): Promise<void> {
    while (!this.closed && this.running.size < this.opts.concurrency) {
      // Every free slot in one statement: a failover queues tens of recovers at once, and
      // claiming them one round trip at a time delayed the last one's start by as many trips.
      const ids = await this.claim(Math.min(CLAIM_BATCH, this.opts.concurrency - this.running.size));
      if (ids.length === 0) return;
      for (const id of ids) this.launch(id);
    }
  }

  /** Run a claimed task; when it ends, its slot goes to the next one. */
  private launch(id: string): void {
    const abort = new AbortController();
    const done = this.run(id, abort.signal)
      .catch(async (err: unknown) => {
        this.deps.log.error({ component: 'tasks', task_id: id, err }, 'task run failed; it resumes when its lease ends');
        await this.giveUpIfStuck(id, err).catch((e: unknown) => this.deps.log.error({ component: 'tasks', task_id: id, err: e }, 'could not end a stuck task'));
      })
      .finally(() => {
        this.running.delete(id);
        if (!this.closed) this.kick();
      });
    this.running.set(id, { abort, done });
  }

  /**
   * Claim the oldest runnable tasks, `n` at most: queued, or unfinished with no live lease and no
   * backoff pending, and with no older unfinished task on the same object (tasks of one object
   * run in order: of two unfinished tasks of one object only the older is ever a candidate). One
   * statement; SKIP LOCKED keeps concurrent claimers apart.
   */
  private async claim(n: number): Promise<string[]> {
    const now = new Date(this.deps.clock.now());
    const until = new Date(now.getTime() + this.opts.leaseMs);
    // The first claim moves a task from queued to running: that change and its event commit together.
    return this.deps.db.$transaction(async (tx: TxClient) => {
    const rows = await tx.$queryRaw<{ id: string; kind: string; workspaceId: string | null; targetType: string; targetId: string; attempts: number }[]>`
      UPDATE "Task" SET "leaseOwner" = ${this.opts.owner}, "leaseExpiresAt" = ${until},
        "attempts" = "attempts" + 1, "startedAt" = COALESCE("startedAt", ${now}), "updatedAt" = ${now},
        "state" = CASE WHEN "state" = 'queued' THEN 'running'::"TaskState" ELSE "state" END
      WHERE "id" IN (
        SELECT t."id" FROM "Task" t
        WHERE t."state" IN ('queued', 'running', 'rolling_back')
          AND (t."runAfter" IS NULL OR t."runAfter" <= ${now})
          AND (t."leaseExpiresAt" IS NULL OR t."leaseExpiresAt" < ${now})
          AND NOT EXISTS (
            SELECT 1 FROM "Task" o WHERE o."targetId" = t."targetId" AND o."seq" < t."seq"
              AND o."state" IN ('queued', 'running', 'rolling_back'))
        ORDER BY t."seq" LIMIT ${n}
        FOR UPDATE SKIP LOCKED)
      RETURNING "id"::text AS id, "kind", "workspaceId"::text AS "workspaceId", "targetType", "targetId", "attempts"`;
    const first = rows.filter((r) => r.attempts === 1).flatMap((r) => this.events(r, 'state', { state: 'running' }));
    if (first.length > 0) await appendEvents(tx, first);
    return rows.map((r) => r.id);
    });
  }

  /**
   * A run that failed outside any step (the engine's own writes, a finish hook) is resumed when its
   * lease ends; if it keeps failing, the task would run for ever. Past its deadline, or after
   * {@link MAX_RUNS} runs, it ends `failed` with the error, so no task stays unfinished forever.
   */
  private async giveUpIfStuck(id: string, err: unknown): Promise<void> {
    const t = await this.deps.db.task.findUnique({ where: { id }, select: { state: true, attempts: true, deadline: true, workspaceId: true, kind: true, targetType: true, targetId: true } });
    if (!t || !['queued', 'running', 'rolling_back'].includes(t.state)) return;
    const now = this.deps.clock.now();
    const pastDeadline = t.deadline !== null && now >= t.deadline.getTime();
    if (!pastDeadline && t.attempts < MAX_RUNS) return;
    const why = `internal error after ${t.attempts} run(s): ${err instanceof Error ? err.message : String(err)}`.slice(0, 1000);
    await this.deps.db.$transaction(async (tx: TxClient) => {
      const n = await tx.task.updateMany({
        where: { id, state: { in: ['queued', 'running', 'rolling_back'] } },
        data: { state: 'failed', error: why, finishedAt: new Date(now), leaseOwner: null, leaseExpiresAt: null },
      });
      if (n.count > 0) await appendEvents(tx, this.events({ id, ...t }, 'state', { state: 'failed' }));
    });
    this.deps.log.error({ component: 'tasks', task_id: id, runs: t.attempts }, 'task ended failed: it kept failing outside its steps');
  }

  private async release(id: string): Promise<void> {
    await this.deps.db.task.updateMany({ where: { id, leaseOwner: this.opts.owner }, data: { leaseOwner: null, leaseExpiresAt: null } });
  }

  private async run(id: string, outer: AbortSignal): Promise<void> {
    const abort = new AbortController();
    const onOuter = () => abort.abort(outer.reason);
    outer.addEventListener('abort', onOuter, { once: true });
    // Renew the lease while the task runs; losing it (another worker took the task after a stall)
    // aborts this run at its next wait, and it writes nothing more.
    const renew = setInterval(() => {
      const until = new Date(this.deps.clock.now() + this.opts.leaseMs);
      this.deps.db.task
        .updateMany({ where: { id, leaseOwner: this.opts.owner }, data: { leaseExpiresAt: until } })
        .then((r) => {
          if (r.count === 0) abort.abort(new Error('the task lease was lost'));
        })
        .catch((err: unknown) => this.deps.log.warn({ component: 'tasks', task_id: id, err }, 'lease renewal failed'));
    }, Math.max(10, Math.floor(this.opts.leaseMs / 3)));
    try {
      const task = (await this.deps.db.task.findUnique({ where: { id }, include: { steps: { orderBy: { seq: 'asc' } } } })) as TaskRow | null;
      if (!task) return;
      const def = this.defs.get(task.kind);
      if (!def) {
        await this.finish(task, 'failed', `unknown task kind ${task.kind}`, undefined);
        return;
      }
      if (task.state === 'rolling_back') await this.rollback(task, def, task.error ?? 'rolled back', abort.signal);
      else await this.forward(task, def, abort.signal);
    } finally {
      clearInterval(renew);
      outer.removeEventListener('abort', onOuter);
    }
  }

  private view(task: TaskRow): TaskView {
    return {
      id: task.id,
      kind: task.kind,
      workspaceId: task.workspaceId,
      targetType: task.targetType,
      targetId: task.targetId,
      input: (task.input ?? {}) as Record<string, unknown>,
    };
  }

  private async forward(task: TaskRow, def: TaskDefinition, signal: AbortSignal): Promise<void> {
    const log = this.deps.log.child({ component: 'tasks', task_id: task.id, kind: task.kind });
    const results: Record<string, StepResult> = {};
    for (const [i, sd] of def.steps.entries()) {
      if (signal.aborted) return;
      const seq = i + 1;
      const prev = task.steps.find((s) => s.seq === seq);
      if (prev?.state === 'succeeded') {
        results[sd.name] = (prev.result ?? undefined) as StepResult;
        continue;
      }
      const now = this.deps.clock.now();
      if (task.deadline && now >= task.deadline.getTime()) {
        await this.startRollback(task, def, `deadline exceeded before step ${sd.name}`, signal);
        return;
      }
      // A step found running was interrupted (crash, shutdown, lost lease): resume the same attempt,
      // with the same command id. A failed one runs again as the next attempt.
      const attempt = prev?.state === 'running' ? prev.attempts : (prev?.attempts ?? 0) + 1;
      const stepDeadline = Math.min(now + (sd.timeoutMs ?? this.opts.stepTimeoutMs), task.deadline?.getTime() ?? Infinity);
      // Recorded before it runs: a crash from here on leaves a trace to resume from.
      const row = await this.deps.db.$transaction(async (tx: TxClient) => {
        const r = await tx.taskStep.upsert({
          where: { taskId_seq: { taskId: task.id, seq } },
          create: { taskId: task.id, seq, name: sd.name, state: 'running', attempts: attempt, startedAt: new Date(now), deadline: new Date(stepDeadline) },
          update: { state: 'running', attempts: attempt, startedAt: new Date(now), deadline: new Date(stepDeadline), error: null, finishedAt: null },
        });
        await appendEvents(tx, this.events(task, 'step', { step: sd.name, attempt, stepState: 'running' }));
        return r;
      });
      log.info({ step: sd.name, attempt }, 'step started');
      try {
        const out = await this.attempt(task, sd, row.id, attempt, 'run', stepDeadline, results, signal);
        if (signal.aborted) return;
        await this.deps.db.taskStep.update({
          where: { id: row.id },
          data: { state: 'succeeded', result: (out ?? Prisma.DbNull) as Prisma.InputJsonValue, finishedAt: new Date(this.deps.clock.now()) },
        });
        results[sd.name] = out ?? undefined;
        log.info({ step: sd.name, attempt }, 'step succeeded');
      } catch (err) {
        if (signal.aborted) return; // another worker (or the next start) resumes this attempt
        const message = errorText(err);
        const retryable = !(err instanceof StepError) || err.retryable;
        // Whether any attempt of this step may have changed something: a command that never left
        // the orchestrator did not; rollback skips the undo of a step none of whose attempts acted.
        const prevActed = (prev?.result as { acted?: boolean } | null)?.acted;
        const acted = prevActed === true || !(err instanceof StepError && err.code === 'not_sent');
        await this.deps.db.$transaction(async (tx: TxClient) => {
          await tx.taskStep.update({
            where: { id: row.id },
            data: { state: 'failed', error: message, result: { acted }, finishedAt: new Date(this.deps.clock.now()) },
          });
          await appendEvents(tx, this.events(task, 'step', { step: sd.name, attempt, stepState: 'failed' }));
        });
        const left = retryable && attempt < task.maxAttempts && (!task.deadline || this.deps.clock.now() < task.deadline.getTime());
        if (left) {
          const delay = Math.min(this.opts.backoffMaxMs, this.opts.backoffMs * 2 ** (attempt - 1));
          log.warn({ step: sd.name, attempt, retry_in_ms: delay, err: message }, 'step failed; retrying');
          await this.deps.db.task.update({
            where: { id: task.id },
            data: { runAfter: new Date(this.deps.clock.now() + delay), leaseOwner: null, leaseExpiresAt: null, error: `step ${sd.name} attempt ${attempt} failed: ${message}` },
          });
          const t = setTimeout(() => this.kick(), delay + 5);
          t.unref();
          return;
        }
        log.warn({ step: sd.name, attempt, err: message }, 'step failed; rolling back');
        await this.startRollback(task, def, `step ${sd.name} failed after ${attempt} attempt(s): ${message}`, signal);
        return;
      }
    }
    await this.finish(task, 'succeeded', null, def);
    log.info('task succeeded');
  }

  /** Run one attempt of a step's run or undo, bounded by its deadline and the run's signal. */
  private async attempt(
    task: TaskRow,
    sd: StepDefinition,
    stepId: string,
    attempt: number,
    phase: 'run' | 'undo',
    deadline: number,
    results: Record<string, StepResult>,
    signal: AbortSignal,
  ): Promise<StepResult> {
    const ctx: StepContext = {
      task: this.view(task),
      db: this.deps.db,
      stepId,
      attempt,
      commandId: commandIdFor(stepId, phase, attempt),
      deadline: new Date(deadline),
      signal,
      results,
      setPlacement: async (placement) => {
        await this.deps.db.task.update({ where: { id: task.id }, data: { placement: placement as Prisma.InputJsonValue } });
      },
    };
    const fn = phase === 'run' ? sd.run.bind(sd) : (sd.undo?.bind(sd) ?? (async () => undefined));
    let timer: NodeJS.Timeout | undefined;
    let onAbort: (() => void) | undefined;
    const bounds = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new StepError(`${phase === 'run' ? 'step' : 'undo of'} ${sd.name} timed out`, 'deadline_exceeded', true)), Math.max(0, deadline - this.deps.clock.now()));
      onAbort = () => reject(signal.reason instanceof Error ? signal.reason : new Error('aborted'));
      // Already aborted (the worker was closed between two steps): an abort event will not come again.
      if (signal.aborted) onAbort();
      else signal.addEventListener('abort', onAbort, { once: true });
    });
    try {
      return (await Promise.race([fn(ctx), bounds])) ?? undefined;
    } finally {
      clearTimeout(timer);
      if (onAbort) signal.removeEventListener('abort', onAbort);
    }
  }

  private async startRollback(task: TaskRow, def: TaskDefinition, reason: string, signal: AbortSignal): Promise<void> {
    await this.deps.db.$transaction(async (tx: TxClient) => {
      await tx.task.update({ where: { id: task.id }, data: { state: 'rolling_back', error: reason, runAfter: null } });
      await appendEvents(tx, this.events(task, 'state', { state: 'rolling_back' }));
    });
    const fresh = (await this.deps.db.task.findUnique({ where: { id: task.id }, include: { steps: { orderBy: { seq: 'asc' } } } })) as TaskRow;
    await this.rollback(fresh, def, reason, signal);
  }

  /**
   * Undo, newest first, every step that ran (succeeded, failed or interrupted) and has an undo.
   * An undo is retried like a step. When one cannot be done (its host is unreachable), rollback
   * stops there: the earlier steps' claims stay, so nothing the host may still hold is handed to
   * someone else, and the task ends failed with the object in error.
   */
  private async rollback(task: TaskRow, def: TaskDefinition, reason: string, signal: AbortSignal): Promise<void> {
    const log = this.deps.log.child({ component: 'tasks', task_id: task.id, kind: task.kind });
    const entries = Array.isArray(task.rollbackLog) ? ([...task.rollbackLog] as RollbackEntry[]) : [];
    const results: Record<string, StepResult> = {};
    for (const s of task.steps) if (s.state === 'succeeded' || s.state === 'reverted') results[s.name] = (s.result ?? undefined) as StepResult;
    const toUndo = task.steps.filter((s) => s.state === 'succeeded' || s.state === 'failed' || s.state === 'running').sort((a, b) => b.seq - a.seq);
    let complete = true;
    for (const row of toUndo) {
      const sd = def.steps[row.seq - 1];
      const stamp = () => new Date(this.deps.clock.now()).toISOString();
      const acted = row.state !== 'failed' || (row.result as { acted?: boolean } | null)?.acted !== false;
      if (!sd?.undo || !acted) {
        entries.push({ step: row.name, attempt: 0, ok: true, skipped: !sd?.undo ? 'nothing to undo' : 'no attempt reached a host', at: stamp() });
        await this.deps.db.taskStep.update({ where: { id: row.id }, data: { state: 'reverted' } });
        continue;
      }
      let done = false;
      for (let attempt = 1; attempt <= task.maxAttempts && !done; attempt++) {
        if (signal.aborted) return;
        const deadline = this.deps.clock.now() + (sd.timeoutMs ?? this.opts.stepTimeoutMs);
        try {
          await this.attempt(task, sd, row.id, attempt, 'undo', deadline, results, signal);
          done = true;
          entries.push({ step: row.name, attempt, ok: true, at: stamp() });
        } catch (err) {
          if (signal.aborted) return;
          const message = errorText(err);
          entries.push({ step: row.name, attempt, ok: false, error: message, at: stamp() });
          log.warn({ step: row.name, attempt, err: message }, 'undo failed');
          if (attempt < task.maxAttempts) await sleep(Math.min(this.opts.backoffMaxMs, this.opts.backoffMs * 2 ** (attempt - 1)), signal);
        }
      }
      await this.deps.db.task.update({ where: { id: task.id }, data: { rollbackLog: entries as unknown as Prisma.InputJsonValue } });
      if (!done) {
        complete = false;
        break;
      }
      await this.deps.db.$transaction(async (tx: TxClient) => {
        await tx.taskStep.update({ where: { id: row.id }, data: { state: 'reverted' } });
        await appendEvents(tx, this.events(task, 'step', { step: row.name, stepState: 'reverted' }));
      });
    }
    if (signal.aborted) return;
    await this.deps.db.task.update({ where: { id: task.id }, data: { rollbackLog: entries as unknown as Prisma.InputJsonValue } });
    const final = complete ? 'rolled_back' : 'failed';
    const why = complete ? reason : `${reason}; rollback incomplete (see the rollback log)`;
    await this.finish(task, final, why, def, complete);
    log.warn({ state: final, reason: why }, 'task ended after rollback');
  }

  private async finish(task: TaskRow, state: 'succeeded' | 'failed' | 'rolled_back', error: string | null, def: TaskDefinition | undefined, complete = true): Promise<void> {
    const view = this.view(task);
    await this.deps.db.$transaction(async (tx: TxClient) => {
      await tx.task.update({
        where: { id: task.id },
        data: { state, error, finishedAt: new Date(this.deps.clock.now()), leaseOwner: null, leaseExpiresAt: null, runAfter: null },
      });
      if (def) {
        if (state === 'succeeded') await def.onSucceeded?.(view, tx);
        else await def.onRolledBack?.(view, tx, error ?? '', complete);
      }
      await appendEvents(tx, this.events(task, 'state', { state, ...(error ? { error } : {}) }));
    });
  }

  /**
   * The events of a task's change, for its workspace's members (none for a task of no workspace).
   * `state` is the task's state for a state event, the step's for a step event.
   */
  private events(
    task: Pick<TaskRow, 'id' | 'kind' | 'workspaceId' | 'targetType' | 'targetId'>,
    event: 'state' | 'step',
    p: { state?: string; step?: string; attempt?: number; stepState?: string; error?: string },
  ): EventInput[] {
    if (!task.workspaceId) return [];
    const { state, ...rest } = p;
    return [
      {
        workspaceId: task.workspaceId,
        entity: 'task',
        entityId: task.id,
        event,
        state: state ?? p.stepState ?? null,
        taskId: task.id,
        data: { kind: task.kind, targetType: task.targetType, targetId: task.targetId, ...rest },
      },
    ];
  }
}

/**
 * The agent command id of a step's attempt (or of its undo's attempt): a UUID derived from the
 * step's row id, so the same attempt always sends the same id — across reconnects and restarts —
 * and the agent deduplicates it, while a retry is a new command.
 */
export function commandIdFor(stepId: string, phase: 'run' | 'undo', attempt: number): string {
  const h = createHash('sha256').update(`${stepId}/${phase}/${attempt}`).digest();
  h[6] = (h[6]! & 0x0f) | 0x50; // version 5-style (name-based)
  h[8] = (h[8]! & 0x3f) | 0x80; // RFC 4122 variant
  const x = h.subarray(0, 16).toString('hex');
  return `${x.slice(0, 8)}-${x.slice(8, 12)}-${x.slice(12, 16)}-${x.slice(16, 20)}-${x.slice(20, 32)}`;
}

function errorText(err: unknown): string {
  const m = err instanceof Error ? err.message : String(err);
  return m.length > 500 ? `${m.slice(0, 500)}…` : m;
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const t = setTimeout(done, ms);
    function done() {
      clearTimeout(t);
      signal.removeEventListener('abort', done);
      resolve();
    }
    signal.addEventListener('abort', done, { once: true });
  });
}
