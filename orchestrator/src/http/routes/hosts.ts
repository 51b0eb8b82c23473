import { Type } from '@sinclair/typebox';
import * as hosts from '../../app/hosts.js';
import type { Services } from '../../app/services.js';
import { route, type RouteSpec } from '../route.js';
import { ListQuery, Name, Page, Timestamp, Uuid } from '../schemas.js';
import { TaskSchema } from './resources.js';

const HostUsageSchema = Type.Object({
  at: Timestamp,
  cpuPercent: Type.Number(),
  memoryUsedBytes: Type.Integer(),
  memoryTotalBytes: Type.Integer(),
  diskUsedBytes: Type.Integer(),
  diskTotalBytes: Type.Integer(),
  libvirtConnected: Type.Boolean({ description: "whether the agent could read libvirt for this heartbeat (false while libvirtd restarts or does not answer)" }),
});
const HostSchema = Type.Object({
  id: Uuid,
  name: Type.String(),
  area: Name,
  state: Type.String({ description: 'liveness: unknown, up, suspect, down, fenced' }),
  adminState: Type.String({ description: 'active, maintenance or drained' }),
  capacity: Type.Object({ cpus: Type.Integer(), ramMb: Type.Integer(), diskGb: Type.Integer(), memoryBytes: Type.Integer(), diskBytes: Type.Integer() }),
  agentVersion: Type.String(),
  lastHeartbeatAt: Type.Union([Timestamp, Type.Null()]),
  vms: Type.Integer(),
  createdAt: Timestamp,
  /** Live view, from the orchestrator holding the host's session. */
  connected: Type.Boolean({ description: 'the agent has a session open on this orchestrator' }),
  usage: Type.Union([HostUsageSchema, Type.Null()], { description: 'the last heartbeat\'s usage; null before the first' }),
  agentStartedAt: Type.Union([Timestamp, Type.Null()]),
  certificateExpiresAt: Type.Union([Timestamp, Type.Null()]),
  agentStopped: Type.Union([Type.Object({ at: Timestamp, runningVms: Type.Integer({ description: 'VMs the agent left running' }) }), Type.Null()], {
    description:
      'set from a clean stop of the agent until it is back; the VMs it left running (nothing fenced them) are not restarted elsewhere until then, or until the host is confirmed off (POST /hosts/{id}/confirm-off)',
  }),
});
const UsagePoint = Type.Object({
  at: Timestamp,
  cpuPct: Type.Number(),
  memUsedMb: Type.Integer(),
  memTotalMb: Type.Integer(),
  diskUsedGb: Type.Number(),
  diskTotalGb: Type.Number(),
  samples: Type.Integer({ description: 'heartbeats averaged into this point' }),
});
const IdParams = Type.Object({ id: Uuid }, { additionalProperties: false });

