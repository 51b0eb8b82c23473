// grpc-list.bench — ListVms of 1,000 VMs over gRPC against the same list over REST
// (GET /api/v1/workspaces/{ws}/vms?limit=1000), from one orchestrator child process on one
// PostgreSQL database, in the same run, with a bearer token.
//
// Both calls run the same use case (app/vms.ts listVms); what differs is the edge: Koa, JSON and
// HTTP/1.1 against grpc-js, protobuf and HTTP/2. REST is loaded by autocannon (the list bench's
// load generator); gRPC by a closed loop of grpc-js clients in this process, one HTTP/2 connection
// each, with the same concurrency. Neither client decodes the answers (autocannon does not parse
// JSON; the gRPC clients keep the raw message bytes), so the load generators do alike work.
//
// Environment:
//   BENCH_DURATION_S   measured seconds per run           (default 10)
//   BENCH_WARMUP_S     unmeasured warm-up before each run (default 2)
//   BENCH_CONNECTIONS  concurrent connections / callers   (default 10)
//   KLOUDAK_TEST_PG_URL  PostgreSQL server for the fresh database (scripts/lib.sh exports it)
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import { openDatabase } from '@kloudak/prisma';
import { ListVmsRequest, ListVmsResponse } from '@kloudak/proto/api';
import { freePort, freshDatabase } from '@kloudak/testkit';
import {
  envNumber,
  load,
  machine,
  machineBusyPct,
  machineCpuSeconds,
  onCleanup,
  processCpuSeconds,
  progress,
  quantile,
  restCall,
  runBench,
  runCleanups,
  startChild,
  table,
  writeResults,
  type LoadResult,
  backendPids,
} from './harness.js';

const ORCHESTRATOR_MAIN = fileURLToPath(new URL('../../orchestrator/dist/main.js', import.meta.url));
const N = 1000;
const DURATION_S = envNumber('BENCH_DURATION_S', 10);
const WARMUP_S = envNumber('BENCH_WARMUP_S', 2);
const CONNECTIONS = Math.round(envNumber('BENCH_CONNECTIONS', 10));
const ADMIN = { username: 'benchadmin', password: 'bench-password-0123456789' };
const WS = 'bench-ws';
const LIST_VMS = '/kloudak.api.v1.VmService/ListVms';

/** Insert what 1,000 VMs stand on, and the VMs with a NIC each, straight into the database. */
async function seed(databaseUrl: string): Promise<void> {
  const db = await openDatabase({ url: databaseUrl, dataDir: '' });
  try {
    const c = db.client;
    const area = await c.area.create({ data: { name: 'bench-area', subnet: '10.64.0.0/16', gateway: '10.64.0.1', vlanFirst: 100, vlanLast: 199 } });
    const template = await c.template.create({ data: { name: 'bench-tpl', os: 'debian-12', cpu: 1, ramMb: 512, diskGb: 10, image: 'debian-12.qcow2' } });
    const host = await c.host.create({ data: { name: 'bench-kvm', areaId: area.id, cpuCount: 64, ramMb: 262144, diskGb: 4000, state: 'up' } });
    const pool = await c.storagePool.create({ data: { name: 'bench-pool', areaId: area.id, path: '/srv/bench', type: 'netfs' } });
    const ws = await c.workspace.create({ data: { name: WS, description: 'grpc-list bench' } });
    const net = await c.network.create({ data: { name: 'bench-net', workspaceId: ws.id, areaId: area.id, state: 'active' } });
    await c.vlanAllocation.create({ data: { areaId: area.id, vlan: 100, networkId: net.id } });
    const vms = Array.from({ length: N }, (_, i) => ({
      name: `vm-${String(i).padStart(4, '0')}`,
      description: `benchmark VM ${i}`,
      workspaceId: ws.id,
      areaId: area.id,
      templateId: template.id,
      hostId: host.id,
      poolId: pool.id,
      cpu: 1 + (i % 4),
      ramMb: 512 * (1 + (i % 8)),
      diskGb: 10 + (i % 50),
      state: 'running' as const,
    }));
    await c.vm.createMany({ data: vms });
    const rows = await c.vm.findMany({ where: { workspaceId: ws.id }, select: { id: true, name: true } });
    await c.vmInterface.createMany({
      data: rows.map((v) => {
        const i = Number(v.name.slice(3));
        const mac = `52:54:00:64:${((i >> 8) & 255).toString(16).padStart(2, '0')}:${(i & 255).toString(16).padStart(2, '0')}`;
        return { vmId: v.id, networkId: net.id, mac, ip: `10.64.${(i >> 8) + 1}.${(i & 255) + 1}` };
      }),
    });
  } finally {
    await db.close();
  }
}


