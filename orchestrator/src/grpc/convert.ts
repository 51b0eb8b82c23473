// Proto types stop here: the views of the use cases (app/) to the messages of kloudak.api.v1, and
// the paging and permission fields of requests to the REST-shaped input the use cases take.
// Pure functions, no I/O.
import type * as pb from '@kloudak/proto/api';
import type { AreaView } from '../app/areas.js';
import type { TokenView, UserView } from '../app/auth.js';
import type { HostUsageView, HostView } from '../app/hosts.js';
import type { JoinTokenCreatedView, JoinTokenView } from '../app/join-tokens.js';
import type { MemberView } from '../app/members.js';
import type { ListInput, Page } from '../app/paging.js';
import type { PoolView } from '../app/pools.js';
import type { QuotaView } from '../app/quotas.js';
import type { TemplateView } from '../app/templates.js';
import type { NetworkView, TaskView, VmView } from '../app/views.js';
import type { WorkspaceView } from '../app/workspaces.js';
import { PERMISSION_FLAGS, type PermissionFlag, type Permissions } from '../domain/permissions.js';

/** `user_can_add` → `userCanAdd`: the TypeScript name ts-proto gives a proto field. */
function camel(flag: string): string {
  return flag.replace(/_([a-z])/g, (_m, c: string) => c.toUpperCase());
}

const FLAG_FIELDS = PERMISSION_FLAGS.map((f) => [f, camel(f)] as const);

/** An ISO date string (or null) as a Timestamp (or unset). */
export function time(iso: string): Date;
export function time(iso: string | null): Date | undefined;
export function time(iso: string | null): Date | undefined {
  return iso === null ? undefined : new Date(iso);
}

/** null → unset, for proto3 `optional` fields. */
function opt<T>(v: T | null): T | undefined {
  return v === null ? undefined : v;
}

/**
 * page_size / page_token → the REST list input. 0 and '' are "not given" (proto3 has no null):
 * the use case's default applies. Negative or too large sizes are left for the REST schema to
 * refuse, so both APIs answer the same.
 */
export function listInput(req: { pageSize: number; pageToken: string }): ListInput {
  return { ...(req.pageSize !== 0 ? { limit: req.pageSize } : {}), ...(req.pageToken !== '' ? { after: req.pageToken } : {}) };
}

/** A page's items mapped, and its cursor as next_page_token ('' on the last page). */
export function pageOf<V, M>(p: Page<V>, map: (v: V) => M): { items: M[]; nextPageToken: string } {
  return { items: p.items.map(map), nextPageToken: p.nextCursor ?? '' };
}

export function permissions(p: Permissions): pb.Permissions {
  return Object.fromEntries(FLAG_FIELDS.map(([flag, field]) => [field, p[flag]])) as unknown as pb.Permissions;
}

/** The flags a PermissionsPatch sets (undefined when the patch is absent). */
export function permissionsPatch(p: pb.PermissionsPatch | undefined): Partial<Permissions> | undefined {
  if (p === undefined) return undefined;
  const out: Partial<Record<PermissionFlag, boolean>> = {};
  for (const [flag, field] of FLAG_FIELDS) {
    const v = (p as unknown as Record<string, boolean | undefined>)[field];
    if (v !== undefined) out[flag] = v;
  }
  return out;
}

export function user(u: UserView): pb.User {
  return { id: u.id, username: u.username, email: u.email, isAdmin: u.isAdmin, createdAt: time(u.createdAt) };
}

export function token(t: TokenView): { token: string; expiresAt: Date } {
  return { token: t.token, expiresAt: time(t.expiresAt) };
}

export function workspace(w: WorkspaceView): pb.Workspace {
  return { id: w.id, name: w.name, description: w.description, permissions: permissions(w.permissions), createdAt: time(w.createdAt) };
}

export function member(m: MemberView): pb.Member {
  return { username: m.username, email: m.email, permissions: permissions(m.permissions), since: time(m.since) };
}

export function task(t: TaskView): pb.Task {
  return {
    id: t.id,
    kind: t.kind,
    object: { type: t.object.type, id: t.object.id, name: opt(t.object.name) },
    state: t.state,
    attempts: t.attempts,
    error: opt(t.error),
    steps: t.steps.map((s) => ({ name: s.name, state: s.state, attempts: s.attempts, startedAt: time(s.startedAt), finishedAt: time(s.finishedAt), error: opt(s.error) })),
    rollbackLog: t.rollbackLog,
    placement: t.placement,
    createdAt: time(t.createdAt),
    startedAt: time(t.startedAt),
    finishedAt: time(t.finishedAt),
  };
}

export function network(n: NetworkView): pb.Network {
  return {
    id: n.id,
    name: n.name,
    description: n.description,
    area: n.area,
    state: n.state,
    vlan: opt(n.vlan),
    subnet: n.subnet,
    gateway: opt(n.gateway),
    task: opt(n.task),
    createdAt: time(n.createdAt),
  };
}

