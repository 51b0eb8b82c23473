import test from 'node:test';
import assert from 'node:assert/strict';
import { checkNPlusOne, nextDrainMoves, planDrain, type AreaVm, type DrainMove } from './drain.js';
import { buildPlacementSnapshot, type PlacementHost, type PlacementPool } from './placement.js';

function host(name: string, over: Partial<PlacementHost> = {}): PlacementHost {
  return { id: `id-${name}`, name, areaId: 'a1', state: 'up', adminState: 'active', connected: true, cpuCount: 4, ramMb: 8192, claimedCpu: 0, claimedRamMb: 0, ...over };
}

const shared: PlacementPool = { id: 'p-shared', name: 'shared', areaId: 'a1', shared: true, capacityGb: 1000, claimedGb: 0 };

let n = 0;
function vm(hostId: string | null, over: Partial<AreaVm> = {}): AreaVm {
  n++;
  return {
    id: `vm-${String(n).padStart(3, '0')}`,
    name: `vm${n}`,
    workspaceId: `ws${n}`,
    areaId: 'a1',
    cpu: 1,
    ramMb: 1024,
    diskGb: 10,
    ha: true,
    poolId: 'p-shared',
    poolShared: true,
    state: 'running',
    hostId,
    ...over,
  };
}

/** Hosts whose claims are the sums of the VMs placed on them. */
function withClaims(hosts: PlacementHost[], vms: AreaVm[]): PlacementHost[] {
  return hosts.map((h) => {
    const on = vms.filter((v) => v.hostId === h.id);
    return { ...h, claimedCpu: on.reduce((s, v) => s + v.cpu, 0), claimedRamMb: on.reduce((s, v) => s + v.ramMb, 0) };
  });
}

test('n+1: the largest host by claimed RAM is tested; the area survives when the others take all its HA VMs', () => {
  const vms = [vm('id-a', { ramMb: 2048 }), vm('id-a', { ramMb: 2048 }), vm('id-b'), vm('id-c')];
  const snap = buildPlacementSnapshot(withClaims([host('a'), host('b'), host('c')], vms), [shared]);
  const r = checkNPlusOne('a1', snap, vms);
  assert.equal(r.largestHost?.name, 'a');
  assert.equal(r.largestHost?.claimedRamMb, 4096);
  assert.equal(r.largestHost?.vms, 2);
  assert.deepEqual([r.ha.vms, r.ha.placed, r.ha.left.length], [2, 2, 0]);
  assert.equal(r.survives, true);
  assert.equal(r.all.survives, true);
});

test('n+1: HA VMs that fit nowhere are named with the filter that refused each host; the verdict is no', () => {
  // a holds 7 GiB of HA VMs; b and c have 4 GiB each, 3 GiB of it claimed: one 1 GiB VM fits on each.
  const big = vm('id-a', { name: 'big', ramMb: 5120 });
  const small1 = vm('id-a', { name: 'small1' });
  const small2 = vm('id-a', { name: 'small2' });
  const vms = [big, small1, small2, vm('id-b', { ramMb: 3072 }), vm('id-c', { ramMb: 3072 })];
  const snap = buildPlacementSnapshot(withClaims([host('a'), host('b', { ramMb: 4096 }), host('c', { ramMb: 4096 })], vms), [shared]);
  const r = checkNPlusOne('a1', snap, vms, { strategy: 'spread', cpuOvercommit: 4, ramOvercommit: 1, diskOvercommit: 1, reservedRamMb: 0, fitWeight: 1, antiAffinityWeight: 1 });
  assert.equal(r.largestHost?.name, 'a');
  assert.equal(r.survives, false);
  assert.deepEqual(r.ha.left.map((l) => [l.vmName, l.code]), [['big', 'no_capacity']]);
  const why = Object.fromEntries((r.ha.left[0]?.rejections ?? []).map((x) => [x.hostName, x.filter]));
  assert.deepEqual(why, { a: 'excluded', b: 'ram', c: 'ram' });
  assert.equal(r.ha.placed, 2);
});

test('n+1: non-HA VMs count in the "all" answer only; a VM on a host-local pool can never survive its host', () => {
  const vms = [vm('id-a', { ramMb: 4096 }), vm('id-a', { ha: false, ramMb: 4096, name: 'plain' }), vm('id-a', { ha: false, poolShared: false, poolId: 'p-local', name: 'local' })];
  const local: PlacementPool = { id: 'p-local', name: 'local', areaId: 'a1', shared: false, capacityGb: 0, claimedGb: 0 };
  // b takes 6 GiB: the HA VM fits, the plain one does not any more.
  const snap = buildPlacementSnapshot(withClaims([host('a'), host('b', { ramMb: 6144 })], vms), [shared, local]);
  const r = checkNPlusOne('a1', snap, vms, { strategy: 'spread', cpuOvercommit: 4, ramOvercommit: 1, diskOvercommit: 1, reservedRamMb: 0, fitWeight: 1, antiAffinityWeight: 1 });
  assert.equal(r.survives, true, 'the one HA VM fits');
  assert.deepEqual([r.ha.vms, r.ha.placed], [1, 1]);
  assert.equal(r.all.survives, false);
  assert.deepEqual(r.all.left.map((l) => [l.vmName, l.code]).sort(), [['local', 'local_pool'], ['plain', 'no_capacity']]);
});

