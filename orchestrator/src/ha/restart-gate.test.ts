// The second signal decides, across orchestrator instances (PostgreSQL, NATS, gRPC over TLS,
// simulated agents). Host X, with an HA VM, has its session on instance A; its peer Y, which
// reads X's pool lease file, on instance B. X goes silent: after lease + margin A marks it down.
// Y says X's file is still renewed and not marked fenced, and only B hears Y: A must ask B (NATS)
// and hold the restart (X may be partitioned from the orchestrators with its VM still running).
// Once Y reads "fenced" in X's file, the leader plans the evacuation and the VM moves to Y.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createLogger } from '@kloudak/common';
import { waitFor } from '@kloudak/testkit';
import type * as pb from '@kloudak/proto/agent';
import { systemClock } from '../clock.js';
import { configWith } from '../config.js';
import { startOrchestrator, type Orchestrator } from '../server.js';
import { createWorld, uniq, type World } from '../testing/fixtures.js';
import { startHarness, type Harness } from '../testing/harness.js';
import { enrollSimAgent, SimAgent, type SimIdentity } from '../agent-api/testing/sim-agent.js';

const T = { heartbeatIntervalMs: 100, agentLeaseMs: 800, agentDownMarginMs: 400, instanceTtlMs: 3000, leaderTtlMs: 1000 };
const START = { livenessTickMs: 25, sweepMs: 50, directoryRefreshMs: 200 };

