/** Time source, injected so rate limits, token expiry and liveness can be tested with fake time. */
export interface Clock {
  /** Milliseconds since the epoch (the wall clock: it may step, e.g. when NTP corrects it). */
  now(): number;
  /**
   * Milliseconds from an arbitrary origin that never step: for deadlines and durations (leases,
   * down margins), so an NTP step of the wall clock cannot mark every host down. Absent (fake
   * clocks of tests): {@link now} serves for both.
   */
  monotonic?(): number;
}

/** The real clocks: the wall clock, and a monotonic one from `performance.now()`. */
export const systemClock: Clock = { now: () => Date.now(), monotonic: () => performance.now() };

/** The clock's monotonic time, or its wall time when it has none. */
export function monotonicNow(clock: Clock): number {
  return clock.monotonic ? clock.monotonic() : clock.now();
}
