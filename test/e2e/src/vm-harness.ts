// An in-process orchestrator on a fresh PostgreSQL database with the short timings of the VM e2e
// tests, and what the tests read from the hosts through it (an agent's own inventory).
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createLogger } from '@kloudak/common';
import { configWith, startOrchestrator, systemClock, type OrchestratorConfig, type Orchestrator } from '@kloudak/orchestrator';
import { freePort, freshDatabase, TEST_NATS_URL, type Cleanup } from '@kloudak/testkit';

/** Start an orchestrator in this process on a fresh database named after `dbPrefix`; `cleanup` closes it and drops both. */
export async function startTestOrchestrator(
  cleanup: Cleanup,
  dbPrefix: string,
  admin: { username: string; password: string },
  overrides: Partial<OrchestratorConfig> = {},
): Promise<Orchestrator> {
  const db = await freshDatabase(dbPrefix);
  cleanup.add(() => db.drop());
  const dataDir = mkdtempSync(join(tmpdir(), `${dbPrefix}-orch-`));
  cleanup.add(async () => rmSync(dataDir, { recursive: true, force: true }));
  const orch = await startOrchestrator(
    configWith({
      port: 0,
      host: '127.0.0.1',
      agentPort: await freePort(),
      agentHost: '127.0.0.1',
      dataDir,
      databaseUrl: db.url,
      natsUrl: TEST_NATS_URL,
      adminUser: admin.username,
      adminPassword: admin.password,
      passwordHashCost: 12,
      heartbeatIntervalMs: 250,
      agentLeaseMs: 5_000,
      agentDownMarginMs: 2_000,
      taskBackoffMs: 200,
      taskBackoffMaxMs: 1_000,
      taskStepTimeoutMs: 8_000,
      taskTimeoutMs: 30_000,
      logLevel: 'warn',
      ...overrides,
    }),
    createLogger({ component: 'orchestrator', level: 'warn' }),
    systemClock,
    { livenessTickMs: 100 },
  );
  cleanup.add(() => orch.close());
  return orch;
}

/** What a host's agent reports it holds (domains, volumes, OVS ports), asked through the orchestrator. */
export async function hostInventory(orch: Orchestrator, hostId: string) {
  const r = await orch.agents.sendCommand(hostId, { action: { kind: 'getInventory' } }, { deadline: Date.now() + 10_000 });
  assert.equal(r.ok, true, JSON.stringify(r.error));
  return r.inventory!;
}
