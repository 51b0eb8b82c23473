// libvirt-calls.bench — how many libvirt queries a second @kloudak/libvirt makes over libvirtd's
// socket, against the baseline of spawning a `virsh` process per query, in the same run.
//
// The query is "the state of domain NAME": a throw-away domain is defined (never started) on
// qemu:///system, and one call is
//   (a) @kloudak/libvirt, sequential: lookupDomainByName + getDomainState (2 RPCs), one after the
//       other on one connection;
//   (b) @kloudak/libvirt, concurrent: the same, with BENCH_CONCURRENCY calls in flight at once on
//       the same connection (the RPC protocol multiplexes calls by serial number);
//   (c) baseline: `virsh -c qemu:///system domstate NAME`, one process per call, sequential —
//       which is what a program that shells out to virsh pays for each query (process start,
//       connection open and authentication, the same two RPCs, close).
// Before measuring, (a) and (c) must report the same state. The three take turns in rounds so
// that drift on a shared machine reaches all of them.
//
// Environment:
//   BENCH_CALLS        calls of (a) and of (b)          (default 5000)
//   BENCH_CONCURRENCY  calls in flight in (b)           (default 64)
//   BENCH_VIRSH_CALLS  virsh processes of (c)          (default 40)
//   BENCH_ROUNDS       rounds the calls are split into (default 4): (a), (b) and (c) take turns
//
// Needs libvirtd running (scripts/bench.sh starts it); it never starts or restarts it itself.
import { execFile } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { promisify } from 'node:util';
import { DomainState, Libvirt, NotFoundError } from '@kloudak/libvirt';
import { envNumber, machine, machineBusyPct, onCleanup, progress, quantile, runBench, runCleanups, table, writeResults } from './harness.js';

const execFileP = promisify(execFile);

const URI = 'qemu:///system';
const NAME = `kb${randomBytes(4).toString('hex')}-calls`;
const CALLS = Math.round(envNumber('BENCH_CALLS', 5000));
const CONCURRENCY = Math.round(envNumber('BENCH_CONCURRENCY', 64));
const VIRSH_CALLS = Math.round(envNumber('BENCH_VIRSH_CALLS', 40));
const ROUNDS = Math.round(envNumber('BENCH_ROUNDS', 4));

/** virsh's words for virDomainState, to compare its answer with ours. */
const VIRSH_STATE: Record<number, string> = {
  [DomainState.NOSTATE]: 'no state',
  [DomainState.RUNNING]: 'running',
  [DomainState.BLOCKED]: 'idle',
  [DomainState.PAUSED]: 'paused',
  [DomainState.SHUTDOWN]: 'in shutdown',
  [DomainState.SHUTOFF]: 'shut off',
  [DomainState.CRASHED]: 'crashed',
  [DomainState.PMSUSPENDED]: 'pmsuspended',
};

/** Figures of one way of calling. */
interface CallResult {
  way: string;
  calls: number;
  inFlight: number;
  /** Wall time spent in this way's chunks, all rounds together. */
  wallS: number;
  callsPerSec: number;
  latencyMs: { mean: number; p50: number; p95: number; p99: number; max: number };
  /** CPU of this process per call (µs); for virsh the child processes' CPU is not included. */
  selfCpuUsPerCall: number;
}

/** One way of calling, with what its chunks have measured so far. */
class Way {
  readonly times: number[] = [];
  wallMs = 0;
  cpuUs = 0;

  constructor(
    readonly label: string,
    readonly total: number,
    readonly inFlight: number,
    private readonly fn: () => Promise<unknown>,
  ) {}

  /**
   * Runs `n` calls, `inFlight` at a time (each worker starts its next call when its previous one
   * is answered), timing every call.
   */
  async chunk(n: number): Promise<void> {
    let next = 0;
    const cpu0 = process.cpuUsage();
    const t0 = performance.now();
    await Promise.all(
      Array.from({ length: Math.min(this.inFlight, n) }, async () => {
        while (next++ < n) {
          const s = performance.now();
          await this.fn();
          this.times.push(performance.now() - s);
        }
      }),
    );
    this.wallMs += performance.now() - t0;
    const cpu = process.cpuUsage(cpu0);
    this.cpuUs += cpu.user + cpu.system;
  }

  result(): CallResult {
    const n = this.times.length;
    const sorted = Float64Array.from(this.times).sort();
    const round = (x: number, d = 3) => Math.round(x * 10 ** d) / 10 ** d;
    return {
      way: this.label,
      calls: n,
      inFlight: this.inFlight,
      wallS: round(this.wallMs / 1000),
      callsPerSec: round(n / (this.wallMs / 1000), 1),
      latencyMs: {
        mean: round(this.times.reduce((a, b) => a + b, 0) / n),
        p50: round(quantile(sorted, 0.5)),
        p95: round(quantile(sorted, 0.95)),
        p99: round(quantile(sorted, 0.99)),
        max: round(sorted[sorted.length - 1] ?? NaN),
      },
      selfCpuUsPerCall: round(this.cpuUs / n, 1),
    };
  }
}

