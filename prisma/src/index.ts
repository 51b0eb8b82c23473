export { openDatabase, pgSession, pgliteSession, type Database, type DatabaseKind, type DatabaseOptions } from './db.js';
export { SessionLock } from './session-lock.js';
export {
  migrate,
  pendingMigrations,
  loadMigrations,
  MigrationError,
  MIGRATIONS_DIR,
  type Migration,
  type MigrateResult,
  type SqlSession,
} from './migrate.js';
export { PrismaClient, Prisma } from '../generated/client/client.js';
export type * from '../generated/client/models.js';
export * from '../generated/client/enums.js';
