// The permission matrix of the REST API: every route × every kind of caller, over real HTTP, on
// PostgreSQL and on embedded PGlite. The expectation table is written by hand (it is the spec);
// the routes come from the running API, and a route without an expectation fails the suite.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { PERMISSION_FLAGS } from '../domain/permissions.js';
import { ENGINES, PASSWORD, startHarness, Client, type Harness, type Res } from '../testing/harness.js';
import type { SimAgent } from '../agent-api/testing/sim-agent.js';
import {
  fillPath,
  freshArea,
  freshDrainedHost,
  freshFrozenHost,
  freshHost,
  freshJoinToken,
  freshNetwork,
  freshPool,
  freshVm,
  freshTemplate,
  freshWorkspace,
  routeKey,
  validBody,
  validParams,
  type World,
} from '../testing/fixtures.js';
import type { RouteSpec } from './route.js';
import { expected, RULES, setUpMatrix, type MatrixCaller, type Rule } from '../testing/permission-rules.js';

// The spec, who may call each route, is testing/permission-rules.ts (shared with the gRPC matrix).

/** A caller of the matrix. Members belong to the fixture workspace (and to fresh ones made per case). */
type Caller = MatrixCaller;

const ERROR_CODE = { 401: 'unauthenticated', 403: 'forbidden', 404: 'not_found' } as const;

/** One request of the matrix, and what to do after it (restore what it changed). */
interface Case {
  path: string;
  body?: unknown;
  /** A different token than the caller's (null: none). */
  token?: string | null;
  after?: (res: Res) => Promise<void>;
}

