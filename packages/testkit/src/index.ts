export { TEST_PG_URL, TEST_NATS_URL } from './config.js';
export { freshDatabase, withPg, type FreshDatabase } from './postgres.js';
export { freePort, waitFor } from './net.js';
export { Cleanup, type CleanupStack } from './cleanup.js';
export { startPrivatePostgres, postgresBinDir, type PrivatePostgres } from './private-postgres.js';
