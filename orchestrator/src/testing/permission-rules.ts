// The permission matrix's spec: who may call each REST operation. Written by hand (it is the
// spec); the REST matrix (http/permissions.test.ts) and the gRPC one (grpc/permissions.test.ts),
// whose RPCs each name their REST twin, check the running APIs against it.
import { PERMISSION_FLAGS, type PermissionFlag } from '../domain/permissions.js';
import type { SimAgent } from '../agent-api/testing/sim-agent.js';
import { createWorld, type World } from './fixtures.js';
import { connectSimHost, type Harness } from './harness.js';

export const USER_FLAGS = ['user_can_add', 'user_can_edit', 'user_can_delete'] as const satisfies readonly PermissionFlag[];

/** Who may call a route. */
export type Rule =
  | { kind: 'public' } // anyone, signed in or not
  | { kind: 'user' } // any signed-in user
  | { kind: 'admin' } // admins only
  | { kind: 'workspace'; flags: readonly PermissionFlag[] }; // members of {ws} holding every flag; admins

const PUBLIC: Rule = { kind: 'public' };
const USER: Rule = { kind: 'user' };
const ADMIN: Rule = { kind: 'admin' };
const member = (...flags: PermissionFlag[]): Rule => ({ kind: 'workspace', flags });

/** The spec: one rule per route. */
export const RULES: Record<string, Rule> = {
  'POST /auth/signup': PUBLIC,
  'POST /auth/login': PUBLIC,
  'GET /auth/token': USER,
  'POST /auth/logout': USER,
  'POST /auth/password': USER,
  'GET /me': USER,

  'POST /workspaces': USER,
  'GET /workspaces': USER,
  'GET /workspaces/{ws}': member(),
  'PATCH /workspaces/{ws}': member('user_can_edit'),
  'DELETE /workspaces/{ws}': member(...USER_FLAGS),
  'GET /workspaces/{ws}/members': member(),
  'POST /workspaces/{ws}/members': member('user_can_add'),
  'PATCH /workspaces/{ws}/members/{username}': member('user_can_edit'),
  'DELETE /workspaces/{ws}/members/{username}': member('user_can_delete'),
  'GET /workspaces/{ws}/networks': member(),
  'GET /workspaces/{ws}/networks/{name}': member(),
  'GET /workspaces/{ws}/vms': member(),
  'GET /workspaces/{ws}/vms/{name}': member(),
  'POST /workspaces/{ws}/networks': member('network_can_add'),
  'PATCH /workspaces/{ws}/networks/{name}': member('network_can_edit'),
  'DELETE /workspaces/{ws}/networks/{name}': member('network_can_delete'),
  'POST /workspaces/{ws}/vms': member('vm_can_add'),
  'PATCH /workspaces/{ws}/vms/{name}': member('vm_can_edit'),
  'DELETE /workspaces/{ws}/vms/{name}': member('vm_can_delete'),
  'POST /workspaces/{ws}/vms/{name}/actions': member('vm_can_edit'),
  'GET /workspaces/{ws}/vms/{name}/console': member(),
  'GET /workspaces/{ws}/tasks': member(),
  'GET /workspaces/{ws}/tasks/{id}': member(),
  'GET /workspaces/{ws}/quota': member(),
  'PUT /workspaces/{ws}/quota': ADMIN,

  'GET /areas': USER,
  'GET /areas/{name}': USER,
  'POST /areas': ADMIN,
  'PATCH /areas/{name}': ADMIN,
  'DELETE /areas/{name}': ADMIN,

  'GET /pools': ADMIN,
  'GET /pools/{name}': ADMIN,
  'POST /pools': ADMIN,
  'DELETE /pools/{name}': ADMIN,

  'GET /templates': USER,
  'GET /templates/{name}': USER,
  'POST /templates': ADMIN,
  'PATCH /templates/{name}': ADMIN,
  'DELETE /templates/{name}': ADMIN,

  'GET /hosts': ADMIN,
  'GET /hosts/{id}': ADMIN,
  'GET /hosts/{id}/usage': ADMIN,
  'POST /hosts/join-tokens': ADMIN,
  'GET /hosts/join-tokens': ADMIN,
  'DELETE /hosts/join-tokens/{id}': ADMIN,
  'PATCH /hosts/{id}': ADMIN,
  'DELETE /hosts/{id}': ADMIN,
  'POST /hosts/{id}/rekey': ADMIN,
  'POST /hosts/{id}/confirm-off': ADMIN,
  'POST /hosts/{id}/drain': ADMIN,
  'GET /hosts/{id}/drain': ADMIN,
  'GET /areas/{name}/capacity': ADMIN,
};


