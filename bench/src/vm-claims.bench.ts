// vm-claims.bench — claims committed per second: BENCH_CONCURRENCY (100) creates sent at once
// through REST (POST /workspaces/{ws}/vms, answered 202 once its claims transaction — workspace
// and area locks, quota, placement over the area's live claims, an address, the VM, its task —
// has committed), on PostgreSQL, against a baseline measured in the same run: the same number of
// trivial authenticated requests sent at once to the same server (GET /workspaces/{ws}/networks/
// {name}: token check, the caller's lookup and workspace access, one row read). claims/s = creates
// answered 202 ÷ wall time from the first request sent to the last answer; the baseline's req/s the
// same. ratio = claims/s ÷ baseline req/s: the share of a trivial request's throughput a claim keeps.
//
// The hosts are simulated (SimAgent from @kloudak/orchestrator/agent-testing: the real agent
// protocol over real sockets, each command answered at once): what is measured is the claims path,
// not the hosts. The create tasks the POSTs queue run on them meanwhile, as they would in service.
//
// Rounds interleave the paths (K,B then B,K, …); after each Kloudak round (untimed) every task is
// waited for, then the round's VMs are deleted through the API and their delete tasks waited for,
// so each round starts from the same state (no VMs).
//
// Environment:
//   BENCH_CONCURRENCY     requests sent at once per round (default 100)
//   BENCH_ROUNDS          measured rounds per path (default 5)
//   BENCH_WARMUP          unmeasured rounds per path first (default 1)
//   BENCH_HOSTS           simulated hosts in the area (default 2)
//   KLOUDAK_TEST_PG_URL   PostgreSQL for the fresh database (@kloudak/testkit's default)
// Needs PostgreSQL and NATS (scripts/bench.sh starts them).
import { randomBytes } from 'node:crypto';
import { ApiClient, must } from '@kloudak/e2e/api-client';
import { startInProcessOrchestrator } from '@kloudak/e2e/vm-harness';
import { SimAgent, enrollSimAgent } from '@kloudak/orchestrator/agent-testing';
import * as pb from '@kloudak/proto/agent';
import { waitFor } from '@kloudak/testkit';
import { benchCleanup, envNumber, machine, machineBusyPct, onCleanup, processCpuSeconds, progress, quantile, runBench, runCleanups, table, writeResults } from './harness.js';

const RUN = `kq${randomBytes(4).toString('hex')}`;
const CONCURRENCY = Math.round(envNumber('BENCH_CONCURRENCY', 100));
const ROUNDS = Math.round(envNumber('BENCH_ROUNDS', 5));
const WARMUP = Math.round(envNumber('BENCH_WARMUP', 1));
const HOSTS = Math.round(envNumber('BENCH_HOSTS', 2));
const ADMIN = { username: 'root-admin', password: 'Bench-Vm-Claims-Pass-2026!' };
const WS = `${RUN}-ws`;

type Path = 'kloudak' | 'baseline';

/** One round: CONCURRENCY requests sent at once. */
interface Round {
  round: number;
  wallMs: number;
  perSecond: number;
  latencyMs: { p50: number; p95: number; max: number };
  /** CPU of this process (server and client share it) during the round, % of one core. */
  cpuPct: number;
}

const fmt = (n: number, d = 1) => (Number.isFinite(n) ? n.toFixed(d) : '-');
const median = (xs: number[]) => quantile(Float64Array.from(xs).sort(), 0.5);

