// A workspace's tasks: what was asked, how far it got, why it failed or rolled back.
import { NotFoundError } from '@kloudak/common';
import { workspaceTask, workspaceTasks, type TaskQuery } from '../store/tasks.js';
import { workspaceAccess } from './access.js';
import { DEFAULT_LIMIT, page, type ListInput, type Page } from './paging.js';
import { signedIn, type Caller } from './principal.js';
import type { Services } from './services.js';
import { taskView, type TaskView } from './views.js';

/**
 * The limits of a task a use case queues now: the configured attempts of each step, and the
 * deadline of the whole task (then it rolls back).
 */
export function taskLimits(s: Services): { maxAttempts: number; deadline: Date } {
  return { maxAttempts: s.config.taskMaxAttempts, deadline: new Date(s.clock.now() + s.config.taskTimeoutMs) };
}

/** Filters of {@link listTasks}; `after` is the last id of the previous page (newest first). */
export interface TaskFilter extends ListInput {
  state?: TaskQuery['state'];
  /** The object's id, or its name as the task recorded it. */
  object?: string;
}

/** A workspace's tasks, newest first; any member may read them (they hold no secrets). */
export async function listTasks(s: Services, c: Caller, ws: string, f: TaskFilter): Promise<Page<TaskView>> {
  const a = await workspaceAccess(s.db.client, signedIn(c), ws);
  const limit = f.limit ?? DEFAULT_LIMIT;
  const rows = await workspaceTasks(s.db.client, a.workspace.id, {
    ...(f.state ? { state: f.state } : {}),
    ...(f.object ? { object: f.object } : {}),
    ...(f.after ? { before: f.after } : {}),
    take: limit + 1,
  });
  return page(rows, limit, (t) => t.id, taskView);
}

/** One task of a workspace (404 for a task of another workspace). */
export async function getTask(s: Services, c: Caller, ws: string, id: string): Promise<TaskView> {
  const a = await workspaceAccess(s.db.client, signedIn(c), ws);
  const t = await workspaceTask(s.db.client, a.workspace.id, id);
  if (!t) throw new NotFoundError('task', id);
  return taskView(t);
}
