// Load generator of agent-link.bench and soak.bench: a child process (forked with an IPC channel) that runs a
// share of the simulated agents (`@kloudak/orchestrator/agent-testing`). It lives in a process of
// its own so the sims' CPU is never counted as the server's, and several of them spread the sims
// over the cores. The parent drives it with messages (see `Request`), one at a time.
//
// What it measures, per measuring window: heartbeats sent and lease grants received, the
// heartbeat → grant latency of every grant (the sim's clock from the moment it sends the heartbeat
// to the moment its grant is handled, so the worker's own event-loop delay is included — hence
// the loop-delay figures beside it), sessions opened and ended (a reconnect under load would show
// here), and its own CPU time.
import { monitorEventLoopDelay, performance } from 'node:perf_hooks';
import { enrollSimAgent, SimAgent, type SimAgentOptions, type SimIdentity } from '@kloudak/orchestrator/agent-testing';

/** Messages from the parent. */
export type Request =
  | { op: 'enroll'; address: string; items: { joinToken: string; hostName: string }[]; concurrency: number }
  /** Sim i (in enrollment order) connects to `addresses[i % addresses.length]`. */
  | { op: 'start'; addresses: string[]; count: number; heartbeatMs: number; concurrency: number }
  | { op: 'stopAll' }
  | { op: 'windowStart' }
  | { op: 'windowEnd' }
  | { op: 'exit' };

/** What a worker reports at the end of a measuring window. */
export interface WindowReport {
  agents: number;
  seconds: number;
  heartbeatsSent: number;
  grants: number;
  /** Every heartbeat → grant latency seen in the window, ms. */
  latenciesMs: Float64Array;
  /** Heartbeats sent but not answered at the window's end, and those older than 2 s among them. */
  outstanding: number;
  outstandingOver2s: number;
  sessionsOpened: number;
  sessionsEnded: number;
  /** Event-loop delay of this worker during the window, ms. */
  loopDelayMs: { p50: number; p99: number; max: number };
  /** CPU seconds (user + system) this worker used in the window. */
  cpuS: number;
}

/** Answers to the parent: `{ok: true, ...}` or `{ok: false, error}`. */
export type Reply = { ok: true; [k: string]: unknown } | { ok: false; error: string };

/** A SimAgent that remembers when it sent each heartbeat so the grant's latency can be taken. */
class TimedSimAgent extends SimAgent {
  /** Send time (performance.now()) by heartbeat sequence, of the current session. */
  readonly inFlight = new Map<bigint, number>();

  constructor(opts: SimAgentOptions, onGrant: (ms: number) => void) {
    super(opts);
    // Sequences restart in each session: what an ended one left unanswered never will be.
    this.on('end', () => this.inFlight.clear());
    this.on('lease', (g: { heartbeatSequence: bigint }) => {
      const t = this.inFlight.get(g.heartbeatSequence);
      if (t === undefined) return;
      this.inFlight.delete(g.heartbeatSequence);
      onGrant(performance.now() - t);
    });
  }

  override heartbeat(): bigint {
    const t = performance.now();
    const seq = super.heartbeat();
    this.inFlight.set(seq, t);
    return seq;
  }
}

const identities: SimIdentity[] = [];
const agents: TimedSimAgent[] = [];
let addressOfAgents = '';

// Window counters.
let latencies: number[] = [];
let grants = 0;
let sessionsEnded = 0;
let windowT0 = 0;
let windowCpu0 = process.cpuUsage();
let sent0 = 0;
let sessions0 = 0;
const loopDelay = monitorEventLoopDelay({ resolution: 10 });
loopDelay.enable();

const onGrant = (ms: number) => {
  grants += 1;
  latencies.push(ms);
};

/** Run `fn` over `items` with at most `limit` in flight; collects failures rather than stopping. */
async function bounded<T>(items: T[], limit: number, fn: (item: T, i: number) => Promise<void>): Promise<string[]> {
  const failures: string[] = [];
  let next = 0;
  const lane = async () => {
    for (let i = next++; i < items.length; i = next++) {
      try {
        await fn(items[i] as T, i);
      } catch (err) {
        failures.push(String((err as Error)?.message ?? err));
      }
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(limit, items.length)) }, lane));
  return failures;
}

