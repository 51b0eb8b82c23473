// Prisma CLI configuration. Kloudak applies migrations itself (src/migrate.ts, at start-up), but the
// migrations folder and the _prisma_migrations table follow Prisma's layout, so where Prisma's
// schema engine is installed normally `prisma migrate status` / `migrate deploy` work on the same
// database with DATABASE_URL set.
import { defineConfig } from 'prisma/config';

export default defineConfig({
  schema: 'schema.prisma',
  migrations: { path: 'migrations' },
  datasource: { url: process.env['DATABASE_URL'] ?? 'postgresql://localhost/kloudak' },
});
