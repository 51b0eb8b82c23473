// A host state write that fails is written again. The orchestrator's database (a private
// PostgreSQL server) stops right after a host was written `suspect`; the host heartbeats again
// while it is down, so the `suspect → up` write fails. Liveness in memory is `up` already and the
// next heartbeats make no transition: without a retry the row would say `suspect` for as long as
// the host stays healthy (seen with two orchestrators and 1,000 hosts, whose writes timed out).
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startPrivatePostgres, waitFor, type PrivatePostgres } from '@kloudak/testkit';
import { connectSimHost, startHarness, type Harness } from '../testing/harness.js';
import { freshArea, uniq } from '../testing/fixtures.js';
import type { SimAgent } from './testing/sim-agent.js';

describe('host state writes that fail are written again', () => {
  let pg: PrivatePostgres;
  let h: Harness;
  let agent: SimAgent | undefined;
  let beating: NodeJS.Timeout | undefined;
  /** The orchestrator's log lines. */
  const logs: Record<string, unknown>[] = [];
  const sink = { write: (line: string) => void logs.push(JSON.parse(line) as Record<string, unknown>) };

  before(async () => {
    pg = await startPrivatePostgres();
    // Suspect after 3 s of silence: longer than pg_ctl start blocks this process's event loop
    // (the orchestrator runs in it), so no transition of its own rewrites the row meanwhile.
    // A lease far longer than the test, and a registration that outlives the outage: the host
    // is never down and the instance keeps granting; only the state write is at stake.
    h = await startHarness('postgres', { databaseUrl: pg.url, heartbeatIntervalMs: 1000, agentLeaseMs: 60_000, agentDownMarginMs: 1000, instanceTtlMs: 120_000, logLevel: 'info' }, undefined, {
      logDestination: sink,
    });
  });
  after(async () => {
    clearInterval(beating);
    await agent?.stop();
    await h?.close();
    pg?.stop();
  });

  it('writes `up` once the database is back, after the `suspect → up` write failed', async () => {
    const area = await freshArea(h.orch.db.client);
    // Heartbeats only when the test sends them.
    const c = await connectSimHost(h, area.id, uniq('pool'), uniq('resync'), { heartbeatMs: 3_600_000 });
    agent = c.agent;
    const state = async () => (await h.orch.db.client.host.findUniqueOrThrow({ where: { id: c.hostId } })).state;
    await waitFor(async () => (await state()) === 'suspect', 10_000, 'the silent host written suspect');

    pg.halt();
    agent.heartbeat();
    beating = setInterval(() => agent?.heartbeat(), 200);
    await waitFor(async () => h.orch.agentLink.liveness.state(c.hostId) === 'up', 5_000, 'up in memory');
    // Long enough for the write (and its first retries) to fail against the stopped server.
    await new Promise((r) => setTimeout(r, 1500));

    const failed = () => logs.filter((l) => l['host_id'] === c.hostId && String(l['msg']).startsWith('host state not written'));
    assert.ok(failed().length >= 1, `the write failed while the database was down: ${JSON.stringify(logs.filter((l) => l['host_id'] === c.hostId).map((l) => l['msg']))}`);
    pg.start();
    await waitFor(async () => {
      try {
        return (await state()) === 'up';
      } catch {
        return false; // the pool reconnects
      }
    }, 30_000, 'the row says up again while the host heartbeats');
    const events = await h.orch.db.client.outboxEvent.findMany({ where: { subject: 'kloudak.infra.host.state', entityId: c.hostId }, orderBy: { seq: 'asc' } });
    assert.deepEqual(
      events.map((e) => e.state),
      ['up', 'suspect', 'up'],
      'one event per change written, none for the failed attempts',
    );
  });
});
