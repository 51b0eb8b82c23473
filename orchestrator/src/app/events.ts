import type { Services } from './services.js';

/**
 * Subjects of the events use cases record: `kloudak.ws.<workspace id>.<entity>.<event>` for what a
 * workspace's members may see, `kloudak.infra.<entity>.<event>` for admins. Ids, not names, name
 * a workspace: names change and may hold characters a subject cannot.
 */
export const eventSubject = {
  workspace: (workspaceId: string, entity: string, event: string) => `kloudak.ws.${workspaceId}.${entity}.${event}`,
  infra: (entity: string, event: string) => `kloudak.infra.${entity}.${event}`,
};

/**
 * Record an event once the use case's transaction has committed (never inside it: a rolled-back
 * change must not be announced). Payloads carry ids, names and states, never secrets. Publishing
 * never throws: the database, not the bus, is the truth, and a lost event costs a refresh.
 */
export function record(s: Services, subject: string, payload: Record<string, unknown>): void {
  s.events.publish(subject, payload);
}
