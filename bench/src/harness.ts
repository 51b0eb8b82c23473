// Shared plumbing for the benchmarks: settings from the environment, a cleanup stack that also runs
// on Ctrl-C, servers run as child processes, and an autocannon run reduced to the figures we print.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { cpus, totalmem, release, platform } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { GUEST, REPO } from '@kloudak/e2e/paths';
import { freePort, waitFor, withPg, type CleanupStack } from '@kloudak/testkit';
import autocannon from 'autocannon';

// ---------- settings ----------

/** A positive number from the environment, or `fallback`. */
export function envNumber(name: string, fallback: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  const n = Number(raw);
  if (!Number.isFinite(n) || n <= 0) throw new Error(`${name} must be a positive number, got '${raw}'`);
  return n;
}

/** Timestamped progress line on stderr (stdout carries only the results). */
export function progress(msg: string): void {
  process.stderr.write(`[${new Date().toISOString().slice(11, 19)}] ${msg}\n`);
}

/** What the figures were measured on. */
export function machine() {
  const c = cpus();
  return {
    platform: `${platform()} ${release()}`,
    cpus: c.length,
    cpuModel: c[0]?.model ?? 'unknown',
    memoryGiB: Math.round(totalmem() / 2 ** 30),
    node: process.version,
  };
}

/** Build the test guest (scripts/build-test-guest.sh) into its directory unless it already holds `files`. */
export function ensureTestGuest(files: readonly string[]): void {
  if (files.every((f) => existsSync(join(GUEST, f)))) return;
  progress(`no test guest in ${GUEST}: building it (scripts/build-test-guest.sh)`);
  // Its output goes to stderr: stdout carries only the figures.
  execFileSync('bash', [join(REPO, 'scripts/build-test-guest.sh'), GUEST], { stdio: ['ignore', 2, 2] });
}

// ---------- cleanup ----------

type Cleanup = { what: string; fn: () => Promise<void> | void };
const cleanups: Cleanup[] = [];

/** Register something to undo; undone last-in first-out by {@link runCleanups}. */
export function onCleanup(what: string, fn: () => Promise<void> | void): void {
  cleanups.push({ what, fn });
}

/** The same stack for the set-up helpers shared with the e2e tests (@kloudak/e2e), which name their steps. */
export const benchCleanup: CleanupStack = {
  add: (step, what = 'a set-up step') =>
    onCleanup(what, async () => {
      await step();
    }),
};

/** Undo everything registered so far, each step even if an earlier one failed. */
export async function runCleanups(): Promise<void> {
  for (let c = cleanups.pop(); c; c = cleanups.pop()) {
    try {
      await c.fn();
    } catch (err) {
      progress(`cleanup '${c.what}' failed: ${String(err)}`);
    }
  }
}

let interrupted = false;
/** The autocannon run in progress, stopped first on Ctrl-C so servers can shut down at once. */
let activeLoad: autocannon.Instance | undefined;
for (const sig of ['SIGINT', 'SIGTERM'] as const) {
  process.on(sig, () => {
    if (interrupted) return;
    interrupted = true;
    progress(`${sig}: cleaning up`);
    activeLoad?.stop();
    void runCleanups().finally(() => process.exit(sig === 'SIGINT' ? 130 : 143));
  });
}

// ---------- REST ----------

/** A JSON call to the REST API at `base`, with `token` as the bearer when given; the body as `T` (undefined when empty). */
export async function restCall<T>(base: string, method: string, path: string, body?: unknown, token?: string): Promise<{ status: number; body: T }> {
  const res = await fetch(`${base}/api/v1${path}`, {
    method,
    headers: { 'content-type': 'application/json', ...(token ? { authorization: `Bearer ${token}` } : {}) },
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
  });
  const text = await res.text();
  return { status: res.status, body: (text ? JSON.parse(text) : undefined) as T };
}

// ---------- child servers ----------

/** A server running as a child process of the benchmark. */
export interface ChildServer {
  name: string;
  url: string;
  child: ChildProcess;
  output(): string;
  /** SIGTERM, SIGKILL after `graceMs`; resolves once the process has exited. Idempotent. */
  stop(graceMs?: number): Promise<void>;
}

/**
 * Start `node <script> ...args` with `env` (plus PATH) and a free port given through the variable
 * `portVar`, and wait until GET <url><readyPath> answers 200. Stopped by the cleanup stack too.
 */
