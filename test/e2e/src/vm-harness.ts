// An orchestrator in this process on a fresh PostgreSQL database (the e2e tests' and the
// benchmarks'), the short timings of the VM e2e tests, and what the tests read from the hosts
// through it (an agent's own inventory).
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createLogger } from '@kloudak/common';
import { configWith, startOrchestrator, systemClock, type OrchestratorConfig, type Orchestrator, type StartOptions } from '@kloudak/orchestrator';
import { freePort, freshDatabase, TEST_NATS_URL, type CleanupStack } from '@kloudak/testkit';

/** The sign-in of the orchestrator's one admin. */
export interface Admin {
  username: string;
  password: string;
}

/**
 * Start an orchestrator in this process on a fresh database named after `dbPrefix` (or on
 * `config.databaseUrl` when given), with a data
 * dir of its own, both ports on loopback (the agent port a free one) and the admin `admin`;
 * `config` and `options` go on top of the defaults. `cleanup` closes it and drops both.
 */
export async function startInProcessOrchestrator(
  cleanup: CleanupStack,
  dbPrefix: string,
  admin: Admin,
  config: Partial<OrchestratorConfig> = {},
  options: StartOptions = {},
): Promise<Orchestrator> {
  // A database of the caller's own (a private server, say) is used as it is; else a fresh one.
  let databaseUrl = config.databaseUrl;
  if (!databaseUrl) {
    const db = await freshDatabase(dbPrefix);
    cleanup.add(() => db.drop(), `drop the database ${db.name}`);
    databaseUrl = db.url;
  }
  const dataDir = mkdtempSync(join(tmpdir(), `${dbPrefix}-orch-`));
  cleanup.add(() => rmSync(dataDir, { recursive: true, force: true }), `remove ${dataDir}`);
  const resolved = configWith({
    grpcPort: 0,
    port: 0,
    host: '127.0.0.1',
    agentPort: await freePort(),
    agentHost: '127.0.0.1',
    dataDir,
    natsUrl: TEST_NATS_URL,
    adminUser: admin.username,
    adminPassword: admin.password,
    passwordHashCost: 12,
    logLevel: 'warn',
    ...config,
    databaseUrl,
  });
  // The log goes to stdout at `config.logLevel` (default warn): a benchmark keeps its figures' stdout clean with 'error'.
  const orch = await startOrchestrator(resolved, createLogger({ component: 'orchestrator', level: resolved.logLevel }), systemClock, options);
  cleanup.add(() => orch.close(), 'close the orchestrator');
  return orch;
}

/** The short timings of the VM e2e tests: heartbeats, leases, task retries and timeouts. */
export const VM_TEST_TIMINGS: Partial<OrchestratorConfig> = {
  heartbeatIntervalMs: 250,
  agentLeaseMs: 5_000,
  agentDownMarginMs: 2_000,
  taskBackoffMs: 200,
  taskBackoffMaxMs: 1_000,
  taskStepTimeoutMs: 8_000,
  taskTimeoutMs: 30_000,
};

/** {@link startInProcessOrchestrator} with {@link VM_TEST_TIMINGS} (then `overrides`) and liveness evaluated every 100 ms. */
export function startTestOrchestrator(cleanup: CleanupStack, dbPrefix: string, admin: Admin, overrides: Partial<OrchestratorConfig> = {}): Promise<Orchestrator> {
  return startInProcessOrchestrator(cleanup, dbPrefix, admin, { ...VM_TEST_TIMINGS, ...overrides }, { livenessTickMs: 100 });
}

/** What a host's agent reports it holds (domains, volumes, OVS ports), asked through the orchestrator. */
export async function hostInventory(orch: Orchestrator, hostId: string) {
  const r = await orch.agents.sendCommand(hostId, { action: { kind: 'getInventory' } }, { deadline: Date.now() + 10_000 });
  assert.equal(r.ok, true, JSON.stringify(r.error));
  return r.inventory!;
}
