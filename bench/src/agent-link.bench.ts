// agent-link.bench — the orchestrator's CPU and memory with 0, 200 and 1,000 simulated hosts
// streaming heartbeats at 1 Hz over the agent link (mutual TLS, one Connect stream each).
//
// A real orchestrator runs as its own process on a fresh PostgreSQL database, with NATS; the
// benchmark logs in as the bootstrap admin, creates an area and one join token per host, and
// enrolls simulated agents (`@kloudak/orchestrator/agent-testing`) that run in worker processes
// (agent-link-sim-worker.js), so the load generator never shares the server's CPU accounting. At
// each step the sims heartbeat for a warm-up and then a measured window, during which the
// benchmark reads the server's CPU time and memory from /proc, times GET /healthz (a probe of the
// event loop), and the sims record the latency of every heartbeat → lease grant.
//
// Baseline, same run, same sims, same identities and same TLS: agent-link-baseline-server.js, a
// bare grpc-js server with the orchestrator's CA and server certificate that answers Hello with a
// HelloAck and each heartbeat with a LeaseGrant (no database, liveness, usage or logging). The
// ratio Kloudak/baseline is what the orchestrator's session handling costs on top of
// "gRPC + TLS + protobuf" for the same stream of heartbeats.
//
// Environment:
//   BENCH_STEPS        comma list of host counts             (default 200,1000; 0 is always measured)
//   BENCH_WARMUP_S     unmeasured seconds before each window (default 10)
//   BENCH_WINDOW_S     measured seconds per step             (default 30)
//   BENCH_SIM_WORKERS  processes running the sims            (default 2)
//   BENCH_ENROLL_CONCURRENCY  enrollments in flight, all workers together (default 16)
//   BENCH_START_CONCURRENCY   Connect+Hello in flight per worker          (default 50)
//   BENCH_ORCHESTRATOR_NODE_ARGS  node options of the orchestrator process (e.g. --cpu-prof)
//   KLOUDAK_TEST_PG_URL  PostgreSQL server for the fresh database; NATS_URL (nats://127.0.0.1:4222)
import { mkdtempSync, rmSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { freePort, freshDatabase, withPg } from '@kloudak/testkit';
import type { WindowReport } from './agent-link-sim-worker.js';
import { enrollHosts, joinTokens, mergedLatencies, runHosts, SimWorker, startFleetOrchestrator } from './sim-fleet.js';
import {
  envNumber,
  machine,
  machineBusyPct,
  machineCpuSeconds,
  memoryKiB,
  onCleanup,
  openFilesLimit,
  processCpuSeconds as cpuSeconds,
  progress,
  quantile,
  restCall,
  runBench,
  runCleanups,
  startChild,
  table,
  writeResults,
  type ChildServer,
  backendPids,
} from './harness.js';

const BASELINE_SERVER = fileURLToPath(new URL('./agent-link-baseline-server.js', import.meta.url));

const STEPS = (process.env['BENCH_STEPS'] ?? '200,1000')
  .split(',')
  .map((s) => Number(s.trim()))
  .filter((n) => n > 0);
if (STEPS.some((n) => !Number.isInteger(n)) || STEPS.length === 0) throw new Error('BENCH_STEPS must be a comma list of positive integers');
const MAX_HOSTS = Math.max(...STEPS);
const WARMUP_S = envNumber('BENCH_WARMUP_S', 10);
const WINDOW_S = envNumber('BENCH_WINDOW_S', 30);
const WORKERS = Math.round(envNumber('BENCH_SIM_WORKERS', 2));
const ENROLL_CONCURRENCY = Math.round(envNumber('BENCH_ENROLL_CONCURRENCY', 16));
const START_CONCURRENCY = Math.round(envNumber('BENCH_START_CONCURRENCY', 50));
const HEARTBEAT_MS = 1000;
const NATS_URL = process.env['NATS_URL'] ?? 'nats://127.0.0.1:4222';
const ADMIN = { username: 'benchadmin', password: 'Bench-link-pass-0123456789' };

// ---------- database figures ----------


/** Rows of HostUsageSample now, and PostgreSQL's (lagging, ~1–10 s) counter of Host row updates. */
function dbCounters(url: string): Promise<{ usageRows: number; usageSamples: number; hostUpdates: number }> {
  return withPg(url, async (c) => {
    const u = await c.query<{ n: string; s: string | null }>('SELECT count(*) AS n, sum(samples) AS s FROM "HostUsageSample"');
    const h = await c.query<{ n: string }>(`SELECT n_tup_upd AS n FROM pg_stat_user_tables WHERE relname = 'Host'`);
    return { usageRows: Number(u.rows[0]?.n ?? 0), usageSamples: Number(u.rows[0]?.s ?? 0), hostUpdates: Number(h.rows[0]?.n ?? 0) };
  });
}

/** HostUsageSample grouped by minute: the proof that heartbeats are downsampled, not stored. */
function usageByMinute(url: string): Promise<{ minute: string; rows: number; samples: number }[]> {
  return withPg(url, async (c) => {
    const r = await c.query<{ at: Date; rows: string; samples: string }>(
      'SELECT "at", count(*) AS rows, sum(samples) AS samples FROM "HostUsageSample" GROUP BY "at" ORDER BY "at"',
    );
    return r.rows.map((x) => ({ minute: x.at.toISOString().slice(11, 16), rows: Number(x.rows), samples: Number(x.samples) }));
  });
}

// ---------- one measured window ----------

/** Figures of one step. */
interface StepResult {
  server: 'kloudak' | 'baseline';
  hosts: number;
  windowS: number;
  /** Server process, % of one core. */
  cpuPct: number;
  /** CPU of the server per lease grant, µs (NaN with no hosts). */
  cpuUsPerGrant: number;
  rssMiB: { mean: number; max: number; peakSinceStart: number };
  grantLatencyMs: { p50: number; p95: number; p99: number; max: number };
  /** Heartbeats sent and grants received per second, all sims together. */
  heartbeatsPerS: number;
  grantsPerS: number;
  outstandingAtEnd: number;
  outstandingOver2s: number;
  sessionsOpened: number;
  sessionsEnded: number;
  healthzMs: { p50: number; max: number; n: number };
  /** Sims' worker processes together, % of one core; their worst event-loop delay p99/max. */
  simsCpuPct: number;
  simsLoopDelayMs: { p99: number; max: number };
  /** PostgreSQL backends of the orchestrator's database, % of one core (NaN for the baseline). */
  dbCpuPct: number;
  /** Whole machine, % of one core (so up to 100 × cores). */
  machinePct: number;
  /** HostUsageSample rows added during the window and Host row updates (pg_stat, approximate). */
  usageRowsWritten: number;
  hostRowUpdates: number;
}

const r2 = (n: number) => Math.round(n * 100) / 100;
const r1 = (n: number) => Math.round(n * 10) / 10;

async function measure(
  server: 'kloudak' | 'baseline',
  hosts: number,
  srv: ChildServer,
  workers: SimWorker[],
  databaseUrl: string | undefined,
): Promise<StepResult> {
  const pid = srv.child.pid as number;
  progress(`${server} ${hosts} hosts: warm-up ${WARMUP_S}s, then ${WINDOW_S}s measured`);
  await new Promise((r) => setTimeout(r, WARMUP_S * 1000));
  // The pool may replace a backend during the window: count each backend's CPU from the window's
  // start (or from 0, for one that appeared later) to its end; one gone by then cannot be read
  // any more and is left out.
  const dbStart = new Map<number, number>();
  if (databaseUrl) for (const p of await backendPids(databaseUrl)) dbStart.set(p, cpuSeconds(p));
  const dbWindowCpu = async (): Promise<number> => {
    if (!databaseUrl) return NaN;
    let total = 0;
    const now = new Set(await backendPids(databaseUrl));
    for (const p of new Set([...dbStart.keys(), ...now])) {
      const end = cpuSeconds(p);
      const start = dbStart.get(p) ?? 0;
      if (Number.isFinite(end) && Number.isFinite(start)) total += end - start;
    }
    return total;
  };
  const db0 = databaseUrl ? await dbCounters(databaseUrl) : undefined;
  await Promise.all(workers.map((w) => w.request({ op: 'windowStart' })));
  const t0 = performance.now();
  const cpu0 = cpuSeconds(pid);
  const m0 = machineCpuSeconds().busy;
  const rss: number[] = [];
  const healthz: number[] = [];
  // Sample memory every second and time one GET /healthz half a second later, until the window ends.
  const end = t0 + WINDOW_S * 1000;
  while (performance.now() < end) {
    rss.push(memoryKiB(pid).rss);
    await new Promise((r) => setTimeout(r, Math.min(500, Math.max(0, end - performance.now()))));
    if (performance.now() >= end) break;
    const h0 = performance.now();
    const res = await fetch(`${srv.url}/healthz`);
    await res.text();
    if (res.status === 200) healthz.push(performance.now() - h0);
    await new Promise((r) => setTimeout(r, Math.max(0, Math.min(500 - (performance.now() - h0), end - performance.now()))));
  }
  const cpu1 = cpuSeconds(pid);
  const dbS = await dbWindowCpu();
  const m1 = machineCpuSeconds().busy;
  const wallS = (performance.now() - t0) / 1000;
  const reports = await Promise.all(workers.map((w) => w.windowEnd()));
  const db1 = databaseUrl ? await dbCounters(databaseUrl) : undefined;
  const mem = memoryKiB(pid);

  const lat = mergedLatencies(reports);
  const hz = Float64Array.from(healthz).sort();
  const sum = <K extends keyof WindowReport>(k: K) => reports.reduce((n, r) => n + (r[k] as number), 0);
  const grants = sum('grants');
  const serverCpuS = cpu1 - cpu0;
  const result: StepResult = {
    server,
    hosts,
    windowS: r2(wallS),
    cpuPct: r1((100 * serverCpuS) / wallS),
    cpuUsPerGrant: grants > 0 ? Math.round((serverCpuS * 1e6) / grants) : NaN,
    rssMiB: { mean: r1(rss.reduce((a, b) => a + b, 0) / rss.length / 1024), max: r1(Math.max(...rss) / 1024), peakSinceStart: r1(mem.hwm / 1024) },
    grantLatencyMs: { p50: r2(quantile(lat, 0.5)), p95: r2(quantile(lat, 0.95)), p99: r2(quantile(lat, 0.99)), max: r2(lat[lat.length - 1] ?? NaN) },
    heartbeatsPerS: r1(sum('heartbeatsSent') / wallS),
    grantsPerS: r1(grants / wallS),
    outstandingAtEnd: sum('outstanding'),
    outstandingOver2s: sum('outstandingOver2s'),
    sessionsOpened: sum('sessionsOpened'),
    sessionsEnded: sum('sessionsEnded'),
    healthzMs: { p50: r2(quantile(hz, 0.5)), max: r2(hz[hz.length - 1] ?? NaN), n: hz.length },
    simsCpuPct: r1((100 * sum('cpuS')) / wallS),
    simsLoopDelayMs: { p99: r2(Math.max(...reports.map((r) => r.loopDelayMs.p99))), max: r2(Math.max(...reports.map((r) => r.loopDelayMs.max))) },
    dbCpuPct: databaseUrl ? r1((100 * dbS) / wallS) : NaN,
    machinePct: r1((100 * (m1 - m0)) / wallS),
    usageRowsWritten: db0 && db1 ? db1.usageRows - db0.usageRows : NaN,
    hostRowUpdates: db0 && db1 ? db1.hostUpdates - db0.hostUpdates : NaN,
  };
  progress(
    `${server} ${hosts} hosts: CPU ${result.cpuPct}% (${result.cpuUsPerGrant} µs/grant), RSS ${result.rssMiB.mean} MiB (max ${result.rssMiB.max}), ` +
      `grant p50/p95/p99 ${result.grantLatencyMs.p50}/${result.grantLatencyMs.p95}/${result.grantLatencyMs.p99} ms, ` +
      `hb/s ${result.heartbeatsPerS} grants/s ${result.grantsPerS}, outstanding ${result.outstandingAtEnd} (>2s ${result.outstandingOver2s}), ` +
      `sessions +${result.sessionsOpened}/-${result.sessionsEnded}, healthz p50 ${result.healthzMs.p50} ms, sims CPU ${result.simsCpuPct}% ` +
      `loop p99 ${result.simsLoopDelayMs.p99} ms, db CPU ${result.dbCpuPct}%, machine ${result.machinePct}%` +
      (databaseUrl ? `, usage rows +${result.usageRowsWritten}, Host updates ~${result.hostRowUpdates}` : ''),
  );
  return result;
}

// ---------- the run ----------

/** Make sure every sim worker runs its share of `hosts`, all on `address`. */
function startHosts(workers: SimWorker[], address: string, hosts: number): Promise<number> {
  return runHosts(workers, [address], hosts, HEARTBEAT_MS, START_CONCURRENCY);
}

interface Setup {
  tokensS: number;
  enrollS: number[];
  connectS: Record<string, number>;
}

async function main(): Promise<number> {
  const started = new Date();
  // Each host is one TCP connection, so one descriptor in the server and one in a worker; the
  // children inherit this process's limit. A limit too low fails here, not halfway through.
  const nofile = openFilesLimit();
  const needed = MAX_HOSTS + 256;
  if (nofile < needed) {
    throw new Error(`the open-file limit is ${nofile}, the server needs about ${needed} for ${MAX_HOSTS} hosts: raise it (ulimit -n ${Math.max(4096, needed)}) and run again`);
  }
  const busyBefore = await machineBusyPct();
  if (busyBefore > 25) progress(`warning: the machine is already ${busyBefore}% of a core busy before the bench starts; figures will be noisy`);
  const results: StepResult[] = [];
  const setup: Setup = { tokensS: 0, enrollS: [], connectS: {} };
  let minutes: { minute: string; rows: number; samples: number }[] = [];
  let totals = { usageRows: 0, usageSamples: 0, hostUpdates: 0 };
  try {
    const dataDir = mkdtempSync(join(tmpdir(), 'kloudak-bench-link-'));
    onCleanup(`remove ${dataDir}`, () => rmSync(dataDir, { recursive: true, force: true }));
    const db = await freshDatabase('kloudak_bench');
    onCleanup(`drop database ${db.name}`, () => db.drop());
    progress(`fresh database ${db.name}, open-file limit ${nofile}`);

    // ----- Kloudak -----
    const { srv: orch, agents: orchAddress } = await startFleetOrchestrator({
      name: 'orchestrator',
      dataDir,
      databaseUrl: db.url,
      natsUrl: NATS_URL,
      heartbeatMs: HEARTBEAT_MS,
      admin: ADMIN,
      // e.g. "--cpu-prof --cpu-prof-dir=/tmp/prof" to see where the server's CPU goes.
      nodeArgs: (process.env['BENCH_ORCHESTRATOR_NODE_ARGS'] ?? '').split(' ').filter(Boolean),
    });
    progress(`orchestrator ready on ${orch.url}, agents on ${orchAddress} (pid ${orch.child.pid})`);
    const login = await restCall<{ token: string }>(orch.url, 'POST', '/auth/login', ADMIN);
    if (login.status !== 200 || !login.body.token) throw new Error(`login: HTTP ${login.status} ${JSON.stringify(login.body)}`);
    const token = login.body.token;
    const area = await restCall<{ id: string }>(orch.url, 'POST', '/areas', { name: 'bench-link', subnet: '10.200.0.0/16', gateway: '10.200.0.1', vlanRange: '100-199' }, token);
    if (area.status !== 201) throw new Error(`create area: HTTP ${area.status} ${JSON.stringify(area.body)}`);
    let t = performance.now();
    const tokens = await joinTokens(orch.url, token, area.body.id, MAX_HOSTS);
    setup.tokensS = r2((performance.now() - t) / 1000);
    progress(`${MAX_HOSTS} join tokens in ${setup.tokensS}s`);

    const workers = Array.from({ length: WORKERS }, (_, i) => SimWorker.start(i));
    results.push(await measure('kloudak', 0, orch, workers, db.url));

    let enrolled = 0;
    for (const hosts of [...STEPS].sort((a, b) => a - b)) {
      // Enroll the hosts this step adds, host i in worker i % W (round-robin, like shareOf).
      t = performance.now();
      await enrollHosts(workers, orchAddress, tokens, { from: enrolled, to: hosts, prefix: 'bench-kvm' }, ENROLL_CONCURRENCY);
      setup.enrollS.push(r2((performance.now() - t) / 1000));
      progress(`enrolled hosts ${enrolled}..${hosts - 1} in ${setup.enrollS.at(-1)}s`);
      enrolled = hosts;
      setup.connectS[`kloudak-${hosts}`] = r2(await startHosts(workers, orchAddress, hosts));
      progress(`kloudak: ${hosts} sims connected (HelloAck) in ${setup.connectS[`kloudak-${hosts}`]}s`);
      const r = await measure('kloudak', hosts, orch, workers, db.url);
      results.push(r);
    }
    await Promise.all(workers.map((w) => w.request({ op: 'stopAll' })));
    // A graceful stop flushes the open usage buckets, so the table below is complete.
    await orch.stop();
    totals = await dbCounters(db.url);
    minutes = await usageByMinute(db.url);

    // ----- baseline, same sims and identities, same CA and server certificate -----
    const basePort = await freePort();
    const base = await startChild({
      name: 'baseline server',
      script: BASELINE_SERVER,
      env: { BASELINE_AGENT_PORT: String(basePort), BASELINE_CA_DIR: join(dataDir, 'ca'), BASELINE_HEARTBEAT_MS: String(HEARTBEAT_MS) },
      portVar: 'BASELINE_PORT',
      readyPath: '/readyz',
    });
    const baseAddress = `127.0.0.1:${basePort}`;
    progress(`baseline server ready, agents on ${baseAddress} (pid ${base.child.pid})`);
    results.push(await measure('baseline', 0, base, workers, undefined));
    for (const hosts of [...STEPS].sort((a, b) => a - b)) {
      setup.connectS[`baseline-${hosts}`] = r2(await startHosts(workers, baseAddress, hosts));
      progress(`baseline: ${hosts} sims connected in ${setup.connectS[`baseline-${hosts}`]}s`);
      results.push(await measure('baseline', hosts, base, workers, undefined));
    }
    await Promise.all(workers.map((w) => w.stop()));
    await base.stop();
  } finally {
    await runCleanups();
  }

  // ----- report -----
  const rows: (string | number)[][] = [
    ['server', 'hosts', 'CPU %', 'µs/grant', 'RSS MiB mean/max', 'grant p50/p95/p99/max ms', 'hb/s', 'grants/s', 'healthz p50/max ms', 'sims CPU %', 'sims loop p99 ms', 'db CPU %', 'machine %', 'CPU ratio', 'RSS ratio'],
  ];
  for (const r of results) {
    const b = results.find((x) => x.server === 'baseline' && x.hosts === r.hosts);
    const k = r.server === 'kloudak' && b;
    const nan = (n: number, s = String(n)) => (Number.isNaN(n) ? '-' : s);
    rows.push([
      r.server,
      r.hosts,
      r.cpuPct.toFixed(1),
      nan(r.cpuUsPerGrant),
      `${r.rssMiB.mean.toFixed(1)}/${r.rssMiB.max.toFixed(1)}`,
      r.hosts ? `${r.grantLatencyMs.p50.toFixed(2)}/${r.grantLatencyMs.p95.toFixed(2)}/${r.grantLatencyMs.p99.toFixed(2)}/${r.grantLatencyMs.max.toFixed(1)}` : '-',
      r.heartbeatsPerS.toFixed(1),
      r.grantsPerS.toFixed(1),
      `${r.healthzMs.p50.toFixed(2)}/${r.healthzMs.max.toFixed(2)}`,
      r.simsCpuPct.toFixed(1),
      r.simsLoopDelayMs.p99.toFixed(1),
      nan(r.dbCpuPct, r.dbCpuPct.toFixed(1)),
      r.machinePct.toFixed(1),
      // A near-idle baseline makes a CPU ratio meaningless (0.1 % vs 0.3 % is "3×").
      k && b.cpuPct >= 1 ? `${(r.cpuPct / b.cpuPct).toFixed(2)}x` : '',
      k ? `${(r.rssMiB.mean / b.rssMiB.mean).toFixed(2)}x` : '',
    ]);
  }
  console.log(
    `\nagent-link.bench — orchestrator CPU and memory with simulated hosts heartbeating at 1 Hz over mTLS gRPC (one Connect stream each); ` +
      `${WARMUP_S}s warm-up then ${WINDOW_S}s measured per step; sims in ${WORKERS} worker processes; ${machine().cpus} cores.\n` +
      `baseline = bare grpc-js server, same CA/server certificate/mTLS, answers each heartbeat with a LeaseGrant (no DB, liveness, usage, logging). ` +
      `ratio = kloudak / baseline at the same host count.\n` +
      `CPU % = server process, % of one core; µs/grant = server CPU per lease grant; RSS sampled every second; grant latency = sim sends heartbeat → sim handles grant; ` +
      `healthz = GET /healthz timed from the bench process once a second; db CPU = the orchestrator database's PostgreSQL backends; machine = all cores busy (max ${100 * cpus().length}).\n`,
  );
  console.log(table(rows));
  const k = results.filter((r) => r.server === 'kloudak');
  const idle = k.find((r) => r.hosts === 0);
  const idleB = results.find((r) => r.server === 'baseline' && r.hosts === 0);
  let prevK = idle;
  let prevB = idleB;
  for (const r of k.filter((x) => x.hosts > 0)) {
    const b = results.find((x) => x.server === 'baseline' && x.hosts === r.hosts);
    if (!prevK || !b || !prevB) continue;
    // Memory per host from one step to the next: the first step also pays for code loaded and
    // compiled on first use, so the increment between two loaded steps is the better estimate.
    const perHost = (now: StepResult, before: StepResult) => (((now.rssMiB.mean - before.rssMiB.mean) * 1024) / (now.hosts - before.hosts)).toFixed(1);
    console.log(
      `${prevK.hosts}→${r.hosts} hosts: RSS ${perHost(r, prevK)} KiB per added host (baseline ${perHost(b, prevB)}); ` +
        `server CPU ${r.cpuUsPerGrant} µs/heartbeat (baseline ${b.cpuUsPerGrant}); HostUsageSample rows written in the window ${r.usageRowsWritten}, Host row updates ~${r.hostRowUpdates} (pg_stat)`,
    );
    prevK = r;
    prevB = b;
  }
  console.log(`\nHostUsageSample by minute (one row per host per minute; samples = heartbeats averaged into those rows):`);
  console.log(table([['minute (UTC)', 'rows', 'samples', 'samples/row'], ...minutes.map((m) => [m.minute, m.rows, m.samples, (m.samples / m.rows).toFixed(1)])]));
  console.log(`total: ${totals.usageRows} rows for ${totals.usageSamples} heartbeats (${(totals.usageSamples / Math.max(1, totals.usageRows)).toFixed(1)} heartbeats a row)`);
  console.log(`setup: ${MAX_HOSTS} join tokens ${setup.tokensS}s; enrollment per step ${setup.enrollS.join(', ')}s; connect ${JSON.stringify(setup.connectS)}`);

  const problems = results.filter((r) => r.hosts > 0 && (r.sessionsEnded > 0 || r.outstandingOver2s > 0 || r.grantsPerS < 0.95 * r.hosts));
  const file = writeResults('agent-link', started, {
    bench: 'agent-link',
    startedAt: started.toISOString(),
    finishedAt: new Date().toISOString(),
    machine: { ...machine(), busyPctBeforeStart: busyBefore, openFilesLimit: nofile },
    settings: { steps: STEPS, warmupS: WARMUP_S, windowS: WINDOW_S, workers: WORKERS, heartbeatMs: HEARTBEAT_MS, enrollConcurrency: ENROLL_CONCURRENCY, startConcurrency: START_CONCURRENCY },
    setup,
    results,
    usageByMinute: minutes,
    usageTotals: totals,
  });
  console.log(`\nresults: ${file}`);
  if (problems.length > 0) {
    console.error(`FAILED: sims did not keep up or sessions ended in: ${problems.map((p) => `${p.server} ${p.hosts}`).join(', ')}`);
    return 1;
  }
  return 0;
}

runBench('agent-link', main);
