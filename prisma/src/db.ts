import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { PGlite } from '@electric-sql/pglite';
import { PrismaPg } from '@prisma/adapter-pg';
import { PrismaPGlite } from 'pglite-prisma-adapter';
import pg from 'pg';
import { PrismaClient } from '../generated/client/client.js';
import { migrate, pendingMigrations, type MigrateResult, type SqlSession } from './migrate.js';

/** Which engine backs a {@link Database}. */
export type DatabaseKind = 'postgres' | 'pglite';

/** Options for {@link openDatabase}. */
export interface DatabaseOptions {
  /** PostgreSQL connection string; when absent the embedded PGlite database is used. */
  url?: string | undefined;
  /** Where PGlite keeps its files (`<dataDir>/pglite`); ignored for PostgreSQL. */
  dataDir?: string | undefined;
  /** PGlite only: keep everything in memory (tests). */
  inMemory?: boolean;
  /** Connection pool size for PostgreSQL. */
  poolSize?: number;
  /**
   * PostgreSQL: how long opening a connection, and one statement, may take (ms; defaults
   * {@link DEFAULT_CONNECT_TIMEOUT_MS}, {@link DEFAULT_STATEMENT_TIMEOUT_MS}). A stalled or
   * unreachable server then fails requests with an error instead of holding them (and the pool's
   * connections) forever.
   */
  connectTimeoutMs?: number;
  statementTimeoutMs?: number;
}

/** Default time to open a PostgreSQL connection. */
export const DEFAULT_CONNECT_TIMEOUT_MS = 10_000;
/** Default time one statement may take; the slowest legitimate ones (claims under load) take well under a second. */
export const DEFAULT_STATEMENT_TIMEOUT_MS = 30_000;

/** An open inventory database: the Prisma client plus raw sessions for migrations and health. */
export interface Database {
  readonly kind: DatabaseKind;
  readonly client: PrismaClient;
  /** Apply pending migrations (serialised across processes by an advisory lock). */
  migrate(): Promise<MigrateResult>;
  /** Migrations committed but not applied. */
  pending(): Promise<string[]>;
  /** A trivial round trip, for readiness checks. */
  ping(): Promise<void>;
  /**
   * A read on the bare driver, past Prisma, outside any transaction: for hot lists, whose rows
   * Prisma's mapping makes costlier than the query itself (list bench: ~1 ms of CPU per 1,000
   * rows even through \$queryRaw). Rows are plain objects keyed by column name, with values as
   * Prisma gives them for these types: text, varchar and uuid as strings, int4 and int2 as
   * numbers, booleans, NULL as null, and `timestamp(3)` — which holds UTC, as Prisma writes it —
   * as a Date. Other types (int8, numeric, json, arrays) come as the driver parses them: cast in SQL.
   */
  read<R>(sql: string, params?: readonly unknown[]): Promise<R[]>;
  /**
   * Call `onNotify` for each NOTIFY on `channel` (delivered at the notifying transaction's commit).
   * On PostgreSQL a dedicated connection listens, and reconnects after a failure (a notification
   * sent meanwhile is lost: listeners also poll). Resolves to a function that stops listening.
   */
  listen(channel: string, onNotify: () => void): Promise<() => Promise<void>>;
  close(): Promise<void>;
}

/** OID of `timestamp` (without time zone). */
const TIMESTAMP_OID = 1114;
/** Prisma stores DateTime as UTC in `timestamp(3)`: read it back as UTC (pg would take local time). */
const parseUtcTimestamp = (v: string): Date => new Date(`${v.replace(' ', 'T')}Z`);
const pgReadTypes = {
  getTypeParser: ((oid: number, format?: 'text' | 'binary') =>
    oid === TIMESTAMP_OID ? parseUtcTimestamp : pg.types.getTypeParser(oid, format)) as typeof pg.types.getTypeParser,
};

export function pgSession(client: pg.Client | pg.PoolClient): SqlSession {
  return {
    async exec(sql) {
      await client.query(sql);
    },
    async query<R>(sql: string, params?: unknown[]) {
      const res = await client.query(sql, params);
      return res.rows as R[];
    },
  };
}

export function pgliteSession(db: PGlite): SqlSession {
  return {
    async exec(sql) {
      await db.exec(sql);
    },
    async query<R>(sql: string, params?: unknown[]) {
      const res = await db.query<R>(sql, params);
      return res.rows;
    },
  };
}

/** Open the inventory database: PostgreSQL when `url` is set, embedded PGlite otherwise. */
export async function openDatabase(opts: DatabaseOptions): Promise<Database> {
  if (opts.url) {
    return openPostgres(opts.url, opts.poolSize ?? 10, opts.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS, opts.statementTimeoutMs ?? DEFAULT_STATEMENT_TIMEOUT_MS);
  }
  return openPglite(opts);
}

