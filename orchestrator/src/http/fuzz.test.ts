// Property-based robustness of the REST API: every route gets random and malformed path
// parameters, query strings, bodies, content types and credentials over raw HTTP (node:http, so
// nothing is normalised on the way), on PostgreSQL and on embedded PGlite. Whatever comes in, the
// answer is below 500, errors are the JSON error shape, and no stack trace, password hash, admin
// password or presented token leaks.
//
// Reproduce a failure with the seed fast-check prints: KLOUDAK_FUZZ_SEED=<seed> (and
// KLOUDAK_FUZZ_RUNS=<n> to run more or fewer cases per route). Every route runs exactly that many
// cases; one that cannot within KLOUDAK_FUZZ_ROUTE_LIMIT_MS (60 s) fails instead of testing fewer.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import http from 'node:http';
import fc from 'fast-check';
import { SignJWT, generateKeyPair, type CryptoKey } from 'jose';
import { loadOrCreateKeys, TokenService, type TokenKeys } from '../auth/tokens.js';
import { systemClock } from '../clock.js';
import { PERMISSION_FLAGS } from '../domain/permissions.js';
import { ENGINES, startHarness, type Harness } from '../testing/harness.js';
import { createWorld, fillPath, pathParams, routeKey, uniq, validBody, validParams, type World } from '../testing/fixtures.js';
import { MAX_BODY_BYTES } from './app.js';

const RUNS = Number(process.env['KLOUDAK_FUZZ_RUNS'] ?? 100);
// A route's whole property must finish within this; a slower run FAILS (it is never cut short
// quietly, which would test fewer cases than it says). 100 runs take about 0.3 s a route here.
const ROUTE_TIME_LIMIT_MS = Number(process.env['KLOUDAK_FUZZ_ROUTE_LIMIT_MS'] ?? 60_000);
// CI runs a fixed seed so a landing is reproducible; developers' runs explore new seeds each time.
const SEED = process.env['KLOUDAK_FUZZ_SEED']
  ? Number(process.env['KLOUDAK_FUZZ_SEED'])
  : process.env['CI']
    ? 20261125
    : (Date.now() ^ (process.pid << 16)) | 0;

// ---------- raw HTTP ----------

interface Raw {
  status: number;
  text: string;
  headers: http.IncomingHttpHeaders;
}

/** One request over a fresh connection; the path goes out exactly as given. */
function send(base: string, method: string, path: string, headers: Record<string, string>, body?: Buffer | string): Promise<Raw> {
  const u = new URL(base);
  // Node's client sends a GET or DELETE body without a length unless told, which is not HTTP.
  const h = body === undefined ? headers : { ...headers, 'content-length': String(Buffer.byteLength(body)) };
  return new Promise((resolve, reject) => {
    const req = http.request(
      { host: u.hostname, port: u.port, method, path, headers: h, agent: false, timeout: 20_000 },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString('utf8'), headers: res.headers }));
        res.on('error', reject);
      },
    );
    req.on('timeout', () => req.destroy(new Error(`timeout: ${method} ${path.slice(0, 200)}`)));
    req.on('error', reject);
    req.end(body);
  });
}

/** Percent-encode everything but unreserved characters (lone surrogates become U+FFFD). */
function pctAll(s: string): string {
  let out = '';
  for (const b of Buffer.from(s, 'utf8')) {
    const c = String.fromCharCode(b);
    out += /[A-Za-z0-9\-._~]/.test(c) ? c : `%${b.toString(16).toUpperCase().padStart(2, '0')}`;
  }
  return out;
}

/** Keep printable ASCII as is ('%', '/', '?', '#' included): only what HTTP cannot carry is encoded. */
function pctRaw(s: string): string {
  let out = '';
  for (const b of Buffer.from(s, 'utf8')) out += b >= 0x21 && b <= 0x7e ? String.fromCharCode(b) : `%${b.toString(16).toUpperCase().padStart(2, '0')}`;
  return out;
}

function b64url(o: unknown): string {
  return Buffer.from(JSON.stringify(o)).toString('base64url');
}

// ---------- generators ----------

/** Characters a header value may carry (Node refuses the others before sending). */
const headerChar = fc.integer({ min: 0x20, max: 0xff }).filter((c) => c !== 0x7f).map((c) => String.fromCharCode(c));
const headerValue = (maxLength = 120) => fc.string({ unit: headerChar, maxLength });

