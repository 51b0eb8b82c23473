// Several orchestrators on one PostgreSQL and one NATS (real gRPC, simulated agents): each host's
// liveness is judged by the instance that holds its session; sessions move between instances
// without anyone marking the host down; a killed leader (a real process, SIGKILL) is replaced
// within seconds, and a host whose owner died with it is marked down only after lease + margin.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createLogger } from '@kloudak/common';
import { freePort, freshDatabase, TEST_NATS_URL, waitFor, type FreshDatabase } from '@kloudak/testkit';
import { systemClock } from '../clock.js';
import { configWith, type OrchestratorConfig } from '../config.js';
import { startOrchestrator, type Orchestrator } from '../server.js';
import { leaderOf } from '../store/instances.js';
import { Client, startHarness, type Harness } from '../testing/harness.js';
import { enrollSimAgent, SimAgent, type SimIdentity } from '../agent-api/testing/sim-agent.js';

/** Short timings, so several leases pass in seconds. */
const T = { heartbeatIntervalMs: 100, agentLeaseMs: 800, agentDownMarginMs: 400, instanceTtlMs: 1200, leaderTtlMs: 1000 };
const START = { livenessTickMs: 25, sweepMs: 50, directoryRefreshMs: 200 };
const LEASE_AND_MARGIN = T.agentLeaseMs + T.agentDownMarginMs;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

let n = 0;
const uniq = (p: string) => `${p}-${++n}-${process.pid % 10_000}`;

/** The state changes of a host, as the outbox holds them ("from>to"). */
async function stateEvents(o: Orchestrator, hostId: string): Promise<string[]> {
  const rows = await o.db.client.outboxEvent.findMany({ where: { subject: 'kloudak.infra.host.state', entityId: hostId }, orderBy: { seq: 'asc' } });
  return rows.map((e) => `${String((e.payload as Record<string, unknown>)['from'])}>${String(e.state)}`);
}

async function hostRow(o: Orchestrator, hostId: string) {
  return o.db.client.host.findUniqueOrThrow({ where: { id: hostId } });
}

/** Enroll a simulated host through `h`'s API. */
async function enroll(h: Harness, areaId: string, agentPort: number): Promise<SimIdentity> {
  const t = await h.admin.client.post('/api/v1/hosts/join-tokens', { area: areaId, expiresIn: 600 });
  assert.equal(t.status, 201);
  return enrollSimAgent({ address: `127.0.0.1:${agentPort}`, joinToken: t.body.token as string, hostName: uniq('multi') });
}

/** Connect `id` to the orchestrator on `agentPort`, and wait until instance `instanceId` owns its session. */
async function connect(o: Orchestrator, id: SimIdentity, agentPort: number, instanceId: string, opts: { reconnect?: boolean } = {}): Promise<SimAgent> {
  const agent = new SimAgent({ address: `127.0.0.1:${agentPort}`, identity: id, reconnect: opts.reconnect ?? false });
  await agent.start();
  await waitFor(async () => {
    const r = await hostRow(o, id.hostId);
    return r.state === 'up' && r.sessionOpen && r.ownerInstanceId === instanceId;
  }, 5000, `${id.hostId} owned by ${instanceId}`);
  return agent;
}

