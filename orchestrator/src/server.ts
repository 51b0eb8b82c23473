import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Logger } from '@kloudak/common';
import { openDatabase, type Database } from '@kloudak/prisma';
import { bootstrapAdmin } from './admin.js';
import { loadOrCreateKeys, TokenService } from './auth/tokens.js';
import type { Clock } from './clock.js';
import type { OrchestratorConfig } from './config.js';
import { createApi, type Api } from './http/app.js';

/** A running orchestrator. */
export interface Orchestrator {
  url: string;
  api: Api;
  db: Database;
  /** Stop accepting, finish in-flight requests (up to the grace period), close the database. */
  close(): Promise<void>;
}

/** Open the database, migrate, bootstrap the admin and serve the API. */
export async function startOrchestrator(config: OrchestratorConfig, log: Logger, clock: Clock): Promise<Orchestrator> {
  const db = await openDatabase({ url: config.databaseUrl || undefined, dataDir: config.dataDir });
  try {
    const m = await db.migrate();
    log.info({ database: db.kind, applied: m.applied, already_applied: m.alreadyApplied }, 'database migrated');
    await bootstrapAdmin(db.client, config, log);
    const keys = await loadOrCreateKeys({
      privateKeyFile: config.jwtPrivateKeyFile,
      publicKeyFile: config.jwtPublicKeyFile,
      dataDir: config.dataDir,
    });
    const tokens = new TokenService(keys, clock, {
      issuer: config.jwtIssuer,
      audience: config.jwtAudience,
      ttlSeconds: config.tokenTtlSeconds,
    });
    const api = createApi({ db, tokens, clock, config, log });
    const server: Server = createServer(api.app.callback());
    server.keepAliveTimeout = 65_000;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(config.port, config.host, () => resolve());
    });
    const addr = server.address() as AddressInfo;
    const host = addr.family === 'IPv6' ? `[${addr.address}]` : addr.address;
    const url = `http://${host}:${addr.port}`;
    log.info({ url, database: db.kind }, 'orchestrator listening');
    let closing: Promise<void> | undefined;
    return {
      url,
      api,
      db,
      close: () =>
        (closing ??= (async () => {
          const done = new Promise<void>((resolve) => server.close(() => resolve()));
          server.closeIdleConnections();
          const timer = setTimeout(() => server.closeAllConnections(), config.shutdownGraceMs);
          await done;
          clearTimeout(timer);
          await db.close();
        })()),
    };
  } catch (err) {
    await db.close();
    throw err;
  }
}
