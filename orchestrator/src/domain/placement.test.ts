import test from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import {
  DEFAULT_PLACEMENT_POLICY,
  applyPlacement,
  buildPlacementSnapshot,
  schedule,
  type NoPlacement,
  type Placement,
  type PlacementHost,
  type PlacementPolicy,
  type PlacementPool,
  type PlacementRequest,
  type PlacementResult,
  type PlacementSnapshot,
} from './placement.js';

function host(name: string, over: Partial<PlacementHost> = {}): PlacementHost {
  return {
    id: `id-${name}`,
    name,
    areaId: 'a1',
    state: 'up',
    adminState: 'active',
    connected: true,
    cpuCount: 8,
    ramMb: 32_768,
    claimedCpu: 0,
    claimedRamMb: 0,
    ...over,
  };
}

function pool(name: string, over: Partial<PlacementPool> = {}): PlacementPool {
  return { id: `pool-${name}`, name, areaId: 'a1', shared: true, capacityGb: 1000, claimedGb: 0, ...over };
}

function req(over: Partial<PlacementRequest> = {}): PlacementRequest {
  return { areaId: 'a1', workspaceId: 'ws1', cpu: 2, ramMb: 4096, diskGb: 20, ha: false, ...over };
}

function placed(r: PlacementResult): Placement {
  if (!r.ok) assert.fail(`expected a placement, got: ${r.message}`);
  return r;
}

function refused(r: PlacementResult): NoPlacement {
  if (r.ok) assert.fail(`expected no placement, got ${r.hostName}`);
  return r;
}

const snap = (hosts: PlacementHost[], pools: PlacementPool[] = [pool('p1')]) => buildPlacementSnapshot(hosts, pools);

test('spread picks the host with the most free capacity; pack the fullest that fits', () => {
  const s = snap([
    host('h1', { claimedCpu: 8, claimedRamMb: 16_384 }),
    host('h2', { claimedCpu: 2, claimedRamMb: 4096 }),
    host('h3', { claimedCpu: 20, claimedRamMb: 24_576 }),
  ]);
  const spread = placed(schedule(s, req()));
  assert.equal(spread.hostName, 'h2');
  assert.equal(spread.poolName, 'p1');
  assert.equal(spread.reason.strategy, 'spread');
  assert.equal(spread.reason.candidates, 3);
  assert.equal(spread.reason.freeCpuAfter, 8 * 4 - 2 - 2);
  assert.equal(spread.reason.freeRamMbAfter, 32_768 - 4096 - 4096);
  assert.equal(spread.reason.poolFreeGbAfter, 980);
  assert.match(spread.reason.message, /^spread: most free capacity of 3 candidates .*h2.*pool p1/);

  const pack = placed(schedule(s, req(), { ...DEFAULT_PLACEMENT_POLICY, strategy: 'pack' }));
  assert.equal(pack.hostName, 'h3');
  assert.match(pack.reason.message, /^pack: least free capacity/);
});

test('each filter rejects a host and the 409 names the filter per host ("why not")', () => {
  const s = snap(
    [
      host('a-down', { state: 'down' }),
      host('b-suspect', { state: 'suspect' }),
      host('c-maint', { adminState: 'maintenance' }),
      host('d-drained', { adminState: 'drained' }),
      host('e-noagent', { connected: false }),
      host('f-excluded'),
      host('g-cpu', { cpuCount: 1, claimedCpu: 3 }), // 4 vCPU claimable, 1 free, 2 wanted
      host('h-ram', { claimedRamMb: 30_000 }),
      host('i-nopool', { activePools: new Set(['pool-elsewhere']) }),
    ],
    [pool('p1')],
  );
  const r = refused(schedule(s, req({ excludeHostIds: new Set(['id-f-excluded']) })));
  assert.deepEqual(
    r.rejections.map((x) => [x.hostName, x.filter]),
    [
      ['a-down', 'state'],
      ['b-suspect', 'state'],
      ['c-maint', 'admin'],
      ['d-drained', 'admin'],
      ['e-noagent', 'agent'],
      ['f-excluded', 'excluded'],
      ['g-cpu', 'cpu'],
      ['h-ram', 'ram'],
      ['i-nopool', 'pool'],
    ],
  );
  assert.deepEqual(r.counts, { state: 2, admin: 2, agent: 1, excluded: 1, cpu: 1, ram: 1, pool: 1 });
  const msg = Object.fromEntries(r.rejections.map((x) => [x.hostName, x.message]));
  assert.equal(msg['a-down'], 'host is down');
  assert.equal(msg['c-maint'], 'host is in maintenance');
  assert.equal(msg['g-cpu'], 'needs 2 vCPU, 1 free (1 CPUs × 4)');
  assert.equal(msg['h-ram'], 'needs 4096 MB, 2768 MB free');
  assert.equal(msg['i-nopool'], 'no usable pool of the area on this host');
  assert.equal(
    r.message,
    'no host of the area can take 2 vCPU, 4096 MB, 20 GB: 2 not up, 2 in maintenance or drained, 1 without a connected agent, ' +
      '1 excluded, 1 short of vCPU, 1 short of RAM, 1 without pool room',
  );
  assert.equal(r.areaId, 'a1');
});

