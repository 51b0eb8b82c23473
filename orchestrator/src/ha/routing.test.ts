// Command routing between two orchestrator instances on one PostgreSQL and one NATS (real gRPC,
// simulated agents): a command sent through instance A for a host whose agent is connected to
// instance B reaches it through B (NATS request/reply) and completes at once, not at its
// deadline; a session that moves while a command is pending still gives that command exactly one
// result; a malformed routed request is answered with an error; and a VM task run by A's engine
// for a host held by B succeeds.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import * as pb from '@kloudak/proto/agent';
import { createLogger } from '@kloudak/common';
import { TEST_NATS_URL, waitFor } from '@kloudak/testkit';
import { connect } from '@nats-io/transport-node';
import { CommandRouter } from '../agent-api/routing.js';
import { systemClock } from '../clock.js';
import { configWith } from '../config.js';
import { startOrchestrator, type Orchestrator } from '../server.js';
import { connectSimHost, startHarness, type Harness } from '../testing/harness.js';
import { createWorld, uniq, type World } from '../testing/fixtures.js';
import type { SimAgent, SimCommandAnswer } from '../agent-api/testing/sim-agent.js';

const T = { heartbeatIntervalMs: 100, agentLeaseMs: 800, agentDownMarginMs: 400, instanceTtlMs: 1200, leaderTtlMs: 1000 };
const START = { livenessTickMs: 25, sweepMs: 50, directoryRefreshMs: 200 };
/** Deadlines of the commands sent here: long, so "promptly" is far from them. */
const DEADLINE_MS = 20_000;

/** `p`, or a failure after `ms` (a test fails rather than hangs). */
function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const t = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`timed out: ${what}`)), ms)));
  return Promise.race([p, t]).finally(() => clearTimeout(timer));
}

/** A gate a simulated agent's command waits on. */
function gate(): { wait: Promise<void>; open: () => void } {
  let open!: () => void;
  const wait = new Promise<void>((r) => (open = r));
  return { wait, open };
}

