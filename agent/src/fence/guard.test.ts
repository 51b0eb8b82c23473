// The fence guard (fence/guard.ts) and the lease state file (fence/lease-state.ts).
// - Pure parts: the provisional lease a starting agent takes from the previous one's record; the
//   guard's decisions on an injected clock, with a recording stand-in for the pid files.
// - Real processes: an agent process (agent/dist/main.js) on a simulated host, holding a lease from
//   the test orchestrator, with real QEMU processes in a libvirt-like run dir. The agent is frozen
//   (SIGSTOP): its guard kills the HA QEMU after the lease's end, not before, and not the other
//   one; the thawed agent reports the guard's record. Then the agent alone is SIGKILLed: its
//   orphaned guard kills the HA QEMU started meanwhile at the lease's end, and exits.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ensureLibvirtd } from '@kloudak/libvirt/testing';
import { pino } from 'pino';
import { makeJoinToken, makeTestCa, TestOrchestrator } from '../link/test-orchestrator.js';
import { domainName } from '../names.js';
import { createSimHost } from '../testing/sim-host.js';
import { startRunDirQemu, type RunDirQemu } from '../testing/qemu-run-dir.js';
import { FenceGuard } from './guard.js';
import { hostMonoMs, provisionalLeaseMs, type LeaseState } from './lease-state.js';
import type { PidfileKillResult } from './qemu-pidfiles.js';
import { FenceStore, type FenceRecord } from './records.js';

const silent = pino({ level: 'silent' });

/** Polls `f` every 25 ms until it gives a value. */
async function poll<T>(what: string, f: () => Promise<T | undefined>, timeoutMs: number): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await f();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

describe('provisional lease of a starting agent', () => {
  const at = (endHostMonoMs: number, boot = 'b1'): LeaseState => ({ bootId: boot, endHostMonoMs, pid: 1 });
  const o = { bootId: 'b1', nowHostMonoMs: 10_000, maxMs: 15_000, overdueMs: 5000 };
  it('ends where the previous agent’s lease ended, never later than a whole lease', () => {
    assert.equal(provisionalLeaseMs(at(14_000), o), 4000);
    assert.equal(provisionalLeaseMs(at(90_000), o), 15_000, 'capped at maxMs');
    assert.equal(provisionalLeaseMs(at(9_000), o), 5000, 'already over: a short while to reach the orchestrator');
    assert.equal(provisionalLeaseMs(at(9_000), { ...o, maxMs: 2000 }), 2000, 'never more than maxMs');
  });
  it('a whole lease without a record of this boot', () => {
    assert.equal(provisionalLeaseMs(null, o), 15_000);
    assert.equal(provisionalLeaseMs(at(11_000, 'b0'), o), 15_000, 'another boot');
    assert.equal(provisionalLeaseMs(at(11_000, ''), { ...o, bootId: '' }), 15_000, 'no boot id');
  });
});

describe('fence guard decisions', () => {
  function setup(over: { state?: LeaseState | null; killed?: string[] } = {}) {
    let now = 0;
    const sweeps: number[] = [];
    const records: FenceRecord[] = [];
    const name = domainName(randomUUID());
    const guard = new FenceGuard({
      pidfiles: {
        killHa: (): Promise<PidfileKillResult> => {
          sweeps.push(now);
          const killed = (over.killed ?? [name]).map((domainName) => ({ domainName, pid: 4242 }));
          over.killed = []; // a second sweep finds nothing left
          return Promise.resolve({ killed, notRunning: [], failures: [] });
        },
      },
      store: {
        create: (r: FenceRecord) => {
          records.push(r);
          return Promise.resolve('f.json');
        },
      },
      log: silent,
      graceMs: 500,
      now: () => now,
      wallNow: () => 1_700_000_000_000 + now,
      agentPid: 100,
      bootId: 'b1',
      readState: () => Promise.resolve(over.state ?? null),
    });
    return { guard, sweeps, records, name, setNow: (t: number) => (now = t) };
  }

  it('never acts while the lease is held or within the grace; sweeps after it until a later end comes', async () => {
    const g = setup();
    await g.guard.tick();
    assert.deepEqual(g.sweeps, [], 'no lease known yet: nothing');
    g.guard.lease(1000);
    for (const t of [0, 999, 1000, 1499]) {
      g.setNow(t);
      await g.guard.tick();
    }
    assert.deepEqual(g.sweeps, [], 'held, then within the grace');
    g.setNow(1500);
    await g.guard.tick();
    g.setNow(1750);
    await g.guard.tick();
    assert.deepEqual(g.sweeps, [1500, 1750], 'every check while the lease is over');
    assert.equal(g.records.length, 1, 'a record for the sweep that killed, none for the empty one');
    assert.deepEqual(g.records[0]!.domains, [{ domainName: g.name, vmId: g.name.slice(-36), method: 'pidfile' }]);
    assert.equal(g.records[0]!.leaseExpiredAt, new Date(1_700_000_000_000 + 1000).toISOString());
    assert.match(g.records[0]!.reason, /fence guard/);
    g.guard.lease(5000); // the agent came back and got a grant
    g.setNow(2000);
    await g.guard.tick();
    assert.deepEqual(g.sweeps, [1500, 1750]);
  });

  it('released by a clean stop: never acts again', async () => {
    const g = setup();
    g.guard.lease(1000);
    g.guard.release();
    await g.guard.done;
    g.setNow(5000);
    await g.guard.tick();
    assert.deepEqual(g.sweeps, []);
  });

  it('the agent gone: fences at the lease’s end once, then exits', async () => {
    const g = setup();
    g.guard.lease(1000);
    g.guard.agentGone();
    await new Promise((r) => setImmediate(r)); // the check agentGone starts
    g.setNow(800);
    await g.guard.tick();
    assert.deepEqual(g.sweeps, []);
    g.setNow(1600);
    await g.guard.tick();
    await g.guard.done;
    assert.deepEqual(g.sweeps, [1600]);
  });

  it('the agent gone and another agent process holds the lease: exits without fencing', async () => {
    const g = setup({ state: { bootId: 'b1', endHostMonoMs: 9000, pid: 200 } });
    g.guard.lease(1000);
    g.guard.agentGone();
    await new Promise((r) => setImmediate(r));
    g.setNow(1600);
    await g.guard.tick();
    await g.guard.done;
    assert.deepEqual(g.sweeps, []);
  });
});