/**
 * `connections` gRPC clients, each on its own HTTP/2 connection, each calling ListVms again as
 * soon as the answer arrived, for `durationS` seconds. Figures shaped like the harness's `load`.
 */
async function grpcLoad(address: string, token: string, connections: number, durationS: number, serverPid: number, dbPids: readonly number[]): Promise<LoadResult> {
  const request = Buffer.from(ListVmsRequest.encode({ workspace: WS, pageSize: N, pageToken: '' }).finish());
  const md = new grpc.Metadata();
  md.set('authorization', `Bearer ${token}`);
  const clients = Array.from({ length: connections }, () => new grpc.Client(address, grpc.credentials.createInsecure(), { 'grpc.use_local_subchannel_pool': 1 }));
  const call = (c: grpc.Client) =>
    new Promise<Buffer>((resolve, reject) =>
      c.makeUnaryRequest<Buffer, Buffer>(LIST_VMS, (b) => b, (b) => b, request, md, {}, (err, res) => (err ? reject(err) : resolve(res!))),
    );
  // Connect every client before the clock starts.
  await Promise.all(clients.map((c) => call(c)));
  const times: number[] = [];
  let bytes = 0;
  let errors = 0;
  const dbCpu = () => (dbPids.length === 0 ? NaN : dbPids.reduce((a, pid) => a + (processCpuSeconds(pid) || 0), 0));
  const self0 = process.cpuUsage();
  const server0 = processCpuSeconds(serverPid);
  const db0 = dbCpu();
  const machine0 = machineCpuSeconds();
  const t0 = process.hrtime.bigint();
  const end = t0 + BigInt(Math.round(durationS * 1e9));
  await Promise.all(
    clients.map(async (c) => {
      while (process.hrtime.bigint() < end) {
        const s = process.hrtime.bigint();
        try {
          const res = await call(c);
          times.push(Number(process.hrtime.bigint() - s) / 1e6);
          bytes += res.length;
        } catch {
          errors++;
        }
      }
    }),
  );
  const wallS = Number(process.hrtime.bigint() - t0) / 1e9;
  const self = process.cpuUsage(self0);
  const server1 = processCpuSeconds(serverPid);
  const db1 = dbCpu();
  const machine1 = machineCpuSeconds();
  for (const c of clients) c.close();
  const sorted = Float64Array.from(times).sort();
  const round = (n: number, d = 2) => Math.round(n * 10 ** d) / 10 ** d;
  const pct = (cpuS: number) => (Number.isFinite(cpuS) ? round((100 * cpuS) / wallS, 0) : NaN);
  const loadgen = (self.user + self.system) / 1e6;
  return {
    url: `grpc://${address}${LIST_VMS}`,
    connections,
    durationS: round(wallS, 3),
    requests: times.length,
    reqPerSec: round(times.length / wallS, 1),
    latencyMs: {
      mean: round(times.reduce((a, b) => a + b, 0) / Math.max(1, times.length)),
      p50: round(quantile(sorted, 0.5)),
      p95: round(quantile(sorted, 0.95)),
      p99: round(quantile(sorted, 0.99)),
      max: round(sorted[sorted.length - 1] ?? NaN),
    },
    throughputMBps: round(bytes / 1e6 / wallS),
    bytesPerResponse: Math.round(bytes / Math.max(1, times.length)),
    errors,
    timeouts: 0,
    non2xx: 0,
    cpuPct: {
      loadgen: pct(loadgen),
      server: pct(server1 - server0),
      db: pct(db1 - db0),
      machine: pct(machine1.busy - machine0.busy),
      other: pct(machine1.busy - machine0.busy - loadgen - (server1 - server0) - (Number.isFinite(db1 - db0) ? db1 - db0 : 0)),
    },
  };
}

