/** Time source, injected so rate limits, token expiry and (later) liveness can be tested with fake time. */
export interface Clock {
  /** Milliseconds since the epoch. */
  now(): number;
}

/** The real wall clock. */
export const systemClock: Clock = { now: () => Date.now() };
