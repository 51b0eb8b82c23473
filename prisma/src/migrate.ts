import { createHash, randomUUID } from 'node:crypto';
import { readdirSync, readFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * A single database session able to run raw SQL. Migrations need one session for the whole run:
 * the advisory lock is held by the session, and each migration is a transaction on it.
 */
export interface SqlSession {
  /** Run one or more statements without parameters. */
  exec(sql: string): Promise<void>;
  /** Run one parameterised statement and return its rows. */
  query<R = Record<string, unknown>>(sql: string, params?: unknown[]): Promise<R[]>;
}

/** A migration folder in Prisma's layout: `<timestamp>_<name>/migration.sql`. */
export interface Migration {
  name: string;
  sql: string;
  /** sha256 of the file, as Prisma records it. */
  checksum: string;
}

/** What {@link migrate} did. */
export interface MigrateResult {
  applied: string[];
  alreadyApplied: number;
}

/** Folder of the committed migrations, beside this package's schema.prisma. */
export const MIGRATIONS_DIR = fileURLToPath(new URL('../../migrations', import.meta.url));

// Every orchestrator uses the same key, so two starting together serialise on it.
const LOCK_KEY = 72_707_369;

/** Read the migrations in name order (their timestamp prefix orders them). */
export function loadMigrations(dir: string = MIGRATIONS_DIR): Migration[] {
  return readdirSync(dir, { withFileTypes: true })
    .filter((d) => d.isDirectory() && existsSync(join(dir, d.name, 'migration.sql')))
    .map((d) => d.name)
    .sort()
    .map((name) => {
      const sql = readFileSync(join(dir, name, 'migration.sql'), 'utf8');
      return { name, sql, checksum: createHash('sha256').update(sql).digest('hex') };
    });
}

// Prisma's own bookkeeping table, so a deployment can later switch to `prisma migrate deploy`.
const CREATE_TABLE = `CREATE TABLE IF NOT EXISTS "_prisma_migrations" (
    "id" VARCHAR(36) PRIMARY KEY NOT NULL,
    "checksum" VARCHAR(64) NOT NULL,
    "finished_at" TIMESTAMPTZ,
    "migration_name" VARCHAR(255) NOT NULL,
    "logs" TEXT,
    "rolled_back_at" TIMESTAMPTZ,
    "started_at" TIMESTAMPTZ NOT NULL DEFAULT now(),
    "applied_steps_count" INTEGER NOT NULL DEFAULT 0
)`;

interface AppliedRow {
  migration_name: string;
  checksum: string;
}

async function appliedMigrations(s: SqlSession): Promise<Map<string, string>> {
  const rows = await s.query<AppliedRow>(
    `SELECT migration_name, checksum FROM "_prisma_migrations" WHERE finished_at IS NOT NULL AND rolled_back_at IS NULL`,
  );
  return new Map(rows.map((r) => [r.migration_name, r.checksum]));
}

/** Raised when the database and the committed migrations disagree. */
export class MigrationError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'MigrationError';
  }
}

/**
 * Apply every pending migration, in order, each once, each in its own transaction, under a
 * session advisory lock. A second orchestrator starting at the same moment blocks on the lock,
 * then finds everything applied. An applied migration whose file changed is an error:
 * migrations are append-only.
 */
export async function migrate(s: SqlSession, migrations: Migration[] = loadMigrations()): Promise<MigrateResult> {
  await s.query('SELECT pg_advisory_lock($1)', [LOCK_KEY]);
  try {
    await s.exec(CREATE_TABLE);
    const applied = await appliedMigrations(s);
    const done: string[] = [];
    for (const m of migrations) {
      const checksum = applied.get(m.name);
      if (checksum !== undefined) {
        if (checksum !== m.checksum) {
          throw new MigrationError(`migration ${m.name} was changed after it was applied (migrations are append-only)`);
        }
        continue;
      }
      await s.exec('BEGIN');
      try {
        await s.exec(m.sql);
        await s.query(
          `INSERT INTO "_prisma_migrations" (id, checksum, migration_name, finished_at, applied_steps_count)
           VALUES ($1, $2, $3, now(), 1)`,
          [randomUUID(), m.checksum, m.name],
        );
        await s.exec('COMMIT');
      } catch (err) {
        await s.exec('ROLLBACK').catch(() => undefined);
        throw new MigrationError(`migration ${m.name} failed: ${(err as Error).message}`, { cause: err });
      }
      done.push(m.name);
    }
    return { applied: done, alreadyApplied: migrations.length - done.length };
  } finally {
    await s.query('SELECT pg_advisory_unlock($1)', [LOCK_KEY]).catch(() => undefined);
  }
}

/** Names of committed migrations not yet applied (empty when the database is current). */
export async function pendingMigrations(s: SqlSession, migrations: Migration[] = loadMigrations()): Promise<string[]> {
  const exists = await s.query<{ t: string | null }>(`SELECT to_regclass('"_prisma_migrations"')::text AS t`);
  if (!exists[0]?.t) return migrations.map((m) => m.name);
  const applied = await appliedMigrations(s);
  return migrations.filter((m) => !applied.has(m.name)).map((m) => m.name);
}
