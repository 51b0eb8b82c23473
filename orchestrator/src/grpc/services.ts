// The services of kloudak.api.v1: one handler per RPC, each the twin of one REST operation (named
// first), built from the same use case. Each parses the request into REST's input shape, the use
// case does the rest, convert.ts maps its view.
import type * as grpc from '@grpc/grpc-js';
import * as pb from '@kloudak/proto/api';
import * as areas from '../app/areas.js';
import * as auth from '../app/auth.js';
import * as hosts from '../app/hosts.js';
import * as joinTokens from '../app/join-tokens.js';
import type { ListInput } from '../app/paging.js';
import * as members from '../app/members.js';
import * as networks from '../app/networks.js';
import * as pools from '../app/pools.js';
import * as quotas from '../app/quotas.js';
import * as tasks from '../app/tasks.js';
import * as templates from '../app/templates.js';
import * as vms from '../app/vms.js';
import * as workspaces from '../app/workspaces.js';
import type { Permissions } from '../domain/permissions.js';
import * as c from './convert.js';
import { unary, type UnaryContext } from './unary.js';

type Ws = { ws: string };
type Item = { ws: string; name: string };
type Named = { name: string };
type Id = { id: string };

/** Every service of kloudak.api.v1 with its implementation. */
export function apiServices(ctx: UnaryContext): { definition: grpc.ServiceDefinition; implementation: grpc.UntypedServiceImplementation }[] {
  const s = ctx.services;
  const authImpl: pb.AuthServiceServer = {
    login: unary(
      ctx,
      'POST /auth/login',
      (r: pb.LoginRequest) => ({ body: { username: r.username, password: r.password } }),
      (caller, i: { body: { username: string; password: string } }) => auth.login(s, caller, i.body),
      c.token,
    ),
    refreshToken: unary(ctx, 'GET /auth/token', () => ({}), (caller) => auth.refreshToken(s, caller), c.token),
    logout: unary(ctx, 'POST /auth/logout', () => ({}), (caller) => auth.logout(s, caller), () => ({})),
    getMe: unary(
      ctx,
      'GET /me',
      () => ({}),
      (caller) => auth.me(s, caller),
      (m) => ({ user: c.user(m.user), workspaces: Object.fromEntries(Object.entries(m.workspaces).map(([k, v]) => [k, c.permissions(v)])) }),
    ),
  };

  const workspaceImpl: pb.WorkspaceServiceServer = {
    listWorkspaces: unary(
      ctx,
      'GET /workspaces',
      (r: pb.ListWorkspacesRequest) => ({ query: c.listInput(r) }),
      (caller, i: { query: ListInput }) => workspaces.listWorkspaces(s, caller, i.query),
      (p) => {
        const { items, nextPageToken } = c.pageOf(p, c.workspace);
        return { workspaces: items, nextPageToken };
      },
    ),
    getWorkspace: unary(
      ctx,
      'GET /workspaces/{ws}',
      (r: pb.GetWorkspaceRequest) => ({ params: { ws: r.workspace } }),
      (caller, i: { params: Ws }) => workspaces.getWorkspace(s, caller, i.params.ws),
      (w) => ({ workspace: c.workspace(w) }),
    ),
    createWorkspace: unary(
      ctx,
      'POST /workspaces',
      (r: pb.CreateWorkspaceRequest) => ({ body: c.defined({ name: r.name, description: r.description }) }),
      (caller, i: { body: { name: string; description?: string } }) => workspaces.createWorkspace(s, caller, i.body),
      (w) => ({ workspace: c.workspace(w) }),
    ),
    updateWorkspace: unary(
      ctx,
      'PATCH /workspaces/{ws}',
      (r: pb.UpdateWorkspaceRequest) => ({ params: { ws: r.workspace }, body: c.defined({ name: r.name, description: r.description }) }),
      (caller, i: { params: Ws; body: { name?: string; description?: string } }) => workspaces.updateWorkspace(s, caller, i.params.ws, i.body),
      (w) => ({ workspace: c.workspace(w) }),
    ),
    deleteWorkspace: unary(
      ctx,
      'DELETE /workspaces/{ws}',
      (r: pb.DeleteWorkspaceRequest) => ({ params: { ws: r.workspace } }),
      (caller, i: { params: Ws }) => workspaces.deleteWorkspace(s, caller, i.params.ws),
      () => ({}),
    ),
    listMembers: unary(
      ctx,
      'GET /workspaces/{ws}/members',
      (r: pb.ListMembersRequest) => ({ params: { ws: r.workspace }, query: c.listInput(r) }),
      (caller, i: { params: Ws; query: ListInput }) => members.listMembers(s, caller, i.params.ws, i.query),
      (p) => {
        const { items, nextPageToken } = c.pageOf(p, c.member);
        return { members: items, nextPageToken };
      },
    ),
    addMember: unary(
      ctx,
      'POST /workspaces/{ws}/members',
      (r: pb.AddMemberRequest) => ({ params: { ws: r.workspace }, body: c.defined({ username: r.username, permissions: c.permissionsPatch(r.permissions) }) }),
      (caller, i: { params: Ws; body: { username: string; permissions?: Partial<Permissions> } }) => members.addMember(s, caller, i.params.ws, i.body),
      (m) => ({ member: c.member(m) }),
    ),
    updateMember: unary(
      ctx,
      'PATCH /workspaces/{ws}/members/{username}',
      (r: pb.UpdateMemberRequest) => ({ params: { ws: r.workspace, username: r.username }, body: { permissions: c.permissionsPatch(r.permissions) ?? {} } }),
      (caller, i: { params: Ws & { username: string }; body: { permissions: Partial<Permissions> } }) =>
        members.updateMember(s, caller, i.params.ws, i.params.username, i.body),
      (m) => ({ member: c.member(m) }),
    ),
    removeMember: unary(
      ctx,
      'DELETE /workspaces/{ws}/members/{username}',
      (r: pb.RemoveMemberRequest) => ({ params: { ws: r.workspace, username: r.username } }),
      (caller, i: { params: Ws & { username: string } }) => members.removeMember(s, caller, i.params.ws, i.params.username),
      () => ({}),
    ),
  };

  const networkImpl: pb.NetworkServiceServer = {
    listNetworks: unary(
      ctx,
      'GET /workspaces/{ws}/networks',
      (r: pb.ListNetworksRequest) => ({ params: { ws: r.workspace }, query: c.listInput(r) }),
      (caller, i: { params: Ws; query: ListInput }) => networks.listNetworks(s, caller, i.params.ws, i.query),
      (p) => {
        const { items, nextPageToken } = c.pageOf(p, c.network);
        return { networks: items, nextPageToken };
      },
    ),
    getNetwork: unary(
      ctx,
      'GET /workspaces/{ws}/networks/{name}',
      (r: pb.GetNetworkRequest) => ({ params: { ws: r.workspace, name: r.name } }),
      (caller, i: { params: Item }) => networks.getNetwork(s, caller, i.params.ws, i.params.name),
      (n) => ({ network: c.network(n) }),
    ),
    createNetwork: unary(
      ctx,
      'POST /workspaces/{ws}/networks',
      (r: pb.CreateNetworkRequest) => ({ params: { ws: r.workspace }, body: c.defined({ name: r.name, area: r.area, description: r.description, subnet: r.subnet }) }),
      (caller, i: { params: Ws; body: networks.CreateNetworkInput }) => networks.createNetwork(s, caller, i.params.ws, i.body),
      (x) => ({ network: c.network(x.network), task: c.task(x.task) }),
    ),
    updateNetwork: unary(
      ctx,
      'PATCH /workspaces/{ws}/networks/{name}',
      (r: pb.UpdateNetworkRequest) => ({ params: { ws: r.workspace, name: r.name }, body: c.defined({ name: r.newName, description: r.description }) }),
      (caller, i: { params: Item; body: { name?: string; description?: string } }) => networks.updateNetwork(s, caller, i.params.ws, i.params.name, i.body),
      (n) => ({ network: c.network(n) }),
      { body: { name: 'new_name' } },
    ),
    deleteNetwork: unary(
      ctx,
      'DELETE /workspaces/{ws}/networks/{name}',
      (r: pb.DeleteNetworkRequest) => ({ params: { ws: r.workspace, name: r.name } }),
      (caller, i: { params: Item }) => networks.deleteNetwork(s, caller, i.params.ws, i.params.name),
      (x) => ({ network: c.network(x.network), task: c.task(x.task) }),
    ),
  };

  const vmChange = (x: vms.VmChange) => ({ vm: c.vm(x.vm), task: c.task(x.task) });
  const action = (a: vms.VmAction) =>
    unary(
      ctx,
      'POST /workspaces/{ws}/vms/{name}/actions',
      (r: { workspace: string; name: string }) => ({ params: { ws: r.workspace, name: r.name }, body: { action: a } }),
      (caller, i: { params: Item; body: { action: vms.VmAction } }) => vms.vmAction(s, caller, i.params.ws, i.params.name, i.body.action),
      vmChange,
    );
  const vmImpl: pb.VmServiceServer = {
    listVms: unary(
      ctx,
      'GET /workspaces/{ws}/vms',
      (r: pb.ListVmsRequest) => ({ params: { ws: r.workspace }, query: c.listInput(r) }),
      (caller, i: { params: Ws; query: ListInput }) => vms.listVms(s, caller, i.params.ws, i.query),
      (p) => {
        const { items, nextPageToken } = c.pageOf(p, c.vm);
        return { vms: items, nextPageToken };
      },
    ),
    getVm: unary(
      ctx,
      'GET /workspaces/{ws}/vms/{name}',
      (r: pb.GetVmRequest) => ({ params: { ws: r.workspace, name: r.name } }),
      (caller, i: { params: Item }) => vms.getVm(s, caller, i.params.ws, i.params.name),
      (v) => ({ vm: c.vm(v) }),
    ),
    createVm: unary(
      ctx,
      'POST /workspaces/{ws}/vms',
      (r: pb.CreateVmRequest) => ({
        params: { ws: r.workspace },
        body: c.defined({
          name: r.name,
          template: r.template,
          area: r.area,
          networks: r.networks,
          description: r.description,
          cpu: r.cpu,
          ramMb: r.ramMb,
          diskGb: r.diskGb,
          sshKeys: r.sshKeys.length > 0 ? r.sshKeys : undefined,
          userData: r.userData,
          ha: r.ha,
        }),
      }),
      (caller, i: { params: Ws; body: vms.CreateVmInput }) => vms.createVm(s, caller, i.params.ws, i.body),
      vmChange,
    ),
    updateVm: unary(
      ctx,
      'PATCH /workspaces/{ws}/vms/{name}',
      (r: pb.UpdateVmRequest) => ({
        params: { ws: r.workspace, name: r.name },
        body: c.defined({ name: r.newName, description: r.description, networks: r.networks.length > 0 ? r.networks : undefined }),
      }),
      (caller, i: { params: Item; body: { name?: string; description?: string; networks?: string[] } }) => vms.updateVm(s, caller, i.params.ws, i.params.name, i.body),
      (x) => ({ vm: c.vm(x.vm), tasks: x.tasks.map(c.task) }),
      { body: { name: 'new_name' } },
    ),
    deleteVm: unary(
      ctx,
      'DELETE /workspaces/{ws}/vms/{name}',
      (r: pb.DeleteVmRequest) => ({ params: { ws: r.workspace, name: r.name } }),
      (caller, i: { params: Item }) => vms.deleteVm(s, caller, i.params.ws, i.params.name),
      vmChange,
    ),
    startVm: action('start'),
    stopVm: action('stop'),
    rebootVm: action('reboot'),
    getVmConsole: unary(
      ctx,
      'GET /workspaces/{ws}/vms/{name}/console',
      (r: pb.GetVmConsoleRequest) => ({ params: { ws: r.workspace, name: r.name }, query: c.defined({ bytes: r.bytes === 0 ? undefined : r.bytes }) }),
      (caller, i: { params: Item; query: { bytes?: number } }) => vms.vmConsole(s, caller, i.params.ws, i.params.name, i.query.bytes ?? 65_536),
      (x) => x,
    ),
  };

  const taskImpl: pb.TaskServiceServer = {
    listTasks: unary(
      ctx,
      'GET /workspaces/{ws}/tasks',
      (r: pb.ListTasksRequest) => ({ params: { ws: r.workspace }, query: { ...c.listInput(r), ...c.defined({ state: r.state, object: r.object }) } }),
      (caller, i: { params: Ws; query: tasks.TaskFilter }) => tasks.listTasks(s, caller, i.params.ws, i.query),
      (p) => {
        const { items, nextPageToken } = c.pageOf(p, c.task);
        return { tasks: items, nextPageToken };
      },
    ),
    getTask: unary(
      ctx,
      'GET /workspaces/{ws}/tasks/{id}',
      (r: pb.GetTaskRequest) => ({ params: { ws: r.workspace, id: r.id } }),
      (caller, i: { params: Ws & Id }) => tasks.getTask(s, caller, i.params.ws, i.params.id),
      (t) => ({ task: c.task(t) }),
    ),
  };

  const quotaImpl: pb.QuotaServiceServer = {
    getQuota: unary(
      ctx,
      'GET /workspaces/{ws}/quota',
      (r: pb.GetQuotaRequest) => ({ params: { ws: r.workspace } }),
      (caller, i: { params: Ws }) => quotas.getQuota(s, caller, i.params.ws),
      (q) => ({ quota: c.quota(q) }),
    ),
    setQuota: unary(
      ctx,
      'PUT /workspaces/{ws}/quota',
      (r: pb.SetQuotaRequest) => ({ params: { ws: r.workspace }, body: c.quotaLimits(r.limits) }),
      (caller, i: { params: Ws; body: Partial<quotas.QuotaLimits> }) => quotas.setQuota(s, caller, i.params.ws, i.body),
      (q) => ({ quota: c.quota(q) }),
      { body: { vms: 'limits.vms', cpu: 'limits.cpu', ramMb: 'limits.ram_mb', diskGb: 'limits.disk_gb', networks: 'limits.networks', addresses: 'limits.addresses' } },
    ),
  };

  const inventoryImpl: pb.InventoryServiceServer = {
    listAreas: unary(
      ctx,
      'GET /areas',
      (r: pb.ListAreasRequest) => ({ query: c.listInput(r) }),
      (caller, i: { query: ListInput }) => areas.listAreas(s, caller, i.query),
      (p) => {
        const { items, nextPageToken } = c.pageOf(p, c.area);
        return { areas: items, nextPageToken };
      },
    ),
    getArea: unary(
      ctx,
      'GET /areas/{name}',
      (r: pb.GetAreaRequest) => ({ params: { name: r.name } }),
      (caller, i: { params: Named }) => areas.getArea(s, caller, i.params.name),
      (a) => ({ area: c.area(a) }),
    ),
    createArea: unary(
      ctx,
      'POST /areas',
      (r: pb.CreateAreaRequest) => ({ body: { name: r.name, subnet: r.subnet, gateway: r.gateway, vlanRange: r.vlanRange } }),
      (caller, i: { body: areas.AreaInput }) => areas.createArea(s, caller, i.body),
      (a) => ({ area: c.area(a) }),
    ),
    updateArea: unary(
      ctx,
      'PATCH /areas/{name}',
      (r: pb.UpdateAreaRequest) => ({ params: { name: r.name }, body: c.defined({ name: r.newName, subnet: r.subnet, gateway: r.gateway, vlanRange: r.vlanRange }) }),
      (caller, i: { params: Named; body: Partial<areas.AreaInput> }) => areas.updateArea(s, caller, i.params.name, i.body),
      (a) => ({ area: c.area(a) }),
      { body: { name: 'new_name' } },
    ),
    deleteArea: unary(
      ctx,
      'DELETE /areas/{name}',
      (r: pb.DeleteAreaRequest) => ({ params: { name: r.name } }),
      (caller, i: { params: Named }) => areas.deleteArea(s, caller, i.params.name),
      () => ({}),
    ),
    listPools: unary(
      ctx,
      'GET /pools',
      (r: pb.ListPoolsRequest) => ({ query: c.listInput(r) }),
      (caller, i: { query: ListInput }) => pools.listPools(s, caller, i.query),
      (p) => {
        const { items, nextPageToken } = c.pageOf(p, c.pool);
        return { pools: items, nextPageToken };
      },
    ),
    getPool: unary(
      ctx,
      'GET /pools/{name}',
      (r: pb.GetPoolRequest) => ({ params: { name: r.name } }),
      (caller, i: { params: Named }) => pools.getPool(s, caller, i.params.name),
      (p) => ({ pool: c.pool(p) }),
    ),
    createPool: unary(
      ctx,
      'POST /pools',
      (r: pb.CreatePoolRequest) => ({ body: c.defined({ name: r.name, area: r.area, path: r.path, shared: r.shared, type: r.type }) }),
      (caller, i: { body: { name: string; area: string; path: string; shared?: boolean; type: pools.PoolType } }) => pools.createPool(s, caller, i.body),
      (p) => ({ pool: c.pool(p) }),
    ),
    deletePool: unary(
      ctx,
      'DELETE /pools/{name}',
      (r: pb.DeletePoolRequest) => ({ params: { name: r.name } }),
      (caller, i: { params: Named }) => pools.deletePool(s, caller, i.params.name),
      () => ({}),
    ),
    listTemplates: unary(
      ctx,
      'GET /templates',
      (r: pb.ListTemplatesRequest) => ({ query: c.listInput(r) }),
      (caller, i: { query: ListInput }) => templates.listTemplates(s, caller, i.query),
      (p) => {
        const { items, nextPageToken } = c.pageOf(p, c.template);
        return { templates: items, nextPageToken };
      },
    ),
    getTemplate: unary(
      ctx,
      'GET /templates/{name}',
      (r: pb.GetTemplateRequest) => ({ params: { name: r.name } }),
      (caller, i: { params: Named }) => templates.getTemplate(s, caller, i.params.name),
      (t) => ({ template: c.template(t) }),
    ),
    createTemplate: unary(
      ctx,
      'POST /templates',
      (r: pb.CreateTemplateRequest) => ({
        body: c.defined({ name: r.name, os: r.os, description: r.description, cpu: r.cpu, ramMb: r.ramMb, diskGb: r.diskGb, image: r.image, boot: r.boot }),
      }),
      (caller, i: { body: Parameters<typeof templates.createTemplate>[2] }) => templates.createTemplate(s, caller, i.body),
      (t) => ({ template: c.template(t) }),
    ),
    updateTemplate: unary(
      ctx,
      'PATCH /templates/{name}',
      (r: pb.UpdateTemplateRequest) => ({
        params: { name: r.name },
        body: c.defined({
          name: r.newName,
          os: r.os,
          description: r.description,
          cpu: r.cpu,
          ramMb: r.ramMb,
          diskGb: r.diskGb,
          image: r.image,
          boot: r.bootDisk ? null : r.boot,
        }),
      }),
      (caller, i: { params: Named; body: Partial<templates.TemplateInput> }) => templates.updateTemplate(s, caller, i.params.name, i.body),
      (t) => ({ template: c.template(t) }),
      { body: { name: 'new_name' } },
    ),
    deleteTemplate: unary(
      ctx,
      'DELETE /templates/{name}',
      (r: pb.DeleteTemplateRequest) => ({ params: { name: r.name } }),
      (caller, i: { params: Named }) => templates.deleteTemplate(s, caller, i.params.name),
      () => ({}),
    ),
    listHosts: unary(
      ctx,
      'GET /hosts',
      (r: pb.ListHostsRequest) => ({ query: c.listInput(r) }),
      (caller, i: { query: ListInput }) => hosts.listHosts(s, caller, i.query),
      (p) => {
        const { items, nextPageToken } = c.pageOf(p, c.host);
        return { hosts: items, nextPageToken };
      },
    ),
    getHost: unary(
      ctx,
      'GET /hosts/{id}',
      (r: pb.GetHostRequest) => ({ params: { id: r.id } }),
      (caller, i: { params: Id }) => hosts.getHost(s, caller, i.params.id),
      (h) => ({ host: c.host(h) }),
    ),
    updateHost: unary(
      ctx,
      'PATCH /hosts/{id}',
      (r: pb.UpdateHostRequest) => ({ params: { id: r.id }, body: { maintenance: r.maintenance } }),
      (caller, i: { params: Id; body: { maintenance: boolean } }) => hosts.updateHost(s, caller, i.params.id, i.body),
      (h) => ({ host: c.host(h) }),
    ),
    deleteHost: unary(
      ctx,
      'DELETE /hosts/{id}',
      (r: pb.DeleteHostRequest) => ({ params: { id: r.id } }),
      (caller, i: { params: Id }) => hosts.deleteHost(s, caller, i.params.id),
      () => ({}),
    ),
    rekeyHost: unary(
      ctx,
      'POST /hosts/{id}/rekey',
      (r: pb.RekeyHostRequest) => ({ params: { id: r.id } }),
      (caller, i: { params: Id }) => hosts.rekeyHost(s, caller, i.params.id),
      (h) => ({ host: c.host(h) }),
    ),
    confirmHostOff: unary(
      ctx,
      'POST /hosts/{id}/confirm-off',
      (r: pb.ConfirmHostOffRequest) => ({ params: { id: r.id } }),
      (caller, i: { params: Id }) => hosts.confirmHostOff(s, caller, i.params.id),
      (r) => ({ host: c.host(r.host), evacuations: r.evacuations }),
    ),
    getHostUsage: unary(
      ctx,
      'GET /hosts/{id}/usage',
      (r: pb.GetHostUsageRequest) => ({ params: { id: r.id }, query: c.defined({ from: c.isoOf(r.from), to: c.isoOf(r.to) }) }),
      (caller, i: { params: Id; query: { from?: string; to?: string } }) => hosts.hostUsage(s, caller, i.params.id, i.query),
      c.hostUsage,
    ),
    drainHost: unary(
      ctx,
      'POST /hosts/{id}/drain',
      (r: pb.DrainHostRequest) => ({ params: { id: r.id }, body: c.defined({ mode: r.mode === '' ? undefined : r.mode }) }),
      (caller, i: { params: Id; body: hosts.DrainInput }) => hosts.drainHost(s, caller, i.params.id, i.body),
      (d) => ({ host: c.host(d.host), task: c.task(d.task) }),
    ),
    getHostDrain: unary(
      ctx,
      'GET /hosts/{id}/drain',
      (r: pb.GetHostDrainRequest) => ({ params: { id: r.id } }),
      (caller, i: { params: Id }) => hosts.getHostDrain(s, caller, i.params.id),
      (t) => ({ task: c.task(t) }),
    ),
    getAreaCapacity: unary(
      ctx,
      'GET /areas/{name}/capacity',
      (r: pb.GetAreaCapacityRequest) => ({ params: { name: r.name } }),
      (caller, i: { params: Named }) => areas.areaCapacity(s, caller, i.params.name),
      (a) => ({ area: a.area, survives: a.survives, report: JSON.parse(JSON.stringify(a)) as unknown }),
    ),
    createJoinToken: unary(
      ctx,
      'POST /hosts/join-tokens',
      (r: pb.CreateJoinTokenRequest) =>
        ({ body: c.defined({ area: r.area === '' ? undefined : r.area, expiresIn: r.expiresIn === 0 ? undefined : r.expiresIn, host: r.host === '' ? undefined : r.host }) }),
      (caller, i: { body: { area?: string; expiresIn?: number; host?: string } }) => joinTokens.createJoinToken(s, caller, i.body),
      c.joinTokenCreated,
    ),
    listJoinTokens: unary(
      ctx,
      'GET /hosts/join-tokens',
      (r: pb.ListJoinTokensRequest) => ({ query: c.listInput(r) }),
      (caller, i: { query: ListInput }) => joinTokens.listJoinTokens(s, caller, i.query),
      (p) => {
        const { items, nextPageToken } = c.pageOf(p, c.joinToken);
        return { joinTokens: items, nextPageToken };
      },
    ),
    revokeJoinToken: unary(
      ctx,
      'DELETE /hosts/join-tokens/{id}',
      (r: pb.RevokeJoinTokenRequest) => ({ params: { id: r.id } }),
      (caller, i: { params: Id }) => joinTokens.revokeJoinToken(s, caller, i.params.id),
      () => ({}),
    ),
  };

  return [
    { definition: pb.AuthServiceService, implementation: authImpl },
    { definition: pb.WorkspaceServiceService, implementation: workspaceImpl },
    { definition: pb.NetworkServiceService, implementation: networkImpl },
    { definition: pb.VmServiceService, implementation: vmImpl },
    { definition: pb.TaskServiceService, implementation: taskImpl },
    { definition: pb.QuotaServiceService, implementation: quotaImpl },
    { definition: pb.InventoryServiceService, implementation: inventoryImpl },
  ];
}