const NASTY = [
  '', '.', '..', '../', '../../etc/passwd', '..%2F..%2Fetc', '%', '%%', '%zz', '%00', '%2e%2e', '%2F', '%C0%AF', '%E0%A4%A',
  '%FF%FE', '%u0041', '\u0000', 'a\u0000b', '\u202e', '\ud800', '😀', 'é', 'ǅ', '-', 'null', 'undefined', 'NaN', 'true', '0',
  '__proto__', 'constructor', 'prototype', 'hasOwnProperty', '{ws}', ':ws', '*', '?a=b', '#frag', ' ', ';', 'CON', "'; DROP TABLE \"User\"; --",
  '$where', '{"$gt":""}', 'a'.repeat(63), 'a'.repeat(64), 'A-Upper', '00000000-0000-0000-0000-000000000000',
];

/** Strings from every corner: ASCII, full Unicode (lone surrogates, NUL), known-nasty, very long. */
const weird = fc.oneof(
  { weight: 3, arbitrary: fc.constantFrom(...NASTY) },
  { weight: 2, arbitrary: fc.string({ unit: 'binary', maxLength: 40 }) },
  { weight: 2, arbitrary: fc.string({ unit: 'grapheme', maxLength: 40 }) },
  { weight: 2, arbitrary: fc.string({ maxLength: 40 }) },
  { weight: 1, arbitrary: fc.string({ minLength: 200, maxLength: 3000 }) },
);

/** A value close to a valid one: the valid one, a variation of it, or something else entirely. */
const nearly = (valid: string) =>
  fc.oneof(
    { weight: 3, arbitrary: fc.constant(valid) },
    { weight: 1, arbitrary: weird.map((x) => valid + x) },
    { weight: 1, arbitrary: fc.constantFrom(valid.toUpperCase(), ` ${valid}`, `${valid}/`, `${valid}/..`, valid.slice(1)) },
    { weight: 4, arbitrary: weird },
  );

const queryKey = fc.oneof(
  fc.constantFrom('limit', 'after', 'limit', 'after', '__proto__', 'constructor', 'prototype', 'x', 'limit[]', 'after[$gt]', '__proto__[admin]', ''),
  fc.string({ maxLength: 10 }),
);
const queryValue = fc.oneof(
  fc.constantFrom('0', '1', '-1', '2', '1000', '1001', '1e3', '1.5', 'NaN', 'Infinity', '0x10', '', 'true', 'null', '99999999999999999999999', '%00', 'a', ' 5'),
  fc.integer().map(String),
  weird,
);
/** `?k=v&...`, each pair percent-encoded or sent nearly raw. */
const queryArb = fc.oneof(
  { weight: 2, arbitrary: fc.constant('') },
  { weight: 1, arbitrary: fc.constantFrom('?', '?&&', '?=', '?limit', '?limit=1&limit=2', '?after=%00', '?%', '?a=%zz') },
  {
    weight: 4,
    arbitrary: fc
      .array(fc.tuple(queryKey, queryValue, fc.boolean()), { minLength: 1, maxLength: 5 })
      .map((pairs) => '?' + pairs.map(([k, v, raw]) => (raw ? `${pctRaw(k)}=${pctRaw(v)}` : `${pctAll(k)}=${pctAll(v)}`)).join('&')),
  },
);

const JSON_TYPES = ['application/json', 'application/json; charset=utf-8', 'APPLICATION/JSON', 'application/json;charset=latin1', 'application/json, text/plain'];
const contentTypeArb = fc.oneof(
  { weight: 6, arbitrary: fc.constantFrom(...JSON_TYPES) },
  { weight: 1, arbitrary: fc.constantFrom('text/plain', 'application/x-www-form-urlencoded', 'multipart/form-data; boundary=x', 'application/jsonx', '', 'application/xml', '*/*') },
  { weight: 1, arbitrary: headerValue(40) },
  { weight: 1, arbitrary: fc.constant(undefined) },
);

const jsonish = fc.jsonValue({ maxDepth: 4, stringUnit: 'binary' });
const POLLUTION = '"__proto__":{"admin":true,"isAdmin":true,"polluted":1},"constructor":{"prototype":{"isAdmin":true,"polluted":1}}';

