// The permission matrix over gRPC: every RPC of kloudak.api.v1 × every kind of caller, through a
// client built from api.proto, against the rule of its REST twin (testing/permission-rules.ts, the
// table the REST matrix checks too), on PostgreSQL and on embedded PGlite. Every REST operation
// but the account flows has a twin, and every RPC names one.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { status } from '@grpc/grpc-js';
import { PERMISSION_FLAGS } from '../domain/permissions.js';
import { ENGINES, PASSWORD, startHarness, type Harness } from '../testing/harness.js';
import type { SimAgent } from '../agent-api/testing/sim-agent.js';
import {
  freshArea,
  freshDrainedHost,
  freshFrozenHost,
  freshHost,
  freshJoinToken,
  freshNetwork,
  freshPool,
  freshTemplate,
  freshVm,
  freshWorkspace,
  routeKey,
  validBody,
  validParams,
  type World,
} from '../testing/fixtures.js';
import { apiMethods, GrpcTestClient, type GrpcResult } from '../testing/grpc-client.js';
import { expected, RULES, setUpMatrix, type MatrixCaller } from '../testing/permission-rules.js';

/** Each RPC's REST twin. Written by hand: it is the API's spec as much as the proto is. */
const TWINS: Record<string, string> = {
  'AuthService.Login': 'POST /auth/login',
  'AuthService.RefreshToken': 'GET /auth/token',
  'AuthService.Logout': 'POST /auth/logout',
  'AuthService.GetMe': 'GET /me',
  'WorkspaceService.ListWorkspaces': 'GET /workspaces',
  'WorkspaceService.GetWorkspace': 'GET /workspaces/{ws}',
  'WorkspaceService.CreateWorkspace': 'POST /workspaces',
  'WorkspaceService.UpdateWorkspace': 'PATCH /workspaces/{ws}',
  'WorkspaceService.DeleteWorkspace': 'DELETE /workspaces/{ws}',
  'WorkspaceService.ListMembers': 'GET /workspaces/{ws}/members',
  'WorkspaceService.AddMember': 'POST /workspaces/{ws}/members',
  'WorkspaceService.UpdateMember': 'PATCH /workspaces/{ws}/members/{username}',
  'WorkspaceService.RemoveMember': 'DELETE /workspaces/{ws}/members/{username}',
  'NetworkService.ListNetworks': 'GET /workspaces/{ws}/networks',
  'NetworkService.GetNetwork': 'GET /workspaces/{ws}/networks/{name}',
  'NetworkService.CreateNetwork': 'POST /workspaces/{ws}/networks',
  'NetworkService.UpdateNetwork': 'PATCH /workspaces/{ws}/networks/{name}',
  'NetworkService.DeleteNetwork': 'DELETE /workspaces/{ws}/networks/{name}',
  'VmService.ListVms': 'GET /workspaces/{ws}/vms',
  'VmService.GetVm': 'GET /workspaces/{ws}/vms/{name}',
  'VmService.CreateVm': 'POST /workspaces/{ws}/vms',
  'VmService.UpdateVm': 'PATCH /workspaces/{ws}/vms/{name}',
  'VmService.DeleteVm': 'DELETE /workspaces/{ws}/vms/{name}',
  'VmService.StartVm': 'POST /workspaces/{ws}/vms/{name}/actions',
  'VmService.StopVm': 'POST /workspaces/{ws}/vms/{name}/actions',
  'VmService.RebootVm': 'POST /workspaces/{ws}/vms/{name}/actions',
  'VmService.GetVmConsole': 'GET /workspaces/{ws}/vms/{name}/console',
  'TaskService.ListTasks': 'GET /workspaces/{ws}/tasks',
  'TaskService.GetTask': 'GET /workspaces/{ws}/tasks/{id}',
  'QuotaService.GetQuota': 'GET /workspaces/{ws}/quota',
  'QuotaService.SetQuota': 'PUT /workspaces/{ws}/quota',
  'InventoryService.ListAreas': 'GET /areas',
  'InventoryService.GetArea': 'GET /areas/{name}',
  'InventoryService.CreateArea': 'POST /areas',
  'InventoryService.UpdateArea': 'PATCH /areas/{name}',
  'InventoryService.DeleteArea': 'DELETE /areas/{name}',
  'InventoryService.ListPools': 'GET /pools',
  'InventoryService.GetPool': 'GET /pools/{name}',
  'InventoryService.CreatePool': 'POST /pools',
  'InventoryService.DeletePool': 'DELETE /pools/{name}',
  'InventoryService.ListTemplates': 'GET /templates',
  'InventoryService.GetTemplate': 'GET /templates/{name}',
  'InventoryService.CreateTemplate': 'POST /templates',
  'InventoryService.UpdateTemplate': 'PATCH /templates/{name}',
  'InventoryService.DeleteTemplate': 'DELETE /templates/{name}',
  'InventoryService.ListHosts': 'GET /hosts',
  'InventoryService.GetHost': 'GET /hosts/{id}',
  'InventoryService.UpdateHost': 'PATCH /hosts/{id}',
  'InventoryService.DeleteHost': 'DELETE /hosts/{id}',
  'InventoryService.RekeyHost': 'POST /hosts/{id}/rekey',
  'InventoryService.ConfirmHostOff': 'POST /hosts/{id}/confirm-off',
  'InventoryService.GetHostUsage': 'GET /hosts/{id}/usage',
  'InventoryService.DrainHost': 'POST /hosts/{id}/drain',
  'InventoryService.GetHostDrain': 'GET /hosts/{id}/drain',
  'InventoryService.GetAreaCapacity': 'GET /areas/{name}/capacity',
  'InventoryService.CreateJoinToken': 'POST /hosts/join-tokens',
  'InventoryService.ListJoinTokens': 'GET /hosts/join-tokens',
  'InventoryService.RevokeJoinToken': 'DELETE /hosts/join-tokens/{id}',
};

