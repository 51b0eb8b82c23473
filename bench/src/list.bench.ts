// list.bench — throughput and latency of an authenticated list of 1,000 objects
// (GET /api/v1/templates?limit=1000 with a bearer token), on PostgreSQL and on PGlite, loaded by
// autocannon from this process while the server runs as a child process.
//
// Baseline, measured in the same run on the same database: a bare node:http child server
// (list-baseline-server.js) that runs one raw SQL query through the bare driver and serialises the
// same JSON. Both servers are loaded with the same settings; the ratio Kloudak/baseline is what the
// API stack (Koa, auth with a user lookup, validation, Prisma, metrics) costs on top of
// "database + JSON + HTTP".
//
// Environment:
//   BENCH_DURATION_S   measured seconds per run           (default 10)
//   BENCH_WARMUP_S     unmeasured warm-up before each run (default 2)
//   BENCH_CONNECTIONS  concurrent connections             (default 10)
//   BENCH_ENGINES      comma list of postgres, pglite     (default both)
//   BENCH_ORCHESTRATOR_NODE_ARGS  node options of the orchestrator process, e.g.
//                      "--cpu-prof --cpu-prof-dir=DIR" (NODE_OPTIONS refuses --cpu-prof)
//   KLOUDAK_TEST_PG_URL  PostgreSQL server for the fresh database (scripts/lib.sh exports it)
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { isDeepStrictEqual } from 'node:util';
import { freshDatabase } from '@kloudak/testkit';
import { backendPids, envNumber, load, machine, machineBusyPct, onCleanup, progress, restCall, runBench, runCleanups, startChild, table, writeResults, type LoadResult } from './harness.js';

const ORCHESTRATOR_MAIN = fileURLToPath(new URL('../../orchestrator/dist/main.js', import.meta.url));
const BASELINE_SERVER = fileURLToPath(new URL('./list-baseline-server.js', import.meta.url));

const N = 1000;
const DURATION_S = envNumber('BENCH_DURATION_S', 10);
const WARMUP_S = envNumber('BENCH_WARMUP_S', 2);
const CONNECTIONS = Math.round(envNumber('BENCH_CONNECTIONS', 10));
const ENGINES = (process.env['BENCH_ENGINES'] ?? 'postgres,pglite')
  .split(',')
  .map((e) => e.trim())
  .filter(Boolean);
for (const e of ENGINES) if (e !== 'postgres' && e !== 'pglite') throw new Error(`BENCH_ENGINES: unknown engine '${e}'`);

const ADMIN = { username: 'benchadmin', password: 'bench-password-0123456789' };

type Engine = 'postgres' | 'pglite';
interface EngineResult {
  engine: Engine;
  kloudak: LoadResult;
  baseline: LoadResult;
  ratio: { reqPerSec: number; p50: number };
}

interface ListBody {
  items: Record<string, unknown>[];
  nextCursor: string | null;
}


/** Create N templates through the API, `batch` requests in flight at a time. */
async function seed(base: string, token: string, batch = 25): Promise<void> {
  for (let i = 0; i < N; i += batch) {
    await Promise.all(
      Array.from({ length: Math.min(batch, N - i) }, async (_, j) => {
        const k = i + j;
        const r = await restCall(base, 'POST', '/templates', {
          name: `bench-tpl-${String(k).padStart(4, '0')}`,
          os: k % 2 ? 'debian-12' : 'ubuntu-24.04',
          description: `benchmark template ${k}`,
          cpu: 1 + (k % 8),
          ramMb: 512 * (1 + (k % 16)),
          diskGb: 10 + (k % 100),
          image: k % 2 ? 'debian-12-genericcloud.qcow2' : 'ubuntu-24.04-server-cloudimg.img',
        }, token);
        if (r.status !== 201) throw new Error(`create template ${k}: HTTP ${r.status} ${JSON.stringify(r.body)}`);
      }),
    );
  }
}

/** GET the list once and insist on N items and no further page. */
async function fetchList(url: string, headers: Record<string, string>, who: string): Promise<ListBody> {
  const res = await fetch(url, { headers });
  const text = await res.text();
  if (res.status !== 200) throw new Error(`${who}: GET ${url} → HTTP ${res.status}: ${text.slice(0, 500)}`);
  const body = JSON.parse(text) as ListBody;
  if (body.items.length !== N || body.nextCursor !== null) {
    throw new Error(`${who}: expected ${N} items and no next page, got ${body.items.length} (nextCursor ${body.nextCursor})`);
  }
  return body;
}


