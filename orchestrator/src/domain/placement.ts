/**
 * Placement: which host and storage pool a new VM goes to. Pure — data in, data out, no I/O.
 *
 * How the caller uses it (the claims transaction): lock what the claim touches, read the area's
 * hosts and pools with their claimed usage (sums over the VMs holding a host or pool), build a
 * {@link PlacementSnapshot}, call {@link schedule}, and write the claim (vm.hostId, vm.poolId) in
 * the same transaction. Because the usage the scheduler sees is the committed claims, not the
 * free memory a host last reported, a burst of creates cannot all land on the same "empty" host
 * (the seed's bug): each decision sees the claims of the ones before it.
 *
 * A decision runs filters, then weighers (the Nova/Nomad shape):
 * - filters, in this order, the first failing one naming the host's rejection: the host is up,
 *   its admin state is active (not maintenance or drained), its agent is connected, it is not
 *   excluded by the request, vCPU and RAM fit under the overcommit ratios, and a pool of the area
 *   it can use has room for the disk;
 * - weighers: spread (most free capacity after the claim) by default or pack (least), minus a
 *   penalty per HA VM of the same workspace already on the host (anti-affinity of HA VMs, so one
 *   host failure takes down as few of a workspace's HA VMs as possible).
 *
 * Scale: the snapshot indexes hosts and pools by area once ({@link buildPlacementSnapshot}), so a
 * decision only walks the requested area's hosts; it allocates nothing per host and builds the
 * per-host "why not" only when no host fits.
 */

/** Liveness of a host as the orchestrator sees it (the Host.state column). */
export type PlacementHostState = 'unknown' | 'up' | 'suspect' | 'down' | 'fenced';

/** What the admin wants of a host (the Host.adminState column). */
export type PlacementAdminState = 'active' | 'maintenance' | 'drained';

/** Capacity and claims of a host-local (not shared) pool on one host. */
export interface LocalPoolUsage {
  /** Capacity the host reported for this pool, in GB. */
  capacityGb: number;
  /** Disk claimed in this pool on this host by VMs, in GB. */
  claimedGb: number;
}

/** One host as placement sees it: what it has and what is already claimed on it. */
export interface PlacementHost {
  id: string;
  name: string;
  areaId: string;
  state: PlacementHostState;
  adminState: PlacementAdminState;
  /** True while the host's agent holds a session (commands can reach it). */
  connected: boolean;
  /** Physical CPUs and RAM (MB) from the agent's Hello; 0 while unknown (nothing fits). */
  cpuCount: number;
  ramMb: number;
  /** vCPUs and RAM (MB) claimed by the VMs placed on this host (every state but deleted). */
  claimedCpu: number;
  claimedRamMb: number;
  /**
   * Ids of the pools active on this host (from its Hello). Absent: every shared pool of its area
   * counts as usable. A host-local pool is usable only when it also has an entry in `localPools`.
   */
  activePools?: ReadonlySet<string>;
  /** Per-host capacity and claims of host-local pools, by pool id. */
  localPools?: ReadonlyMap<string, LocalPoolUsage>;
  /** Number of HA VMs per workspace id already on this host (for anti-affinity). */
  haVmsByWorkspace?: ReadonlyMap<string, number>;
}

/** A storage pool of an area. */
export interface PlacementPool {
  id: string;
  name: string;
  areaId: string;
  /**
   * Shared pools (one storage every host of the area mounts) have one capacity and one claimed
   * total, below. Host-local pools have them per host, in {@link PlacementHost.localPools}.
   */
  shared: boolean;
  /** Capacity in GB (shared pools). */
  capacityGb: number;
  /** Disk claimed in the pool by VMs, in GB (shared pools). */
  claimedGb: number;
}

/** Where one workspace's HA VMs are in an area: positions in the area's `hosts`, ascending, and how many on each. */
export interface HaSpots {
  hostIndexes: readonly number[];
  counts: readonly number[];
}