for (const engine of ENGINES) {
  describe(`permission matrix on ${engine}`, () => {
    let h: Harness;
    let w: World;
    let callers: Caller[];
    let simHostId: string;
    let simAgent: SimAgent | undefined;
    /** A member with every flag of every workspace made here, so each keeps a member manager. */
    let owner: { username: string; userId: string };
    /** The user added, changed and removed by the member routes. */
    let target: { username: string; userId: string };

    const db = () => h.orch.db.client;
    const idOf = async (username: string) => (await db().user.findUniqueOrThrow({ where: { username } })).id;
    const relogin = async (c: Caller) => {
      c.token = await h.login(c.username, c.password);
    };
    /** A workspace with the owner, the caller if it is a member (with its flags), and maybe the target. */
    const wsFor = async (c: Caller, withTarget: boolean) =>
      freshWorkspace(db(), [
        { userId: owner.userId, flags: PERMISSION_FLAGS },
        ...(c.kind === 'member' ? [{ userId: c.userId, flags: c.flags }] : []),
        ...(withTarget ? [{ userId: target.userId, flags: [] }] : []),
      ]);

    /** How to call each route as a given caller with valid inputs; mutations act on fresh objects. */
    function caseFor(r: RouteSpec, c: Caller): Promise<Case> | Case {
      const key = routeKey(r);
      const params = validParams(r, w, target.username);
      const body = r.body ? validBody(key, w, target.username) : undefined;
      const plain: Case = { path: fillPath(r.path, params), body };
      switch (key) {
        case 'POST /auth/login':
          return { ...plain, body: { username: owner.username, password: PASSWORD } };
        case 'POST /auth/logout':
          // Revoke a second token, not the one the rest of the matrix uses.
          return (async () => ({ ...plain, token: c.kind === 'anon' ? null : await h.login(c.username, c.password) }))();
        case 'POST /auth/password': {
          const next = 'An0ther-Long-Passphrase';
          return {
            ...plain,
            body: { currentPassword: c.password || PASSWORD, newPassword: next },
            // Put the old password back, so later logins of this caller keep working.
            after: async (res) => {
              if (res.status !== 204) return;
              const t = await h.login(c.username, next);
              const back = await new Client(h.url, t).req('POST', '/api/v1/auth/password', { currentPassword: next, newPassword: c.password });
              assert.equal(back.status, 204, JSON.stringify(back.body));
              await relogin(c);
            },
          };
        }
        case 'PATCH /workspaces/{ws}':
        case 'POST /workspaces/{ws}/members':
          return (async () => ({ ...plain, path: fillPath(r.path, { ws: (await wsFor(c, false)).name }) }))();
        case 'DELETE /workspaces/{ws}':
          return (async () => ({
            ...plain,
            path: fillPath(r.path, { ws: (await wsFor(c, false)).name }),
            // Deleting a workspace changes its members' permissions: their tokens are refused after.
            after: async (res) => {
              if (res.status === 204 && c.kind === 'member') {
                assert.equal((await new Client(h.url, c.token).get('/api/v1/me')).status, 401, 'token of a member of a deleted workspace');
                await relogin(c);
              }
            },
          }))();
        case 'PATCH /workspaces/{ws}/members/{username}':
        case 'DELETE /workspaces/{ws}/members/{username}':
          return (async () => ({ ...plain, path: fillPath(r.path, { ws: (await wsFor(c, true)).name, username: target.username }) }))();
        // Each on a fresh object: the first success would change the fixture (state, existence).
        case 'DELETE /workspaces/{ws}/networks/{name}':
          return (async () => ({ ...plain, path: fillPath(r.path, { ws: w.workspace.name, name: (await freshNetwork(db(), w)).name }) }))();
        case 'DELETE /workspaces/{ws}/vms/{name}':
        case 'POST /workspaces/{ws}/vms/{name}/actions':
        case 'GET /workspaces/{ws}/vms/{name}/console':
          // On the simulated host, which answers the console read and the task's commands.
          return (async () => ({ ...plain, path: fillPath(r.path, { ws: w.workspace.name, name: (await freshVm(db(), w, simHostId)).name }) }))();
        case 'DELETE /areas/{name}':
          return (async () => ({ ...plain, path: fillPath(r.path, { name: (await freshArea(db())).name }) }))();
        case 'DELETE /pools/{name}':
          return (async () => ({ ...plain, path: fillPath(r.path, { name: (await freshPool(db(), w.area.id)).name }) }))();
        case 'DELETE /templates/{name}':
          return (async () => ({ ...plain, path: fillPath(r.path, { name: (await freshTemplate(db())).name }) }))();
        case 'DELETE /hosts/join-tokens/{id}':
          return (async () => ({ ...plain, path: fillPath(r.path, { id: (await freshJoinToken(db(), w.area.id)).id }) }))();
        case 'GET /hosts/{id}/drain':
          // A host with a drain behind it (the fixture host has none).
          return (async () => ({ ...plain, path: fillPath(r.path, { id: (await freshDrainedHost(db(), w.area.id)).id }) }))();
        case 'POST /hosts/{id}/confirm-off':
          // A down host held back by its agent's clean stop (the fixture host is up: 409).
          return (async () => ({ ...plain, path: fillPath(r.path, { id: (await freshFrozenHost(db(), w.area.id)).id }) }))();
        case 'DELETE /hosts/{id}':
        case 'POST /hosts/{id}/drain':
        case 'POST /hosts/{id}/rekey':
          return (async () => ({ ...plain, path: fillPath(r.path, { id: (await freshHost(db(), w.area.id)).id }) }))();
        default:
          // Reads, creations with fresh names, and idempotent patches of the fixtures.
          return plain;
      }
    }

    before(async () => {
      h = await startHarness(engine);
      ({ owner, target, callers, world: w, simHostId, simAgent } = await setUpMatrix(h));
    });
    after(async () => {
      await simAgent?.stop();
      await h?.close();
    });

    it('has an expectation for every route, and no expectation for a route that does not exist', () => {
      const keys = h.orch.api.routes.map(routeKey);
      assert.equal(new Set(keys).size, keys.length, 'duplicate routes');
      assert.deepEqual(keys.filter((k) => !(k in RULES)), [], 'routes without an expectation in RULES');
      assert.deepEqual(Object.keys(RULES).filter((k) => !keys.includes(k)), [], 'expectations for routes that do not exist');
      // The declared access of each route agrees with the table (workspace routes are 'user' routes).
      for (const r of h.orch.api.routes) {
        const rule = RULES[routeKey(r)] as Rule;
        const access = rule.kind === 'workspace' ? 'user' : rule.kind;
        assert.equal(r.access, access, `${routeKey(r)} declares access ${r.access}`);
        if (rule.kind === 'workspace') assert.match(r.path, /^\/workspaces\/\{ws\}/, `${routeKey(r)} is a workspace route`);
      }
    });

    for (const [key, rule] of Object.entries(RULES)) {
      const who = rule.kind === 'workspace' ? `members${rule.flags.length ? ` with ${rule.flags.join(' + ')}` : ''} and admins` : rule.kind;
      it(`${key}: ${who}`, async () => {
        const r = h.orch.api.routes.find((x) => routeKey(x) === key);
        assert.ok(r, `route ${key} is not served`);
        const mismatches: string[] = [];
        for (const c of callers) {
          const want = expected(rule, c);
          const k = await caseFor(r, c);
          const token = k.token === undefined ? c.token : (k.token ?? undefined);
          const res = await new Client(h.url, token).req(r.method.toUpperCase(), k.path, k.body);
          const ok =
            want === 'success'
              ? res.status === r.response.status
              : res.status === want && res.body?.error?.code === ERROR_CODE[want];
          if (!ok) {
            mismatches.push(
              `${c.label}: expected ${want === 'success' ? r.response.status : want}, got ${res.status} ${JSON.stringify(res.body)?.slice(0, 200)}`,
            );
          }
          await k.after?.(res);
        }
        assert.deepEqual(mismatches, [], `${key}\n  ${mismatches.join('\n  ')}`);
      });
    }

    it('answers a non-member exactly like a missing workspace (404, same code and kind)', async () => {
      const outsider = callers.find((c) => c.kind === 'outsider') as Caller;
      const cl = new Client(h.url, outsider.token);
      for (const [method, suffix, body] of [
        ['GET', '', undefined],
        ['DELETE', '', undefined],
        ['PATCH', '', { description: 'x' }],
        ['GET', '/vms', undefined],
        ['POST', '/members', { username: outsider.username }],
      ] as const) {
        const real = await cl.req(method, `/api/v1/workspaces/${w.workspace.name}${suffix}`, body);
        const missing = await cl.req(method, `/api/v1/workspaces/no-such-workspace${suffix}`, body);
        assert.equal(real.status, 404, `${method} ${suffix}`);
        assert.equal(missing.status, 404);
        assert.deepEqual(
          { ...real.body.error, requestId: null, message: real.body.error.message.replace(w.workspace.name, 'X') },
          { ...missing.body.error, requestId: null, message: missing.body.error.message.replace('no-such-workspace', 'X') },
        );
      }
    });

    it('lets an admin act with every flag in a workspace it does not belong to', async () => {
      const admin = callers.find((c) => c.kind === 'admin') as Caller;
      const got = await new Client(h.url, admin.token).get(`/api/v1/workspaces/${w.workspace.name}`);
      assert.equal(got.status, 200);
      assert.ok(PERMISSION_FLAGS.every((f) => got.body.permissions[f] === true), JSON.stringify(got.body.permissions));
      const noFlags = callers.find((c) => c.label === 'member without flags') as Caller;
      const mine = await new Client(h.url, noFlags.token).get(`/api/v1/workspaces/${w.workspace.name}`);
      assert.ok(PERMISSION_FLAGS.every((f) => mine.body.permissions[f] === false), JSON.stringify(mine.body.permissions));
    });

    it('keeps the tokens of a member of many workspaces usable', async () => {
      // Tokens carry the flags of every workspace of their holder, so they grow with the memberships.
      const u = await h.user('many');
      const uid = await idOf(u.username);
      for (let i = 0; i < 30; i++) await freshWorkspace(db(), [{ userId: uid, flags: PERMISSION_FLAGS }]);
      const token = await h.login(u.username, PASSWORD);
      for (const headers of [{ authorization: `Bearer ${token}` }, { token }] as Record<string, string>[]) {
        const r = await h.anon.req('GET', '/api/v1/me', undefined, headers);
        assert.equal(r.status, 200, `token of ${token.length} characters in ${Object.keys(headers)[0]}: ${r.status} ${JSON.stringify(r.body)}`);
        assert.equal(Object.keys(r.body.workspaces).length, 30);
      }
    });

    it('applies a permission change on the member\'s next request with the same token; removal refuses their tokens', async () => {
      // A manager of its own (the matrix's owner belongs to many workspaces).
      const bossUser = await h.user('boss');
      const boss = bossUser.client;
      const m = await h.user('changed');
      const bystander = await h.user('bystander');
      const ws = await freshWorkspace(db(), [
        { userId: await idOf(bossUser.username), flags: PERMISSION_FLAGS },
        { userId: await idOf(m.username), flags: ['vm_can_add', 'user_can_edit'] },
        { userId: await idOf(bystander.username), flags: [] },
      ]);
      const base = `/api/v1/workspaces/${ws.name}`;
      assert.equal((await m.client.patch(base, { description: 'while allowed' })).status, 200);
      const patched = await boss.patch(`${base}/members/${m.username}`, { permissions: { vm_can_add: false, user_can_edit: false, network_can_add: true } });
      assert.equal(patched.status, 200);
      assert.equal(patched.body.permissions.network_can_add, true);
      assert.equal(patched.body.permissions.vm_can_add, false);
      // The member's token from before the change: still signed in everywhere, with the new flags.
      for (const path of [base, '/api/v1/me', '/api/v1/areas']) {
        assert.equal((await m.client.get(path)).status, 200, `signed in on ${path}`);
      }
      const got = await m.client.get(base);
      assert.equal(got.body.permissions.network_can_add, true);
      assert.equal(got.body.permissions.vm_can_add, false);
      const refused = await m.client.patch(base, { description: 'no longer allowed' });
      assert.equal(refused.status, 403, 'a flag taken away is refused on the next request');
      assert.equal(refused.body.error.code, 'forbidden');
      assert.equal((await bystander.client.get(base)).status, 200, 'other members keep their tokens');
      assert.equal((await boss.get(base)).status, 200, 'the one who changed it keeps theirs');
      // Removal: the removed member's token is refused; after logging in the workspace is gone for them.
      assert.equal((await boss.del(`${base}/members/${m.username}`)).status, 204);
      const stale = await m.client.get(base);
      assert.equal(stale.status, 401);
      assert.equal(stale.body.error.code, 'unauthenticated');
      const again = new Client(h.url, await h.login(m.username, PASSWORD));
      assert.equal((await again.get(base)).status, 404);
      assert.equal((await bystander.client.get(base)).status, 200);
    });
  });
}
