import type { PrismaClient } from '@kloudak/prisma';

/** JSON a step may return; it is stored on the step and handed to later steps and undos. */
export type StepResult = Record<string, unknown> | undefined;

/** The task as a step sees it: what to act on, never a secret (secrets live on the object's row). */
export interface TaskView {
  id: string;
  kind: string;
  workspaceId: string | null;
  targetType: string;
  targetId: string;
  input: Record<string, unknown>;
}

/** What a step's `run` or `undo` receives. */
export interface StepContext {
  task: TaskView;
  db: PrismaClient;
  /** The step's row id: stable across resumes, so it identifies the step to the agent. */
  stepId: string;
  /** 1 for the first run; a retry after a failure is attempt 2, and so on. A resume after a crash keeps the attempt. */
  attempt: number;
  /**
   * The id of the command this attempt sends to an agent (the agent answers a repeated id from
   * memory or joins the run in progress). Stable for a step's attempt, so a resend after a
   * reconnect or an orchestrator restart never acts twice; a new attempt gets a new id.
   */
  commandId: string;
  /** The attempt must end before this instant (the step's timeout or the task's deadline). */
  deadline: Date;
  /** Aborted when the worker loses the task's lease or shuts down. */
  signal: AbortSignal;
  /** Results of the task's steps that have succeeded so far, by step name. */
  results: Readonly<Record<string, StepResult>>;
  /** Record why a decision was made (placement): kept on the task. */
  setPlacement(placement: Record<string, unknown>): Promise<void>;
}

/** One step of a task kind. `run` and `undo` must be idempotent: each may run again after a crash. */
export interface StepDefinition {
  name: string;
  run(ctx: StepContext): Promise<StepResult | void>;
  /** Undo what `run` did (also after a failed or interrupted `run`); absent: nothing to undo. */
  undo?(ctx: StepContext): Promise<void>;
  /** Per-attempt timeout; defaults to the engine's step timeout. */
  timeoutMs?: number;
}

/** What a task kind does, and what becomes of its object at the end. */
export interface TaskDefinition {
  kind: string;
  steps: readonly StepDefinition[];
  /** After the last step succeeded (in the same transaction as the task's final state). */
  onSucceeded?(task: TaskView, tx: TxClient): Promise<void>;
  /** After rollback ended (`complete`: every undo succeeded) — the object ends in error or is removed. */
  onRolledBack?(task: TaskView, tx: TxClient, reason: string, complete: boolean): Promise<void>;
}

/** A Prisma interactive-transaction client. */
export type TxClient = Parameters<Parameters<PrismaClient['$transaction']>[0]>[0];

/**
 * A step failure. `retryable: false` skips the remaining attempts and goes straight to rollback
 * (bad input the agent refused, a host that is full): retrying cannot help.
 */
export class StepError extends Error {
  constructor(
    message: string,
    readonly code: string,
    readonly retryable: boolean,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'StepError';
  }
}
