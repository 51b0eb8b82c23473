import test from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { LOST_RETRY_BASE_MS, LOST_RETRY_MAX_MS, lostRetryDue, planEvacuation, planReturn, restartHold, restartVerdict, type EvacuationVm, type KnownVm } from './evacuation.js';
import type { PoolLeaseObservation } from './agent.js';
import { summarizeEvidence } from '../agent-api/pool-lease-view.js';
import { buildPlacementSnapshot, type PlacementHost, type PlacementPool } from './placement.js';

function host(name: string, over: Partial<PlacementHost> = {}): PlacementHost {
  return {
    id: `id-${name}`,
    name,
    areaId: 'a1',
    state: 'up',
    adminState: 'active',
    connected: true,
    cpuCount: 4,
    ramMb: 8192,
    claimedCpu: 0,
    claimedRamMb: 0,
    ...over,
  };
}

const shared: PlacementPool = { id: 'p-shared', name: 'shared', areaId: 'a1', shared: true, capacityGb: 100, claimedGb: 100 };
const local: PlacementPool = { id: 'p-local', name: 'local', areaId: 'a1', shared: false, capacityGb: 0, claimedGb: 0 };

let n = 0;
function vm(over: Partial<EvacuationVm> = {}): EvacuationVm {
  n++;
  return { id: `vm-${String(n).padStart(3, '0')}`, name: `vm${n}`, workspaceId: 'ws1', areaId: 'a1', cpu: 1, ramMb: 1024, diskGb: 10, ha: true, poolId: 'p-shared', poolShared: true, state: 'running', ...over };
}

test('HA VMs restart on other up hosts of the area, spread, and never on the dead host', () => {
  const hosts = [host('a', { state: 'down', claimedCpu: 4, claimedRamMb: 4096 }), host('b'), host('c')];
  const vms = [vm({ workspaceId: 'w1' }), vm({ workspaceId: 'w2' }), vm({ workspaceId: 'w3' }), vm({ workspaceId: 'w4' })];
  const plan = planEvacuation({ placement: buildPlacementSnapshot(hosts, [shared]), vms }, 'id-a');
  assert.equal(plan.moves.length, 4);
  assert.deepEqual(plan.unplaced, []);
  const on = (h: string) => plan.moves.filter((m) => m.toHostId === h).length;
  assert.equal(on('id-a'), 0);
  // Spread: each host gets two (each decision sees the earlier claims).
  assert.equal(on('id-b'), 2);
  assert.equal(on('id-c'), 2);
  for (const m of plan.moves) {
    assert.equal(m.poolId, 'p-shared');
    assert.equal(m.start, true);
  }
});

test('anti-affinity: one workspace\'s HA VMs go to different hosts even when one host is emptier', () => {
  // b is much emptier than c, but both VMs belong to one workspace: the second goes to c.
  const hosts = [host('a', { state: 'down' }), host('b', { cpuCount: 64, ramMb: 262_144 }), host('c')];
  const vms = [vm({ workspaceId: 'w' }), vm({ workspaceId: 'w' })];
  const plan = planEvacuation({ placement: buildPlacementSnapshot(hosts, [shared]), vms }, 'id-a');
  assert.deepEqual(plan.moves.map((m) => m.toHostName).sort(), ['b', 'c']);
  assert.deepEqual(plan.moves.map((m) => m.reason.sameWorkspaceHaVms), [0, 0]);
});

test('VMs that do not fit are reported with each host\'s rejection, largest placed first; the rest still move', () => {
  // b takes 6 GB of RAM at most, c is in maintenance, d lacks the shared pool.
  const hosts = [
    host('a', { state: 'down' }),
    host('b', { ramMb: 6144 }),
    host('c', { adminState: 'maintenance' }),
    host('d', { activePools: new Set<string>() }),
    host('e', { connected: false }),
  ];
  const big = vm({ name: 'big', ramMb: 4096 });
  const small = vm({ name: 'small', ramMb: 2048 });
  const huge = vm({ name: 'huge', ramMb: 8192 });
  const plan = planEvacuation({ placement: buildPlacementSnapshot(hosts, [shared]), vms: [small, big, huge] }, 'id-a');
  assert.deepEqual(plan.moves.map((m) => m.vmName), ['big', 'small']);
  assert.deepEqual(plan.unplaced.map((u) => [u.vmName, u.code]), [['huge', 'no_capacity']]);
  const why = Object.fromEntries((plan.unplaced[0]?.rejections ?? []).map((r) => [r.hostName, r.filter]));
  assert.deepEqual(why, { a: 'state', b: 'ram', c: 'admin', d: 'pool', e: 'agent' });
  assert.match(plan.unplaced[0]!.message, /no host of the area can take/);
});

