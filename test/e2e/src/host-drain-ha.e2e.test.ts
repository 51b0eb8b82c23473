// A host drain across two orchestrators, with real agents (issue 11, "Admin actions: drain a host"
// and "Several orchestrators: commands for a host reach the instance that holds its stream").
//
// X and Y are orchestrators in this process on one PostgreSQL, one NATS and one data directory
// (so one agent CA). Two real agent processes on libvirt's test driver: S's agent dials X, D's
// dials Y. Only Y's task engine runs (X's is closed), so every command of a drain for S crosses
// from Y to X through NATS (agent-api/routing.ts). Three VMs are created on S; then S is drained
// in `restart` mode (the test driver has no migration API, so `live` cannot run here: its routing
// is covered by orchestrator/src/ha/drain-routing.test.ts): S's stopVm and evictVm go Y → X, D's
// createVm and inventory polls stay on Y. Then D is drained back to S: now the destination's
// commands cross. Expected each time: every VM running on the destination (one domain, from the
// disk already in the shared pool), gone from the source, its claim moved and no room held twice,
// the source in maintenance, one `migrated` event per VM, and at most drainConcurrency (2) moves
// at once.
//
// The shared pool is simulated as in failover.e2e.test.ts: D's node file holds the root volumes of
// S's VMs (3 GiB, which no clone would have); S keeps its own volumes for the drain back.
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
import { Cleanup, freshDatabase } from '@kloudak/testkit';
import { startAgentProcess, type AgentProcess } from './agent-process.js';
import { agentTestEnv, ApiClient, type Json } from './api-client.js';
import { createNetwork, hostInventory, joinToken, setUpSimArea, startInProcessOrchestrator } from './vm-harness.js';

const RUN = `kdx${randomBytes(3).toString('hex')}`;
const ADMIN = { username: 'root-admin', password: 'e2e-Drain-Two-Orch-2026!' };
const WS = `${RUN}-ws`;
const T = {
  heartbeatIntervalMs: 250,
  agentLeaseMs: 5000,
  agentDownMarginMs: 2000,
  instanceTtlMs: 3000,
  leaderTtlMs: 1000,
  taskBackoffMs: 200,
  taskBackoffMaxMs: 1000,
  taskStepTimeoutMs: 8000,
  taskTimeoutMs: 30_000,
  drainConcurrency: 2,
};
const VMS = ['v1', 'v2', 'v3'];
const GIB = 1024 ** 3;