const LEASE_MS = 2000;
const GRACE_MS = 400;
const AGENT_MAIN = fileURLToPath(new URL('../main.js', import.meta.url));

describe('fence guard beside a real agent process', { timeout: 90_000 }, () => {
  let dir: string;
  let runDir: string;
  let orch: TestOrchestrator;
  let ca: Awaited<ReturnType<typeof makeTestCa>>;
  let simUri: string;
  const procs: ChildProcess[] = [];

  before(async () => {
    await ensureLibvirtd();
    dir = mkdtempSync(join(tmpdir(), 'kguard-'));
    runDir = join(dir, 'run-qemu');
    mkdirSync(runDir);
    writeFileSync(join(dir, 'none.yaml'), '# empty\n');
    ca = await makeTestCa();
    orch = new TestOrchestrator({ ca, heartbeatIntervalMs: 200, leaseMs: LEASE_MS });
    await orch.start();
    simUri = createSimHost({ dir, cpus: 4, memoryMb: 4096 }).uri;
  });

  after(async () => {
    for (const p of procs) {
      if (p.exitCode === null && p.signalCode === null) {
        try {
          process.kill(-p.pid!, 'SIGCONT');
          process.kill(-p.pid!, 'SIGKILL');
        } catch {
          p.kill('SIGKILL');
        }
      }
    }
    await orch?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  function spawnAgent(dataDir: string): { child: ChildProcess; output: () => string; exited: Promise<void> } {
    let out = '';
    // A join token of its own (one use each): every agent here enrolls on its first start.
    const token = makeJoinToken(ca.caFingerprint);
    orch.tokens.add(token);
    const child = spawn(process.execPath, [AGENT_MAIN], {
      env: {
        PATH: process.env['PATH'] ?? '',
        KLOUDAK_AGENT_CONFIG: join(dir, 'none.yaml'),
        KLOUDAK_AGENT_ORCHESTRATOR: orch.address,
        KLOUDAK_AGENT_JOIN_TOKEN: token,
        KLOUDAK_AGENT_DATA_DIR: dataDir,
        KLOUDAK_AGENT_HOSTNAME: `guard-${procs.length}`,
        KLOUDAK_AGENT_LIBVIRT_URI: simUri,
        KLOUDAK_AGENT_QEMU_RUN_DIR: runDir,
        KLOUDAK_AGENT_CONSOLE_DIR: join(dir, 'console'),
        KLOUDAK_AGENT_HEARTBEAT_MS: '200',
        KLOUDAK_AGENT_FENCE_LEASE_MS: String(LEASE_MS),
        KLOUDAK_AGENT_FENCE_GUARD_GRACE_MS: String(GRACE_MS),
        KLOUDAK_AGENT_POOL_LEASES: 'false',
        KLOUDAK_AGENT_LOG_TARGET: 'stdout',
        KLOUDAK_AGENT_LOG_LEVEL: 'info',
      },
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: true,
    });
    procs.push(child);
    child.stdout?.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr?.on('data', (d: Buffer) => (out += d.toString()));
    const exited = new Promise<void>((r) => child.once('exit', () => r()));
    return { child, output: () => out, exited };
  }

  /** Heartbeats in the newest open session. */
  function heartbeats(): number {
    const s = orch.sessions.at(-1);
    return s && !s.ended ? s.messages.filter((m) => m.body?.$case === 'heartbeat').length : 0;
  }

  function leaseEnd(dataDir: string): number {
    return (JSON.parse(readFileSync(join(dataDir, 'lease.json'), 'utf8')) as LeaseState).endHostMonoMs;
  }

  function guardPid(output: string): number {
    for (const line of output.split('\n')) {
      if (!line.includes('fence guard started')) continue;
      return (JSON.parse(line) as { pid: number }).pid;
    }
    throw new Error(`no fence guard in the agent's output:\n${output}`);
  }

  /** Waits for the QEMU's end; returns the host monotonic time it was seen gone. */
  async function killedAt(q: RunDirQemu, timeoutMs: number): Promise<number> {
    const signal = await Promise.race([q.exited, new Promise<'timeout'>((r) => setTimeout(() => r('timeout'), timeoutMs))]);
    assert.equal(signal, 'SIGKILL', `the HA QEMU ${q.name} was killed with SIGKILL within ${timeoutMs} ms`);
    return hostMonoMs();
  }

  it('a frozen agent: its guard kills the HA QEMU after the lease’s end plus the grace, and nothing else; the agent, thawed, reports it', async () => {
    const dataDir = join(dir, 'frozen');
    const ha = await startRunDirQemu(runDir, randomUUID(), true);
    const plain = await startRunDirQemu(runDir, randomUUID(), false);
    procs.push(ha.child, plain.child);
    const agent = spawnAgent(dataDir);
    try {
      await orch.waitFor('the agent heartbeating', () => heartbeats() >= 3);
      const guard = guardPid(agent.output());
      process.kill(agent.child.pid!, 'SIGSTOP');
      const frozenAt = hostMonoMs();
      const end = leaseEnd(dataDir);
      assert.ok(end > frozenAt && end <= frozenAt + LEASE_MS, 'the lease was held at the freeze');
      const at = await killedAt(ha, LEASE_MS + GRACE_MS + 3000);
      assert.ok(at >= end + GRACE_MS, `killed ${(at - end).toFixed(0)} ms after the lease's end: not within the grace`);
      assert.ok(at <= end + GRACE_MS + 1500, `killed ${(at - end).toFixed(0)} ms after the lease's end`);
      assert.ok(plain.running(), 'the non-HA QEMU keeps running');
      // Written once the QEMU is seen gone.
      const rec = await poll('the guard’s fence record', async () => (await new FenceStore(dataDir).finished())[0], 3000);
      assert.deepEqual(rec.record.domains, [{ domainName: ha.name, vmId: ha.vmId, method: 'pidfile' }]);
      assert.match(rec.record.reason, /fence guard/);
      assert.ok(existsSync(`/proc/${guard}`), 'the guard keeps guarding while the agent is frozen');

      process.kill(agent.child.pid!, 'SIGCONT');
      // Thawed: its own lease is over, it drops the session and says Hello again, with the record.
      const report = await orch.waitFor('the fence report', () =>
        orch.sessions.flatMap((s) => s.messages).find((m) => m.body?.$case === 'fenceReport' && m.body.fenceReport.domains.some((d) => d.vmId === ha.vmId)),
      );
      assert.match(report.body?.$case === 'fenceReport' ? report.body.fenceReport.reason : '', /fence guard/);
      // A clean stop releases the guard.
      process.kill(agent.child.pid!, 'SIGTERM');
      await agent.exited;
      await gone(guard, 5000, 'the guard exits with the agent’s clean stop');
      assert.ok(plain.running(), 'the non-HA QEMU still runs');
    } finally {
      try {
        process.kill(agent.child.pid!, 'SIGCONT');
      } catch {
        // gone
      }
      plain.child.kill('SIGKILL');
      ha.child.kill('SIGKILL');
      await Promise.all([plain.exited, ha.exited]);
      rmSync(join(runDir), { recursive: true, force: true });
      mkdirSync(runDir);
    }
  });

  it('the agent SIGKILLed alone: its orphaned guard fences at the lease’s end and exits', async () => {
    const dataDir = join(dir, 'killed');
    const ha = await startRunDirQemu(runDir, randomUUID(), true);
    procs.push(ha.child);
    const agent = spawnAgent(dataDir);
    try {
      await orch.waitFor('the agent heartbeating', () => heartbeats() >= 3);
      const guard = guardPid(agent.output());
      assert.equal(agent.child.exitCode, null, agent.output());
      process.kill(agent.child.pid!, 'SIGKILL');
      await agent.exited;
      const end = leaseEnd(dataDir);
      const at = await killedAt(ha, LEASE_MS + GRACE_MS + 3000);
      assert.ok(at >= end + GRACE_MS, `killed ${(at - end).toFixed(0)} ms after the lease's end`);
      await gone(guard, 3000, 'the orphaned guard exits once it fenced');
    } finally {
      ha.child.kill('SIGKILL');
      await ha.exited;
    }
  });

  /** Resolves once the process `pid` is gone (its cmdline empty or missing), failing after `ms`. */
  async function gone(pid: number, ms: number, what: string): Promise<void> {
    const deadline = Date.now() + ms;
    while (existsSync(`/proc/${pid}/cmdline`) && readFileSync(`/proc/${pid}/cmdline`, 'utf8') !== '') {
      assert.ok(Date.now() < deadline, what);
      await new Promise((r) => setTimeout(r, 50));
    }
  }
});
