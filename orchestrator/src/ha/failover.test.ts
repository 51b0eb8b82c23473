// Failover through the real orchestrator (PostgreSQL and PGlite, the agent link over real sockets,
// the task worker) with in-process simulated agents that answer every command at once: one
// evacuation per host-down episode however the host flaps or the planner is called, and a
// returning host receiving its clean-up before any other command. What the agents do on real
// libvirt hosts is covered end to end by test/e2e failover.e2e.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import * as pb from '@kloudak/proto/agent';
import { ENGINES, connectSimHost, returnSimHost, simDomain, startHarness, type Harness } from '../testing/harness.js';
import { createWorld, uniq, type World } from '../testing/fixtures.js';
import { writeHostState } from '../store/agent-hosts.js';
import { evacuateHost, sweepEvacuations, type FailoverDeps } from './failover.js';
import { systemClock } from '../clock.js';
import { createLogger } from '@kloudak/common';
import { DEFAULT_PLACEMENT_POLICY } from '../domain/placement.js';
import { LOST_RETRY_BASE_MS } from '../domain/evacuation.js';
import { waitFor } from '@kloudak/testkit';

/** Poll until `ok` holds (15 s at most). */
const until = (what: string, ok: () => Promise<boolean>, ms = 15_000) => waitFor(ok, ms, what);