/** One area's hosts and pools: the unit a decision works on. */
export interface AreaPlacementIndex {
  areaId: string;
  /** Sorted by name then id, so ties between equal hosts are broken the same way every time. */
  hosts: readonly PlacementHost[];
  pools: readonly PlacementPool[];
  /**
   * The hosts' `haVmsByWorkspace` turned around: per workspace, the few hosts holding its HA VMs.
   * A decision then walks those alongside the hosts instead of looking the workspace up in every
   * host's map (which cost more than all the filters together in an area of 10,000 hosts).
   */
  haByWorkspace: ReadonlyMap<string, HaSpots>;
}

/** Everything placement needs, indexed by area. Build it with {@link buildPlacementSnapshot}. */
export interface PlacementSnapshot {
  areas: ReadonlyMap<string, AreaPlacementIndex>;
}

/** What is to be placed. */
export interface PlacementRequest {
  areaId: string;
  workspaceId: string;
  cpu: number;
  ramMb: number;
  diskGb: number;
  /** HA VMs are spread away from the workspace's other HA VMs. */
  ha: boolean;
  /** Hosts not to use (the host a failed attempt used, a host being evacuated). */
  excludeHostIds?: ReadonlySet<string>;
  /** Only these pools (e.g. the ones holding the template's image). Absent: any pool of the area. */
  poolIds?: ReadonlySet<string>;
}

/** Tunables of placement (orchestrator configuration). */
export interface PlacementPolicy {
  /** spread: the emptiest host first (fewer VMs hurt by one host failing); pack: the fullest that fits. */
  strategy: 'spread' | 'pack';
  /** vCPUs claimable per physical CPU. */
  cpuOvercommit: number;
  /** RAM claimable per MB of physical RAM (1 = no overcommit). */
  ramOvercommit: number;
  /** Disk claimable per GB of pool capacity (>1 counts on thin qcow2 overlays). */
  diskOvercommit: number;
  /** RAM kept for the hypervisor itself on every host, in MB, before the ratio applies. */
  reservedRamMb: number;
  /** Weight of the spread/pack score, which lies in [0, 1]. */
  fitWeight: number;
  /**
   * Penalty per HA VM of the same workspace on the host (HA requests only). With the default
   * (1 against fitWeight 1) a host without such a VM always wins over one with one.
   */
  antiAffinityWeight: number;
}

/** Defaults: spread, 4 vCPU per CPU, no RAM or disk overcommit, anti-affinity before fit. */
export const DEFAULT_PLACEMENT_POLICY: Readonly<PlacementPolicy> = Object.freeze({
  strategy: 'spread',
  cpuOvercommit: 4,
  ramOvercommit: 1,
  diskOvercommit: 1,
  reservedRamMb: 0,
  fitWeight: 1,
  antiAffinityWeight: 1,
});

/** The filters, in the order they run; a rejected host is rejected by the first that fails. */
export type PlacementFilter = 'state' | 'admin' | 'agent' | 'excluded' | 'cpu' | 'ram' | 'pool';

/** Why one host was not chosen ("why not"). */
export interface HostRejection {
  hostId: string;
  hostName: string;
  filter: PlacementFilter;
  /** Short, for people: "down", "needs 4 vCPU, 2 of 16 free (ratio 4)". */
  message: string;
}

/** Why the winner won ("why here"), to keep on the task. */
export interface PlacementReason {
  strategy: PlacementPolicy['strategy'];
  /** Total score and its parts: fitWeight × fit − antiAffinityWeight × sameWorkspaceHaVms. */
  score: number;
  fit: number;
  sameWorkspaceHaVms: number;
  /** Hosts of the area that passed every filter, and hosts in the area. */
  candidates: number;
  areaHosts: number;
  /** What stays free on the host and in the pool once this VM is claimed (overcommitted units). */
  freeCpuAfter: number;
  freeRamMbAfter: number;
  poolFreeGbAfter: number;
  /** One line, e.g. "spread: most free capacity of 37 candidates (…)". */
  message: string;
}

/** A host and pool were found. */
export interface Placement {
  ok: true;
  hostId: string;
  hostName: string;
  poolId: string;
  poolName: string;
  reason: PlacementReason;
}

/** Nothing fits: every host of the area and the filter that rejected it. */
export interface NoPlacement {
  ok: false;
  areaId: string;
  /** One entry per host of the area, in the snapshot's order (by name). */
  rejections: HostRejection[];
  /** Number of rejections per filter. */
  counts: Partial<Record<PlacementFilter, number>>;
  /** One line for the 409, e.g. "no host of the area can take 4 vCPU, 8192 MB, 20 GB: 3 down, 2 short of RAM". */
  message: string;
}

