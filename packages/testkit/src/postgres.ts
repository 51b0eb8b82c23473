import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { TEST_PG_URL } from './config.js';

/** A PostgreSQL database made for one test run and dropped afterwards. */
export interface FreshDatabase {
  /** Connection string of the new, empty database. */
  url: string;
  name: string;
  /** Drop it (terminating any session still open on it). */
  drop(): Promise<void>;
}

/** Run `fn` with a fresh connection to `url`, closed afterwards (also when `fn` throws). */
export async function withPg<T>(url: string, fn: (c: pg.Client) => Promise<T>): Promise<T> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    return await fn(c);
  } finally {
    await c.end();
  }
}

function admin<T>(fn: (c: pg.Client) => Promise<T>): Promise<T> {
  return withPg(TEST_PG_URL, fn);
}

/** Create an empty database with a unique name on the test server. */
export async function freshDatabase(prefix = 'kloudak_test'): Promise<FreshDatabase> {
  const name = `${prefix}_${Date.now().toString(36)}_${randomBytes(4).toString('hex')}`;
  await admin((c) => c.query(`CREATE DATABASE "${name}"`));
  const u = new URL(TEST_PG_URL);
  u.pathname = `/${name}`;
  return {
    url: u.toString(),
    name,
    drop: () =>
      admin(async (c) => {
        await c.query(`DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`);
      }),
  };
}
