// The database handle as app/ sees it: the client, a transaction, and the one translation of
// database failures into typed errors. Use cases never import Prisma; they pass these along.
import { KloudakError } from '@kloudak/common';
import type { Prisma, PrismaClient } from '@kloudak/prisma';

/** The database client (outside a transaction). */
export type Db = PrismaClient;
/** An interactive transaction: every store function that writes takes one (or a Db). */
export type Tx = Prisma.TransactionClient;
/** Either: reads work on both. */
export type DbOrTx = Db | Tx;

/** Limits of a long transaction (defaults: Prisma's 2 s to start and 5 s to finish). */
export interface TransactionLimits {
  /** How long it may wait for a connection. */
  maxWaitMs: number;
  /** How long it may run, waits on its locks included. */
  timeoutMs: number;
}

/**
 * Run `fn` in one transaction: all of its writes commit together or none does. Row locks taken
 * inside (lockWorkspace, lockNamed, lockForClaims) are held until it ends. `limits`: for the
 * transactions that queue behind others' locks (claims during a burst of creates).
 */
export function transaction<T>(db: Db, fn: (tx: Tx) => Promise<T>, limits?: TransactionLimits): Promise<T> {
  return limits ? db.$transaction(fn, { maxWait: limits.maxWaitMs, timeout: limits.timeoutMs }) : db.$transaction(fn);
}

interface PrismaLikeError {
  name: string;
  code: string;
  meta?: Record<string, unknown>;
}

function sqlState(err: PrismaLikeError): string | undefined {
  const cause = (err.meta as { driverAdapterError?: { cause?: { originalCode?: unknown } } } | undefined)?.driverAdapterError?.cause;
  return typeof cause?.originalCode === 'string' ? cause.originalCode : undefined;
}

function isPrismaKnown(err: unknown): err is PrismaLikeError {
  return (
    typeof err === 'object' &&
    err !== null &&
    (err as { name?: unknown }).name === 'PrismaClientKnownRequestError' &&
    typeof (err as { code?: unknown }).code === 'string'
  );
}

/**
 * The typed error a database failure stands for, or null when it is not one: constraint
 * violations become conflicts or not-found, characters PostgreSQL cannot store a validation
 * failure, an unreachable database `unavailable` (the client may retry).
 */
export function databaseError(err: unknown): KloudakError | null {
  if (isPrismaKnown(err)) {
    switch (err.code) {
      case 'P2002':
        return new KloudakError('conflict', 'an object with this name already exists', { cause: err, conflict: 'exists' });
      case 'P2025':
      case 'P2001':
        return new KloudakError('not_found', 'object not found', { cause: err });
      case 'P2003':
      case 'P2014':
        return new KloudakError('conflict', 'the object is still referenced by other objects', { cause: err });
    }
    // Errors a driver adapter did not translate carry the PostgreSQL SQLSTATE (PGlite's adapter
    // reports a RESTRICT violation, 23001, as a generic database error).
    switch (sqlState(err)) {
      case '23505':
        return new KloudakError('conflict', 'an object with this name already exists', { cause: err, conflict: 'exists' });
      case '22021':
      case '22P05':
        return new KloudakError('validation_failed', 'input contains characters the database cannot store', { cause: err });
      case '23001':
      case '23503':
        return new KloudakError('conflict', 'the object is still referenced by other objects', { cause: err });
    }
  }
  const name = (err as { name?: unknown } | null)?.name;
  const code = (err as { code?: unknown } | null)?.code;
  if (name === 'PrismaClientInitializationError' || (typeof code === 'string' && /^P10(0[0-2]|17)$/.test(code))) {
    return new KloudakError('unavailable', 'the database is unavailable, try again later', { cause: err });
  }
  return null;
}