describe('several orchestrators on one database and NATS (postgres)', () => {
  let h: Harness;
  let a: Orchestrator;
  let b: Orchestrator;
  let areaId: string;
  const agents: SimAgent[] = [];

  before(async () => {
    h = await startHarness('postgres', T, systemClock, START);
    a = h.orch;
    // A second instance of the same deployment: same database, data directory (CA, keys) and NATS.
    b = await startOrchestrator(configWith({ ...h.config, port: 0, agentPort: 0, grpcPort: 0 }), createLogger({ component: 'orchestrator-b', level: 'silent' }), systemClock, START);
    const r = await h.admin.client.post('/api/v1/areas', { name: uniq('area'), subnet: '10.231.0.0/24', gateway: '10.231.0.1', vlanRange: '100-199' });
    assert.equal(r.status, 201, JSON.stringify(r.body));
    areaId = r.body.id as string;
    await waitFor(async () => a.leader.isLeader() || b.leader.isLeader(), 5000, 'a leader');
  });
  after(async () => {
    for (const ag of agents) await ag.stop();
    await b?.close();
    await h?.close();
  });

  it('exactly one instance leads', () => {
    assert.equal([a, b].filter((o) => o.leader.isLeader()).length, 1);
    assert.notEqual(a.instance.id, b.instance.id);
  });

  it('(a) hosts connected to either instance are never marked down or suspect by the other over several lease lengths; both show them connected', async () => {
    const onA = await enroll(h, areaId, a.agentPort);
    const onB = await enroll(h, areaId, a.agentPort);
    agents.push(await connect(a, onA, a.agentPort, a.instance.id), await connect(a, onB, b.agentPort, b.instance.id));
    await sleep(5 * LEASE_AND_MARGIN);
    for (const id of [onA, onB]) {
      assert.deepEqual(await stateEvents(a, id.hostId), ['unknown>up'], 'up once, nothing since');
      assert.equal((await hostRow(a, id.hostId)).state, 'up');
      for (const o of [a, b]) {
        const viaO = await new Client(o.url, h.admin.token).get(`/api/v1/hosts/${id.hostId}`);
        assert.equal(viaO.body.connected, true, `GET /hosts/{id} on ${o === a ? 'A' : 'B'} says connected`);
        assert.equal(o.agentLink.status(id.hostId).connected, true, 'the link (placement) knows it is connected somewhere');
      }
    }
  });

  it('(b) a session that moves from A to B (the agent reconnects to B) is never marked down', async () => {
    const id = await enroll(h, areaId, a.agentPort);
    const first = await connect(a, id, a.agentPort, a.instance.id);
    await sleep(300);
    await first.stop();
    const second = await connect(b, id, b.agentPort, b.instance.id);
    agents.push(second);
    await sleep(4 * LEASE_AND_MARGIN);
    const ev = await stateEvents(a, id.hostId);
    assert.ok(!ev.some((e) => e.endsWith('>down')), `no down: ${ev.join(', ')}`);
    assert.equal((await hostRow(a, id.hostId)).state, 'up');
    assert.equal((await hostRow(a, id.hostId)).ownerInstanceId, b.instance.id);
    assert.equal(a.agentLink.status(id.hostId).connected, true, 'A knows it is connected on B');
  });

  it('(b) a newer session on B ends the older one still open on A, and the host stays up', async () => {
    const id = await enroll(h, areaId, a.agentPort);
    const old = await connect(a, id, a.agentPort, a.instance.id);
    let ended: string | null = null;
    old.on('end', (st: { details: string }) => (ended = st.details));
    const newer = await connect(b, id, b.agentPort, b.instance.id);
    agents.push(newer, old);
    await waitFor(async () => ended !== null, 5000, 'the older session on A ended');
    assert.match(String(ended), /replaced by a newer session/);
    await sleep(3 * LEASE_AND_MARGIN);
    assert.ok(!(await stateEvents(a, id.hostId)).some((e) => e.endsWith('>down')));
    assert.equal((await hostRow(a, id.hostId)).ownerInstanceId, b.instance.id);
  });

  it('(b) a third instance that reads the database only once a minute learns at once, from NATS, that a session opened and closed on B', async () => {
    const c = await startOrchestrator(configWith({ ...h.config, port: 0, agentPort: 0, grpcPort: 0 }), createLogger({ component: 'orchestrator-c', level: 'silent' }), systemClock, {
      ...START,
      directoryRefreshMs: 60_000,
    });
    try {
      const id = await enroll(h, areaId, a.agentPort);
      const agent = await connect(b, id, b.agentPort, b.instance.id);
      let t0 = performance.now();
      await waitFor(async () => c.agentLink.status(id.hostId).connected, 1000, 'C knows the session on B');
      const openedMs = performance.now() - t0;
      t0 = performance.now();
      await agent.stop();
      await waitFor(async () => !c.agentLink.status(id.hostId).connected, 1000, 'C knows the session on B closed');
      const closedMs = performance.now() - t0;
      console.log(`# C learned the session opened ${openedMs.toFixed(0)} ms after B held it, closed ${closedMs.toFixed(0)} ms after the agent left`);
    } finally {
      await c.close();
    }
  });

  it('(e) deleting a host through A ends its session held by B, and it cannot come back', async () => {
    const id = await enroll(h, areaId, a.agentPort);
    const agent = await connect(b, id, b.agentPort, b.instance.id);
    agents.push(agent);
    let ended: { code: number; details: string } | null = null;
    agent.on('end', (st: { code: number; details: string }) => (ended ??= st));
    const t0 = performance.now();
    const del = await new Client(a.url, h.admin.token).del(`/api/v1/hosts/${id.hostId}`);
    assert.equal(del.status, 204, JSON.stringify(del.body));
    await waitFor(async () => ended !== null, 5000, 'the session on B ended');
    console.log(`# delete through A ended the session on B after ${(performance.now() - t0).toFixed(0)} ms`);
    assert.equal(ended!.code, 7, 'PERMISSION_DENIED');
    assert.equal(b.agentLink.status(id.hostId).connected, false);
    await assert.rejects(new SimAgent({ address: `127.0.0.1:${b.agentPort}`, identity: id, reconnect: false }).start(), /PERMISSION_DENIED|not \(or no longer\) enrolled/);
  });
});

