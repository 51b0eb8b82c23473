// soak.bench — 1,000 simulated hosts heartbeating for a long time (30 minutes by default) against
// one orchestrator, then against two on the same PostgreSQL and NATS, to make a leak visible: the
// orchestrators' RSS and V8 heap are sampled every 10 s and the slope after the warm-up is
// reported (least squares, MiB per hour). Also: server CPU per heartbeat, lease-grant latency
// (p50/p99/max over the whole run), sessions that ended, and hosts that were not `up` at any
// sample (a second orchestrator must never mark the first one's hosts down).
//
// Baseline, same run, same sims and identities: agent-link-baseline-server.js (bare grpc-js with
// the same CA and mutual TLS, answering each heartbeat with a LeaseGrant), for BENCH_BASELINE_S,
// sampled the same way (RSS only: it has no /metrics).
//
// Environment:
//   BENCH_HOSTS          simulated hosts                              (default 1000)
//   BENCH_SOAK_S         measured seconds per phase                   (default 1800)
//   BENCH_WARMUP_S       seconds before the slope is taken            (default 120)
//   BENCH_SAMPLE_S       seconds between samples                      (default 10)
//   BENCH_PHASES         comma list of orchestrator counts            (default 1,2)
//   BENCH_BASELINE_S     measured seconds of the baseline             (default 300)
//   BENCH_SIM_WORKERS    processes running the sims                   (default 2)
//   BENCH_START_CONCURRENCY  Connect+Hello in flight per worker         (default 10)
//   KLOUDAK_TEST_PG_URL  PostgreSQL server for the fresh database; NATS_URL (nats://127.0.0.1:4222)
import { mkdtempSync, rmSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { freePort, freshDatabase, withPg } from '@kloudak/testkit';
import {
  envNumber,
  machine,
  memoryKiB,
  onCleanup,
  openFilesLimit,
  processCpuSeconds,
  progress,
  quantile,
  restCall,
  runBench,
  runCleanups,
  startChild,
  table,
  writeResults,
  type ChildServer,
} from './harness.js';
import { enrollHosts, joinTokens, mergedLatencies, runHosts, SimWorker, startFleetOrchestrator } from './sim-fleet.js';

const BASELINE_SERVER = fileURLToPath(new URL('./agent-link-baseline-server.js', import.meta.url));

const HOSTS = Math.round(envNumber('BENCH_HOSTS', 1000));
const SOAK_S = envNumber('BENCH_SOAK_S', 1800);
const WARMUP_S = envNumber('BENCH_WARMUP_S', 120);
const SAMPLE_S = envNumber('BENCH_SAMPLE_S', 10);
const BASELINE_S = envNumber('BENCH_BASELINE_S', 300);
const WORKERS = Math.round(envNumber('BENCH_SIM_WORKERS', 2));
// 1,000 Hellos at once to a just-started orchestrator (each checked against the database) can
// outlast the 10 s Hello deadline on a busy machine; real agents would retry, the sims do not.
const START_CONCURRENCY = Math.round(envNumber('BENCH_START_CONCURRENCY', 10));
const PHASES = (process.env['BENCH_PHASES'] ?? '1,2')
  .split(',')
  .map((s) => Number(s.trim()))
  .filter((n) => n > 0);
if (PHASES.some((n) => !Number.isInteger(n) || n > 8) || PHASES.length === 0) throw new Error('BENCH_PHASES must be a comma list of orchestrator counts (1..8)');
const HEARTBEAT_MS = 1000;
const NATS_URL = process.env['NATS_URL'] ?? 'nats://127.0.0.1:4222';
const ADMIN = { username: 'benchadmin', password: 'Bench-soak-pass-0123456789' };

/** One sample of one server process. */
interface Sample {
  /** Seconds since the phase started. */
  t: number;
  rssMiB: number;
  /** V8 heap used (nodejs_heap_size_used_bytes of /metrics), MiB; NaN for the baseline. */
  heapMiB: number;
  cpuS: number;
}

/** Least-squares slope of y over t (seconds), per hour. */
export function slopePerHour(points: { t: number; y: number }[]): number {
  const n = points.length;
  if (n < 2) return NaN;
  const mt = points.reduce((a, p) => a + p.t, 0) / n;
  const my = points.reduce((a, p) => a + p.y, 0) / n;
  let num = 0;
  let den = 0;
  for (const p of points) {
    num += (p.t - mt) * (p.y - my);
    den += (p.t - mt) ** 2;
  }
  return den === 0 ? NaN : (num / den) * 3600;
}

async function heapMiB(url: string): Promise<number> {
  try {
    const res = await fetch(`${url}/metrics`);
    const text = await res.text();
    const m = /^nodejs_heap_size_used_bytes (\d+(?:\.\d+)?(?:e\+\d+)?)$/m.exec(text);
    return m ? Number(m[1]) / 1048576 : NaN;
  } catch {
    return NaN;
  }
}

/** Hosts of the database not `up`, and host-down events written so far. */
function hostHealth(url: string): Promise<{ notUp: number; downEvents: number }> {
  return withPg(url, async (c) => {
    const h = await c.query<{ n: string }>(`SELECT count(*) AS n FROM "Host" WHERE state <> 'up'`);
    const e = await c.query<{ n: string }>(`SELECT count(*) AS n FROM "OutboxEvent" WHERE entity = 'host' AND state IN ('down', 'suspect')`);
    return { notUp: Number(h.rows[0]?.n ?? 0), downEvents: Number(e.rows[0]?.n ?? 0) };
  });
}

/** What one phase measured. */
interface PhaseResult {
  name: string;
  servers: number;
  seconds: number;
  samples: Sample[][];
  rssMiB: { first: number; mean: number; max: number; last: number; slopePerHour: number }[];
  heapMiB: { mean: number; max: number; slopePerHour: number }[];
  cpuUsPerHeartbeat: number;
  grants: number;
  heartbeats: number;
  grantMs: { p50: number; p99: number; max: number };
  sessionsEnded: number;
  maxNotUp: number;
  downEvents: number;
}

const r1 = (n: number) => Math.round(n * 10) / 10;
const r2 = (n: number) => Math.round(n * 100) / 100;

async function soak(name: string, servers: ChildServer[], workers: SimWorker[], seconds: number, databaseUrl: string | undefined): Promise<PhaseResult> {
  const pids = servers.map((s) => s.child.pid as number);
  const samples: Sample[][] = servers.map(() => []);
  const latencies: Float64Array[] = [];
  let heartbeats = 0;
  let grants = 0;
  let sessionsEnded = 0;
  let maxNotUp = 0;
  const down0 = databaseUrl ? (await hostHealth(databaseUrl)).downEvents : 0;
  const cpu0 = pids.map((p) => processCpuSeconds(p));
  const t0 = performance.now();
  let last = t0;
  progress(`${name}: ${seconds}s, a sample every ${SAMPLE_S}s (slope after ${WARMUP_S}s)`);
  await Promise.all(workers.map((w) => w.request({ op: 'windowStart' })));
  while (performance.now() - t0 < seconds * 1000) {
    await new Promise((r) => setTimeout(r, Math.max(0, last + SAMPLE_S * 1000 - performance.now())));
    last = performance.now();
    const t = (last - t0) / 1000;
    const reports = await Promise.all(workers.map((w) => w.windowEnd()));
    await Promise.all(workers.map((w) => w.request({ op: 'windowStart' })));
    latencies.push(mergedLatencies(reports));
    for (const r of reports) {
      heartbeats += r.heartbeatsSent;
      grants += r.grants;
      sessionsEnded += r.sessionsEnded;
    }
    for (const [i, s] of servers.entries()) {
      const pid = pids[i] as number;
      samples[i]?.push({ t, rssMiB: memoryKiB(pid).rss / 1024, heapMiB: databaseUrl ? await heapMiB(s.url) : NaN, cpuS: processCpuSeconds(pid) - (cpu0[i] as number) });
    }
    if (databaseUrl) maxNotUp = Math.max(maxNotUp, (await hostHealth(databaseUrl)).notUp);
    if (samples[0]!.length % 6 === 0) {
      const cur = servers.map((_, i) => samples[i]!.at(-1)!);
      progress(`${name} t=${Math.round(t)}s RSS ${cur.map((c) => c.rssMiB.toFixed(0)).join('+')} MiB heap ${cur.map((c) => c.heapMiB.toFixed(0)).join('+')} MiB, not up ${maxNotUp}`);
    }
  }
  const wallS = (performance.now() - t0) / 1000;
  const all = new Float64Array(latencies.reduce((n, l) => n + l.length, 0));
  let o = 0;
  for (const l of latencies) {
    all.set(l, o);
    o += l.length;
  }
  all.sort();
  const cpuS = pids.reduce((n, p, i) => n + processCpuSeconds(p) - (cpu0[i] as number), 0);
  const after = (s: Sample[]) => s.filter((x) => x.t >= WARMUP_S);
  return {
    name,
    servers: servers.length,
    seconds: r1(wallS),
    samples,
    rssMiB: samples.map((s) => {
      const a = after(s);
      return {
        first: r1(a[0]?.rssMiB ?? NaN),
        mean: r1(a.reduce((n, x) => n + x.rssMiB, 0) / a.length),
        max: r1(Math.max(...a.map((x) => x.rssMiB))),
        last: r1(a.at(-1)?.rssMiB ?? NaN),
        slopePerHour: r2(slopePerHour(a.map((x) => ({ t: x.t, y: x.rssMiB })))),
      };
    }),
    heapMiB: samples.map((s) => {
      const a = after(s).filter((x) => Number.isFinite(x.heapMiB));
      return {
        mean: r1(a.reduce((n, x) => n + x.heapMiB, 0) / a.length),
        max: r1(Math.max(...a.map((x) => x.heapMiB))),
        slopePerHour: r2(slopePerHour(a.map((x) => ({ t: x.t, y: x.heapMiB })))),
      };
    }),
    cpuUsPerHeartbeat: grants > 0 ? Math.round((cpuS * 1e6) / grants) : NaN,
    grants,
    heartbeats,
    grantMs: { p50: r2(quantile(all, 0.5)), p99: r2(quantile(all, 0.99)), max: r2(all[all.length - 1] ?? NaN) },
    sessionsEnded,
    maxNotUp,
    downEvents: databaseUrl ? (await hostHealth(databaseUrl)).downEvents - down0 : 0,
  };
}

async function main(): Promise<number> {
  const started = new Date();
  const nofile = openFilesLimit();
  if (nofile < HOSTS + 256) throw new Error(`the open-file limit is ${nofile}: raise it (ulimit -n ${Math.max(4096, HOSTS + 256)}) and run again`);
  const results: PhaseResult[] = [];
  try {
    const dataDir = mkdtempSync(join(tmpdir(), 'kloudak-bench-soak-'));
    onCleanup(`remove ${dataDir}`, () => rmSync(dataDir, { recursive: true, force: true }));
    const db = await freshDatabase('kloudak_soak');
    onCleanup(`drop database ${db.name}`, () => db.drop());
    // Every instance shares the data dir: the agent CA and the JWT keys are the deployment's, not
    // an instance's (on several machines the same files are copied to each).
    const startOrchestrator = (i: number) =>
      startFleetOrchestrator({ name: `orchestrator ${i}`, dataDir, databaseUrl: db.url, natsUrl: NATS_URL, heartbeatMs: HEARTBEAT_MS, admin: ADMIN, timeoutMs: 120_000 });
    const first = await startOrchestrator(0);
    const login = await restCall<{ token: string }>(first.srv.url, 'POST', '/auth/login', ADMIN);
    if (login.status !== 200) throw new Error(`login: HTTP ${login.status} ${JSON.stringify(login.body)}`);
    const area = await restCall<{ id: string }>(first.srv.url, 'POST', '/areas', { name: 'bench-soak', subnet: '10.201.0.0/16', gateway: '10.201.0.1', vlanRange: '100-199' }, login.body.token);
    if (area.status !== 201) throw new Error(`create area: HTTP ${area.status} ${JSON.stringify(area.body)}`);
    const tokens = await joinTokens(first.srv.url, login.body.token, area.body.id, HOSTS);
    const workers = Array.from({ length: WORKERS }, (_, i) => SimWorker.start(i));
    await enrollHosts(workers, first.agents, tokens, { from: 0, to: HOSTS, prefix: 'soak-kvm' }, 16).catch((err: unknown) => {
      // The server's side of the failure (its error log lines) beside the client's.
      progress(`orchestrator output (tail):\n${first.srv.output().slice(-4000)}`);
      throw err;
    });
    progress(`${HOSTS} hosts enrolled`);
    await first.srv.stop();

    for (const n of PHASES) {
      const orchs = [];
      for (let i = 0; i < n; i++) orchs.push(await startOrchestrator(i));
      const connectS = await runHosts(workers, orchs.map((o) => o.agents), HOSTS, HEARTBEAT_MS, START_CONCURRENCY);
      progress(`${n} orchestrator(s): ${HOSTS} sims connected in ${connectS.toFixed(1)}s`);
      results.push(await soak(`kloudak x${n}`, orchs.map((o) => o.srv), workers, SOAK_S, db.url));
      await Promise.all(workers.map((w) => w.request({ op: 'stopAll' })));
      for (const o of orchs) await o.srv.stop();
    }

    const basePort = await freePort();
    const base = await startChild({
      name: 'baseline server',
      script: BASELINE_SERVER,
      env: { BASELINE_AGENT_PORT: String(basePort), BASELINE_CA_DIR: join(dataDir, 'ca'), BASELINE_HEARTBEAT_MS: String(HEARTBEAT_MS) },
      portVar: 'BASELINE_PORT',
      readyPath: '/readyz',
    });
    await runHosts(workers, [`127.0.0.1:${basePort}`], HOSTS, HEARTBEAT_MS, START_CONCURRENCY);
    results.push(await soak('baseline', [base], workers, BASELINE_S, undefined));
    await Promise.all(workers.map((w) => w.stop()));
    await base.stop();
  } finally {
    await runCleanups();
  }

  const base = results.find((r) => r.name === 'baseline');
  console.log(
    `\nsoak.bench — ${HOSTS} simulated hosts heartbeating at 1 Hz (mTLS gRPC, one stream each); Kloudak ${SOAK_S}s per phase, baseline ${BASELINE_S}s; ` +
      `a sample every ${SAMPLE_S}s, slopes from ${WARMUP_S}s on (least squares); ${machine().cpus} cores.\n` +
      `baseline = bare grpc-js server with the same CA and mutual TLS, answering each heartbeat with a LeaseGrant. ` +
      `RSS ratio = Kloudak mean (per instance) / baseline mean.\n`,
  );
  const rows: (string | number)[][] = [
    ['run', 'instance', 'RSS MiB first/mean/max/last', 'RSS slope MiB/h', 'heap MiB mean/max', 'heap slope MiB/h', 'µs CPU/heartbeat', 'grant p50/p99/max ms', 'sessions ended', 'hosts not up (max)', 'down/suspect events', 'RSS ratio'],
  ];
  for (const r of results) {
    for (const [i, m] of r.rssMiB.entries()) {
      const h = r.heapMiB[i]!;
      rows.push([
        r.name,
        i,
        `${m.first}/${m.mean}/${m.max}/${m.last}`,
        m.slopePerHour,
        Number.isNaN(h.mean) ? '-' : `${h.mean}/${h.max}`,
        Number.isNaN(h.slopePerHour) ? '-' : h.slopePerHour,
        i === 0 ? r.cpuUsPerHeartbeat : '',
        i === 0 ? `${r.grantMs.p50}/${r.grantMs.p99}/${r.grantMs.max}` : '',
        i === 0 ? r.sessionsEnded : '',
        i === 0 && r.name !== 'baseline' ? r.maxNotUp : '',
        i === 0 && r.name !== 'baseline' ? r.downEvents : '',
        base && r !== base ? `${(m.mean / base.rssMiB[0]!.mean).toFixed(2)}x` : '',
      ]);
    }
  }
  console.log(table(rows));
  const file = writeResults('soak', started, {
    bench: 'soak',
    startedAt: started.toISOString(),
    finishedAt: new Date().toISOString(),
    machine: { ...machine(), cores: cpus().length },
    settings: { hosts: HOSTS, soakS: SOAK_S, warmupS: WARMUP_S, sampleS: SAMPLE_S, phases: PHASES, baselineS: BASELINE_S, workers: WORKERS },
    results,
  });
  console.log(`\nresults: ${file}`);
  const bad = results.filter((r) => r.sessionsEnded > 0 || r.maxNotUp > 0 || r.downEvents > 0);
  if (bad.length > 0) {
    console.error(`FAILED: sessions ended or hosts marked not up in: ${bad.map((b) => b.name).join(', ')}`);
    return 1;
  }
  return 0;
}

runBench('soak', main);
