// Two orchestrators; the leader is SIGKILLed in the middle of a failover, and the other finishes
// it (issue 11, "two orchestrators: kill the leader during a failover, and the other finishes it").
//
// L, the leader, is a real orchestrator process, started first; S, the survivor, runs in this
// process on the same PostgreSQL, NATS and data directory (so the same agent CA). Three hosts, each
// a network namespace with its own real agent process on libvirt's test driver (ns-hosts.ts): both
// instances' agent links listen on the fleet bridge's address in the root namespace, A's agent
// dials L there, B's and C's dial S. The VMs are created on
// A (the only host then) and their tasks run on either engine, their commands crossing between
// the instances through NATS (agent-api/routing.ts). A's agent is SIGKILLed: L holds A's session,
// so L marks A down, plans the evacuation and its own task engine takes the recover tasks, whose
// commands for B and C go through S. Once one recover task is running on L, L is SIGKILLed. S must
// lead within seconds, take the dead leader's tasks once their leases end, and finish: every HA VM
// running on B or C exactly once, one recover task per VM and each succeeded, no task left
// queued or running, one evacuation for the episode.
//
// The shared pool is simulated as in failover.e2e.test.ts: B's and C's node files hold the root
// volumes of A's VMs (3 GiB, which no clone would have).
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ensureLibvirtd } from '@kloudak/libvirt/testing';
import { rootVolumeName } from '@kloudak/agent';
import { createSimHost, ensureOvs } from '@kloudak/agent/testing';
import type { Orchestrator } from '@kloudak/orchestrator';
import { Cleanup, freshDatabase, TEST_NATS_URL } from '@kloudak/testkit';
import { spawnAgentProcess, type AgentProcess } from './agent-process.js';
import { createNamespaceFleet, type NamespaceFleet } from './ns-hosts.js';
import { agentTestEnv, ApiClient, type Json } from './api-client.js';
import { startOrchestratorProcess, type OrchestratorProcess } from './orchestrator-process.js';
import { createNetwork, hostInventory, joinToken, setUpSimArea, startInProcessOrchestrator } from './vm-harness.js';

const RUN = `khl${randomBytes(3).toString('hex')}`;
const ADMIN = { username: 'root-admin', password: 'e2e-Leader-Kill-2026!' };
const WS = `${RUN}-ws`;
/** Short timings, the same on both instances: the host's lease, leadership, task leases. */
const T = {
  heartbeatIntervalMs: 250,
  agentLeaseMs: 3000,
  agentDownMarginMs: 1000,
  instanceTtlMs: 2000,
  leaderTtlMs: 1000,
  taskLeaseMs: 2000,
  taskBackoffMs: 200,
  taskBackoffMaxMs: 1000,
  taskStepTimeoutMs: 8000,
  taskTimeoutMs: 40_000,
};
const HA = ['ha-1', 'ha-2', 'ha-3', 'ha-4'];