async function handle(req: Request): Promise<Reply> {
  switch (req.op) {
    case 'enroll': {
      const t0 = performance.now();
      const got: SimIdentity[] = new Array<SimIdentity>(req.items.length);
      const failures = await bounded(req.items, req.concurrency, async (it, i) => {
        got[i] = await enrollSimAgent({ address: req.address, joinToken: it.joinToken, hostName: it.hostName });
      });
      for (const id of got) if (id) identities.push(id);
      return { ok: true, enrolled: got.filter(Boolean).length, total: identities.length, ms: performance.now() - t0, failures: failures.slice(0, 5), failed: failures.length };
    }
    case 'start': {
      const where = req.addresses.join(',');
      if (req.addresses.length === 0) return { ok: false, error: 'no address to connect to' };
      if (agents.length > 0 && addressOfAgents !== where) return { ok: false, error: 'stop the running agents before pointing them at another server' };
      addressOfAgents = where;
      const want = Math.min(req.count, identities.length);
      const fresh: TimedSimAgent[] = [];
      for (let i = agents.length; i < want; i++) {
        const a = new TimedSimAgent({ address: req.addresses[i % req.addresses.length] as string, identity: identities[i] as SimIdentity, heartbeatMs: req.heartbeatMs }, onGrant);
        a.on('end', () => (sessionsEnded += 1));
        fresh.push(a);
      }
      const t0 = performance.now();
      const failures = await bounded(fresh, req.concurrency, async (a) => {
        await a.start();
      });
      agents.push(...fresh);
      return { ok: true, running: agents.length, ms: performance.now() - t0, failures: failures.slice(0, 5), failed: failures.length };
    }
    case 'stopAll': {
      const t0 = performance.now();
      await Promise.all(agents.map((a) => a.stop()));
      agents.length = 0;
      return { ok: true, ms: performance.now() - t0 };
    }
    case 'windowStart': {
      latencies = [];
      grants = 0;
      sessionsEnded = 0;
      sent0 = agents.reduce((n, a) => n + a.stats.heartbeatsSent, 0);
      sessions0 = agents.reduce((n, a) => n + a.stats.sessions, 0);
      loopDelay.reset();
      windowCpu0 = process.cpuUsage();
      windowT0 = performance.now();
      return { ok: true };
    }
    case 'windowEnd': {
      const now = performance.now();
      const cpu = process.cpuUsage(windowCpu0);
      let outstanding = 0;
      let over2s = 0;
      for (const a of agents) {
        outstanding += a.inFlight.size;
        for (const t of a.inFlight.values()) if (now - t > 2000) over2s += 1;
      }
      const report: WindowReport = {
        agents: agents.length,
        seconds: (now - windowT0) / 1000,
        heartbeatsSent: agents.reduce((n, a) => n + a.stats.heartbeatsSent, 0) - sent0,
        grants,
        latenciesMs: Float64Array.from(latencies),
        outstanding,
        outstandingOver2s: over2s,
        sessionsOpened: agents.reduce((n, a) => n + a.stats.sessions, 0) - sessions0,
        sessionsEnded,
        loopDelayMs: { p50: loopDelay.percentile(50) / 1e6, p99: loopDelay.percentile(99) / 1e6, max: loopDelay.max / 1e6 },
        cpuS: (cpu.user + cpu.system) / 1e6,
      };
      return { ok: true, report };
    }
    case 'exit':
      await Promise.all(agents.map((a) => a.stop()));
      setImmediate(() => process.exit(0));
      return { ok: true };
    default:
      return { ok: false, error: `unknown op ${(req as { op: string }).op}` };
  }
}

if (!process.send) {
  console.error('agent-link-sim-worker: must be started by agent-link.bench.js with an IPC channel');
  process.exit(2);
}
// Requests are handled one after the other, in the order they came.
let queue: Promise<void> = Promise.resolve();
process.on('message', (req: Request) => {
  queue = queue.then(async () => {
    let reply: Reply;
    try {
      reply = await handle(req);
    } catch (err) {
      reply = { ok: false, error: String((err as Error)?.stack ?? err) };
    }
    process.send?.(reply);
  });
});
// The parent gone (crash, Ctrl-C): do not linger with open streams.
process.on('disconnect', () => process.exit(0));