/** A body as text (undefined: none), built around a valid sample of the route. */
function bodyArb(sample: () => unknown) {
  const mutate = fc
    .tuple(fc.constantFrom('set', 'delete', 'replace-strings', 'extra', 'wrap', 'nul'), fc.oneof(fc.constantFrom('name', 'username', 'password', 'description', 'permissions', 'cpu', 'area', 'path', 'subnet', 'maintenance'), fc.string({ maxLength: 8 })), jsonish)
    .map(([op, key, value]) => {
      const s = sample() as Record<string, unknown>;
      switch (op) {
        case 'set':
          return JSON.stringify({ ...s, [key]: value });
        case 'delete': {
          const { [Object.keys(s)[0] ?? key]: _gone, ...rest } = s;
          return JSON.stringify(rest);
        }
        case 'replace-strings':
          return JSON.stringify(Object.fromEntries(Object.entries(s).map(([k, v]) => [k, typeof v === 'string' ? value : v])));
        case 'extra':
          return JSON.stringify({ ...s, [key]: value, [`${key}2`]: value });
        case 'wrap':
          return JSON.stringify([s]);
        default:
          return JSON.stringify(Object.fromEntries(Object.entries(s).map(([k, v]) => [k, typeof v === 'string' ? `${v}\u0000` : v])));
      }
    });
  return fc.oneof(
    { weight: 2, arbitrary: fc.constant(undefined) },
    { weight: 3, arbitrary: fc.constant(null).map(() => JSON.stringify(sample())) },
    { weight: 6, arbitrary: mutate },
    { weight: 3, arbitrary: jsonish.map((v) => JSON.stringify(v)) },
    { weight: 2, arbitrary: fc.anything({ maxDepth: 3, withNullPrototype: true, withObjectString: true }).map((v) => JSON.stringify(v) ?? 'undefined') },
    { weight: 2, arbitrary: fc.oneof(fc.string({ unit: 'binary', maxLength: 60 }), fc.constantFrom('{', '{"a":', 'nul', '\ufeff{}', '{"a":1}garbage', "{'a':1}", '{"a":1,}', 'NaN', '[', '"\\ud800"', '{"a":"\\u0000"}')) },
    { weight: 1, arbitrary: fc.constant(null).map(() => JSON.stringify(sample()).slice(0, -3)) },
    { weight: 1, arbitrary: fc.constant(null).map(() => `{${POLLUTION},${JSON.stringify(sample()).slice(1)}`) },
    { weight: 1, arbitrary: fc.integer({ min: 10, max: 20_000 }).chain((d) => fc.constantFrom('['.repeat(d) + ']'.repeat(d), '{"a":'.repeat(d) + '1' + '}'.repeat(d))) },
    { weight: 1, arbitrary: fc.integer({ min: 1000, max: MAX_BODY_BYTES - 100 }).map((n) => JSON.stringify({ ...(sample() as object), description: 'x'.repeat(n) })) },
  );
}

/** Which credentials a request presents, and how. */
const TOKEN_KINDS = [
  'none', 'admin', 'member', 'outsider', // valid
  'garbage', 'alg-none', 'alg-none-signed', 'foreign-key', 'hs256-public-key', 'tampered', 'expired', 'wrong-audience', 'wrong-issuer', 'unknown-user', 'bad-sub', 'bad-scheme',
] as const;
type TokenKind = (typeof TOKEN_KINDS)[number];
const authArb = fc.record({
  kind: fc.oneof({ weight: 3, arbitrary: fc.constantFrom<TokenKind>('admin', 'member', 'outsider', 'none') }, { weight: 2, arbitrary: fc.constantFrom(...TOKEN_KINDS) }),
  via: fc.constantFrom('authorization', 'authorization', 'token', 'both'),
  garbage: headerValue(200),
  tamper: fc.constantFrom('admin', 'sub', 'ver', 'exp', 'username'),
});

const extraHeadersArb = fc.dictionary(
  fc.constantFrom('x-request-id', 'x-forwarded-for', 'accept', 'accept-encoding', 'accept-language', 'content-encoding', 'cookie', 'origin', 'x-http-method-override', 'x-foo'),
  headerValue(80),
  { maxKeys: 3 },
);

// ---------- checks ----------

interface Secrets {
  adminPassword: string;
}

