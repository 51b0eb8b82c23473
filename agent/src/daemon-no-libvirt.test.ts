// An agent whose libvirtd does not answer still fences (AGENT-LINK.md, "Self-fencing"), with real
// processes and no orchestrator (it enrolled, then the orchestrator went away):
// 1. libvirtd absent at start (its socket path leads nowhere): the provisional lease is armed at
//    once, and when it runs out the agent kills the HA QEMU from its pid file (real QEMU processes
//    in a run dir of the test's, as libvirt starts them); the non-HA QEMU and a live process that
//    took a stale pid file's pid keep running;
// 2. the system libvirtd frozen (SIGSTOP) after the agent connected: libvirt's calls time out and
//    the agent kills the HA domain's QEMU from libvirt's own pid file (/run/libvirt/qemu); once
//    libvirtd is thawed it sees that QEMU gone, and the non-HA domain still runs.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Libvirt, type DomainRef } from '@kloudak/libvirt';
import { ensureLibvirtd } from '@kloudak/libvirt/testing';
import { pino } from 'pino';
import { DEFAULT_QEMU_RUN_DIR, loadAgentConfig } from './config.js';
import { startAgent, type AgentHandle } from './daemon.js';
import { bootId, hostMonoMs, type LeaseState } from './fence/lease-state.js';
import { FenceStore, type StoredFenceRecord } from './fence/records.js';
import { enroll } from './link/enroll.js';
import { makeJoinToken, makeTestCa, TestOrchestrator } from './link/test-orchestrator.js';
import { domainName } from './names.js';
import { startRunDirQemu, statusXml, type RunDirQemu } from './testing/qemu-run-dir.js';
import { KLOUDAK_VM_NS } from './xml/domain.js';

const LEASE_MS = 1500;

/** The first finished fence record in `dataDir`, waited for. */
async function firstRecord(dataDir: string, timeoutMs: number): Promise<StoredFenceRecord> {
  const store = new FenceStore(dataDir);
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const [r] = await store.finished();
    if (r) return r;
    if (Date.now() > deadline) throw new Error(`no fence record within ${timeoutMs} ms`);
    await new Promise((res) => setTimeout(res, 25));
  }
}

