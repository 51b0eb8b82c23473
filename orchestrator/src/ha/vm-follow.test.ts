// A VM's state follows its domain (domain/vm-follow.ts) through the real orchestrator (PostgreSQL
// and PGlite, the agent link over real sockets, the task worker, REST): a simulated agent sends
// the lifecycle events a real one forwards from libvirt. The agent's side (libvirt's events read
// and sent, none while it holds no lease) is covered with a real agent and QEMU in
// test/e2e/src/vms.e2e.test.ts.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as pb from '@kloudak/proto/agent';
import { waitFor } from '@kloudak/testkit';
import { ENGINES, connectSimHost, startHarness, type Harness } from '../testing/harness.js';
import { createWorld, uniq, type World } from '../testing/fixtures.js';
import { systemClock } from '../clock.js';
import type { SimAgent } from '../agent-api/testing/sim-agent.js';
import { HA_RESTART_LIMIT } from '../domain/vm-follow.js';

const until = (what: string, ok: () => Promise<boolean>, ms = 15_000) => waitFor(ok, ms, what);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** The lifecycle event a real agent sends when libvirt reports `type`/`detail` for the VM's domain. */
function domainEvent(vmId: string, type: pb.DomainEventType, detail: string): pb.AgentMessage {
  return { body: { $case: 'domainEvent', domainEvent: { vmId, domainName: `kloudak-${vmId}`, event: type, detail, occurredAt: new Date() } } };
}

