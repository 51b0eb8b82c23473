// The task engine against real databases (PostgreSQL and PGlite): steps recorded before they run,
// retries with backoff, rollback in reverse order, deadlines, resume after a crash with the same
// command ids, and exclusive claims when several workers compete.
import { describe, it, before, after, beforeEach } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { createLogger } from '@kloudak/common';
import { openDatabase, type Database } from '@kloudak/prisma';
import { freshDatabase, waitFor, type FreshDatabase } from '@kloudak/testkit';
import { systemClock } from '../clock.js';
import { changeWithEvents } from './events.js';
import { insertTask } from '../store/tasks.js';
import { commandIdFor, TaskEngine, type TaskEngineOptions } from './engine.js';
import { StepError, type StepContext, type TaskDefinition } from './types.js';

const log = createLogger({ component: 'tasks-test', level: 'silent' });
const OPTS: TaskEngineOptions = { owner: 'w1', leaseMs: 2000, pollMs: 50, concurrency: 8, stepTimeoutMs: 2000, maxAttempts: 3, backoffMs: 20, backoffMaxMs: 100 };

/** What the test steps did, in order: "run:<step>:<attempt>:<commandId>" / "undo:<step>:<attempt>". */
type Journal = string[];

function def(kind: string, journal: Journal, behaviour: Record<string, (ctx: StepContext) => Promise<void>> = {}, undoFails = new Set<string>()): TaskDefinition {
  const step = (name: string) => ({
    name,
    timeoutMs: 1000,
    async run(ctx: StepContext) {
      journal.push(`run:${name}:${ctx.attempt}:${ctx.commandId}`);
      await behaviour[name]?.(ctx);
      return { done: name };
    },
    async undo(ctx: StepContext) {
      journal.push(`undo:${name}:${ctx.attempt}`);
      if (undoFails.has(name)) throw new Error(`cannot undo ${name}`);
    },
  });
  return {
    kind,
    steps: [step('a'), step('b'), step('c')],
    async onSucceeded(task, tx) {
      await tx.workspace.update({ where: { id: task.workspaceId! }, data: { description: `ok:${task.id}` } });
    },
    async onRolledBack(task, tx, reason, complete) {
      await tx.workspace.update({ where: { id: task.workspaceId! }, data: { description: `rb:${complete}:${reason}` } });
    },
  };
}

