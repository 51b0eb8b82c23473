// Behaviour of the REST API over real HTTP, on PostgreSQL and on embedded PGlite. The tests of an
// engine share one orchestrator but no state: each makes the users, names and rows it needs
// (unique names, subnets no other test uses) and puts the clock back when it moves it, so any one
// of them passes alone (--test-name-pattern) or in any order.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { SignJWT, generateKeyPair, decodeJwt } from 'jose';
import { ENGINES, PASSWORD, startHarness, Client, type Harness } from '../testing/harness.js';
import { areaPlacementSnapshot } from '../store/claims.js';
import { freshArea, freshSubnet, freshTemplate, freshWorkspace, uniq } from '../testing/fixtures.js';

function b64url(o: unknown): string {
  return Buffer.from(JSON.stringify(o)).toString('base64url');
}

for (const engine of ENGINES) {
  describe(`REST API on ${engine}`, () => {
    let h: Harness;
    let now = Date.now();
    const clock = { now: () => now };
    before(async () => {
      h = await startHarness(engine, { loginMaxPerUser: 5, loginMaxPerAddress: 10_000 }, clock);
    });
    after(async () => {
      await h?.close();
    });

    it('serves health, readiness, metrics and an OpenAPI document covering every route', async () => {
      assert.equal((await h.anon.get('/healthz')).status, 200);
      const ready = await h.anon.get('/readyz');
      assert.equal(ready.status, 200);
      assert.deepEqual(ready.body.pending, []);
      const doc = await h.anon.get('/api/v1/openapi.json');
      assert.equal(doc.body.openapi, '3.1.0');
      for (const r of h.orch.api.routes) {
        assert.ok(doc.body.paths[`/api/v1${r.path}`]?.[r.method], `${r.method} ${r.path} missing from OpenAPI`);
      }
      // The event streams (served beside the route table): WebSocket, SSE, since, token, Last-Event-ID, the Event schema.
      for (const path of ['/api/v1/workspaces/{ws}/events', '/api/v1/events']) {
        const op = doc.body.paths[path]?.get as { parameters: { name: string; in: string }[]; responses: Record<string, { content?: Record<string, unknown> }> } | undefined;
        assert.ok(op, `${path} missing from OpenAPI`);
        const params = op.parameters.map((p) => `${p.in}:${p.name}`);
        for (const want of ['query:since', 'query:token', 'header:Last-Event-ID']) assert.ok(params.includes(want), `${path}: ${want}`);
        assert.ok(op.responses['101'], `${path}: WebSocket upgrade`);
        assert.ok(op.responses['200']?.content?.['text/event-stream'], `${path}: SSE`);
      }
      assert.ok(doc.body.paths['/api/v1/workspaces/{ws}/events'].get.parameters.some((p: { name: string; in: string }) => p.in === 'path' && p.name === 'ws'));
      assert.deepEqual(doc.body.components.schemas.Event.required, ['seq', 'time', 'workspace', 'entity', 'id', 'event', 'state', 'task']);
      assert.equal(doc.body.components.schemas.StreamReset.properties.type.const, 'reset');
      // Client generators name methods after operationIds: one style (camelCase), each used once.
      const ids: string[] = Object.values(doc.body.paths as Record<string, Record<string, { operationId: string }>>).flatMap((ops) =>
        Object.values(ops).map((op) => op.operationId),
      );
      assert.equal(ids.length, h.orch.api.routes.length + 2, 'every route and the two event streams');
      assert.deepEqual(ids.filter((id) => !/^[a-z][a-zA-Z0-9]*$/.test(id)), [], 'operationIds that are not camelCase');
      assert.deepEqual(ids.filter((id, i) => ids.indexOf(id) !== i), [], 'operationIds used twice');
      const m = await h.anon.get('/metrics');
      assert.match(m.body as string, /kloudak_http_requests_total\{method="GET",route="\/api\/v1\/openapi.json",status="200"\}/);
      const unknown = await h.anon.get('/api/v1/nope');
      assert.equal(unknown.status, 404);
      assert.equal(unknown.body.error.code, 'not_found');
      assert.ok(unknown.headers.get('x-request-id'));
    });

    it('signs up with validation: weak passwords, bad names and duplicates are refused', async () => {
      const carol = uniq('carol');
      const dave = uniq('dave');
      const ok = await h.anon.post('/api/v1/auth/signup', { username: carol, email: `${carol.toUpperCase()}@Example.test`, password: PASSWORD });
      assert.equal(ok.status, 201);
      assert.equal(ok.body.email, `${carol}@example.test`);
      assert.equal(ok.body.passwordHash, undefined);
      const dup = await h.anon.post('/api/v1/auth/signup', { username: carol, email: `${carol}-2@example.test`, password: PASSWORD });
      assert.equal(dup.status, 409);
      const dupMail = await h.anon.post('/api/v1/auth/signup', { username: `${carol}-2`, email: `${carol}@example.test`, password: PASSWORD });
      assert.equal(dupMail.status, 409);
      const weak = await h.anon.post('/api/v1/auth/signup', { username: dave, email: `${dave}@example.test`, password: 'short' });
      assert.equal(weak.status, 400);
      assert.match(weak.body.error.message, /at least 10/);
      const badName = await h.anon.post('/api/v1/auth/signup', { username: 'Dave Smith', email: `${dave}@example.test`, password: PASSWORD });
      assert.equal(badName.status, 400);
      assert.equal(badName.body.error.details.problems[0].path, '/username');
      const extra = await h.anon.post('/api/v1/auth/signup', { username: dave, email: `${dave}@example.test`, password: PASSWORD, isAdmin: true });
      assert.equal(extra.status, 400, 'unknown properties (isAdmin) are refused');
    });

    it('logs in, refreshes, accepts both header forms, and logs out', async () => {
      const u = await h.user('erin');
      assert.equal((await u.client.get('/api/v1/me')).status, 200);
      const viaHeader = await h.anon.req('GET', '/api/v1/me', undefined, { token: u.token });
      assert.equal(viaHeader.status, 200);
      assert.equal(viaHeader.body.user.username, u.username);
      await u.client.post('/api/v1/workspaces', { name: `ws-${u.username}` });
      const fresh = await u.client.get('/api/v1/auth/token');
      assert.equal(fresh.status, 200);
      const claims = decodeJwt(fresh.body.token);
      assert.equal(claims['username'], u.username);
      assert.equal(claims['iss'], 'kloudak');
      assert.equal(claims['aud'], 'kloudak-api');
      assert.deepEqual(Object.keys(claims['workspaces'] as object), [`ws-${u.username}`]);
      assert.equal((claims['workspaces'] as Record<string, Record<string, boolean>>)[`ws-${u.username}`]?.['vm_can_delete'], true);
      const out = await u.client.post('/api/v1/auth/logout');
      assert.equal(out.status, 204);
      assert.equal((await u.client.get('/api/v1/me')).status, 401, 'logged-out token refused');
      assert.equal((await new Client(h.url, fresh.body.token).get('/api/v1/me')).status, 200, 'other tokens still valid');
    });

    it('refuses forged, tampered, expired and stale tokens', async () => {
      const u = await h.user('frank');
      const [head, payload, sig] = u.token.split('.') as [string, string, string];
      const claims = JSON.parse(Buffer.from(payload, 'base64url').toString());
      const none = `${b64url({ alg: 'none', typ: 'JWT' })}.${payload}.`;
      const tampered = `${head}.${b64url({ ...claims, admin: true })}.${sig}`;
      const other = await generateKeyPair('EdDSA', { crv: 'Ed25519' });
      const foreign = await new SignJWT({ ...claims }).setProtectedHeader({ alg: 'EdDSA' }).sign(other.privateKey);
      for (const [what, t] of [['alg=none', none], ['tampered payload', tampered], ['foreign key', foreign]] as const) {
        const r = await new Client(h.url, t).get('/api/v1/me');
        assert.equal(r.status, 401, what);
        assert.equal(r.body.error.code, 'unauthenticated');
      }
      // Expired: move the orchestrator's clock past the token's lifetime.
      now += (h.config.tokenTtlSeconds + 5) * 1000;
      try {
        assert.equal((await u.client.get('/api/v1/me')).status, 401, 'expired');
      } finally {
        now -= (h.config.tokenTtlSeconds + 5) * 1000;
      }
      assert.equal((await u.client.get('/api/v1/me')).status, 200);
      // Password change: every earlier token is refused, new logins work with the new password.
      const changed = await u.client.post('/api/v1/auth/password', { currentPassword: PASSWORD, newPassword: 'An0ther-Long-Passphrase' });
      assert.equal(changed.status, 204);
      assert.equal((await u.client.get('/api/v1/me')).status, 401, 'token from before the password change');
      assert.equal((await h.anon.post('/api/v1/auth/login', { username: u.username, password: PASSWORD })).status, 401);
      const t2 = await h.login(u.username, 'An0ther-Long-Passphrase');
      // Deleted user.
      await h.orch.db.client.user.delete({ where: { username: u.username } });
      assert.equal((await new Client(h.url, t2).get('/api/v1/me')).status, 401, 'deleted user');
      // Malformed headers.
      assert.equal((await h.anon.req('GET', '/api/v1/me', undefined, { authorization: 'Basic abc' })).status, 401);
      assert.equal((await h.anon.req('GET', '/api/v1/me', undefined, { token: 'a b' })).status, 401);
    });

    it('applies a permission change from the member\'s next request, without signing them out', async () => {
      const owner = await h.user('gina');
      const member = await h.user('hank');
      const ws = `perm-${owner.username}`;
      await owner.client.post('/api/v1/workspaces', { name: ws });
      assert.equal((await owner.client.post(`/api/v1/workspaces/${ws}/members`, { username: member.username, permissions: { vm_can_add: true, user_can_edit: true } })).status, 201);
      assert.equal((await member.client.get(`/api/v1/workspaces/${ws}`)).status, 200, 'being added keeps tokens valid');
      assert.equal((await member.client.patch(`/api/v1/workspaces/${ws}`, { description: 'by the member' })).status, 200, 'user_can_edit held');
      const changed = await owner.client.patch(`/api/v1/workspaces/${ws}/members/${member.username}`, { permissions: { vm_can_add: false, user_can_edit: false, network_can_add: true } });
      assert.equal(changed.status, 200);
      // The same token, on the very next request: still signed in, with the new flags.
      const got = await member.client.get(`/api/v1/workspaces/${ws}`);
      assert.equal(got.status, 200, 'a flag change signs nobody out');
      assert.deepEqual([got.body.permissions.vm_can_add, got.body.permissions.user_can_edit, got.body.permissions.network_can_add], [false, false, true]);
      const denied = await member.client.patch(`/api/v1/workspaces/${ws}`, { description: 'again' });
      assert.equal(denied.status, 403, 'a flag taken away is refused at once');
      assert.equal((await member.client.get('/api/v1/me')).body.workspaces[ws].network_can_add, true);
      // A rename signs nobody out either: the workspace is found under its new name with the same token.
      const renamed = `${ws}-renamed`;
      assert.equal((await owner.client.patch(`/api/v1/workspaces/${ws}`, { name: renamed })).status, 200);
      assert.equal((await member.client.get(`/api/v1/workspaces/${renamed}`)).status, 200, 'a rename signs nobody out');
      assert.equal((await owner.client.patch(`/api/v1/workspaces/${renamed}`, { name: ws })).status, 200);
      // Removal still revokes: the removed member's tokens are refused.
      assert.equal((await owner.client.del(`/api/v1/workspaces/${ws}/members/${member.username}`)).status, 204);
      assert.equal((await member.client.get('/api/v1/me')).status, 401, 'removal from the workspace signs the member out');
      assert.equal((await owner.client.get(`/api/v1/workspaces/${ws}`)).status, 200, 'the one who removed keeps their token');
    });

    it('rate-limits logins per username with 429 and Retry-After', async () => {
      const u = await h.user('ivan');
      for (let i = 0; i < 5; i++) {
        assert.equal((await h.anon.post('/api/v1/auth/login', { username: u.username, password: 'Wrong-Passw0rd!' })).status, 401);
      }
      const limited = await h.anon.post('/api/v1/auth/login', { username: u.username, password: PASSWORD });
      assert.equal(limited.status, 429);
      assert.ok(Number(limited.headers.get('retry-after')) > 0);
      now += h.config.loginWindowSeconds * 1000 + 1000;
      try {
        assert.equal((await h.anon.post('/api/v1/auth/login', { username: u.username, password: PASSWORD })).status, 200);
      } finally {
        now -= h.config.loginWindowSeconds * 1000 + 1000;
      }
      // Unknown users are refused like wrong passwords (no user enumeration).
      const ghost = await h.anon.post('/api/v1/auth/login', { username: 'nobody-here', password: PASSWORD });
      assert.equal(ghost.status, 401);
      assert.equal(ghost.body.error.message, 'wrong username or password');
    });

    it('isolates workspaces: non-members get 404, members without a flag 403', async () => {
      const a = await h.user('jane');
      const b = await h.user('karl');
      const ws = `iso-${a.username}`;
      const created = await a.client.post('/api/v1/workspaces', { name: ws, description: 'mine' });
      assert.equal(created.status, 201);
      assert.equal(created.body.permissions.user_can_add, true);
      assert.equal((await a.client.post('/api/v1/workspaces', { name: ws })).status, 409);
      assert.equal((await b.client.get(`/api/v1/workspaces/${ws}`)).status, 404);
      assert.equal((await b.client.get(`/api/v1/workspaces/${ws}/vms`)).status, 404);
      assert.equal((await b.client.del(`/api/v1/workspaces/${ws}`)).status, 404);
      assert.equal((await b.client.get(`/api/v1/workspaces/no-such-ws`)).status, 404);
      const listB = await b.client.get('/api/v1/workspaces');
      assert.ok(!listB.body.items.some((w: { name: string }) => w.name === ws));
      await a.client.post(`/api/v1/workspaces/${ws}/members`, { username: b.username });
      const asMember = await b.client.get(`/api/v1/workspaces/${ws}`);
      assert.equal(asMember.status, 200);
      assert.equal((await b.client.patch(`/api/v1/workspaces/${ws}`, { description: 'x' })).status, 403);
      assert.equal((await b.client.post(`/api/v1/workspaces/${ws}/members`, { username: a.username })).status, 403);
      assert.equal((await b.client.del(`/api/v1/workspaces/${ws}/members/${a.username}`)).status, 403);
      // Nobody grants flags they do not hold: no self-escalation, no all-powerful recruits.
      const c = await h.user('kate');
      await a.client.post(`/api/v1/workspaces/${ws}/members`, { username: c.username, permissions: { user_can_add: true, user_can_edit: true } });
      const cFresh = new Client(h.url, await h.login(c.username, PASSWORD));
      const escalate = await cFresh.patch(`/api/v1/workspaces/${ws}/members/${c.username}`, { permissions: { vm_can_delete: true } });
      assert.equal(escalate.status, 403);
      assert.match(escalate.body.error.message, /cannot grant vm_can_delete/);
      const recruit = await cFresh.patch(`/api/v1/workspaces/${ws}/members/${b.username}`, { permissions: { user_can_delete: true } });
      assert.equal(recruit.status, 403);
      const allowed = await cFresh.patch(`/api/v1/workspaces/${ws}/members/${b.username}`, { permissions: { user_can_add: true } });
      assert.equal(allowed.status, 200, 'granting a flag one holds is fine');
      // Admins see every workspace.
      assert.equal((await h.admin.client.get(`/api/v1/workspaces/${ws}`)).status, 200);
    });

    it('keeps a member who can manage members, and refuses to delete a workspace holding VMs or networks', async () => {
      const a = await h.user('lena');
      const b = await h.user('mark');
      const ws = `keep-${a.username}`;
      await a.client.post('/api/v1/workspaces', { name: ws });
      const selfDemote = await a.client.patch(`/api/v1/workspaces/${ws}/members/${a.username}`, { permissions: { user_can_delete: false } });
      assert.equal(selfDemote.status, 409);
      const aFresh = new Client(h.url, await h.login(a.username, PASSWORD));
      assert.equal((await aFresh.del(`/api/v1/workspaces/${ws}/members/${a.username}`)).status, 409);
      await aFresh.post(`/api/v1/workspaces/${ws}/members`, { username: b.username, permissions: { user_can_add: true, user_can_edit: true, user_can_delete: true } });
      assert.equal((await aFresh.del(`/api/v1/workspaces/${ws}/members/${a.username}`)).status, 204, 'another manager exists now');
      const bFresh = new Client(h.url, await h.login(b.username, PASSWORD));
      const members = await bFresh.get(`/api/v1/workspaces/${ws}/members`);
      assert.deepEqual(members.body.items.map((m: { username: string }) => m.username), [b.username]);
      // A network blocks deletion with 409; deleting it frees the workspace.
      const db = h.orch.db.client;
      const area = await freshArea(db);
      const wsRow = await db.workspace.findUniqueOrThrow({ where: { name: ws } });
      const net = await db.network.create({ data: { name: 'net1', workspaceId: wsRow.id, areaId: area.id } });
      const nets = await bFresh.get(`/api/v1/workspaces/${ws}/networks`);
      assert.equal(nets.body.items[0].name, 'net1');
      assert.equal((await bFresh.get(`/api/v1/workspaces/${ws}/networks/net1`)).body.area, area.name);
      const blocked = await bFresh.del(`/api/v1/workspaces/${ws}`);
      assert.equal(blocked.status, 409);
      assert.equal(blocked.body.error.details.networks, 1);
      await db.network.delete({ where: { id: net.id } });
      await db.area.delete({ where: { id: area.id } });
      assert.equal((await bFresh.del(`/api/v1/workspaces/${ws}`)).status, 204);
      assert.equal((await bFresh.get(`/api/v1/workspaces/${ws}`)).status, 401, 'workspace deletion changes permissions');
    });

    it('manages areas with subnet, gateway and VLAN rules; users may read but not write', async () => {
      const admin = h.admin.client;
      const u = await h.user('nora');
      const one = freshSubnet();
      const two = freshSubnet();
      const [areaOne, areaTwo, pool1] = [uniq('area-one'), uniq('area-two'), uniq('pool-1')];
      const ok = await admin.post('/api/v1/areas', { name: areaOne, subnet: one.subnet, gateway: one.gateway, vlanRange: '100-199' });
      assert.equal(ok.status, 201);
      assert.equal(ok.body.vlanRange, '100-199');
      const overlap = await admin.post('/api/v1/areas', { name: areaTwo, subnet: `${one.base}.128/25`, gateway: `${one.base}.129`, vlanRange: '100-199' });
      assert.equal(overlap.status, 409);
      assert.match(overlap.body.error.message, new RegExp(`overlaps area '${areaOne}'`));
      const gw = await admin.post('/api/v1/areas', { name: areaTwo, subnet: two.subnet, gateway: one.gateway, vlanRange: '100-199' });
      assert.equal(gw.status, 400);
      assert.equal(gw.body.error.details.problems[0].path, '/gateway');
      const vlan = await admin.post('/api/v1/areas', { name: areaTwo, subnet: two.subnet, gateway: two.gateway, vlanRange: '1-5000' });
      assert.equal(vlan.status, 400);
      assert.equal((await u.client.post('/api/v1/areas', { name: areaTwo, subnet: two.subnet, gateway: two.gateway, vlanRange: '2-3' })).status, 403);
      const read = await u.client.get(`/api/v1/areas/${areaOne}`);
      assert.equal(read.status, 200);
      assert.equal(read.body.subnet, one.subnet);
      const patched = await admin.patch(`/api/v1/areas/${areaOne}`, { gateway: `${one.base}.254` });
      assert.equal(patched.body.gateway, `${one.base}.254`);
      assert.equal((await admin.patch(`/api/v1/areas/${areaOne}`, { gateway: two.gateway })).status, 400);
      // Pools: unknown area, duplicate path in one area.
      const pool = await admin.post('/api/v1/pools', { name: pool1, area: areaOne, path: `/var/lib/${pool1}`, type: 'netfs' });
      assert.equal(pool.status, 201);
      assert.equal(pool.body.shared, true);
      assert.equal((await admin.post('/api/v1/pools', { name: uniq('pool-2'), area: areaOne, path: `/var/lib/${pool1}`, type: 'dir' })).status, 409);
      assert.equal((await admin.post('/api/v1/pools', { name: uniq('pool-3'), area: uniq('no-area'), path: '/p3', type: 'dir' })).status, 400);
      assert.equal((await admin.post('/api/v1/pools', { name: uniq('pool-4'), area: areaOne, path: '/a/../etc', type: 'dir' })).status, 400);
      assert.equal((await u.client.get('/api/v1/pools')).status, 403, 'pools are admin-only');
      // An area still used by a pool cannot be deleted.
      assert.equal((await admin.del(`/api/v1/areas/${areaOne}`)).status, 409);
      assert.equal((await admin.del(`/api/v1/pools/${pool1}`)).status, 204);
      assert.equal((await admin.del(`/api/v1/areas/${areaOne}`)).status, 204);
      assert.equal((await admin.get(`/api/v1/areas/${areaOne}`)).status, 404);
    });

    it('manages templates and pages through lists', async () => {
      const admin = h.admin.client;
      // Names of their own, so the pages hold exactly these whatever else the database holds.
      const prefix = uniq('tpl');
      const names = [0, 1, 2, 3, 4].map((i) => `${prefix}-${i}`);
      for (const [i, name] of names.entries()) {
        const r = await admin.post('/api/v1/templates', { name, os: 'debian-12', cpu: 1, ramMb: 512, diskGb: 4, image: `debian-${i}.qcow2` });
        assert.equal(r.status, 201);
      }
      assert.equal((await admin.post('/api/v1/templates', { name: names[0], os: 'x', cpu: 1, ramMb: 512, diskGb: 4, image: 'i' })).status, 409);
      assert.equal((await admin.post('/api/v1/templates', { name: uniq('tpl-x'), os: 'x', cpu: 0, ramMb: 512, diskGb: 4, image: 'i' })).status, 400);
      const u = await h.user('olga');
      const p1 = await u.client.get(`/api/v1/templates?limit=2&after=${prefix}`);
      assert.deepEqual(p1.body.items.map((t: { name: string }) => t.name), names.slice(0, 2));
      assert.equal(p1.body.nextCursor, names[1]);
      // The list reads raw rows, a single GET reads through the model: both must show the same template.
      assert.deepEqual(p1.body.items[0], (await u.client.get(`/api/v1/templates/${names[0]}`)).body);
      await admin.patch(`/api/v1/templates/${names[1]}`, { boot: { kernel: '/boot/vmlinuz', initrd: '/boot/initrd.img' } });
      const booted = (await u.client.get(`/api/v1/templates?limit=2&after=${prefix}`)).body.items[1];
      assert.deepEqual(booted, (await u.client.get(`/api/v1/templates/${names[1]}`)).body);
      assert.deepEqual(booted.boot, { kernel: '/boot/vmlinuz', initrd: '/boot/initrd.img', cmdline: '' });
      const p2 = await u.client.get(`/api/v1/templates?limit=3&after=${p1.body.nextCursor}`);
      assert.deepEqual(p2.body.items.map((t: { name: string }) => t.name), names.slice(2));
      const rest = await u.client.get(`/api/v1/templates?limit=1000&after=${names[4]}`);
      assert.equal(rest.body.nextCursor, null, 'the last page has no cursor');
      assert.ok(!rest.body.items.some((t: { name: string }) => t.name.startsWith(prefix)));
      assert.equal(p2.body.nextCursor, rest.body.items.length > 0 ? names[4] : null);
      assert.equal((await u.client.get('/api/v1/templates?limit=0')).status, 400);
      assert.equal((await u.client.get('/api/v1/templates?limit=abc')).status, 400);
      assert.equal((await admin.patch(`/api/v1/templates/${names[4]}`, { cpu: 2 })).body.cpu, 2);
      assert.equal((await admin.del(`/api/v1/templates/${names[4]}`)).status, 204);
    });

    it('drains a host (admin): a task puts it in maintenance and reports the VMs no other host can take; bad input is refused', async () => {
      const db = h.orch.db.client;
      const area = await freshArea(db);
      const pool = await db.storagePool.create({ data: { name: uniq('pool'), areaId: area.id, path: `/srv/pools/${uniq('p')}`, type: 'dir', shared: true, sizeGb: 1000 } });
      const host = await db.host.create({ data: { name: uniq('kvm'), areaId: area.id, cpuCount: 16, ramMb: 65536, diskGb: 900, state: 'up', lastHeartbeatAt: new Date() } });
      // Up in the database, but no agent holds its session: placement's agent filter refuses it.
      const other = await db.host.create({ data: { name: uniq('kvm'), areaId: area.id, cpuCount: 16, ramMb: 65536, diskGb: 900, state: 'up', lastHeartbeatAt: new Date() } });
      const down = await db.host.create({ data: { name: uniq('kvm'), areaId: area.id, cpuCount: 16, ramMb: 65536, diskGb: 900, state: 'down' } });
      const ws = await freshWorkspace(db, []);
      const tpl = await freshTemplate(db);
      const vm = await db.vm.create({
        data: { name: uniq('vm'), workspaceId: ws.id, areaId: area.id, templateId: tpl.id, hostId: host.id, poolId: pool.id, cpu: 2, ramMb: 2048, diskGb: 10, state: 'running', haEnabled: true },
      });
      const admin = h.admin.client;
      const u = await h.user('quinn');
      // Permission, unknown ids, bad bodies, a host that is not up.
      assert.equal((await u.client.post(`/api/v1/hosts/${host.id}/drain`, {})).status, 403);
      assert.equal((await u.client.get(`/api/v1/areas/${area.name}/capacity`)).status, 403);
      assert.equal((await u.client.get(`/api/v1/hosts/${host.id}/drain`)).status, 403);
      const unknown = await admin.post('/api/v1/hosts/00000000-0000-0000-0000-000000000000/drain', {});
      assert.equal(unknown.status, 404);
      assert.equal(unknown.body.error.code, 'not_found');
      assert.equal((await admin.post('/api/v1/hosts/not-a-uuid/drain', {})).status, 400);
      const badMode = await admin.post(`/api/v1/hosts/${host.id}/drain`, { mode: 'teleport' });
      assert.equal(badMode.status, 400);
      assert.equal(badMode.body.error.code, 'validation_failed');
      assert.equal((await admin.post(`/api/v1/hosts/${host.id}/drain`, { mode: 'live', force: true })).status, 400, 'unknown properties are refused');
      assert.equal((await admin.req('POST', `/api/v1/hosts/${host.id}/drain`, '{"mode":')).status, 400, 'malformed JSON');
      const downDrain = await admin.post(`/api/v1/hosts/${down.id}/drain`, {});
      assert.equal(downDrain.status, 409);
      assert.match(downDrain.body.error.message, /only an up host can be drained/);
      assert.equal((await admin.get(`/api/v1/hosts/${host.id}/drain`)).status, 404, 'no drain yet');
      assert.equal((await admin.get('/api/v1/areas/no-such-area/capacity')).status, 404);

      // The n+1 check: the largest host is `host` (its VM claims 2 GiB); no other host can take it.
      const cap = await admin.get(`/api/v1/areas/${area.name}/capacity`);
      assert.equal(cap.status, 200, JSON.stringify(cap.body));
      assert.equal(cap.body.area, area.name);
      assert.deepEqual(cap.body.largestHost, { id: host.id, name: host.name, claimedCpu: 2, claimedRamMb: 2048, vms: 1 });
      assert.equal(cap.body.survives, false);
      assert.deepEqual(cap.body.ha.left.map((l: { vmId: string; code: string }) => [l.vmId, l.code]), [[vm.id, 'no_capacity']]);
      const why = Object.fromEntries(cap.body.ha.left[0].rejections.map((r: { hostName: string; filter: string }) => [r.hostName, r.filter]));
      // The filters run in order: state, admin state, agent, then the excluded host itself.
      assert.deepEqual(why, { [host.name]: 'agent', [other.name]: 'agent', [down.name]: 'state' });

      // The drain: a task (202), the host in maintenance, the VM reported as one that cannot move.
      const d = await admin.post(`/api/v1/hosts/${host.id}/drain`, {});
      assert.equal(d.status, 202, JSON.stringify(d.body));
      assert.equal(d.body.task.kind, 'host.drain');
      assert.deepEqual(d.body.task.object, { type: 'host', id: host.id, name: host.name });
      let t = d.body.task;
      for (let i = 0; i < 200 && !['succeeded', 'failed', 'rolled_back'].includes(t.state); i++) {
        await new Promise((r) => setTimeout(r, 50));
        t = (await admin.get(`/api/v1/hosts/${host.id}/drain`)).body;
      }
      assert.equal(t.state, 'succeeded', JSON.stringify(t));
      assert.deepEqual(t.steps.map((s: { name: string; state: string }) => [s.name, s.state]), [['maintenance', 'succeeded'], ['plan', 'succeeded'], ['move', 'succeeded']]);
      assert.deepEqual(t.placement.drain.moves, []);
      assert.deepEqual(t.placement.drain.cannotMove.map((c: { vmId: string; code: string }) => [c.vmId, c.code]), [[vm.id, 'no_capacity']]);
      assert.equal((await admin.get(`/api/v1/hosts/${host.id}`)).body.adminState, 'maintenance');
      const still = await db.vm.findUniqueOrThrow({ where: { id: vm.id } });
      assert.deepEqual([still.hostId, still.state], [host.id, 'running'], 'a VM that cannot move stays as it was');
      const events = await db.outboxEvent.findMany({ where: { entityId: host.id }, orderBy: { seq: 'asc' }, select: { event: true } });
      for (const e of ['draining', 'updated', 'drain_planned', 'drained']) assert.ok(events.some((x) => x.event === e), `event host.${e}: ${events.map((x) => x.event).join(', ')}`);
      // While a drain moves a VM it is `migrating`: no power action, and no delete; and it claims
      // its vCPU and RAM on the host it moves to as well, so that no create takes that room.
      await db.vm.update({ where: { id: vm.id }, data: { state: 'migrating', migratingToHostId: other.id } });
      const snap = await areaPlacementSnapshot(db, area.id, () => true);
      const claims = Object.fromEntries((snap.areas.get(area.id)?.hosts ?? []).map((x) => [x.id, [x.claimedCpu, x.claimedRamMb]]));
      assert.deepEqual([claims[host.id], claims[other.id], claims[down.id]], [[2, 2048], [2, 2048], [0, 0]]);
      assert.equal((await admin.del(`/api/v1/workspaces/${ws.name}/vms/${vm.name}`)).status, 409);
      assert.equal((await admin.post(`/api/v1/workspaces/${ws.name}/vms/${vm.name}/actions`, { action: 'stop' })).status, 409);
      await db.vm.delete({ where: { id: vm.id } });
    });

    it('shows hosts, toggles maintenance and deletes only empty hosts', async () => {
      const db = h.orch.db.client;
      const area = await freshArea(db);
      const base = area.subnet.replace(/\.0\/24$/, '');
      const host = await db.host.create({ data: { name: uniq('kvm'), areaId: area.id, cpuCount: 16, ramMb: 65536, diskGb: 900, state: 'up', lastHeartbeatAt: new Date() } });
      const admin = h.admin.client;
      const list = await admin.get('/api/v1/hosts?limit=1000');
      const listed = list.body.items.find((x: { id: string }) => x.id === host.id);
      assert.equal(listed.name, host.name);
      assert.equal(listed.area, area.name);
      // Bytes come from the agent's Hello; a host inserted by hand has none, and no session or usage.
      assert.deepEqual(listed.capacity, { cpus: 16, ramMb: 65536, diskGb: 900, memoryBytes: 0, diskBytes: 0 });
      assert.deepEqual([listed.connected, listed.usage], [false, null]);
      const m = await admin.patch(`/api/v1/hosts/${host.id}`, { maintenance: true });
      assert.equal(m.body.adminState, 'maintenance');
      assert.equal((await admin.patch(`/api/v1/hosts/${host.id}`, { maintenance: false })).body.adminState, 'active');
      assert.equal((await admin.get('/api/v1/hosts/not-a-uuid')).status, 400);
      assert.equal((await admin.get('/api/v1/hosts/00000000-0000-0000-0000-000000000000')).status, 404);
      const ws = await freshWorkspace(db, []);
      const tpl = await freshTemplate(db);
      const vmName = uniq('vm');
      const vm = await db.vm.create({ data: { name: vmName, workspaceId: ws.id, areaId: area.id, templateId: tpl.id, hostId: host.id, cpu: 1, ramMb: 256, diskGb: 1, state: 'running' } });
      await db.ipAllocation.create({ data: { areaId: area.id, scope: `area:${area.id}`, address: `${base}.10`, vmId: vm.id } });
      const got = await admin.get(`/api/v1/workspaces/${ws.name}/vms/${vmName}`);
      assert.equal(got.body.host, host.name);
      assert.equal(got.body.ip, `${base}.10`);
      assert.equal((await admin.get(`/api/v1/workspaces/${ws.name}/vms`)).body.items.length, 1);
      const blocked = await admin.del(`/api/v1/hosts/${host.id}`);
      assert.equal(blocked.status, 409);
      const other = freshSubnet();
      assert.equal((await admin.patch(`/api/v1/areas/${area.name}`, { subnet: other.subnet, gateway: other.gateway })).status, 409, 'subnet fixed once IPs are allocated');
      await db.vm.delete({ where: { id: vm.id } });
      assert.equal((await admin.del(`/api/v1/hosts/${host.id}`)).status, 204);
      const u = await h.user('pete');
      assert.equal((await u.client.get('/api/v1/hosts')).status, 403);
      assert.equal((await h.anon.get('/api/v1/hosts')).status, 401);
    });

    it('makes join tokens for an area named like on every other route (its id still accepted)', async () => {
      const area = await freshArea(h.orch.db.client);
      const admin = h.admin.client;
      const byName = await admin.post('/api/v1/hosts/join-tokens', { area: area.name, expiresIn: 600 });
      assert.equal(byName.status, 201, JSON.stringify(byName.body));
      assert.deepEqual([byName.body.area, byName.body.areaId], [area.name, area.id]);
      const byId = await admin.post('/api/v1/hosts/join-tokens', { area: area.id });
      assert.equal(byId.status, 201, JSON.stringify(byId.body));
      assert.deepEqual([byId.body.area, byId.body.areaId], [area.name, area.id]);
      const unknown = await admin.post('/api/v1/hosts/join-tokens', { area: uniq('no-area') });
      assert.equal(unknown.status, 400);
      assert.equal(unknown.body.error.details.problems[0].path, '/area');
      const noId = await admin.post('/api/v1/hosts/join-tokens', { area: '00000000-0000-4000-8000-000000000000' });
      assert.equal(noId.status, 400);
    });

    it('answers malformed bodies with 4xx JSON', async () => {
      const c = h.admin.client;
      const notJson = await c.req('POST', '/api/v1/workspaces', '{"name":', { 'content-type': 'application/json' });
      assert.equal(notJson.status, 400);
      const text = await c.req('POST', '/api/v1/workspaces', 'name=x', { 'content-type': 'text/plain' });
      assert.equal(text.status, 415);
      const big = await c.req('POST', '/api/v1/workspaces', JSON.stringify({ name: 'x', description: 'y'.repeat(1_100_000) }));
      assert.equal(big.status, 413);
      const arr = await c.req('POST', '/api/v1/workspaces', '[]');
      assert.equal(arr.status, 400);
      const proto = await c.req('POST', '/api/v1/workspaces', '{"name":"pp","__proto__":{"admin":true}}');
      assert.equal(proto.status, 400);
      const empty = await c.req('PATCH', '/api/v1/templates/none', '{}');
      assert.equal(empty.status, 400);
    });
  });
}