for (const engine of ENGINES) {
  describe(`a VM's state follows its domain on ${engine}`, { timeout: 120_000 }, () => {
    let h: Harness;
    let w: World;
    let agent: SimAgent;
    let hostId: string;
    /** Commands the host received, as `action:vmId`. */
    const commands: string[] = [];
    /** Run before answering a command (a test's hook), then cleared. */
    let beforeAnswer: ((c: pb.Command) => Promise<void>) | null = null;
    const ws = () => `/api/v1/workspaces/${w.workspace.name}`;

    before(async () => {
      h = await startHarness(engine, { heartbeatIntervalMs: 200, taskBackoffMs: 100, taskBackoffMaxMs: 200 }, systemClock, { livenessTickMs: 50 });
      w = await createWorld(h.orch.db.client);
      await h.orch.db.client.vm.deleteMany({ where: { areaId: w.area.id } });
      const a = await connectSimHost(h, w.area.id, w.pool.name, uniq('a'), {
        heartbeatMs: 200,
        reconnect: false,
        onCommand: async (c) => {
          commands.push(`${c.action?.$case}:${c.vmId}`);
          if (beforeAnswer) await beforeAnswer(c);
          return { ok: true };
        },
      });
      agent = a.agent;
      hostId = a.hostId;
    });
    after(async () => {
      await agent?.stop().catch(() => undefined);
      await h?.close();
    });

    const createVm = async (ha: boolean): Promise<{ id: string; name: string }> => {
      const name = uniq(ha ? 'ha' : 'plain');
      const r = await h.admin.client.post(`${ws()}/vms`, { name, template: w.template.name, networks: [w.network.name], cpu: 1, ramMb: 256, ha });
      assert.equal(r.status, 202, JSON.stringify(r.body));
      const id = r.body.vm.id as string;
      await until(`${name} running`, async () => (await h.orch.db.client.vm.findUniqueOrThrow({ where: { id } })).state === 'running');
      return { id, name };
    };
    const vmRow = (id: string) => h.orch.db.client.vm.findUniqueOrThrow({ where: { id } });
    const haStarts = (id: string) => h.orch.db.client.task.findMany({ where: { targetId: id, kind: 'vm.start' }, orderBy: { seq: 'asc' } });
    const startsSent = (id: string) => commands.filter((c) => c === `startVm:${id}`).length;

    it('a non-HA VM whose guest shuts itself down becomes stopped, with the cause; started outside Kloudak, it is running again', async () => {
      const vm = await createVm(false);
      agent.send(domainEvent(vm.id, pb.DomainEventType.DOMAIN_EVENT_TYPE_STOPPED, 'shutdown'));
      await until('stopped', async () => (await vmRow(vm.id)).state === 'stopped');
      assert.equal((await vmRow(vm.id)).stateReason, 'the guest shut itself down');
      // Shown to its workspace, over the API.
      const shown = await h.admin.client.get(`${ws()}/vms/${vm.name}`);
      assert.equal(shown.body.state, 'stopped', JSON.stringify(shown.body));
      const events = await h.orch.db.client.outboxEvent.findMany({ where: { entityId: vm.id, workspaceId: w.workspace.id, event: 'state' }, orderBy: { seq: 'asc' } });
      assert.deepEqual(events.at(-1)?.payload, { name: vm.name, reason: 'the guest shut itself down' }, JSON.stringify(events.map((e) => e.payload)));
      assert.equal((await haStarts(vm.id)).length, 0, 'not HA: nothing starts it');

      agent.send(domainEvent(vm.id, pb.DomainEventType.DOMAIN_EVENT_TYPE_STARTED, 'booted'));
      await until('running', async () => (await vmRow(vm.id)).state === 'running');
      assert.equal((await vmRow(vm.id)).stateReason, null);
      assert.equal(startsSent(vm.id), 0, 'no command was needed');
    });

    it(`an HA VM that crashes is started again on its host, ${HA_RESTART_LIMIT} times in 10 minutes; then it stays stopped, saying why`, async () => {
      const vm = await createVm(true);
      for (let i = 1; i <= HA_RESTART_LIMIT; i++) {
        agent.send(domainEvent(vm.id, pb.DomainEventType.DOMAIN_EVENT_TYPE_CRASHED, 'crashed'));
        await until(`restart ${i} done`, async () => (await haStarts(vm.id)).filter((t) => t.state === 'succeeded').length === i && (await vmRow(vm.id)).state === 'running');
        assert.equal(startsSent(vm.id), i, 'one start command per crash');
      }
      const tasks = await haStarts(vm.id);
      assert.deepEqual(
        tasks.map((t) => [(t.input as { reason?: string }).reason, t.createdById]),
        Array.from({ length: HA_RESTART_LIMIT }, () => ['ha_restart', null]),
      );
      assert.equal((await vmRow(vm.id)).hostId, hostId, 'on its own host');

      agent.send(domainEvent(vm.id, pb.DomainEventType.DOMAIN_EVENT_TYPE_CRASHED, 'crashed'));
      await until('given up', async () => (await vmRow(vm.id)).state === 'stopped');
      await sleep(500); // the worker's turn: nothing may be queued
      assert.match((await vmRow(vm.id)).stateReason ?? '', /^the guest crashed; HA restarted it 3 times in the last 10 minutes and gives up/);
      assert.equal((await haStarts(vm.id)).length, HA_RESTART_LIMIT, 'no fourth start');
      assert.equal(startsSent(vm.id), HA_RESTART_LIMIT);
      const infra = await h.orch.db.client.outboxEvent.findMany({ where: { entityId: vm.id, workspaceId: null, event: { in: ['ha_restart', 'followed'] } }, orderBy: { seq: 'asc' } });
      assert.deepEqual(
        infra.map((e) => e.event),
        [...Array.from({ length: HA_RESTART_LIMIT }, () => 'ha_restart'), 'followed'],
      );

      // Its owner starts it (the cause fixed): HA protects it again.
      const r = await h.admin.client.post(`${ws()}/vms/${vm.name}/actions`, { action: 'start' });
      assert.equal(r.status, 202, JSON.stringify(r.body));
      await until('started by its owner', async () => (await haStarts(vm.id)).filter((t) => t.state === 'succeeded').length === HA_RESTART_LIMIT + 1 && (await vmRow(vm.id)).state === 'running');
      agent.send(domainEvent(vm.id, pb.DomainEventType.DOMAIN_EVENT_TYPE_CRASHED, 'crashed'));
      await until('restarted by HA again', async () => (await haStarts(vm.id)).filter((t) => t.state === 'succeeded').length === HA_RESTART_LIMIT + 2 && (await vmRow(vm.id)).state === 'running');
      assert.equal((await haStarts(vm.id)).at(-1)?.createdById, null, 'by HA');
    });

    it("the events of a task's own stop change nothing more: a stopped HA VM is not restarted", async () => {
      const vm = await createVm(true);
      // As a real agent does: libvirt's event of the destroy goes out before the command's result.
      beforeAnswer = async (c) => {
        if (c.action?.$case !== 'stopVm') return;
        agent.send(domainEvent(vm.id, pb.DomainEventType.DOMAIN_EVENT_TYPE_STOPPED, 'destroyed'));
        await sleep(300);
      };
      try {
        const r = await h.admin.client.post(`${ws()}/vms/${vm.name}/actions`, { action: 'stop' });
        assert.equal(r.status, 202, JSON.stringify(r.body));
        await until('stopped by its task', async () => (await vmRow(vm.id)).state === 'stopped' && (await h.orch.db.client.task.count({ where: { targetId: vm.id, kind: 'vm.stop', state: 'succeeded' } })) === 1);
      } finally {
        beforeAnswer = null;
      }
      await sleep(500);
      assert.equal((await vmRow(vm.id)).state, 'stopped');
      assert.equal((await haStarts(vm.id)).length, 0, 'the user stopped it: HA leaves it stopped');
      // A late copy of the event (the stop is done) changes nothing either: the VM is not running.
      agent.send(domainEvent(vm.id, pb.DomainEventType.DOMAIN_EVENT_TYPE_STOPPED, 'destroyed'));
      await sleep(500);
      assert.equal((await haStarts(vm.id)).length, 0);
    });

    it('ignores events that leave the domain alive elsewhere, and events about a VM of another host', async () => {
      const vm = await createVm(true);
      agent.send(domainEvent(vm.id, pb.DomainEventType.DOMAIN_EVENT_TYPE_STOPPED, 'migrated'));
      agent.send(domainEvent(vm.id, pb.DomainEventType.DOMAIN_EVENT_TYPE_STOPPED, 'saved'));
      agent.send(domainEvent(vm.id, pb.DomainEventType.DOMAIN_EVENT_TYPE_CRASHED, 'panicked'));
      // A VM placed on another host (moved there in the inventory): this host's word is no evidence.
      const other = await connectSimHost(h, w.area.id, w.pool.name, uniq('b'), { heartbeatMs: 200, reconnect: false });
      try {
        const moved = await createVm(true);
        await h.orch.db.client.vm.update({ where: { id: moved.id }, data: { hostId: other.hostId } });
        agent.send(domainEvent(moved.id, pb.DomainEventType.DOMAIN_EVENT_TYPE_CRASHED, 'crashed'));
        await sleep(800);
        assert.equal((await vmRow(moved.id)).state, 'running');
        assert.equal((await haStarts(moved.id)).length, 0);
      } finally {
        await other.agent.stop();
      }
      assert.equal((await vmRow(vm.id)).state, 'running');
      assert.equal((await haStarts(vm.id)).length, 0);
    });
  });
}