describe('a host drain across two orchestrators, with real agents on the test driver (restart mode)', { timeout: 120_000 }, () => {
  const cleanup = new Cleanup();
  let x: Orchestrator;
  let y: Orchestrator;
  let bridge = '';
  let template = '';
  const client = new ApiClient(() => x.url, WS);
  const api = (method: string, path: string, body?: unknown) => client.call(method, path, body);
  const S = `${RUN}-s`;
  const D = `${RUN}-d`;
  const ids = new Map<string, string>();
  const agents = new Map<string, AgentProcess>();
  /** VM name → id. */
  const vms = new Map<string, string>();

  /** Host `name`'s simulated hypervisor (with these volumes in its pool) and its agent dialling `orch`; returns its id once up. */
  async function startHost(name: string, orch: Orchestrator, volumes: { name: string; capacityGb: number }[] = []): Promise<string> {
    const dir = mkdtempSync(join(tmpdir(), `${RUN}-sim-`));
    cleanup.add(() => rmSync(dir, { recursive: true, force: true }));
    const sim = createSimHost({ dir, cpus: 8, memoryMb: 8192, poolName: RUN, volumes });
    const token = await joinToken(client, RUN);
    const agent = startAgentProcess(cleanup, name, `127.0.0.1:${orch.agentPort}`, { ...agentTestEnv(bridge), KLOUDAK_AGENT_JOIN_TOKEN: token, KLOUDAK_AGENT_LIBVIRT_URI: sim.uri, KLOUDAK_AGENT_CONSOLE_DIR: dir }, { dirPrefix: RUN });
    agents.set(name, agent);
    const id = await client.waitHostUp(name, () => agent.output());
    ids.set(name, id);
    return id;
  }

  /** VM id → the hosts whose libvirt has a domain of it, and its state there. */
  async function domains(): Promise<Map<string, string[]>> {
    const out = new Map<string, string[]>();
    for (const h of [S, D]) {
      for (const d of (await hostInventory(y, ids.get(h)!)).domains) out.set(d.vmId, [...(out.get(d.vmId) ?? []), `${h}:${d.state}`]);
    }
    return out;
  }

  /** Drain `from` in restart mode (asked through X, run by Y) and check that every VM ends on `to`. */
  async function drain(from: string, to: string): Promise<void> {
    const fromId = ids.get(from)!;
    const toId = ids.get(to)!;
    const since = (await x.db.client.outboxEvent.aggregate({ _max: { seq: true } }))._max.seq ?? 0n;
    const t0 = Date.now();
    const r = await api('POST', `/hosts/${fromId}/drain`, { mode: 'restart' });
    assert.equal(r.status, 202, JSON.stringify(r.body));
    let t: Json = {};
    await new Promise<void>((resolve, reject) => {
      const until = Date.now() + 30_000;
      const poll = async () => {
        t = (await api('GET', `/hosts/${fromId}/drain`)).body;
        if (['succeeded', 'failed', 'rolled_back'].includes(t['state'])) return resolve();
        if (Date.now() > until) return reject(new Error(`the drain of ${from} did not end: ${JSON.stringify(t)}\n${agents.get(from)!.output().slice(-2000)}`));
        setTimeout(() => void poll().catch(reject), 100);
      };
      void poll().catch(reject);
    });
    const ms = Date.now() - t0;
    assert.equal(t['state'], 'succeeded', JSON.stringify(t));
    assert.deepEqual(
      (t['placement']['drain']['moves'] as Json[]).map((m) => [m['vmId'], m['toHostId'], m['how']]).sort(),
      [...vms.values()].map((id) => [id, toId, 'restart']).sort(),
    );
    const p = t['placement']['drain']['progress'];
    assert.deepEqual([p['moved'], p['failed'], p['of'], p['moving']], [VMS.length, 0, VMS.length, []]);

    // Each VM: one domain, running, on `to`; its claim there, no room held anywhere.
    const where = await domains();
    for (const [name, id] of vms) assert.deepEqual(where.get(id), [`${to}:running`], `${name}: ${where.get(id)?.join(', ')}`);
    const rows = await x.db.client.vm.findMany({ where: { id: { in: [...vms.values()] } }, select: { hostId: true, migratingToHostId: true, state: true } });
    assert.deepEqual(rows.map((v) => [v.hostId, v.migratingToHostId, v.state]), rows.map(() => [toId, null, 'running']));
    for (const name of VMS) assert.equal((await api('GET', `/workspaces/${WS}/vms/${name}`)).body['host'], to);
    assert.equal((await api('GET', `/hosts/${fromId}`)).body['adminState'], 'maintenance');

    // One move per VM, and never more than two under way (each from its `migrating` state event to its `migrated`).
    const events = await x.db.client.outboxEvent.findMany({ where: { seq: { gt: since }, entity: 'vm', OR: [{ event: 'migrated' }, { event: 'state', state: 'migrating' }] }, orderBy: { seq: 'asc' } });
    const moved = events.filter((e) => e.event === 'migrated');
    assert.deepEqual(moved.map((e) => e.entityId).sort(), [...vms.values()].sort(), 'one migrated event per VM');
    let under = 0;
    let most = 0;
    for (const e of events) {
      under += e.event === 'migrated' ? -1 : 1;
      most = Math.max(most, under);
    }
    assert.equal(most, 2, 'two moves at once, never three');
    console.log(`# restart-mode drain ${from} → ${to} of ${VMS.length} VMs across two orchestrators, 2 at a time: ${ms} ms`);
  }

  before(async () => {
    await ensureLibvirtd();
    await ensureOvs();
    const db = await freshDatabase('kloudak_e2e_drain_ha');
    cleanup.add(() => db.drop());
    const dataDir = mkdtempSync(join(tmpdir(), `${RUN}-orch-`));
    cleanup.add(() => rmSync(dataDir, { recursive: true, force: true }));
    const start = { livenessTickMs: 100, directoryRefreshMs: 200 };
    x = await startInProcessOrchestrator(cleanup, 'kloudak_e2e_drain_ha', ADMIN, { ...T, databaseUrl: db.url, dataDir }, start);
    y = await startInProcessOrchestrator(cleanup, 'kloudak_e2e_drain_ha', ADMIN, { ...T, databaseUrl: db.url, dataDir }, start);
    await client.login(ADMIN);
    ({ bridge, template } = await setUpSimArea(cleanup, client, { name: RUN, subnetBase: '10.251.0', vlanRange: '450-451', workspaces: [WS], netPrefix: 'kx-', poolPath: '/srv/shared' }));
  });

  after(async () => {
    await cleanup.run();
  });

  it('S (agent on X) runs three VMs; D (agent on Y) gets their disks in the shared pool', async () => {
    await startHost(S, x);
    await createNetwork(client, 'front', RUN);
    const tasks: string[] = [];
    for (const [i, name] of VMS.entries()) {
      const r = await api('POST', `/workspaces/${WS}/vms`, { name, template, networks: ['front'], ha: i !== 2, ramMb: 512 });
      assert.equal(r.status, 202, JSON.stringify(r.body));
      assert.equal(r.body['vm']['host'], S);
      vms.set(name, r.body['vm']['id']);
      tasks.push(r.body['task']['id']);
    }
    for (const t of tasks) await client.succeeded(t);
    await startHost(
      D,
      y,
      [...vms.values()].map((id) => ({ name: rootVolumeName(id), capacityGb: 3 })),
    );
    // Each instance knows where the other's host is held (its directory, read every 200 ms).
    const until = Date.now() + 10_000;
    while (!(x.agentLink.status(ids.get(D)!).connected && y.agentLink.status(ids.get(S)!).connected)) {
      assert.ok(Date.now() < until, 'each instance sees the other host connected');
      await new Promise((r) => setTimeout(r, 50));
    }
    assert.equal(y.agentLink.directory.holder(ids.get(S)!)?.instanceId, x.instance.id);
    assert.equal(x.agentLink.directory.holder(ids.get(D)!)?.instanceId, y.instance.id);
    // From here on only Y's engine runs tasks: what a drain sends to S must go through X.
    await x.tasks.close();
  });

  it("drain S → D (S's stop and evict cross from Y to X): each VM runs on D from the pool's disk, gone from S", async () => {
    await drain(S, D);
    const inv = await hostInventory(y, ids.get(D)!);
    for (const id of vms.values()) assert.equal(inv.volumes.find((v) => v.name === rootVolumeName(id))?.capacityBytes, 3 * GIB, 'the disk already there, not a clone');
  });

  it("drain D → S (S's create and inventory cross from Y to X): each VM runs on S again, gone from D", async () => {
    assert.equal((await api('PATCH', `/hosts/${ids.get(S)}`, { maintenance: false })).status, 200);
    await drain(D, S);
  });
});
