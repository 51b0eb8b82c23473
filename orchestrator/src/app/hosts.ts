// Hosts (admin): created by agent enrollment; shown with the link's live view, put in or out of
// maintenance, forgotten once empty; their usage over time.
import { ConflictError, NotFoundError } from '@kloudak/common';
import type { HostLinkStatus } from '../agent-api/link.js';
import { transaction } from '../store/db.js';
import { hostCertificates, revokeHostCertificates } from '../store/host-certs.js';
import { confirmHostOff as confirmOff } from '../store/evacuations.js';
import { connectedHosts } from '../store/instances.js';
import { deleteHost as removeHost, hostById, listHosts as hostRows, setAdminState, usageOf, type HostRow } from '../store/hosts.js';
import { insertTask, latestTask, taskById, unfinishedTask } from '../store/tasks.js';
import { HOST_TASKS } from '../tasks/drain.js';
import { taskView, type TaskView } from './views.js';
import { invalidField } from './errors.js';
import { infraEvent, record, withEvents } from './events.js';
import { DEFAULT_LIMIT, page, type ListInput, type Page } from './paging.js';
import { admin, type Caller } from './principal.js';
import type { Services } from './services.js';

/** A host as the API shows it: its row, and what the agent link knows now. */
export interface HostView {
  id: string;
  name: string;
  area: string;
  state: string;
  adminState: string;
  capacity: { cpus: number; ramMb: number; diskGb: number; memoryBytes: number; diskBytes: number };
  agentVersion: string;
  lastHeartbeatAt: string | null;
  vms: number;
  createdAt: string;
  connected: boolean;
  usage: {
    at: string;
    cpuPercent: number;
    memoryUsedBytes: number;
    memoryTotalBytes: number;
    diskUsedBytes: number;
    diskTotalBytes: number;
    libvirtConnected: boolean;
  } | null;
  agentStartedAt: string | null;
  certificateExpiresAt: string | null;
  /**
   * Set from the host's agent's clean stop (Goodbye) until it is back. The VMs it left running
   * were fenced by nothing, so they are not restarted elsewhere until the agent is back or an
   * admin confirms the host is off ({@link confirmHostOff}).
   */
  agentStopped: { at: string; runningVms: number } | null;
}

/** A host's usage series: one point per minute. */
export interface HostUsageView {
  hostId: string;
  from: string;
  to: string;
  resolution: number;
  points: { at: string; cpuPct: number; memUsedMb: number; memTotalMb: number; diskUsedGb: number; diskTotalGb: number; samples: number }[];
}

/** Longest span one usage query may cover. */
const MAX_USAGE_SPAN_MS = 31 * 86_400_000;
/** Most points one usage query returns (31 days of minutes is 44,640). */
const MAX_USAGE_POINTS = 50_000;

/**
 * `connected` is true when ANY orchestrator instance holds the host's session: this one's memory,
 * or the database (the session's owner, whose registration has not expired).
 */
function view(h: HostRow, link: HostLinkStatus, elsewhere: ReadonlySet<string>): HostView {
  // The link's in-memory view is fresher than the row (lastHeartbeatAt is written every 30 s at most).
  const last = link.lastHeartbeatAt && (!h.lastHeartbeatAt || link.lastHeartbeatAt > h.lastHeartbeatAt) ? link.lastHeartbeatAt : h.lastHeartbeatAt;
  const u = link.usage;
  return {
    id: h.id,
    name: h.name,
    area: h.area.name,
    state: h.state,
    adminState: h.adminState,
    capacity: { cpus: h.cpuCount, ramMb: h.ramMb, diskGb: h.diskGb, memoryBytes: Number(h.memoryBytes), diskBytes: Number(h.diskBytes) },
    agentVersion: h.agentVersion,
    lastHeartbeatAt: last ? last.toISOString() : null,
    vms: h._count.vms,
    createdAt: h.createdAt.toISOString(),
    connected: link.connected || elsewhere.has(h.id),
    usage: u
      ? {
          at: u.at.toISOString(),
          cpuPercent: u.cpuPercent,
          memoryUsedBytes: u.memoryUsedBytes,
          memoryTotalBytes: u.memoryTotalBytes,
          diskUsedBytes: u.diskUsedBytes,
          diskTotalBytes: u.diskTotalBytes,
          libvirtConnected: u.libvirtConnected,
        }
      : null,
    agentStartedAt: h.agentStartedAt?.toISOString() ?? null,
    certificateExpiresAt: h.certExpiresAt?.toISOString() ?? null,
    agentStopped: h.agentStoppedAt ? { at: h.agentStoppedAt.toISOString(), runningVms: h.agentStoppedVmIds.length } : null,
  };
}