test('a host rejected by several filters is reported under the first one', () => {
  const r = refused(schedule(snap([host('h', { state: 'down', adminState: 'maintenance', connected: false, cpuCount: 0 })]), req()));
  assert.equal(r.rejections[0]?.filter, 'state');
});

test('the overcommit ratios, the reserve and the pool room are inclusive limits', () => {
  // 8 CPUs × 4 = 32 vCPU; 30 claimed + 2 wanted = 32 fits, 3 wanted does not.
  const s = snap([host('h', { claimedCpu: 30 })]);
  assert.equal(placed(schedule(s, req({ cpu: 2 }))).reason.freeCpuAfter, 0);
  assert.equal(refused(schedule(s, req({ cpu: 3 }))).rejections[0]?.filter, 'cpu');
  // No CPU overcommit: 8 claimable.
  const strict: PlacementPolicy = { ...DEFAULT_PLACEMENT_POLICY, cpuOvercommit: 1 };
  assert.equal(refused(schedule(snap([host('h', { claimedCpu: 7 })]), req({ cpu: 2 }), strict)).rejections[0]?.filter, 'cpu');
  // RAM: 32768 − 2048 reserved = 30720 claimable; 1.5× overcommit = 46080.
  const reserve: PlacementPolicy = { ...DEFAULT_PLACEMENT_POLICY, reservedRamMb: 2048 };
  assert.ok(schedule(snap([host('h', { claimedRamMb: 26_624 })]), req({ ramMb: 4096 }), reserve).ok);
  assert.equal(refused(schedule(snap([host('h', { claimedRamMb: 26_625 })]), req({ ramMb: 4096 }), reserve)).rejections[0]?.filter, 'ram');
  const over: PlacementPolicy = { ...reserve, ramOvercommit: 1.5 };
  assert.ok(schedule(snap([host('h', { claimedRamMb: 41_984 })]), req({ ramMb: 4096 }), over).ok);
  // Pool: 1000 GB, 980 claimed: 20 fits, 21 does not; 2× disk overcommit makes 1020 fit.
  const full = snap([host('h')], [pool('p1', { claimedGb: 980 })]);
  assert.equal(placed(schedule(full, req({ diskGb: 20 }))).reason.poolFreeGbAfter, 0);
  const r = refused(schedule(full, req({ diskGb: 21 })));
  assert.deepEqual([r.rejections[0]?.filter, r.rejections[0]?.message], ['pool', 'needs 21 GB, at most 20 GB free in its pools']);
  assert.ok(schedule(full, req({ diskGb: 1020 }), { ...DEFAULT_PLACEMENT_POLICY, diskOvercommit: 2 }).ok);
});

test('only hosts of the requested area are considered, however empty the others are', () => {
  const s = snap(
    [host('busy', { claimedCpu: 30, claimedRamMb: 20_000 }), host('empty-elsewhere', { areaId: 'a2' })],
    [pool('p1'), pool('p2', { areaId: 'a2' })],
  );
  assert.equal(placed(schedule(s, req())).hostName, 'busy');
  const other = placed(schedule(s, req({ areaId: 'a2' })));
  assert.deepEqual([other.hostName, other.poolName], ['empty-elsewhere', 'p2']);
  // A pool of another area is never used, even by a host that lists it as active.
  const cross = snap([host('h', { activePools: new Set(['pool-p2']) })], [pool('p2', { areaId: 'a2' })]);
  assert.equal(refused(schedule(cross, req())).rejections[0]?.filter, 'pool');
});

