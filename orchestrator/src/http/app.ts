import { randomUUID } from 'node:crypto';
import Koa from 'koa';
import Router from '@koa/router';
import { Counter, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { KloudakError, UnauthenticatedError, ValidationError } from '@kloudak/common';
import { authenticate } from '../app/auth.js';
import { readiness } from '../app/health.js';
import { beginIdempotent, finishIdempotent, requestHash } from '../app/idempotency.js';
import type { Services } from '../app/services.js';
import { errorResponse, toKloudakError } from './errors.js';
import { buildOpenApi } from './openapi.js';
import type { Principal, RouteSpec } from './route.js';
import { validate } from './validate.js';
import { authRoutes } from './routes/auth.js';
import { workspaceRoutes } from './routes/workspaces.js';
import { areaRoutes } from './routes/areas.js';
import { poolRoutes } from './routes/pools.js';
import { templateRoutes } from './routes/templates.js';
import { joinTokenRoutes } from './routes/join-tokens.js';
import { hostRoutes } from './routes/hosts.js';
import { resourceRoutes } from './routes/resources.js';

/** An Idempotency-Key: printable ASCII, at most 255 characters. */
const IDEMPOTENCY_KEY = /^[\x21-\x7e]{1,255}$/;

/** Version reported by the API and metrics. */
export const VERSION = '0.1.0';

/** Largest JSON body accepted. */
export const MAX_BODY_BYTES = 1024 * 1024;

/** The Koa application, its routes and its metrics registry. */
export interface Api {
  app: Koa;
  routes: readonly RouteSpec[];
  metrics: Registry;
  openapi: Record<string, unknown>;
}

// Tokens carry at most MAX_TOKEN_WORKSPACES workspaces, which keeps them well under this bound.
const BEARER = /^Bearer ([A-Za-z0-9._~+/=-]{1,8192})$/;
const TOKEN = /^[A-Za-z0-9._~+/=-]{1,8192}$/;
const REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/;

/** The token presented by a request, if any; a malformed header is an authentication failure. */
function presentedToken(ctx: Koa.Context): string | null {
  const auth = ctx.get('authorization');
  if (auth) {
    const m = BEARER.exec(auth);
    if (!m) throw new UnauthenticatedError('Authorization header must be "Bearer <token>"');
    return m[1] as string;
  }
  const t = ctx.get('token');
  if (t) {
    if (!TOKEN.test(t)) throw new UnauthenticatedError('token header is malformed');
    return t;
  }
  return null;
}

/** Read a JSON body up to MAX_BODY_BYTES; errors are 4xx. */
async function readJsonBody(ctx: Koa.Context): Promise<unknown> {
  const declared = Number(ctx.get('content-length') || '0');
  if (declared > MAX_BODY_BYTES) {
    throw new KloudakError('payload_too_large', `body must be at most ${MAX_BODY_BYTES} bytes`);
  }
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of ctx.req as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > MAX_BODY_BYTES) throw new KloudakError('payload_too_large', `body must be at most ${MAX_BODY_BYTES} bytes`);
    chunks.push(chunk);
  }
  if (size === 0) throw new KloudakError('validation_failed', 'a JSON body is required');
  const type = ctx.get('content-type').split(';')[0]?.trim().toLowerCase();
  if (type !== 'application/json') {
    throw new KloudakError('unsupported_media_type', 'Content-Type must be application/json');
  }
  try {
    return JSON.parse(Buffer.concat(chunks).toString('utf8')) as unknown;
  } catch {
    throw new KloudakError('bad_request', 'body is not valid JSON');
  }
}

/**
 * Build the REST API over the application layer. Pure wiring: no listening socket, so tests can
 * mount it anywhere. Every route is an adapter: it parses, calls one use case of app/ and answers
 * its view.
 */
