// placement.bench — placement decisions a second of the orchestrator's pure schedule() with 10,000
// hosts in the snapshot, against a naive scheduler measured in the same run on the same data.
//
// The data (seeded, so every run sees the same): BENCH_HOSTS hosts (10,000) in BENCH_AREAS areas
// (100), of mixed sizes (16–96 CPUs, 64–768 GB); 3 % down, 1 % suspect, 2 % in maintenance, 1 %
// with no agent connected; two shared pools per area; then BENCH_VMS VMs (100,000: the deployment
// size DESIGN.md designs for) claimed on random hosts of random areas where they fit — half of
// them HA, in 1,000 workspaces — so hosts are unevenly full, some completely. Then 10,000 requests:
// a random area, a size from a mix of templates (1–8 vCPU, 1–32 GB, 10–200 GB), half HA.
//
// Ways, each run for BENCH_ROUND_MS (500 ms) per round over BENCH_ROUNDS (4) rounds, taking turns
// so drift on a shared machine reaches all of them; each call is timed on its own:
//   schedule            schedule(snapshot, request) on the area-indexed snapshot (every filter,
//                       spread + HA anti-affinity weighers, the why-here reason; the why-not list
//                       when nothing fits);
//   schedule+claim      the same, each decision followed by applyPlacement() — a burst of
//                       BENCH_BURST (1,000) creates, each seeing the claims before it, then the
//                       snapshot is reset (and checked: no host or pool over-committed);
//   schedule, refused   the same with requests larger than any host (1 TB of RAM): the slow path
//                       that builds the why-not list (one entry and message per host of the area);
//   schedule, 1 area    the worst case for the index: all hosts in one area, so every decision
//                       walks all 10,000 hosts;
//   baseline: naive     a scheduler without an index: one pass over all 10,000 host rows (shuffled,
//                       as a query returns them) that keeps, among the hosts of the area, the one
//                       with the most free RAM — no other filter, no pool, no reason;
//   baseline: build     buildPlacementSnapshot() from the 10,000 rows (what rebuilding the index
//                       for every decision would cost; the claims transaction builds it for one
//                       area only).
// The ratio is decisions/s of each way against the naive scan. Exits non-zero if `schedule`
// makes fewer than BENCH_TARGET (5,000) decisions a second, or if a check fails.
import {
  DEFAULT_PLACEMENT_POLICY,
  applyPlacement,
  buildPlacementSnapshot,
  schedule,
  type PlacementHost,
  type PlacementPool,
  type PlacementRequest,
  type PlacementSnapshot,
} from '@kloudak/orchestrator/dist/domain/placement.js';
import { envNumber, machine, machineBusyPct, progress, quantile, runBench, table, writeResults } from './harness.js';

const HOSTS = Math.round(envNumber('BENCH_HOSTS', 10_000));
const AREAS = Math.round(envNumber('BENCH_AREAS', 100));
const VMS = Math.round(envNumber('BENCH_VMS', 100_000));
const REQUESTS = 10_000;
const WORKSPACES = 1_000;
const ROUNDS = Math.round(envNumber('BENCH_ROUNDS', 4));
const ROUND_MS = envNumber('BENCH_ROUND_MS', 500);
const BURST = Math.round(envNumber('BENCH_BURST', 1_000));
const TARGET = envNumber('BENCH_TARGET', 5_000);
const SEED = Math.round(envNumber('BENCH_SEED', 42));