describe('command routing between two orchestrators (postgres, NATS)', () => {
  let h: Harness;
  let a: Orchestrator;
  let b: Orchestrator;
  let w: World;
  const agents: SimAgent[] = [];
  /** What the hosts' simulated agents answer, per test (by command id). */
  const handlers = new Map<string, (c: pb.Command) => Promise<SimCommandAnswer> | SimCommandAnswer>();
  const onCommand = (c: pb.Command) => handlers.get(c.commandId)?.(c) ?? { ok: true };

  before(async () => {
    h = await startHarness('postgres', T, systemClock, START);
    a = h.orch;
    b = await startOrchestrator(configWith({ ...h.config, port: 0, agentPort: 0, grpcPort: 0 }), createLogger({ component: 'orchestrator-b', level: 'silent' }), systemClock, START);
    w = await createWorld(a.db.client);
  });
  after(async () => {
    for (const ag of agents) await ag.stop();
    await b?.close();
    await h?.close();
  });

  /** A simulated host enrolled through A's API whose agent is connected to `on`, known to both instances' directories. */
  async function hostOn(on: Orchestrator): Promise<{ hostId: string; agent: SimAgent }> {
    const { hostId, agent } = await connectSimHost({ ...h, orch: on }, w.area.id, w.pool.name, uniq('routed'), { onCommand, reconnect: true });
    agents.push(agent);
    await waitFor(async () => [a, b].every((o) => o.agentLink.directory.holder(hostId)?.instanceId === on.instance.id), 5000, 'both directories know the holder');
    return { hostId, agent };
  }

  it('a command sent through A for a host whose agent is on B completes at once with the agent\'s result', async () => {
    const { hostId, agent } = await hostOn(b);
    const id = randomUUID();
    handlers.set(id, () => ({
      ok: true,
      payload: { $case: 'inventory', inventory: { domains: [{ name: 'kloudak-x', uuid: id, vmId: id, state: pb.DomainState.DOMAIN_STATE_RUNNING, vcpus: 2, memoryBytes: 1n << 30n }], volumes: [], ovsPorts: [] } },
    }));
    const t0 = performance.now();
    const r = await a.agents.sendCommand(hostId, { action: { kind: 'getInventory' } }, { deadline: Date.now() + DEADLINE_MS, commandId: id });
    const ms = performance.now() - t0;
    console.log(`# routed command A → B → agent → B → A: ${ms.toFixed(1)} ms (deadline ${DEADLINE_MS} ms)`);
    assert.equal(r.ok, true, JSON.stringify(r));
    assert.equal(r.commandId, id);
    assert.deepEqual(r.inventory?.domains.map((d) => [d.vmId, d.vcpus, d.memoryBytes]), [[id, 2, 2 ** 30]]);
    assert.ok(ms < 2000, `took ${ms} ms`);
    assert.equal(agent.stats.commandsRun, 1);
    // A console read routed back keeps its bytes.
    const cid = randomUUID();
    handlers.set(cid, () => ({ ok: true, payload: { $case: 'consoleOutput', consoleOutput: { data: Buffer.from([0, 1, 2, 255, 10]), truncated: true } } }));
    const con = await a.agents.sendCommand(hostId, { vmId: randomUUID(), action: { kind: 'readConsole', maxBytes: 100 } }, { deadline: Date.now() + DEADLINE_MS, commandId: cid });
    assert.equal(con.ok, true);
    assert.deepEqual([...(con.console?.data ?? [])], [0, 1, 2, 255, 10]);
    assert.equal(con.console?.truncated, true);
    // A console tail larger than one NATS message is cut at its start, and says so.
    const big = Buffer.alloc(1024 * 1024, 'a');
    big.write('THE-END', big.length - 7);
    const bid = randomUUID();
    handlers.set(bid, () => ({ ok: true, payload: { $case: 'consoleOutput', consoleOutput: { data: big, truncated: false } } }));
    const tail = await a.agents.sendCommand(hostId, { vmId: randomUUID(), action: { kind: 'readConsole', maxBytes: big.length } }, { deadline: Date.now() + DEADLINE_MS, commandId: bid });
    assert.equal(tail.ok, true, JSON.stringify(tail.error));
    assert.equal(tail.console?.truncated, true);
    assert.ok(tail.console!.data.length > 512 * 1024 && tail.console!.data.length < big.length, String(tail.console?.data.length));
    assert.equal(tail.console!.data.subarray(-7).toString(), 'THE-END');
    // A failure keeps its code.
    const fid = randomUUID();
    handlers.set(fid, () => ({ ok: false, error: { code: pb.ErrorCode.ERROR_CODE_NOT_FOUND, message: 'no such domain' } }));
    const f = await a.agents.sendCommand(hostId, { vmId: randomUUID(), action: { kind: 'startVm' } }, { deadline: Date.now() + DEADLINE_MS, commandId: fid });
    assert.equal(f.ok, false);
    assert.equal(f.error?.code, 'not_found');
    assert.equal(f.notSent, undefined);
    assert.deepEqual([a.router.pending(), b.router.pending()], [{ outgoing: 0, incoming: 0 }, { outgoing: 0, incoming: 0 }]);
    assert.equal(b.agentLink.channel.pendingCount(hostId), 0);
  });

  it('a session that moves from B to A while a routed command runs gives that command exactly one result', async () => {
    const { hostId, agent } = await hostOn(b);
    const id = randomUUID();
    const g = gate();
    let runs = 0;
    handlers.set(id, async () => {
      runs += 1;
      await g.wait;
      return { ok: true };
    });
    const received = new Promise<void>((r) => agent.once('command', () => r()));
    let results = 0;
    const sent = a.agents.sendCommand(hostId, { vmId: randomUUID(), action: { kind: 'startVm' } }, { deadline: Date.now() + DEADLINE_MS, commandId: id }).then((r) => {
      results += 1;
      return r;
    });
    await within(received, 5000, 'the agent got the command');
    assert.equal(b.router.pending().incoming, 1, 'pending on B, the holder');
    // The agent's stream to B is cut; the same agent (its memory of command ids intact) dials A.
    agent.moveTo(a.agentUrl);
    await waitFor(async () => a.agentLink.directory.holder(hostId)?.instanceId === a.instance.id && a.agentLink.status(hostId).connected, 5000, 'the session on A');
    await waitFor(async () => b.router.pending().incoming === 0, 5000, 'B gave the command back');
    const t0 = performance.now();
    g.open();
    const r = await within(sent, 5000, 'the result');
    console.log(`# result ${(performance.now() - t0).toFixed(1)} ms after the agent finished, the session having moved B → A`);
    assert.equal(r.ok, true, JSON.stringify(r));
    assert.equal(r.commandId, id);
    assert.ok(performance.now() - t0 < 2000);
    await new Promise((res) => setTimeout(res, 300));
    assert.equal(results, 1);
    assert.equal(runs, 1, 'the agent ran it once (the re-sent id joined the run)');
    assert.ok(agent.stats.commandsReceived >= 2, 'sent again on the new session');
    assert.deepEqual([a.router.pending(), b.router.pending()], [{ outgoing: 0, incoming: 0 }, { outgoing: 0, incoming: 0 }]);
    assert.equal(a.agentLink.channel.pendingCount(hostId), 0);
    assert.equal(b.agentLink.channel.pendingCount(hostId), 0);
  });

  it('a command pending on A\'s own session follows the session to B, and a later command for that VM waits behind it', async () => {
    const { hostId, agent } = await hostOn(a);
    const vmId = randomUUID();
    const first = randomUUID();
    const second = randomUUID();
    const g = gate();
    const order: string[] = [];
    handlers.set(first, async () => {
      order.push('first');
      await g.wait;
      return { ok: true };
    });
    handlers.set(second, () => {
      order.push('second');
      return { ok: true };
    });
    const received = new Promise<void>((r) => agent.once('command', () => r()));
    const p1 = a.agents.sendCommand(hostId, { vmId, action: { kind: 'startVm' } }, { deadline: Date.now() + DEADLINE_MS, commandId: first });
    await within(received, 5000, 'the agent got the command');
    const p2 = a.agents.sendCommand(hostId, { vmId, action: { kind: 'rebootVm' } }, { deadline: Date.now() + DEADLINE_MS, commandId: second });
    agent.moveTo(b.agentUrl);
    await waitFor(async () => a.agentLink.directory.holder(hostId)?.instanceId === b.instance.id, 5000, 'A knows the session is on B');
    await waitFor(async () => b.router.pending().incoming >= 1, 5000, 'routed to B');
    g.open();
    const [r1, r2] = await within(Promise.all([p1, p2]), 5000, 'both results');
    assert.equal(r1.ok, true, JSON.stringify(r1));
    assert.equal(r2.ok, true, JSON.stringify(r2));
    assert.deepEqual(order, ['first', 'second'], 'one run each, in order');
    assert.deepEqual([a.router.pending(), b.router.pending()], [{ outgoing: 0, incoming: 0 }, { outgoing: 0, incoming: 0 }]);
  });

  it('a holder that shuts down gives its routed commands back: the sender re-routes and gets one result', async () => {
    // A third instance, C, to be shut down.
    const c = await startOrchestrator(configWith({ ...h.config, port: 0, agentPort: 0, grpcPort: 0 }), createLogger({ component: 'orchestrator-c', level: 'silent' }), systemClock, START);
    let cClosed = false;
    try {
      const { hostId, agent } = await hostOn(c);
      const id = randomUUID();
      const g = gate();
      let runs = 0;
      handlers.set(id, async () => {
        runs += 1;
        await g.wait;
        return { ok: true };
      });
      const received = new Promise<void>((r) => agent.once('command', () => r()));
      let results = 0;
      const sent = a.agents.sendCommand(hostId, { vmId: randomUUID(), action: { kind: 'stopVm', timeoutMs: 1000, force: false } }, { deadline: Date.now() + DEADLINE_MS, commandId: id }).then((r) => {
        results += 1;
        return r;
      });
      await within(received, 5000, 'the agent got the command');
      assert.equal(c.router.pending().incoming, 1);
      // C stops: its router first (as C's close does, before the sessions end), which gives the
      // command back to A while the session is still on C; then the agent dials A instead.
      await c.router.close();
      assert.equal(c.router.pending().incoming, 0, 'given back');
      await new Promise((res) => setTimeout(res, 300));
      assert.equal(results, 0, 'no result yet: A keeps trying');
      agent.moveTo(a.agentUrl);
      await c.close();
      cClosed = true;
      await waitFor(async () => a.agentLink.directory.holder(hostId)?.instanceId === a.instance.id, 5000, 'the session on A');
      g.open();
      const r = await within(sent, 5000, 'the result');
      assert.equal(r.ok, true, JSON.stringify(r));
      await new Promise((res) => setTimeout(res, 200));
      assert.equal(results, 1);
      assert.equal(runs, 1);
      assert.deepEqual(a.router.pending(), { outgoing: 0, incoming: 0 });
    } finally {
      if (!cClosed) await c.close();
    }
  });

  it('an instance that answers nothing (its NATS gone): the command is retried, never reported sent, and completes once the agent dials A', async (t) => {
    // NATS says "no responders" only when nobody at all listens on the subject: an orchestrator of
    // an older build elsewhere on this NATS server (its event hub listened on `kloudak.>`) hides it.
    const probe = await a.nats.request(`kloudak.internal.agent.${randomUUID()}`, '', { timeout: 1000 }).then(
      () => 'answered',
      (err: unknown) => ((err as { isNoResponders?: () => boolean }).isNoResponders?.() ? 'none' : 'silent'),
    );
    if (probe !== 'none') {
      t.skip('another process on this NATS server listens on kloudak.internal.>: "no responders" cannot be seen');
      return;
    }
    const c = await startOrchestrator(configWith({ ...h.config, port: 0, agentPort: 0, grpcPort: 0 }), createLogger({ component: 'orchestrator-c', level: 'silent' }), systemClock, START);
    try {
      const { hostId, agent } = await hostOn(c);
      // C still holds the session and its registration, but nobody listens on its subject.
      await c.nats.close();
      // The server drops C's subscription once it has handled the disconnect: until then a request
      // still reaches the closing connection (and times out as if C might have acted on it).
      const noResponders = async () =>
        a.nats.request(c.instance.subject, '', { timeout: 500 }).then(
          () => false,
          (err: unknown) => (err as { isNoResponders?: () => boolean }).isNoResponders?.() === true,
        );
      const until = Date.now() + 5000;
      while (!(await noResponders())) {
        assert.ok(Date.now() < until, "the NATS server still routes to C's subject 5 s after C closed");
        await new Promise((res) => setTimeout(res, 50));
      }
      const t0 = performance.now();
      const r = await within(a.agents.sendCommand(hostId, { action: { kind: 'getInventory' } }, { deadline: Date.now() + 1500 }), 5000, 'the deadline result');
      assert.equal(r.ok, false);
      assert.equal(r.error?.code, 'deadline_exceeded');
      assert.equal(r.notSent, true, `no responder: nobody received it (${JSON.stringify(r)})`);
      assert.ok(performance.now() - t0 >= 1400);
      assert.equal(agent.stats.commandsReceived, 0);
      const later = a.agents.sendCommand(hostId, { action: { kind: 'getInventory' } }, { deadline: Date.now() + DEADLINE_MS });
      await new Promise((res) => setTimeout(res, 300));
      agent.moveTo(a.agentUrl);
      const ok = await within(later, 8000, 'the result once the agent is on A');
      assert.equal(ok.ok, true, JSON.stringify(ok));
      assert.equal(agent.stats.commandsReceived, 1);
      assert.deepEqual(a.router.pending(), { outgoing: 0, incoming: 0 });
    } finally {
      await c.close();
    }
  });

  it('a routed request that is not JSON, or not a command, gets an error reply; the responder goes on', async () => {
    const ask = async (body: string) => (await a.nats.request(b.instance.subject, body, { timeout: 3000 })).json<{ kind: string; message?: string }>();
    const notJson = await ask('{not json');
    assert.equal(notJson.kind, 'error');
    assert.match(String(notJson.message), /not JSON/);
    const bad = await ask(JSON.stringify({ v: 1, hostId: 'nope', commandId: 'x', deadline: Date.now() + 1000, command: { action: { kind: 'formatDisk' } } }));
    assert.equal(bad.kind, 'error');
    assert.match(String(bad.message), /invalid routed command/);
    // Well formed, for a host B does not hold: "moved", nothing sent.
    const elsewhere = await ask(JSON.stringify({ v: 1, hostId: randomUUID(), commandId: randomUUID(), deadline: Date.now() + 1000, command: { action: { kind: 'getInventory' } } }));
    assert.deepEqual(elsewhere, { v: 1, kind: 'moved', written: false });
    const { hostId } = await hostOn(b);
    const r = await a.agents.sendCommand(hostId, { action: { kind: 'getInventory' } }, { deadline: Date.now() + DEADLINE_MS });
    assert.equal(r.ok, true);
  });

  it('with NATS down, a command for a host held by B waits for a session on A (notSent at its deadline), and completes once the agent dials A', async () => {
    const { hostId, agent } = await hostOn(b);
    const nc = await connect({ servers: TEST_NATS_URL });
    await nc.close();
    // A's channel and directory, with a NATS connection that is down for good.
    const router = new CommandRouter({ local: a.agentLink.channel, directory: a.agentLink.directory, instance: a.instance, nc, clock: systemClock, log: createLogger({ component: 'test', level: 'silent' }) });
    const t0 = performance.now();
    const r = await within(router.sendCommand(hostId, { action: { kind: 'getInventory' } }, { deadline: Date.now() + 800 }), 5000, 'the deadline result');
    assert.equal(r.ok, false);
    assert.equal(r.error?.code, 'deadline_exceeded');
    assert.equal(r.notSent, true, 'never reached any session');
    assert.ok(performance.now() - t0 >= 700);
    assert.equal(agent.stats.commandsReceived, 0);
    const later = router.sendCommand(hostId, { action: { kind: 'getInventory' } }, { deadline: Date.now() + DEADLINE_MS });
    agent.moveTo(a.agentUrl);
    const ok = await within(later, 8000, 'the result once the agent is on A');
    assert.equal(ok.ok, true, JSON.stringify(ok));
    assert.equal(agent.stats.commandsReceived, 1);
    await router.close();
  });

  it('a VM created through A\'s REST API (A\'s task engine) on a host whose agent is on B is running', async () => {
    const running = new Set<string>();
    // A world of its own: its area's only connected host is this one.
    const w2 = await createWorld(a.db.client);
    const sim = await connectSimHost({ ...h, orch: b }, w2.area.id, w2.pool.name, uniq('api'), {
      onCommand: (c) => {
        if (c.action?.$case === 'createVm') running.add(c.vmId);
        if (c.action?.$case === 'getInventory') {
          const domains = [...running].map((id) => ({ name: `kloudak-${id}`, uuid: id, vmId: id, state: pb.DomainState.DOMAIN_STATE_RUNNING, vcpus: 1, memoryBytes: 1n }));
          return { ok: true, payload: { $case: 'inventory', inventory: { domains, volumes: [], ovsPorts: [] } } };
        }
        return { ok: true };
      },
    });
    agents.push(sim.agent);
    await waitFor(async () => a.agentLink.directory.holder(sim.hostId)?.instanceId === b.instance.id, 5000, 'A knows B holds it');
    // Only A's engine runs tasks: the command must cross to B.
    await b.tasks.close();
    const t0 = performance.now();
    const r = await h.admin.client.post(`/api/v1/workspaces/${w2.workspace.name}/vms`, { name: uniq('vm'), template: w2.template.name, networks: [w2.network.name], ha: false });
    assert.equal(r.status, 202, JSON.stringify(r.body));
    const taskId = r.body.task.id as string;
    let t: Record<string, unknown> = {};
    await waitFor(async () => {
      t = (await h.admin.client.get(`/api/v1/workspaces/${w2.workspace.name}/tasks/${taskId}`)).body as Record<string, unknown>;
      return ['succeeded', 'failed', 'rolled_back'].includes(String(t['state']));
    }, 15_000, 'the task ends');
    console.log(`# VM create through A, agent on B: task ${String(t['state'])} after ${(performance.now() - t0).toFixed(0)} ms`);
    assert.equal(t['state'], 'succeeded', JSON.stringify(t));
    const vm = await a.db.client.vm.findFirstOrThrow({ where: { workspaceId: w2.workspace.id, name: r.body.vm.name as string } });
    assert.equal(vm.state, 'running');
    assert.equal(vm.hostId, sim.hostId);
    assert.ok(running.has(vm.id), 'the agent on B created it');
  });
});