test('an area without hosts (or unknown) gives an empty why-not with a clear message', () => {
  for (const s of [snap([], [pool('p1')]), snap([host('h', { areaId: 'a2' })], [])]) {
    const r = refused(schedule(s, req()));
    assert.deepEqual(r.rejections, []);
    assert.deepEqual(r.counts, {});
    assert.equal(r.message, 'the area has no hosts');
  }
});

test('an area without pools rejects every otherwise fit host under the pool filter', () => {
  const r = refused(schedule(snap([host('h1'), host('h2')], []), req()));
  assert.deepEqual(r.counts, { pool: 2 });
});

test('anti-affinity: an HA VM avoids hosts holding HA VMs of its workspace, even emptier ones', () => {
  const s = snap([
    host('empty', { haVmsByWorkspace: new Map([['ws1', 1]]) }),
    host('fuller', { claimedCpu: 16, claimedRamMb: 16_384, haVmsByWorkspace: new Map([['ws2', 5]]) }),
  ]);
  const ha = placed(schedule(s, req({ ha: true })));
  assert.equal(ha.hostName, 'fuller');
  assert.equal(ha.reason.sameWorkspaceHaVms, 0);
  assert.match(ha.reason.message, /0 HA VMs of the workspace already there/);
  // Without HA, or with the weigher off, plain spread wins.
  assert.equal(placed(schedule(s, req({ ha: false }))).hostName, 'empty');
  assert.equal(placed(schedule(s, req({ ha: true }), { ...DEFAULT_PLACEMENT_POLICY, antiAffinityWeight: 0 })).hostName, 'empty');
  // Another workspace's HA VMs do not repel.
  assert.equal(placed(schedule(s, req({ ha: true, workspaceId: 'ws3' }))).hostName, 'empty');
  // When every host has some, the one with fewest wins.
  const all = snap([
    host('h1', { haVmsByWorkspace: new Map([['ws1', 3]]) }),
    host('h2', { claimedCpu: 16, haVmsByWorkspace: new Map([['ws1', 1]]) }),
    host('h3', { haVmsByWorkspace: new Map([['ws1', 2]]) }),
  ]);
  assert.equal(placed(schedule(all, req({ ha: true }))).hostName, 'h2');
});

test('a workspace\'s HA VMs placed one after the other land on distinct hosts while hosts remain', () => {
  let s: PlacementSnapshot = snap([host('h1'), host('h2'), host('h3', { cpuCount: 64, ramMb: 262_144 })]);
  const names: string[] = [];
  for (let i = 0; i < 3; i++) {
    const r = req({ ha: true });
    const p = placed(schedule(s, r));
    names.push(p.hostName);
    s = applyPlacement(s, r, p);
  }
  assert.deepEqual([...names].sort(), ['h1', 'h2', 'h3']);
});

test('pools: spread takes the one with most room, pack the one with least that fits; request and host can restrict them', () => {
  const pools = [pool('big', { claimedGb: 100 }), pool('small', { capacityGb: 100, claimedGb: 50 }), pool('tiny', { capacityGb: 10 })];
  const s = snap([host('h')], pools);
  assert.equal(placed(schedule(s, req())).poolName, 'big');
  assert.equal(placed(schedule(s, req(), { ...DEFAULT_PLACEMENT_POLICY, strategy: 'pack' })).poolName, 'small');
  assert.equal(placed(schedule(s, req({ poolIds: new Set(['pool-small']) }))).poolName, 'small');
  const mounted = snap([host('h', { activePools: new Set(['pool-small', 'pool-tiny']) })], pools);
  assert.equal(placed(schedule(mounted, req())).poolName, 'small');
  const r = refused(schedule(s, req({ poolIds: new Set(['pool-tiny']) })));
  assert.equal(r.rejections[0]?.message, 'needs 20 GB, at most 10 GB free in its pools');
});

