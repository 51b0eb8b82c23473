// Fence reporting on the link, with the real daemon against the in-test orchestrator (mTLS, real
// grpc-js) on simulated hosts (libvirt's test driver through libvirtd): only finished records are
// reported, each at most once per session; and a fence directory the agent cannot read or write
// (a regular file where the directory should be) neither kills the agent nor keeps it from
// destroying its HA domains when the lease runs out.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ensureLibvirtd } from '@kloudak/libvirt/testing';
import * as pb from '@kloudak/proto/agent';
import { pino } from 'pino';
import { loadAgentConfig } from '../config.js';
import { startAgent, type AgentHandle } from '../daemon.js';
import { LibvirtHypervisor } from '../hypervisor/libvirt-hypervisor.js';
import { domainName } from '../names.js';
import { createSimHost } from '../testing/sim-host.js';
import { ensureOvs } from '../testing/ovs-service.js';
import { makeJoinToken, makeTestCa, TestOrchestrator, type TestSession } from './test-orchestrator.js';

const LEASE_MS = 1500;

describe('fence reports on the link (daemon, simulated hosts)', { timeout: 120_000 }, () => {
  let orch: TestOrchestrator;
  let dir: string;
  const agents: AgentHandle[] = [];
  const log = pino({ level: process.env['KLOUDAK_TEST_LOG'] ?? 'silent' });

  /** A fresh simulated host and data dir; `prepare` runs on the data dir before the agent starts. */
  async function start(name: string, prepare: (dataDir: string) => void): Promise<AgentHandle> {
    const hostDir = join(dir, name);
    const dataDir = join(hostDir, 'data');
    mkdirSync(dataDir, { recursive: true });
    prepare(dataDir);
    const sim = createSimHost({ dir: hostDir });
    const token = makeJoinToken((await caP).caFingerprint);
    orch.tokens.add(token);
    const env: NodeJS.ProcessEnv = {
      KLOUDAK_AGENT_CONFIG: join(dir, 'none.yaml'),
      KLOUDAK_AGENT_ORCHESTRATOR: orch.address,
      KLOUDAK_AGENT_DATA_DIR: dataDir,
      KLOUDAK_AGENT_HOSTNAME: name,
      KLOUDAK_AGENT_LIBVIRT_URI: sim.uri,
      KLOUDAK_AGENT_DOMAIN_TYPE: 'qemu',
      KLOUDAK_AGENT_OVS_DATAPATH: 'netdev',
      KLOUDAK_AGENT_NIC_OFFLOAD: 'off',
      KLOUDAK_AGENT_CONSOLE_DIR: join(hostDir, 'console'),
      KLOUDAK_AGENT_HEARTBEAT_MS: '200',
      KLOUDAK_AGENT_FENCE_LEASE_MS: String(LEASE_MS),
      KLOUDAK_AGENT_DRAIN_TIMEOUT_MS: '5000',
      KLOUDAK_AGENT_JOIN_TOKEN: token,
    };
    const agent = await startAgent(loadAgentConfig({ env, argv: [] }), { log, backoff: { initialMs: 100, maxMs: 500 }, fenceRetryMs: 100 });
    agents.push(agent);
    (agent as { sim?: typeof sim }).sim = sim;
    return agent;
  }
  const caP = makeTestCa();
  const sessionsOf = (a: AgentHandle): TestSession[] => orch.sessions.filter((s) => s.hostId === a.identity.hostId);
  const reportsIn = (s: TestSession): pb.FenceReport[] => s.messages.flatMap((m) => (m.body?.$case === 'fenceReport' ? [m.body.fenceReport] : []));
  const createHaVm = async (a: AgentHandle, vmId: string): Promise<void> => {
    const sim = (a as { sim?: ReturnType<typeof createSimHost> }).sim!;
    const r = await orch.command({
      deadline: undefined,
      vmId,
      action: { $case: 'createVm', createVm: { hostname: 'ha', cpu: 1, ramMb: 128, diskGb: 1, pool: sim.poolName, templateVolume: sim.templateVolume, nics: [], sshAuthorizedKeys: [], passwordHash: '', ha: true, boot: undefined, userData: '', recover: false, defineOnly: false } },
    });
    assert.equal(r.ok, true, JSON.stringify(r.error));
  };
  const waitUntil = async (what: string, pred: () => Promise<boolean> | boolean, timeoutMs = 10_000): Promise<void> => {
    const deadline = Date.now() + timeoutMs;
    while (!(await pred())) {
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  };

  before(async () => {
    await ensureLibvirtd();
    await ensureOvs();
    dir = mkdtempSync(join(tmpdir(), 'klink-'));
    writeFileSync(join(dir, 'none.yaml'), '# empty\n');
    orch = new TestOrchestrator({ ca: await caP, heartbeatIntervalMs: 150, leaseMs: LEASE_MS });
    await orch.start();
  });

  after(async () => {
    for (const a of agents) await a.stop().catch(() => undefined);
    await orch?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('reports only finished records, each once per session, and deletes them once acknowledged', async () => {
    const finished = { leaseExpiredAt: '2026-12-01T10:00:00.000Z', reason: 'lease expired', domains: [{ domainName: 'kloudak-x', vmId: '' }], fencedAt: '2026-12-01T10:00:00.500Z' };
    // What an older agent left when it crashed mid-fence: no fencedAt, no domains yet.
    const unfinished = { leaseExpiredAt: '2026-12-01T11:00:00.000Z', reason: 'lease expired', domains: [] };
    const agent = await start('rep', (data) => {
      mkdirSync(join(data, 'fence'));
      writeFileSync(join(data, 'fence', '2026-12-01T10:00:00.000Z.json'), JSON.stringify(finished));
      writeFileSync(join(data, 'fence', '2026-12-01T11:00:00.000Z.json'), JSON.stringify(unfinished));
    });
    await waitUntil('the finished record to be acknowledged and deleted', async () => (await agent.fenceStore.finished()).length === 0);
    const first = sessionsOf(agent)[0]!;
    assert.deepEqual(
      reportsIn(first).map((r) => r.leaseExpiredAt?.toISOString()),
      [finished.leaseExpiredAt],
      'the finished record only: never one still in progress',
    );

    // A real fence: grants stop, the HA domain is destroyed, the record is reported.
    const vmId = randomUUID();
    await createHaVm(agent, vmId);
    const fenced = agent.fencing();
    orch.pauseGrants = true;
    await fenced;
    orch.pauseGrants = false;
    assert.equal(await new LibvirtHypervisor(agent.libvirt).state(domainName(vmId)), 'shutoff');
    await waitUntil('the new record to be acknowledged and deleted', async () => (await agent.fenceStore.finished()).length === 0);
    const all = sessionsOf(agent).flatMap(reportsIn);
    const fresh = all.filter((r) => r.domains.some((d) => d.vmId === vmId));
    assert.ok(fresh.length >= 1, 'the fence was reported');
    assert.ok(fresh.every((r) => r.fencedAt instanceof Date), 'with fencedAt');
    for (const s of sessionsOf(agent)) {
      const keys = reportsIn(s).map((r) => `${r.leaseExpiredAt?.toISOString()} ${r.reason}`);
      assert.equal(new Set(keys).size, keys.length, `no record twice on one session: ${keys.join(', ')}`);
      assert.ok(reportsIn(s).every((r) => r.fencedAt instanceof Date && r.leaseExpiredAt?.toISOString() !== unfinished.leaseExpiredAt));
    }
    await agent.stop(); // the test orchestrator sends commands on the last open session: one agent at a time
  });

  it('with a fence directory it cannot read or write, the agent lives on and still destroys its HA domains', async () => {
    // A regular file where fence/ should be: readdir fails (ENOTDIR) and so does every write.
    const agent = await start('bad', (data) => writeFileSync(join(data, 'fence'), 'not a directory'));
    await orch.waitFor('heartbeats after Hello', () => sessionsOf(agent).some((s) => s.messages.filter((m) => m.body?.$case === 'heartbeat').length >= 3) || undefined);
    assert.ok(agent.lease.valid);

    const vmId = randomUUID();
    await createHaVm(agent, vmId);
    const sessions = sessionsOf(agent).length;
    const fenced = agent.fencing();
    orch.pauseGrants = true;
    await fenced;
    orch.pauseGrants = false;
    assert.equal(await new LibvirtHypervisor(agent.libvirt).state(domainName(vmId)), 'shutoff', 'destroyed although no record can be written');

    // Still alive: a new session, heartbeats granted, commands answered.
    await orch.waitFor('a new session with granted heartbeats', () =>
      sessionsOf(agent).slice(sessions).some((s) => !s.ended && s.messages.filter((m) => m.body?.$case === 'heartbeat').length >= 3) || undefined,
    );
    await waitUntil('the lease to be held again', () => agent.lease.valid);
    const inv = await orch.command({ deadline: undefined, vmId: '', action: { $case: 'getInventory', getInventory: {} } });
    assert.equal(inv.payload?.$case, 'inventory');
  });
});
