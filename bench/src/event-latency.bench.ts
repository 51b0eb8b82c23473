// event-latency.bench — from the commit of a state change to the clients of the workspace's event
// stream: p50/p99 at 1, 100 and 1,000 connected WebSocket clients and as many gRPC WatchEvents
// clients, against a bare NATS subscriber of the same subjects measured in the same run, on
// PostgreSQL.
//
// The orchestrator runs in this process (startInProcessOrchestrator, a fresh database, the shared
// NATS). Each change is one transaction, as a use case makes it: the workspace's row updated and
// its event appended to the outbox (appendEvents, the function every use case records with); its
// commit time is taken when the transaction's promise resolves (PostgreSQL acknowledged the
// COMMIT). From there the event goes NOTIFY → outbox relay → JetStream (published with its
// acknowledgement) → the event hub's NATS subscription → one outbox read for the workspace → every
// open stream. The receivers — N stream clients of one kind and one bare NATS subscriber — run in
// a worker thread (event-latency-clients.ts) and stamp arrivals on the same clock.
//
// Latency of a change at a path = arrival − commit; each stream client contributes one sample per
// change. The bare NATS subscriber sees the relay's publish: it is the floor of any NATS-fed
// stream (commit → relay → NATS), and the WebSocket and gRPC figures add the hub and the
// connections to it. For each client count the WebSocket clients are measured, then closed, then
// the gRPC ones (never both at once); the NATS row of a count holds the subscriber's samples of
// both phases. The ratio is the path's p99 ÷ NATS p99.
//
// Environment:
//   BENCH_CLIENTS   client counts, comma-separated (default 1,100,1000)
//   BENCH_KINDS     stream clients measured, in order (default websocket,grpc,grpc-h2)
//   BENCH_CHANGES   measured changes per count (default 200)
//   BENCH_WARMUP    unmeasured changes first (default 20)
//   BENCH_GAP_MS    time between two changes (default 20)
//   KLOUDAK_TEST_PG_URL   PostgreSQL for the fresh database (@kloudak/testkit's default)
// Needs PostgreSQL and NATS (scripts/bench.sh starts them).
import { randomBytes } from 'node:crypto';
import { Worker } from 'node:worker_threads';
import { ApiClient, must } from '@kloudak/e2e/api-client';
import { startInProcessOrchestrator } from '@kloudak/e2e/vm-harness';
import { appendEvents } from '@kloudak/orchestrator';
import { TEST_NATS_URL } from '@kloudak/testkit';
import { benchCleanup, envNumber, machine, machineBusyPct, progress, quantile, runBench, runCleanups, table, writeResults } from './harness.js';

const RUN = `ke${randomBytes(4).toString('hex')}`;
const COUNTS = (process.env['BENCH_CLIENTS'] ?? '1,100,1000').split(',').map((x) => Number(x.trim())).filter((x) => x > 0);
const CHANGES = Math.round(envNumber('BENCH_CHANGES', 200));
const WARMUP = Math.round(envNumber('BENCH_WARMUP', 20));
const GAP_MS = envNumber('BENCH_GAP_MS', 20);
const ADMIN = { username: 'root-admin', password: 'Bench-Event-Latency-2026!' };
const WS = `${RUN}-ws`;
/** The receiving paths: the baseline and the stream clients (measured one kind at a time). */
const ALL_KINDS = ['websocket', 'grpc', 'grpc-h2'] as const;
const KINDS = (process.env['BENCH_KINDS'] ?? 'websocket,grpc,grpc-h2').split(',').map((k) => k.trim()).filter((k): k is (typeof ALL_KINDS)[number] => (ALL_KINDS as readonly string[]).includes(k));
const PATHS = ['nats (bare)', ...ALL_KINDS] as const;

const now = () => performance.timeOrigin + performance.now();
const fmt = (n: number, d = 1) => (Number.isFinite(n) ? n.toFixed(d) : '-');

interface Stats {
  samples: number;
  lost: number;
  p50: number;
  p99: number;
  max: number;
}

function stats(latencies: number[], expected: number): Stats {
  const s = Float64Array.from(latencies).sort();
  return { samples: s.length, lost: expected - s.length, p50: quantile(s, 0.5), p99: quantile(s, 0.99), max: s.length ? s[s.length - 1]! : NaN };
}