async function openPostgres(url: string, poolSize: number, connectTimeoutMs: number, statementTimeoutMs: number): Promise<Database> {
  const pool = new pg.Pool({
    connectionString: url,
    max: poolSize,
    connectionTimeoutMillis: connectTimeoutMs,
    // Enforced by the server (it cancels the statement) and, should the server not answer at all
    // (stopped, partitioned), by the client a second later.
    statement_timeout: statementTimeoutMs,
    query_timeout: statementTimeoutMs + 1000,
    // A transaction left open by a stalled client must not hold its row locks for ever.
    idle_in_transaction_session_timeout: Math.max(60_000, 2 * statementTimeoutMs),
  });
  // An idle client that errors (server restart) must not crash the process; the pool replaces it.
  pool.on('error', () => undefined);
  const client = new PrismaClient({ adapter: new PrismaPg(pool) });
  const withSession = async <T>(fn: (s: SqlSession) => Promise<T>): Promise<T> => {
    // Migrations get a dedicated connection: the advisory lock and transactions live on it.
    const c = new pg.Client({ connectionString: url });
    c.on('error', () => undefined);
    await c.connect();
    try {
      return await fn(pgSession(c));
    } finally {
      await c.end().catch(() => undefined);
    }
  };
  return {
    kind: 'postgres',
    client,
    migrate: () => withSession((s) => migrate(s)),
    pending: async () => {
      const c = await pool.connect();
      // A client checked out of the pool has no listener of the pool's, and pg emits 'error' when
      // its connection ends unexpectedly (a server restart, a cut network), even in the middle of a
      // statement: without a listener here that is an uncaught exception, and the process dies.
      // The statement fails anyway; the broken client is released with its error (discarded).
      let lost: Error | undefined;
      const onError = (err: Error) => void (lost = err);
      c.on('error', onError);
      try {
        return await pendingMigrations(pgSession(c));
      } finally {
        c.removeListener('error', onError);
        c.release(lost);
      }
    },
    ping: async () => {
      await pool.query('SELECT 1');
    },
    read: async <R>(sql: string, params: readonly unknown[] = []) =>
      (await pool.query({ text: sql, values: [...params], types: pgReadTypes })).rows as R[],
    listen: (channel, onNotify) => listenPostgres(url, channel, onNotify),
    close: async () => {
      await client.$disconnect();
      await pool.end().catch(() => undefined);
    },
  };
}

async function openPglite(opts: DatabaseOptions): Promise<Database> {
  let dir: string | undefined;
  if (!opts.inMemory) {
    if (!opts.dataDir) throw new Error('openDatabase: dataDir is required for the embedded database');
    dir = join(opts.dataDir, 'pglite');
    mkdirSync(dir, { recursive: true });
  }
  const lite = dir === undefined ? new PGlite() : new PGlite(dir);
  await lite.waitReady;
  const session = pgliteSession(lite);
  const client = new PrismaClient({ adapter: new PrismaPGlite(lite) });
  return {
    kind: 'pglite',
    client,
    migrate: () => migrate(session),
    pending: () => pendingMigrations(session),
    ping: async () => {
      await lite.query('SELECT 1');
    },
    read: async <R>(sql: string, params: readonly unknown[] = []) =>
      (await lite.query<R>(sql, [...params], { parsers: { [TIMESTAMP_OID]: parseUtcTimestamp } })).rows,
    listen: async (channel, onNotify) => {
      const stop = await lite.listen(channel, () => onNotify());
      return async () => {
        await stop().catch(() => undefined);
      };
    },
    close: async () => {
      await client.$disconnect();
      await lite.close().catch(() => undefined);
    },
  };
}

async function listenPostgres(url: string, channel: string, onNotify: () => void): Promise<() => Promise<void>> {
  if (!/^[a-z_][a-z0-9_]*$/.test(channel)) throw new Error(`listen: bad channel name ${channel}`);
  let stopped = false;
  let client: pg.Client | undefined;
  let retry: NodeJS.Timeout | undefined;
  const open = async (): Promise<void> => {
    const c = new pg.Client({ connectionString: url });
    c.on('notification', (n) => {
      if (n.channel === channel) onNotify();
    });
    c.on('error', () => {
      if (client !== c || stopped) return;
      client = undefined;
      c.end().catch(() => undefined);
      schedule();
    });
    await c.connect();
    await c.query(`LISTEN ${channel}`);
    if (stopped) {
      await c.end().catch(() => undefined);
      return;
    }
    client = c;
    // What was committed while no connection listened is found by the listener's next poll.
    onNotify();
  };
  const schedule = () => {
    retry = setTimeout(() => {
      open().catch(() => {
        if (!stopped) schedule();
      });
    }, 1000);
    retry.unref();
  };
  await open();
  return async () => {
    stopped = true;
    clearTimeout(retry);
    await client?.end().catch(() => undefined);
    client = undefined;
  };
}