/** Server streams, twins of the REST event streams (WebSocket / SSE, not RouteSpecs): grpc/events.test.ts checks them. */
const STREAMS: Record<string, string> = {
  'EventService.WatchEvents': 'GET /workspaces/{ws}/events',
  'EventService.WatchInfraEvents': 'GET /events',
};

/** REST operations deliberately without a twin: people's account flows (see the README). */
const REST_ONLY = ['POST /auth/signup', 'POST /auth/password'];

const CODE = { 401: status.UNAUTHENTICATED, 403: status.PERMISSION_DENIED, 404: status.NOT_FOUND } as const;

const camel = (k: string) => k.replace(/_([a-z])/g, (_m, c: string) => c.toUpperCase());

/** The gRPC request of `method` carrying what REST would take in its path and body. */
function requestOf(method: string, params: Record<string, string>, body: unknown): Record<string, unknown> {
  const req: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(params)) req[k === 'ws' ? 'workspace' : k] = v;
  if (method.endsWith('.SetQuota')) return { ...req, limits: body };
  if (method.startsWith('VmService.') && method.endsWith('Vm') && /Start|Stop|Reboot/.test(method)) return req;
  const b = { ...((body ?? {}) as Record<string, unknown>) };
  if (/\.Update(Network|Vm|Area|Template)$/.test(method) && 'name' in b) {
    b['newName'] = b['name'];
    delete b['name'];
  }
  if (b['permissions'] && typeof b['permissions'] === 'object') {
    b['permissions'] = Object.fromEntries(Object.entries(b['permissions'] as Record<string, boolean>).map(([k, v]) => [camel(k), v]));
  }
  return { ...req, ...b };
}