async function main(): Promise<number> {
  const started = new Date();
  const busyBefore = await machineBusyPct();
  if (busyBefore > 25) progress(`warning: the machine is already ${busyBefore}% of a core busy before the bench starts; figures will be noisy`);

  let results: CallResult[];
  try {
    const lv = await Libvirt.connect({ uri: URI });
    onCleanup('close libvirt connection', () => lv.close());
    // Registered before the define, so a define that half succeeded is undone too.
    onCleanup(`undefine domain ${NAME}`, async () => {
      try {
        await lv.undefineDomain(await lv.lookupDomainByName(NAME));
      } catch (e) {
        if (!(e instanceof NotFoundError)) throw e;
      }
    });
    // Defined, never started: nothing but a definition in libvirtd's memory and /etc/libvirt/qemu.
    await lv.defineDomain(
      `<domain type='qemu'><name>${NAME}</name><uuid>${randomUUID()}</uuid><memory unit='MiB'>32</memory>` +
        `<os><type>hvm</type></os><features><acpi/><apic/></features></domain>`,
    );
    progress(`defined domain ${NAME} on ${URI}`);

    const ours = async () => (await lv.getDomainState(await lv.lookupDomainByName(NAME))).state;
    const virsh = async () => (await execFileP('virsh', ['-c', URI, 'domstate', NAME], { encoding: 'utf8', timeout: 30_000 })).stdout.trim();

    const mine = await ours();
    const theirs = await virsh();
    if (VIRSH_STATE[mine] !== theirs) throw new Error(`@kloudak/libvirt says state ${mine} (${VIRSH_STATE[mine]}), virsh says '${theirs}'`);
    progress(`both report '${theirs}'; warming up`);
    // Warm-up: JIT, the daemon's worker threads, the page cache of virsh and its libraries.
    await new Way('warm-up', 200, CONCURRENCY, ours).chunk(200);
    await new Way('warm-up', 3, 1, virsh).chunk(3);

    const ways = [
      new Way('@kloudak/libvirt sequential', CALLS, 1, ours),
      new Way(`@kloudak/libvirt ${CONCURRENCY} in flight`, CALLS, CONCURRENCY, ours),
      new Way('virsh process per call', VIRSH_CALLS, 1, virsh),
    ];
    // The ways take turns in rounds (the order rotating), each running its share of calls, so a
    // burst of other work on the machine hits all of them instead of the one that ran then.
    for (let r = 0; r < ROUNDS; r++) {
      for (let k = 0; k < ways.length; k++) {
        const w = ways[(r + k) % ways.length]!;
        const share = Math.floor((w.total * (r + 1)) / ROUNDS) - Math.floor((w.total * r) / ROUNDS);
        await w.chunk(share);
      }
      progress(`round ${r + 1}/${ROUNDS} done`);
    }
    results = ways.map((w) => w.result());
    for (const x of results) progress(`${x.way}: ${x.callsPerSec} calls/s, mean ${x.latencyMs.mean} ms, p95 ${x.latencyMs.p95} ms`);
  } finally {
    await runCleanups();
  }

  const base = results[2]!;
  const rows: (string | number)[][] = [
    ['way', 'calls', 'in flight', 'calls/s', 'mean ms', 'p50 ms', 'p95 ms', 'p99 ms', 'max ms', 'own CPU µs/call', 'calls/s ratio', 'mean latency ratio'],
  ];
  for (const r of results) {
    rows.push([
      r.way,
      r.calls,
      r.inFlight,
      r.callsPerSec.toFixed(1),
      r.latencyMs.mean.toFixed(3),
      r.latencyMs.p50.toFixed(3),
      r.latencyMs.p95.toFixed(3),
      r.latencyMs.p99.toFixed(3),
      r.latencyMs.max.toFixed(3),
      r.selfCpuUsPerCall.toFixed(1),
      r === base ? '' : `${(r.callsPerSec / base.callsPerSec).toFixed(1)}x`,
      r === base ? '' : `${(r.latencyMs.mean / base.latencyMs.mean).toFixed(4)}x`,
    ]);
  }
  console.log(
    `\nlibvirt-calls.bench — "state of domain ${NAME}" (defined, not running) on ${URI}: lookupDomainByName + getDomainState ` +
      `(2 RPCs) over one @kloudak/libvirt connection, against \`virsh -c ${URI} domstate NAME\` spawned per call.\n` +
      `ratio = ours / virsh (calls/s: higher is faster; mean latency: lower is faster). In flight = calls outstanding at once ` +
      `(its latency includes queueing). own CPU = this process only (virsh's own CPU is not counted).\n` +
      `Machine: ${machine().cpus} cores (${machine().cpuModel}), ${busyBefore}% of a core busy before the start.\n`,
  );
  console.log(table(rows));

  const file = writeResults('libvirt-calls', started, {
    bench: 'libvirt-calls',
    startedAt: started.toISOString(),
    finishedAt: new Date().toISOString(),
    machine: { ...machine(), busyPctBeforeStart: busyBefore },
    settings: { uri: URI, calls: CALLS, concurrency: CONCURRENCY, virshCalls: VIRSH_CALLS, rounds: ROUNDS },
    results,
  });
  console.log(`\nresults: ${file}`);
  return 0;
}

runBench('libvirt-calls', main);
