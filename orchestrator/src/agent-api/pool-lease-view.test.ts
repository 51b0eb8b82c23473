// PoolLeaseView: the rules of its answers over a fake clock, and the link end to end (PostgreSQL,
// NATS, gRPC over TLS, simulated agents): peers' reports reach the view, and a host that goes
// down has what its peers last read of its lease files in its host-down event.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createJoinToken } from '../store/join-tokens.js';
import { waitFor } from '@kloudak/testkit';
import type * as pb from '@kloudak/proto/agent';
import type { PeerLeaseReport } from '../domain/agent.js';
import { startHarness, type Harness } from '../testing/harness.js';
import { freshArea } from '../testing/fixtures.js';
import { peerLeasesFromProto, MAX_PEER_LEASES } from './convert.js';
import { PoolLeaseView } from './pool-lease-view.js';
import { enrollSimAgent, SimAgent } from './testing/sim-agent.js';

function report(hostId: string, o: Partial<PeerLeaseReport> = {}): PeerLeaseReport {
  return {
    poolName: 'shared',
    hostId,
    sequence: 7n,
    writtenAt: new Date('2026-12-05T06:00:00Z'),
    validUntil: new Date('2026-12-05T06:00:15Z'),
    fenced: false,
    fencedAt: null,
    unchangedForMs: 0,
    renewalSeen: true,
    fileModifiedAt: new Date('2026-12-05T06:00:00Z'),
    ...o,
  };
}

describe('PoolLeaseView (fake clock)', () => {
  it('renewed within N: yes when a peer saw a change that recently, no when a fresh report saw it stand still, else unknown', () => {
    const clock = { t: 0, now() { return this.t; } };
    const v = new PoolLeaseView(clock);
    assert.equal(v.renewedWithin('x', 5000), null, 'nobody reported x');

    v.record('y', [report('x', { unchangedForMs: 200 })]);
    assert.equal(v.renewedWithin('x', 5000), true);
    clock.t = 6000; // y's report is now 6 s old: the change it saw was 6.2 s ago
    assert.equal(v.renewedWithin('x', 5000), null, 'a stale report proves nothing either way');
    assert.equal(v.evidence('x').lastRenewalSeenMsAgo, 6200);

    // y keeps reporting; x's file stands still for 5.5 s by y's reading.
    v.record('y', [report('x', { unchangedForMs: 5500 })]);
    assert.equal(v.renewedWithin('x', 5000), false);
    assert.equal(v.renewedWithin('x', 10_000), true, 'it was renewed 5.5 s ago');
    // A peer that only just started reading (never saw a change) gives no "renewed".
    v.record('y', [report('x', { unchangedForMs: 300, renewalSeen: false })]);
    assert.equal(v.renewedWithin('x', 5000), null);

    // A renewal one peer saw outweighs another's standstill; the observers filter chooses whose word counts.
    v.record('y', [report('x', { unchangedForMs: 9000 })]);
    v.record('z', [report('x', { unchangedForMs: 100 })]);
    assert.equal(v.renewedWithin('x', 5000), true);
    assert.equal(v.renewedWithin('x', 5000, { observers: new Set(['y']) }), false);
    assert.equal(v.evidence('x').observations.length, 2);
  });

  it('fenced marks, replacement of an observer\'s reports, self-reports ignored, forget', () => {
    const clock = { t: 1000, now() { return this.t; } };
    const v = new PoolLeaseView(clock);
    v.record('y', [report('x', { fenced: true, fencedAt: new Date('2026-12-05T06:01:00Z') }), report('w', { poolName: 'other' }), report('y')]);
    assert.deepEqual(v.markedFenced('x'), { fenced: true, fencedAt: '2026-12-05T06:01:00.000Z' });
    assert.deepEqual(v.markedFenced('w'), { fenced: false, fencedAt: null });
    assert.equal(v.evidence('y').observations.length, 0, 'a host is no witness of itself');
    // y's next heartbeat no longer lists w (its file is gone): w's observation goes.
    v.record('y', [report('x')]);
    assert.equal(v.evidence('w').observations.length, 0);
    assert.equal(v.markedFenced('x').fenced, false);
    const ev = v.evidence('x');
    assert.deepEqual(Object.keys(ev.observations[0]!).sort(), [
      'fenced', 'fencedAt', 'fileModifiedAt', 'lastRenewalSeenMsAgo', 'observerHostId', 'poolName', 'renewalSeen', 'reportAgeMs', 'sequence', 'unchangedForMs', 'validUntil', 'writtenAt',
    ]);
    assert.equal(JSON.parse(JSON.stringify(ev)).observations[0].sequence, '7', 'JSON-safe (event data)');
    v.forget('y');
    assert.equal(v.evidence('x').observations.length, 0);
  });

  it('peerLeasesFromProto bounds what one agent may send', () => {
    const p: pb.PeerLease = { poolName: 'shared', hostId: 'x', sequence: 1n, fenced: false, unchangedForMs: 1n << 62n, renewalSeen: true, writtenAt: undefined, validUntil: undefined, fencedAt: undefined, fileModifiedAt: undefined };
    const many = Array.from({ length: MAX_PEER_LEASES + 10 }, () => p);
    const out = peerLeasesFromProto([...many, { ...p, hostId: '' }]);
    assert.equal(out.length, MAX_PEER_LEASES);
    assert.ok(out[0]!.unchangedForMs <= 10 * 365 * 24 * 3600 * 1000);
    assert.deepEqual(peerLeasesFromProto([{ ...p, hostId: 'h'.repeat(200) }]), []);
  });
});

