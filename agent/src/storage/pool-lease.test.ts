// Pool lease files: the keeper's rounds on a real directory (two keepers sharing it, fake clocks),
// the parser's refusals, and two real agents (simulated hosts through libvirtd) whose pools are one
// directory, against the in-test orchestrator: each reports the other's renewals, its fence
// (while cut off from the orchestrator, the files keep being renewed), and a stopped agent's file
// standing still.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ensureLibvirtd } from '@kloudak/libvirt/testing';
import type * as pb from '@kloudak/proto/agent';
import { pino } from 'pino';
import { loadAgentConfig } from '../config.js';
import { startAgent, type AgentHandle } from '../daemon.js';
import { makeJoinToken, makeTestCa, TestOrchestrator, type TestCa } from '../link/test-orchestrator.js';
import { ensureOvs } from '../testing/ovs-service.js';
import { createSimHost } from '../testing/sim-host.js';
import { LEASE_DIR, parseLeaseFile, PoolLeaseKeeper, type LeaseFile } from './pool-lease.js';

const log = pino({ level: process.env['KLOUDAK_TEST_LOG'] ?? 'silent' });

describe('PoolLeaseKeeper on a real directory', () => {
  let dir: string;
  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'kpl-'));
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  function keeper(hostId: string, pools: string[], clock: { wall: number; mono: number }, remaining: () => number | null = () => 5000) {
    return new PoolLeaseKeeper({
      hostId,
      pools: () => Promise.resolve(pools.map((p) => ({ name: 'shared', path: p }))),
      leaseRemainingMs: remaining,
      log,
      clock: { wallNow: () => clock.wall, now: () => clock.mono },
    });
  }

  it('writes its file atomically, reads the peers, counts how long a sequence stands still, and sees renewals and fences', async () => {
    const pool = join(dir, 'p1');
    mkdirSync(pool);
    const clock = { wall: Date.parse('2026-12-05T06:00:00Z'), mono: 1000 };
    let remainingA: number | null = 5000;
    const a = keeper('host-a', [pool], clock, () => remainingA);
    const b = keeper('host-b', [pool], clock);

    await a.renew();
    const fileA = JSON.parse(readFileSync(join(pool, LEASE_DIR, 'host-a.json'), 'utf8')) as LeaseFile;
    assert.deepEqual(fileA, { v: 1, hostId: 'host-a', sequence: 1, writtenAt: '2026-12-05T06:00:00.000Z', validUntil: '2026-12-05T06:00:05.000Z', fenced: false });
    assert.deepEqual(readdirSync(join(pool, LEASE_DIR)), ['host-a.json'], 'no temporary file left');
    assert.deepEqual(a.peerLeases(), [], 'its own file is no peer');

    await b.renew();
    let seen = b.peerLeases();
    assert.equal(seen.length, 1);
    assert.equal(seen[0]!.hostId, 'host-a');
    assert.equal(seen[0]!.poolName, 'shared');
    assert.equal(seen[0]!.sequence, 1);
    assert.equal(seen[0]!.renewalSeen, false, 'one reading shows no renewal');
    assert.equal(seen[0]!.validUntil.toISOString(), '2026-12-05T06:00:05.000Z');

    // A stands still for 3 s: B's count grows, still without a renewal seen.
    clock.mono += 3000;
    await b.renew();
    seen = b.peerLeases();
    assert.equal(seen[0]!.unchangedForMs, 3000);
    assert.equal(seen[0]!.renewalSeen, false);

    // A renews: B sees the change, and the count starts again.
    await a.renew();
    clock.mono += 500;
    await b.renew();
    seen = b.peerLeases();
    assert.equal(seen[0]!.sequence, 2);
    assert.equal(seen[0]!.renewalSeen, true);
    assert.equal(seen[0]!.unchangedForMs, 0);
    clock.mono += 700;
    assert.equal(b.peerLeases()[0]!.unchangedForMs, 700, 'the count is as of now');

    // A fences itself (no lease left): its file says so at once, and B reads it.
    remainingA = -10;
    const fencedAt = new Date(clock.wall);
    await a.markFenced(fencedAt);
    await b.renew();
    seen = b.peerLeases();
    assert.equal(seen[0]!.fenced, true);
    assert.equal(seen[0]!.fencedAt?.toISOString(), fencedAt.toISOString());
    assert.equal(seen[0]!.validUntil.toISOString(), new Date(clock.wall).toISOString(), 'no lease: valid until the write');

    // A lease again: no longer fenced, the fence time stays as history.
    remainingA = 4000;
    await a.renew();
    await b.renew();
    seen = b.peerLeases();
    assert.equal(seen[0]!.fenced, false);
    assert.equal(seen[0]!.fencedAt?.toISOString(), fencedAt.toISOString());

    // A's file removed (host deleted by an operator): no longer reported.
    rmSync(join(pool, LEASE_DIR, 'host-a.json'));
    await b.renew();
    assert.deepEqual(b.peerLeases(), []);
  });

  it('never makes a missing pool directory, and skips files that are not lease files', async () => {
    const missing = join(dir, 'not-mounted');
    const pool = join(dir, 'p2');
    mkdirSync(join(pool, LEASE_DIR), { recursive: true });
    const clock = { wall: Date.now(), mono: 0 };
    const k = keeper('host-c', [missing, pool], clock);
    const leases = join(pool, LEASE_DIR);
    const good: LeaseFile = { v: 1, hostId: 'host-d', sequence: 4, writtenAt: new Date().toISOString(), validUntil: new Date().toISOString(), fenced: false };
    writeFileSync(join(leases, 'host-d.json'), JSON.stringify(good));
    writeFileSync(join(leases, 'host-e.json'), JSON.stringify({ ...good, hostId: 'host-d' })); // names another host
    writeFileSync(join(leases, 'host-f.json'), JSON.stringify({ ...good, hostId: 'host-f', sequence: -1 }));
    writeFileSync(join(leases, 'host-g.json'), JSON.stringify({ ...good, hostId: 'host-g', pad: 'x'.repeat(5000) })); // too big
    writeFileSync(join(leases, 'host-h.json'), 'not json');
    writeFileSync(join(leases, 'README'), 'x');
    mkdirSync(join(leases, 'host-i.json'));
    symlinkSync('/etc/hostname', join(leases, 'host-j.json'));
    await k.renew();
    assert.equal(existsSync(missing), false, 'the missing pool directory was not made');
    assert.deepEqual(
      k.peerLeases().map((o) => o.hostId),
      ['host-d'],
    );
    assert.ok(existsSync(join(leases, 'host-c.json')));
  });

  it('parseLeaseFile: only version 1 with sane fields, for the host the file is named after', () => {
    const good = { v: 1, hostId: 'h', sequence: 1, writtenAt: '2026-12-05T06:00:00Z', validUntil: '2026-12-05T06:00:05Z', fenced: true, fencedAt: '2026-12-05T05:59:00Z' };
    assert.equal(parseLeaseFile(JSON.stringify(good), 'h')?.fencedAt?.toISOString(), '2026-12-05T05:59:00.000Z');
    for (const bad of [{ ...good, v: 2 }, { ...good, sequence: 1.5 }, { ...good, writtenAt: 'yesterday' }, { ...good, fenced: 'no' }, { ...good, fencedAt: 12 }, [good], null]) {
      assert.equal(parseLeaseFile(JSON.stringify(bad), 'h'), null, JSON.stringify(bad));
    }
    assert.equal(parseLeaseFile(JSON.stringify(good), 'other'), null);
  });

  it('a round still running is not doubled, and stop() ends the rounds', async () => {
    let calls = 0;
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const k = new PoolLeaseKeeper({
      hostId: 'host-k',
      pools: async () => {
        calls++;
        await gate; // a hung shared filesystem
        return [];
      },
      leaseRemainingMs: () => null,
      log,
    });
    const r1 = k.renew();
    const r2 = k.renew();
    assert.equal(r1, r2);
    release();
    await r1;
    assert.equal(calls, 1);
    await k.stop();
    await k.renew();
    assert.equal(calls, 1, 'no round after stop');
  });
});