async function measure(
  label: string,
  url: string,
  headers: Record<string, string>,
  serverPid: number | undefined,
  databaseUrl: string,
): Promise<LoadResult> {
  progress(`${label}: warm-up ${WARMUP_S}s, then ${DURATION_S}s × ${CONNECTIONS} connections`);
  await load(url, headers, CONNECTIONS, WARMUP_S, serverPid);
  // After the warm-up the server's pool has opened its connections.
  const dbPids = databaseUrl ? await backendPids(databaseUrl) : [];
  const r = await load(url, headers, CONNECTIONS, DURATION_S, serverPid, dbPids);
  const c = r.cpuPct;
  progress(
    `${label}: ${r.reqPerSec} req/s, p50 ${r.latencyMs.p50} ms, p99 ${r.latencyMs.p99} ms, errors ${r.errors}, non-2xx ${r.non2xx}; ` +
      `CPU % of a core: server ${c.server}, database ${Number.isNaN(c.db) ? 'in server' : `${c.db} (${dbPids.length} backends)`}, ` +
      `load generator ${c.loadgen}, other ${c.other}, machine ${c.machine}`,
  );
  return r;
}

async function runEngine(engine: Engine): Promise<EngineResult> {
  const dataDir = mkdtempSync(join(tmpdir(), `kloudak-bench-${engine}-`));
  onCleanup(`remove ${dataDir}`, () => rmSync(dataDir, { recursive: true, force: true }));
  let databaseUrl = '';
  if (engine === 'postgres') {
    const db = await freshDatabase('kloudak_bench');
    onCleanup(`drop database ${db.name}`, () => db.drop());
    databaseUrl = db.url;
    progress(`postgres: fresh database ${db.name}`);
  }

  // 1. Kloudak, as its own process.
  const orch = await startChild({
    name: `orchestrator (${engine})`,
    script: ORCHESTRATOR_MAIN,
    args: ['serve'],
    nodeArgs: (process.env['BENCH_ORCHESTRATOR_NODE_ARGS'] ?? '').split(' ').filter(Boolean),
    env: {
      KLOUDAK_HOST: '127.0.0.1',
      KLOUDAK_GRPC_PORT: '0',
      KLOUDAK_AGENT_PORT: '0', // no agents here; a fixed port could be taken by another orchestrator on the machine
      KLOUDAK_DATA_DIR: dataDir,
      KLOUDAK_LOG_LEVEL: 'silent',
      KLOUDAK_ADMIN_USER: ADMIN.username,
      KLOUDAK_ADMIN_PASSWORD: ADMIN.password,
      KLOUDAK_PASSWORD_HASH_COST: '12', // only the one login is affected
      ...(databaseUrl ? { DATABASE_URL: databaseUrl } : {}),
    },
    portVar: 'KLOUDAK_PORT',
    readyPath: '/readyz',
  });
  progress(`${engine}: orchestrator ready on ${orch.url} (pid ${orch.child.pid})`);
  const login = await restCall<{ token: string }>(orch.url, 'POST', '/auth/login', ADMIN);
  if (login.status !== 200 || !login.body.token) throw new Error(`login: HTTP ${login.status} ${JSON.stringify(login.body)}`);
  const token = login.body.token;
  const seeded = Date.now();
  await seed(orch.url, token);
  progress(`${engine}: created ${N} templates in ${((Date.now() - seeded) / 1000).toFixed(1)}s`);

  const kloudakUrl = `${orch.url}/api/v1/templates?limit=${N}`;
  const auth = { authorization: `Bearer ${token}` };
  const kloudakBody = await fetchList(kloudakUrl, auth, 'kloudak');
  const kloudak = await measure(`${engine} kloudak`, kloudakUrl, auth, orch.child.pid, databaseUrl);
  // PGlite allows one process per data directory: the orchestrator must be gone before the
  // baseline opens it. For PostgreSQL it keeps the two runs alike (neither server idles beside the other).
  await orch.stop();

  // 2. Baseline on the very same database (same rows, same files), as its own process.
  const base = await startChild({
    name: `baseline server (${engine})`,
    script: BASELINE_SERVER,
    env: databaseUrl ? { DATABASE_URL: databaseUrl } : { BASELINE_PGLITE_DIR: join(dataDir, 'pglite') },
    portVar: 'BASELINE_PORT',
    readyPath: '/readyz',
  });
  progress(`${engine}: baseline server ready on ${base.url} (pid ${base.child.pid})`);
  const baseUrl = `${base.url}/templates?limit=${N}`;
  const baseBody = await fetchList(baseUrl, {}, 'baseline');
  if (!isDeepStrictEqual(baseBody, kloudakBody)) throw new Error(`${engine}: the baseline does not serve the same list as the API`);
  const baseline = await measure(`${engine} baseline`, baseUrl, {}, base.child.pid, databaseUrl);
  await base.stop();

  const r3 = (n: number) => Math.round(n * 1000) / 1000;
  return {
    engine,
    kloudak,
    baseline,
    ratio: { reqPerSec: r3(kloudak.reqPerSec / baseline.reqPerSec), p50: r3(kloudak.latencyMs.p50 / baseline.latencyMs.p50) },
  };
}

