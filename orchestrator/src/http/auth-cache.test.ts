// The cache of authenticated tokens (app/principal-cache.ts) never lets a refused token through:
// a logout, password change, removal from a workspace or workspace deletion refuses the token at
// once on the orchestrator that made the change, and within a second on another orchestrator of
// the same deployment (same PostgreSQL database, same NATS), which learns of it over NATS.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { createLogger } from '@kloudak/common';
import { systemClock } from '../clock.js';
import { configWith } from '../config.js';
import { startOrchestrator, type Orchestrator } from '../server.js';
import { Client, PASSWORD, startHarness, type Harness, type TestUser } from '../testing/harness.js';

/** How soon another orchestrator must refuse a revoked token. */
const ACROSS_MS = 1000;

let n = 0;
const uniq = (p: string) => `${p}-${++n}-${process.pid % 10_000}`;

describe('authenticated-token cache across two orchestrators (postgres, NATS)', () => {
  let h: Harness;
  let other: Orchestrator;

  before(async () => {
    h = await startHarness('postgres');
    // A second instance of the same deployment: same database, data directory (token keys) and NATS.
    other = await startOrchestrator(configWith({ ...h.config, port: 0, agentPort: 0 }), createLogger({ component: 'orchestrator-2', level: 'silent' }), systemClock);
  });
  after(async () => {
    await other?.close();
    await h?.close();
  });

  /** `token` works on both orchestrators and sits in both caches. */
  async function cachedOnBoth(token: string): Promise<void> {
    for (const o of [h.orch, other]) {
      assert.equal((await new Client(o.url, token).get('/api/v1/me')).status, 200);
      assert.ok(o.services.principals.get(token), `cached on ${o.url}`);
    }
  }

  /** Poll `url` with `token` until it is refused; the ms it took, failing past ACROSS_MS. */
  async function refusedWithin(o: Orchestrator, token: string, since: number): Promise<number> {
    const c = new Client(o.url, token);
    for (;;) {
      const r = await c.get('/api/v1/me');
      const elapsed = performance.now() - since;
      if (r.status === 401) return elapsed;
      assert.equal(r.status, 200);
      assert.ok(elapsed < ACROSS_MS, `token still accepted on the other orchestrator after ${Math.round(elapsed)} ms`);
      await new Promise((res) => setTimeout(res, 5));
    }
  }

  async function owner(): Promise<{ u: TestUser; ws: string }> {
    const u = await h.user('owner');
    const ws = uniq('ws');
    assert.equal((await u.client.post('/api/v1/workspaces', { name: ws })).status, 201);
    return { u, ws };
  }

  it('logout: the token is refused at once here and within a second on the other orchestrator', async () => {
    const u = await h.user('cache');
    const second = await h.login(u.username, u.password); // another session of the same user
    await cachedOnBoth(u.token);
    await cachedOnBoth(second);
    const t0 = performance.now();
    assert.equal((await u.client.post('/api/v1/auth/logout')).status, 204);
    assert.equal((await u.client.get('/api/v1/me')).status, 401, 'refused at once where it was logged out');
    const ms = await refusedWithin(other, u.token, t0);
    console.log(`# logout: refused on the other orchestrator after ${ms.toFixed(1)} ms`);
    // The user's other token was not revoked: it still works (looked up again where it was forgotten).
    for (const o of [h.orch, other]) assert.equal((await new Client(o.url, second).get('/api/v1/me')).status, 200);
  });

  it('password change: every earlier token is refused at once here and within a second on the other', async () => {
    const u = await h.user('cache');
    const second = await h.login(u.username, u.password);
    await cachedOnBoth(u.token);
    await cachedOnBoth(second);
    const t0 = performance.now();
    assert.equal((await u.client.post('/api/v1/auth/password', { currentPassword: PASSWORD, newPassword: 'An0ther-Long-Passphrase' })).status, 204);
    assert.equal((await new Client(h.url, second).get('/api/v1/me')).status, 401);
    assert.equal((await u.client.get('/api/v1/me')).status, 401);
    await refusedWithin(other, second, t0);
    await refusedWithin(other, u.token, t0);
    const fresh = await h.login(u.username, 'An0ther-Long-Passphrase');
    assert.equal((await new Client(other.url, fresh).get('/api/v1/me')).status, 200);
  });

  it('removal from a workspace: the member is refused at once here and within a second on the other', async () => {
    const { u, ws } = await owner();
    const m = await h.user('member');
    assert.equal((await u.client.post(`/api/v1/workspaces/${ws}/members`, { username: m.username })).status, 201);
    await cachedOnBoth(m.token);
    await cachedOnBoth(u.token);
    const t0 = performance.now();
    assert.equal((await u.client.del(`/api/v1/workspaces/${ws}/members/${m.username}`)).status, 204);
    assert.equal((await m.client.get('/api/v1/me')).status, 401);
    await refusedWithin(other, m.token, t0);
    assert.equal((await new Client(other.url, u.token).get('/api/v1/me')).status, 200, 'the owner is not affected');
  });

  it('workspace deletion: every member is refused at once here and within a second on the other', async () => {
    const { u, ws } = await owner();
    const m = await h.user('member');
    assert.equal((await u.client.post(`/api/v1/workspaces/${ws}/members`, { username: m.username })).status, 201);
    await cachedOnBoth(m.token);
    await cachedOnBoth(u.token);
    const t0 = performance.now();
    assert.equal((await u.client.del(`/api/v1/workspaces/${ws}`)).status, 204);
    assert.equal((await u.client.get('/api/v1/me')).status, 401);
    assert.equal((await m.client.get('/api/v1/me')).status, 401);
    await refusedWithin(other, u.token, t0);
    await refusedWithin(other, m.token, t0);
  });
});

describe('authenticated-token cache: changes that send no event', () => {
  let h: Harness;
  let offset = 0;
  const clock = { now: () => Date.now() + offset };
  const TTL = 5000;

  before(async () => {
    h = await startHarness('postgres', { principalCacheMs: TTL }, clock);
  });
  after(async () => {
    await h?.close();
  });

  it('a user deleted or changed in the database directly is refused once the cache life has passed', async () => {
    const gone = await h.user('gone');
    const bumped = await h.user('bumped');
    for (const u of [gone, bumped]) assert.equal((await u.client.get('/api/v1/me')).status, 200);
    const db = h.orch.db.client;
    await db.user.delete({ where: { username: gone.username } });
    // What `kloudak-orchestrator admin create` does to an existing user: a new password hash and token version.
    await db.user.update({ where: { username: bumped.username }, data: { tokenVersion: { increment: 1 } } });
    // Within the cache's life the principals are still the ones checked a moment ago…
    assert.equal((await gone.client.get('/api/v1/templates')).status, 200);
    assert.equal((await bumped.client.get('/api/v1/templates')).status, 200);
    // …and once it has passed, the database decides.
    offset += TTL;
    assert.equal((await gone.client.get('/api/v1/templates')).status, 401);
    assert.equal((await bumped.client.get('/api/v1/templates')).status, 401);
  });

  it('a token is never used past its expiry, whatever the cache life', async () => {
    const u = await h.user('expiry');
    assert.equal((await u.client.get('/api/v1/me')).status, 200);
    assert.ok(h.orch.services.principals.get(u.token));
    offset += h.config.tokenTtlSeconds * 1000;
    assert.equal(h.orch.services.principals.get(u.token), undefined);
    assert.equal((await u.client.get('/api/v1/me')).status, 401);
  });
});