describe('pool lease evidence over the agent link (PostgreSQL, NATS, TLS)', () => {
  let h: Harness;
  let areaId: string;
  const agents: SimAgent[] = [];
  const db = () => h.orch.db.client;

  before(async () => {
    h = await startHarness('postgres', { heartbeatIntervalMs: 100, agentLeaseMs: 400, agentDownMarginMs: 200 }, undefined, { helloTimeoutMs: 400, livenessTickMs: 25 });
    ({ id: areaId } = await freshArea(db()));
  });
  after(async () => {
    for (const a of agents) await a.stop();
    await h?.close();
  });

  async function enrolled(name: string) {
    const t = await createJoinToken(db(), { areaId, expiresAt: new Date(Date.now() + 600_000), createdById: null, caFingerprint: h.orch.ca.fingerprint });
    return enrollSimAgent({ address: h.orch.agentUrl, joinToken: t.token, hostName: `${name}-${Date.now()}.example.test` });
  }

  it("a host's peers report its lease files; its host-down event carries what they last read", async () => {
    const x = await enrolled('plx');
    const y = await enrolled('ply');
    let ySeq = 0n;
    let xFenced = false;
    const xAgent = new SimAgent({ address: h.orch.agentUrl, identity: x, reconnect: false });
    // y reads x's file: renewed at every heartbeat until x stops, then standing still.
    let xStoppedAt: number | null = null;
    const yAgent = new SimAgent({
      address: h.orch.agentUrl,
      identity: y,
      reconnect: false,
      peerLeases: () => {
        if (xStoppedAt === null) ySeq += 1n;
        const unchanged = xStoppedAt === null ? 0 : Date.now() - xStoppedAt;
        return [{ poolName: 'shared', hostId: x.hostId, sequence: ySeq, writtenAt: new Date(), validUntil: new Date(Date.now() + 400), fenced: xFenced, fencedAt: xFenced ? new Date() : undefined, unchangedForMs: BigInt(unchanged), renewalSeen: ySeq > 1n, fileModifiedAt: new Date() }];
      },
    });
    agents.push(xAgent, yAgent);
    await xAgent.start();
    await yAgent.start();
    await waitFor(async () => h.orch.agentLink.poolLeases.renewedWithin(x.hostId, 1000) === true, 5000, "y's report of x renewing");
    const ev = h.orch.agentLink.poolLeases.evidence(x.hostId);
    assert.equal(ev.observations[0]?.observerHostId, y.hostId);
    assert.equal(ev.observations[0]?.poolName, 'shared');

    xFenced = true;
    xStoppedAt = Date.now();
    await xAgent.stop();
    await waitFor(async () => (await db().host.findUniqueOrThrow({ where: { id: x.hostId } })).state === 'down', 5000, 'x down');
    await h.orch.agentLink.settled();
    const row = await db().outboxEvent.findFirstOrThrow({ where: { entityId: x.hostId, event: 'state', state: 'down' }, orderBy: { seq: 'desc' } });
    const data = (row.payload as { evidence?: unknown }).evidence as { poolLeases?: { hostId: string; fenced: boolean; observations: Array<{ observerHostId: string; unchangedForMs: number; renewalSeen: boolean }> } };
    assert.ok(data.poolLeases, `host-down event without pool lease evidence: ${JSON.stringify(row.payload)}`);
    assert.equal(data.poolLeases.hostId, x.hostId);
    assert.equal(data.poolLeases.fenced, true, 'x marked itself fenced');
    assert.equal(data.poolLeases.observations[0]?.observerHostId, y.hostId);
    assert.ok(data.poolLeases.observations[0]!.unchangedForMs >= 300, `x's file stood still before it was declared down (${data.poolLeases.observations[0]!.unchangedForMs} ms)`);
    assert.equal(h.orch.agentLink.poolLeases.renewedWithin(x.hostId, 300), false);
    // y's own state events carry no evidence (only down does).
    const up = await db().outboxEvent.findFirstOrThrow({ where: { entityId: y.hostId, event: 'state', state: 'up' } });
    assert.equal((up.payload as { evidence?: unknown }).evidence, undefined);
  });
});
