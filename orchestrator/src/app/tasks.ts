import { NotFoundError } from '@kloudak/common';
import type { Prisma } from '@kloudak/prisma';
import { workspaceAccess } from './access.js';
import type { Actor, ComputeDeps } from './compute-deps.js';
import { taskInclude, taskView, type TaskView } from './views.js';

/** Filters of {@link listTasks}. */
export interface TaskFilter {
  state?: 'queued' | 'running' | 'succeeded' | 'failed' | 'rolling_back' | 'rolled_back';
  /** The object's id, or its name as the task recorded it. */
  object?: string;
  limit: number;
  /** Cursor: the last id of the previous page (newest first). */
  after?: string;
}

/** A workspace's tasks, newest first; any member may read them (they hold no secrets). */
export async function listTasks(d: ComputeDeps, caller: Actor, ws: string, f: TaskFilter): Promise<{ items: TaskView[]; nextCursor: string | null }> {
  const access = await workspaceAccess(d.db, caller, ws);
  const where: Prisma.TaskWhereInput = { workspaceId: access.workspace.id };
  if (f.state) where.state = f.state;
  if (f.object) {
    const uuid = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i.test(f.object);
    where.OR = [...(uuid ? [{ targetId: f.object.toLowerCase() }] : []), { input: { path: ['name'], equals: f.object } }];
  }
  if (f.after) {
    const cur = await d.db.task.findFirst({ where: { id: f.after, workspaceId: access.workspace.id }, select: { seq: true } });
    if (cur) where.seq = { lt: cur.seq };
  }
  const rows = await d.db.task.findMany({ where, include: taskInclude, orderBy: { seq: 'desc' }, take: f.limit + 1 });
  const items = rows.slice(0, f.limit);
  return { items: items.map(taskView), nextCursor: rows.length > f.limit ? (items[items.length - 1]?.id ?? null) : null };
}

/** One task of a workspace (404 for a task of another workspace). */
export async function getTask(d: ComputeDeps, caller: Actor, ws: string, id: string): Promise<TaskView> {
  const access = await workspaceAccess(d.db, caller, ws);
  const t = await d.db.task.findFirst({ where: { id, workspaceId: access.workspace.id }, include: taskInclude });
  if (!t) throw new NotFoundError('task', id);
  return taskView(t);
}
