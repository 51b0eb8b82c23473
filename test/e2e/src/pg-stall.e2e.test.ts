// A PostgreSQL stall must not fence healthy hosts (issue: "PostgreSQL paused (SIGSTOP) for twice
// the lease: no healthy host fences"). A real orchestrator runs on a PostgreSQL server of this
// test's own (the shared one is never paused), with two real agent processes on simulated hosts
// (libvirt's test driver through libvirtd) running HA VMs. Every process of the database server is
// SIGSTOPped for twice the agents' lease, then let go. Lease grants never wait on the database, so
// throughout: no agent fences, no host goes down or suspect, every HA VM still runs where it ran,
// and the API answers again once the database does.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ensureLibvirtd } from '@kloudak/libvirt/testing';
import { createSimHost, ensureOvs } from '@kloudak/agent/testing';
import type { Orchestrator } from '@kloudak/orchestrator';
import { Cleanup, startPrivatePostgres, withPg, type PrivatePostgres } from '@kloudak/testkit';
import { spawnAgentProcess, type AgentProcess } from './agent-process.js';
import { agentTestEnv, ApiClient, jsonLines } from './api-client.js';
import { createNetwork, hostInventory, joinToken, setUpSimArea, startTestOrchestrator, VM_TEST_TIMINGS } from './vm-harness.js';

const RUN = `ps${randomBytes(3).toString('hex')}`;
const ADMIN = { username: 'root-admin', password: 'e2e-Pg-Stall-Pass-2026!' };
const WS = `${RUN}-ws`;
const LEASE_MS = VM_TEST_TIMINGS.agentLeaseMs as number;

describe('a PostgreSQL stall of twice the lease fences no healthy host', { timeout: 240_000 }, () => {
  const cleanup = new Cleanup();
  let pg: PrivatePostgres;
  let orch: Orchestrator;
  const agents: AgentProcess[] = [];
  /** Host name → id. */
  const hostIds = new Map<string, string>();
  const client = new ApiClient(() => orch.url, WS);
  const api = (method: string, path: string, body?: unknown) => client.call(method, path, body);

  before(async () => {
    await ensureLibvirtd();
    await ensureOvs();
    pg = await startPrivatePostgres();
    cleanup.add(() => pg.stop());
    orch = await startTestOrchestrator(cleanup, 'unused', ADMIN, { databaseUrl: pg.url });
    await client.login(ADMIN);
    const { bridge } = await setUpSimArea(cleanup, client, { name: RUN, subnetBase: '10.247.0', vlanRange: '310-311', workspaces: [WS], netPrefix: 'ps-' });
    for (const i of [0, 1]) {
      const dir = mkdtempSync(join(tmpdir(), `${RUN}-sim${i}-`));
      cleanup.add(async () => rmSync(dir, { recursive: true, force: true }));
      const sim = createSimHost({ dir, cpus: 4, memoryMb: 4096, poolName: RUN });
      const token = await joinToken(client, RUN);
      const a = spawnAgentProcess(`${RUN}-h${i}`, `127.0.0.1:${orch.agentPort}`, dir, {
        ...agentTestEnv(bridge),
        KLOUDAK_AGENT_LIBVIRT_URI: sim.uri,
        KLOUDAK_AGENT_CONSOLE_DIR: dir,
        KLOUDAK_AGENT_JOIN_TOKEN: token,
      });
      agents.push(a);
      cleanup.add(() => a.kill());
    }
    for (const [i, a] of agents.entries()) hostIds.set(`${RUN}-h${i}`, await client.waitHostUp(`${RUN}-h${i}`, () => a.output()));
    await createNetwork(client, 'n', RUN);
    for (const name of ['a', 'b', 'c', 'd']) {
      const r = await api('POST', `/workspaces/${WS}/vms`, { name, template: `${RUN}-tpl`, networks: ['n'] });
      assert.equal(r.status, 202, JSON.stringify(r.body));
      await client.succeeded(r.body['task']['id']);
    }
  });

  after(async () => {
    await cleanup.run();
  });

  it('keeps every host up and every HA VM running while the database is paused', async () => {
    const vms = (await api('GET', `/workspaces/${WS}/vms`)).body['items'] as { id: string; host: string }[];
    assert.equal(vms.length, 4);
    const before = new Map(vms.map((v) => [v.id, v.host]));
    const hostsUsed = new Set(vms.map((v) => v.host));
    assert.equal(hostsUsed.size, 2, 'spread over both hosts');

    const pausedAt = Date.now();
    pg.pause();
    try {
      // Twice the lease, plus the margin after which a host would be declared down.
      await new Promise((r) => setTimeout(r, 2 * LEASE_MS + (VM_TEST_TIMINGS.agentDownMarginMs as number)));
      // The agent link answered heartbeats throughout, from memory.
      for (const id of hostIds.values()) assert.equal(orch.agentLink.status(id).state, 'up', `host ${id} is up in the orchestrator's memory during the stall`);
    } finally {
      pg.resume();
    }
    const stalledMs = Date.now() - pausedAt;
    assert.ok(stalledMs >= 2 * LEASE_MS);

    // The API answers again once the database does.
    const hosts = await api('GET', '/hosts');
    assert.equal(hosts.status, 200, JSON.stringify(hosts.body));
    for (const h of hosts.body['items'] as { id: string; state: string }[]) if ([...hostIds.values()].includes(h.id)) assert.equal(h.state, 'up');

    // No agent fenced: no fence report stored, no fencing in any agent's log.
    const reports = await withPg(pg.url, (c) => c.query<{ n: string }>('SELECT count(*) AS n FROM "FenceReport"'));
    assert.equal(Number(reports.rows[0]?.n), 0, 'no fence report');
    for (const a of agents) {
      const fenced = jsonLines(a.output()).filter((l) => /fenc|lease expired/i.test(String(l['msg'])));
      assert.deepEqual(fenced, [], `agent ${a.name} did not fence`);
    }
    // No host went suspect or down, by the events written during the run.
    const downs = await withPg(pg.url, (c) => c.query<{ n: string }>(`SELECT count(*) AS n FROM "OutboxEvent" WHERE entity = 'host' AND state IN ('down', 'suspect', 'fenced')`));
    assert.equal(Number(downs.rows[0]?.n), 0, 'no host went suspect or down');
    // Every VM still runs on the host it ran on, by that host's own libvirt.
    for (const [name, id] of hostIds) {
      const inv = await hostInventory(orch, id);
      for (const [vmId, host] of before) {
        if (host !== name) continue;
        const d = inv.domains.find((x) => x.vmId === vmId);
        assert.equal(d?.state, 'running', `VM ${vmId} still runs on its host`);
      }
    }
  });
});
