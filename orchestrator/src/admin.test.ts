import test from 'node:test';
import assert from 'node:assert/strict';
import { createLogger } from '@kloudak/common';
import { openDatabase } from '@kloudak/prisma';
import { freshDatabase } from '@kloudak/testkit';
import { bootstrapAdmin } from './admin.js';

test('orchestrators bootstrapping the first admin at the same moment create it once, and none fails', async () => {
  const fresh = await freshDatabase();
  const dbs = await Promise.all([openDatabase({ url: fresh.url }), openDatabase({ url: fresh.url }), openDatabase({ url: fresh.url })]);
  try {
    await dbs[0]!.migrate();
    const log = createLogger({ component: 'test', level: 'silent' });
    const cfg = { adminUser: 'chief', adminEmail: '', adminPassword: 'First-Admin-Passw0rd', passwordHashCost: 10 };
    await Promise.all(dbs.map((db) => bootstrapAdmin(db.client, cfg, log)));
    assert.equal(await dbs[0]!.client.user.count({ where: { isAdmin: true } }), 1);
  } finally {
    await Promise.all(dbs.map((db) => db.close()));
    await fresh.drop();
  }
});