describe('a restart held back by the pool lease files, with the evidence on another instance', () => {
  let h: Harness;
  let b: Orchestrator;
  let w: World;
  const agents: SimAgent[] = [];

  before(async () => {
    h = await startHarness('postgres', T, systemClock, START);
    b = await startOrchestrator(configWith({ ...h.config, port: 0, agentPort: 0, grpcPort: 0 }), createLogger({ component: 'orchestrator-b', level: 'silent' }), systemClock, START);
    w = await createWorld(h.orch.db.client);
    // The fixture's VM is on a host that never connects: none of this test's.
    await h.orch.db.client.vm.deleteMany({ where: { areaId: w.area.id } });
  });
  after(async () => {
    for (const a of agents) await a.stop();
    await b?.close();
    await h?.close();
  });

  async function enroll(name: string): Promise<SimIdentity> {
    const t = await h.admin.client.post('/api/v1/hosts/join-tokens', { area: w.area.id, expiresIn: 600 });
    assert.equal(t.status, 201);
    return enrollSimAgent({ address: `127.0.0.1:${h.orch.agentPort}`, joinToken: t.body.token as string, hostName: uniq(name) });
  }

  /** A simulated host of the area with the shared pool active, connected to `o`. */
  async function connect(o: Orchestrator, id: SimIdentity, peerLeases?: () => pb.PeerLease[]): Promise<SimAgent> {
    const bytes = 4000n << 30n;
    const agent = new SimAgent({
      address: `127.0.0.1:${o.agentPort}`,
      identity: id,
      reconnect: false,
      capacity: { cpuCount: 64, memoryBytes: 256n << 30n, diskBytes: bytes },
      hello: { pools: [{ name: w.pool.name, path: `/srv/${w.pool.name}`, capacityBytes: bytes, allocationBytes: 0n, availableBytes: bytes, active: true }] },
      ...(peerLeases ? { peerLeases } : {}),
    });
    agents.push(agent);
    await agent.start();
    await waitFor(async () => {
      const r = await h.orch.db.client.host.findUniqueOrThrow({ where: { id: id.hostId } });
      return r.state === 'up' && r.sessionOpen && r.ownerInstanceId === o.instance.id;
    }, 5000, `${id.hostName} up on its instance`);
    return agent;
  }

  it('holds while a peer on another instance sees the file renewed and not fenced; restarts once it says fenced', async () => {
    const db = h.orch.db.client;
    const x = await enroll('x');
    const y = await enroll('y');
    const xAgent = await connect(h.orch, x);
    const r = await h.admin.client.post(`/api/v1/workspaces/${w.workspace.name}/vms`, { name: uniq('ha'), template: w.template.name, networks: [w.network.name], cpu: 1, ramMb: 256, ha: true });
    assert.equal(r.status, 202, JSON.stringify(r.body));
    const vmId = r.body.vm.id as string;
    await waitFor(async () => (await db.vm.findUniqueOrThrow({ where: { id: vmId } })).state === 'running', 10_000, 'the HA VM running on X');
    assert.equal((await db.vm.findUniqueOrThrow({ where: { id: vmId } })).hostId, x.hostId);

    // Y reads X's file: a new sequence at each of its heartbeats while X "writes", fenced or not.
    let seq = 0n;
    let xFenced = false;
    await connect(b, y, () => {
      seq += 1n;
      return [
        {
          poolName: w.pool.name,
          hostId: x.hostId,
          sequence: seq,
          writtenAt: new Date(),
          validUntil: new Date(),
          fenced: xFenced,
          fencedAt: xFenced ? new Date() : undefined,
          unchangedForMs: 0n,
          renewalSeen: seq > 1n,
          fileModifiedAt: new Date(),
        },
      ];
    });
    await waitFor(async () => b.agentLink.poolLeases.renewedWithin(x.hostId, 500) === true, 5000, "B hears Y's readings");
    assert.equal(h.orch.agentLink.poolLeases.evidence(x.hostId).observations.length, 0, 'A hears none of them itself');

    const heldEvents = async () =>
      (await db.outboxEvent.findMany({ where: { entity: 'evacuation', event: 'held' } })).filter((e) => (e.payload as { data?: { hostId?: string } }).data?.hostId === x.hostId || JSON.stringify(e.payload).includes(x.hostId)).length;

    // X goes silent (cut from the orchestrators, still "writing" on the storage).
    await xAgent.stop();
    await waitFor(async () => (await db.host.findUniqueOrThrow({ where: { id: x.hostId } })).state === 'down', 5000, 'X down');
    await waitFor(async () => (await heldEvents()) === 1, 5000, 'the held event');
    const held = await db.evacuation.findFirstOrThrow({ where: { hostId: x.hostId } });
    assert.equal(held.state, 'pending');
    const record = (held.evidence as { held?: { reason: string; poolLeases: { observations: { observerHostId: string }[] } } }).held;
    assert.match(record?.reason ?? '', /renewed .* does not say it fenced itself/);
    assert.deepEqual(record?.poolLeases.observations.map((o) => o.observerHostId), [y.hostId], "Y's reading, gathered from B");
    // Several sweeps later: still held, the VM untouched, one event only.
    await new Promise((res) => setTimeout(res, 2500));
    assert.equal((await db.evacuation.findUniqueOrThrow({ where: { id: held.id } })).state, 'pending');
    const vm = await db.vm.findUniqueOrThrow({ where: { id: vmId } });
    assert.equal(vm.hostId, x.hostId);
    assert.equal(await db.task.count({ where: { kind: 'vm.recover', targetId: vmId } }), 0);
    assert.equal(await heldEvents(), 1);

    // X fenced itself: its file says so.
    xFenced = true;
    await waitFor(async () => (await db.evacuation.findUniqueOrThrow({ where: { id: held.id } })).state === 'planned', 10_000, 'planned once X says fenced');
    const plan = (await db.evacuation.findUniqueOrThrow({ where: { id: held.id } })).plan as { restart?: string; moves: { vmId: string; toHostId: string }[] };
    assert.equal(plan.restart, 'fenced');
    assert.deepEqual(plan.moves.map((m) => [m.vmId, m.toHostId]), [[vmId, y.hostId]]);
    assert.equal((await db.vm.findUniqueOrThrow({ where: { id: vmId } })).hostId, y.hostId);
  });
});
