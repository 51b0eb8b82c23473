/**
 * A VM's state follows its domain when something outside Kloudak's tasks changes it: the guest
 * shuts itself down or crashes, someone destroys or starts the domain with virsh. The agent sends
 * the domain's lifecycle events; a returning host reports its domains in its Hello. Without this,
 * the API kept saying `running` for a VM that was off, and an HA VM that crashed on a healthy host
 * stayed off: HA covered only the death of its host.
 *
 * The rule, the way Proxmox VE's HA manager keeps a resource in its requested state:
 * - an HA VM found off is started again on its host, at most {@link HA_RESTART_LIMIT} times in
 *   {@link HA_RESTART_WINDOW_MS} (counted from a user's start when one came later); past that it
 *   stays stopped, with the reason (a guest that dies at every boot must not be restarted
 *   forever), until a user starts it;
 * - a non-HA VM found off becomes `stopped`, with the reason;
 * - a VM found running while `stopped` becomes `running`.
 * Only while no task works on the VM (a task's own stop, start or migration is the task's to
 * record) and only on a host that is up (a host that is down is failover's).
 * Pure.
 */

/** What the host observed of the domain. */
export type ObservedDomain = 'off' | 'running';

/** How many HA restarts of one VM (of any cause) may be queued in {@link HA_RESTART_WINDOW_MS}. */
export const HA_RESTART_LIMIT = 3;
/** The window of {@link HA_RESTART_LIMIT}. */
export const HA_RESTART_WINDOW_MS = 10 * 60_000;

/** What the orchestrator knows of the VM and its host when the domain changed. */
export interface FollowFacts {
  /** The VM's state in the inventory. */
  vmState: string;
  ha: boolean;
  /** A task is queued, running or rolling back on the VM. */
  busy: boolean;
  /** The host is up (not suspect, down or in a drain's hands is decided by its own flow). */
  hostUp: boolean;
  /** HA restarts of this VM queued within the last {@link HA_RESTART_WINDOW_MS}, and since the last start a user asked for. */
  recentHaRestarts: number;
}

/** What to do. */
export type FollowAction =
  | { kind: 'none'; why: string }
  /** Record `stopped` with the reason. */
  | { kind: 'stopped'; reason: string }
  /** Record `stopped` with the reason and queue a start on the same host. */
  | { kind: 'restart'; reason: string }
  /** Record `running`. */
  | { kind: 'running'; reason: string };

/** What the agent's lifecycle event means for the VM's state, or null when it changes nothing (a migration, a save, a pause). */
export function observedFromEvent(event: string, detail: string): { observed: ObservedDomain; cause: string } | null {
  if (event === 'stopped') {
    if (detail === 'shutdown') return { observed: 'off', cause: 'the guest shut itself down' };
    if (detail === 'destroyed') return { observed: 'off', cause: 'its domain was destroyed outside Kloudak' };
    if (detail === 'failed') return { observed: 'off', cause: 'its QEMU process failed' };
    return null; // migrated, saved, from-snapshot: the domain lives on elsewhere or in a file
  }
  if (event === 'crashed' && detail === 'crashed') return { observed: 'off', cause: 'the guest crashed' };
  if (event === 'started' && detail === 'booted') return { observed: 'running', cause: 'its domain was started outside Kloudak' };
  return null;
}

/** Decide what the inventory records when a VM's domain is observed `observed` because of `cause`. */
export function followDomain(observed: ObservedDomain, cause: string, f: FollowFacts): FollowAction {
  if (!f.hostUp) return { kind: 'none', why: 'its host is not up: failover decides' };
  if (f.busy) return { kind: 'none', why: 'a task is working on it' };
  if (observed === 'running') {
    return f.vmState === 'stopped' ? { kind: 'running', reason: cause } : { kind: 'none', why: `it is ${f.vmState}` };
  }
  if (f.vmState !== 'running') return { kind: 'none', why: `it is ${f.vmState}` };
  if (!f.ha) return { kind: 'stopped', reason: cause };
  if (f.recentHaRestarts >= HA_RESTART_LIMIT) {
    return {
      kind: 'stopped',
      reason: `${cause}; HA restarted it ${f.recentHaRestarts} times in the last ${HA_RESTART_WINDOW_MS / 60_000} minutes and gives up: start it when its cause is fixed`,
    };
  }
  return { kind: 'restart', reason: `${cause}: HA starts it again on its host` };
}
