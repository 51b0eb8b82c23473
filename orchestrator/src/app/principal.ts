import { ForbiddenError, UnauthenticatedError, type Logger } from '@kloudak/common';

/** A signed-in user, established from a verified token and the current user record. */
export interface Principal {
  userId: string;
  username: string;
  email: string;
  isAdmin: boolean;
  /** Token id and expiry, for logout. */
  jti: string;
  exp: number;
}

/**
 * Who calls a use case, whatever the interface (REST, gRPC, CLI, dashboard): the signed-in user
 * (null on public use cases called without a token), the client's address (rate limits) and a
 * logger bound to the request.
 */
export interface Caller {
  principal: Principal | null;
  address: string;
  log: Logger;
}

/** The signed-in user, or 401. */
export function signedIn(c: Caller): Principal {
  if (!c.principal) throw new UnauthenticatedError();
  return c.principal;
}

/** The signed-in admin, or 401 / 403. */
export function admin(c: Caller): Principal {
  const p = signedIn(c);
  if (!p.isAdmin) throw new ForbiddenError('this operation needs an admin');
  return p;
}
