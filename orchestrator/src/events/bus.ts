/** Subjects of the admin (infrastructure) events the agent link publishes. */
export const SUBJECTS = {
  /** A host's liveness changed: {hostId, name, from, to, at}. */
  hostState: 'kloudak.infra.host.state',
  /** An agent reported that it fenced itself: {hostId, name, fencedAt, leaseExpiredAt, reason, domains}. */
  hostFenced: 'kloudak.infra.host.fenced',
  /** A libvirt lifecycle event of a Kloudak domain: {hostId, vmId, domainName, event, detail, occurredAt}. */
  domainEvent: 'kloudak.infra.vm.domain',
} as const;

/**
 * The orchestrator's event port: state changes go out as JSON on NATS subjects
 * (`kloudak.infra.<entity>.<event>`, `kloudak.ws.<workspace>.<entity>.<event>`). Payloads never
 * carry secrets. Publishing never throws: an event that cannot be sent is logged and dropped,
 * because the database, not the bus, is the source of truth.
 */
export interface EventBus {
  publish(subject: string, payload: Record<string, unknown>): void;
  /** Flush what is buffered and disconnect. */
  close(): Promise<void>;
}
