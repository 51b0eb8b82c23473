// A fleet of simulated agents in worker processes (agent-link-sim-worker.js), shared by the
// agent-link and soak benchmarks: the workers, how hosts are dealt to them, join tokens, and
// enrolling and starting a number of hosts.
import { fork, type ChildProcess } from 'node:child_process';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import type { Reply, Request, WindowReport } from './agent-link-sim-worker.js';
import { freePort } from '@kloudak/testkit';
import { onCleanup, restCall, startChild, type ChildServer } from './harness.js';

const SIM_WORKER = fileURLToPath(new URL('./agent-link-sim-worker.js', import.meta.url));
const ORCHESTRATOR_MAIN = fileURLToPath(new URL('../../orchestrator/dist/main.js', import.meta.url));

/**
 * An orchestrator process for simulated agents (agent-link, soak): REST on a free port, agents on
 * another (`agents` is their `host:port`), warn-level logs, `admin` bootstrapped (hash cost 12:
 * only the one login is affected).
 */
export async function startFleetOrchestrator(opts: {
  name: string;
  dataDir: string;
  databaseUrl: string;
  natsUrl: string;
  heartbeatMs: number;
  admin: { username: string; password: string };
  nodeArgs?: string[];
  timeoutMs?: number;
}): Promise<{ srv: ChildServer; agents: string }> {
  const agentPort = await freePort();
  const srv = await startChild({
    name: opts.name,
    script: ORCHESTRATOR_MAIN,
    args: ['serve'],
    env: {
      KLOUDAK_HOST: '127.0.0.1',
      KLOUDAK_GRPC_PORT: '0',
      KLOUDAK_DATA_DIR: opts.dataDir,
      DATABASE_URL: opts.databaseUrl,
      NATS_URL: opts.natsUrl,
      KLOUDAK_AGENT_HOST: '127.0.0.1',
      KLOUDAK_AGENT_PORT: String(agentPort),
      KLOUDAK_HEARTBEAT_INTERVAL_MS: String(opts.heartbeatMs),
      KLOUDAK_LOG_LEVEL: 'warn',
      KLOUDAK_ADMIN_USER: opts.admin.username,
      KLOUDAK_ADMIN_PASSWORD: opts.admin.password,
      KLOUDAK_PASSWORD_HASH_COST: '12',
    },
    ...(opts.nodeArgs ? { nodeArgs: opts.nodeArgs } : {}),
    ...(opts.timeoutMs !== undefined ? { timeoutMs: opts.timeoutMs } : {}),
    portVar: 'KLOUDAK_PORT',
    readyPath: '/readyz',
  });
  return { srv, agents: `127.0.0.1:${agentPort}` };
}

/** One worker process of simulated agents, driven request by request over IPC. */
export class SimWorker {
  private readonly waiting: { resolve: (r: Reply) => void; reject: (e: Error) => void }[] = [];
  private readonly exited: Promise<void>;

  constructor(
    readonly index: number,
    readonly child: ChildProcess,
  ) {
    child.on('message', (r: Reply) => this.waiting.shift()?.resolve(r));
    this.exited = new Promise((resolve) =>
      child.once('exit', (code, sig) => {
        for (let w = this.waiting.shift(); w; w = this.waiting.shift()) w.reject(new Error(`sim worker ${index} exited (${code ?? sig})`));
        resolve();
      }),
    );
  }

  static start(index: number): SimWorker {
    // 'advanced' serialisation carries the latency arrays as Float64Array, not JSON.
    const child = fork(SIM_WORKER, [], { serialization: 'advanced', stdio: ['ignore', 'inherit', 'inherit', 'ipc'], env: { PATH: process.env['PATH'] ?? '' } });
    const w = new SimWorker(index, child);
    onCleanup(`stop sim worker ${index}`, () => w.stop());
    return w;
  }

  /** Send one request; rejects on `{ok: false}`. */
  async request<T extends Record<string, unknown>>(req: Request): Promise<T> {
    const reply = await new Promise<Reply>((resolve, reject) => {
      this.waiting.push({ resolve, reject });
      this.child.send(req);
    });
    if (!reply.ok) throw new Error(`sim worker ${this.index}, ${req.op}: ${reply.error}`);
    return reply as unknown as T;
  }