/** The outcome of {@link schedule}. */
export type PlacementResult = Placement | NoPlacement;

function byNameThenId(a: { name: string; id: string }, b: { name: string; id: string }): number {
  return a.name < b.name ? -1 : a.name > b.name ? 1 : a.id < b.id ? -1 : a.id > b.id ? 1 : 0;
}

/**
 * Index hosts and pools by area (O(n log n) once), so that a decision walks one area only.
 * Hosts are ordered by name then id, which makes ties deterministic.
 */
export function buildPlacementSnapshot(hosts: Iterable<PlacementHost>, pools: Iterable<PlacementPool>): PlacementSnapshot {
  type Building = { areaId: string; hosts: PlacementHost[]; pools: PlacementPool[]; haByWorkspace: Map<string, { hostIndexes: number[]; counts: number[] }> };
  const areas = new Map<string, Building>();
  const slice = (areaId: string) => {
    let a = areas.get(areaId);
    if (!a) areas.set(areaId, (a = { areaId, hosts: [], pools: [], haByWorkspace: new Map() }));
    return a;
  };
  for (const h of hosts) slice(h.areaId).hosts.push(h);
  for (const p of pools) slice(p.areaId).pools.push(p);
  for (const a of areas.values()) {
    a.hosts.sort(byNameThenId);
    a.pools.sort(byNameThenId);
    a.hosts.forEach((h, i) => {
      for (const [ws, count] of h.haVmsByWorkspace ?? []) {
        if (count <= 0) continue;
        let spots = a.haByWorkspace.get(ws);
        if (!spots) a.haByWorkspace.set(ws, (spots = { hostIndexes: [], counts: [] }));
        spots.hostIndexes.push(i);
        spots.counts.push(count);
      }
    });
  }
  return { areas };
}

/** Room left in a pool for this request, after the ratio, or -Infinity when the host cannot use it. */
function poolRoom(pool: PlacementPool, host: PlacementHost, policy: PlacementPolicy): number {
  if (host.activePools !== undefined && !host.activePools.has(pool.id)) return -Infinity;
  if (pool.shared) return pool.capacityGb * policy.diskOvercommit - pool.claimedGb;
  const local = host.localPools?.get(pool.id);
  if (local === undefined) return -Infinity;
  return local.capacityGb * policy.diskOvercommit - local.claimedGb;
}

/**
 * The pool of `host` that takes the disk and that the strategy prefers (spread: most room left;
 * pack: least), or -1. Ties go to the first pool by name.
 */
function choosePool(
  pools: readonly PlacementPool[],
  host: PlacementHost,
  request: PlacementRequest,
  policy: PlacementPolicy,
): { index: number; room: number } {
  let index = -1;
  let best = 0;
  for (let i = 0; i < pools.length; i++) {
    const pool = pools[i] as PlacementPool;
    if (request.poolIds !== undefined && !request.poolIds.has(pool.id)) continue;
    const room = poolRoom(pool, host, policy);
    if (room < request.diskGb) continue;
    if (index === -1 || (policy.strategy === 'spread' ? room > best : room < best)) {
      index = i;
      best = room;
    }
  }
  return { index, room: best };
}

/** A host that can use every shared pool of its area and has no local pool. */
const COMMON_HOST: PlacementHost = {
  id: '',
  name: '',
  areaId: '',
  state: 'up',
  adminState: 'active',
  connected: true,
  cpuCount: 0,
  ramMb: 0,
  claimedCpu: 0,
  claimedRamMb: 0,
};

function cpuCapacity(host: PlacementHost, policy: PlacementPolicy): number {
  return host.cpuCount * policy.cpuOvercommit;
}

function ramCapacity(host: PlacementHost, policy: PlacementPolicy): number {
  return Math.max(0, host.ramMb - policy.reservedRamMb) * policy.ramOvercommit;
}