test('host-local pools count capacity and claims per host', () => {
  const local = pool('local', { shared: false, capacityGb: 0, claimedGb: 0 });
  const s = snap(
    [
      host('h1', { localPools: new Map([['pool-local', { capacityGb: 100, claimedGb: 90 }]]) }),
      host('h2', { claimedCpu: 24, localPools: new Map([['pool-local', { capacityGb: 100, claimedGb: 0 }]]) }),
      host('h3'), // no local pool reported
    ],
    [local],
  );
  const p = placed(schedule(s, req()));
  assert.deepEqual([p.hostName, p.poolName, p.reason.poolFreeGbAfter], ['h2', 'local', 80]);
  const r = refused(schedule(s, req({ diskGb: 101 })));
  assert.deepEqual(
    r.rejections.map((x) => x.message),
    ['needs 101 GB, at most 10 GB free in its pools', 'needs 101 GB, at most 100 GB free in its pools', 'no usable pool of the area on this host'],
  );
  // Claims on a local pool grow that host's usage only.
  const after = applyPlacement(s, req(), p);
  const hosts = after.areas.get('a1')?.hosts ?? [];
  assert.equal(hosts.find((h) => h.name === 'h2')?.localPools?.get('pool-local')?.claimedGb, 20);
  assert.equal(hosts.find((h) => h.name === 'h1')?.localPools?.get('pool-local')?.claimedGb, 90);
});

test('ties go to the first host by name, whatever the input order', () => {
  const hosts = [host('c'), host('a'), host('b')];
  assert.equal(placed(schedule(snap(hosts), req())).hostName, 'a');
  assert.equal(placed(schedule(snap(hosts.reverse()), req())).hostName, 'a');
  assert.equal(placed(schedule(snap(hosts), req(), { ...DEFAULT_PLACEMENT_POLICY, strategy: 'pack' })).hostName, 'a');
});

test('applyPlacement adds the claim to a copy and leaves the original snapshot alone', () => {
  const s = snap([host('h1'), host('h2', { areaId: 'a2' })], [pool('p1'), pool('p2', { areaId: 'a2' })]);
  const r = req({ ha: true });
  const p = placed(schedule(s, r));
  const after = applyPlacement(s, r, p);
  const h = after.areas.get('a1')?.hosts[0];
  assert.deepEqual([h?.claimedCpu, h?.claimedRamMb, h?.haVmsByWorkspace?.get('ws1')], [2, 4096, 1]);
  assert.equal(after.areas.get('a1')?.pools[0]?.claimedGb, 20);
  const before = s.areas.get('a1')?.hosts[0];
  assert.deepEqual([before?.claimedCpu, before?.claimedRamMb, before?.haVmsByWorkspace], [0, 0, undefined]);
  assert.equal(s.areas.get('a1')?.pools[0]?.claimedGb, 0);
  assert.equal(after.areas.get('a2'), s.areas.get('a2'), 'other areas are shared, not copied');
  assert.deepEqual(after.areas.get('a1')?.haByWorkspace.get('ws1'), { hostIndexes: [0], counts: [1] });
  assert.equal(s.areas.get('a1')?.haByWorkspace.get('ws1'), undefined);
  assert.throws(() => applyPlacement(s, req({ areaId: 'a2' }), p), RangeError);
});

test('100 creates in a row, each seeing the claims before it, never over-commit and spread evenly', () => {
  let s: PlacementSnapshot = snap(Array.from({ length: 10 }, (_, i) => host(`h${i}`, { cpuCount: 4, ramMb: 16_384 })));
  const perHost = new Map<string, number>();
  let refusedCount = 0;
  for (let i = 0; i < 100; i++) {
    const r = req({ cpu: 1, ramMb: 2048, diskGb: 5 });
    const res = schedule(s, r);
    if (!res.ok) {
      refusedCount++;
      continue;
    }
    perHost.set(res.hostName, (perHost.get(res.hostName) ?? 0) + 1);
    s = applyPlacement(s, r, res);
  }
  // 16 GB / 2 GB = 8 VMs per host by RAM (CPU allows 16): 80 placed, 20 refused.
  assert.equal(refusedCount, 20);
  assert.deepEqual([...perHost.values()], Array(10).fill(8));
  for (const h of s.areas.get('a1')?.hosts ?? []) {
    assert.ok(h.claimedRamMb <= h.ramMb && h.claimedCpu <= h.cpuCount * 4, h.name);
  }
  assert.equal(s.areas.get('a1')?.pools[0]?.claimedGb, 400);
});

