import type { PrismaClient } from '@kloudak/prisma';
import { ValidationError, type Logger } from '@kloudak/common';
import { hashPassword, passwordWeakness } from './auth/passwords.js';

/** Input of {@link createAdmin}. */
export interface AdminInput {
  username: string;
  email: string;
  password: string;
}

const USERNAME = /^[a-z0-9][a-z0-9_.-]{2,31}$/;

/**
 * Create an admin (the seed's `createsuperuser`), or promote an existing user of that name and
 * set its password. Weak passwords are refused here too.
 */
export async function createAdmin(db: PrismaClient, input: AdminInput, hashCost: number): Promise<{ created: boolean }> {
  if (!USERNAME.test(input.username)) throw new ValidationError('admin username must be 3-32 lower-case letters, digits, "_", "." or "-"');
  const weak = passwordWeakness(input.password, input.username);
  if (weak) throw new ValidationError(`admin password: ${weak}`);
  const email = (input.email || `${input.username}@localhost.localdomain`).toLowerCase();
  const passwordHash = await hashPassword(input.password, hashCost);
  const existing = await db.user.findUnique({ where: { username: input.username } });
  if (existing) {
    await db.user.update({
      where: { id: existing.id },
      data: { isAdmin: true, passwordHash, tokenVersion: { increment: 1 } },
    });
    return { created: false };
  }
  await db.user.create({ data: { username: input.username, email, passwordHash, isAdmin: true } });
  return { created: true };
}

/** On start: create the configured first admin when there is no admin at all. */
export async function bootstrapAdmin(
  db: PrismaClient,
  cfg: { adminUser: string; adminEmail: string; adminPassword: string; passwordHashCost: number },
  log: Logger,
): Promise<void> {
  if ((await db.user.count({ where: { isAdmin: true } })) > 0) return;
  if (!cfg.adminUser || !cfg.adminPassword) {
    log.warn('no admin exists: set KLOUDAK_ADMIN_USER and KLOUDAK_ADMIN_PASSWORD or run `kloudak-orchestrator admin create`');
    return;
  }
  try {
    await createAdmin(db, { username: cfg.adminUser, email: cfg.adminEmail, password: cfg.adminPassword }, cfg.passwordHashCost);
  } catch (err) {
    // Two orchestrators starting together both saw no admin; the second create hits the unique
    // username. The first one's admin is the one we wanted, so that is success.
    if ((err as { code?: unknown }).code === 'P2002' && (await db.user.count({ where: { isAdmin: true } })) > 0) {
      log.info({ username: cfg.adminUser }, 'the first admin was created by another orchestrator');
      return;
    }
    throw err;
  }
  log.info({ username: cfg.adminUser }, 'created the first admin');
}
