// Whole-process tests of the orchestrator binary against real PostgreSQL and embedded PGlite.
import { describe, it, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { freshDatabase, type FreshDatabase } from '@kloudak/testkit';
import { loadMigrations } from '@kloudak/prisma';
import { ORCHESTRATOR_MAIN, startOrchestratorProcess, type OrchestratorProcess } from './orchestrator-process.js';

const ADMIN_PASSWORD = 'E2e-Admin-Passw0rd';
const USER_PASSWORD = 'E2e-User-Passw0rd-42';

async function json(url: string, init: RequestInit & { body?: string } = {}): Promise<{ status: number; body: any }> { // eslint-disable-line @typescript-eslint/no-explicit-any
  const res = await fetch(url, { ...init, headers: { 'content-type': 'application/json', ...(init.headers ?? {}) } });
  const text = await res.text();
  return { status: res.status, body: text ? JSON.parse(text) : undefined };
}

describe('two orchestrators starting together on one PostgreSQL', () => {
  let fresh: FreshDatabase | undefined;
  const procs: OrchestratorProcess[] = [];
  const dirs: string[] = [];
  after(async () => {
    for (const p of procs) await p.stop();
    await fresh?.drop();
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });

  it('apply each migration exactly once and both serve the same data', async () => {
    fresh = await freshDatabase();
    const keys = mkdtempSync(join(tmpdir(), 'kloudak-e2e-'));
    dirs.push(keys);
    // Shared signing keys so a token from one instance is valid on the other (as in a real HA pair).
    const env = (dir: string) => ({
      DATABASE_URL: fresh!.url,
      KLOUDAK_DATA_DIR: dir,
      KLOUDAK_JWT_PRIVATE_KEY_FILE: join(keys, 'keys', 'jwt-ed25519.key'),
      KLOUDAK_JWT_PUBLIC_KEY_FILE: join(keys, 'keys', 'jwt-ed25519.pub'),
      KLOUDAK_ADMIN_USER: 'boss',
      KLOUDAK_ADMIN_PASSWORD: ADMIN_PASSWORD,
    });
    // Generate the key pair once, through the binary's own first start on PGlite.
    const keygen = await startOrchestratorProcess({ KLOUDAK_DATA_DIR: keys, KLOUDAK_LOG_LEVEL: 'silent' });
    await keygen.stop();
    const d1 = mkdtempSync(join(tmpdir(), 'kloudak-e2e-'));
    const d2 = mkdtempSync(join(tmpdir(), 'kloudak-e2e-'));
    dirs.push(d1, d2);
    // allSettled: if one fails to start, the other must still be stopped by after().
    const started = await Promise.allSettled([startOrchestratorProcess(env(d1)), startOrchestratorProcess(env(d2))]);
    for (const r of started) if (r.status === 'fulfilled') procs.push(r.value);
    for (const r of started) if (r.status === 'rejected') throw r.reason;
    const [a, b] = procs as [OrchestratorProcess, OrchestratorProcess];

    const c = new pg.Client({ connectionString: fresh.url });
    await c.connect();
    try {
      const rows = await c.query<{ migration_name: string; n: string }>(
        'SELECT migration_name, count(*)::text AS n FROM "_prisma_migrations" GROUP BY migration_name ORDER BY 1',
      );
      assert.deepEqual(
        rows.rows,
        loadMigrations().map((m) => ({ migration_name: m.name, n: '1' })),
      );
      const admins = await c.query('SELECT username FROM "User" WHERE "isAdmin"');
      assert.equal(admins.rowCount, 1, 'the first admin is created once');
    } finally {
      await c.end();
    }
    const migratedBy = [a, b].filter((p) => /"applied":\["/.test(p.output())).length;
    assert.equal(migratedBy, 1, 'exactly one process applied the migrations');

    const login = await json(`${a.url}/api/v1/auth/login`, { method: 'POST', body: JSON.stringify({ username: 'boss', password: ADMIN_PASSWORD }) });
    assert.equal(login.status, 200);
    const auth = { authorization: `Bearer ${login.body.token}` };
    const made = await json(`${a.url}/api/v1/templates`, { method: 'POST', headers: auth, body: JSON.stringify({ name: 'shared', os: 'debian', cpu: 1, ramMb: 256, diskGb: 1, image: 'x' }) });
    assert.equal(made.status, 201);
    const seen = await json(`${b.url}/api/v1/templates/shared`, { headers: auth });
    assert.equal(seen.status, 200, 'instance b reads what a wrote, with a token a issued');
  });
});

describe('the orchestrator process', () => {
  it('starts on embedded defaults, keeps secrets out of its logs, and stops gracefully on SIGTERM', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'kloudak-e2e-'));
    try {
      const p = await startOrchestratorProcess({ KLOUDAK_DATA_DIR: dir, KLOUDAK_ADMIN_USER: 'boss', KLOUDAK_ADMIN_PASSWORD: ADMIN_PASSWORD, KLOUDAK_LOG_LEVEL: 'debug' });
      let token = '';
      try {
        const ready = await json(`${p.url}/readyz`);
        assert.equal(ready.body.database, 'pglite');
        assert.equal((statSync(join(dir, 'keys', 'jwt-ed25519.key')).mode & 0o777).toString(8), '600', 'private key is owner-only');
        const signup = await json(`${p.url}/api/v1/auth/signup`, { method: 'POST', body: JSON.stringify({ username: 'secretive', email: 's@example.test', password: USER_PASSWORD }) });
        assert.equal(signup.status, 201);
        const login = await json(`${p.url}/api/v1/auth/login`, { method: 'POST', body: JSON.stringify({ username: 'secretive', password: USER_PASSWORD }) });
        token = login.body.token;
        await json(`${p.url}/api/v1/me`, { headers: { authorization: `Bearer ${token}` } });
        await json(`${p.url}/api/v1/me`, { headers: { token } });
        await json(`${p.url}/api/v1/auth/password`, { method: 'POST', headers: { token }, body: JSON.stringify({ currentPassword: 'nope-Wrong-123', newPassword: USER_PASSWORD + 'x' }) });
        await json(`${p.url}/api/v1/auth/login`, { method: 'POST', body: JSON.stringify({ username: 'secretive', password: 'Wrong-But-Logged?' }) });
        // A request in flight when SIGTERM arrives still gets its answer.
        const inFlight = fetch(`${p.url}/api/v1/auth/login`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ username: 'secretive', password: USER_PASSWORD }) });
        await new Promise((r) => setTimeout(r, 20));
        const code = p.stop();
        assert.equal((await inFlight).status, 200);
        assert.equal(await code, 0, 'clean exit');
      } finally {
        await p.stop();
      }
      const out = p.output();
      assert.match(out, /"msg":"request"/, 'requests are logged');
      assert.match(out, /"component":"orchestrator"/);
      for (const secret of [ADMIN_PASSWORD, USER_PASSWORD, 'Wrong-But-Logged?', token, token.split('.')[2] as string]) {
        assert.ok(!out.includes(secret), `log contains a secret: ${secret.slice(0, 6)}…`);
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('creates an admin from the command line with the password on stdin', () => {
    const dir = mkdtempSync(join(tmpdir(), 'kloudak-e2e-'));
    try {
      const env = { PATH: process.env['PATH'] ?? '', KLOUDAK_DATA_DIR: dir, KLOUDAK_LOG_LEVEL: 'silent', KLOUDAK_PASSWORD_HASH_COST: '12' };
      const weak = spawnSync(process.execPath, [ORCHESTRATOR_MAIN, 'admin', 'create', '--username', 'ops', '--password-stdin'], { env, input: 'weak\n', encoding: 'utf8' });
      assert.equal(weak.status, 1);
      assert.match(weak.stderr, /admin password: password must have at least 10/);
      assert.doesNotMatch(weak.stderr, /\n\s+at /, 'no stack trace');
      const ok = spawnSync(process.execPath, [ORCHESTRATOR_MAIN, 'admin', 'create', '--username', 'ops', '--email', 'ops@example.test', '--password-stdin'], { env, input: 'Keeper-Admin-Passw0rd\n', encoding: 'utf8' });
      assert.equal(ok.status, 0, ok.stderr);
      assert.match(ok.stdout, /admin ops created/);
      const mig = spawnSync(process.execPath, [ORCHESTRATOR_MAIN, 'migrate'], { env, encoding: 'utf8' });
      assert.equal(mig.status, 0, mig.stderr);
      assert.deepEqual(JSON.parse(mig.stdout).applied, []);
      const bad = spawnSync(process.execPath, [ORCHESTRATOR_MAIN, 'serve'], { env: { ...env, KLOUDAK_PORT: 'seventy' }, encoding: 'utf8' });
      assert.equal(bad.status, 1);
      assert.match(bad.stderr, /invalid configuration/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