  /** Close the measuring window and return its report. */
  async windowEnd(): Promise<WindowReport> {
    return (await this.request<{ report: WindowReport }>({ op: 'windowEnd' })).report;
  }

  async stop(): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    const kill = setTimeout(() => this.child.kill('SIGKILL'), 10_000);
    try {
      this.child.send({ op: 'exit' } satisfies Request);
    } catch {
      this.child.kill('SIGTERM');
    }
    await this.exited;
    clearTimeout(kill);
  }
}

/** Hosts are dealt round-robin: host i runs in worker i % W, so W workers share any step evenly. */
export function shareOf(worker: number, hosts: number, workers: number): number {
  return Math.max(0, Math.ceil((hosts - worker) / workers));
}

/** One single-use join token per host, `limit` requests in flight. */
export async function joinTokens(base: string, token: string, areaId: string, n: number, limit = 8): Promise<string[]> {
  const out = new Array<string>(n);
  let next = 0;
  const lane = async () => {
    for (let i = next++; i < n; i = next++) {
      const r = await restCall<{ token: string }>(base, 'POST', '/hosts/join-tokens', { area: areaId, expiresIn: 7200 }, token);
      if (r.status !== 201) throw new Error(`join token ${i}: HTTP ${r.status} ${JSON.stringify(r.body)}`);
      out[i] = r.body.token;
    }
  };
  await Promise.all(Array.from({ length: limit }, lane));
  return out;
}

/** Enroll hosts `from..to-1` (names `<prefix>-NNNN`), host i in worker i % W. */
export async function enrollHosts(
  workers: SimWorker[],
  address: string,
  tokens: string[],
  range: { from: number; to: number; prefix: string },
  concurrency: number,
): Promise<void> {
  const perWorker: { joinToken: string; hostName: string }[][] = workers.map(() => []);
  for (let i = range.from; i < range.to; i++) perWorker[i % workers.length]?.push({ joinToken: tokens[i] as string, hostName: `${range.prefix}-${String(i).padStart(4, '0')}` });
  const er = await Promise.all(
    workers.map((w) =>
      w.request<{ failed: number; failures: string[] }>({ op: 'enroll', address, items: perWorker[w.index] ?? [], concurrency: Math.max(1, Math.ceil(concurrency / workers.length)) }),
    ),
  );
  const failed = er.reduce((n, r) => n + r.failed, 0);
  if (failed > 0) throw new Error(`${failed} enrollments failed, e.g. ${er.flatMap((r) => r.failures).slice(0, 3).join(' | ')}`);
}

/**
 * Make sure every sim worker runs its share of `hosts`, connected to `addresses` (a sim's
 * enrollment-order index i picks `addresses[i % n]`, so with two orchestrators half the hosts hold
 * their session on each). Returns the seconds it took.
 */
export async function runHosts(workers: SimWorker[], addresses: string[], hosts: number, heartbeatMs: number, concurrency: number): Promise<number> {
  const t0 = performance.now();
  const replies = await Promise.all(
    workers.map((w) =>
      w.request<{ running: number; failed: number; failures: string[] }>({ op: 'start', addresses, count: shareOf(w.index, hosts, workers.length), heartbeatMs, concurrency }),
    ),
  );
  const failed = replies.reduce((n, r) => n + r.failed, 0);
  if (failed > 0) throw new Error(`${failed} sims could not connect to ${addresses.join(', ')}, e.g. ${replies.flatMap((r) => r.failures).slice(0, 3).join(' | ')}`);
  const running = replies.reduce((n, r) => n + r.running, 0);
  if (running !== hosts) throw new Error(`expected ${hosts} sims running, have ${running}`);
  return (performance.now() - t0) / 1000;
}

/** Every latency of the reports, in one sorted array. */
export function mergedLatencies(reports: WindowReport[]): Float64Array {
  const lat = new Float64Array(reports.reduce((n, r) => n + r.latenciesMs.length, 0));
  let o = 0;
  for (const r of reports) {
    lat.set(r.latenciesMs, o);
    o += r.latenciesMs.length;
  }
  return lat.sort();
}