/** mulberry32: a small seeded PRNG, so the data set is the same in every run. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const SIZES = [
  { cpu: 1, ramMb: 1024, diskGb: 10 },
  { cpu: 2, ramMb: 4096, diskGb: 20 },
  { cpu: 4, ramMb: 8192, diskGb: 40 },
  { cpu: 4, ramMb: 16_384, diskGb: 80 },
  { cpu: 8, ramMb: 32_768, diskGb: 200 },
] as const;
const SHAPES = [
  { cpuCount: 16, ramMb: 65_536 },
  { cpuCount: 32, ramMb: 196_608 },
  { cpuCount: 64, ramMb: 393_216 },
  { cpuCount: 96, ramMb: 786_432 },
] as const;

interface DataSet {
  hosts: PlacementHost[];
  pools: PlacementPool[];
  requests: PlacementRequest[];
  claimedVms: number;
}

function makeData(): DataSet {
  const rnd = prng(SEED);
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rnd() * xs.length)] as T;
  const area = (i: number) => `area-${String(i).padStart(3, '0')}`;
  const ws = (i: number) => `ws-${String(i).padStart(4, '0')}`;
  const hosts: PlacementHost[] = [];
  for (let i = 0; i < HOSTS; i++) {
    const r = rnd();
    const shape = pick(SHAPES);
    hosts.push({
      id: `host-${i}`,
      name: `kvm${String(i).padStart(5, '0')}`,
      areaId: area(i % AREAS),
      state: r < 0.03 ? 'down' : r < 0.04 ? 'suspect' : 'up',
      adminState: r >= 0.04 && r < 0.06 ? 'maintenance' : 'active',
      connected: !(r >= 0.06 && r < 0.07),
      cpuCount: shape.cpuCount,
      ramMb: shape.ramMb,
      claimedCpu: 0,
      claimedRamMb: 0,
      haVmsByWorkspace: new Map(),
    });
  }
  const pools: PlacementPool[] = [];
  for (let a = 0; a < AREAS; a++) {
    for (const p of ['ssd', 'hdd']) {
      pools.push({ id: `${area(a)}-${p}`, name: `${area(a)}-${p}`, areaId: area(a), shared: true, capacityGb: p === 'ssd' ? 100_000 : 400_000, claimedGb: 0 });
    }
  }
  // Claim VMs on random hosts of random areas where they fit (the load a real deployment carries).
  const byArea = new Map<string, PlacementHost[]>();
  for (const h of hosts) (byArea.get(h.areaId) ?? byArea.set(h.areaId, []).get(h.areaId))?.push(h);
  const poolsByArea = new Map<string, PlacementPool[]>();
  for (const p of pools) (poolsByArea.get(p.areaId) ?? poolsByArea.set(p.areaId, []).get(p.areaId))?.push(p);
  const policy = DEFAULT_PLACEMENT_POLICY;
  let claimedVms = 0;
  for (let v = 0; v < VMS; v++) {
    const a = area(Math.floor(rnd() * AREAS));
    const h = pick(byArea.get(a) ?? []);
    const size = pick(SIZES);
    const pool = pick(poolsByArea.get(a) ?? []);
    if (h.claimedCpu + size.cpu > h.cpuCount * policy.cpuOvercommit || h.claimedRamMb + size.ramMb > h.ramMb * policy.ramOvercommit) continue;
    if (pool.claimedGb + size.diskGb > pool.capacityGb) continue;
    h.claimedCpu += size.cpu;
    h.claimedRamMb += size.ramMb;
    pool.claimedGb += size.diskGb;
    if (rnd() < 0.5) {
      const m = h.haVmsByWorkspace as Map<string, number>;
      const w = ws(Math.floor(rnd() * WORKSPACES));
      m.set(w, (m.get(w) ?? 0) + 1);
    }
    claimedVms++;
  }
  const requests: PlacementRequest[] = [];
  for (let i = 0; i < REQUESTS; i++) {
    requests.push({ areaId: area(Math.floor(rnd() * AREAS)), workspaceId: ws(Math.floor(rnd() * WORKSPACES)), ...pick(SIZES), ha: rnd() < 0.5 });
  }
  // Rows come back from a query in no useful order: shuffle (Fisher–Yates).
  for (let i = hosts.length - 1; i > 0; i--) {
    const j = Math.floor(rnd() * (i + 1));
    [hosts[i], hosts[j]] = [hosts[j] as PlacementHost, hosts[i] as PlacementHost];
  }
  return { hosts, pools, requests, claimedVms };
}

/** The baseline scheduler: one pass over every host row, most free RAM among the area's hosts. */
function naiveSchedule(hosts: readonly PlacementHost[], request: PlacementRequest): PlacementHost | null {
  let best: PlacementHost | null = null;
  let bestFree = -1;
  for (let i = 0; i < hosts.length; i++) {
    const h = hosts[i] as PlacementHost;
    if (h.areaId !== request.areaId) continue;
    const free = h.ramMb - h.claimedRamMb;
    if (free >= request.ramMb && free > bestFree) {
      best = h;
      bestFree = free;
    }
  }
  return best;
}

/** Samples of one way, all rounds together. */
class Way {
  readonly samples: number[] = [];
  wallMs = 0;
  placed = 0;
  refused = 0;
  constructor(
    readonly name: string,
    readonly hostsPerDecision: number,
    /** One call; returns true when it placed (for `builds`, always true). */
    readonly call: (i: number) => boolean,
    /** Called before each round's chunk (resets of the burst way). */
    readonly beforeChunk: () => void = () => {},
  ) {}

