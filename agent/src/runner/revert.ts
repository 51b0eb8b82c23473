/**
 * A revert stack for multi-step host changes: each completed step pushes its undo; when a later
 * step fails, the undos run newest first and the original error is rethrown. An undo that itself
 * fails does not stop the others (each is idempotent and best-effort); its error is attached to
 * the thrown error so nothing is silently lost.
 */
export class RevertStack {
  private readonly undos: Array<{ what: string; undo: () => Promise<void> }> = [];

  /** Remember how to undo a step that just completed. */
  push(what: string, undo: () => Promise<void>): void {
    this.undos.push({ what, undo });
  }

  /** Undo everything pushed so far, newest first. Returns the undo failures. */
  async unwind(): Promise<RevertFailure[]> {
    const failures: RevertFailure[] = [];
    while (this.undos.length > 0) {
      const { what, undo } = this.undos.pop()!;
      try {
        await undo();
      } catch (err) {
        failures.push({ what, error: err });
      }
    }
    return failures;
  }

  /**
   * Run `body` with this stack; on failure unwind and rethrow the original error, carrying the
   * names of undos that failed in `revertFailures`.
   */
  static async run<T>(body: (stack: RevertStack) => Promise<T>): Promise<T> {
    const stack = new RevertStack();
    try {
      return await body(stack);
    } catch (err) {
      const failures = await stack.unwind();
      if (failures.length > 0 && err instanceof Error) {
        (err as Error & { revertFailures?: RevertFailure[] }).revertFailures = failures;
      }
      throw err;
    }
  }
}

/** An undo that failed while unwinding. */
export interface RevertFailure {
  what: string;
  error: unknown;
}
