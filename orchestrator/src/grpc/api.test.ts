// The public gRPC API over a real socket, with a client built from api.proto: error statuses and
// their google.rpc details, paging against REST's, the same views as REST, server reflection and
// the standard health service.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { protoPath as healthProtoPath } from 'grpc-health-check';
import protobuf from 'protobufjs';
import { PERMISSION_FLAGS } from '../domain/permissions.js';
import { startHarness, connectSimHost, PASSWORD, type Harness } from '../testing/harness.js';
import { createWorld, freshTemplate, freshVm, type World } from '../testing/fixtures.js';
import { GrpcTestClient, type GrpcResult } from '../testing/grpc-client.js';
import type { SimAgent } from '../agent-api/testing/sim-agent.js';

// google/rpc/status.proto and error_details.proto (googleapis), as an independent decoder.
const RPC_JSON = {
  nested: {
    google: {
      nested: {
        protobuf: {
          nested: {
            Any: { fields: { type_url: { type: 'string', id: 1 }, value: { type: 'bytes', id: 2 } } },
            Duration: { fields: { seconds: { type: 'int64', id: 1 }, nanos: { type: 'int32', id: 2 } } },
          },
        },
        rpc: {
          nested: {
            Status: { fields: { code: { type: 'int32', id: 1 }, message: { type: 'string', id: 2 }, details: { rule: 'repeated', type: 'google.protobuf.Any', id: 3 } } },
            ErrorInfo: { fields: { reason: { type: 'string', id: 1 }, domain: { type: 'string', id: 2 }, metadata: { keyType: 'string', type: 'string', id: 3 } } },
            BadRequest: {
              fields: { field_violations: { rule: 'repeated', type: 'FieldViolation', id: 1 } },
              nested: { FieldViolation: { fields: { field: { type: 'string', id: 1 }, description: { type: 'string', id: 2 } } } },
            },
            RetryInfo: { fields: { retry_delay: { type: 'google.protobuf.Duration', id: 1 } } },
          },
        },
      },
    },
  },
};
const rpc = protobuf.Root.fromJSON(RPC_JSON as unknown as protobuf.INamespace);

interface Details {
  code: number;
  message: string;
  reason?: string;
  metadata?: Record<string, string>;
  violations: { field: string; description: string }[];
  retrySeconds?: number;
}

/** The google.rpc.Status of an error's trailers. */
function details(r: GrpcResult): Details {
  const bin = r.metadata?.get('grpc-status-details-bin')[0];
  assert.ok(Buffer.isBuffer(bin), `no grpc-status-details-bin in ${status[r.code]} ${r.message}`);
  const st = rpc.lookupType('google.rpc.Status').toObject(rpc.lookupType('google.rpc.Status').decode(bin), { longs: Number }) as {
    code: number;
    message: string;
    details?: { type_url: string; value: Uint8Array }[];
  };
  const out: Details = { code: st.code, message: st.message, violations: [] };
  for (const a of st.details ?? []) {
    const name = a.type_url.replace('type.googleapis.com/', '');
    const t = rpc.lookupType(name);
    const v = t.toObject(t.decode(a.value), { longs: Number }) as Record<string, unknown>;
    if (name === 'google.rpc.ErrorInfo') {
      out.reason = v['reason'] as string;
      out.metadata = (v['metadata'] as Record<string, string>) ?? {};
      assert.equal(v['domain'], 'kloudak.io');
    }
    if (name === 'google.rpc.BadRequest') out.violations = (v['field_violations'] as Details['violations']) ?? [];
    if (name === 'google.rpc.RetryInfo') out.retrySeconds = (v['retry_delay'] as { seconds: number }).seconds;
  }
  return out;
}

const { status } = grpc;

