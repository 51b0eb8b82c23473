import type { Static, TSchema } from '@sinclair/typebox';
import type { Logger } from '@kloudak/common';
import type { Caller, Principal } from '../app/principal.js';

export type { Caller, Principal };

/** Who may call a route: anyone, any signed-in user, or admins only. */
export type Access = 'public' | 'user' | 'admin';

/** What a handler receives: validated inputs and the request's context. */
export interface Request<P, Q, B> {
  params: P;
  query: Q;
  body: B;
  /** Null only on public routes called without a token. */
  principal: Principal | null;
  /** The same, as use cases take it: principal, client address, logger. */
  caller: Caller;
  requestId: string;
  clientIp: string;
  log: Logger;
}

/** A request on a route that requires sign-in. */
export type AuthedRequest<P, Q, B> = Request<P, Q, B> & { principal: Principal };

type Infer<T> = T extends TSchema ? Static<T> : undefined;

/**
 * One REST operation: its schemas validate the request and produce its OpenAPI entry, so the
 * document cannot drift from what the server enforces.
 */
export interface RouteSpec<
  P extends TSchema | undefined = TSchema | undefined,
  Q extends TSchema | undefined = TSchema | undefined,
  B extends TSchema | undefined = TSchema | undefined,
> {
  method: 'get' | 'post' | 'patch' | 'put' | 'delete';
  /** OpenAPI-style path below /api/v1, e.g. `/workspaces/{ws}`. */
  path: string;
  operationId: string;
  summary: string;
  description?: string;
  tag: string;
  access: Access;
  params?: P;
  query?: Q;
  body?: B;
  /** Success status and body schema (none for 204). */
  response: { status: number; description: string; schema?: TSchema };
  /** Error statuses this operation can answer besides the common ones. */
  errors?: number[];
  handler(req: Request<Infer<P>, Infer<Q>, Infer<B>> & { principal: Principal | null }): Promise<unknown>;
}

/** Helper that keeps a spec's generic types inferred from its schemas. */
export function route<
  P extends TSchema | undefined = undefined,
  Q extends TSchema | undefined = undefined,
  B extends TSchema | undefined = undefined,
>(spec: RouteSpec<P, Q, B>): RouteSpec {
  return spec as unknown as RouteSpec;
}