for (const engine of ENGINES) {
  describe(`failover on ${engine}`, { timeout: 90_000 }, () => {
    let h: Harness;
    let w: World;
    const stops: (() => Promise<void>)[] = [];
    const ws = () => `/api/v1/workspaces/${w.workspace.name}`;
    /** The first test's hosts: A ends down (episode 2), B up. */
    let hostA = '';
    let hostB = '';

    before(async () => {
      // Leases long enough that PGlite (in this process, blocking it for a moment now and then) on a
      // busy machine cannot make a live host miss one: a false down would be a second episode.
      h = await startHarness(engine, { heartbeatIntervalMs: 200, agentLeaseMs: 2000, agentDownMarginMs: 500, taskBackoffMs: 100, taskBackoffMaxMs: 200 }, systemClock, { livenessTickMs: 50 });
      w = await createWorld(h.orch.db.client);
      // The fixture's host is not connected (never a target); its VM is none of this test's.
      await h.orch.db.client.vm.deleteMany({ where: { areaId: w.area.id } });
    });
    after(async () => {
      for (const s of stops) await s().catch(() => undefined);
      await h?.close();
    });

    it('one evacuation per down episode, however the host flaps; the returning host is cleaned before any other command', async () => {
      const db = h.orch.db.client;
      const a = await connectSimHost(h, w.area.id, w.pool.name, uniq('a'), { heartbeatMs: 200, reconnect: false });
      stops.push(() => a.agent.stop());
      const names = ['ha1', 'ha2', 'plain'].map((n) => uniq(n));
      const ids: string[] = [];
      for (const [i, name] of names.entries()) {
        const r = await h.admin.client.post(`${ws()}/vms`, { name, template: w.template.name, networks: [w.network.name], cpu: 1, ramMb: 256, ha: i < 2 });
        assert.equal(r.status, 202, JSON.stringify(r.body));
        ids.push(r.body.vm.id);
      }
      await until('created', async () => (await db.vm.count({ where: { id: { in: ids }, state: 'running' } })) === 3);
      const b = await connectSimHost(h, w.area.id, w.pool.name, uniq('b'), { heartbeatMs: 200, reconnect: false });
      stops.push(() => b.agent.stop());

      // Episode 1: A's agent goes; after lease + margin the HA VMs restart on B.
      await a.agent.stop();
      await until('HA VMs on B', async () => (await db.vm.count({ where: { id: { in: ids.slice(0, 2) }, state: 'running', hostId: b.hostId } })) === 2);
      const lostPlain = await db.vm.findUniqueOrThrow({ where: { id: ids[2]! } });
      assert.deepEqual([lostPlain.state, lostPlain.lostFrom], ['lost', 'running']);
      const first = await db.evacuation.findMany({ where: { hostId: a.hostId } });
      assert.deepEqual(first.map((e) => [e.episode, e.state]), [[1, 'planned']]);

      // Asked again — by the down path, the sweep, or a replayed down write — nothing new.
      const deps: FailoverDeps = {
        db,
        clock: systemClock,
        log: createLogger({ component: 'test', level: 'silent' }),
        connected: (id) => h.orch.agentLink.status(id).connected,
        placement: DEFAULT_PLACEMENT_POLICY,
        kickTasks: () => h.orch.tasks.kick(),
        taskMaxAttempts: 3,
        recoverTimeoutMs: 30_000,
        commandTimeoutMs: 5_000,
        leaseMs: 600,
      };
      assert.deepEqual(await evacuateHost(deps, a.hostId), []);
      // (The sweep may plan other hosts' episodes: the fixture's never-connected host goes down too.)
      await sweepEvacuations(deps);
      const replay = await writeHostState(db, a.hostId, 'down', undefined, { from: 'suspect', at: new Date() });
      assert.equal(replay?.evacuation, undefined);
      assert.equal(await db.evacuation.count({ where: { hostId: a.hostId } }), 1);
      assert.equal(await db.task.count({ where: { kind: 'vm.recover', targetId: { in: ids } } }), 2);

      // A returns with its old domains and an orphan; a command queued while it was away waits.
      const commands: string[] = [];
      const orphan = randomUUID();
      const queued = h.orch.agents.sendCommand(a.hostId, { action: { kind: 'getInventory' } }, { deadline: Date.now() + 10_000 });
      const back = await returnSimHost(
        h,
        a.identity,
        w.pool.name,
        {
          domains: [
            simDomain(ids[0]!, pb.DomainState.DOMAIN_STATE_SHUTOFF),
            simDomain(ids[1]!, pb.DomainState.DOMAIN_STATE_SHUTOFF),
            simDomain(ids[2]!, pb.DomainState.DOMAIN_STATE_RUNNING),
            simDomain(orphan, pb.DomainState.DOMAIN_STATE_RUNNING),
          ],
          volumes: [{ pool: w.pool.name, name: `kloudak-${orphan}-root.qcow2`, path: '/srv/x/o', capacityBytes: 1n, allocationBytes: 1n, vmId: orphan }],
        },
        async (c) => {
          commands.push(`${c.action?.$case}:${c.vmId || '-'}`);
          await new Promise((r) => setTimeout(r, 20));
          return { ok: true };
        },
      );
      stops.push(() => back.stop());
      assert.equal((await queued).ok, true);
      const firstAfter = commands.indexOf('getInventory:-');
      assert.ok(firstAfter >= 0, JSON.stringify(commands));
      assert.deepEqual(commands.slice(0, firstAfter).sort(), [`deleteVm:${orphan}`, `evictVm:${ids[0]}`, `evictVm:${ids[1]}`].sort(), 'the clean-up first');
      await until('plain reconciled', async () => (await db.vm.findUniqueOrThrow({ where: { id: ids[2]! } })).state === 'running');

      // Episode 2 (a flap): a new evacuation, which finds nothing left to move.
      await back.stop();
      await until('episode 2 planned', async () => (await db.evacuation.count({ where: { hostId: a.hostId, state: 'planned' } })) === 2);
      const second = await db.evacuation.findFirstOrThrow({ where: { hostId: a.hostId, episode: 2 } });
      const plan = second.plan as { moves: unknown[]; lost: { vmId: string }[] };
      assert.deepEqual(plan.moves, []);
      assert.deepEqual(plan.lost.map((l) => l.vmId), [ids[2]]);
      assert.equal(await db.task.count({ where: { kind: 'vm.recover', targetId: { in: ids } } }), 2);
      hostA = a.hostId;
      hostB = b.hostId;
    });

    it('VMs a task left on the down host after its evacuation was planned are evacuated by the sweep', async () => {
      // A is down (episode 2, planned). Two VMs settle there now, as when a drain's migration that
      // the plan skipped as busy rolls back: the HA one must restart on B, the other be lost.
      const db = h.orch.db.client;
      assert.equal((await db.host.findUniqueOrThrow({ where: { id: hostA } })).state, 'down');
      const left = async (name: string, ha: boolean) =>
        (await db.vm.create({ data: { name: uniq(name), workspaceId: w.workspace.id, areaId: w.area.id, templateId: w.template.id, hostId: hostA, poolId: w.pool.id, cpu: 1, ramMb: 256, diskGb: 1, state: 'running', haEnabled: ha } })).id;
      const ha = await left('left-ha', true);
      const plain = await left('left-plain', false);
      await until('the HA one recovered on B', async () => {
        const v = await db.vm.findUniqueOrThrow({ where: { id: ha } });
        return v.state === 'running' && v.hostId === hostB;
      });
      const p = await db.vm.findUniqueOrThrow({ where: { id: plain } });
      assert.equal(p.state, 'lost');
      assert.equal(p.hostId, hostA);
      assert.match(p.stateReason ?? '', /not an HA VM/);
      assert.equal(await db.evacuation.count({ where: { hostId: hostA } }), 2, 'no new evacuation');
    });

    it('a lost HA VM whose restart failed is retried after a backoff, on another host first', async () => {
      // C, empty (the host placement prefers), has no disk for the VM: its recover fails there with
      // not_found, after 2 s. The retry must wait 5 s from that failure — the next lost-VM sweep,
      // 5 s after the first, would come 3 s after it — and go to B.
      const db = h.orch.db.client;
      const c = await connectSimHost(h, w.area.id, w.pool.name, uniq('c'), {
        heartbeatMs: 200,
        reconnect: false,
        onCommand: async (cmd) => {
          if (cmd.action?.$case !== 'createVm' || !cmd.action.createVm.recover) return { ok: true };
          await new Promise((r) => setTimeout(r, 2000));
          return { ok: false, error: { code: pb.ErrorCode.ERROR_CODE_NOT_FOUND, message: 'its root volume is not in the pool on this host' } };
        },
      });
      stops.push(() => c.agent.stop());
      const vmId = (await db.vm.create({ data: { name: uniq('lost-ha'), workspaceId: w.workspace.id, areaId: w.area.id, templateId: w.template.id, hostId: hostA, poolId: w.pool.id, cpu: 1, ramMb: 256, diskGb: 1, state: 'lost', haEnabled: true } })).id;
      await until('recovered on B', async () => {
        const v = await db.vm.findUniqueOrThrow({ where: { id: vmId } });
        return v.state === 'running' && v.hostId === hostB;
      }, 30_000);
      const tasks = await db.task.findMany({ where: { kind: 'vm.recover', targetId: vmId }, orderBy: { seq: 'asc' } });
      assert.deepEqual(
        tasks.map((t) => [(t.input as { toHostId: string }).toHostId, t.state]),
        [[c.hostId, 'rolled_back'], [hostB, 'succeeded']],
        'one failed restart on C, then one on B',
      );
      const waited = tasks[1]!.createdAt.getTime() - tasks[0]!.finishedAt!.getTime();
      assert.ok(waited >= LOST_RETRY_BASE_MS - 50, `the retry came ${waited} ms after the failure`);
    });
  });
}