test('after a run of claims the derived indexes equal a snapshot rebuilt from the claimed hosts and pools', () => {
  const hosts = Array.from({ length: 12 }, (_, i) =>
    host(`h${String(i).padStart(2, '0')}`, { haVmsByWorkspace: new Map(i % 3 === 0 ? [['ws1', 1], ['ws2', 2]] : []) }),
  );
  let s: PlacementSnapshot = snap(hosts, [pool('p1'), pool('p2', { capacityGb: 300 })]);
  for (let i = 0; i < 60; i++) {
    const r = req({ workspaceId: `ws${i % 4}`, ha: i % 5 !== 0, cpu: 1 + (i % 3), ramMb: 1024 * (1 + (i % 4)) });
    const p = placed(schedule(s, r));
    s = applyPlacement(s, r, p);
  }
  const area = s.areas.get('a1');
  assert.ok(area);
  const rebuilt = buildPlacementSnapshot(area.hosts, area.pools).areas.get('a1');
  assert.deepEqual(area, rebuilt);
});

test('malformed requests and policies are programming errors (RangeError)', () => {
  const s = snap([host('h')]);
  assert.throws(() => schedule(s, req({ cpu: -1 })), RangeError);
  assert.throws(() => schedule(s, req({ ramMb: Number.NaN })), RangeError);
  assert.throws(() => schedule(s, req(), { ...DEFAULT_PLACEMENT_POLICY, cpuOvercommit: -1 }), RangeError);
});

// ---------- property: schedule agrees with a brute-force reference ----------

/** Straightforward restatement of the rules, written apart from the implementation. */
function reference(hosts: PlacementHost[], pools: PlacementPool[], r: PlacementRequest, p: PlacementPolicy) {
  const feasible: { host: PlacementHost; score: number }[] = [];
  /** The first failing filter of each rejected host of the area, by host id. */
  const rejected = new Map<string, string>();
  for (const h of hosts.filter((x) => x.areaId === r.areaId)) {
    const cpuCap = h.cpuCount * p.cpuOvercommit;
    const ramCap = Math.max(0, h.ramMb - p.reservedRamMb) * p.ramOvercommit;
    const first =
      h.state !== 'up' ? 'state'
      : h.adminState !== 'active' ? 'admin'
      : !h.connected ? 'agent'
      : r.excludeHostIds?.has(h.id) ? 'excluded'
      : h.claimedCpu + r.cpu > cpuCap ? 'cpu'
      : h.claimedRamMb + r.ramMb > ramCap ? 'ram'
      : null;
    if (first !== null) {
      rejected.set(h.id, first);
      continue;
    }
    const poolFits = pools.some((pl) => {
      if (pl.areaId !== r.areaId || (h.activePools && !h.activePools.has(pl.id))) return false;
      if (r.poolIds && !r.poolIds.has(pl.id)) return false;
      const room = pl.shared
        ? pl.capacityGb * p.diskOvercommit - pl.claimedGb
        : h.localPools?.has(pl.id)
          ? (h.localPools.get(pl.id)?.capacityGb ?? 0) * p.diskOvercommit - (h.localPools.get(pl.id)?.claimedGb ?? 0)
          : -Infinity;
      return room >= r.diskGb;
    });
    if (!poolFits) {
      rejected.set(h.id, 'pool');
      continue;
    }
    const free = ((cpuCap - h.claimedCpu - r.cpu) / cpuCap + (ramCap - h.claimedRamMb - r.ramMb) / ramCap) / 2;
    const fit = p.strategy === 'pack' ? 1 - free : free;
    const ha = r.ha ? (h.haVmsByWorkspace?.get(r.workspaceId) ?? 0) : 0;
    feasible.push({ host: h, score: p.fitWeight * fit - p.antiAffinityWeight * ha });
  }
  return { feasible, rejected };
}

