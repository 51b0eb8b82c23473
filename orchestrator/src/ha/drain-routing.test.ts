// A host drain across two orchestrator instances on one PostgreSQL and one NATS (real gRPC,
// simulated agents): issue 11, "Admin actions: drain a host" with "Several orchestrators".
//
// The source host S's agent is connected to instance A, the destinations D1 to B and D2 to A, and
// only B's task engine runs (A's is closed): every command of the drain for S and D2 crosses from
// B to A through NATS (agent-api/routing.ts). Live mode, which libvirt's test driver cannot do (it
// implements no migration API), so the agents are simulated: one map says on which host each VM's
// domain runs, PrepareMigration answers a target naming its host, and MigrateVm moves the domain
// to the host that target names. What this proves is the orchestrator's side: the destination's
// answer reaches the source's MigrateVm across instances, moves run `drainConcurrency` (2) at a
// time spread over the destinations, each holding its room on its destination while it moves, and
// a failed migration leaves its VM running on the source while the others complete, and an
// engine that stops in the middle of two migrations hands the step to another instance without
// any VM migrating twice. Restart mode with real agents on the test driver:
// test/e2e/src/host-drain-ha.e2e.test.ts.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as pb from '@kloudak/proto/agent';
import { createLogger } from '@kloudak/common';
import { waitFor } from '@kloudak/testkit';
import { systemClock } from '../clock.js';
import { configWith } from '../config.js';
import { startOrchestrator, type Orchestrator } from '../server.js';
import { connectSimHost, startHarness, type Harness, type Res } from '../testing/harness.js';
import { freshArea, freshPool, freshTemplate, freshWorkspace, uniq } from '../testing/fixtures.js';
import type { SimAgent, SimCommandAnswer } from '../agent-api/testing/sim-agent.js';

const T = { heartbeatIntervalMs: 100, agentLeaseMs: 800, agentDownMarginMs: 400, instanceTtlMs: 1200, leaderTtlMs: 1000 };
const START = { livenessTickMs: 25, sweepMs: 50, directoryRefreshMs: 200 };
const GIB = 1n << 30n;
const FINAL = ['succeeded', 'failed', 'rolled_back'];

/** A gate the simulated migrations wait on. */
function gate(): { wait: Promise<void>; open: () => void } {
  let open!: () => void;
  const wait = new Promise<void>((r) => (open = r));
  return { wait, open };
}