  /** Run calls for `ms` of wall time, timing each. */
  chunk(ms: number, offset: number): number {
    this.beforeChunk();
    const start = performance.now();
    let i = offset;
    let now = start;
    while (now - start < ms) {
      // Time 64 calls individually between two checks of the clock budget.
      for (let k = 0; k < 64; k++, i++) {
        const t0 = performance.now();
        const ok = this.call(i);
        const t1 = performance.now();
        this.samples.push(t1 - t0);
        if (ok) this.placed++;
        else this.refused++;
      }
      now = performance.now();
    }
    this.wallMs += now - start;
    return i;
  }

  figures() {
    const sorted = Float64Array.from(this.samples).sort();
    const n = sorted.length;
    const us = (ms: number) => Math.round(ms * 1000 * 100) / 100;
    return {
      way: this.name,
      hostsPerDecision: this.hostsPerDecision,
      calls: n,
      callsPerSec: Math.round(n / (this.wallMs / 1000)),
      latencyUs: {
        mean: us(this.samples.reduce((a, b) => a + b, 0) / n),
        p50: us(quantile(sorted, 0.5)),
        p99: us(quantile(sorted, 0.99)),
        max: us(sorted[n - 1] ?? NaN),
      },
      placed: this.placed,
      refused: this.refused,
    };
  }
}