test('property: the chosen host passes every filter and scores best; "no placement" means no host fits', () => {
  const hostArb = fc.record({
    area: fc.constantFrom('a1', 'a2'),
    state: fc.constantFrom('up', 'up', 'up', 'down', 'suspect'),
    adminState: fc.constantFrom('active', 'active', 'active', 'maintenance', 'drained'),
    connected: fc.constantFrom(true, true, true, false),
    cpuCount: fc.integer({ min: 1, max: 16 }),
    ramMb: fc.integer({ min: 1024, max: 65_536 }),
    cpuUse: fc.double({ min: 0, max: 1.2, noNaN: true }),
    ramUse: fc.double({ min: 0, max: 1.2, noNaN: true }),
    ha: fc.integer({ min: 0, max: 3 }),
    mountsAll: fc.boolean(),
    local: fc.integer({ min: 0, max: 200 }),
  });
  const poolArb = fc.record({
    area: fc.constantFrom('a1', 'a2'),
    shared: fc.boolean(),
    capacityGb: fc.integer({ min: 0, max: 500 }),
    claimedGb: fc.integer({ min: 0, max: 500 }),
  });
  fc.assert(
    fc.property(
      fc.array(hostArb, { maxLength: 25 }),
      fc.array(poolArb, { maxLength: 4 }),
      fc.record({
        cpu: fc.integer({ min: 1, max: 16 }),
        ramMb: fc.integer({ min: 256, max: 16_384 }),
        diskGb: fc.integer({ min: 1, max: 200 }),
        ha: fc.boolean(),
        strategy: fc.constantFrom<'spread' | 'pack'>('spread', 'pack'),
        cpuOvercommit: fc.constantFrom(1, 2, 4),
        excludeFirst: fc.boolean(),
      }),
      (hs, ps, q) => {
        const pools = ps.map((p, i) => pool(`p${i}`, { areaId: p.area, shared: p.shared, capacityGb: p.capacityGb, claimedGb: p.claimedGb }));
        const hosts = hs.map((h, i) =>
          host(`h${String(i).padStart(2, '0')}`, {
            areaId: h.area,
            state: h.state as PlacementHost['state'],
            adminState: h.adminState as PlacementHost['adminState'],
            connected: h.connected,
            cpuCount: h.cpuCount,
            ramMb: h.ramMb,
            claimedCpu: Math.floor(h.cpuCount * q.cpuOvercommit * h.cpuUse),
            claimedRamMb: Math.floor(h.ramMb * h.ramUse),
            haVmsByWorkspace: new Map([['ws1', h.ha]]),
            ...(h.mountsAll ? {} : { activePools: new Set(pools.filter((_, j) => (i + j) % 2 === 0).map((p) => p.id)) }),
            localPools: new Map(pools.filter((p) => !p.shared).map((p) => [p.id, { capacityGb: h.local, claimedGb: i % 50 }])),
          }),
        );
        const policy: PlacementPolicy = { ...DEFAULT_PLACEMENT_POLICY, strategy: q.strategy, cpuOvercommit: q.cpuOvercommit };
        const r = req({
          cpu: q.cpu,
          ramMb: q.ramMb,
          diskGb: q.diskGb,
          ha: q.ha,
          ...(q.excludeFirst && hosts[0] ? { excludeHostIds: new Set([hosts[0].id]) } : {}),
        });
        const res = schedule(buildPlacementSnapshot(hosts, pools), r, policy);
        const { feasible, rejected } = reference(hosts, pools, r, policy);
        if (!res.ok) {
          assert.equal(feasible.length, 0, 'schedule refused but a host fits');
          assert.deepEqual(new Map(res.rejections.map((x) => [x.hostId, x.filter])), rejected);
          return;
        }
        const chosen = feasible.find((f) => f.host.id === res.hostId);
        assert.ok(chosen, `chosen host ${res.hostName} does not pass the reference filters`);
        const best = Math.max(...feasible.map((f) => f.score));
        assert.ok(chosen.score >= best - 1e-12, `chosen score ${chosen.score} < best ${best}`);
        assert.equal(res.reason.candidates, feasible.length);
      },
    ),
    { numRuns: 2000 },
  );
});
