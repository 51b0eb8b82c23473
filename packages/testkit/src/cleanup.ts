/**
 * Where set-up code registers its undo steps: a {@link Cleanup}, or a benchmark's cleanup stack
 * (which names each step in what it reports). `what` says what the step undoes.
 */
export interface CleanupStack {
  add(step: () => unknown, what?: string): void;
}

/**
 * Cleanup steps of a test, run newest first. Every step runs even when one fails; the first
 * failure is rethrown at the end, so a leak is reported without hiding the other undos.
 */
export class Cleanup implements CleanupStack {
  private steps: (() => unknown)[] = [];

  add(step: () => unknown): void {
    this.steps.push(step);
  }

  async run(): Promise<void> {
    let first: unknown = null;
    for (const step of this.steps.reverse()) {
      try {
        await step();
      } catch (e) {
        first ??= e;
      }
    }
    this.steps = [];
    if (first) throw first;
  }
}