export async function startChild(opts: {
  name: string;
  script: string;
  args?: string[];
  /** Options of node itself, before the script (e.g. --cpu-prof, which NODE_OPTIONS refuses). */
  nodeArgs?: string[];
  env: Record<string, string>;
  portVar: string;
  readyPath: string;
  timeoutMs?: number;
}): Promise<ChildServer> {
  const port = await freePort();
  let out = '';
  const child = spawn(process.execPath, [...(opts.nodeArgs ?? []), opts.script, ...(opts.args ?? [])], {
    env: { PATH: process.env['PATH'] ?? '', ...opts.env, [opts.portVar]: String(port) },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  child.stdout?.on('data', (d: Buffer) => (out = (out + d.toString()).slice(-20_000)));
  child.stderr?.on('data', (d: Buffer) => (out = (out + d.toString()).slice(-20_000)));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  let stopping: Promise<void> | undefined;
  const stop = (graceMs = 15_000) =>
    (stopping ??= (async () => {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
      await exited;
      clearTimeout(timer);
    })());
  onCleanup(`stop ${opts.name}`, () => stop(5_000));
  const url = `http://127.0.0.1:${port}`;
  await Promise.race([
    waitFor(async () => (await fetch(`${url}${opts.readyPath}`)).status === 200, opts.timeoutMs ?? 60_000, `${opts.name} on ${url}`),
    exited.then(() => {
      throw new Error(`${opts.name} exited early (${child.exitCode ?? child.signalCode}):\n${out}`);
    }),
  ]);
  return { name: opts.name, url, child, output: () => out, stop };
}

// ---------- CPU accounting (Linux /proc) ----------

let clockTicks: number | undefined;
function ticksPerSecond(): number {
  if (clockTicks === undefined) {
    try {
      clockTicks = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
    } catch {
      clockTicks = 100;
    }
  }
  return clockTicks;
}

/** CPU seconds (user + system) used so far by process `pid`, or NaN when unreadable. */
export function processCpuSeconds(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(fields[11]) + Number(fields[12])) / ticksPerSecond();
  } catch {
    return NaN;
  }
}

/** Busy and total CPU seconds of the whole machine, all cores, from /proc/stat. */
export function machineCpuSeconds(): { busy: number; total: number } {
  try {
    const line = readFileSync('/proc/stat', 'utf8').split('\n')[0] ?? '';
    const v = line.trim().split(/\s+/).slice(1, 9).map(Number);
    const total = v.reduce((a, b) => a + b, 0);
    const idle = (v[3] ?? 0) + (v[4] ?? 0); // idle + iowait
    return { busy: (total - idle) / ticksPerSecond(), total: total / ticksPerSecond() };
  } catch {
    return { busy: NaN, total: NaN };
  }
}