/** The invariants of every answer. */
function checkAnswer(res: Raw, sent: { headerText: string; bodyText: string; token: string | undefined }, s: Secrets): void {
  const where = `${res.status} ${res.text.slice(0, 300)}`;
  assert.ok(res.status >= 200 && res.status < 500, `status below 500: ${where}`);
  assert.doesNotMatch(res.text, /scrypt\$|node_modules|file:\/\//, `no password hash or file paths: ${where}`);
  if (!sent.headerText.includes(s.adminPassword) && !sent.bodyText.includes(s.adminPassword)) {
    assert.ok(!res.text.includes(s.adminPassword), `no admin password: ${where}`);
  }
  if (sent.token && sent.token.length >= 16) assert.ok(!res.text.includes(sent.token), `the presented token is not echoed: ${where}`);
  if (res.status >= 400) {
    // Errors never echo request bodies, so any of these is a leak (successes may echo what was sent).
    assert.doesNotMatch(res.text, /\n\s+at |\\n\s+at |Prisma|prisma\.|SELECT |INSERT |Error:/, `no stack trace or internals: ${where}`);
    assert.doesNotMatch(res.text, /eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}/, `no token in an error: ${where}`);
    assert.match(String(res.headers['content-type']), /^application\/json/, `JSON error: ${where}`);
    const body = JSON.parse(res.text) as { error?: { code?: unknown; message?: unknown; requestId?: unknown } };
    assert.equal(typeof body.error?.code, 'string', `error.code: ${where}`);
    assert.equal(typeof body.error?.message, 'string', `error.message: ${where}`);
    assert.ok((body.error?.message as string).length > 0);
    assert.equal(body.error?.requestId, res.headers['x-request-id'], 'the error names the request id it answers');
  } else if (res.status !== 204) {
    JSON.parse(res.text); // successes are JSON too
  }
}

const PROTO_KEYS = Object.getOwnPropertyNames(Object.prototype).sort();
function checkNoPollution(): void {
  assert.deepEqual(Object.getOwnPropertyNames(Object.prototype).sort(), PROTO_KEYS, 'Object.prototype unchanged');
  const probe = {} as Record<string, unknown>;
  assert.equal(probe['isAdmin'], undefined);
  assert.equal(probe['admin'], undefined);
  assert.equal(probe['polluted'], undefined);
}