test('non-HA VMs and VMs on a host-local pool are lost; busy and lost VMs are skipped; stopped HA VMs move without start', () => {
  const hosts = [host('a', { state: 'down' }), host('b')];
  const vms = [
    vm({ name: 'plain', ha: false }),
    vm({ name: 'local', poolId: 'p-local', poolShared: false }),
    vm({ name: 'nopool', poolId: null }),
    vm({ name: 'creating', state: 'creating' }),
    vm({ name: 'gone', state: 'lost' }),
    vm({ name: 'err', state: 'error' }),
    vm({ name: 'off', state: 'stopped' }),
  ];
  const plan = planEvacuation({ placement: buildPlacementSnapshot(hosts, [shared, local]), vms }, 'id-a');
  assert.deepEqual(plan.moves.map((m) => [m.vmName, m.start]), [['off', false]]);
  assert.deepEqual(plan.lost.map((l) => [l.vmName, l.code]).sort(), [['local', 'local_pool'], ['nopool', 'no_pool'], ['plain', 'not_ha']]);
  assert.deepEqual(plan.skipped.map((l) => [l.vmName, l.code]).sort(), [['creating', 'busy'], ['err', 'busy'], ['gone', 'already_lost']]);
  assert.deepEqual(plan.unplaced, []);
});

test('the retry sweep plans lost HA VMs again, never lost non-HA ones', () => {
  const hosts = [host('a', { state: 'down' }), host('b')];
  const vms = [vm({ name: 'ha', state: 'lost' }), vm({ name: 'plain', ha: false, state: 'lost' })];
  const plan = planEvacuation({ placement: buildPlacementSnapshot(hosts, [shared]), vms }, 'id-a', { retryLost: true });
  assert.deepEqual(plan.moves.map((m) => m.vmName), ['ha']);
  assert.deepEqual(plan.moves.map((m) => m.start), [true], 'lost from an unknown state: started');
  assert.deepEqual(plan.skipped.map((m) => [m.vmName, m.code]), [['plain', 'already_lost']]);
  // Lost while stopped: defined elsewhere, not started; lost while running: started.
  const fromState = planEvacuation(
    { placement: buildPlacementSnapshot(hosts, [shared]), vms: [vm({ name: 'was-stopped', state: 'lost', lostFrom: 'stopped' }), vm({ name: 'was-running', state: 'lost', lostFrom: 'running' })] },
    'id-a',
    { retryLost: true },
  );
  assert.deepEqual(fromState.moves.map((m) => [m.vmName, m.start]).sort(), [['was-running', true], ['was-stopped', false]]);
  // Without retryLost, a host-down plan leaves both as they are.
  const first = planEvacuation({ placement: buildPlacementSnapshot(hosts, [shared]), vms }, 'id-a');
  assert.deepEqual(first.moves, []);
  assert.equal(first.skipped.length, 2);
});

test('a lost HA VM whose restart failed is tried on another host first, and on that host again only when nothing else fits', () => {
  const lostVm = vm({ name: 'ha', state: 'lost' });
  // b is the emptier host, the one placement picks; its restart failed there.
  const hosts = [host('a', { state: 'down' }), host('b', { cpuCount: 64, ramMb: 262_144 }), host('c')];
  const failedOn = new Map([[lostVm.id, new Set(['id-b'])]]);
  const snapshot = { placement: buildPlacementSnapshot(hosts, [shared]), vms: [lostVm] };
  assert.deepEqual(planEvacuation(snapshot, 'id-a', { retryLost: true }).moves.map((m) => m.toHostName), ['b']);
  assert.deepEqual(planEvacuation(snapshot, 'id-a', { retryLost: true, failedOn }).moves.map((m) => m.toHostName), ['c']);
  // c full: b again (its mount may have been fixed), not unplaced.
  const full = [host('a', { state: 'down' }), host('b', { cpuCount: 64, ramMb: 262_144 }), host('c', { claimedRamMb: 8192 })];
  const again = planEvacuation({ placement: buildPlacementSnapshot(full, [shared]), vms: [lostVm] }, 'id-a', { retryLost: true, failedOn });
  assert.deepEqual(again.moves.map((m) => m.toHostName), ['b']);
  assert.deepEqual(again.unplaced, []);
});

