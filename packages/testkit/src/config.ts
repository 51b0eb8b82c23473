// The only place the test kit reads the environment (scripts/test.sh exports these).

/** Admin connection to the PostgreSQL server used for fresh test databases. */
export const TEST_PG_URL: string =
  process.env['KLOUDAK_TEST_PG_URL'] ?? 'postgresql://kloudak:kloudak@127.0.0.1:5432/postgres';

/** NATS server used by tests. */
export const TEST_NATS_URL: string = process.env['KLOUDAK_TEST_NATS_URL'] ?? 'nats://127.0.0.1:4222';