/** The first filter `host` fails, or null. Pools are checked by the caller (choosePool). */
function failedFilter(host: PlacementHost, request: PlacementRequest, policy: PlacementPolicy): PlacementFilter | null {
  if (host.state !== 'up') return 'state';
  if (host.adminState !== 'active') return 'admin';
  if (!host.connected) return 'agent';
  if (request.excludeHostIds !== undefined && request.excludeHostIds.has(host.id)) return 'excluded';
  if (host.claimedCpu + request.cpu > cpuCapacity(host, policy)) return 'cpu';
  if (host.claimedRamMb + request.ramMb > ramCapacity(host, policy)) return 'ram';
  return null;
}

function checkRequest(request: PlacementRequest, policy: PlacementPolicy): void {
  for (const [k, v] of [
    ['cpu', request.cpu],
    ['ramMb', request.ramMb],
    ['diskGb', request.diskGb],
  ] as const) {
    if (!Number.isFinite(v) || v < 0) throw new RangeError(`placement request: ${k} must be a finite number >= 0, got ${v}`);
  }
  for (const k of ['cpuOvercommit', 'ramOvercommit', 'diskOvercommit', 'reservedRamMb', 'fitWeight', 'antiAffinityWeight'] as const) {
    const v = policy[k];
    if (!Number.isFinite(v) || v < 0) throw new RangeError(`placement policy: ${k} must be a finite number >= 0, got ${v}`);
  }
}

/**
 * Choose a host and a pool for `request` in its area, or say why no host fits.
 *
 * Deterministic: the same snapshot and request always give the same answer (ties go to the host
 * first by name). Throws RangeError only for a malformed request or policy (negative or NaN
 * sizes) — a programming error, since the API validates sizes before placement.
 */
export function schedule(
  snapshot: PlacementSnapshot,
  request: PlacementRequest,
  policy: PlacementPolicy = DEFAULT_PLACEMENT_POLICY,
): PlacementResult {
  checkRequest(request, policy);
  const area = snapshot.areas.get(request.areaId);
  const hosts = area?.hosts ?? [];
  const pools = area?.pools ?? [];
  const pack = policy.strategy === 'pack';

  // The shared pool the strategy prefers is the same for every host that can use every shared
  // pool of the area (no activePools, no local pools): choose it once per decision.
  const commonPool = choosePool(pools, COMMON_HOST, request, policy);
  const cpuOver = policy.cpuOvercommit;
  const ramOver = policy.ramOvercommit;
  const reserved = policy.reservedRamMb;
  const exclude = request.excludeHostIds;
  const haWeight = request.ha ? policy.antiAffinityWeight : 0;
  const haSpots = request.ha ? area?.haByWorkspace.get(request.workspaceId) : undefined;
  const haIndexes = haSpots?.hostIndexes ?? [];
  const haCounts = haSpots?.counts ?? [];
  const haCount = haIndexes.length;
  let haNext = 0; // first entry of haIndexes not below the current host

  let bestIndex = -1;
  let bestScore = -Infinity;
  let bestFit = 0;
  let bestHa = 0;
  let bestPool = -1;
  let bestRoom = 0;
  let candidates = 0;
  // The hot loop: the filters of failedFilter(), inlined, cheapest first; no allocation per host.
  for (let i = 0; i < hosts.length; i++) {
    const host = hosts[i] as PlacementHost;
    if (host.state !== 'up' || host.adminState !== 'active' || !host.connected) continue;
    const cpuCap = host.cpuCount * cpuOver;
    const cpuLeft = cpuCap - host.claimedCpu - request.cpu;
    if (cpuLeft < 0) continue;
    const ramCap = Math.max(0, host.ramMb - reserved) * ramOver;
    const ramLeft = ramCap - host.claimedRamMb - request.ramMb;
    if (ramLeft < 0) continue;
    if (exclude !== undefined && exclude.has(host.id)) continue;
    let poolIndex = commonPool.index;
    let room = commonPool.room;
    if (host.activePools !== undefined || host.localPools !== undefined) {
      const own = choosePool(pools, host, request, policy);
      poolIndex = own.index;
      room = own.room;
    }
    if (poolIndex === -1) continue;
    candidates++;
    // Fraction of the host's (overcommitted) CPU and RAM still free after this VM, in [0, 1].
    // A host of capacity 0 only gets here for a request of size 0; count it as full.
    const free = ((cpuCap > 0 ? cpuLeft / cpuCap : 0) + (ramCap > 0 ? ramLeft / ramCap : 0)) / 2;
    const fit = pack ? 1 - free : free;
    // (Bounds checked first: an out-of-range array read is a slow path in V8.)
    while (haNext < haCount && (haIndexes[haNext] as number) < i) haNext++;
    const ha = haNext < haCount && haIndexes[haNext] === i ? (haCounts[haNext] as number) : 0;
    const score = policy.fitWeight * fit - haWeight * ha;
    if (score > bestScore) {
      bestIndex = i;
      bestScore = score;
      bestFit = fit;
      bestHa = ha;
      bestPool = poolIndex;
      bestRoom = room;
    }
  }

  if (bestIndex === -1) return noPlacement(request, hosts, pools, policy);

  const host = hosts[bestIndex] as PlacementHost;
  const pool = pools[bestPool] as PlacementPool;
  const freeCpuAfter = cpuCapacity(host, policy) - host.claimedCpu - request.cpu;
  const freeRamMbAfter = ramCapacity(host, policy) - host.claimedRamMb - request.ramMb;
  const poolFreeGbAfter = bestRoom - request.diskGb;
  const why =
    candidates === 1
      ? 'the only host that fits'
      : `${pack ? 'least' : 'most'} free capacity of ${candidates} candidates`;
  const haText = request.ha ? `, ${bestHa} HA VM${bestHa === 1 ? '' : 's'} of the workspace already there` : '';
  return {
    ok: true,
    hostId: host.id,
    hostName: host.name,
    poolId: pool.id,
    poolName: pool.name,
    reason: {
      strategy: policy.strategy,
      score: bestScore,
      fit: bestFit,
      sameWorkspaceHaVms: bestHa,
      candidates,
      areaHosts: hosts.length,
      freeCpuAfter,
      freeRamMbAfter,
      poolFreeGbAfter,
      message:
        `${policy.strategy}: ${why} (after this VM: ${fmt(freeCpuAfter)} vCPU, ${fmt(freeRamMbAfter)} MB free on ` +
        `${host.name}, ${fmt(poolFreeGbAfter)} GB in pool ${pool.name}${haText})`,
    },
  };
}