/** Resident set size now and its peak since the process started (VmRSS, VmHWM), in KiB. */
export function memoryKiB(pid: number): { rss: number; hwm: number } {
  try {
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    const field = (name: string) => Number(new RegExp(`^${name}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? NaN);
    return { rss: field('VmRSS'), hwm: field('VmHWM') };
  } catch {
    return { rss: NaN, hwm: NaN };
  }
}

/** The soft limit on open files of this process (inherited by the children it starts). */
export function openFilesLimit(): number {
  try {
    const m = /^Max open files\s+(\d+|unlimited)/m.exec(readFileSync('/proc/self/limits', 'utf8'));
    return m?.[1] === 'unlimited' ? Infinity : Number(m?.[1] ?? NaN);
  } catch {
    return NaN;
  }
}

/** % of one core the whole machine is busy over `ms`, e.g. to notice other work before measuring. */
export async function machineBusyPct(ms = 1000): Promise<number> {
  const a = machineCpuSeconds();
  const t0 = process.hrtime.bigint();
  await new Promise((r) => setTimeout(r, ms));
  const b = machineCpuSeconds();
  return Math.round((100 * (b.busy - a.busy)) / (Number(process.hrtime.bigint() - t0) / 1e9));
}

// ---------- load ----------

/** Figures of one load run: successful (2xx) responses only, failures counted separately. */
export interface LoadResult {
  url: string;
  connections: number;
  durationS: number;
  requests: number;
  reqPerSec: number;
  latencyMs: { mean: number; p50: number; p95: number; p99: number; max: number };
  throughputMBps: number;
  bytesPerResponse: number;
  errors: number;
  timeouts: number;
  non2xx: number;
  /**
   * CPU used during the run, in % of one core: the load generator (this process), the server
   * process, the database server processes serving it (PostgreSQL backends; NaN for PGlite, which
   * runs inside the server process), the whole machine (all cores, so up to 100 × cores), and
   * `other` = machine minus those three: anything else running on the machine at the time.
   */
  cpuPct: { loadgen: number; server: number; db: number; machine: number; other: number };
}

/** The `q`-quantile (0..1) of ascending `sorted` by the nearest-rank method. */
export function quantile(sorted: Float64Array, q: number): number {
  if (sorted.length === 0) return NaN;
  const rank = Math.max(1, Math.ceil(q * sorted.length));
  return sorted[Math.min(rank, sorted.length) - 1] as number;
}

/**
 * Load `url` with autocannon from this process (a process apart from the server): `connections`
 * keep-alive connections, each sending its next request as soon as the previous one is answered,
 * for `durationS` seconds. Latency percentiles are computed from every 2xx response time (exact,
 * not autocannon's histogram buckets, which have no p95).
 */
export async function load(
  url: string,
  headers: Record<string, string>,
  connections: number,
  durationS: number,
  serverPid?: number,
  dbPids: readonly number[] = [],
): Promise<LoadResult> {
  const times: number[] = [];
  let bytes = 0;
  const wall0 = process.hrtime.bigint();
  const self0 = process.cpuUsage();
  const server0 = serverPid === undefined ? NaN : processCpuSeconds(serverPid);
  const dbCpu = () => (dbPids.length === 0 ? NaN : dbPids.reduce((a, pid) => a + (processCpuSeconds(pid) || 0), 0));
  const db0 = dbCpu();
  const machine0 = machineCpuSeconds();
  const result = await new Promise<autocannon.Result>((resolve, reject) => {
    const instance = autocannon({ url, headers, connections, duration: durationS, pipelining: 1 }, (err, res) =>
      err ? reject(err instanceof Error ? err : new Error(String(err))) : resolve(res),
    );
    activeLoad = instance;
    instance.on('done', () => (activeLoad = undefined));
    instance.on('response', (_client, statusCode, resBytes, responseTime) => {
      if (statusCode >= 200 && statusCode < 300) {
        times.push(responseTime);
        bytes += resBytes;
      }
    });
  });
  const wallS = Number(process.hrtime.bigint() - wall0) / 1e9;
  const self = process.cpuUsage(self0);
  const server1 = serverPid === undefined ? NaN : processCpuSeconds(serverPid);
  const db1 = dbCpu();
  const machine1 = machineCpuSeconds();
  const sorted = Float64Array.from(times).sort();
  const sum = times.reduce((a, b) => a + b, 0);
  const round = (n: number, d = 2) => Math.round(n * 10 ** d) / 10 ** d;
  const pct = (cpuS: number) => (Number.isFinite(cpuS) ? round((100 * cpuS) / wallS, 0) : NaN);
  return {
    url,
    connections,
    durationS: round(result.duration, 3),
    requests: times.length,
    reqPerSec: round(times.length / result.duration, 1),
    latencyMs: {
      mean: round(sum / Math.max(1, times.length)),
      p50: round(quantile(sorted, 0.5)),
      p95: round(quantile(sorted, 0.95)),
      p99: round(quantile(sorted, 0.99)),
      max: round(sorted[sorted.length - 1] ?? NaN),
    },
    throughputMBps: round(bytes / 1e6 / result.duration),
    bytesPerResponse: Math.round(bytes / Math.max(1, times.length)),
    errors: result.errors,
    timeouts: result.timeouts,
    non2xx: result.non2xx,
    cpuPct: {
      loadgen: pct((self.user + self.system) / 1e6),
      server: pct(server1 - server0),
      db: pct(db1 - db0),
      machine: pct(machine1.busy - machine0.busy),
      other: pct(
        machine1.busy - machine0.busy - (self.user + self.system) / 1e6 - (server1 - server0) - (Number.isFinite(db1 - db0) ? db1 - db0 : 0),
      ),
    },
  };
}

// ---------- output ----------

/** A plain-text table: first row is the header; numbers right-aligned. */
export function table(rows: (string | number)[][]): string {
  const cells = rows.map((r) => r.map((c) => String(c)));
  const widths = cells[0]?.map((_, i) => Math.max(...cells.map((r) => (r[i] ?? '').length))) ?? [];
  const line = (r: string[], isHeader: boolean) =>
    r
      .map((c, i) => {
        const w = widths[i] ?? 0;
        return isHeader || Number.isNaN(Number(c.replace(/[x%]$/, ''))) ? c.padEnd(w) : c.padStart(w);
      })
      .join('  ')
      .trimEnd();
  const [head, ...body] = cells;
  if (!head) return '';
  return [line(head, true), widths.map((w) => '-'.repeat(w)).join('  '), ...body.map((r) => line(r, false))].join('\n');
}

// ---------- results and the process ----------

const RESULTS_DIR = fileURLToPath(new URL('../results/', import.meta.url));

/** Write a benchmark's full results to bench/results/<name>-<start time>.json; returns the path. */
export function writeResults(name: string, started: Date, data: Record<string, unknown>): string {
  mkdirSync(RESULTS_DIR, { recursive: true });
  const file = join(RESULTS_DIR, `${name}-${started.toISOString().replace(/:/g, '-').replace(/\.\d+Z$/, 'Z')}.json`);
  writeFileSync(file, `${JSON.stringify(data, null, 2)}\n`);
  return file;
}

/** Run a benchmark's main and exit with its code (1, with the error, when it throws). */
export function runBench(name: string, main: () => Promise<number>): void {
  main().then(
    (code) => process.exit(code),
    (err: unknown) => {
      console.error(`${name}.bench: failed:`, err);
      process.exit(1);
    },
  );
}

/** PIDs of the PostgreSQL backends connected to `url`'s database (a server's pool), for their CPU time. */
export function backendPids(url: string): Promise<number[]> {
  return withPg(url, async (c) => {
    const r = await c.query<{ pid: number }>('SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()');
    return r.rows.map((row) => row.pid);
  });
}