async function main(): Promise<number> {
  const started = new Date();
  const busyBefore = await machineBusyPct();
  if (busyBefore > 25) progress(`warning: the machine is already ${busyBefore}% of a core busy before the bench starts; figures will be noisy`);
  const results: { clients: number; path: (typeof PATHS)[number]; stats: Stats }[] = [];
  let failed = false;
  try {
    const orch = await startInProcessOrchestrator(benchCleanup, 'kloudak_bench_events', ADMIN);
    const client = new ApiClient(() => orch.url, WS);
    await client.login(ADMIN);
    await must('workspace', 201, client.call('POST', '/workspaces', { name: WS }));
    const db = orch.db.client;
    const workspaceId = (await db.workspace.findUniqueOrThrow({ where: { name: WS } })).id;

    const worker = new Worker(new URL('./event-latency-clients.js', import.meta.url), {
      workerData: { url: orch.url, natsUrl: TEST_NATS_URL, workspace: WS, workspaceId, token: client.token, grpcAddress: `127.0.0.1:${orch.grpcPort}` },
    });
    benchCleanup.add(() => worker.terminate().then(() => undefined), 'stop the receivers');
    const reply = (kind: string) =>
      new Promise<Record<string, unknown>>((resolve, reject) => {
        const on = (m: Record<string, unknown>) => {
          if (m['kind'] === 'error') {
            worker.off('message', on);
            reject(new Error(String(m['message'])));
          } else if (m['kind'] === kind) {
            worker.off('message', on);
            resolve(m);
          }
        };
        worker.on('message', on);
      });

    /** One change as a use case commits it; returns its commit time. */
    const commit = async (name: string): Promise<number> => {
      await db.$transaction(async (tx) => {
        await tx.workspace.update({ where: { id: workspaceId }, data: { description: name } });
        await appendEvents(tx, [{ workspaceId, entity: 'workspace', entityId: workspaceId, event: 'updated', name }]);
      });
      return now();
    };

    for (const n of COUNTS) {
      const natsLat: number[] = [];
      for (const kind of KINDS) {
        progress(`${n} ${kind} client(s): connecting`);
        worker.postMessage({ cmd: 'connect', n, clientKind: kind });
        const ready = await reply('ready');
        progress(`${String(ready['clients'])} connected; ${WARMUP} warm-up then ${CHANGES} changes, one every ${GAP_MS} ms`);
        for (let i = 0; i < WARMUP; i++) {
          await commit(`warm-${n}-${kind}-${i}`);
          await new Promise((r) => setTimeout(r, GAP_MS));
        }
        const committed = new Map<string, number>();
        for (let i = 0; i < CHANGES; i++) {
          const name = `lat-${n}-${kind}-${i}`;
          committed.set(name, await commit(name));
          await new Promise((r) => setTimeout(r, GAP_MS));
        }
        await new Promise((r) => setTimeout(r, 2000));
        worker.postMessage({ cmd: 'collect' });
        const got = await reply('samples');
        const lat: number[] = [];
        for (const [name, times] of got['ws'] as [string, number[]][]) {
          const t0 = committed.get(name);
          if (t0 !== undefined) for (const t of times) lat.push(t - t0);
        }
        for (const [name, t] of got['nats'] as [string, number][]) {
          const t0 = committed.get(name);
          if (t0 !== undefined) natsLat.push(t - t0);
        }
        const st = stats(lat, CHANGES * n);
        results.push({ clients: n, path: kind, stats: st });
        if (st.lost > 0) failed = true;
        worker.postMessage({ cmd: 'disconnect' });
        await reply('disconnected');
      }
      const nats = stats(natsLat, CHANGES * KINDS.length);
      results.push({ clients: n, path: 'nats (bare)', stats: nats });
      if (nats.lost > 0) failed = true;
    }
    worker.postMessage({ cmd: 'stop' });
    await reply('stopped');
  } finally {
    await runCleanups();
  }

  const rows: (string | number)[][] = [['clients', 'path', 'p50 ms', 'p99 ms', 'max ms', 'samples', 'lost', 'p99 ratio path/nats']];
  for (const n of COUNTS) {
    const nats = results.find((r) => r.clients === n && r.path === 'nats (bare)')?.stats;
    for (const path of PATHS) {
      const r = results.find((x) => x.clients === n && x.path === path);
      if (!r) continue;
      rows.push([n, r.path, fmt(r.stats.p50, 2), fmt(r.stats.p99, 2), fmt(r.stats.max, 2), r.stats.samples, r.stats.lost, r.path !== 'nats (bare)' && nats ? fmt(r.stats.p99 / nats.p99, 2) : '']);
    }
  }
  console.log(table(rows));
  for (const kind of KINDS) {
    const at1000 = results.find((r) => r.clients === 1000 && r.path === kind);
    if (at1000) console.log(`target: ${kind} p99 at 1,000 clients ≤ 50 ms: ${fmt(at1000.stats.p99, 2)} ms — ${at1000.stats.p99 <= 50 ? 'met' : 'NOT met'}`);
  }
  const file = writeResults('event-latency', started, { settings: { counts: COUNTS, changes: CHANGES, warmup: WARMUP, gapMs: GAP_MS }, machine: machine(), results });
  progress(`results: ${file}`);
  return failed ? 1 : 0;
}

runBench('event-latency', main);