const ORCHESTRATOR_MAIN = fileURLToPath(new URL('../main.js', import.meta.url));

describe('a killed leader (SIGKILL) on postgres', () => {
  let fresh: FreshDatabase;
  let dataDir: string;
  let child: ChildProcess | undefined;
  let out = '';
  let b: Orchestrator | undefined;
  let config: OrchestratorConfig;

  before(async () => {
    fresh = await freshDatabase();
    dataDir = mkdtempSync(join(tmpdir(), 'kloudak-multi-'));
    const port = await freePort();
    // The leader-to-be: a real process, started first.
    child = spawn(process.execPath, [ORCHESTRATOR_MAIN, 'serve'], {
      env: {
        PATH: process.env['PATH'] ?? '',
        KLOUDAK_HOST: '127.0.0.1',
        KLOUDAK_PORT: String(port),
        KLOUDAK_GRPC_PORT: '0',
        KLOUDAK_AGENT_PORT: '0',
        KLOUDAK_AGENT_HOST: '127.0.0.1',
        KLOUDAK_DATA_DIR: dataDir,
        DATABASE_URL: fresh.url,
        NATS_URL: TEST_NATS_URL,
        KLOUDAK_ADMIN_USER: 'root-admin',
        KLOUDAK_ADMIN_PASSWORD: 'Admin-Passw0rd-Test',
        KLOUDAK_PASSWORD_HASH_COST: '12',
        KLOUDAK_LOG_LEVEL: 'warn',
        KLOUDAK_HEARTBEAT_INTERVAL_MS: String(T.heartbeatIntervalMs),
        KLOUDAK_AGENT_LEASE_MS: String(T.agentLeaseMs),
        KLOUDAK_AGENT_DOWN_MARGIN_MS: String(T.agentDownMarginMs),
        KLOUDAK_INSTANCE_TTL_MS: String(T.instanceTtlMs),
        KLOUDAK_LEADER_TTL_MS: String(T.leaderTtlMs),
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    child.stdout?.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr?.on('data', (d: Buffer) => (out += d.toString()));
    await waitFor(async () => /agents: 127\.0\.0\.1:\d+/.test(out) && (await fetch(`http://127.0.0.1:${port}/readyz`).catch(() => null))?.status === 200, 60_000, `the orchestrator process:\n${out}`);
    config = configWith({
      ...T,
      port: 0,
      agentPort: 0,
      grpcPort: 0,
      agentHost: '127.0.0.1',
      dataDir,
      databaseUrl: fresh.url,
      natsUrl: TEST_NATS_URL,
      logLevel: 'silent',
      passwordHashCost: 12,
    });
  });
  after(async () => {
    child?.kill('SIGKILL');
    await b?.close();
    await fresh?.drop();
    rmSync(dataDir, { recursive: true, force: true });
  });

  it('(d) the other instance leads within seconds; the dead leader\'s host (agent gone too) is down only after lease + margin', async () => {
    const url = `http://127.0.0.1:${/Kloudak is up: http:\/\/127\.0\.0\.1:(\d+)/.exec(out)?.[1] ?? ''}`;
    const agentPort = Number(/agents: 127\.0\.0\.1:(\d+)/.exec(out)?.[1]);
    b = await startOrchestrator(config, createLogger({ component: 'orchestrator-b', level: 'silent' }), systemClock, START);
    const leader = await leaderOf(b.db.client, 'orchestrator');
    assert.ok(leader && leader.instanceId !== b.instance.id, 'the process started first leads');
    assert.ok(!b.leader.isLeader());
    // A host on the leader process.
    const anon = new Client(url);
    const login = await anon.post('/api/v1/auth/login', { username: 'root-admin', password: 'Admin-Passw0rd-Test' });
    const admin = new Client(url, login.body.token as string);
    const area = await admin.post('/api/v1/areas', { name: 'killed', subnet: '10.232.0.0/24', gateway: '10.232.0.1', vlanRange: '100-199' });
    assert.equal(area.status, 201);
    const tok = await admin.post('/api/v1/hosts/join-tokens', { area: area.body.id, expiresIn: 600 });
    const id = await enrollSimAgent({ address: `127.0.0.1:${agentPort}`, joinToken: tok.body.token as string, hostName: 'on-the-leader' });
    const agent = new SimAgent({ address: `127.0.0.1:${agentPort}`, identity: id, reconnect: false });
    await agent.start();
    await waitFor(async () => (await hostRow(b!, id.hostId)).state === 'up' && (await hostRow(b!, id.hostId)).ownerInstanceId === leader.instanceId, 5000, 'host up on the leader');
    await sleep(300);

    // Kill the leader: no shutdown at all. The agent goes with it (it never reconnects).
    const killedAt = performance.now();
    child!.kill('SIGKILL');
    await agent.stop();
    await waitFor(async () => b!.leader.isLeader(), 10_000, 'the other instance leads');
    const handover = performance.now() - killedAt;
    let downAt = 0;
    await waitFor(async () => {
      const s = (await hostRow(b!, id.hostId)).state;
      if (s === 'down' && downAt === 0) downAt = performance.now();
      return s === 'down';
    }, 15_000, 'the orphaned host down');
    const down = downAt - killedAt;
    console.log(`# leader handover after SIGKILL: ${handover.toFixed(0)} ms (leader TTL ${T.leaderTtlMs} ms); orphan down after ${down.toFixed(0)} ms (instance TTL ${T.instanceTtlMs} + lease ${T.agentLeaseMs} + margin ${T.agentDownMarginMs} ms)`);
    assert.ok(handover < T.leaderTtlMs + 2000, `handover took ${handover} ms`);
    assert.ok(down >= LEASE_AND_MARGIN, `down after ${down} ms, before lease + margin had passed since the last possible grant`);
    assert.ok(down <= T.instanceTtlMs + LEASE_AND_MARGIN + 2000, `down after ${down} ms`);
    assert.deepEqual(await stateEvents(b, id.hostId), ['unknown>up', 'up>down']);
  });
});