describe('login rate limit per client address', () => {
  it('answers 429 once one address has tried too often, whatever the usernames', async () => {
    const h = await startHarness('pglite', { loginMaxPerAddress: 3 });
    try {
      // The harness's own admin login used one attempt from this address.
      for (const name of ['nobody-a', 'nobody-b']) {
        assert.equal((await h.anon.post('/api/v1/auth/login', { username: name, password: PASSWORD })).status, 401);
      }
      const limited = await h.anon.post('/api/v1/auth/login', { username: 'nobody-c', password: PASSWORD });
      assert.equal(limited.status, 429);
      assert.equal(limited.body.error.code, 'rate_limited');
    } finally {
      await h.close();
    }
  });
});

describe('sign-up and password change rate limits per client address', () => {
  it('answers 429 with Retry-After once one address has signed up or changed passwords too often, and again after the window', async () => {
    let now = Date.now();
    const h = await startHarness('pglite', { signupMaxPerAddress: 3, passwordChangeMaxPerAddress: 2 }, { now: () => now });
    try {
      // Each sign-up hashes a password: a flood of them would hold the thread pool logins need.
      const u = await h.user('flood'); // one sign-up
      for (let i = 0; i < 2; i++) {
        const name = uniq('flood');
        assert.equal((await h.anon.post('/api/v1/auth/signup', { username: name, email: `${name}@example.test`, password: PASSWORD })).status, 201);
      }
      const name = uniq('flood');
      const limited = await h.anon.post('/api/v1/auth/signup', { username: name, email: `${name}@example.test`, password: PASSWORD });
      assert.equal(limited.status, 429);
      assert.equal(limited.body.error.code, 'rate_limited');
      const wait = Number(limited.headers.get('retry-after'));
      assert.ok(wait > 0 && wait <= h.config.loginWindowSeconds, `Retry-After ${wait}`);
      assert.equal(await h.orch.db.client.user.count({ where: { username: name } }), 0, 'nothing created');
      // Password changes: wrong current passwords count too (each one is a hash to check).
      for (let i = 0; i < 2; i++) {
        assert.equal((await u.client.post('/api/v1/auth/password', { currentPassword: 'Not-The-Passw0rd!', newPassword: 'An0ther-Long-Passphrase' })).status, 403);
      }
      const tooMany = await u.client.post('/api/v1/auth/password', { currentPassword: PASSWORD, newPassword: 'An0ther-Long-Passphrase' });
      assert.equal(tooMany.status, 429);
      assert.ok(Number(tooMany.headers.get('retry-after')) > 0);
      assert.equal((await h.anon.post('/api/v1/auth/login', { username: u.username, password: PASSWORD })).status, 200, 'the password did not change');
      // Once the window has passed, both work again.
      now += h.config.loginWindowSeconds * 1000 + 1000;
      assert.equal((await h.anon.post('/api/v1/auth/signup', { username: name, email: `${name}@example.test`, password: PASSWORD })).status, 201);
      const fresh = new Client(h.url, await h.login(u.username, PASSWORD));
      assert.equal((await fresh.post('/api/v1/auth/password', { currentPassword: PASSWORD, newPassword: 'An0ther-Long-Passphrase' })).status, 204);
    } finally {
      await h.close();
    }
  });
});