function fmt(n: number): string {
  return Number.isInteger(n) ? String(n) : n.toFixed(1);
}

const FILTER_WORDS: Record<PlacementFilter, string> = {
  state: 'not up',
  admin: 'in maintenance or drained',
  agent: 'without a connected agent',
  excluded: 'excluded',
  cpu: 'short of vCPU',
  ram: 'short of RAM',
  pool: 'without pool room',
};

/** The slow path, only when nothing fits: name the first failing filter of every host. */
function noPlacement(
  request: PlacementRequest,
  hosts: readonly PlacementHost[],
  pools: readonly PlacementPool[],
  policy: PlacementPolicy,
): NoPlacement {
  const rejections: HostRejection[] = [];
  const counts: Partial<Record<PlacementFilter, number>> = {};
  for (const host of hosts) {
    const filter = failedFilter(host, request, policy) ?? 'pool';
    counts[filter] = (counts[filter] ?? 0) + 1;
    rejections.push({ hostId: host.id, hostName: host.name, filter, message: rejectionMessage(filter, host, request, pools, policy) });
  }
  const wanted = `${fmt(request.cpu)} vCPU, ${fmt(request.ramMb)} MB, ${fmt(request.diskGb)} GB`;
  let message: string;
  if (hosts.length === 0) {
    message = 'the area has no hosts';
  } else {
    const parts = (Object.keys(FILTER_WORDS) as PlacementFilter[])
      .filter((f) => counts[f] !== undefined)
      .map((f) => `${counts[f]} ${FILTER_WORDS[f]}`);
    message = `no host of the area can take ${wanted}: ${parts.join(', ')}`;
  }
  return { ok: false, areaId: request.areaId, rejections, counts, message };
}