async function main(): Promise<number> {
  const started = new Date();
  const busyBefore = await machineBusyPct();
  if (busyBefore > 25) progress(`warning: the machine is already ${busyBefore}% of a core busy before the bench starts; figures will be noisy`);
  const rounds: Record<Path, Round[]> = { kloudak: [], baseline: [] };
  try {
    const orch = await startInProcessOrchestrator(benchCleanup, 'kloudak_bench_claims', ADMIN);
    const client = new ApiClient(() => orch.url, WS);
    const api = (method: string, path: string, body?: unknown) => client.call(method, path, body);
    await client.login(ADMIN);

    await must('area', 201, api('POST', '/areas', { name: RUN, subnet: '10.245.0.0/16', gateway: '10.245.0.1', vlanRange: '430-439' }));
    await must('pool', 201, api('POST', '/pools', { name: RUN, area: RUN, path: `/srv/${RUN}`, type: 'dir' }));
    await must('template', 201, api('POST', '/templates', { name: `${RUN}-tpl`, os: 'bench', cpu: 1, ramMb: 128, diskGb: 1, image: 'bench.qcow2' }));
    await must('workspace', 201, api('POST', '/workspaces', { name: WS }));

    // Simulated hosts: every command succeeds at once; the inventory reports the VMs made running.
    const running = new Set<string>();
    for (let i = 0; i < HOSTS; i++) {
      const jt = await must('join token', 201, api('POST', '/hosts/join-tokens', { area: RUN, expiresIn: 600 }));
      const address = `127.0.0.1:${orch.agentPort}`;
      const identity = await enrollSimAgent({ address, joinToken: jt['token'] as string, hostName: `${RUN}-sim${i}` });
      const agent = new SimAgent({
        address,
        identity,
        capacity: { cpuCount: 64, memoryBytes: 256n << 30n, diskBytes: 4000n << 30n },
        hello: { pools: [{ name: RUN, path: `/srv/${RUN}`, capacityBytes: 4000n << 30n, allocationBytes: 0n, availableBytes: 4000n << 30n, active: true }] },
        onCommand: (c) => {
          if (c.action?.$case === 'createVm') running.add(c.vmId);
          if (c.action?.$case === 'deleteVm') running.delete(c.vmId);
          if (c.action?.$case !== 'getInventory') return { ok: true };
          const domains = [...running].map((id) => ({ name: `kloudak-${id}`, uuid: id, vmId: id, state: pb.DomainState.DOMAIN_STATE_RUNNING, vcpus: 1, memoryBytes: 128n << 20n }));
          return { ok: true, payload: { $case: 'inventory', inventory: { domains, volumes: [], ovsPorts: [] } } };
        },
      });
      await agent.start();
      onCleanup(`stop simulated host ${i}`, () => agent.stop());
      await waitFor(async () => {
        const h = await orch.db.client.host.findUnique({ where: { id: identity.hostId } });
        return h?.state === 'up' && orch.agentLink.status(identity.hostId).connected;
      }, 10_000, `simulated host ${i} up`);
    }
    const net = await must('network', 202, api('POST', `/workspaces/${WS}/networks`, { name: 'net', area: RUN }));
    const settled = async (what: string) => {
      // Every task ended (the create and delete tasks run behind the answers).
      await waitFor(async () => (await orch.db.client.task.count({ where: { state: { in: ['queued', 'running', 'rolling_back'] } } })) === 0, 120_000, what);
      const failed = await orch.db.client.task.count({ where: { state: { in: ['failed', 'rolled_back'] } } });
      if (failed > 0) throw new Error(`${failed} task(s) failed or rolled back (${what})`);
    };
    await settled(`network ${String(net['network']['name'])} created`);

    /** Send `n` requests at once; every answer must have `status`. */
    const burst = async (round: number, send: (i: number) => Promise<Response>, status: number): Promise<Round> => {
      const cpu0 = processCpuSeconds(process.pid);
      const t0 = performance.now();
      const lat: number[] = [];
      const answers = await Promise.all(
        Array.from({ length: CONCURRENCY }, async (_, i) => {
          const s = performance.now();
          const res = await send(i);
          const body = await res.text();
          lat.push(performance.now() - s);
          return { status: res.status, body };
        }),
      );
      const wallMs = performance.now() - t0;
      const cpuPct = (100 * (processCpuSeconds(process.pid) - cpu0)) / (wallMs / 1000);
      const bad = answers.filter((a) => a.status !== status);
      if (bad.length > 0) throw new Error(`${bad.length} of ${CONCURRENCY} answers were not ${status}, e.g. ${bad[0]!.status} ${bad[0]!.body.slice(0, 300)}`);
      const sorted = Float64Array.from(lat).sort();
      return {
        round,
        wallMs,
        perSecond: CONCURRENCY / (wallMs / 1000),
        latencyMs: { p50: quantile(sorted, 0.5), p95: quantile(sorted, 0.95), max: sorted[sorted.length - 1] ?? NaN },
        cpuPct,
      };
    };
    const headers = () => ({ 'content-type': 'application/json', authorization: `Bearer ${client.token}` });

    const kloudakRound = async (round: number): Promise<Round> => {
      const names = Array.from({ length: CONCURRENCY }, (_, i) => `r${round + WARMUP}-${i}`);
      const r = await burst(
        round,
        (i) => fetch(`${orch.url}/api/v1/workspaces/${WS}/vms`, { method: 'POST', headers: headers(), body: JSON.stringify({ name: names[i], template: `${RUN}-tpl`, networks: ['net'], ha: false }) }),
        202,
      );
      // Untimed: the create tasks end, then the VMs go, so the next round starts from nothing.
      await settled(`round ${round}: create tasks`);
      await Promise.all(names.map((name) => must(`DELETE ${name}`, 202, api('DELETE', `/workspaces/${WS}/vms/${name}`))));
      await settled(`round ${round}: delete tasks`);
      const left = await orch.db.client.vm.count();
      if (left !== 0) throw new Error(`${left} VM(s) left after round ${round}`);
      return r;
    };
    const baselineRound = (round: number): Promise<Round> => burst(round, () => fetch(`${orch.url}/api/v1/workspaces/${WS}/networks/net`, { headers: headers() }), 200);

    progress(`run ${RUN}: ${HOSTS} simulated hosts, ${CONCURRENCY} requests at once, ${WARMUP} warm-up + ${ROUNDS} measured rounds per path`);
    for (let i = -WARMUP; i < ROUNDS; i++) {
      const order: Path[] = (i + WARMUP) % 2 === 0 ? ['kloudak', 'baseline'] : ['baseline', 'kloudak'];
      for (const p of order) {
        const r = p === 'kloudak' ? await kloudakRound(i) : await baselineRound(i);
        progress(
          `${i >= 0 ? `#${i}` : 'warm-up'} ${p.padEnd(8)} ${fmt(r.perSecond)}/s (${fmt(r.wallMs)} ms for ${CONCURRENCY}; latency p50 ${fmt(r.latencyMs.p50)} p95 ${fmt(r.latencyMs.p95)} ms)`,
        );
        if (i >= 0) rounds[p].push(r);
      }
    }
  } finally {
    await runCleanups();
  }

  const sum = (p: Path) => ({
    perSecond: median(rounds[p].map((r) => r.perSecond)),
    min: Math.min(...rounds[p].map((r) => r.perSecond)),
    max: Math.max(...rounds[p].map((r) => r.perSecond)),
    latencyP50: median(rounds[p].map((r) => r.latencyMs.p50)),
    latencyP95: median(rounds[p].map((r) => r.latencyMs.p95)),
    cpuPct: median(rounds[p].map((r) => r.cpuPct)),
  });
  const k = sum('kloudak');
  const b = sum('baseline');
  const ratio = k.perSecond / b.perSecond;
  const rows: (string | number)[][] = [['path', 'rounds', 'per s (median)', 'min', 'max', 'latency p50 ms', 'latency p95 ms', 'CPU %', 'ratio']];
  rows.push(['kloudak: claims (POST /vms → 202)', rounds.kloudak.length, fmt(k.perSecond), fmt(k.min), fmt(k.max), fmt(k.latencyP50), fmt(k.latencyP95), fmt(k.cpuPct, 0), `${ratio.toFixed(3)}x`]);
  rows.push(['baseline: GET a network (auth, 1 row)', rounds.baseline.length, fmt(b.perSecond), fmt(b.min), fmt(b.max), fmt(b.latencyP50), fmt(b.latencyP95), fmt(b.cpuPct, 0), '']);
  console.log(
    `\nvm-claims.bench — ${CONCURRENCY} concurrent creates through REST on PostgreSQL, each answered 202 after its claims transaction ` +
      `(${HOSTS} simulated hosts; the claims path is measured, not the hosts), against ${CONCURRENCY} concurrent trivial authenticated GETs ` +
      `to the same server; ${ROUNDS} measured rounds per path after ${WARMUP} warm-up, interleaved. per s = requests answered ÷ wall time of ` +
      `the round; latency = per request, median over the rounds; CPU = this process (server and client), % of one core.\n` +
      `Machine: ${machine().cpus} cores (${machine().cpuModel}), ${busyBefore}% of a core busy before the start.\n`,
  );
  console.log(table(rows));
  console.log(`\nclaims committed per second: ${fmt(k.perSecond)} (baseline ${fmt(b.perSecond)} req/s; ratio ${ratio.toFixed(3)}x)`);
  const file = writeResults('vm-claims', started, {
    bench: 'vm-claims',
    startedAt: started.toISOString(),
    finishedAt: new Date().toISOString(),
    machine: { ...machine(), busyPctBeforeStart: busyBefore },
    settings: { concurrency: CONCURRENCY, rounds: ROUNDS, warmup: WARMUP, hosts: HOSTS },
    summary: { kloudak: k, baseline: b },
    ratio,
    rounds,
  });
  console.log(`\nresults: ${file}`);
  return 0;
}

runBench('vm-claims', main);