describe('two orchestrators: the leader is killed during a failover, and the other finishes it', { timeout: 180_000 }, () => {
  const cleanup = new Cleanup();
  let leader: OrchestratorProcess;
  let leaderAgentPort: number;
  let s: Orchestrator;
  /** A, B and C's network namespaces around the address both instances' agent links listen on. */
  let fleet: NamespaceFleet;
  let bridge: string;
  const agents = new Map<string, AgentProcess>();
  const hostIds = new Map<string, string>();
  const client = new ApiClient(() => s.url, WS);
  const api = (method: string, path: string, body?: unknown) => client.call(method, path, body);
  const A = `${RUN}-a`;
  const B = `${RUN}-b`;
  const C = `${RUN}-c`;
  const vms = new Map<string, Json>();

  async function waitFor(what: string, ok: () => Promise<boolean>, timeoutMs = 60_000, everyMs = 100): Promise<void> {
    const until = Date.now() + timeoutMs;
    while (!(await ok())) {
      if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
      await new Promise((r) => setTimeout(r, everyMs));
    }
  }

  /** Start host `name`'s agent, dialling `agentPort`, with these volumes in its pool; enroll it; wait until it is up. */
  async function startHost(name: string, agentPort: number, shape: { cpus: number; memoryMb: number }, volumes: { name: string; capacityGb: number }[] = []): Promise<string> {
    const dir = mkdtempSync(join(tmpdir(), `${RUN}-sim-`));
    cleanup.add(() => rmSync(dir, { recursive: true, force: true }));
    const sim = createSimHost({ dir, ...shape, poolName: RUN, volumes });
    const token = await joinToken(client, RUN);
    const dataDir = mkdtempSync(join(tmpdir(), `${RUN}-agent-`));
    cleanup.add(() => rmSync(dataDir, { recursive: true, force: true }));
    const ns = fleet.hosts[[A, B, C].indexOf(name)]!.ns;
    const a = spawnAgentProcess(
      name,
      `${fleet.orchestratorIp}:${agentPort}`,
      dataDir,
      { ...agentTestEnv(bridge), KLOUDAK_AGENT_JOIN_TOKEN: token, KLOUDAK_AGENT_LIBVIRT_URI: sim.uri, KLOUDAK_AGENT_CONSOLE_DIR: dir },
      ns,
    );
    agents.set(name, a);
    cleanup.add(() => a.kill());
    const id = await client.waitHostUp(name, () => a.output());
    hostIds.set(name, id);
    return id;
  }

  async function vm(name: string): Promise<Json> {
    const r = await api('GET', `/workspaces/${WS}/vms/${name}`);
    assert.equal(r.status, 200, JSON.stringify(r.body));
    return r.body;
  }

  /** vm id → the hosts whose libvirt has a domain for it, over B and C (asked through S). */
  async function domainsOnBC(): Promise<Map<string, string[]>> {
    const where = new Map<string, string[]>();
    for (const name of [B, C]) {
      for (const d of (await hostInventory(s, hostIds.get(name)!)).domains) where.set(d.vmId, [...(where.get(d.vmId) ?? []), name]);
    }
    return where;
  }

  before(async () => {
    await ensureLibvirtd();
    await ensureOvs();
    fleet = await createNamespaceFleet(cleanup, 'khl', 238, 3);
    const db = await freshDatabase('kloudak_e2e_ha_leader');
    cleanup.add(() => db.drop());
    const dataDir = mkdtempSync(join(tmpdir(), `${RUN}-orch-`));
    cleanup.add(() => rmSync(dataDir, { recursive: true, force: true }));
    // L first: it creates the CA and keys in the shared data directory, and takes the leadership.
    leader = await startOrchestratorProcess({
      // Both instances' agent links on the fleet bridge's address (the hosts' only way out), which
      // the shared server certificate names: L issues it, S loads it.
      KLOUDAK_AGENT_HOST: fleet.orchestratorIp,
      KLOUDAK_AGENT_TLS_NAMES: fleet.orchestratorIp,
      KLOUDAK_DATA_DIR: dataDir,
      DATABASE_URL: db.url,
      NATS_URL: TEST_NATS_URL,
      KLOUDAK_ADMIN_USER: ADMIN.username,
      KLOUDAK_ADMIN_PASSWORD: ADMIN.password,
      KLOUDAK_LOG_LEVEL: 'warn',
      KLOUDAK_HEARTBEAT_INTERVAL_MS: String(T.heartbeatIntervalMs),
      KLOUDAK_AGENT_LEASE_MS: String(T.agentLeaseMs),
      KLOUDAK_AGENT_DOWN_MARGIN_MS: String(T.agentDownMarginMs),
      KLOUDAK_INSTANCE_TTL_MS: String(T.instanceTtlMs),
      KLOUDAK_LEADER_TTL_MS: String(T.leaderTtlMs),
      KLOUDAK_TASK_LEASE_MS: String(T.taskLeaseMs),
      KLOUDAK_TASK_BACKOFF_MS: String(T.taskBackoffMs),
      KLOUDAK_TASK_BACKOFF_MAX_MS: String(T.taskBackoffMaxMs),
      KLOUDAK_TASK_STEP_TIMEOUT_MS: String(T.taskStepTimeoutMs),
      KLOUDAK_TASK_TIMEOUT_MS: String(T.taskTimeoutMs),
    });
    cleanup.add(() => leader.kill());
    const agentsLine = new RegExp(`agents: ${fleet.orchestratorIp.replaceAll('.', '\\.')}:(\\d+)`);
    await waitFor('L prints its agent port', async () => agentsLine.test(leader.output()), 10_000);
    leaderAgentPort = Number(agentsLine.exec(leader.output())?.[1]);
    s = await startInProcessOrchestrator(
      cleanup,
      'kloudak_e2e_ha_leader',
      ADMIN,
      { ...T, databaseUrl: db.url, dataDir, logLevel: 'warn', agentHost: fleet.orchestratorIp, agentTlsNames: fleet.orchestratorIp },
      { livenessTickMs: 100, directoryRefreshMs: 200 },
    );
    await client.login(ADMIN);
    ({ bridge } = await setUpSimArea(cleanup, client, { name: RUN, subnetBase: '10.248.0', vlanRange: '440-441', workspaces: [WS], netPrefix: 'kh-', poolPath: '/srv/shared' }));
  });

  after(async () => {
    await cleanup.run();
  });

  it('L leads; the HA VMs are placed on A, whose agent dials L (their tasks run on either instance)', async () => {
    assert.equal(s.leader.isLeader(), false, 'the process started first leads');
    const aId = await startHost(A, leaderAgentPort, { cpus: 8, memoryMb: 8192 });
    // Placement runs on S (its API): S must know A's session is open on L (its directory, read every 200 ms).
    await waitFor('S sees A connected on L', async () => s.agentLink.status(aId).connected, 10_000, 50);
    await createNetwork(client, 'front', RUN);
    const tasks: string[] = [];
    for (const name of HA) {
      const r = await api('POST', `/workspaces/${WS}/vms`, { name, template: `${RUN}-tpl`, networks: ['front'], ha: true, ramMb: 512 });
      assert.equal(r.status, 202, JSON.stringify(r.body));
      assert.equal(r.body['vm']['host'], A);
      vms.set(name, r.body['vm']);
      tasks.push(r.body['task']['id']);
    }
    for (const t of tasks) await client.succeeded(t);
    for (const n of HA) assert.equal((await vm(n))['state'], 'running');
  });

  it('L is killed while it runs the recover tasks of A\'s failover; S leads within seconds and finishes the failover once', async () => {
    const shared = [...vms.values()].map((v) => ({ name: rootVolumeName(v['id']), capacityGb: 3 }));
    await startHost(B, s.agentPort, { cpus: 4, memoryMb: 2048 }, shared);
    await startHost(C, s.agentPort, { cpus: 4, memoryMb: 2048 }, shared);
    const aId = hostIds.get(A)!;
    // L must know B and C are connected (they are on S) before A's evacuation is planned there.
    await new Promise((r) => setTimeout(r, 3000));

    const killedAgentAt = Date.now();
    await agents.get(A)!.kill();
    // The moment to kill L: one recover task is running, leased by L's engine.
    const ownS = `orchestrator-${s.instance.id}`;
    let onL: { id: string; leaseOwner: string | null } | null = null;
    await waitFor(
      'a recover task running on L',
      async () => {
        onL = await s.db.client.task.findFirst({ where: { kind: 'vm.recover', state: 'running', leaseOwner: { not: ownS } }, select: { id: true, leaseOwner: true } });
        return onL !== null;
      },
      T.agentLeaseMs + T.agentDownMarginMs + 15_000,
      10,
    );
    const killedAt = Date.now();
    await leader.kill();
    const atKill = await s.db.client.task.findMany({ where: { kind: 'vm.recover' }, select: { state: true, leaseOwner: true } });
    console.log(`# L killed ${killedAt - killedAgentAt} ms after A's agent; recover tasks then: ${atKill.map((t) => `${t.state}@${t.leaseOwner === null ? 'none' : t.leaseOwner === ownS ? 'S' : 'L'}`).join(', ')}`);
    assert.ok(onL, 'a recover task was running on L');
    assert.equal(await s.db.client.evacuation.count({ where: { hostId: aId } }), 1, 'planned by L before it died');

    await waitFor('S leads', async () => s.leader.isLeader(), 10_000, 20);
    const handoverMs = Date.now() - killedAt;
    await waitFor('the HA VMs running on B and C', async () => {
      for (const n of HA) {
        const v = await vm(n);
        if (v['state'] !== 'running' || (v['host'] !== B && v['host'] !== C)) return false;
      }
      return true;
    }, 60_000);
    const finishedMs = Date.now() - killedAt;
    console.log(`# leadership to S ${handoverMs} ms after SIGKILL (leader TTL ${T.leaderTtlMs} ms); failover finished ${finishedMs} ms after it (task lease ${T.taskLeaseMs} ms); ${Date.now() - killedAgentAt} ms after A's agent died`);
    assert.ok(handoverMs < T.leaderTtlMs + 3000, `handover took ${handoverMs} ms`);

    // Every recover task done, once; nothing left queued or running anywhere.
    await waitFor('no task left', async () => (await s.db.client.task.count({ where: { state: { in: ['queued', 'running', 'rolling_back'] } } })) === 0, 30_000);
    const recovers = await s.db.client.task.findMany({ where: { kind: 'vm.recover' }, select: { state: true, targetId: true } });
    assert.equal(recovers.length, HA.length, 'one recover task per HA VM');
    assert.deepEqual(recovers.map((t) => t.state), HA.map(() => 'succeeded'));
    assert.deepEqual(new Set(recovers.map((t) => t.targetId)), new Set(HA.map((n) => vms.get(n)!['id'])));
    const evacuations = await s.db.client.evacuation.findMany({ where: { hostId: aId } });
    assert.equal(evacuations.length, 1, 'one evacuation for the episode');
    assert.equal(evacuations[0]!.state, 'planned');

    // Each HA VM is one domain, running, on B or C, from the shared pool's volume; nothing else there.
    const where = await domainsOnBC();
    for (const n of HA) assert.equal(where.get(vms.get(n)!['id'])?.length, 1, `${n}: ${where.get(vms.get(n)!['id'])?.join(', ')}`);
    assert.equal(where.size, HA.length);
    for (const h of [B, C]) {
      const inv = await hostInventory(s, hostIds.get(h)!);
      for (const d of inv.domains) {
        assert.equal(d.state, 'running', `${d.vmId} on ${h}`);
        assert.equal(inv.volumes.find((x) => x.name === rootVolumeName(d.vmId))?.capacityBytes, 3 * 1024 ** 3);
      }
    }
    for (const n of HA) assert.deepEqual((await vm(n))['interfaces'], vms.get(n)!['interfaces'], `${n} keeps its address and MAC`);
  });
});