function rejectionMessage(
  filter: PlacementFilter,
  host: PlacementHost,
  request: PlacementRequest,
  pools: readonly PlacementPool[],
  policy: PlacementPolicy,
): string {
  switch (filter) {
    case 'state':
      return `host is ${host.state}`;
    case 'admin':
      return `host is in ${host.adminState}`;
    case 'agent':
      return 'agent not connected';
    case 'excluded':
      return 'excluded by the request';
    case 'cpu':
      return `needs ${fmt(request.cpu)} vCPU, ${fmt(Math.max(0, cpuCapacity(host, policy) - host.claimedCpu))} free (${host.cpuCount} CPUs × ${policy.cpuOvercommit})`;
    case 'ram':
      return `needs ${fmt(request.ramMb)} MB, ${fmt(Math.max(0, ramCapacity(host, policy) - host.claimedRamMb))} MB free`;
    case 'pool': {
      let most = -Infinity;
      let usable = 0;
      for (const pool of pools) {
        if (request.poolIds !== undefined && !request.poolIds.has(pool.id)) continue;
        const room = poolRoom(pool, host, policy);
        if (room === -Infinity) continue;
        usable++;
        most = Math.max(most, room);
      }
      return usable === 0
        ? 'no usable pool of the area on this host'
        : `needs ${fmt(request.diskGb)} GB, at most ${fmt(Math.max(0, most))} GB free in its pools`;
    }
  }
}

/**
 * The snapshot once `placement` of `request` is claimed: the host's CPU, RAM and HA count and the
 * pool's claimed disk grow. Copies only the area's slice (structural sharing), so a planner that
 * places many VMs in a row (a burst, an evacuation) sees its own earlier choices.
 */
export function applyPlacement(snapshot: PlacementSnapshot, request: PlacementRequest, placement: Placement): PlacementSnapshot {
  const area = snapshot.areas.get(request.areaId);
  const hostIndex = area ? area.hosts.findIndex((h) => h.id === placement.hostId) : -1;
  const poolIndex = area ? area.pools.findIndex((p) => p.id === placement.poolId) : -1;
  if (!area || hostIndex === -1 || poolIndex === -1) {
    throw new RangeError(`placement ${placement.hostName}/${placement.poolName} is not in area ${request.areaId} of this snapshot`);
  }
  const host = area.hosts[hostIndex] as PlacementHost;
  const pool = area.pools[poolIndex] as PlacementPool;
  const newHost: PlacementHost = {
    ...host,
    claimedCpu: host.claimedCpu + request.cpu,
    claimedRamMb: host.claimedRamMb + request.ramMb,
  };
  if (request.ha) {
    const ha = new Map(host.haVmsByWorkspace ?? []);
    ha.set(request.workspaceId, (ha.get(request.workspaceId) ?? 0) + 1);
    newHost.haVmsByWorkspace = ha;
  }
  const pools = area.pools.slice();
  if (pool.shared) {
    pools[poolIndex] = { ...pool, claimedGb: pool.claimedGb + request.diskGb };
  } else {
    const local = new Map(host.localPools ?? []);
    const usage = local.get(pool.id) ?? { capacityGb: 0, claimedGb: 0 };
    local.set(pool.id, { ...usage, claimedGb: usage.claimedGb + request.diskGb });
    newHost.localPools = local;
  }
  let haByWorkspace = area.haByWorkspace;
  if (request.ha) {
    const spots = area.haByWorkspace.get(request.workspaceId) ?? { hostIndexes: [], counts: [] };
    const hostIndexes = spots.hostIndexes.slice();
    const counts = spots.counts.slice();
    let at = 0;
    while (at < hostIndexes.length && (hostIndexes[at] as number) < hostIndex) at++;
    if (hostIndexes[at] === hostIndex) counts[at] = (counts[at] as number) + 1;
    else {
      hostIndexes.splice(at, 0, hostIndex);
      counts.splice(at, 0, 1);
    }
    const copy = new Map(area.haByWorkspace);
    copy.set(request.workspaceId, { hostIndexes, counts });
    haByWorkspace = copy;
  }
  const hosts = area.hosts.slice();
  hosts[hostIndex] = newHost;
  const areas = new Map(snapshot.areas);
  areas.set(request.areaId, { areaId: area.areaId, hosts, pools, haByWorkspace });
  return { areas };
}
