// Tasks: queueing one inside a use case's transaction, and reading them as the API shows them.
import type { Prisma } from '@kloudak/prisma';
import type { DbOrTx } from './db.js';

/** What a use case needs to queue a task. */
export interface NewTask {
  kind: string;
  workspaceId: string | null;
  createdById: string | null;
  targetType: string;
  targetId: string;
  /** Never a secret: passwords, keys and user-data stay on the object's row. */
  input?: Record<string, unknown>;
  /** Attempts of each step before rollback. */
  maxAttempts: number;
  /** The whole task must end by then, or it rolls back. */
  deadline: Date;
}

/**
 * Queue a task, inside the use case's transaction: the object and its task are committed together
 * or not at all, so a crash can never leave an object without the task that makes it.
 */
export async function insertTask(db: DbOrTx, t: NewTask): Promise<{ id: string }> {
  return db.task.create({
    data: {
      kind: t.kind,
      workspaceId: t.workspaceId,
      createdById: t.createdById,
      targetType: t.targetType,
      targetId: t.targetId,
      input: (t.input ?? {}) as Prisma.InputJsonValue,
      maxAttempts: t.maxAttempts,
      deadline: t.deadline,
    },
    select: { id: true },
  });
}

/** Record why a create placed where it did (host, pool, scores), on its task. */
export async function setTaskPlacement(db: DbOrTx, id: string, placement: Record<string, unknown>): Promise<void> {
  await db.task.update({ where: { id }, data: { placement: placement as Prisma.InputJsonValue } });
}

/** States of a task that has not ended. */
const UNFINISHED = ['queued', 'running', 'rolling_back'] as const;

/** The unfinished task of `kind` on an object, or null: a repeated delete joins it rather than queueing another. */
export async function unfinishedTask(db: DbOrTx, targetId: string, kind: string): Promise<{ id: string } | null> {
  return db.task.findFirst({ where: { targetId, kind, state: { in: [...UNFINISHED] } }, select: { id: true } });
}

/** Whether any task on the object (of any kind) has not ended: a VM with one is that task's to change. */
export async function hasUnfinishedTask(db: DbOrTx, targetType: string, targetId: string): Promise<boolean> {
  return (await db.task.count({ where: { targetType, targetId, state: { in: [...UNFINISHED] } } })) > 0;
}

const withSteps = { steps: { orderBy: { seq: 'asc' as const } } } satisfies Prisma.TaskInclude;

/** The newest task of `kind` on an object, with its steps, or null. */
export async function latestTask(db: DbOrTx, targetId: string, kind: string): Promise<TaskRow | null> {
  return db.task.findFirst({ where: { targetId, kind }, include: withSteps, orderBy: { seq: 'desc' } });
}

/** A task with its steps in order, as the API shows it. */
export type TaskRow = Prisma.TaskGetPayload<{ include: typeof withSteps }>;

/** A task that exists (it was just written by the caller). */
export async function taskById(db: DbOrTx, id: string): Promise<TaskRow> {
  return db.task.findUniqueOrThrow({ where: { id }, include: withSteps });
}

/** Tasks by id, in creation order. */
export async function tasksByIds(db: DbOrTx, ids: string[]): Promise<TaskRow[]> {
  return db.task.findMany({ where: { id: { in: ids } }, include: withSteps, orderBy: { seq: 'asc' } });
}

/** A task of a workspace, or null (also for another workspace's task). */
export async function workspaceTask(db: DbOrTx, workspaceId: string, id: string): Promise<TaskRow | null> {
  return db.task.findFirst({ where: { id, workspaceId }, include: withSteps });
}

/** Which of a workspace's tasks to list. */
export interface TaskQuery {
  state?: 'queued' | 'running' | 'succeeded' | 'failed' | 'rolling_back' | 'rolled_back';
  /** The object's id, or its name as the task recorded it. */
  object?: string;
  /** Only tasks created before this one (the cursor: newest first); ignored when it is not the workspace's. */
  before?: string;
  take: number;
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** A workspace's tasks, newest first. */
export async function workspaceTasks(db: DbOrTx, workspaceId: string, q: TaskQuery): Promise<TaskRow[]> {
  const where: Prisma.TaskWhereInput = { workspaceId };
  if (q.state) where.state = q.state;
  if (q.object) {
    where.OR = [...(UUID.test(q.object) ? [{ targetId: q.object.toLowerCase() }] : []), { input: { path: ['name'], equals: q.object } }];
  }
  if (q.before) {
    const cur = await db.task.findFirst({ where: { id: q.before, workspaceId }, select: { seq: true } });
    if (cur) where.seq = { lt: cur.seq };
  }
  return db.task.findMany({ where, include: withSteps, orderBy: { seq: 'desc' }, take: q.take });
}