/** Hosts (admin; created by agent enrollment) and their usage series. Registered after /hosts/join-tokens. */
export function hostRoutes(s: Services): RouteSpec[] {
  return [
    route({
      method: 'get',
      path: '/hosts',
      operationId: 'listHosts',
      summary: 'List hosts with area, state, capacity and last heartbeat',
      tag: 'hosts',
      access: 'admin',
      query: ListQuery,
      response: { status: 200, description: 'a page of hosts', schema: Page(HostSchema) },
      handler: ({ caller, query }) => hosts.listHosts(s, caller, query),
    }),
    route({
      method: 'get',
      path: '/hosts/{id}',
      operationId: 'getHost',
      summary: 'One host: state, capacity, current usage and last heartbeat',
      tag: 'hosts',
      access: 'admin',
      params: IdParams,
      response: { status: 200, description: 'the host', schema: HostSchema },
      errors: [404],
      handler: ({ caller, params }) => hosts.getHost(s, caller, params.id),
    }),
    route({
      method: 'patch',
      path: '/hosts/{id}',
      operationId: 'updateHost',
      summary: 'Put a host in or out of maintenance (no new VMs are placed on it)',
      tag: 'hosts',
      access: 'admin',
      params: IdParams,
      body: Type.Object({ maintenance: Type.Boolean() }, { additionalProperties: false }),
      response: { status: 200, description: 'the host', schema: HostSchema },
      errors: [404],
      handler: ({ caller, params, body }) => hosts.updateHost(s, caller, params.id, body),
    }),
    route({
      method: 'delete',
      path: '/hosts/{id}',
      operationId: 'deleteHost',
      summary: 'Forget a host that holds no VMs',
      tag: 'hosts',
      access: 'admin',
      params: IdParams,
      response: { status: 204, description: 'deleted' },
      errors: [404, 409],
      handler: ({ caller, params }) => hosts.deleteHost(s, caller, params.id),
    }),
    route({
      method: 'post',
      path: '/hosts/{id}/rekey',
      operationId: 'rekeyHost',
      summary: 'Revoke a host\'s client certificates and end its session; it must re-enroll',
      description:
        'Every certificate of the host is refused from now on (Connect and renewal), and its open session ends at once. The host keeps its id, VMs and history; its agent enrolls again with a join token made for it (`POST /hosts/join-tokens {"host": id}`). Until then the host goes down like one whose agent stopped, and its agent fences its HA VMs when its lease runs out.',
      tag: 'hosts',
      access: 'admin',
      params: IdParams,
      response: { status: 200, description: 'the host, without a valid certificate', schema: HostSchema },
      errors: [404],
      handler: ({ caller, params }) => hosts.rekeyHost(s, caller, params.id),
    }),
    route({
      method: 'post',
      path: '/hosts/{id}/confirm-off',
      operationId: 'confirmHostOff',
      summary: 'Confirm that a down host is off, so that its HA VMs restart elsewhere',
      description:
        'A down host\'s HA VMs restart on other hosts of its area once it must have fenced them. Two things hold that back because the VMs may still run: the host\'s agent stopped cleanly and left its VMs running (`agentStopped`), or its pool lease files are still renewed and do not say it fenced. When you know the host is off (powered off, its VMs killed), say so here: the hold is lifted and its evacuation is planned within a second. The host must be down with an evacuation not yet planned (409 otherwise). Never use it on a host that may still run its VMs: they would run twice.',
      tag: 'hosts',
      access: 'admin',
      params: IdParams,
      response: {
        status: 200,
        description: 'the host, and the evacuations now free to restart its VMs',
        schema: Type.Object({ host: HostSchema, evacuations: Type.Array(Uuid) }),
      },
      errors: [404, 409],
      handler: ({ caller, params }) => hosts.confirmHostOff(s, caller, params.id),
    }),
    route({
      method: 'post',
      path: '/hosts/{id}/drain',
      operationId: 'drainHost',
      summary: 'Drain a host: maintenance, then move every VM it can to other hosts of its area',
      description:
        'Queues a `host.drain` task (or answers the one under way). It puts the host in maintenance, plans a new host for each VM with the placement rules (same area, capacity, filters, the VM\'s own shared pool), then moves them one by one: a running VM by live migration (`mode: live`, the default; libvirt peer to peer, the disk stays on the shared pool) or by a stop and a start on the new host from the same disk (`mode: restart`); a stopped VM is defined on the new host. A VM\'s host changes once the new host reports it running; a failed migration leaves it running where it was. VMs that cannot move (a host-local disk, a task working on them, no room) are reported in the plan (`task.placement.drain.cannotMove`) and stay; progress is in `task.placement.drain.progress` and on the event streams. Only an up, connected host can be drained (409 otherwise).',
      tag: 'hosts',
      access: 'admin',
      params: IdParams,
      body: Type.Object(
        { mode: Type.Optional(Type.Union([Type.Literal('live'), Type.Literal('restart')], { description: 'how running VMs move; default live' })) },
        { additionalProperties: false },
      ),
      response: { status: 202, description: 'the host (in maintenance once the task starts) and its drain task', schema: Type.Object({ host: HostSchema, task: TaskSchema }) },
      errors: [404, 409],
      handler: ({ caller, params, body }) => hosts.drainHost(s, caller, params.id, body),
    }),
    route({
      method: 'get',
      path: '/hosts/{id}/drain',
      operationId: 'getHostDrain',
      summary: "The host's latest drain task: its steps, plan and progress",
      tag: 'hosts',
      access: 'admin',
      params: IdParams,
      response: { status: 200, description: 'the task; `placement.drain` holds the plan and the progress', schema: TaskSchema },
      errors: [404],
      handler: ({ caller, params }) => hosts.getHostDrain(s, caller, params.id),
    }),
    route({
      method: 'get',
      path: '/hosts/{id}/usage',
      operationId: 'getHostUsage',
      summary: 'Usage of a host over time: one point per minute (averaged heartbeats)',
      tag: 'hosts',
      access: 'admin',
      params: IdParams,
      query: Type.Object(
        {
          from: Type.Optional(Type.String({ maxLength: 40, description: 'ISO 8601 date-time; default: one hour before `to`' })),
          to: Type.Optional(Type.String({ maxLength: 40, description: 'ISO 8601 date-time; default: now' })),
        },
        { additionalProperties: false },
      ),
      response: {
        status: 200,
        description: 'the series',
        schema: Type.Object({ hostId: Uuid, from: Timestamp, to: Timestamp, resolution: Type.Integer(), points: Type.Array(UsagePoint) }),
      },
      errors: [404],
      handler: ({ caller, params, query }) => hosts.hostUsage(s, caller, params.id, query),
    }),
  ];
}