for (const engine of ENGINES) {
  describe(`fuzzing every route on ${engine}`, () => {
    let h: Harness;
    let tokens: TokenService;
    let signingKeys: TokenKeys;
    let foreign: CryptoKey;
    let publicPem: string;
    const ids: Record<'admin' | 'member' | 'outsider', string> = { admin: '', member: '', outsider: '' };
    const names: Record<'member' | 'outsider', string> = { member: '', outsider: '' };
    const db = () => h.orch.db.client;

    /** A fresh, valid token of a user (current token version; no login, so no scrypt and no rate limit). */
    async function mint(userId: string, extra: { ttl?: number; iat?: number } = {}): Promise<string> {
      const u = await db().user.findUniqueOrThrow({ where: { id: userId } });
      const svc =
        extra.ttl === undefined
          ? tokens
          : new TokenService(signingKeys, { now: () => extra.iat ?? Date.now() }, { issuer: h.config.jwtIssuer, audience: h.config.jwtAudience, ttlSeconds: extra.ttl });
      const t = await svc.issue({ sub: u.id, username: u.username, email: u.email, admin: u.isAdmin, ver: u.tokenVersion, workspaces: {} });
      return t.token;
    }

    /** The token (or header value) a request presents for a kind of credential. */
    async function credential(a: { kind: TokenKind; garbage: string; tamper: string }): Promise<string | undefined> {
      const admin = async () => mint(ids.admin);
      // Signed with the server's own key: only the claim under test is wrong.
      const signWith = async (claims: Record<string, unknown>, iss = h.config.jwtIssuer, aud = h.config.jwtAudience) =>
        new SignJWT(claims)
          .setProtectedHeader({ alg: 'EdDSA', typ: 'JWT' })
          .setIssuer(iss)
          .setAudience(aud)
          .setIssuedAt()
          .setExpirationTime('1h')
          .setJti(uniq('jti'))
          .setSubject(String(claims['sub']))
          .sign(signingKeys.privateKey);
      const adminClaims = async () => {
        const row = await db().user.findUniqueOrThrow({ where: { id: ids.admin } });
        return { sub: ids.admin, username: row.username, email: row.email, admin: true, ver: row.tokenVersion, workspaces: {} };
      };
      switch (a.kind) {
        case 'none':
          return undefined;
        case 'admin':
          return admin();
        case 'member':
        case 'outsider':
          return mint(ids[a.kind]);
        case 'garbage':
          return a.garbage;
        case 'alg-none': {
          const [, payload] = (await admin()).split('.');
          return `${b64url({ alg: 'none', typ: 'JWT' })}.${payload}.`;
        }
        case 'alg-none-signed': {
          const [, payload, sig] = (await admin()).split('.');
          return `${b64url({ alg: 'none' })}.${payload}.${sig}`;
        }
        case 'foreign-key':
          return new SignJWT(await adminClaims())
            .setProtectedHeader({ alg: 'EdDSA' })
            .setIssuer(h.config.jwtIssuer)
            .setAudience(h.config.jwtAudience)
            .setSubject(ids.admin)
            .setIssuedAt()
            .setExpirationTime('1h')
            .setJti(uniq('jti'))
            .sign(foreign);
        case 'hs256-public-key': {
          // Algorithm confusion: HMAC "signed" with the server's public key.
          const [, payload] = (await admin()).split('.');
          const head = b64url({ alg: 'HS256', typ: 'JWT' });
          return `${head}.${payload}.${createHmac('sha256', publicPem).update(`${head}.${payload}`).digest('base64url')}`;
        }
        case 'tampered': {
          const [head, payload, sig] = (await mint(ids.member)).split('.') as [string, string, string];
          const claims = JSON.parse(Buffer.from(payload, 'base64url').toString()) as Record<string, unknown>;
          const changed = { admin: { admin: true }, sub: { sub: ids.admin }, ver: { ver: 999 }, exp: { exp: 4102444800 }, username: { username: h.admin.username } }[a.tamper];
          return `${head}.${b64url({ ...claims, ...changed })}.${sig}`;
        }
        case 'expired':
          return mint(ids.admin, { ttl: 60, iat: Date.now() - 3_600_000 });
        case 'wrong-audience':
          return signWith(await adminClaims(), h.config.jwtIssuer, 'someone-else');
        case 'wrong-issuer':
          return signWith(await adminClaims(), 'evil', h.config.jwtAudience);
        case 'unknown-user':
          return signWith({ ...(await adminClaims()), sub: '00000000-0000-4000-8000-000000000000' });
        case 'bad-sub':
          return signWith({ ...(await adminClaims()), sub: `${ids.admin}' OR 1=1` });
        case 'bad-scheme':
          return undefined;
      }
    }

    before(async () => {
      h = await startHarness(engine);
      signingKeys = await loadOrCreateKeys({ dataDir: h.config.dataDir, privateKeyFile: h.config.jwtPrivateKeyFile, publicKeyFile: h.config.jwtPublicKeyFile });
      tokens = new TokenService(signingKeys, systemClock, { issuer: h.config.jwtIssuer, audience: h.config.jwtAudience, ttlSeconds: 3600 });
      foreign = (await generateKeyPair('EdDSA', { crv: 'Ed25519' })).privateKey;
      publicPem = readFileSync(h.config.jwtPublicKeyFile || join(h.config.dataDir, 'keys', 'jwt-ed25519.pub'), 'utf8');
      const [m, o] = [await h.user('fuzzmember'), await h.user('fuzzoutsider')];
      names.member = m.username;
      names.outsider = o.username;
      for (const [k2, u] of [['admin', h.admin.username], ['member', m.username], ['outsider', o.username]] as const) {
        ids[k2] = (await db().user.findUniqueOrThrow({ where: { username: u } })).id;
      }
    });
    after(async () => {
      await h?.close();
    });

    it('has valid path parameters and a valid body for every route', async () => {
      const w = await createWorld(db());
      assert.ok(h.orch.api.routes.length >= 30, `${h.orch.api.routes.length} routes`);
      for (const r of h.orch.api.routes) {
        assert.doesNotThrow(() => validParams(r, w, names.member), routeKey(r));
        if (r.body) assert.doesNotThrow(() => validBody(routeKey(r), w, names.member), routeKey(r));
      }
    });

    // One property per route, each a subtest (routes are only known once the API exists).
    it(`keeps every answer below 500 with well-formed JSON errors and no leaks (seed ${SEED}, ${RUNS} runs per route)`, async (t) => {
      for (const [i, r] of h.orch.api.routes.entries()) {
        const key = routeKey(r);
        await t.test(key, async (st) => {
          // A world of its own per route: a lucky admin request may rename or delete what it finds.
          const w: World = await createWorld(db(), [
            { userId: ids.member, flags: PERMISSION_FLAGS.filter((_f, j) => j % 2 === 0) },
          ]);
          const valid = validParams(r, w, names.member);
          const paramsArb = fc.record(Object.fromEntries(pathParams(r.path).map((p) => [p, nearly(valid[p] as string)])) as Record<string, fc.Arbitrary<string>>);
          const sample = () => (r.body ? validBody(key, w, names.member) : { name: uniq('x') });
          const input = fc.record({
            params: paramsArb,
            rawParams: fc.boolean(),
            query: queryArb,
            body: bodyArb(sample),
            contentType: contentTypeArb,
            auth: authArb,
            extra: extraHeadersArb,
          });
          const started = Date.now();
          const outcome = await fc.check(
            fc.asyncProperty(input, async (x) => {
              const encode = x.rawParams ? pctRaw : pctAll;
              const path = '/api/v1' + r.path.replace(/\{(\w+)\}/g, (_m, p: string) => encode(x.params[p] ?? '')) + x.query;
              const token = await credential(x.auth);
              const headers: Record<string, string> = { ...x.extra };
              if (x.auth.kind === 'bad-scheme') headers['authorization'] = `Basic ${Buffer.from('root-admin:' + h.admin.password).toString('base64')}`;
              else if (token !== undefined) {
                if (x.auth.via !== 'token') headers['authorization'] = `Bearer ${token}`;
                if (x.auth.via !== 'authorization') headers['token'] = token;
              }
              if (x.contentType !== undefined) headers['content-type'] = x.contentType;
              const res = await send(h.url, r.method.toUpperCase(), path, headers, x.body);
              checkAnswer(res, { headerText: JSON.stringify(headers), bodyText: x.body ?? '', token }, { adminPassword: h.admin.password });
              checkNoPollution();
              // Authentication comes first: when the request reaches this route (its parameters are
              // non-empty and encoded, so the path cannot lead elsewhere), bad credentials are 401,
              // no credentials on a non-public route 401, and a non-admin on an admin route 403.
              const reached = !x.rawParams && Object.values(x.params).every((v) => v !== '');
              const presented = x.auth.kind === 'bad-scheme' || (token !== undefined && !(x.auth.via === 'token' && token.trim() === ''));
              const genuine = presented && (x.auth.kind === 'admin' || x.auth.kind === 'member' || x.auth.kind === 'outsider');
              if (reached) {
                const why = `${x.auth.kind} credentials via ${x.auth.via}: ${res.status} ${res.text.slice(0, 200)}`;
                if (presented && !genuine) assert.equal(res.status, 401, `a bad token is refused first; ${why}`);
                else if (!presented && r.access !== 'public') assert.equal(res.status, 401, `sign-in required; ${why}`);
                else if (genuine && r.access === 'admin' && x.auth.kind !== 'admin') assert.equal(res.status, 403, `admins only; ${why}`);
              }
            }),
            { numRuns: RUNS, seed: SEED + i, interruptAfterTimeLimit: ROUTE_TIME_LIMIT_MS, markInterruptAsFailure: true, timeout: 25_000 },
          );
          st.diagnostic(`${outcome.numRuns} runs in ${Date.now() - started} ms`);
          if (outcome.interrupted) assert.fail(`${key}: interrupted after ${outcome.numRuns} of ${RUNS} runs (${ROUTE_TIME_LIMIT_MS} ms): too slow to test what it claims`);
          if (outcome.failed) {
            // fast-check's report (seed, path, counterexample) with over-long lines cut, then the error.
            const report = (fc.defaultReportMessage(outcome) ?? 'failed')
              .split('\n')
              .map((l) => (l.length > 1200 ? `${l.slice(0, 1200)}… (${l.length} chars)` : l))
              .join('\n');
            const error = (outcome.errorInstance as Error | undefined)?.message ?? String(outcome.errorInstance);
            assert.fail(`${key}\n${report}\n${error.slice(0, 1500)}`);
          }
          assert.equal(outcome.numRuns, RUNS, `${key}: every run was made`);
        });
      }
    });

    // ---------- explicit cases ----------

    it('answers unknown routes with a JSON 404, and a known path with another method with a JSON 405', async () => {
      const admin = { authorization: `Bearer ${await mint(ids.admin)}` };
      for (const path of ['/', '/api', '/api/v1', '/api/v1/', '/api/v2/workspaces', '/api/v1/nope', '/api/v1/workspaces/x/unknown', '/api/v1/hosts/a/b/c', '/api/v1/auth', '/favicon.ico', '/api/v1/workspaces/%2e%2e/%2e%2e/etc/passwd', '/%00', '/api/v1/%zz']) {
        for (const headers of [{}, admin]) {
          for (const method of ['GET', 'POST', 'DELETE']) {
            const res = await send(h.url, method, path, headers, method === 'POST' ? '{}' : undefined);
            checkAnswer(res, { headerText: '', bodyText: '', token: undefined }, { adminPassword: h.admin.password });
            assert.equal(res.status, 404, `${method} ${path}: ${res.status} ${res.text}`);
            assert.equal(JSON.parse(res.text).error.code, 'not_found');
          }
        }
      }
      const put = await send(h.url, 'PUT', '/api/v1/workspaces', admin, '{}');
      assert.equal(put.status, 405);
      assert.equal(JSON.parse(put.text).error.code, 'bad_request');
    });

    it('refuses bodies over 1 MiB with 413, declared or streamed', async () => {
      const big = JSON.stringify({ name: uniq('big'), description: 'y'.repeat(MAX_BODY_BYTES) });
      const headers = { authorization: `Bearer ${await mint(ids.admin)}`, 'content-type': 'application/json' };
      const declared = await send(h.url, 'POST', '/api/v1/workspaces', headers, big);
      assert.equal(declared.status, 413, declared.text);
      assert.equal(JSON.parse(declared.text).error.code, 'payload_too_large');
      const signup = await send(h.url, 'POST', '/api/v1/auth/signup', { 'content-type': 'application/json' }, big);
      assert.equal(signup.status, 413, signup.text);
      // Chunked, no Content-Length: the limit is enforced while reading.
      const streamed = await new Promise<Raw>((resolve, reject) => {
        const u = new URL(h.url);
        const req = http.request({ host: u.hostname, port: u.port, method: 'POST', path: '/api/v1/workspaces', headers, agent: false }, (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () => resolve({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString(), headers: res.headers }));
        });
        req.on('error', (e) => (req.writableEnded ? undefined : reject(e)));
        const chunk = Buffer.alloc(64 * 1024, 'z');
        let sent = 0;
        const pump = () => {
          while (sent < MAX_BODY_BYTES + 256 * 1024) {
            sent += chunk.length;
            if (!req.write(chunk)) return void req.once('drain', pump);
          }
          req.end();
        };
        pump();
      });
      assert.equal(streamed.status, 413, streamed.text);
      assert.equal(JSON.parse(streamed.text).error.code, 'payload_too_large');
      assert.equal((await send(h.url, 'GET', '/api/v1/me', { authorization: headers.authorization })).status, 200, 'still serving');
    });

    it('refuses non-JSON content types with 415, invalid JSON and empty bodies with 400, on every route with a body', async () => {
      const w = await createWorld(db(), [{ userId: ids.member, flags: PERMISSION_FLAGS }]);
      const bodyRoutes = h.orch.api.routes.filter((r) => r.body);
      assert.ok(bodyRoutes.length >= 10);
      for (const r of bodyRoutes) {
        const key = routeKey(r);
        const path = fillPath(r.path, validParams(r, w, names.member));
        const auth = { authorization: `Bearer ${await mint(ids.admin)}` };
        const text = JSON.stringify(validBody(key, w, names.member));
        for (const type of ['text/plain', 'application/x-www-form-urlencoded', 'text/json']) {
          const res = await send(h.url, r.method.toUpperCase(), path, { ...auth, 'content-type': type }, text);
          assert.equal(res.status, 415, `${key} as ${type}: ${res.text}`);
          assert.equal(JSON.parse(res.text).error.code, 'unsupported_media_type');
        }
        for (const bad of ['{', '{"name":', "{'a':1}", '{"a":1,}', 'nul', '{"a":1}x']) {
          const res = await send(h.url, r.method.toUpperCase(), path, { ...auth, 'content-type': 'application/json' }, bad);
          assert.equal(res.status, 400, `${key} with ${bad}: ${res.text}`);
          assert.equal(JSON.parse(res.text).error.code, 'bad_request');
        }
        const empty = await send(h.url, r.method.toUpperCase(), path, { ...auth, 'content-type': 'application/json' });
        assert.equal(empty.status, 400, `${key} without a body: ${empty.text}`);
      }
    });

    it('refuses prototype-polluting bodies with 400 and leaves Object.prototype alone', async () => {
      const w = await createWorld(db(), [{ userId: ids.member, flags: PERMISSION_FLAGS }]);
      for (const r of h.orch.api.routes.filter((x) => x.body)) {
        const key = routeKey(r);
        const valid = JSON.stringify(validBody(key, w, names.member));
        for (const text of [`{${POLLUTION},${valid.slice(1)}`, `{"constructor":{"prototype":{"isAdmin":true}},${valid.slice(1)}`, `{"__proto__":null,${valid.slice(1)}`]) {
          const res = await send(h.url, r.method.toUpperCase(), fillPath(r.path, validParams(r, w, names.member)), {
            authorization: `Bearer ${await mint(ids.admin)}`,
            'content-type': 'application/json',
          }, text);
          assert.equal(res.status, 400, `${key}: ${res.status} ${res.text}`);
          checkNoPollution();
        }
      }
      // And nobody became an admin through it.
      const me = await send(h.url, 'GET', '/api/v1/me', { authorization: `Bearer ${await mint(ids.member)}` });
      assert.equal(JSON.parse(me.text).user.isAdmin, false);
    });

    it('refuses forged, tampered, expired and misaddressed tokens with 401 on every route', async () => {
      const w = await createWorld(db(), [{ userId: ids.member, flags: PERMISSION_FLAGS }]);
      const bad: TokenKind[] = ['alg-none', 'alg-none-signed', 'foreign-key', 'hs256-public-key', 'tampered', 'expired', 'wrong-audience', 'wrong-issuer', 'unknown-user', 'bad-sub'];
      for (const r of h.orch.api.routes) {
        const key = routeKey(r);
        const path = fillPath(r.path, validParams(r, w, names.member));
        for (const kind of bad) {
          const token = (await credential({ kind, garbage: '', tamper: 'admin' })) as string;
          for (const headers of [{ authorization: `Bearer ${token}` }, { token }] as Record<string, string>[]) {
            const body = r.body ? JSON.stringify(validBody(key, w, names.member)) : undefined;
            const res = await send(h.url, r.method.toUpperCase(), path, { ...headers, 'content-type': 'application/json' }, body);
            assert.equal(res.status, 401, `${key} with ${kind} in ${Object.keys(headers)[0]}: ${res.status} ${res.text}`);
            assert.equal(JSON.parse(res.text).error.code, 'unauthenticated');
            assert.equal(res.headers['www-authenticate'], 'Bearer');
          }
        }
      }
    });

    it('refuses strings containing U+0000 with 400 (PostgreSQL cannot store them), never 500', async () => {
      const w = await createWorld(db(), [{ userId: ids.member, flags: PERMISSION_FLAGS }]);
      const admin = { authorization: `Bearer ${await mint(ids.admin)}`, 'content-type': 'application/json' };
      const cases: [string, string, unknown][] = [
        ['POST', '/api/v1/auth/login', { username: 'root-admin\u0000', password: 'x' }],
        ['POST', '/api/v1/auth/signup', { username: uniq('nul'), email: 'a\u0000@example.test', password: 'Str0ng-Test-Passphrase' }],
        ['POST', '/api/v1/workspaces', { name: uniq('nul'), description: 'a\u0000b' }],
        ['PATCH', `/api/v1/workspaces/${w.workspace.name}`, { description: 'a\u0000b' }],
        ['POST', '/api/v1/templates', { name: uniq('nul'), os: 'deb\u0000ian', cpu: 1, ramMb: 512, diskGb: 4, image: 'img' }],
        ['PATCH', `/api/v1/templates/${w.template.name}`, { description: '\u0000' }],
      ];
      for (const r of h.orch.api.routes.filter((x) => x.method === 'get' && x.query)) {
        cases.push(['GET', `${fillPath(r.path, validParams(r, w, names.member))}?after=%00`, undefined]);
      }
      const failures: string[] = [];
      for (const [method, path, body] of cases) {
        const res = await send(h.url, method, path, admin, body === undefined ? undefined : JSON.stringify(body));
        if (res.status !== 400) failures.push(`${method} ${path} ${JSON.stringify(body) ?? ''} → ${res.status} ${res.text}`);
      }
      assert.deepEqual(failures, [], failures.join('\n'));
    });
  });
}
