import type { Prisma, PrismaClient } from '@kloudak/prisma';

/** A Prisma client or an interactive transaction. */
type Db = PrismaClient | Prisma.TransactionClient;

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
export async function insertTask(db: Db, t: NewTask): Promise<{ id: string }> {
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