for (const engine of ['postgres', 'pglite'] as const) {
  describe(`task engine (${engine})`, () => {
    let fresh: FreshDatabase | undefined;
    let db: Database;
    let ws: string;
    const engines: TaskEngine[] = [];

    before(async () => {
      if (engine === 'postgres') fresh = await freshDatabase();
      db = await openDatabase(fresh ? { url: fresh.url } : { inMemory: true });
      await db.migrate();
    });
    after(async () => {
      await db.close();
      await fresh?.drop();
    });
    beforeEach(async () => {
      for (const e of engines.splice(0)) await e.close();
      ws = (await db.client.workspace.create({ data: { name: `ws-${randomUUID()}` } })).id;
    });

    function start(defs: TaskDefinition[], opts: Partial<TaskEngineOptions> = {}): TaskEngine {
      const e = new TaskEngine({ db: db.client, clock: systemClock, log }, defs, { ...OPTS, ...opts });
      engines.push(e);
      e.start();
      return e;
    }
    async function queue(kind: string, deadlineMs = 30_000, maxAttempts = 3): Promise<string> {
      const t = await insertTask(db.client, { kind, workspaceId: ws, createdById: null, targetType: 'test', targetId: randomUUID(), maxAttempts, deadline: new Date(Date.now() + deadlineMs) });
      return t.id;
    }
    async function ended(id: string, timeoutMs = 10_000) {
      await waitFor(async () => {
        const t = await db.client.task.findUniqueOrThrow({ where: { id } });
        return ['succeeded', 'failed', 'rolled_back'].includes(t.state);
      }, timeoutMs, `task ${id} to end`);
      return db.client.task.findUniqueOrThrow({ where: { id }, include: { steps: { orderBy: { seq: 'asc' } } } });
    }

    it('runs the steps in order, records each one, and calls onSucceeded in the final transaction', async () => {
      const j: Journal = [];
      start([def('k.ok', j)]);
      const id = await queue('k.ok');
      const t = await ended(id);
      assert.equal(t.state, 'succeeded');
      assert.deepEqual(j.map((x) => x.split(':').slice(0, 3).join(':')), ['run:a:1', 'run:b:1', 'run:c:1']);
      assert.deepEqual(t.steps.map((s) => [s.name, s.state, s.attempts]), [['a', 'succeeded', 1], ['b', 'succeeded', 1], ['c', 'succeeded', 1]]);
      assert.deepEqual(t.steps[0]!.result, { done: 'a' });
      assert.ok(t.steps.every((s) => s.startedAt && s.finishedAt && s.deadline));
      assert.equal(t.leaseOwner, null);
      assert.equal((await db.client.workspace.findUniqueOrThrow({ where: { id: ws } })).description, `ok:${id}`);
      // Each attempt's command id is derived from the step row, so it is stable and unique.
      assert.equal(j[0]!.split(':')[3], commandIdFor(t.steps[0]!.id, 'run', 1));
    });

    it('ends a task failed when it keeps failing outside its steps past its deadline, instead of running for ever', async () => {
      const j: Journal = [];
      const broken = def('k.broken', j);
      broken.onSucceeded = async () => {
        throw new Error('finish hook broken');
      };
      start([broken], { leaseMs: 200 });
      const id = await queue('k.broken', 1500);
      const t = await ended(id, 15_000);
      assert.equal(t.state, 'failed');
      assert.match(t.error ?? '', /internal error after \d+ run\(s\): finish hook broken/);
      assert.equal(t.leaseOwner, null);
    });

    it('makes a change with its events inside the caller\'s transaction, on either engine (no nested transaction)', async () => {
      const j: Journal = [];
      const d = def('k.events', j);
      d.onSucceeded = async (task, tx) => {
        await changeWithEvents(tx, (t) => t.workspace.update({ where: { id: task.workspaceId! }, data: { description: `ev:${task.id}` } }), [
          { workspaceId: task.workspaceId, entity: 'test', entityId: task.targetId, event: 'state', state: 'done', taskId: task.id },
        ]);
      };
      start([d]);
      const id = await queue('k.events');
      const t = await ended(id);
      assert.equal(t.state, 'succeeded', t.error ?? '');
      assert.equal((await db.client.workspace.findUniqueOrThrow({ where: { id: ws } })).description, `ev:${id}`);
    });

    it('retries a step that fails once, after a backoff, with a new command id', async () => {
      const j: Journal = [];
      let fails = 1;
      start([def('k.retry', j, { b: async () => { if (fails-- > 0) throw new Error('flaky'); } })]);
      const id = await queue('k.retry');
      const t = await ended(id);
      assert.equal(t.state, 'succeeded');
      const b = j.filter((x) => x.startsWith('run:b:'));
      assert.equal(b.length, 2);
      assert.notEqual(b[0]!.split(':')[3], b[1]!.split(':')[3]);
      assert.deepEqual(t.steps.map((s) => s.attempts), [1, 2, 1]);
      assert.ok(t.attempts >= 2, 'claimed again after the backoff');
    });

    it('rolls back completed steps in reverse order when retries run out', async () => {
      const j: Journal = [];
      start([def('k.fail', j, { c: async () => { throw new Error('disk on fire'); } })]);
      const id = await queue('k.fail');
      const t = await ended(id);
      assert.equal(t.state, 'rolled_back');
      assert.match(t.error ?? '', /step c failed after 3 attempt\(s\): disk on fire/);
      assert.equal(j.filter((x) => x.startsWith('run:c:')).length, 3);
      assert.deepEqual(j.filter((x) => x.startsWith('undo:')), ['undo:c:1', 'undo:b:1', 'undo:a:1']);
      assert.deepEqual(t.steps.map((s) => s.state), ['reverted', 'reverted', 'reverted']);
      const logEntries = t.rollbackLog as { step: string; ok: boolean }[];
      assert.deepEqual(logEntries.map((e) => [e.step, e.ok]), [['c', true], ['b', true], ['a', true]]);
      assert.match((await db.client.workspace.findUniqueOrThrow({ where: { id: ws } })).description, /^rb:true:step c failed/);
    });

    it('does not retry a step whose error says retrying cannot help', async () => {
      const j: Journal = [];
      start([def('k.final', j, { a: async () => { throw new StepError('no such template', 'invalid_argument', false); } })]);
      const t = await ended(await queue('k.final'));
      assert.equal(t.state, 'rolled_back');
      assert.equal(j.filter((x) => x.startsWith('run:a:')).length, 1);
    });

    it('skips the undo of a step none of whose attempts reached a host', async () => {
      const j: Journal = [];
      start([def('k.unsent', j, { b: async () => { throw new StepError('no session', 'not_sent', true); } })]);
      const t = await ended(await queue('k.unsent'));
      assert.equal(t.state, 'rolled_back');
      assert.deepEqual(j.filter((x) => x.startsWith('undo:')), ['undo:a:1']);
      const entries = t.rollbackLog as { step: string; skipped?: string }[];
      assert.equal(entries.find((e) => e.step === 'b')?.skipped, 'no attempt reached a host');
    });

    it('times out a step that hangs, and rolls back when the task deadline passes', async () => {
      const j: Journal = [];
      start([def('k.hang', j, { b: () => new Promise(() => undefined) })]);
      const id = await queue('k.hang', 1500);
      const t = await ended(id);
      assert.equal(t.state, 'rolled_back');
      assert.match(t.error ?? '', /timed out|deadline exceeded/);
      assert.ok(j.includes('undo:a:1'));
    });

    it('ends failed, keeping the earlier steps, when an undo cannot be done', async () => {
      const j: Journal = [];
      start([def('k.undofail', j, { c: async () => { throw new StepError('boom', 'internal', false); } }, new Set(['b']))]);
      const t = await ended(await queue('k.undofail'));
      assert.equal(t.state, 'failed');
      assert.match(t.error ?? '', /rollback incomplete/);
      assert.deepEqual(j.filter((x) => x.startsWith('undo:')), ['undo:c:1', 'undo:b:1', 'undo:b:2', 'undo:b:3']);
      assert.deepEqual(t.steps.map((s) => s.state), ['succeeded', 'succeeded', 'reverted']);
      assert.match((await db.client.workspace.findUniqueOrThrow({ where: { id: ws } })).description, /^rb:false:/);
    });

    it('resumes a task whose worker died mid-step: the same attempt, with the same command id', async () => {
      const j: Journal = [];
      // A worker that "dies": it starts step b and never comes back; its lease then runs out.
      let hang = true;
      const dying = start([def('k.resume', j, { b: () => (hang ? new Promise(() => undefined) : Promise.resolve()) })], { owner: 'dying', leaseMs: 300 });
      const id = await queue('k.resume');
      await waitFor(async () => j.some((x) => x.startsWith('run:b:1')), 5000, 'step b to start');
      // Simulate the crash: stop the dying worker's timers without releasing its lease.
      (dying as unknown as { closed: boolean }).closed = true;
      clearInterval((dying as unknown as { timer: NodeJS.Timeout }).timer);
      for (const r of (dying as unknown as { running: Map<string, { abort: AbortController }> }).running.values()) {
        // Its renewals stop with it (the run is abandoned, not released).
        r.abort.abort(new Error('crash'));
      }
      await db.client.task.update({ where: { id }, data: { leaseOwner: 'dying', leaseExpiresAt: new Date(Date.now() + 300) } });
      hang = false;
      const firstB = j.find((x) => x.startsWith('run:b:1'))!;
      start([def('k.resume', j)], { owner: 'w2' });
      const t = await ended(id);
      assert.equal(t.state, 'succeeded');
      const bs = j.filter((x) => x.startsWith('run:b:'));
      assert.equal(bs.length, 2);
      assert.equal(bs[1], firstB, 'resumed as the same attempt with the same command id');
      assert.equal(j.filter((x) => x.startsWith('run:a:')).length, 1, 'a finished step is not run again');
    });

    it('closes promptly when it is stopped between two steps, and releases the task for the next start', async () => {
      // The first step stops the worker as it ends, so the run reaches the second step with its
      // signal already aborted; that step would hang until its 30 s timeout if the abort were missed.
      const engineRef: { current?: TaskEngine } = {};
      let closing: Promise<void> | undefined;
      const d: TaskDefinition = {
        kind: 'k.close',
        steps: [
          // Stop the worker just after this step returns, while its result is being written.
          { name: 'first', run: async () => { setTimeout(() => { closing = engineRef.current!.close(); }, 0); return undefined; } },
          { name: 'hang', timeoutMs: 30_000, run: () => new Promise(() => undefined) },
        ],
      };
      engineRef.current = start([d], { stepTimeoutMs: 30_000 });
      const id = await queue('k.close');
      await waitFor(async () => closing !== undefined, 5_000, 'the first step to stop the worker');
      const t0 = Date.now();
      await closing;
      assert.ok(Date.now() - t0 < 3_000, `close took ${Date.now() - t0} ms`);
      const row = await db.client.task.findUniqueOrThrow({ where: { id }, include: { steps: { orderBy: { seq: 'asc' } } } });
      assert.equal(row.leaseOwner, null, 'lease released: the next start resumes it at once');
      assert.equal(row.state, 'running');
      assert.equal(row.steps[0]?.state, 'succeeded');
    });

    it('never runs a task on two workers: 40 tasks, 3 competing workers, each step once', async () => {
      const j: Journal = [];
      const d = def('k.many', j, { a: () => new Promise((r) => setTimeout(r, 5)) });
      start([d], { owner: 'x1' });
      start([d], { owner: 'x2' });
      start([d], { owner: 'x3' });
      const ids = await Promise.all(Array.from({ length: 40 }, () => queue('k.many')));
      for (const id of ids) assert.equal((await ended(id, 30_000)).state, 'succeeded');
      assert.equal(j.length, 120);
      const byCommand = new Set(j.map((x) => x.split(':')[3]));
      assert.equal(byCommand.size, 120, 'every step ran exactly once');
    });

    it('runs the tasks of one object in order: the second waits for the first', async () => {
      const j: Journal = [];
      start([def('k.slow', j, { b: () => new Promise((r) => setTimeout(r, 200)) }), def('k.fast', j)]);
      const target = randomUUID();
      const mk = (kind: string) =>
        insertTask(db.client, { kind, workspaceId: ws, createdById: null, targetType: 'test', targetId: target, maxAttempts: 3, deadline: new Date(Date.now() + 30_000) });
      const first = await mk('k.slow');
      const second = await mk('k.fast');
      const t2 = await ended(second.id);
      const t1 = await db.client.task.findUniqueOrThrow({ where: { id: first.id } });
      assert.equal(t1.state, 'succeeded');
      assert.ok(t1.finishedAt! <= t2.startedAt!, 'the second started after the first finished');
    });
  });
}