export function createApi(services: Services): Api {
  const deps = services;
  const routes: RouteSpec[] = [
    ...authRoutes(services),
    ...workspaceRoutes(services),
    // Networks, VMs, tasks and quotas of a workspace.
    ...resourceRoutes(services),
    ...areaRoutes(services),
    ...poolRoutes(services),
    ...templateRoutes(services),
    // Before /hosts/{id}: /hosts/join-tokens must not be taken for a host id.
    ...joinTokenRoutes(services),
    ...hostRoutes(services),
  ];
  const openapi = buildOpenApi(routes, VERSION);

  const metrics = new Registry();
  collectDefaultMetrics({ register: metrics });
  const requests = new Counter({
    name: 'kloudak_http_requests_total',
    help: 'HTTP requests by method, route and status',
    labelNames: ['method', 'route', 'status'],
    registers: [metrics],
  });
  const latency = new Histogram({
    name: 'kloudak_http_request_duration_seconds',
    help: 'HTTP request latency by method and route',
    labelNames: ['method', 'route'],
    buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
    registers: [metrics],
  });

  const app = new Koa({ proxy: deps.config.trustProxy });
  app.silent = true; // errors are logged by the middleware below, once, without secrets

  // Outermost: request id, access log, metrics, and the one place errors become JSON.
  app.use(async (ctx, next) => {
    const started = process.hrtime.bigint();
    const given = ctx.get('x-request-id');
    const requestId = REQUEST_ID.test(given) ? given : randomUUID();
    ctx.state['requestId'] = requestId;
    ctx.set('X-Request-Id', requestId);
    try {
      await next();
    } catch (err) {
      const kerr = toKloudakError(err);
      const { status, body } = errorResponse(kerr, requestId);
      if (status >= 500) deps.log.error({ err, request_id: requestId }, 'request failed');
      ctx.status = status;
      ctx.body = body;
      if (kerr.code === 'rate_limited') ctx.set('Retry-After', String(kerr.details?.['retryAfterSeconds'] ?? 60));
      if (kerr.code === 'unauthenticated') ctx.set('WWW-Authenticate', 'Bearer');
    }
    const route = (ctx.state['route'] as string | undefined) ?? 'unmatched';
    const seconds = Number(process.hrtime.bigint() - started) / 1e9;
    requests.inc({ method: ctx.method, route, status: String(ctx.status) });
    latency.observe({ method: ctx.method, route }, seconds);
    deps.log.info(
      { request_id: requestId, method: ctx.method, route, status: ctx.status, ms: Math.round(seconds * 1e4) / 10 },
      'request',
    );
  });

  const router = new Router();
  router.get('/healthz', (ctx) => {
    ctx.state['route'] = '/healthz';
    ctx.body = { status: 'ok' };
  });
  router.get('/readyz', async (ctx) => {
    ctx.state['route'] = '/readyz';
    const { ready, ...body } = await readiness(services);
    ctx.status = ready ? 200 : 503;
    ctx.body = body;
  });
  router.get('/metrics', async (ctx) => {
    ctx.state['route'] = '/metrics';
    ctx.type = metrics.contentType;
    ctx.body = await metrics.metrics();
  });
  router.get('/api/v1/openapi.json', (ctx) => {
    ctx.state['route'] = '/api/v1/openapi.json';
    ctx.body = openapi;
  });

  for (const spec of routes) {
    const koaPath = '/api/v1' + spec.path.replace(/\{(\w+)\}/g, ':$1');
    router[spec.method](koaPath, async (ctx) => {
      ctx.state['route'] = `/api/v1${spec.path}`;
      const token = presentedToken(ctx);
      let principal: Principal | null = null;
      if (token !== null) principal = await authenticate(services, token);
      else if (spec.access !== 'public') throw new UnauthenticatedError();
      if (spec.access === 'admin' && !principal?.isAdmin) {
        throw new KloudakError('forbidden', 'this operation needs an admin');
      }
      const params = spec.params ? validate(spec.params, ctx.params, 'params', true) : undefined;
      const query = spec.query ? validate(spec.query, { ...ctx.query }, 'query', true) : undefined;
      const body = spec.body ? validate(spec.body, await readJsonBody(ctx), 'body', false) : undefined;
      const log = deps.log.child({ request_id: ctx.state['requestId'] });
      const caller = { principal, address: ctx.ip, log };
      const run = () =>
        spec.handler({
          params,
          query,
          body,
          principal,
          caller,
          requestId: ctx.state['requestId'] as string,
          clientIp: ctx.ip,
          log,
        });
      const key = ctx.get('idempotency-key');
      if (spec.method !== 'post' || key === '' || principal === null) {
        const result = await run();
        ctx.status = spec.response.status;
        if (spec.response.status !== 204) ctx.body = result;
        return;
      }
      // Idempotency-Key: the same request again gets the first answer; nothing is made twice.
      if (!IDEMPOTENCY_KEY.test(key)) throw new ValidationError('Idempotency-Key must be 1 to 255 printable characters', { header: 'Idempotency-Key' });
      const started = await beginIdempotent(services, caller, { key, method: 'POST', path: ctx.path, hash: requestHash('POST', ctx.path, body) });
      if (started.kind === 'replay') {
        ctx.status = started.status;
        ctx.set('Idempotent-Replayed', 'true');
        if (started.status !== 204) ctx.body = started.body;
        return;
      }
      try {
        const result = await run();
        await finishIdempotent(services, started.id, spec.response.status, spec.response.status === 204 ? null : result);
        ctx.status = spec.response.status;
        if (spec.response.status !== 204) ctx.body = result;
      } catch (err) {
        const { status, body: errBody } = errorResponse(toKloudakError(err), ctx.state['requestId'] as string);
        await finishIdempotent(services, started.id, status, errBody).catch(() => undefined);
        throw err;
      }
    });
  }
  app.use(router.routes());
  // Anything no route took: a JSON 404 (405 when the path exists with other methods).
  app.use((ctx) => {
    const matched = router.match(ctx.path, ctx.method);
    if (matched.path.length > 0 && !matched.route) {
      ctx.status = 405;
      ctx.body = { error: { code: 'bad_request', message: `method ${ctx.method} not allowed here`, requestId: ctx.state['requestId'] } };
      return;
    }
    throw new KloudakError('not_found', `no route for ${ctx.method} ${ctx.path}`);
  });
  return { app, routes, metrics, openapi };
}
