// The agent link under a fake clock: liveness transitions at their exact instants (written to
// PostgreSQL and PGlite, published to an in-memory bus: this file covers the timing, link.test.ts covers NATS),
// and usage downsampling into minute rows.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createLogger } from '@kloudak/common';
import { openDatabase, type Database } from '@kloudak/prisma';
import { freshDatabase, waitFor, type FreshDatabase } from '@kloudak/testkit';
import { writeLastHeartbeats } from '../store/agent-hosts.js';
import { createJoinToken } from '../store/join-tokens.js';
import { CertificateAuthority } from './ca.js';
import { AgentLink } from './link.js';
import { upsertUsage, UsageRecorder } from './usage.js';
import { enrollSimAgent, SimAgent, type SimIdentity } from './testing/sim-agent.js';

for (const engine of ['postgres', 'pglite'] as const) describe(`agent link with a fake clock on ${engine}`, () => {
  let fresh: FreshDatabase | undefined;
  let db: Database;
  let dir: string;
  let link: AgentLink;
  let now = Date.now();
  const clock = { now: () => now };
  const log = createLogger({ component: 'test', level: 'silent' });
  let id: SimIdentity;
  let agent: SimAgent;

  before(async () => {
    if (engine === 'postgres') fresh = await freshDatabase();
    db = await openDatabase(fresh ? { url: fresh.url } : { inMemory: true });
    await db.migrate();
    dir = mkdtempSync(join(tmpdir(), 'kloudak-clock-'));
    const ca = await CertificateAuthority.open({ dataDir: dir, extraNames: [], clock, log });
    // The timer tick is an hour: only the test's explicit tick() moves liveness.
    link = await AgentLink.start({ db, ca, clock, log }, { host: '127.0.0.1', port: 0, heartbeatIntervalMs: 1000, leaseMs: 15_000, downMarginMs: 5000, tickMs: 3600_000 });
    const area = await db.client.area.create({ data: { name: 'a1', subnet: '10.77.0.0/24', gateway: '10.77.0.1', vlanFirst: 100, vlanLast: 199 } });
    const { token } = await createJoinToken(db.client, { areaId: area.id, expiresAt: new Date(now + 600_000), createdById: null, caFingerprint: ca.fingerprint });
    id = await enrollSimAgent({ address: `127.0.0.1:${link.port}`, joinToken: token, hostName: 'clocked' });
    // Heartbeats only when the test sends them.
    agent = new SimAgent({ address: `127.0.0.1:${link.port}`, identity: id, heartbeatMs: 3600_000, reconnect: false });
  });
  after(async () => {
    await agent?.stop();
    await link?.close(1000);
    await db?.close();
    await fresh?.drop();
    rmSync(dir, { recursive: true, force: true });
  });

  // The liveness changes as the outbox holds them (written in the transaction of each state change).
  const hostEvents = () => db.client.outboxEvent.findMany({ where: { subject: 'kloudak.infra.host.state', entityId: id.hostId }, orderBy: { seq: 'asc' } });
  const states = async () => (await hostEvents()).map((e) => `${String((e.payload as Record<string, unknown>)['from'])}>${String(e.state)}`);
  const dbState = async () => (await db.client.host.findUniqueOrThrow({ where: { id: id.hostId } })).state;
  async function beat(): Promise<void> {
    const before = agent.stats.leaseGrants;
    agent.heartbeat();
    await waitFor(async () => agent.stats.leaseGrants > before, 5000, 'a lease grant');
  }
  async function tick(): Promise<string[]> {
    const t = link.tick().map((x) => x.to);
    await link.settled();
    return t;
  }

  it('up on Hello; suspect after exactly 3 intervals; up on the next heartbeat; down exactly at last grant + lease + margin; up again with the next heartbeat', async () => {
    await agent.start();
    await link.settled();
    assert.deepEqual(await states(), ['unknown>up']);
    assert.equal(await dbState(), 'up');
    now += 2999;
    assert.deepEqual(await tick(), []);
    now += 1;
    assert.deepEqual(await tick(), ['suspect']);
    assert.equal(await dbState(), 'suspect');
    await beat();
    await link.settled();
    assert.deepEqual(await states(), ['unknown>up', 'up>suspect', 'suspect>up']);
    const lastGrant = now;
    now += 3000;
    assert.deepEqual(await tick(), ['suspect']);
    now = lastGrant + 15_000 + 5000 - 1;
    assert.deepEqual(await tick(), [], 'not down a millisecond before the lease surely ended');
    now += 1;
    assert.deepEqual(await tick(), ['down']);
    assert.equal(await dbState(), 'down');
    const row = await db.client.host.findUniqueOrThrow({ where: { id: id.hostId } });
    assert.equal(row.lastHeartbeatAt?.getTime(), lastGrant, 'the last heartbeat is written with the state');
    await beat();
    await link.settled();
    assert.deepEqual(await states(), ['unknown>up', 'up>suspect', 'suspect>up', 'up>suspect', 'suspect>down', 'down>up']);
    assert.equal(await dbState(), 'up');
    const ev = (await hostEvents()).at(-1);
    assert.deepEqual([ev?.entityId, (ev?.payload as Record<string, unknown>)['name'], (ev?.payload as Record<string, unknown>)['at']], [id.hostId, 'clocked', new Date(now).toISOString()]);
  });

  it('writes lastHeartbeatAt at most every 30 s, not once per heartbeat', async () => {
    const read = async () => (await db.client.host.findUniqueOrThrow({ where: { id: id.hostId } })).lastHeartbeatAt?.getTime();
    const start = await read();
    for (let i = 0; i < 5; i++) {
      now += 1000;
      await beat();
    }
    await link.settled();
    assert.equal(await read(), start, 'five heartbeats within 30 s: no write');
    now += 30_000;
    await beat();
    await link.settled();
    assert.equal(await read(), now);
  });

  it('downsamples usage into one row per host per minute, merging a minute written twice', async () => {
    const u = new UsageRecorder(db.client, clock, log);
    const minute = Math.floor(now / 60_000) * 60_000 + 60_000;
    const sample = (cpu: number, memGiB: number) => ({ cpuPercent: cpu, memoryUsedBytes: memGiB * 2 ** 30, memoryTotalBytes: 8 * 2 ** 30, diskUsedBytes: 2 ** 30, diskTotalBytes: 4 * 2 ** 30 });
    for (const [offset, cpu] of [[1000, 10], [20_000, 20], [59_999, 30]] as const) {
      now = minute + offset;
      u.record(id.hostId, sample(cpu, 2));
    }
    now = minute + 60_000 + 5;
    u.record(id.hostId, sample(50, 4)); // a new minute: the first one is written
    u.record(id.hostId, sample(70, 4));
    await u.flushDue(true); // shutdown: the open minute is written as it is
    now += 1000;
    u.record(id.hostId, sample(90, 4)); // same minute again, after the flush
    await u.flushDue(true);
    const rows = await db.client.hostUsageSample.findMany({ where: { hostId: id.hostId, at: { gte: new Date(minute) } }, orderBy: { at: 'asc' } });
    assert.deepEqual(
      rows.map((r) => [r.at.getTime() - minute, r.resolution, Math.round(r.cpuPct * 1000) / 1000, r.memUsedMb, r.memTotalMb, r.samples, r.diskUsedGb, r.diskTotalGb]),
      [
        [0, 60, 20, 2048, 8192, 3, 1, 4],
        [60_000, 60, 70, 4096, 8192, 3, 1, 4],
      ],
    );
    assert.equal(u.latest(id.hostId)?.cpuPercent, 90);
    // A deleted host's late bucket is dropped, not an error.
    u.record('00000000-0000-4000-8000-000000000000', sample(1, 1));
    await u.flushDue(true);
  });

  it('writes the usage rows and heartbeat times of many hosts in one batch, merging repeats, skipping deleted hosts, never moving a time back', async () => {
    const areaId = (await db.client.host.findUniqueOrThrow({ where: { id: id.hostId } })).areaId;
    const hosts = await Promise.all([1, 2, 3].map((i) => db.client.host.create({ data: { name: `batch-${i}`, areaId } })));
    const [h1, h2, h3] = hosts.map((h) => h.id) as [string, string, string];
    const at = new Date(Math.floor(now / 60_000) * 60_000 + 10 * 60_000);
    const row = (hostId: string, cpuPct: number, samples: number) => ({ hostId, at, cpuPct, memUsedMb: 100 * samples, memTotalMb: 1000, diskUsedGb: 1, diskTotalGb: 2, samples });
    await upsertUsage(db.client, [row(h1, 10, 1), row(h2, 20, 2), row(h1, 40, 3), row('00000000-0000-4000-8000-000000000001', 5, 1), row(h3, 30, 1)]);
    const got = await db.client.hostUsageSample.findMany({ where: { at }, orderBy: { cpuPct: 'asc' } });
    assert.deepEqual(
      got.map((r) => [r.hostId, r.cpuPct, r.samples, r.memUsedMb]),
      [
        [h2, 20, 2, 200],
        [h3, 30, 1, 100],
        [h1, 32.5, 4, 250], // (10×1 + 40×3) / 4; memory (100×1 + 300×3) / 4
      ],
    );

    const t = new Date(now + 90_000);
    await db.client.host.update({ where: { id: h1 }, data: { lastHeartbeatAt: t } });
    await writeLastHeartbeats(db.client, [
      { hostId: h1, at: new Date(t.getTime() - 5000) },
      { hostId: h2, at: new Date(t.getTime() + 1) },
      { hostId: '00000000-0000-4000-8000-000000000002', at: t },
    ]);
    const beats = Object.fromEntries((await db.client.host.findMany({ where: { id: { in: [h1, h2, h3] } } })).map((h) => [h.id, h.lastHeartbeatAt?.getTime() ?? null]));
    assert.deepEqual(beats, { [h1]: t.getTime(), [h2]: t.getTime() + 1, [h3]: null });
    await db.client.hostUsageSample.deleteMany({ where: { hostId: { in: [h1, h2, h3] } } });
    await db.client.host.deleteMany({ where: { id: { in: [h1, h2, h3] } } });
  });
});