/** What a caller gets: the route's success, or one of these errors. */
export type Outcome = 'success' | 401 | 403 | 404;

/** What a caller of a route under `rule` gets. */
export function expected(rule: Rule, c: { kind: 'anon' | 'admin' | 'outsider' | 'member'; flags: readonly PermissionFlag[] }): Outcome {
  if (rule.kind === 'public') return 'success';
  if (c.kind === 'anon') return 401;
  if (rule.kind === 'user') return 'success';
  if (rule.kind === 'admin') return c.kind === 'admin' ? 'success' : 403;
  if (c.kind === 'admin') return 'success';
  if (c.kind === 'outsider') return 404;
  return rule.flags.every((f) => c.flags.includes(f)) ? 'success' : 403;
}

/** One caller of the permission matrix: who, how they are signed in, and their flags in the fixture workspace. */
export interface MatrixCaller {
  label: string;
  kind: 'anon' | 'admin' | 'outsider' | 'member';
  flags: readonly PermissionFlag[];
  username: string;
  password: string;
  userId: string;
  token: string | undefined;
}

/** What the REST and gRPC matrices run against: the callers, the fixture world and a placeable host. */
export interface MatrixSetup {
  owner: { username: string; userId: string };
  target: { username: string; userId: string };
  callers: MatrixCaller[];
  world: World;
  simHostId: string;
  simAgent: SimAgent;
}

/**
 * The matrix's callers (anonymous, admin, a non-member, a member without flags, one member per
 * flag, one with the three user flags), the world whose workspace they belong to, and a simulated
 * host so VM creation can succeed for those allowed to ask.
 */
export async function setUpMatrix(h: Harness): Promise<MatrixSetup> {
  const db = h.orch.db.client;
  const idOf = async (username: string) => (await db.user.findUniqueOrThrow({ where: { username } })).id;
  const mk = async (prefix: string) => {
    const u = await h.user(prefix);
    return { ...u, userId: await idOf(u.username) };
  };
  const [o, t, out, none, managers, ...single] = await Promise.all([
    mk('owner'),
    mk('target'),
    mk('outsider'),
    mk('noflags'),
    mk('managers'),
    ...PERMISSION_FLAGS.map((f) => mk(f.replace(/_/g, '-'))),
  ]);
  const as = (label: string, kind: MatrixCaller['kind'], flags: readonly PermissionFlag[], u: typeof o | undefined): MatrixCaller => ({
    label,
    kind,
    flags,
    username: u!.username,
    password: u!.password,
    userId: u!.userId,
    token: u!.token,
  });
  const callers: MatrixCaller[] = [
    { label: 'anonymous', kind: 'anon', flags: [], username: '', password: '', userId: '', token: undefined },
    { label: 'admin', kind: 'admin', flags: [], username: h.admin.username, password: h.admin.password, userId: await idOf(h.admin.username), token: h.admin.token },
    as('non-member', 'outsider', [], out),
    as('member without flags', 'member', [], none),
    ...PERMISSION_FLAGS.map((f, i) => as(`member with ${f}`, 'member', [f], single[i])),
    as('member with the three user flags', 'member', USER_FLAGS, managers),
  ];
  const owner = { username: o!.username, userId: o!.userId };
  const target = { username: t!.username, userId: t!.userId };
  const world = await createWorld(db, [
    { userId: owner.userId, flags: PERMISSION_FLAGS },
    { userId: target.userId, flags: [] },
    ...callers.filter((c) => c.kind === 'member').map((c) => ({ userId: c.userId, flags: c.flags })),
  ]);
  const sim = await connectSimHost(h, world.area.id, world.pool.name);
  return { owner, target, callers, world, simHostId: sim.hostId, simAgent: sim.agent };
}
