// A clean agent stop (proto Goodbye) through the real orchestrator (PostgreSQL and PGlite, the
// agent link over real sockets, the failover sweep, REST): the VMs the agent leaves running were
// fenced by nothing, so its host's evacuation is held until an admin confirms the host is off, or
// cancelled when the agent comes back. The agent's side (its fence guard released only on the
// acknowledgement) is tested with real agent processes in agent/src/fence/guard.test.ts.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import * as pb from '@kloudak/proto/agent';
import { ENGINES, connectSimHost, returnSimHost, simDomain, startHarness, type Harness } from '../testing/harness.js';
import { createWorld, freshVm, uniq, type World } from '../testing/fixtures.js';
import { waitFor } from '@kloudak/testkit';
import { systemClock } from '../clock.js';
import { forgetGoodbye } from '../store/agent-hosts.js';

/** Poll until `ok` holds (15 s at most). */
const until = (what: string, ok: () => Promise<boolean>, ms = 15_000) => waitFor(ok, ms, what);

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

for (const engine of ENGINES) {
  describe(`a clean agent stop (Goodbye) on ${engine}`, { timeout: 90_000 }, () => {
    let h: Harness;
    let w: World;
    const stops: (() => Promise<void>)[] = [];
    const ws = () => `/api/v1/workspaces/${w.workspace.name}`;

    before(async () => {
      h = await startHarness(engine, { heartbeatIntervalMs: 200, agentLeaseMs: 2000, agentDownMarginMs: 500, taskBackoffMs: 100, taskBackoffMaxMs: 200 }, systemClock, { livenessTickMs: 50 });
      w = await createWorld(h.orch.db.client);
      await h.orch.db.client.vm.deleteMany({ where: { areaId: w.area.id } });
    });
    after(async () => {
      for (const s of stops) await s().catch(() => undefined);
      await h?.close();
    });

    /** The host's evacuations, oldest first. */
    const evacuations = (hostId: string) => h.orch.db.client.evacuation.findMany({ where: { hostId }, orderBy: { episode: 'asc' } });
    const heldWhy = (e: { evidence: unknown }) => (e.evidence as { held?: { why?: string } }).held?.why;

    it('holds the evacuation of a host whose agent stopped cleanly until an admin confirms it off; then its HA VMs restart elsewhere', async () => {
      const db = h.orch.db.client;
      const a = await connectSimHost(h, w.area.id, w.pool.name, uniq('a'), { heartbeatMs: 200, reconnect: false });
      stops.push(() => a.agent.stop());
      const ids: string[] = [];
      for (const [i, name] of ['ha', 'plain'].map((n) => uniq(n)).entries()) {
        const r = await h.admin.client.post(`${ws()}/vms`, { name, template: w.template.name, networks: [w.network.name], cpu: 1, ramMb: 256, ha: i === 0 });
        assert.equal(r.status, 202, JSON.stringify(r.body));
        ids.push(r.body.vm.id);
      }
      await until('created on A', async () => (await db.vm.count({ where: { id: { in: ids }, state: 'running', hostId: a.hostId } })) === 2);
      const b = await connectSimHost(h, w.area.id, w.pool.name, uniq('b'), { heartbeatMs: 200, reconnect: false });
      stops.push(() => b.agent.stop());

      // The agent stops cleanly, naming what it leaves running (and a VM of no host of its: dropped).
      assert.equal(await a.agent.goodbye([...ids, randomUUID()]), true, 'the Goodbye is acknowledged');
      const row = await db.host.findUniqueOrThrow({ where: { id: a.hostId } });
      assert.ok(row.agentStoppedAt);
      assert.deepEqual([...row.agentStoppedVmIds].sort(), [...ids].sort(), 'only the VMs placed on A');
      const shown = await h.admin.client.get(`/api/v1/hosts/${a.hostId}`);
      assert.equal(shown.body.agentStopped?.runningVms, 2, JSON.stringify(shown.body));
      await a.agent.stop();

      // Down after its lease and margin, as any host; its evacuation is held, not planned.
      await until('the evacuation held', async () => (await evacuations(a.hostId)).some((e) => heldWhy(e) === 'agent_stopped'));
      await sleep(1500); // a few sweeps
      const [held] = await evacuations(a.hostId);
      assert.equal(held?.state, 'pending');
      assert.equal((await db.host.findUniqueOrThrow({ where: { id: a.hostId } })).state, 'down');
      for (const id of ids) {
        const v = await db.vm.findUniqueOrThrow({ where: { id } });
        assert.deepEqual([v.state, v.hostId], ['running', a.hostId], 'left as it was: it may still run');
      }
      assert.equal(await db.task.count({ where: { kind: 'vm.recover', targetId: { in: ids } } }), 0);
      const events = await db.outboxEvent.findMany({ where: { entity: { in: ['host', 'evacuation'] } }, orderBy: { seq: 'asc' } });
      const mine = events.filter((e) => e.entityId === a.hostId || JSON.stringify(e.payload).includes(a.hostId)).map((e) => `${e.entity}.${e.event}`);
      assert.ok(mine.includes('host.agent_stopped') && mine.includes('evacuation.held'), mine.join(' '));

      // The word of an admin: refused for a host that is up, or with a bad id; taken for A.
      const upHost = await h.admin.client.post(`/api/v1/hosts/${b.hostId}/confirm-off`);
      assert.equal(upHost.status, 409, JSON.stringify(upHost.body));
      assert.match(upHost.body.error.message, /not down/);
      assert.equal((await h.admin.client.post('/api/v1/hosts/not-a-uuid/confirm-off')).status, 400);
      assert.equal((await h.admin.client.post(`/api/v1/hosts/${randomUUID()}/confirm-off`)).status, 404);
      const ok = await h.admin.client.post(`/api/v1/hosts/${a.hostId}/confirm-off`);
      assert.equal(ok.status, 200, JSON.stringify(ok.body));
      assert.deepEqual(ok.body.evacuations, [held!.id]);

      await until('the HA VM restarted on B', async () => {
        const v = await db.vm.findUniqueOrThrow({ where: { id: ids[0]! } });
        return v.state === 'running' && v.hostId === b.hostId;
      });
      assert.equal((await db.vm.findUniqueOrThrow({ where: { id: ids[1]! } })).state, 'lost');
      const planned = (await evacuations(a.hostId))[0]!;
      assert.equal(planned.state, 'planned');
      assert.equal((planned.plan as { restart?: string }).restart, 'confirmed_off');
      const again = await h.admin.client.post(`/api/v1/hosts/${a.hostId}/confirm-off`);
      assert.equal(again.status, 409, 'nothing waits any more');
    });

    it('cancels the held evacuation when the agent comes back: the host keeps its VMs', async () => {
      const db = h.orch.db.client;
      const c = await connectSimHost(h, w.area.id, w.pool.name, uniq('c'), { heartbeatMs: 200, reconnect: false });
      stops.push(() => c.agent.stop());
      // A running HA VM placed on C (written directly: which host a create picks is not the point).
      const vm = await freshVm(db, w, c.hostId, { ha: true });
      assert.equal(await c.agent.goodbye([vm.id]), true);
      await c.agent.stop();
      await until('the evacuation held', async () => (await evacuations(c.hostId)).some((e) => heldWhy(e) === 'agent_stopped'));

      // The agent is back (an upgrade that took longer than the lease), its VM still running.
      const back = await returnSimHost(h, c.identity, w.pool.name, { domains: [simDomain(vm.id, pb.DomainState.DOMAIN_STATE_RUNNING)] });
      stops.push(() => back.stop());
      await until('the evacuation cancelled', async () => (await evacuations(c.hostId))[0]?.state === 'cancelled');
      await sleep(1500); // a few sweeps: nothing more happens
      const row = await db.host.findUniqueOrThrow({ where: { id: c.hostId } });
      assert.deepEqual([row.state, row.agentStoppedAt, row.agentStoppedVmIds], ['up', null, []]);
      const v = await db.vm.findUniqueOrThrow({ where: { id: vm.id } });
      assert.deepEqual([v.state, v.hostId], ['running', c.hostId]);
      assert.equal(await db.task.count({ where: { kind: 'vm.recover', targetId: vm.id } }), 0);
      assert.deepEqual((await evacuations(c.hostId)).map((e) => e.state), ['cancelled']);
      assert.equal((await h.admin.client.get(`/api/v1/hosts/${c.hostId}`)).body.agentStopped, null);
    });
    it('a host back with HA VMs off (fenced, or rebooted while held) starts them again there, lost ones too if they were running; nothing else moves', async () => {
      const db = h.orch.db.client;
      const e = await connectSimHost(h, w.area.id, w.pool.name, uniq('e'), { heartbeatMs: 200, reconnect: false });
      stops.push(() => e.agent.stop());
      const ha = await freshVm(db, w, e.hostId, { ha: true });
      const plain = await freshVm(db, w, e.hostId);
      // Two HA VMs an earlier episode left lost on E (nowhere else to go): one lost while running,
      // one while stopped.
      const lostRunning = await freshVm(db, w, e.hostId, { ha: true });
      const lostStopped = await freshVm(db, w, e.hostId, { ha: true });
      await db.vm.update({ where: { id: lostRunning.id }, data: { state: 'lost', lostFrom: 'running' } });
      await db.vm.update({ where: { id: lostStopped.id }, data: { state: 'lost', lostFrom: 'stopped' } });
      assert.equal(await e.agent.goodbye([ha.id, plain.id]), true);
      await e.agent.stop();
      await until('the evacuation held', async () => (await evacuations(e.hostId)).some((x) => heldWhy(x) === 'agent_stopped'));

      // Back with the domains defined but off; the non-HA one is the owner's to start.
      const commands: string[] = [];
      const domains = [ha, plain, lostRunning, lostStopped].map((v) => simDomain(v.id, pb.DomainState.DOMAIN_STATE_SHUTOFF));
      const back = await returnSimHost(h, e.identity, w.pool.name, { domains }, (c) => {
        commands.push(`${c.action?.$case}:${c.vmId}`);
        return { ok: true };
      });
      stops.push(() => back.stop());
      const started = [ha.id, lostRunning.id];
      await until('the HA VMs started again on their host', async () => (await db.task.count({ where: { targetId: { in: started }, kind: 'vm.start', state: 'succeeded' } })) === 2);
      for (const id of started) assert.equal((await db.vm.findUniqueOrThrow({ where: { id } })).state, 'running');
      assert.equal((await db.vm.findUniqueOrThrow({ where: { id: lostStopped.id } })).state, 'stopped', 'lost while stopped: reconciled, not started');
      const p = await db.vm.findUniqueOrThrow({ where: { id: plain.id } });
      assert.deepEqual([p.state, p.stateReason], ['stopped', 'its host reports its domain shutoff'], 'not HA: its state follows its domain, not started');
      assert.deepEqual((await evacuations(e.hostId)).map((x) => x.state), ['cancelled']);
      const tasks = await db.task.findMany({ where: { targetId: { in: [ha.id, plain.id, lostRunning.id, lostStopped.id] } } });
      assert.deepEqual(
        tasks.map((t) => [t.targetId, t.kind, t.state, t.createdById]).sort(),
        started.map((id) => [id, 'vm.start', 'succeeded', null]).sort(),
      );
      assert.deepEqual(commands.sort(), started.map((id) => `startVm:${id}`).sort(), 'one start each, on their own host');
      assert.equal((await db.vm.findUniqueOrThrow({ where: { id: ha.id } })).hostId, e.hostId);
      const events = await db.outboxEvent.findMany({ where: { entity: 'vm', entityId: ha.id }, orderBy: { seq: 'asc' } });
      assert.ok(events.some((x) => x.event === 'ha_restart'), events.map((x) => x.event).join(' '));
    });

    it('takes no Goodbye once the lease it granted has ended: the agent fences then, so nothing is held', async () => {
      const db = h.orch.db.client;
      // No heartbeat after Hello: the only lease is HelloAck's (2 s).
      const d = await connectSimHost(h, w.area.id, w.pool.name, uniq('d'), { heartbeatMs: 600_000, reconnect: false });
      stops.push(() => d.agent.stop());
      const vm = await freshVm(db, w, d.hostId, { ha: true });
      await sleep(2200);
      assert.equal(await d.agent.goodbye([vm.id], 'SIGTERM', 1000), false, 'not acknowledged');
      assert.equal((await db.host.findUniqueOrThrow({ where: { id: d.hostId } })).agentStoppedAt, null, 'not recorded');
      await d.agent.stop();
      await until('the evacuation planned', async () => (await evacuations(d.hostId))[0]?.state === 'planned');
      assert.equal(heldWhy((await evacuations(d.hostId))[0]!), undefined, 'never held');
    });
    it('takes back a Goodbye recorded as the lease ended, only on the session that sent it', async () => {
      const db = h.orch.db.client;
      const e = await connectSimHost(h, w.area.id, w.pool.name, uniq('e'), { heartbeatMs: 200, reconnect: false });
      stops.push(() => e.agent.stop());
      assert.equal(await e.agent.goodbye([]), true);
      const row = await db.host.findUniqueOrThrow({ where: { id: e.hostId } });
      assert.ok(row.agentStoppedAt && row.ownerInstanceId);
      const session = { instanceId: row.ownerInstanceId, epoch: row.sessionEpoch };
      assert.equal(await forgetGoodbye(db, e.hostId, { ...session, epoch: session.epoch - 1n }, row.agentStoppedAt), false, 'an older session takes nothing back');
      assert.equal(await forgetGoodbye(db, e.hostId, session, row.agentStoppedAt), true);
      assert.equal((await db.host.findUniqueOrThrow({ where: { id: e.hostId } })).agentStoppedAt, null);
      const events = await db.outboxEvent.findMany({ where: { entity: 'host', entityId: e.hostId, event: 'agent_stopped' }, orderBy: { seq: 'asc' } });
      assert.deepEqual(events.map((x) => (x.payload as { takenBack?: boolean }).takenBack ?? false), [false, true]);
    });
  });
}