function line(label: string, r: LoadResult): void {
  const c = r.cpuPct;
  progress(
    `${label}: ${r.reqPerSec} req/s, p50 ${r.latencyMs.p50} ms, p99 ${r.latencyMs.p99} ms, ${r.bytesPerResponse} B/response, errors ${r.errors + r.non2xx}; ` +
      `CPU % of a core: server ${c.server}, database ${c.db}, load generator ${c.loadgen}, other ${c.other}`,
  );
}

async function main(): Promise<number> {
  const started = new Date();
  const busyBefore = await machineBusyPct();
  if (busyBefore > 25) progress(`warning: the machine is already ${busyBefore}% of a core busy before the bench starts; figures will be noisy`);
  try {
    const dataDir = mkdtempSync(join(tmpdir(), 'kloudak-bench-grpc-'));
    onCleanup(`remove ${dataDir}`, () => rmSync(dataDir, { recursive: true, force: true }));
    const db = await freshDatabase('kloudak_bench_grpc');
    onCleanup(`drop database ${db.name}`, () => db.drop());
    const grpcPort = await freePort();
    const orch = await startChild({
      name: 'orchestrator',
      script: ORCHESTRATOR_MAIN,
      args: ['serve'],
      env: {
        KLOUDAK_HOST: '127.0.0.1',
        KLOUDAK_GRPC_PORT: String(grpcPort),
        KLOUDAK_AGENT_PORT: '0',
        KLOUDAK_DATA_DIR: dataDir,
        KLOUDAK_LOG_LEVEL: 'silent',
        KLOUDAK_ADMIN_USER: ADMIN.username,
        KLOUDAK_ADMIN_PASSWORD: ADMIN.password,
        KLOUDAK_PASSWORD_HASH_COST: '12',
        DATABASE_URL: db.url,
      },
      portVar: 'KLOUDAK_PORT',
      readyPath: '/readyz',
    });
    const pid = orch.child.pid!;
    progress(`orchestrator ready: REST ${orch.url}, gRPC 127.0.0.1:${grpcPort} (pid ${pid})`);
    const seeded = Date.now();
    await seed(db.url);
    progress(`seeded ${N} VMs in ${((Date.now() - seeded) / 1000).toFixed(1)}s`);
    const login = await restCall<{ token: string }>(orch.url, 'POST', '/auth/login', ADMIN);
    if (login.status !== 200) throw new Error(`login: HTTP ${login.status}`);
    const token = login.body.token;

    // The same list both ways.
    const restUrl = `${orch.url}/api/v1/workspaces/${WS}/vms?limit=${N}`;
    const auth = { authorization: `Bearer ${token}` };
    const rest = await restCall<{ items: { id: string; name: string }[]; nextCursor: string | null }>(orch.url, 'GET', `/workspaces/${WS}/vms?limit=${N}`, undefined, token);
    if (rest.status !== 200 || rest.body.items.length !== N || rest.body.nextCursor !== null) throw new Error(`REST list: HTTP ${rest.status}, ${rest.body.items?.length} items`);
    const address = `127.0.0.1:${grpcPort}`;
    const probe = new grpc.Client(address, grpc.credentials.createInsecure());
    const md = new grpc.Metadata();
    md.set('authorization', `Bearer ${token}`);
    const decoded = await new Promise<ListVmsResponse>((resolve, reject) =>
      probe.makeUnaryRequest(LIST_VMS, (r: ListVmsRequest) => Buffer.from(ListVmsRequest.encode(r).finish()), (b: Buffer) => ListVmsResponse.decode(b), { workspace: WS, pageSize: N, pageToken: '' }, md, (err, res) =>
        err ? reject(err) : resolve(res!),
      ),
    );
    probe.close();
    if (decoded.vms.length !== N || decoded.nextPageToken !== '') throw new Error(`gRPC list: ${decoded.vms.length} VMs, next page '${decoded.nextPageToken}'`);
    if (decoded.vms.some((v, i) => v.id !== rest.body.items[i]?.id || v.name !== rest.body.items[i]?.name)) throw new Error('gRPC and REST list different VMs');

    const dbPids = await backendPids(db.url);
    progress(`REST: warm-up ${WARMUP_S}s, then ${DURATION_S}s × ${CONNECTIONS} connections`);
    await load(restUrl, auth, CONNECTIONS, WARMUP_S, pid);
    const restResult = await load(restUrl, auth, CONNECTIONS, DURATION_S, pid, await backendPids(db.url));
    line('REST', restResult);
    progress(`gRPC: warm-up ${WARMUP_S}s, then ${DURATION_S}s × ${CONNECTIONS} connections`);
    await grpcLoad(address, token, CONNECTIONS, WARMUP_S, pid, dbPids);
    const grpcResult = await grpcLoad(address, token, CONNECTIONS, DURATION_S, pid, await backendPids(db.url));
    line('gRPC', grpcResult);
    await orch.stop();

    const r3 = (n: number) => Math.round(n * 1000) / 1000;
    const cpuMs = (l: LoadResult) => r3((l.cpuPct.server * 10) / Math.max(1, l.reqPerSec));
    const ratio = {
      reqPerSec: r3(grpcResult.reqPerSec / restResult.reqPerSec),
      p50: r3(grpcResult.latencyMs.p50 / restResult.latencyMs.p50),
      p99: r3(grpcResult.latencyMs.p99 / restResult.latencyMs.p99),
      bytes: r3(grpcResult.bytesPerResponse / restResult.bytesPerResponse),
      serverCpuPerRequest: r3(cpuMs(grpcResult) / cpuMs(restResult)),
    };
    const rows: (string | number)[][] = [['API', 'req/s', 'p50 ms', 'p95 ms', 'p99 ms', 'bytes/resp', 'server CPU ms/req', 'CPU% srv/db/gen/other', 'errors']];
    for (const [name, l] of [['REST', restResult], ['gRPC', grpcResult]] as const) {
      const c = l.cpuPct;
      rows.push([name, l.reqPerSec.toFixed(1), l.latencyMs.p50.toFixed(2), l.latencyMs.p95.toFixed(2), l.latencyMs.p99.toFixed(2), l.bytesPerResponse, cpuMs(l).toFixed(2), `${c.server}/${c.db}/${c.loadgen}/${c.other}`, l.errors + l.non2xx]);
    }
    console.log(`\ngrpc-list: ListVms of ${N} VMs, gRPC against REST, ${CONNECTIONS} connections, ${DURATION_S}s measured (PostgreSQL)\n`);
    console.log(table(rows));
    console.log(
      `\ngRPC/REST: req/s ${ratio.reqPerSec}x, p50 ${ratio.p50}x, p99 ${ratio.p99}x, bytes ${ratio.bytes}x, server CPU per request ${ratio.serverCpuPerRequest}x`,
    );
    const file = writeResults('grpc-list', started, { machine: machine(), settings: { n: N, durationS: DURATION_S, warmupS: WARMUP_S, connections: CONNECTIONS }, rest: restResult, grpc: grpcResult, ratio });
    progress(`results: ${file}`);
    return restResult.errors + restResult.non2xx + grpcResult.errors > 0 ? 1 : 0;
  } finally {
    await runCleanups();
  }
}

runBench('grpc-list', main);