test('lostRetryDue: at once without a failure, then a wait that doubles per failure up to its cap', () => {
  const t = 1_000_000;
  assert.equal(lostRetryDue(0, null, t), true);
  assert.equal(lostRetryDue(1, t, t + LOST_RETRY_BASE_MS - 1), false);
  assert.equal(lostRetryDue(1, t, t + LOST_RETRY_BASE_MS), true);
  assert.equal(lostRetryDue(3, t, t + 4 * LOST_RETRY_BASE_MS - 1), false);
  assert.equal(lostRetryDue(3, t, t + 4 * LOST_RETRY_BASE_MS), true);
  assert.equal(lostRetryDue(40, t, t + LOST_RETRY_MAX_MS - 1), false);
  assert.equal(lostRetryDue(40, t, t + LOST_RETRY_MAX_MS), true);
  // Never waits longer than the cap, however many failures.
  fc.assert(fc.property(fc.integer({ min: 1, max: 10_000 }), (f) => lostRetryDue(f, t, t + LOST_RETRY_MAX_MS)));
});

test('only hosts of the VM\'s own area, with its pool, are candidates', () => {
  const other: PlacementPool = { id: 'p2', name: 'other', areaId: 'a1', shared: true, capacityGb: 1000, claimedGb: 0 };
  const hosts = [host('a', { state: 'down' }), host('b', { activePools: new Set(['p2']) }), host('x', { areaId: 'a2' })];
  const plan = planEvacuation({ placement: buildPlacementSnapshot(hosts, [shared, other]), vms: [vm()] }, 'id-a');
  assert.equal(plan.moves.length, 0);
  assert.equal(plan.unplaced[0]?.rejections?.find((r) => r.hostName === 'b')?.filter, 'pool');
  assert.equal(plan.unplaced[0]?.rejections?.some((r) => r.hostName === 'x'), false);
});

test('deterministic and never over capacity, for any set of VMs (property)', () => {
  fc.assert(
    fc.property(
      fc.array(fc.record({ cpu: fc.integer({ min: 1, max: 4 }), ramMb: fc.integer({ min: 256, max: 8192 }), ha: fc.boolean(), ws: fc.integer({ min: 0, max: 3 }) }), { maxLength: 30 }),
      fc.array(fc.record({ cpu: fc.integer({ min: 1, max: 8 }), ramMb: fc.integer({ min: 1024, max: 16384 }) }), { minLength: 1, maxLength: 5 }),
      (specs, hostSpecs) => {
        const hosts = [host('dead', { state: 'down' }), ...hostSpecs.map((h, i) => host(`h${i}`, { cpuCount: h.cpu, ramMb: h.ramMb }))];
        const vms = specs.map((s, i) => ({ ...vm({ cpu: s.cpu, ramMb: s.ramMb, ha: s.ha, workspaceId: `w${s.ws}` }), id: `v${i}`, name: `v${i}` }));
        const snap = { placement: buildPlacementSnapshot(hosts, [shared]), vms };
        const plan = planEvacuation(snap, 'id-dead');
        const reversed = planEvacuation({ ...snap, vms: [...vms].reverse() }, 'id-dead');
        assert.deepEqual(plan, reversed);
        // Every VM is accounted for exactly once.
        const all = [...plan.moves.map((m) => m.vmId), ...plan.unplaced.map((u) => u.vmId), ...plan.lost.map((l) => l.vmId), ...plan.skipped.map((s) => s.vmId)];
        assert.deepEqual(all.sort(), vms.map((v) => v.id).sort());
        assert.equal(plan.lost.length, vms.filter((v) => !v.ha).length);
        for (const h of hosts.slice(1)) {
          const mine = plan.moves.filter((m) => m.toHostId === h.id).map((m) => vms.find((v) => v.id === m.vmId)!);
          assert.ok(mine.reduce((a, v) => a + v.ramMb, 0) <= h.ramMb);
          assert.ok(mine.reduce((a, v) => a + v.cpu, 0) <= h.cpuCount * 4);
        }
        assert.equal(plan.moves.some((m) => m.toHostId === 'id-dead'), false);
      },
    ),
    { numRuns: 200 },
  );
});