describe('two agents on one shared pool directory (simulated hosts, in-test orchestrator)', { timeout: 120_000 }, () => {
  const LEASE_MS = 1200;
  let dir: string;
  let ca: TestCa;
  let orch: TestOrchestrator;
  const agents: AgentHandle[] = [];

  before(async () => {
    await ensureLibvirtd();
    await ensureOvs();
    dir = mkdtempSync(join(tmpdir(), 'kpl2-'));
    writeFileSync(join(dir, 'none.yaml'), '# empty\n');
    ca = await makeTestCa();
    orch = new TestOrchestrator({ ca, heartbeatIntervalMs: 150, leaseMs: LEASE_MS });
    await orch.start();
  });
  after(async () => {
    for (const a of agents) await a.stop().catch(() => undefined);
    await orch?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  async function start(name: string, shared: string): Promise<AgentHandle> {
    mkdirSync(join(dir, name), { recursive: true });
    const sim = createSimHost({ dir: join(dir, name), poolName: 'shared', poolPath: shared });
    const token = makeJoinToken(ca.caFingerprint);
    orch.tokens.add(token);
    const env: NodeJS.ProcessEnv = {
      KLOUDAK_AGENT_CONFIG: join(dir, 'none.yaml'),
      KLOUDAK_AGENT_ORCHESTRATOR: orch.address,
      KLOUDAK_AGENT_DATA_DIR: join(dir, name, 'data'),
      KLOUDAK_AGENT_HOSTNAME: name,
      KLOUDAK_AGENT_JOIN_TOKEN: token,
      KLOUDAK_AGENT_LIBVIRT_URI: sim.uri,
      KLOUDAK_AGENT_DOMAIN_TYPE: 'qemu',
      KLOUDAK_AGENT_OVS_DATAPATH: 'netdev',
      KLOUDAK_AGENT_CONSOLE_DIR: join(dir, name, 'console'),
      KLOUDAK_AGENT_HEARTBEAT_MS: '150',
      KLOUDAK_AGENT_FENCE_LEASE_MS: String(LEASE_MS),
      KLOUDAK_AGENT_DRAIN_TIMEOUT_MS: '1000',
    };
    const agent = await startAgent(loadAgentConfig({ env, argv: [] }), { log, backoff: { initialMs: 100, maxMs: 500 }, fenceRetryMs: 100 });
    agents.push(agent);
    return agent;
  }

  /** The newest heartbeat `observer` sent whose report of `subject` satisfies `pred`. */
  function reported(observer: AgentHandle, subject: AgentHandle, pred: (p: pb.PeerLease) => boolean): pb.PeerLease | undefined {
    for (const s of [...orch.sessions].reverse()) {
      if (s.hostId !== observer.identity.hostId) continue;
      for (const m of [...s.messages].reverse()) {
        if (m.body?.$case !== 'heartbeat') continue;
        const p = m.body.heartbeat.peerLeases.find((x) => x.hostId === subject.identity.hostId);
        if (p && pred(p)) return p;
      }
    }
    return undefined;
  }

  it("each reports the other's renewals, its fence while cut off, and a stopped agent's file standing still", async () => {
    const shared = join(dir, 'shared-pool');
    const a = await start('pla', shared);
    const b = await start('plb', shared);
    assert.ok(existsSync(join(shared, LEASE_DIR, `${a.identity.hostId}.json`)), "A's file is on the shared pool");

    const aOfB = await orch.waitFor('A reports B renewing', () => reported(a, b, (p) => p.renewalSeen && p.poolName === 'shared' && !p.fenced));
    assert.ok(aOfB.sequence >= 2n);
    assert.ok(aOfB.validUntil && aOfB.writtenAt && aOfB.validUntil > aOfB.writtenAt, 'B held a lease');
    await orch.waitFor('B reports A renewing', () => reported(b, a, (p) => p.renewalSeen));

    // Cut both off from the orchestrator: their leases run out, they fence, and their files keep
    // being renewed, now saying "fenced" (partitioned, not dead).
    orch.pauseGrants = true;
    const cutAt = Date.now();
    const fenced = await orch.waitFor('A reports B fenced', () => reported(a, b, (p) => p.fenced), 15_000);
    assert.ok(fenced.fencedAt && fenced.fencedAt.getTime() >= cutAt, 'fenced after the cut');
    const later = await orch.waitFor('A reports B fenced and still renewing', () => reported(a, b, (p) => p.fenced && p.sequence > fenced.sequence + 1n && p.unchangedForMs < 1000n), 10_000);
    assert.ok(later.renewalSeen);
    orch.pauseGrants = false;
    await orch.waitFor('A reports B no longer fenced', () => reported(a, b, (p) => !p.fenced && p.fencedAt !== undefined), 15_000);

    // B stops (a dead host): A watches its file stand still.
    await b.stop();
    const still = await orch.waitFor('A reports B standing still for 1 s', () => reported(a, b, (p) => p.unchangedForMs >= 1000n), 10_000);
    assert.equal(still.renewalSeen, true, 'A saw it renew before');
  });
});