for (const engine of ENGINES) {
  describe(`gRPC permission matrix on ${engine}`, () => {
    let h: Harness;
    let w: World;
    let g: GrpcTestClient;
    let callers: MatrixCaller[];
    let simHostId: string;
    let simAgent: SimAgent | undefined;
    let owner: { username: string; userId: string };
    let target: { username: string; userId: string };

    const db = () => h.orch.db.client;
    const wsFor = async (c: MatrixCaller, withTarget: boolean) =>
      freshWorkspace(db(), [
        { userId: owner.userId, flags: PERMISSION_FLAGS },
        ...(c.kind === 'member' ? [{ userId: c.userId, flags: c.flags }] : []),
        ...(withTarget ? [{ userId: target.userId, flags: [] }] : []),
      ]);

    /** The request of `method` for caller `c`, on fresh objects where a success would change the fixtures. */
    async function caseFor(method: string, rest: string, c: MatrixCaller): Promise<{ req: Record<string, unknown>; token?: string | null; after?: (r: GrpcResult) => Promise<void> }> {
      const route = h.orch.api.routes.find((r) => routeKey(r) === rest)!;
      const params = validParams(route, w, target.username);
      const body = route.body ? validBody(rest, w, target.username) : undefined;
      const plain = (p: Record<string, string> = params) => requestOf(method, p, body);
      switch (rest) {
        case 'POST /auth/login':
          return { req: { username: owner.username, password: PASSWORD } };
        case 'POST /auth/logout':
          return { req: {}, token: c.kind === 'anon' ? null : await h.login(c.username, c.password) };
        case 'PATCH /workspaces/{ws}':
        case 'POST /workspaces/{ws}/members':
          return { req: plain({ ws: (await wsFor(c, false)).name }) };
        case 'DELETE /workspaces/{ws}':
          return {
            req: plain({ ws: (await wsFor(c, false)).name }),
            after: async (r) => {
              // Deleting a workspace refuses its members' tokens: log in again.
              if (r.code === status.OK && c.kind === 'member') c.token = await h.login(c.username, c.password);
            },
          };
        case 'PATCH /workspaces/{ws}/members/{username}':
        case 'DELETE /workspaces/{ws}/members/{username}':
          return { req: plain({ ws: (await wsFor(c, true)).name, username: target.username }) };
        case 'DELETE /workspaces/{ws}/networks/{name}':
          return { req: plain({ ws: w.workspace.name, name: (await freshNetwork(db(), w)).name }) };
        case 'DELETE /workspaces/{ws}/vms/{name}':
        case 'GET /workspaces/{ws}/vms/{name}/console':
          return { req: plain({ ws: w.workspace.name, name: (await freshVm(db(), w, simHostId)).name }) };
        case 'POST /workspaces/{ws}/vms/{name}/actions': {
          // A VM in the state the action starts from.
          const vm = await freshVm(db(), w, simHostId);
          if (method.endsWith('StartVm')) await db().vm.update({ where: { id: vm.id }, data: { state: 'stopped' } });
          return { req: plain({ ws: w.workspace.name, name: vm.name }) };
        }
        case 'DELETE /areas/{name}':
          return { req: plain({ name: (await freshArea(db())).name }) };
        case 'DELETE /pools/{name}':
          return { req: plain({ name: (await freshPool(db(), w.area.id)).name }) };
        case 'DELETE /templates/{name}':
          return { req: plain({ name: (await freshTemplate(db())).name }) };
        case 'DELETE /hosts/join-tokens/{id}':
          return { req: plain({ id: (await freshJoinToken(db(), w.area.id)).id }) };
        case 'GET /hosts/{id}/drain':
          return { req: plain({ id: (await freshDrainedHost(db(), w.area.id)).id }) };
        case 'POST /hosts/{id}/confirm-off':
          return { req: plain({ id: (await freshFrozenHost(db(), w.area.id)).id }) };
        case 'DELETE /hosts/{id}':
        case 'POST /hosts/{id}/drain':
        case 'POST /hosts/{id}/rekey':
          return { req: plain({ id: (await freshHost(db(), w.area.id)).id }) };
        default:
          return { req: plain() };
      }
    }

    before(async () => {
      h = await startHarness(engine);
      g = new GrpcTestClient(`127.0.0.1:${h.orch.grpcPort}`);
      ({ owner, target, callers, world: w, simHostId, simAgent } = await setUpMatrix(h));
    });
    after(async () => {
      g?.close();
      await simAgent?.stop();
      await h?.close();
    });

    it('serves one RPC per REST operation (but the account flows), each naming its twin', () => {
      const served = apiMethods();
      assert.deepEqual(served, [...Object.keys(TWINS), ...Object.keys(STREAMS)].sort(), 'RPCs of api.proto and the TWINS and STREAMS tables differ');
      const rest = h.orch.api.routes.map(routeKey);
      assert.deepEqual(Object.values(TWINS).filter((k) => !rest.includes(k)), [], 'twins that are not REST operations');
      const twinned = new Set(Object.values(TWINS));
      assert.deepEqual(rest.filter((k) => !twinned.has(k)).sort(), [...REST_ONLY].sort(), 'REST operations without a gRPC twin');
    });

    for (const [method, rest] of Object.entries(TWINS)) {
      const rule = RULES[rest]!;
      it(`${method} (${rest})`, async () => {
        const [service, rpc] = method.split('.') as [string, string];
        const mismatches: string[] = [];
        for (const c of callers) {
          const want = expected(rule, c);
          const k = await caseFor(method, rest, c);
          const token = k.token === undefined ? c.token : (k.token ?? undefined);
          const r = await g.call(service, rpc, k.req, token);
          const ok = want === 'success' ? r.code === status.OK : r.code === CODE[want];
          if (!ok) mismatches.push(`${c.label}: expected ${want === 'success' ? 'OK' : status[CODE[want]]}, got ${status[r.code]} ${r.message ?? ''}`);
          await k.after?.(r);
        }
        assert.deepEqual(mismatches, [], `${method}\n  ${mismatches.join('\n  ')}`);
      });
    }

    it('answers a non-member exactly like a missing workspace (NOT_FOUND, same message but the name)', async () => {
      const outsider = callers.find((c) => c.kind === 'outsider')!;
      for (const [service, rpc, extra] of [
        ['WorkspaceService', 'GetWorkspace', {}],
        ['WorkspaceService', 'DeleteWorkspace', {}],
        ['VmService', 'ListVms', {}],
        ['WorkspaceService', 'AddMember', { username: outsider.username }],
      ] as const) {
        const real = await g.call(service, rpc, { workspace: w.workspace.name, ...extra }, outsider.token);
        const missing = await g.call(service, rpc, { workspace: 'no-such-workspace', ...extra }, outsider.token);
        assert.equal(real.code, status.NOT_FOUND, rpc);
        assert.equal(missing.code, status.NOT_FOUND);
        assert.equal(real.message?.replace(w.workspace.name, 'X'), missing.message?.replace('no-such-workspace', 'X'));
      }
    });
  });
}