test('a returning host: VMs placed elsewhere are evicted, unknown domains deleted with their volumes, lost VMs reconciled, fenced HA VMs restarted, other states follow their domains', () => {
  const known = new Map<string, KnownVm>([
    ['aaaa', { id: 'aaaa', hostId: 'B', state: 'running', poolName: 'shared', ha: true }],
    ['bbbb', { id: 'bbbb', hostId: 'A', state: 'lost', poolName: 'shared', ha: false }],
    ['cccc', { id: 'cccc', hostId: 'A', state: 'running', poolName: 'shared', ha: true }],
    ['dddd', { id: 'dddd', hostId: null, state: 'error', poolName: null, ha: false }],
    // Placed here, running for the orchestrator, domain off: HA restarts; non-HA follows (stopped); stopped stays.
    ['ffff', { id: 'ffff', hostId: 'A', state: 'running', poolName: 'shared', ha: true }],
    ['gggg', { id: 'gggg', hostId: 'A', state: 'running', poolName: 'shared', ha: false }],
    ['hhhh', { id: 'hhhh', hostId: 'A', state: 'stopped', poolName: 'shared', ha: true }],
    // Lost HA VMs, domain off: started again if lost while running, else reconciled (stopped).
    ['iiii', { id: 'iiii', hostId: 'A', state: 'lost', poolName: 'shared', ha: true, lostFrom: 'running' }],
    ['jjjj', { id: 'jjjj', hostId: 'A', state: 'lost', poolName: 'shared', ha: true, lostFrom: 'stopped' }],
    // Stopped for the orchestrator, its domain running: follows (running).
    ['kkkk', { id: 'kkkk', hostId: 'A', state: 'stopped', poolName: 'shared', ha: false }],
  ]);
  const domains = [
    { name: 'kloudak-aaaa', vmId: 'AAAA', state: 'shutoff' },
    { name: 'kloudak-bbbb', vmId: 'bbbb', state: 'running' },
    { name: 'kloudak-cccc', vmId: 'cccc', state: 'running' },
    { name: 'kloudak-dddd', vmId: 'dddd', state: 'shutoff' },
    { name: 'kloudak-eeee', vmId: 'eeee', state: 'running' },
    { name: 'kloudak-ffff', vmId: 'ffff', state: 'shutoff' },
    { name: 'kloudak-gggg', vmId: 'gggg', state: 'shutoff' },
    { name: 'kloudak-hhhh', vmId: 'hhhh', state: 'shutoff' },
    { name: 'kloudak-iiii', vmId: 'iiii', state: 'crashed' },
    { name: 'kloudak-jjjj', vmId: 'jjjj', state: 'shutoff' },
    { name: 'kloudak-kkkk', vmId: 'kkkk', state: 'running' },
    { name: 'foreign', vmId: '', state: 'running' },
  ];
  const volumes = [
    { pool: 'shared', vmId: 'eeee' },
    { pool: 'local', vmId: 'eeee' },
    { pool: 'shared', vmId: 'aaaa' },
  ];
  assert.deepEqual(planReturn('A', domains, known, volumes), [
    { kind: 'evict', vmId: 'aaaa', domain: 'kloudak-aaaa', placedOn: 'B' },
    { kind: 'reconcile', vmId: 'bbbb', domain: 'kloudak-bbbb', state: 'running' },
    { kind: 'evict', vmId: 'dddd', domain: 'kloudak-dddd', placedOn: null },
    { kind: 'deleteOrphan', vmId: 'eeee', domain: 'kloudak-eeee', pools: ['local', 'shared'] },
    { kind: 'restart', vmId: 'ffff', domain: 'kloudak-ffff', domainState: 'shutoff' },
    { kind: 'follow', vmId: 'gggg', domain: 'kloudak-gggg', observed: 'off', cause: 'its host reports its domain shutoff' },
    { kind: 'restart', vmId: 'iiii', domain: 'kloudak-iiii', domainState: 'crashed' },
    { kind: 'reconcile', vmId: 'jjjj', domain: 'kloudak-jjjj', state: 'stopped' },
    { kind: 'follow', vmId: 'kkkk', domain: 'kloudak-kkkk', observed: 'running', cause: 'its host reports its domain running' },
  ]);
});