export async function listHosts(s: Services, c: Caller, q: ListInput): Promise<Page<HostView>> {
  admin(c);
  const limit = q.limit ?? DEFAULT_LIMIT;
  const rows = await hostRows(s.db.client, { ...(q.after ? { after: q.after } : {}), take: limit + 1 });
  const connected = await connectedHosts(s.db.client, rows.map((r) => r.id));
  return page(rows, limit, (r) => r.name, (r) => view(r, s.agents.status(r.id), connected));
}

export async function getHost(s: Services, c: Caller, id: string): Promise<HostView> {
  admin(c);
  const h = await hostById(s.db.client, id);
  if (!h) throw new NotFoundError('host', id);
  return view(h, s.agents.status(h.id), await connectedHosts(s.db.client, [h.id]));
}

/** Put a host in or out of maintenance (no new VMs are placed on a host in maintenance). */
export async function updateHost(s: Services, c: Caller, id: string, input: { maintenance: boolean }): Promise<HostView> {
  const p = admin(c);
  const h = await withEvents(
    s,
    async (tx) => {
      const h = await setAdminState(tx, id, input.maintenance ? 'maintenance' : 'active');
      if (!h) throw new NotFoundError('host', id);
      return h;
    },
    (h) => infraEvent('host', h.id, 'updated', { name: h.name, state: h.state, data: { adminState: h.adminState, by: p.username } }),
  );
  return view(h, s.agents.status(h.id), await connectedHosts(s.db.client, [h.id]));
}

/** What {@link confirmHostOff} answers: the host, and the evacuations the word was recorded on. */
export interface HostConfirmedOff {
  host: HostView;
  evacuations: string[];
}

/**
 * An admin's word that a down host is off (powered off, or its VMs otherwise stopped): its
 * evacuation is no longer held back by its agent's clean stop or by its pool lease files, and the
 * next failover sweep (within a second) restarts its HA VMs elsewhere. Only for a host that is
 * down with an evacuation not planned yet (409 otherwise): on a host that runs, this would start
 * its VMs a second time.
 */
export async function confirmHostOff(s: Services, c: Caller, id: string): Promise<HostConfirmedOff> {
  const p = admin(c);
  const r = await transaction(s.db.client, (tx) => confirmOff(tx, id, p.username, new Date()));
  if (r.kind === 'no_host') throw new NotFoundError('host', id);
  if (r.kind === 'not_down') throw new ConflictError(`host ${r.name} is ${r.state}, not down: only a down host can be confirmed off`);
  if (r.kind === 'nothing_pending') throw new ConflictError(`host ${r.name} has no evacuation waiting: its VMs were dealt with already`);
  const evacuations = r.evacuations;
  const h = await hostById(s.db.client, id);
  if (!h) throw new NotFoundError('host', id);
  return { host: view(h, s.agents.status(h.id), await connectedHosts(s.db.client, [h.id])), evacuations };
}

/** How a drain moves running VMs: live migration (default) or stop and restart on the new host. */
export interface DrainInput {
  mode?: 'live' | 'restart';
}

/** A host and the task draining it. */
export interface HostDrain {
  host: HostView;
  task: TaskView;
}

/** A drain may take this long in all (every VM of the host, a few at a time: drainConcurrency). */
const DRAIN_TIMEOUT_MS = 4 * 3600_000;

/**
 * Drain a host (admin): a persisted `host.drain` task puts it in maintenance, then moves every VM
 * it can to other hosts of its area (tasks/drain.ts), and reports those that cannot move. The
 * host must be up (a dead host is evacuated by failover instead); a drain already under way is
 * answered again rather than queued twice.
 */
export async function drainHost(s: Services, c: Caller, id: string, input: DrainInput): Promise<HostDrain> {
  const p = admin(c);
  const mode = input.mode ?? 'live';
  const before = await hostById(s.db.client, id);
  if (!before) throw new NotFoundError('host', id);
  // A host that is not up is failover's (its VMs are evacuated when it goes down); one up but
  // momentarily without its agent's session still drains: its moves fail and are retried.
  if (before.state !== 'up') throw new ConflictError(`host ${before.name} is ${before.state}: only an up host can be drained (failover evacuates a dead one)`, { state: before.state });
  const taskId = await transaction(s.db.client, async (tx) => {
    const pending = await unfinishedTask(tx, before.id, HOST_TASKS.drain);
    if (pending) return pending.id;
    const t = await insertTask(tx, {
      kind: HOST_TASKS.drain,
      workspaceId: null,
      createdById: p.userId,
      targetType: 'host',
      targetId: before.id,
      input: { name: before.name, mode },
      maxAttempts: s.config.taskMaxAttempts,
      deadline: new Date(s.clock.now() + Math.max(s.config.taskTimeoutMs, DRAIN_TIMEOUT_MS)),
    });
    await record(tx, infraEvent('host', before.id, 'draining', { name: before.name, state: before.state, taskId: t.id, data: { mode, by: p.username } }));
    return t.id;
  });
  s.tasks.kick();
  const [h, t] = await Promise.all([hostById(s.db.client, before.id), taskById(s.db.client, taskId)]);
  return { host: view(h ?? before, s.agents.status(before.id), await connectedHosts(s.db.client, [before.id])), task: taskView(t) };
}