describe('public gRPC API', () => {
  let h: Harness;
  let g: GrpcTestClient;
  let w: World;
  let sim: SimAgent | undefined;
  let simHostId: string;
  let owner: { username: string; token: string };

  before(async () => {
    h = await startHarness('postgres', { loginMaxPerUser: 3 });
    g = new GrpcTestClient(`127.0.0.1:${h.orch.grpcPort}`);
    const u = await h.user('grpcowner');
    owner = { username: u.username, token: u.token };
    const id = (await h.orch.db.client.user.findUniqueOrThrow({ where: { username: u.username } })).id;
    w = await createWorld(h.orch.db.client, [{ userId: id, flags: PERMISSION_FLAGS }]);
    const s = await connectSimHost(h, w.area.id, w.pool.name);
    sim = s.agent;
    simHostId = s.hostId;
  });
  after(async () => {
    g?.close();
    await sim?.stop();
    await h?.close();
  });

  it('serves on KLOUDAK_GRPC_PORT beside REST, and logs in with a password', async () => {
    assert.ok(h.orch.grpcPort > 0);
    assert.equal(h.orch.grpcUrl, `127.0.0.1:${h.orch.grpcPort}`);
    const r = await g.call('AuthService', 'Login', { username: owner.username, password: PASSWORD });
    assert.equal(r.code, status.OK, r.message);
    const me = await g.call('AuthService', 'GetMe', {}, r.value.token);
    assert.equal(me.value.user.username, owner.username);
    assert.equal(me.value.workspaces[w.workspace.name].vmCanAdd, true);
  });

  it('answers the same views as REST (a VM, a page of templates)', async () => {
    const rest = await h.admin.client.get(`/api/v1/workspaces/${w.workspace.name}/vms/${w.vm.name}`);
    const r = await g.call('VmService', 'GetVm', { workspace: w.workspace.name, name: w.vm.name }, owner.token);
    assert.equal(r.code, status.OK, r.message);
    const v = r.value.vm;
    assert.deepEqual(
      { id: v.id, name: v.name, area: v.area, template: v.template, host: v.host, state: v.state, cpu: v.cpu, ramMb: v.ramMb, ip: v.ip, ha: v.ha },
      { id: rest.body.id, name: rest.body.name, area: rest.body.area, template: rest.body.template, host: rest.body.host, state: rest.body.state, cpu: rest.body.cpu, ramMb: rest.body.ramMb, ip: rest.body.ip, ha: rest.body.ha },
    );
    assert.deepEqual(
      v.interfaces.map((i: { network: string; mac: string; ip: string }) => ({ network: i.network, mac: i.mac, ip: i.ip })),
      rest.body.interfaces.map((i: { network: string; mac: string; ip: string }) => ({ network: i.network, mac: i.mac, ip: i.ip })),
    );
    assert.equal(new Date(Number(v.createdAt.seconds) * 1000 + v.createdAt.nanos / 1e6).toISOString(), rest.body.createdAt);
  });

  it('pages like REST: the same default (100) and maximum (1000), the same cursors', async () => {
    for (let i = 0; i < 101; i++) await freshTemplate(h.orch.db.client);
    const rest = await h.admin.client.get('/api/v1/templates');
    const r = await g.call('InventoryService', 'ListTemplates', {}, owner.token);
    assert.equal(r.code, status.OK);
    assert.equal(r.value.templates.length, 100);
    assert.equal(rest.body.items.length, 100);
    assert.equal(r.value.nextPageToken, rest.body.nextCursor);
    const next = await g.call('InventoryService', 'ListTemplates', { pageSize: 2, pageToken: r.value.nextPageToken }, owner.token);
    const restNext = await h.admin.client.get(`/api/v1/templates?limit=2&after=${encodeURIComponent(rest.body.nextCursor)}`);
    assert.deepEqual(next.value.templates.map((t: { name: string }) => t.name), restNext.body.items.map((t: { name: string }) => t.name));
    assert.equal(next.value.nextPageToken, restNext.body.nextCursor ?? '');
    const all = await g.call('InventoryService', 'ListTemplates', { pageSize: 1000 }, owner.token);
    assert.equal(all.value.nextPageToken, '', 'the last page has an empty token');
    for (const pageSize of [1001, -1]) {
      const bad = await g.call('InventoryService', 'ListTemplates', { pageSize }, owner.token);
      assert.equal(bad.code, status.INVALID_ARGUMENT, `page_size ${pageSize}`);
      assert.deepEqual(details(bad).violations.map((v) => v.field), ['page_size']);
      assert.equal((await h.admin.client.get(`/api/v1/templates?limit=${pageSize}`)).status, 400);
    }
  });

  it('maps every kind of error to its status, with google.rpc details', async () => {
    // UNAUTHENTICATED: no token, a bad token, a malformed header.
    assert.equal((await g.call('WorkspaceService', 'ListWorkspaces', {})).code, status.UNAUTHENTICATED);
    assert.equal((await g.call('WorkspaceService', 'ListWorkspaces', {}, 'not.a.token')).code, status.UNAUTHENTICATED);
    const malformed = await g.call('WorkspaceService', 'ListWorkspaces', {}, undefined, { authorization: 'Basic abc' });
    assert.equal(malformed.code, status.UNAUTHENTICATED);
    assert.equal(details(malformed).reason, 'unauthenticated');
    // PERMISSION_DENIED: an admin operation.
    const denied = await g.call('InventoryService', 'ListHosts', {}, owner.token);
    assert.equal(denied.code, status.PERMISSION_DENIED);
    assert.equal(details(denied).reason, 'forbidden');
    // NOT_FOUND.
    const missing = await g.call('VmService', 'GetVm', { workspace: w.workspace.name, name: 'no-such-vm' }, owner.token);
    assert.equal(missing.code, status.NOT_FOUND);
    assert.deepEqual({ reason: details(missing).reason, kind: details(missing).metadata?.['kind'] }, { reason: 'not_found', kind: 'vm' });
    // INVALID_ARGUMENT, naming the request's fields (snake_case, renamed where REST's differ).
    const badName = await g.call('WorkspaceService', 'CreateWorkspace', { name: '-bad name' }, owner.token);
    assert.equal(badName.code, status.INVALID_ARGUMENT);
    assert.deepEqual(details(badName).violations.map((v) => v.field), ['name']);
    const badRename = await g.call('NetworkService', 'UpdateNetwork', { workspace: w.workspace.name, name: w.network.name, newName: '' }, owner.token);
    assert.equal(badRename.code, status.INVALID_ARGUMENT);
    assert.deepEqual(details(badRename).violations.map((v) => v.field), ['new_name']);
    const badRam = await g.call('VmService', 'CreateVm', { workspace: w.workspace.name, name: 'x1', template: w.template.name, networks: [w.network.name], ramMb: 1 }, owner.token);
    assert.equal(badRam.code, status.INVALID_ARGUMENT);
    assert.deepEqual(details(badRam).violations.map((v) => v.field), ['ram_mb']);
    const badWs = await g.call('VmService', 'ListVms', { workspace: '' }, owner.token);
    assert.deepEqual(details(badWs).violations.map((v) => v.field), ['workspace']);
    const noTemplate = await g.call('VmService', 'CreateVm', { workspace: w.workspace.name, name: 'x2', template: 'nope', networks: [w.network.name] }, owner.token);
    assert.equal(noTemplate.code, status.INVALID_ARGUMENT, 'a rule of the use case naming its field');
    assert.deepEqual(details(noTemplate).violations.map((v) => v.field), ['template']);
    // ALREADY_EXISTS: a name taken (by the use case's check, and by the database's unique index).
    const dup = await g.call('VmService', 'CreateVm', { workspace: w.workspace.name, name: w.vm.name, template: w.template.name, networks: [w.network.name] }, owner.token);
    assert.equal(dup.code, status.ALREADY_EXISTS, dup.message);
    assert.equal(details(dup).reason, 'conflict');
    const dupWs = await g.call('WorkspaceService', 'CreateWorkspace', { name: w.workspace.name }, owner.token);
    assert.equal(dupWs.code, status.ALREADY_EXISTS, dupWs.message);
    // FAILED_PRECONDITION: a state that forbids the change.
    const running = await freshVm(h.orch.db.client, w, simHostId);
    const start = await g.call('VmService', 'StartVm', { workspace: w.workspace.name, name: running.name }, owner.token);
    assert.equal(start.code, status.FAILED_PRECONDITION, start.message);
    const notEmpty = await g.call('WorkspaceService', 'DeleteWorkspace', { workspace: w.workspace.name }, owner.token);
    assert.equal(notEmpty.code, status.FAILED_PRECONDITION, notEmpty.message);
    // RESOURCE_EXHAUSTED: a quota, with what it limits…
    const set = await g.call('QuotaService', 'SetQuota', { workspace: w.workspace.name, limits: { networks: 1 } }, h.admin.token);
    assert.equal(set.code, status.OK, set.message);
    assert.equal(set.value.quota.limits.networks, 1);
    assert.equal(set.value.quota.limits.vms, undefined, 'unset: unlimited');
    const over = await g.call('NetworkService', 'CreateNetwork', { workspace: w.workspace.name, name: 'one-too-many', area: w.area.name }, owner.token);
    assert.equal(over.code, status.RESOURCE_EXHAUSTED, over.message);
    assert.equal(details(over).metadata?.['quota'], 'networks');
    await g.call('QuotaService', 'SetQuota', { workspace: w.workspace.name, limits: {} }, h.admin.token);
    // …and a rate limit, with when to retry (loginMaxPerUser is 3 here).
    let limited: GrpcResult | undefined;
    for (let i = 0; i < 5 && limited?.code !== status.RESOURCE_EXHAUSTED; i++) {
      limited = await g.call('AuthService', 'Login', { username: 'rate-limited-user', password: 'Wrong-Passw0rd-x' });
    }
    assert.equal(limited?.code, status.RESOURCE_EXHAUSTED);
    const d = details(limited!);
    assert.equal(d.reason, 'rate_limited');
    assert.ok((d.retrySeconds ?? 0) > 0, JSON.stringify(d));
  });

  it('counts and times its calls in /metrics, beside REST', async () => {
    await g.call('VmService', 'GetVm', { workspace: w.workspace.name, name: w.vm.name }, owner.token);
    await g.call('VmService', 'GetVm', { workspace: w.workspace.name, name: 'no-such-vm' }, owner.token);
    const m = await h.anon.get('/metrics');
    assert.equal(m.status, 200);
    const count = (code: string) => Number(new RegExp(`^kloudak_grpc_requests_total\\{method="/kloudak.api.v1.VmService/GetVm",code="${code}"\\} (\\d+)`, 'm').exec(m.body as string)?.[1] ?? 0);
    assert.ok(count('OK') >= 1, 'OK calls counted');
    assert.ok(count('NOT_FOUND') >= 1, 'NOT_FOUND calls counted');
    assert.match(m.body as string, /^kloudak_grpc_request_duration_seconds_count\{method="\/kloudak.api.v1.VmService\/GetVm"\} \d+/m);
  });

  it('offers server reflection: the services and their descriptors, without the .proto files', async () => {
    const reflectionProto = join(dirname(createRequire(import.meta.url).resolve('@grpc/reflection')), '../proto/grpc/reflection/v1/reflection.proto');
    const pkg = grpc.loadPackageDefinition(protoLoader.loadSync(reflectionProto, { keepCase: true, defaults: true })) as unknown as {
      grpc: { reflection: { v1: { ServerReflection: new (a: string, c: grpc.ChannelCredentials) => grpc.Client } } };
    };
    const client = new pkg.grpc.reflection.v1.ServerReflection(`127.0.0.1:${h.orch.grpcPort}`, grpc.credentials.createInsecure()) as grpc.Client & {
      ServerReflectionInfo(): grpc.ClientDuplexStream<object, Record<string, any>>; // eslint-disable-line @typescript-eslint/no-explicit-any
    };
    const ask = (req: object) =>
      new Promise<Record<string, any>>((resolve, reject) => { // eslint-disable-line @typescript-eslint/no-explicit-any
        const stream = client.ServerReflectionInfo();
        stream.once('data', (d) => {
          resolve(d);
          stream.end();
        });
        stream.once('error', reject);
        stream.write(req);
      });
    const listed = await ask({ list_services: '*' });
    const names = (listed['list_services_response'].service as { name: string }[]).map((s) => s.name);
    for (const n of ['kloudak.api.v1.VmService', 'kloudak.api.v1.InventoryService', 'kloudak.api.v1.AuthService', 'grpc.health.v1.Health']) {
      assert.ok(names.includes(n), `${n} in ${names.join(', ')}`);
    }
    const file = await ask({ file_containing_symbol: 'kloudak.api.v1.VmService' });
    const protos = file['file_descriptor_response'].file_descriptor_proto as Buffer[];
    assert.ok(protos.length > 0);
    const text = Buffer.concat(protos).toString('latin1');
    assert.ok(text.includes('ListVms') && text.includes('CreateVmRequest'), 'the descriptor describes VmService');
    client.close();
  });

  it('serves grpc.health.v1: SERVING for the server and each service, NOT_FOUND for others', async () => {
    const pkg = grpc.loadPackageDefinition(protoLoader.loadSync(healthProtoPath, { keepCase: true, enums: String })) as unknown as {
      grpc: { health: { v1: { Health: new (a: string, c: grpc.ChannelCredentials) => grpc.Client } } };
    };
    const client = new pkg.grpc.health.v1.Health(`127.0.0.1:${h.orch.grpcPort}`, grpc.credentials.createInsecure()) as grpc.Client & {
      Check(req: { service: string }, cb: (err: grpc.ServiceError | null, res?: { status: string }) => void): void;
    };
    const check = (service: string) =>
      new Promise<{ code: number; status?: string }>((resolve) => client.Check({ service }, (err, res) => resolve(err ? { code: err.code } : { code: 0, status: res!.status })));
    assert.deepEqual(await check(''), { code: 0, status: 'SERVING' });
    assert.deepEqual(await check('kloudak.api.v1.VmService'), { code: 0, status: 'SERVING' });
    assert.equal((await check('no.such.Service')).code, status.NOT_FOUND);
    client.close();
  });
});