test('n+1: an area without hosts or VMs survives trivially; hosts down or in maintenance take nothing', () => {
  const empty = checkNPlusOne('a1', buildPlacementSnapshot([], []), []);
  assert.equal(empty.largestHost, null);
  assert.equal(empty.survives, true);
  const vms = [vm('id-a')];
  const snap = buildPlacementSnapshot(withClaims([host('a'), host('b', { state: 'down' }), host('c', { adminState: 'maintenance' })], vms), [shared]);
  const r = checkNPlusOne('a1', snap, vms);
  assert.equal(r.survives, false);
  const why = Object.fromEntries((r.ha.left[0]?.rejections ?? []).map((x) => [x.hostName, x.filter]));
  assert.deepEqual(why, { a: 'excluded', b: 'state', c: 'admin' });
});

test('n+1: a VM in the middle of a task still counts (what the area can hold), as do lost ones', () => {
  const vms = [vm('id-a', { state: 'creating' }), vm('id-a', { state: 'lost' })];
  const snap = buildPlacementSnapshot(withClaims([host('a'), host('b', { ramMb: 1024 })], vms), [shared]);
  const r = checkNPlusOne('a1', snap, vms, { strategy: 'spread', cpuOvercommit: 4, ramOvercommit: 1, diskOvercommit: 1, reservedRamMb: 0, fitWeight: 1, antiAffinityWeight: 1 });
  assert.deepEqual([r.ha.vms, r.ha.placed, r.ha.left.length], [2, 1, 1]);
});

test('drain: running VMs move live (or by restart), stopped ones are re-homed, each to a host with room; the rest are reported', () => {
  const running = vm('id-a', { name: 'running', ha: false });
  const stopped = vm('id-a', { name: 'stopped', state: 'stopped' });
  const busy = vm('id-a', { name: 'busy', state: 'deleting' });
  const local = vm('id-a', { name: 'local', poolShared: false, poolId: 'p-local' });
  const vms = [running, stopped, busy, local];
  const snap = buildPlacementSnapshot(withClaims([host('a', { adminState: 'maintenance' }), host('b'), host('c')], vms), [shared]);
  const live = planDrain(snap, vms, 'id-a', 'live');
  assert.deepEqual(live.moves.map((m) => [m.vmName, m.how]).sort(), [['running', 'live'], ['stopped', 'define']]);
  for (const m of live.moves) assert.notEqual(m.toHostId, 'id-a');
  assert.deepEqual(live.cannotMove.map((c) => [c.vmName, c.code]).sort(), [['busy', 'busy'], ['local', 'local_pool']]);
  assert.match(live.cannotMove.find((c) => c.code === 'local_pool')!.message, /cannot leave this host/);
  const restart = planDrain(snap, vms, 'id-a', 'restart');
  assert.deepEqual(restart.moves.map((m) => [m.vmName, m.how]).sort(), [['running', 'restart'], ['stopped', 'define']]);
});

test('drain: each decision sees the earlier ones (no host is over-committed), and a full area leaves VMs in place', () => {
  const vms = [vm('id-a', { ramMb: 3072 }), vm('id-a', { ramMb: 3072 }), vm('id-a', { ramMb: 3072 })];
  const snap = buildPlacementSnapshot(withClaims([host('a'), host('b', { ramMb: 4096 }), host('c', { ramMb: 4096 })], vms), [shared]);
  const plan = planDrain(snap, vms, 'id-a', 'live', { strategy: 'spread', cpuOvercommit: 4, ramOvercommit: 1, diskOvercommit: 1, reservedRamMb: 0, fitWeight: 1, antiAffinityWeight: 1 });
  assert.equal(plan.moves.length, 2);
  assert.deepEqual(plan.moves.map((m) => m.toHostName).sort(), ['b', 'c']);
  assert.deepEqual(plan.cannotMove.map((c) => c.code), ['no_capacity']);
});

/** Planned moves: `to` is each one's destination, in plan order. */
function moves(...to: string[]): Pick<DrainMove, 'vmId' | 'toHostId'>[] {
  return to.map((h, i) => ({ vmId: `v${i + 1}`, toHostId: h }));
}
const ids = (ms: readonly { vmId: string }[]) => ms.map((m) => m.vmId);

