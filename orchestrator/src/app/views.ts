// The views of tasks, networks and VMs: pure mappings of the rows store/ reads to the JSON the
// API answers (ISO dates, names rather than ids, never a VM's keys or user-data).
import type { NetworkRow } from '../store/networks.js';
import type { TaskRow } from '../store/tasks.js';
import type { VmRow } from '../store/vms.js';

/** A task as the API shows it: state, attempts, steps, error, rollback log, and why it placed where it did. */
export interface TaskView {
  id: string;
  kind: string;
  object: { type: string; id: string; name: string | null };
  state: string;
  attempts: number;
  error: string | null;
  steps: { name: string; state: string; attempts: number; startedAt: string | null; finishedAt: string | null; error: string | null }[];
  rollbackLog: unknown[];
  placement: unknown;
  createdAt: string;
  startedAt: string | null;
  finishedAt: string | null;
}

/** A task row as the API shows it. */
export function taskView(t: TaskRow): TaskView {
  const input = (t.input ?? {}) as { name?: unknown };
  return {
    id: t.id,
    kind: t.kind,
    object: { type: t.targetType, id: t.targetId, name: typeof input.name === 'string' ? input.name : null },
    state: t.state,
    attempts: t.attempts,
    error: t.error,
    steps: t.steps.map((s) => ({
      name: s.name,
      state: s.state,
      attempts: s.attempts,
      startedAt: s.startedAt?.toISOString() ?? null,
      finishedAt: s.finishedAt?.toISOString() ?? null,
      error: s.error,
    })),
    rollbackLog: Array.isArray(t.rollbackLog) ? t.rollbackLog : [],
    placement: t.placement ?? null,
    createdAt: t.createdAt.toISOString(),
    startedAt: t.startedAt?.toISOString() ?? null,
    finishedAt: t.finishedAt?.toISOString() ?? null,
  };
}

/** A network as the API shows it. */
export interface NetworkView {
  id: string;
  name: string;
  description: string;
  area: string;
  state: string;
  vlan: number | null;
  subnet: string;
  gateway: string | null;
  task: string | null;
  createdAt: string;
}

/** A network row as the API shows it. */
export function networkView(n: NetworkRow): NetworkView {
  return {
    id: n.id,
    name: n.name,
    description: n.description,
    area: n.area.name,
    state: n.state,
    vlan: n.vlan?.vlan ?? null,
    subnet: n.subnet ?? n.area.subnet,
    gateway: n.subnet ? n.gateway : n.area.gateway,
    task: n.lastTaskId,
    createdAt: n.createdAt.toISOString(),
  };
}

/** A VM as the API shows it (never its ssh keys or user-data). */
export interface VmView {
  id: string;
  name: string;
  description: string;
  area: string;
  template: string;
  host: string | null;
  /** pending, scheduled, creating, running, stopped, deleting, error, recovering (its host died: restarting elsewhere), migrating (a drain of its host is moving it) or lost (its host is down and it cannot run elsewhere now). */
  state: string;
  /** Why it is in its state, when that is not obvious (lost: why it could not restart elsewhere); null otherwise. */
  reason: string | null;
  cpu: number;
  ramMb: number;
  diskGb: number;
  ha: boolean;
  /** The first interface's address (the seed's single-IP view). */
  ip: string | null;
  interfaces: { network: string; mac: string; ip: string | null; vlan: number | null }[];
  task: string | null;
  createdAt: string;
}

/** A VM row as the API shows it. */
export function vmView(v: VmRow): VmView {
  const interfaces = v.interfaces.map((i) => ({ network: i.network.name, mac: i.mac, ip: i.ip, vlan: i.network.vlan?.vlan ?? null }));
  return {
    id: v.id,
    name: v.name,
    description: v.description,
    area: v.area.name,
    template: v.template.name,
    host: v.host?.name ?? null,
    state: v.state,
    reason: v.stateReason ?? null,
    cpu: v.cpu,
    ramMb: v.ramMb,
    diskGb: v.diskGb,
    ha: v.haEnabled,
    ip: interfaces.find((i) => i.ip)?.ip ?? v.ips[0]?.address ?? null,
    interfaces,
    task: v.lastTaskId,
    createdAt: v.createdAt.toISOString(),
  };
}