describe('self-fencing without libvirtd: QEMU killed from its pid file', { timeout: 90_000 }, () => {
  let dir: string;
  let orchestrator: string;
  const log = pino({ level: process.env['KLOUDAK_TEST_LOG'] ?? 'silent' });
  const children: ChildProcess[] = [];

  /** A data dir with an identity (enrolled with the test orchestrator, which is gone by the time the agent runs). */
  async function enrolledDataDir(name: string): Promise<string> {
    const dataDir = join(dir, name);
    copyIdentity(join(dir, 'identity'), dataDir);
    return dataDir;
  }

  function config(dataDir: string, over: NodeJS.ProcessEnv) {
    return loadAgentConfig({
      env: {
        KLOUDAK_AGENT_CONFIG: join(dir, 'none.yaml'),
        KLOUDAK_AGENT_ORCHESTRATOR: orchestrator,
        KLOUDAK_AGENT_DATA_DIR: dataDir,
        KLOUDAK_AGENT_HOSTNAME: 'nolibvirt-1',
        KLOUDAK_AGENT_LIBVIRT_URI: 'qemu:///system',
        KLOUDAK_AGENT_DOMAIN_TYPE: 'qemu',
        KLOUDAK_AGENT_CONSOLE_DIR: join(dir, 'console'),
        KLOUDAK_AGENT_HEARTBEAT_MS: '200',
        KLOUDAK_AGENT_FENCE_LEASE_MS: String(LEASE_MS),
        KLOUDAK_AGENT_FENCE_LIBVIRT_TIMEOUT_MS: '300',
        KLOUDAK_AGENT_DRAIN_TIMEOUT_MS: '1000',
        ...over,
      },
      argv: [],
    });
  }

  /**
   * Starts an agent whose libvirtd is absent (its socket leads nowhere), fencing from `runDir`: its
   * start waits for libvirt until `stop` is aborted. `t0`: when it was started.
   */
  function startWithoutLibvirt(dataDir: string, runDir: string, over: NodeJS.ProcessEnv = {}) {
    const cfg = config(dataDir, { KLOUDAK_AGENT_LIBVIRT_SOCKET: join(dir, 'no-libvirtd.sock'), KLOUDAK_AGENT_QEMU_RUN_DIR: runDir, ...over });
    const stop = new AbortController();
    const t0 = performance.now();
    const starting = startAgent(cfg, { log, signal: stop.signal, fenceRetryMs: 100, backoff: { initialMs: 100, maxMs: 500 } });
    starting.catch(() => undefined);
    return { stop, t0, starting };
  }

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'knolv-'));
    writeFileSync(join(dir, 'none.yaml'), '# empty\n');
    const ca = await makeTestCa();
    const orch = new TestOrchestrator({ ca, heartbeatIntervalMs: 200, leaseMs: LEASE_MS });
    await orch.start();
    const token = makeJoinToken(ca.caFingerprint);
    orch.tokens.add(token);
    await enroll({ orchestrator: orch.address, joinToken: token, hostName: 'nolibvirt-1', dataDir: join(dir, 'identity') });
    orchestrator = orch.address;
    // No orchestrator from here on: nothing will ever grant a lease.
    await orch.stop();
  });

  after(() => {
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  });

  it('libvirtd absent at start: the provisional lease runs out and the HA QEMU is killed, nothing else', async () => {
    const runDir = join(dir, 'run-qemu');
    mkdirSync(runDir);
    const qemus: RunDirQemu[] = [];
    const ha = await startRunDirQemu(runDir, randomUUID(), true);
    const plain = await startRunDirQemu(runDir, randomUUID(), false);
    qemus.push(ha, plain);
    children.push(ha.child, plain.child);
    // A stale pid file: that HA domain's QEMU is gone and its pid now belongs to another program.
    const other = spawn('sleep', ['60'], { stdio: 'ignore' });
    children.push(other);
    const staleId = randomUUID();
    writeFileSync(join(runDir, `${domainName(staleId)}.pid`), String(other.pid));
    writeFileSync(join(runDir, `${domainName(staleId)}.xml`), statusXml(staleId, true, other.pid!));

    const dataDir = await enrolledDataDir('absent');
    const { stop, t0, starting } = startWithoutLibvirt(dataDir, runDir);
    try {
      const { record } = await firstRecord(dataDir, LEASE_MS + 5000);
      const after = performance.now() - t0;
      assert.ok(after >= LEASE_MS - 50, `fenced ${after.toFixed(0)} ms after the start, not before the lease ran out`);
      assert.equal(await ha.exited, 'SIGKILL', 'the HA QEMU was killed with SIGKILL');
      assert.ok(plain.running(), 'the non-HA QEMU keeps running');
      assert.equal(other.exitCode, null, 'the process that took a stale pid is not touched');
      assert.equal(other.signalCode, null);
      assert.deepEqual(record.domains, [{ domainName: ha.name, vmId: ha.vmId, method: 'pidfile' }]);
      assert.equal(record.reason, 'lease expired');
      assert.equal(record.failures, undefined);
      assert.ok(record.fencedAt);
      // Still no libvirt: the agent's start is still waiting for it (and is stopped below).
      const pending = await Promise.race([starting.then(() => 'started', () => 'failed'), new Promise((r) => setTimeout(() => r('waiting'), 50))]);
      assert.equal(pending, 'waiting');
    } finally {
      stop.abort();
      await assert.rejects(starting, 'a start stopped while waiting for libvirt fails');
      for (const q of qemus) q.child.kill('SIGKILL');
      other.kill('SIGKILL');
      await Promise.all(qemus.map((q) => q.exited));
    }
    assert.equal((await new FenceStore(dataDir).finished()).length, 1, 'one fence, and no more once the start was stopped');
  });

  it('a restarted agent’s provisional lease ends where the previous process’s lease ended (lease.json), not a whole lease later', async () => {
    const runDir = join(dir, 'run-qemu-restart');
    mkdirSync(runDir);
    const ha = await startRunDirQemu(runDir, randomUUID(), true);
    children.push(ha.child);
    const dataDir = await enrolledDataDir('restarted');
    const LEFT_MS = 300;
    const state: LeaseState = { bootId: bootId(), endHostMonoMs: hostMonoMs() + LEFT_MS, pid: 1 };
    writeFileSync(join(dataDir, 'lease.json'), JSON.stringify(state));
    const { stop, t0, starting } = startWithoutLibvirt(dataDir, runDir, { KLOUDAK_AGENT_FENCE_GUARD: 'false' });
    try {
      const { record } = await firstRecord(dataDir, LEASE_MS + 5000);
      const after = performance.now() - t0;
      assert.ok(after < LEASE_MS - 300, `fenced ${after.toFixed(0)} ms after the start: at the recorded end, not a whole lease (${LEASE_MS} ms) later`);
      assert.equal(await ha.exited, 'SIGKILL');
      assert.deepEqual(record.domains, [{ domainName: ha.name, vmId: ha.vmId, method: 'pidfile' }]);
    } finally {
      stop.abort();
      await starting.catch(() => undefined);
      ha.child.kill('SIGKILL');
      await ha.exited;
    }
  });

  it('libvirtd frozen (SIGSTOP) after the agent connected: its calls time out and the HA QEMU is killed from libvirt’s pid file', async () => {
    await ensureLibvirtd();
    const lv = await Libvirt.connect({ uri: 'qemu:///system' });
    const haId = randomUUID();
    const plainId = randomUUID();
    const doms: DomainRef[] = [];
    let agent: AgentHandle | undefined;
    let frozen = 0;
    try {
      for (const [vmId, ha] of [
        [haId, true],
        [plainId, false],
      ] as const) {
        // A real QEMU started by libvirtd, paused (no guest code runs): its pid file and status XML are libvirt's.
        const dom = await lv.defineDomain(minimalDomainXml(vmId, ha));
        doms.push(dom);
        await lv.createDomain(dom, 1 /* VIR_DOMAIN_START_PAUSED */);
      }
      const haPid = Number(readFileSync(join(DEFAULT_QEMU_RUN_DIR, `${domainName(haId)}.pid`), 'utf8').trim());
      const plainPid = Number(readFileSync(join(DEFAULT_QEMU_RUN_DIR, `${domainName(plainId)}.pid`), 'utf8').trim());
      assert.ok(haPid > 1 && plainPid > 1);

      const dataDir = await enrolledDataDir('frozen');
      // The real run dir (the default for qemu:///system).
      const cfg = config(dataDir, { KLOUDAK_AGENT_FENCE_LEASE_MS: '3000' });
      assert.equal(cfg.qemuRunDir, DEFAULT_QEMU_RUN_DIR);
      agent = await startAgent(cfg, { log, fenceRetryMs: 100, backoff: { initialMs: 100, maxMs: 500 } });
      assert.ok(agent.lease.valid, 'started within the provisional lease');
      const libvirtd = Number(execFileSync('pgrep', ['-x', '-o', 'libvirtd'], { encoding: 'utf8' }).trim());
      process.kill(libvirtd, 'SIGSTOP');
      frozen = libvirtd;
      const { record } = await firstRecord(dataDir, 3000 + 5000);
      assert.ok(!existsSync(`/proc/${haPid}/cmdline`) || readFileSync(`/proc/${haPid}/cmdline`, 'utf8') === '', 'the HA QEMU is dead');
      assert.match(readFileSync(`/proc/${plainPid}/cmdline`, 'utf8'), new RegExp(`guest=${domainName(plainId)}`), 'the non-HA QEMU runs');
      const mine = record.domains.filter((d) => d.vmId === haId || d.vmId === plainId);
      assert.deepEqual(mine, [{ domainName: domainName(haId), vmId: haId, method: 'pidfile' }]);
      assert.equal(record.failures, undefined);

      process.kill(libvirtd, 'SIGCONT');
      frozen = 0;
      // libvirtd, thawed, sees the HA QEMU's monitor closed: that domain is off; the other runs.
      const deadline = Date.now() + 15_000;
      for (;;) {
        const st = await lv.getDomainState(doms[0]!);
        if (st.state === 5 /* SHUTOFF */) break;
        if (Date.now() > deadline) throw new Error(`the HA domain is still in state ${st.state}`);
        await new Promise((r) => setTimeout(r, 100));
      }
      assert.equal((await lv.getDomainState(doms[1]!)).state, 3 /* PAUSED: running QEMU, started paused */);
    } finally {
      if (frozen) process.kill(frozen, 'SIGCONT');
      await agent?.stop();
      for (const dom of doms) {
        await lv.destroyDomain(dom).catch(() => undefined);
        await lv.undefineDomain(dom).catch(() => undefined);
      }
      await lv.close();
    }
  });
});

/** Copies an agent identity (identity.json, key, certificates) into a new data dir. */
function copyIdentity(from: string, to: string): void {
  mkdirSync(to, { recursive: true, mode: 0o700 });
  for (const f of ['identity.json', 'client.key', 'client.crt', 'ca.crt']) writeFileSync(join(to, f), readFileSync(join(from, f)), { mode: 0o600 });
}

/** The smallest domain libvirt's QEMU driver starts: no disk, no NIC, 32 MiB, with Kloudak's HA metadata. */
function minimalDomainXml(vmId: string, ha: boolean): string {
  return `<domain type='qemu'>
  <name>${domainName(vmId)}</name>
  <uuid>${vmId}</uuid>
  <metadata><kloudak:vm xmlns:kloudak='${KLOUDAK_VM_NS}'><kloudak:ha>${ha}</kloudak:ha></kloudak:vm></metadata>
  <memory unit='MiB'>32</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64'>hvm</type></os>
  <features><acpi/><apic/></features>
  <devices><memballoon model='none'/></devices>
</domain>`;
}