describe('a host drain across two orchestrators (postgres, NATS, simulated agents)', () => {
  let h: Harness;
  let a: Orchestrator;
  let b: Orchestrator;
  let c: Orchestrator | undefined;
  const agents: SimAgent[] = [];
  const ids = new Map<string, string>(); // host name → id
  const names = new Map<string, string>(); // host id → name
  /** Where each VM's domain runs (host name), as the simulated hypervisors see it. */
  const where = new Map<string, string>();
  /** Every migration an agent ran: VM, source, and the host the target it was given names. */
  const migrations: { vmId: string; from: string; to: string }[] = [];
  const prepares: { vmId: string; on: string }[] = [];
  let migrating = 0;
  let maxMigrating = 0;
  let hold: Promise<void> = Promise.resolve();
  /** VMs whose migration fails. */
  const failing = new Set<string>();
  let world: { areaId: string; poolId: string; poolName: string; templateId: string; workspaceId: string; workspace: string; templateName: string; network: string };

  /** The simulated agent of host `name`. */
  const agentOf =
    (name: string) =>
    async (c: pb.Command): Promise<SimCommandAnswer> => {
      const a = c.action;
      if (a?.$case === 'getInventory') {
        const domains = [...where].filter(([, on]) => on === name).map(([id]) => ({ name: `kloudak-${id}`, uuid: id, vmId: id, state: pb.DomainState.DOMAIN_STATE_RUNNING, vcpus: 1, memoryBytes: GIB }));
        return { ok: true, payload: { $case: 'inventory', inventory: { domains, volumes: [], ovsPorts: [] } } };
      }
      if (a?.$case === 'prepareMigration') {
        prepares.push({ vmId: c.vmId, on: name });
        return { ok: true, payload: { $case: 'migrationTarget', migrationTarget: { libvirtUri: `sim://${name}/system`, migrateUri: `tcp:${name}`, domainXml: `<domain><uuid>${c.vmId}</uuid></domain>` } } };
      }
      if (a?.$case === 'migrateVm') {
        if (where.get(c.vmId) !== name) return { ok: false, error: { code: pb.ErrorCode.ERROR_CODE_NOT_FOUND, message: 'not running here' } };
        const to = /^sim:\/\/([^/]+)\//.exec(a.migrateVm.destLibvirtUri)?.[1] ?? '?';
        migrating += 1;
        maxMigrating = Math.max(maxMigrating, migrating);
        try {
          await hold;
          migrations.push({ vmId: c.vmId, from: name, to });
          if (failing.has(c.vmId)) return { ok: false, error: { code: pb.ErrorCode.ERROR_CODE_INTERNAL, message: 'migration failed (test)' } };
          where.set(c.vmId, to);
          return { ok: true };
        } finally {
          migrating -= 1;
        }
      }
      return { ok: true };
    };

  async function host(name: string, on: Orchestrator, memoryGb: bigint): Promise<string> {
    const { hostId, agent } = await connectSimHost({ ...h, orch: on }, world.areaId, world.poolName, uniq(name.toLowerCase()), {
      onCommand: agentOf(name),
      capacity: { cpuCount: 8, memoryBytes: memoryGb * GIB, diskBytes: 500n * GIB },
    });
    agents.push(agent);
    ids.set(name, hostId);
    names.set(hostId, name);
    return hostId;
  }

  /** A running VM (1 vCPU, 1 GiB, HA) on host `name`, as a create would have left it. */
  async function vmOn(name: string): Promise<string> {
    const vm = await a.db.client.vm.create({
      data: { name: uniq('vm'), workspaceId: world.workspaceId, areaId: world.areaId, templateId: world.templateId, hostId: ids.get(name)!, poolId: world.poolId, cpu: 1, ramMb: 1024, diskGb: 4, state: 'running', haEnabled: true },
    });
    where.set(vm.id, name);
    return vm.id;
  }

  async function drainEnd(hostId: string): Promise<Res['body']> {
    let t: Res['body'] = {};
    await waitFor(async () => {
      t = (await h.admin.client.get(`/api/v1/hosts/${hostId}/drain`)).body;
      return FINAL.includes(t['state']);
    }, 15_000, 'the drain ends').catch((e: unknown) => {
      throw new Error(`${(e as Error).message}: ${JSON.stringify(t)}`);
    });
    return t;
  }

  before(async () => {
    const timings = { ...T, drainConcurrency: 2, taskMaxAttempts: 2, taskBackoffMs: 100, taskBackoffMaxMs: 200 };
    h = await startHarness('postgres', timings, systemClock, START);
    a = h.orch;
    b = await startOrchestrator(configWith({ ...h.config, port: 0, agentPort: 0, grpcPort: 0 }), createLogger({ component: 'orchestrator-b', level: 'silent' }), systemClock, START);
    // Only B's engine runs tasks: the drain's commands for hosts held by A must cross to A.
    await a.tasks.close();
    const db = a.db.client;
    const area = await freshArea(db);
    const pool = await freshPool(db, area.id);
    const template = await freshTemplate(db);
    const ws = await freshWorkspace(db, []);
    const network = await db.network.create({ data: { name: uniq('net'), workspaceId: ws.id, areaId: area.id, state: 'active' } });
    await db.vlanAllocation.create({ data: { areaId: area.id, vlan: 100, networkId: network.id } });
    world = { areaId: area.id, poolId: pool.id, poolName: pool.name, templateId: template.id, workspaceId: ws.id, workspace: ws.name, templateName: template.name, network: network.name };
    // S is large; D1 and D2 have room for 4 GiB each.
    await host('S', a, 64n);
    await host('D1', b, 4n);
    await host('D2', a, 4n);
    const holders = { S: a, D1: b, D2: a };
    await waitFor(
      async () => Object.entries(holders).every(([n, o]) => [a, b].every((x) => x.agentLink.directory.holder(ids.get(n)!)?.instanceId === o.instance.id && x.agentLink.status(ids.get(n)!).connected)),
      5000,
      'both instances know who holds each host',
    );
  });
  after(async () => {
    for (const ag of agents) await ag.stop();
    await c?.close();
    await b?.close();
    await h?.close();
  });

  it("drains S live through B's engine: 4 VMs to D1 (on B) and D2 (on A), two at a time, each holding its room on its destination", async () => {
    const vms = [await vmOn('S'), await vmOn('S'), await vmOn('S'), await vmOn('S')];
    const g = gate();
    hold = g.wait;
    const S = ids.get('S')!;
    const t0 = performance.now();
    const d = await h.admin.client.post(`/api/v1/hosts/${S}/drain`, { mode: 'live' });
    assert.equal(d.status, 202, JSON.stringify(d.body));

    // Two migrations under way, held by the gate, and no third.
    await waitFor(async () => migrating === 2, 10_000, 'two migrations under way');
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(migrating, 2, 'at most drainConcurrency moves at once');
    const moving = await a.db.client.vm.findMany({ where: { id: { in: vms }, state: 'migrating' }, select: { id: true, hostId: true, migratingToHostId: true } });
    assert.equal(moving.length, 2);
    assert.deepEqual(moving.map((m) => names.get(m.migratingToHostId!)).sort(), ['D1', 'D2'], 'spread: one to each destination first');
    for (const m of moving) assert.equal(m.hostId, S, 'the claim stays on the source until it runs on the destination');
    const during = (await h.admin.client.get(`/api/v1/hosts/${S}/drain`)).body;
    assert.equal(during.state, 'running');
    const p = during.placement.drain.progress;
    assert.deepEqual([p.moved, p.failed, p.of, p.concurrency], [0, 0, 4, 2]);
    assert.deepEqual(p.moving.map((m: { vmId: string }) => m.vmId).sort(), moving.map((m) => m.id).sort());

    // The moving VMs hold 1 GiB on each destination: a 3.5 GiB VM, which an empty D1 or D2 could
    // take, fits on neither now (S is in maintenance).
    const big = await h.admin.client.post(`/api/v1/workspaces/${world.workspace}/vms`, { name: uniq('big'), template: world.templateName, networks: [world.network], cpu: 1, ramMb: 3584 });
    assert.equal(big.status, 409, JSON.stringify(big.body));
    const refused = Object.fromEntries((big.body.error.details.rejections as { host: string; filter: string }[]).map((r) => [r.host.split('-')[0]!.toUpperCase(), r.filter]));
    assert.deepEqual(refused, { S: 'admin', D1: 'ram', D2: 'ram' });

    g.open();
    const t = await drainEnd(S);
    const ms = performance.now() - t0;
    assert.equal(t.state, 'succeeded', JSON.stringify(t));
    console.log(`# live drain of 4 VMs across two orchestrators, 2 at a time: ${ms.toFixed(0)} ms (migrations held ~300 ms)`);
    assert.equal(maxMigrating, 2);
    const progress = t.placement.drain.progress;
    assert.deepEqual([progress.moved, progress.failed, progress.of, progress.moving], [4, 0, 4, []]);

    // Every VM runs once, on the destination the plan chose, and its claim is there.
    const plan = new Map<string, string>((t.placement.drain.moves as { vmId: string; toHostId: string; how: string }[]).map((m) => [m.vmId, m.toHostId]));
    assert.deepEqual([...plan.keys()].sort(), [...vms].sort());
    const rows = await a.db.client.vm.findMany({ where: { id: { in: vms } }, select: { id: true, hostId: true, migratingToHostId: true, state: true } });
    for (const r of rows) {
      assert.deepEqual([r.hostId, r.migratingToHostId, r.state], [plan.get(r.id), null, 'running']);
      assert.equal(where.get(r.id), names.get(r.hostId!));
    }
    assert.deepEqual(
      [...plan.values()].map((x) => names.get(x)).sort(),
      ['D1', 'D1', 'D2', 'D2'],
    );
    // One migration per VM, each from S to the host the destination's own PrepareMigration named:
    // D2's answer came from A, D1's from B, and S's MigrateVm ran on A, sent from B's engine.
    assert.deepEqual(migrations.map((m) => m.vmId).sort(), [...vms].sort(), 'each VM migrated once');
    for (const m of migrations) assert.deepEqual([m.from, m.to], ['S', names.get(plan.get(m.vmId)!)]);
    for (const vmId of vms) assert.deepEqual(prepares.filter((x) => x.vmId === vmId).map((x) => x.on), [names.get(plan.get(vmId)!)]);
    assert.equal((await a.db.client.outboxEvent.count({ where: { entityId: { in: vms }, event: 'migrated' } })), 4);
    assert.equal((await a.db.client.host.findUniqueOrThrow({ where: { id: S } })).adminState, 'maintenance');
    assert.equal(a.tasks.active, 0);
    assert.deepEqual([a.router.pending(), b.router.pending()], [{ outgoing: 0, incoming: 0 }, { outgoing: 0, incoming: 0 }]);
  });

  it('a migration that fails leaves its VM running on the source; the other VM moves; the drain rolls back, the host active again', async () => {
    const D1 = ids.get('D1')!;
    const S = ids.get('S')!;
    assert.equal((await h.admin.client.patch(`/api/v1/hosts/${S}`, { maintenance: false })).status, 200);
    const onD1 = (await a.db.client.vm.findMany({ where: { hostId: D1 }, select: { id: true }, orderBy: { name: 'asc' } })).map((v) => v.id);
    assert.equal(onD1.length, 2);
    const [bad, good] = onD1 as [string, string];
    failing.add(bad);
    hold = Promise.resolve();
    migrations.length = 0;
    // D1's agent is on B (with the engine): its MigrateVm is local, the destinations' prepares cross.
    const d = await h.admin.client.post(`/api/v1/hosts/${D1}/drain`, {});
    assert.equal(d.status, 202, JSON.stringify(d.body));
    const t = await drainEnd(D1);
    assert.equal(t.state, 'rolled_back', JSON.stringify(t));
    assert.match(t.error, /1 of 2 VMs could not move/);
    assert.deepEqual(t.placement.drain.progress.errors.map((e: { vmId: string }) => e.vmId), [bad]);

    const rows = new Map((await a.db.client.vm.findMany({ where: { id: { in: onD1 } } })).map((r) => [r.id, r]));
    assert.deepEqual([rows.get(bad)!.hostId, rows.get(bad)!.state, rows.get(bad)!.migratingToHostId], [D1, 'running', null], 'still on D1, no room held elsewhere');
    assert.equal(where.get(bad), 'D1');
    assert.notEqual(rows.get(good)!.hostId, D1, 'the other VM moved');
    assert.equal(where.get(good), names.get(rows.get(good)!.hostId!));
    assert.equal(migrations.filter((m) => m.vmId === good).length, 1, 'moved once: the retry skipped it');
    assert.equal(migrations.filter((m) => m.vmId === bad).length, 2, 'tried once per attempt');
    assert.ok((await a.db.client.outboxEvent.count({ where: { entityId: bad, event: 'migration_failed' } })) >= 1);
    assert.equal((await a.db.client.host.findUniqueOrThrow({ where: { id: D1 } })).adminState, 'active', 'the maintenance step was undone');
    failing.clear();
  });

  it("B's engine stops while two migrations are under way: a third instance resumes the step and each VM moves once", async () => {
    const D2 = ids.get('D2')!;
    const onD2 = (await a.db.client.vm.findMany({ where: { hostId: D2 }, select: { id: true } })).map((v) => v.id);
    assert.equal(onD2.length, 2);
    const movedBefore = await a.db.client.outboxEvent.count({ where: { entityId: { in: onD2 }, event: 'migrated' } });
    const g = gate();
    hold = g.wait;
    migrations.length = 0;
    const d = await h.admin.client.post(`/api/v1/hosts/${D2}/drain`, {});
    assert.equal(d.status, 202, JSON.stringify(d.body));
    await waitFor(async () => migrating === 2, 10_000, 'two migrations under way');
    // C takes over the tasks: B's engine stops (its run is aborted, its lease given back) while
    // both migrations still run on D2's agent; C resumes the step's attempt with the same command
    // ids, which the agent answers by joining the runs in progress.
    c = await startOrchestrator(configWith({ ...h.config, port: 0, agentPort: 0, grpcPort: 0 }), createLogger({ component: 'orchestrator-c', level: 'silent' }), systemClock, START);
    await b.tasks.close();
    await waitFor(async () => (await a.db.client.task.findUniqueOrThrow({ where: { id: d.body.task.id as string } })).leaseOwner === `orchestrator-${c!.instance.id}`, 10_000, 'C holds the task');
    g.open();
    const t = await drainEnd(D2);
    assert.equal(t.state, 'succeeded', JSON.stringify(t));
    assert.deepEqual(migrations.map((m) => m.vmId).sort(), [...onD2].sort(), 'each VM migrated once');
    const rows = await a.db.client.vm.findMany({ where: { id: { in: onD2 } } });
    for (const r of rows) {
      assert.notEqual(r.hostId, D2);
      assert.deepEqual([r.state, r.migratingToHostId, where.get(r.id)], ['running', null, names.get(r.hostId!)]);
    }
    assert.equal(await a.db.client.outboxEvent.count({ where: { entityId: { in: onD2 }, event: 'migrated' } }), movedBefore + 2, 'one move recorded per VM');
    assert.deepEqual(t.placement.drain.progress.moved, 2, JSON.stringify(t));
  });
});
