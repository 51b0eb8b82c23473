import type { EventBus } from './bus.js';

/** A published event as {@link MemoryEventBus} keeps it. */
export interface RecordedEvent {
  subject: string;
  payload: Record<string, unknown>;
}

/**
 * An EventBus that keeps events in memory. Only for unit tests of code that publishes; tests
 * that claim to cover publishing use the NATS bus against a real server.
 */
export class MemoryEventBus implements EventBus {
  readonly events: RecordedEvent[] = [];

  publish(subject: string, payload: Record<string, unknown>): void {
    // A JSON round trip, like the wire: what cannot be serialised fails here too.
    this.events.push({ subject, payload: JSON.parse(JSON.stringify(payload)) as Record<string, unknown> });
  }

  async close(): Promise<void> {}
}