export function vm(v: VmView): pb.Vm {
  return {
    id: v.id,
    name: v.name,
    description: v.description,
    area: v.area,
    template: v.template,
    host: opt(v.host),
    state: v.state,
    cpu: v.cpu,
    ramMb: v.ramMb,
    diskGb: v.diskGb,
    ha: v.ha,
    ip: opt(v.ip),
    interfaces: v.interfaces.map((i) => ({ network: i.network, mac: i.mac, ip: opt(i.ip), vlan: opt(i.vlan) })),
    task: opt(v.task),
    createdAt: time(v.createdAt),
  };
}

export function quota(q: QuotaView): pb.Quota {
  const l = q.limits;
  return {
    limits: { vms: opt(l.vms), cpu: opt(l.cpu), ramMb: opt(l.ramMb), diskGb: opt(l.diskGb), networks: opt(l.networks), addresses: opt(l.addresses) },
    usage: { ...q.usage },
  };
}

/** SetQuota's limits as REST's body: an unset limit is unlimited (null). */
export function quotaLimits(l: pb.QuotaLimits | undefined): Record<'vms' | 'cpu' | 'ramMb' | 'diskGb' | 'networks' | 'addresses', number | null> {
  return {
    vms: l?.vms ?? null,
    cpu: l?.cpu ?? null,
    ramMb: l?.ramMb ?? null,
    diskGb: l?.diskGb ?? null,
    networks: l?.networks ?? null,
    addresses: l?.addresses ?? null,
  };
}

export function area(a: AreaView): pb.Area {
  return { id: a.id, name: a.name, subnet: a.subnet, gateway: a.gateway, vlanRange: a.vlanRange, createdAt: time(a.createdAt) };
}

export function pool(p: PoolView): pb.Pool {
  return { id: p.id, name: p.name, area: p.area, path: p.path, shared: p.shared, type: p.type, createdAt: time(p.createdAt) };
}

export function template(t: TemplateView): pb.Template {
  return {
    id: t.id,
    name: t.name,
    os: t.os,
    description: t.description,
    cpu: t.cpu,
    ramMb: t.ramMb,
    diskGb: t.diskGb,
    image: t.image,
    boot: t.boot ?? undefined,
    createdAt: time(t.createdAt),
  };
}

export function host(h: HostView): pb.Host {
  const u = h.usage;
  return {
    id: h.id,
    name: h.name,
    area: h.area,
    state: h.state,
    adminState: h.adminState,
    capacity: {
      cpus: h.capacity.cpus,
      ramMb: h.capacity.ramMb,
      diskGb: h.capacity.diskGb,
      memoryBytes: BigInt(h.capacity.memoryBytes),
      diskBytes: BigInt(h.capacity.diskBytes),
    },
    agentVersion: h.agentVersion,
    lastHeartbeatAt: time(h.lastHeartbeatAt),
    vms: h.vms,
    createdAt: time(h.createdAt),
    connected: h.connected,
    usage: u
      ? {
          at: time(u.at),
          cpuPercent: u.cpuPercent,
          memoryUsedBytes: BigInt(u.memoryUsedBytes),
          memoryTotalBytes: BigInt(u.memoryTotalBytes),
          diskUsedBytes: BigInt(u.diskUsedBytes),
          diskTotalBytes: BigInt(u.diskTotalBytes),
          libvirtConnected: u.libvirtConnected,
        }
      : undefined,
    agentStartedAt: time(h.agentStartedAt),
    certificateExpiresAt: time(h.certificateExpiresAt),
    agentStopped: h.agentStopped ? { at: time(h.agentStopped.at), runningVms: h.agentStopped.runningVms } : undefined,
  };
}

export function hostUsage(u: HostUsageView): pb.GetHostUsageResponse {
  return {
    hostId: u.hostId,
    from: time(u.from),
    to: time(u.to),
    resolution: u.resolution,
    points: u.points.map((p) => ({ ...p, at: time(p.at) })),
  };
}

export function joinToken(t: JoinTokenView): pb.JoinToken {
  return {
    id: t.id,
    areaId: t.areaId,
    expiresAt: time(t.expiresAt),
    createdAt: time(t.createdAt),
    createdBy: opt(t.createdBy),
    used: t.used,
    usedAt: time(t.usedAt),
    usedByHostId: opt(t.usedByHostId),
    revoked: t.revoked,
    revokedAt: time(t.revokedAt),
    expired: t.expired,
    hostId: opt(t.hostId),
  };
}

export function joinTokenCreated(t: JoinTokenCreatedView): pb.CreateJoinTokenResponse {
  return { id: t.id, token: t.token, area: t.area, areaId: t.areaId, expiresAt: time(t.expiresAt), caFingerprint: t.caFingerprint, hostId: opt(t.hostId) };
}

/** A Timestamp of a request as the ISO string REST takes (unset: not given). */
export function isoOf(d: Date | undefined): string | undefined {
  return d === undefined ? undefined : d.toISOString();
}

/** The fields of `o` that are not undefined (proto3 `optional` fields left unset are not sent to REST's schema). */
export function defined<T extends Record<string, unknown>>(o: T): { [K in keyof T]?: Exclude<T[K], undefined> } {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as { [K in keyof T]?: Exclude<T[K], undefined> };
}
