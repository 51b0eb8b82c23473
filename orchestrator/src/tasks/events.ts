import type { PrismaClient } from '@kloudak/prisma';
import type { EventInput } from '../events/event.js';
import { appendEvents } from '../store/outbox.js';
import type { TaskView, TxClient } from './types.js';

/**
 * Make a change and record its events in one transaction: the caller's (`db` a transaction
 * client) or a new one (`db` the client). The outbox relay publishes them after the commit.
 */
export async function changeWithEvents(db: PrismaClient | TxClient, change: (tx: TxClient) => Promise<unknown>, events: readonly EventInput[]): Promise<void> {
  // A transaction client has $transaction too (Prisma 7 nests with savepoints, which PGlite's
  // adapter cannot), but no $connect: only the client itself opens a transaction here.
  if ('$connect' in db) {
    await db.$transaction(async (tx: TxClient) => {
      await change(tx);
      await appendEvents(tx, events);
    });
    return;
  }
  await change(db);
  await appendEvents(db, events);
}

/** The event of a task's target (a VM or network) changing, as its workspace's members see it. */
export function targetEvent(task: TaskView, event: string, state: string | null): EventInput[] {
  if (!task.workspaceId) return [];
  return [{ workspaceId: task.workspaceId, entity: task.targetType, entityId: task.targetId, event, state, taskId: task.id }];
}