test('drain concurrency: at most `limit` moves at once; none when the slots are full; every move once', () => {
  const plan = moves('b', 'b', 'b', 'b', 'b');
  assert.deepEqual(ids(nextDrainMoves(plan, new Set(), [], 2)), ['v1', 'v2']);
  // Two in flight: nothing more until one ends.
  assert.deepEqual(nextDrainMoves(plan, new Set(['v1', 'v2']), [plan[0]!, plan[1]!], 2), []);
  // v1 ended (moved or failed: both are started): one slot, the next in plan order.
  assert.deepEqual(ids(nextDrainMoves(plan, new Set(['v1', 'v2']), [plan[1]!], 2)), ['v3']);
  // Started moves are never picked again; the end of the plan gives what is left.
  assert.deepEqual(ids(nextDrainMoves(plan, new Set(['v1', 'v2', 'v3', 'v4']), [], 3)), ['v5']);
  assert.deepEqual(nextDrainMoves(plan, new Set(ids(plan)), [], 2), []);
  // One at a time (the old behaviour), and a limit below 1 counts as 1.
  assert.deepEqual(ids(nextDrainMoves(plan, new Set(), [], 1)), ['v1']);
  assert.deepEqual(ids(nextDrainMoves(plan, new Set(), [], 0)), ['v1']);
  // Walked to its end with a limit of 2, the plan is started in order, each move once.
  const order: string[] = [];
  const started = new Set<string>();
  let inFlight: Pick<DrainMove, 'vmId' | 'toHostId'>[] = [];
  for (let round = 0; round < 10; round++) {
    const next = nextDrainMoves(plan, started, inFlight, 2);
    for (const m of next) {
      started.add(m.vmId);
      order.push(m.vmId);
    }
    inFlight = [...inFlight, ...next];
    assert.ok(inFlight.length <= 2);
    inFlight = inFlight.slice(1); // the oldest ends
  }
  assert.deepEqual(order, ['v1', 'v2', 'v3', 'v4', 'v5']);
});

test('drain concurrency: the free slots go first to destinations with the fewest moves in flight, ties in plan order', () => {
  // Plan order (HA first, then the largest) put two VMs to b before the first to c.
  const plan = moves('b', 'b', 'c', 'c', 'd');
  assert.deepEqual(ids(nextDrainMoves(plan, new Set(), [], 2)), ['v1', 'v3'], 'b and c each get one');
  assert.deepEqual(ids(nextDrainMoves(plan, new Set(), [], 3)), ['v1', 'v3', 'v5'], 'then d');
  assert.deepEqual(ids(nextDrainMoves(plan, new Set(), [], 4)), ['v1', 'v3', 'v5', 'v2'], 'then b again (first in plan order)');
  // b busy with v1, c's v3 just ended: v4 (c, nothing in flight) goes before v2 (b, one in flight).
  assert.deepEqual(ids(nextDrainMoves(plan, new Set(['v1', 'v3']), [plan[0]!], 2)), ['v4']);
  // One destination only: plan order.
  assert.deepEqual(ids(nextDrainMoves(moves('b', 'b', 'b'), new Set(), [], 2)), ['v1', 'v2']);
});

test('drain concurrency: any set of moves in flight fits, since the plan counted them all on their destinations together', () => {
  // b and c have room for two 3 GiB VMs each; five such VMs leave a.
  const vms = Array.from({ length: 5 }, () => vm('id-a', { ramMb: 3072, ha: false }));
  const snap = buildPlacementSnapshot(withClaims([host('a'), host('b', { ramMb: 6144 }), host('c', { ramMb: 6144 })], vms), [shared]);
  const plan = planDrain(snap, vms, 'id-a', 'live', { strategy: 'spread', cpuOvercommit: 4, ramOvercommit: 1, diskOvercommit: 1, reservedRamMb: 0, fitWeight: 1, antiAffinityWeight: 1 });
  assert.equal(plan.moves.length, 4);
  assert.deepEqual(plan.cannotMove.map((c) => c.code), ['no_capacity']);
  // Whatever the limit, what is in flight on a destination never exceeds what the plan gave it.
  const planned = new Map<string, number>();
  for (const m of plan.moves) planned.set(m.toHostId, (planned.get(m.toHostId) ?? 0) + 1);
  for (const limit of [1, 2, 3, 8]) {
    const first = nextDrainMoves(plan.moves, new Set(), [], limit);
    assert.equal(first.length, Math.min(limit, 4));
    for (const [h, n] of planned) assert.ok(first.filter((m) => m.toHostId === h).length <= n);
    if (limit === 2) assert.deepEqual(first.map((m) => m.toHostName).sort(), ['b', 'c']);
  }
});