async function main(): Promise<number> {
  const started = new Date();
  const busyBefore = await machineBusyPct();
  progress(`building the data set: ${HOSTS} hosts in ${AREAS} areas, ${VMS} VMs to claim, seed ${SEED}`);
  const data = makeData();
  const { hosts, pools, requests } = data;
  const snapshot = buildPlacementSnapshot(hosts, pools);
  const oneArea = buildPlacementSnapshot(
    hosts.map((h) => ({ ...h, areaId: 'all' })),
    pools.slice(0, 2).map((p) => ({ ...p, areaId: 'all', capacityGb: 10_000_000, claimedGb: 0 })),
  );
  const oneAreaRequests = requests.map((r) => ({ ...r, areaId: 'all' }));
  // Larger than any host: every decision ends in the why-not list of the area's 100 hosts.
  const tooBig = requests.map((r) => ({ ...r, ramMb: 1_048_576 }));
  const claimedCpu = hosts.reduce((a, h) => a + h.claimedCpu, 0);
  const capCpu = hosts.reduce((a, h) => a + h.cpuCount * DEFAULT_PLACEMENT_POLICY.cpuOvercommit, 0);
  const claimedRam = hosts.reduce((a, h) => a + h.claimedRamMb, 0);
  const capRam = hosts.reduce((a, h) => a + h.ramMb, 0);
  progress(
    `${data.claimedVms} VMs claimed: ${((100 * claimedCpu) / capCpu).toFixed(1)} % of vCPU, ${((100 * claimedRam) / capRam).toFixed(1)} % of RAM`,
  );

  // Checks (untimed): every placement of a sample passes the filters it claims to; a refusal lists
  // every host of the area; a burst never over-commits.
  let refusedSample = 0;
  for (const r of requests.slice(0, 2000)) {
    const res = schedule(snapshot, r);
    if (!res.ok) {
      refusedSample++;
      const n = snapshot.areas.get(r.areaId)?.hosts.length;
      if (res.rejections.length !== n) throw new Error(`why-not lists ${res.rejections.length} hosts, the area has ${n}`);
      continue;
    }
    const h = hosts.find((x) => x.id === res.hostId);
    if (!h || h.areaId !== r.areaId || h.state !== 'up' || h.adminState !== 'active' || !h.connected) throw new Error(`bad host ${res.hostName}`);
    if (h.claimedCpu + r.cpu > h.cpuCount * 4 || h.claimedRamMb + r.ramMb > h.ramMb) throw new Error(`over-commit on ${res.hostName}`);
  }

  let burst: PlacementSnapshot = snapshot;
  let burstLeft = 0;
  const checkBurst = (s: PlacementSnapshot) => {
    for (const a of s.areas.values()) {
      for (const h of a.hosts) {
        if (h.claimedCpu > h.cpuCount * 4 || h.claimedRamMb > h.ramMb) throw new Error(`burst over-committed ${h.name}`);
      }
      for (const p of a.pools) if (p.claimedGb > p.capacityGb) throw new Error(`burst over-committed pool ${p.name}`);
    }
  };
  let builds = 0;
  const ways = [
    new Way('schedule', HOSTS / AREAS, (i) => schedule(snapshot, requests[i % REQUESTS] as PlacementRequest).ok),
    new Way(
      'schedule+claim',
      HOSTS / AREAS,
      (i) => {
        if (burstLeft === 0) {
          checkBurst(burst);
          burst = snapshot;
          burstLeft = BURST;
        }
        burstLeft--;
        const r = requests[i % REQUESTS] as PlacementRequest;
        const res = schedule(burst, r);
        if (res.ok) burst = applyPlacement(burst, r, res);
        return res.ok;
      },
      () => {
        burstLeft = 0;
      },
    ),
    new Way('schedule, refused', HOSTS / AREAS, (i) => schedule(snapshot, tooBig[i % REQUESTS] as PlacementRequest).ok),
    new Way('schedule, 1 area', HOSTS, (i) => schedule(oneArea, oneAreaRequests[i % REQUESTS] as PlacementRequest).ok),
    new Way('baseline: naive scan', HOSTS, (i) => naiveSchedule(hosts, requests[i % REQUESTS] as PlacementRequest) !== null),
    new Way('baseline: build snapshot', HOSTS, () => {
      builds += buildPlacementSnapshot(hosts, pools).areas.size > 0 ? 1 : 0;
      return true;
    }),
  ];

  progress('warm-up');
  for (const w of ways) w.chunk(200, 0);
  for (const w of ways) {
    w.samples.length = 0;
    w.wallMs = 0;
    w.placed = 0;
    w.refused = 0;
  }
  checkBurst(burst);

  const offsets = ways.map(() => 0);
  for (let round = 0; round < ROUNDS; round++) {
    progress(`round ${round + 1}/${ROUNDS}`);
    for (let k = 0; k < ways.length; k++) {
      const idx = (round + k) % ways.length;
      offsets[idx] = (ways[idx] as Way).chunk(ROUND_MS, offsets[idx] as number);
    }
  }
  checkBurst(burst);

  const figures = ways.map((w) => w.figures());
  const naive = figures.find((f) => f.way === 'baseline: naive scan');
  const rows: (string | number)[][] = [
    ['way', 'hosts walked', 'calls', 'calls/s', 'mean µs', 'p50 µs', 'p99 µs', 'max µs', 'placed', 'refused', 'ratio vs naive'],
  ];
  for (const f of figures) {
    rows.push([
      f.way,
      f.hostsPerDecision,
      f.calls,
      f.callsPerSec,
      f.latencyUs.mean,
      f.latencyUs.p50,
      f.latencyUs.p99,
      f.latencyUs.max,
      f.way.startsWith('baseline: build') ? '-' : f.placed,
      f.way.startsWith('baseline: build') ? '-' : f.refused,
      f.way.startsWith('baseline') || !naive ? '' : `${(f.callsPerSec / naive.callsPerSec).toFixed(1)}x`,
    ]);
  }
  const sched = figures[0];
  const met = sched !== undefined && sched.callsPerSec >= TARGET;
  console.log(
    `placement: ${HOSTS} hosts, ${AREAS} areas, ${data.claimedVms} VMs claimed ` +
      `(${((100 * claimedCpu) / capCpu).toFixed(1)} % vCPU, ${((100 * claimedRam) / capRam).toFixed(1)} % RAM), ` +
      `${ROUNDS} × ${ROUND_MS} ms per way, machine ${busyBefore} % busy before`,
  );
  console.log(table(rows));
  console.log(`target: schedule() >= ${TARGET} decisions/s with ${HOSTS} hosts: ${met ? 'met' : 'NOT MET'} (${sched?.callsPerSec ?? 0}/s)`);
  console.log(`sample check: ${refusedSample} of 2000 requests refused on the static snapshot; ${builds} snapshot builds`);
  const file = writeResults('placement', started, {
    settings: { HOSTS, AREAS, VMS, REQUESTS, WORKSPACES, ROUNDS, ROUND_MS, BURST, TARGET, SEED, policy: DEFAULT_PLACEMENT_POLICY },
    data: {
      claimedVms: data.claimedVms,
      vcpuClaimedPct: (100 * claimedCpu) / capCpu,
      ramClaimedPct: (100 * claimedRam) / capRam,
      hostsUp: hosts.filter((h) => h.state === 'up' && h.adminState === 'active' && h.connected).length,
    },
    figures,
    targetMet: met,
    machine: machine(),
    machineBusyPctBefore: busyBefore,
  });
  progress(`results: ${file}`);
  return met ? 0 : 1;
}

runBench('placement', main);