/** The host's latest drain task (admin): its steps, and in `placement.drain` the plan and progress. */
export async function getHostDrain(s: Services, c: Caller, id: string): Promise<TaskView> {
  admin(c);
  const h = await hostById(s.db.client, id);
  if (!h) throw new NotFoundError('host', id);
  const t = await latestTask(s.db.client, h.id, HOST_TASKS.drain);
  if (!t) throw new NotFoundError('drain of host', id);
  return taskView(t);
}

/** Forget a host that holds no VMs: its agent's session ends, and it can never connect again. */
export async function deleteHost(s: Services, c: Caller, id: string): Promise<void> {
  const p = admin(c);
  const h = await transaction(s.db.client, async (tx) => {
    const h = await hostById(tx, id);
    if (!h) throw new NotFoundError('host', id);
    if (h._count.vms > 0) throw new ConflictError(`host holds ${h._count.vms} VMs; move or delete them first`);
    await removeHost(tx, h.id);
    await record(tx, infraEvent('host', h.id, 'deleted', { name: h.name, data: { by: p.username } }));
    return h;
  });
  s.agents.hostDeleted(h.id);
}

/**
 * Re-key a host: every client certificate of it is revoked at once (Connect and renewal refuse
 * them) and its session ends. The host keeps its id, VMs and history; its agent must enroll again
 * with a join token made for it (`POST /hosts/join-tokens {host}`). Until then the host goes
 * suspect and down like any host whose agent stopped, and its agent fences its HA VMs when its
 * lease runs out: a host whose key is not trusted must not keep running them.
 */
export async function rekeyHost(s: Services, c: Caller, id: string): Promise<HostView> {
  const p = admin(c);
  const h = await withEvents(
    s,
    async (tx) => {
      const before = await hostById(tx, id);
      const certs = before ? await hostCertificates(tx, id) : null;
      if (!before || !certs || !(await revokeHostCertificates(tx, id))) throw new NotFoundError('host', id);
      return { ...before, revokedSerials: [certs.certSerial, certs.prevCertSerial].filter((x): x is string => x !== null) };
    },
    // The serials let every orchestrator end a session opened with them (events/host-revocations.ts).
    (h) => infraEvent('host', h.id, 'rekeyed', { name: h.name, state: h.state, data: { by: p.username, revokedSerials: h.revokedSerials } }),
  );
  s.agents.hostRevoked(h.id);
  c.log.warn({ host_id: h.id, host_name: h.name }, 'host re-keyed: its certificates are revoked');
  // No certificate of the host is valid any more: none expires.
  return view({ ...h, certExpiresAt: null }, s.agents.status(h.id), await connectedHosts(s.db.client, [h.id]));
}

function instant(v: string | undefined, field: string, fallback: number): number {
  if (v === undefined) return fallback;
  const t = Date.parse(v);
  if (!/^\d{4}-\d{2}-\d{2}T/.test(v) || Number.isNaN(t)) throw invalidField(`/${field}`, 'must be an ISO 8601 date-time', 'query');
  return t;
}

/** Usage of a host over time, one point per minute: `to` defaults to now, `from` to an hour before it; at most 31 days. */
export async function hostUsage(s: Services, c: Caller, id: string, q: { from?: string; to?: string }): Promise<HostUsageView> {
  admin(c);
  const to = instant(q.to, 'to', s.clock.now());
  const from = instant(q.from, 'from', to - 3600_000);
  if (from > to) throw invalidField('/from', 'must not be after `to`', 'query');
  if (to - from > MAX_USAGE_SPAN_MS) throw invalidField('/from', 'the span may be at most 31 days', 'query');
  const host = await hostById(s.db.client, id);
  if (!host) throw new NotFoundError('host', id);
  const rows = await usageOf(s.db.client, host.id, new Date(from), new Date(to), MAX_USAGE_POINTS);
  return {
    hostId: host.id,
    from: new Date(from).toISOString(),
    to: new Date(to).toISOString(),
    resolution: 60,
    points: rows.map((r) => ({
      at: r.at.toISOString(),
      cpuPct: r.cpuPct,
      memUsedMb: r.memUsedMb,
      memTotalMb: r.memTotalMb,
      diskUsedGb: r.diskUsedGb,
      diskTotalGb: r.diskTotalGb,
      samples: r.samples,
    })),
  };
}
