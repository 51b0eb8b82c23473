// The one path of every unary call of the public gRPC API, the twin of http/app.ts's route
// handler: token → principal, the REST operation's access rule, its schemas, the use case, the
// view mapped, errors through the one status table.
import { status as GrpcStatus, type handleUnaryCall, type Metadata, type ServerUnaryCall, type sendUnaryData } from '@grpc/grpc-js';
import { KloudakError, UnauthenticatedError, ValidationError, type Logger } from '@kloudak/common';
import { authenticate } from '../app/auth.js';
import type { Caller, Principal } from '../app/principal.js';
import type { Services } from '../app/services.js';
import type { RouteSpec } from '../http/route.js';
import { validate } from '../http/validate.js';
import { toGrpcError } from './status.js';

/** The REST-shaped input of a call: what REST would have in its path, query and body. */
export interface RestInput {
  params?: unknown;
  query?: unknown;
  body?: unknown;
}

/** Renames of the top-level REST fields whose gRPC name differs, per part (e.g. body `name` → `new_name`). */
export type FieldRenames = Partial<Record<'params' | 'query' | 'body', Record<string, string>>>;

/** What every handler shares. */
export interface UnaryContext {
  services: Services;
  /** REST operations by `METHOD /path`: the access rule and the schemas each RPC shares with its twin. */
  routes: ReadonlyMap<string, RouteSpec>;
  log: Logger;
  /** Count and time each call (the Prometheus metrics beside REST's); absent: not measured. */
  observe?: (method: string, code: string, seconds: number) => void;
}

// The same forms REST accepts in its Authorization header.
const BEARER = /^Bearer ([A-Za-z0-9._~+/=-]{1,8192})$/;

/** The bearer token of a call, if any; a malformed `authorization` is an authentication failure. */
export function presentedToken(md: Metadata): string | null {
  const values = md.get('authorization');
  if (values.length === 0) return null;
  const m = values.length === 1 && typeof values[0] === 'string' ? BEARER.exec(values[0]) : null;
  if (!m) throw new UnauthenticatedError('authorization metadata must be "Bearer <token>"');
  return m[1] as string;
}

/** The client's address of a gRPC peer (`1.2.3.4:5678`, `[::1]:5678`, `ipv4:…`), without the port: the rate limits' key. */
export function peerAddress(peer: string): string {
  const p = peer.replace(/^ipv[46]:/, '');
  const v6 = /^\[([^\]]+)\](?::\d+)?$/.exec(p);
  if (v6) return v6[1] as string;
  const v4 = /^([^:]+):\d+$/.exec(p);
  return v4 ? (v4[1] as string) : p;
}

const COMMON_RENAMES: Record<string, string> = { ws: 'workspace', limit: 'page_size', after: 'page_token' };

/** A validation error's JSON pointers renamed to the request's field names (the rest is status.ts's snake_case). */
function renamed(err: unknown, names: Record<string, string> | undefined): unknown {
  if (!(err instanceof ValidationError)) return err;
  const problems = err.details?.['problems'];
  if (!Array.isArray(problems)) return err;
  const map = (path: string) => {
    const [, first = '', ...rest] = path.split('/');
    const to = names?.[first] ?? COMMON_RENAMES[first] ?? first;
    return ['', to, ...rest].join('/');
  };
  return new ValidationError(err.message, {
    ...err.details,
    problems: problems.map((p: { path: string; message: string }) => ({ ...p, path: map(p.path) })),
  });
}

function check<T>(schema: RouteSpec['params'], value: unknown, where: 'params' | 'query' | 'body', renames: FieldRenames): T {
  try {
    return validate<T>(schema!, value ?? {}, where, false);
  } catch (err) {
    throw renamed(err, renames[where]);
  }
}

/**
 * A unary handler mirroring the REST operation `rest`: the same authentication (a token, when
 * given, must be valid even on public operations), the same access rule (401 / 403 before any
 * input is looked at), the same schemas over the same REST-shaped input, the same use case.
 * `call` declares the input type the schemas guarantee (the REST route's Static types).
 */
export function unary<Req, Res, I, V>(
  ctx: UnaryContext,
  rest: string,
  input: (req: Req) => RestInput,
  call: (c: Caller, i: I) => Promise<V>,
  output: (v: V) => Res,
  renames: FieldRenames = {},
): handleUnaryCall<Req, Res> {
  const route = ctx.routes.get(rest);
  if (!route) throw new Error(`gRPC: no REST operation ${rest} to mirror`);
  return (callObj: ServerUnaryCall<Req, Res>, cb: sendUnaryData<Res>) => {
    const started = process.hrtime.bigint();
    const method = callObj.getPath();
    const log = ctx.log.child({ grpc_method: method });
    void (async () => {
      const token = presentedToken(callObj.metadata);
      let principal: Principal | null = null;
      if (token !== null) principal = await authenticate(ctx.services, token);
      else if (route.access !== 'public') throw new UnauthenticatedError();
      if (route.access === 'admin' && !principal?.isAdmin) throw new KloudakError('forbidden', 'this operation needs an admin');
      const raw = input(callObj.request);
      // The schemas turn the REST-shaped input into the typed input `call` declares, as REST's do.
      const i = {
        params: route.params ? check(route.params, raw.params, 'params', renames) : undefined,
        query: route.query ? check(route.query, raw.query, 'query', renames) : undefined,
        body: route.body ? check(route.body, raw.body, 'body', renames) : undefined,
      } as I;
      const caller: Caller = { principal, address: peerAddress(callObj.getPeer()), log };
      return output(await call(caller, i));
    })().then(
      (res) => {
        cb(null, res);
        const ms = elapsed(started);
        ctx.observe?.(method, 'OK', ms / 1000);
        log.info({ code: 'OK', ms }, 'grpc call');
      },
      (err: unknown) => {
        const g = toGrpcError(err);
        if (g.code === GrpcStatus.INTERNAL) log.error({ err }, 'grpc call failed');
        cb(g);
        const ms = elapsed(started);
        ctx.observe?.(method, GrpcStatus[g.code], ms / 1000);
        log.info({ code: GrpcStatus[g.code], ms }, 'grpc call');
      },
    );
  };
}

function elapsed(started: bigint): number {
  return Math.round(Number(process.hrtime.bigint() - started) / 1e5) / 10;
}