function report(results: EngineResult[]): string {
  const rows: (string | number)[][] = [
    ['engine', 'server', 'req/s', 'p50 ms', 'p95 ms', 'p99 ms', 'MB/s', 'errors', 'non-2xx', 'req/s ratio', 'p50 ratio', 'CPU% srv/db/gen/other'],
  ];
  for (const r of results) {
    for (const [server, l] of [['kloudak', r.kloudak], ['baseline', r.baseline]] as const) {
      rows.push([
        r.engine,
        server,
        l.reqPerSec.toFixed(1),
        l.latencyMs.p50.toFixed(2),
        l.latencyMs.p95.toFixed(2),
        l.latencyMs.p99.toFixed(2),
        l.throughputMBps.toFixed(2),
        l.errors,
        l.non2xx,
        server === 'kloudak' ? `${r.ratio.reqPerSec.toFixed(3)}x` : '',
        server === 'kloudak' ? `${r.ratio.p50.toFixed(3)}x` : '',
        [l.cpuPct.server, l.cpuPct.db, l.cpuPct.loadgen, l.cpuPct.other].map((n) => (Number.isNaN(n) ? '-' : String(n))).join('/'),
      ]);
    }
  }
  return table(rows);
}

async function main(): Promise<number> {
  const started = new Date();
  const busyBefore = await machineBusyPct();
  if (busyBefore > 25) progress(`warning: the machine is already ${busyBefore}% of a core busy before the bench starts; figures will be noisy`);
  const results: EngineResult[] = [];
  try {
    for (const engine of ENGINES as Engine[]) results.push(await runEngine(engine));
  } finally {
    await runCleanups();
  }
  const bytes = results[0]?.kloudak.bytesPerResponse ?? 0;
  console.log(
    `\nlist.bench — authenticated GET /api/v1/templates?limit=${N} (${N} rows, ~${Math.round(bytes / 1000)} kB a response), ` +
      `${CONNECTIONS} connections × ${DURATION_S}s after ${WARMUP_S}s warm-up; autocannon in the bench process, servers in child processes.\n` +
      `baseline = bare node:http child server: same SQL rows through the bare driver → same JSON, no auth/validation/ORM. ` +
      `ratio = kloudak / baseline (req/s: lower is slower; p50: higher is slower).\n` +
      `CPU% srv/db/gen/other = % of one core used during the run by the server process / its PostgreSQL backends ` +
      `(- for PGlite: inside the server) / the load generator / everything else on the machine (${machine().cpus} cores).\n`,
  );
  console.log(report(results));
  const failures = results.flatMap((r) =>
    [r.kloudak, r.baseline].filter((l) => l.errors + l.timeouts + l.non2xx > 0).map((l) => `${r.engine} ${l.url}`),
  );

  const file = writeResults('list', started, {
    bench: 'list',
    startedAt: started.toISOString(),
    finishedAt: new Date().toISOString(),
    machine: { ...machine(), busyPctBeforeStart: busyBefore },
    settings: { objects: N, durationS: DURATION_S, warmupS: WARMUP_S, connections: CONNECTIONS, engines: ENGINES },
    results,
  });
  console.log(`\nresults: ${file}`);
  if (failures.length > 0) {
    console.error(`FAILED: errors or non-2xx responses in: ${failures.join(', ')}`);
    return 1;
  }
  return 0;
}

runBench('list', main);