test('restartVerdict: fenced or a file standing still restarts; a file renewed within the lease and not fenced holds', () => {
  const obs = (o: Partial<PoolLeaseObservation>): PoolLeaseObservation => ({
    observerHostId: 'y',
    poolName: 'shared',
    sequence: '9',
    writtenAt: null,
    validUntil: null,
    fenced: false,
    fencedAt: null,
    renewalSeen: true,
    unchangedForMs: 100,
    reportAgeMs: 50,
    lastRenewalSeenMsAgo: 150,
    fileModifiedAt: null,
    ...o,
  });
  const ev = (...o: PoolLeaseObservation[]) => summarizeEvidence('x', o);
  assert.deepEqual(restartVerdict(null, 15_000), { hold: false, why: 'no_witness' });
  assert.deepEqual(restartVerdict(ev(), 15_000), { hold: false, why: 'no_witness' });
  const renewed = restartVerdict(ev(obs({})), 15_000);
  assert.equal(renewed.hold, true);
  assert.match(renewed.hold ? renewed.message : '', /on shared was renewed 150 ms ago \(seen by 1 peer/);
  // Fenced wins over a renewal (the agent keeps renewing after it fenced, saying so).
  assert.deepEqual(restartVerdict(ev(obs({}), obs({ observerHostId: 'z', fenced: true, fencedAt: '2026-12-05T00:00:00.000Z' })), 15_000), { hold: false, why: 'fenced' });
  // Renewed longer ago than a lease, or never seen changing while watched for long: stood still.
  assert.deepEqual(restartVerdict(ev(obs({ lastRenewalSeenMsAgo: 15_001, unchangedForMs: 15_000 })), 15_000), { hold: false, why: 'lease_file_stood_still' });
  assert.deepEqual(restartVerdict(ev(obs({ renewalSeen: false, lastRenewalSeenMsAgo: null, unchangedForMs: 20_000 })), 15_000), { hold: false, why: 'lease_file_stood_still' });
  // One peer saw it renewed, another (a stale mount) saw it stand still: held.
  assert.equal(restartVerdict(ev(obs({ observerHostId: 'z', renewalSeen: false, lastRenewalSeenMsAgo: null, unchangedForMs: 20_000 }), obs({})), 15_000).hold, true);
});

test('summarizeEvidence: an observer reported to two instances counts once, with its freshest report', () => {
  const base = { poolName: 'p', sequence: '1', writtenAt: null, validUntil: null, fenced: false, fencedAt: null, renewalSeen: true, unchangedForMs: 0, fileModifiedAt: null };
  const e = summarizeEvidence('x', [
    { ...base, observerHostId: 'y', reportAgeMs: 900, lastRenewalSeenMsAgo: 900 },
    { ...base, observerHostId: 'y', reportAgeMs: 100, lastRenewalSeenMsAgo: 100 },
    { ...base, observerHostId: 'z', poolName: 'q', reportAgeMs: 300, lastRenewalSeenMsAgo: 300 },
  ]);
  assert.deepEqual(e.observations.map((o) => [o.observerHostId, o.reportAgeMs]), [['y', 100], ['z', 300]]);
  assert.equal(e.lastRenewalSeenMsAgo, 100);
});

test('restartHold: an admin\'s word restarts; a clean agent stop that left VMs running holds; otherwise the pool lease files decide', () => {
  const at = '2026-12-05T10:00:00.000Z';
  const hostId = '11111111-1111-4111-8111-111111111111';
  const none = { confirmedOff: null, agentStopped: null, heldWhy: null };
  assert.equal(restartHold(hostId, none), null);
  // A Goodbye that left nothing running protects nothing; a hold by the pool lease files is theirs to lift.
  assert.equal(restartHold(hostId, { ...none, agentStopped: { at, vmIds: [] } }), null);
  assert.equal(restartHold(hostId, { ...none, heldWhy: 'lease_file_renewed' }), null);
  const held = restartHold(hostId, { ...none, agentStopped: { at, vmIds: ['a', 'b'] } });
  assert.ok(held?.hold);
  assert.equal(held.why, 'agent_stopped');
  assert.match(held.message, /stopped cleanly at 2026-12-05T10:00:00.000Z and left 2 VM\(s\) running/);
  assert.ok(held.message.includes(`/api/v1/hosts/${hostId}/confirm-off`), held.message);
  // Held for that once, it stays held when the next Hello cleared the record (the host is coming back).
  assert.equal(restartHold(hostId, { ...none, heldWhy: 'agent_stopped' })?.why, 'agent_stopped');
  // The admin's word wins over the Goodbye.
  assert.deepEqual(restartHold(hostId, { confirmedOff: { by: 'root', at }, agentStopped: { at, vmIds: ['a'] }, heldWhy: 'agent_stopped' }), { hold: false, why: 'confirmed_off' });
});
