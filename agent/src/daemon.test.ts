// The agent daemon against a minimal in-test orchestrator (real grpc-js, real proto, real TLS with
// a CA made here) on a simulated host (libvirt's test driver through the real libvirtd): enrollment
// with CA pinning, Hello, heartbeats and grants, commands with their rules, domain events, and
// self-fencing when grants stop, with the fence report after reconnecting.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ensureLibvirtd } from '@kloudak/libvirt/testing';
import * as pb from '@kloudak/proto/agent';
import { pino } from 'pino';
import { loadAgentConfig } from './config.js';
import { startAgent, type AgentHandle } from './daemon.js';
import { EnrollmentError, enroll } from './link/enroll.js';
import { makeJoinToken, makeTestCa, TestOrchestrator, type TestCa } from './link/test-orchestrator.js';
import { LibvirtHypervisor } from './hypervisor/libvirt-hypervisor.js';
import { domainName } from './names.js';
import { createSimHost, type SimHost } from './testing/sim-host.js';
import { ensureOvs } from './testing/ovs-service.js';

const LEASE_MS = 1500;

describe('agent daemon ↔ test orchestrator (mTLS, simulated host)', { timeout: 120_000 }, () => {
  let ca: TestCa;
  let orch: TestOrchestrator;
  let dir: string;
  let sim: SimHost;
  let agent: AgentHandle | undefined;
  const haId = randomUUID();
  const plainId = randomUUID();
  const log = pino({ level: process.env['KLOUDAK_TEST_LOG'] ?? 'silent' });

  function config(dataDir: string, token: string | undefined) {
    const env: NodeJS.ProcessEnv = {
      KLOUDAK_AGENT_CONFIG: join(dir, 'none.yaml'),
      KLOUDAK_AGENT_ORCHESTRATOR: orch.address,
      KLOUDAK_AGENT_DATA_DIR: dataDir,
      KLOUDAK_AGENT_HOSTNAME: 'sim-1',
      KLOUDAK_AGENT_LIBVIRT_URI: sim.uri,
      KLOUDAK_AGENT_DOMAIN_TYPE: 'qemu',
      KLOUDAK_AGENT_OVS_DATAPATH: 'netdev',
      KLOUDAK_AGENT_NIC_OFFLOAD: 'off',
      KLOUDAK_AGENT_CONSOLE_DIR: join(dir, 'console'),
      KLOUDAK_AGENT_HEARTBEAT_MS: '200',
      KLOUDAK_AGENT_FENCE_LEASE_MS: String(LEASE_MS),
      KLOUDAK_AGENT_DRAIN_TIMEOUT_MS: '5000',
    };
    if (token) env['KLOUDAK_AGENT_JOIN_TOKEN'] = token;
    // An empty (but named) config file: the test must not read /etc/kloudak/agent.yaml.
    return loadAgentConfig({ env, argv: [] });
  }

  function vmSpec(ha: boolean): pb.CreateVm {
    return { hostname: ha ? 'ha-vm' : 'plain-vm', cpu: 1, ramMb: 256, diskGb: 2, pool: sim.poolName, templateVolume: sim.templateVolume, nics: [], sshAuthorizedKeys: [], passwordHash: '$6$salt$hash', ha, boot: undefined, userData: '', recover: false, defineOnly: false };
  }

  before(async () => {
    await ensureLibvirtd();
    await ensureOvs();
    dir = mkdtempSync(join(tmpdir(), 'kagent-'));
    writeFileSync(join(dir, 'none.yaml'), '# empty\n');
    sim = createSimHost({ dir, cpus: 6, memoryMb: 8192 });
    ca = await makeTestCa();
    orch = new TestOrchestrator({ ca, heartbeatIntervalMs: 150, leaseMs: LEASE_MS });
    await orch.start();
  });

  after(async () => {
    await agent?.stop().catch(() => undefined);
    await orch?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('refuses an orchestrator whose CA is not the one in the token, and keeps no identity', async () => {
    const other = await makeTestCa('another CA');
    const token = makeJoinToken(other.caFingerprint);
    orch.tokens.add(token);
    const dataDir = join(dir, 'wrong');
    await assert.rejects(enroll({ orchestrator: orch.address, joinToken: token, hostName: 'x', dataDir }), (e: unknown) => e instanceof EnrollmentError && /not the one the join token was made for/.test((e as Error).message));
    assert.equal(existsSync(join(dataDir, 'identity.json')), false);
    orch.tokens.delete(token);
  });

  it('enrolls, connects with its client certificate, says Hello and keeps its lease with heartbeats', async () => {
    const token = makeJoinToken(ca.caFingerprint);
    orch.tokens.add(token);
    const dataDir = join(dir, 'data');
    agent = await startAgent(config(dataDir, token), { log, backoff: { initialMs: 100, maxMs: 1000 }, fenceRetryMs: 100 });
    const hostId = agent.identity.hostId;
    assert.equal(statSync(join(dataDir, 'client.key')).mode & 0o777, 0o600);
    assert.ok(existsSync(join(dataDir, 'identity.json')));

    const hello = await orch.waitFor('Hello', () => orch.all('hello')[0]?.hello);
    assert.equal(hello.hostId, hostId);
    assert.equal(orch.sessions[0]!.peerCn, hostId, 'the session is authenticated by the enrolled certificate');
    assert.equal(hello.hostName, 'sim-1');
    assert.equal(hello.capacity?.cpuCount, 6, 'capacity of the simulated node');
    assert.equal(hello.capacity?.memoryBytes, 8192n * 1024n * 1024n);
    assert.ok(hello.pools.some((p) => p.name === sim.poolName && p.active && p.capacityBytes > 0n), 'the pool is reported');
    assert.deepEqual(hello.inventory?.domains, []);

    const beats = await orch.waitFor('3 heartbeats', () => {
      const hb = orch.all('heartbeat');
      return hb.length >= 3 ? hb : undefined;
    });
    assert.deepEqual(beats.slice(0, 3).map((b) => b.heartbeat.sequence), [1n, 2n, 3n]);
    assert.equal(beats[0]!.heartbeat.libvirtConnected, true);
    assert.ok(beats[0]!.heartbeat.usage!.memoryTotalBytes > 0n);
    assert.ok(agent.lease.valid, 'the lease is held');
    assert.equal(agent.status().heartbeatIntervalMs, 150, 'the granted interval replaces the configured one');
  });

  it('runs commands: create, re-sent id answered from memory, bad spec, missing VM, expired deadline, inventory, events', async () => {
    assert.ok(agent);
    const create = { commandId: randomUUID(), deadline: new Date(Date.now() + 60_000), vmId: haId, action: { $case: 'createVm' as const, createVm: vmSpec(true) } };
    const [r1, r2] = await Promise.all([
      orch.command(create),
      orch.command({ deadline: undefined, vmId: plainId, action: { $case: 'createVm', createVm: vmSpec(false) } }),
    ]);
    assert.equal(r1.ok, true, JSON.stringify(r1.error));
    assert.equal(r2.ok, true, JSON.stringify(r2.error));
    const again = await orch.command(create);
    assert.equal(again.ok, true);
    assert.deepEqual(again.completedAt, r1.completedAt, 'the remembered result, not a second run');

    const bad = await orch.command({ deadline: undefined, vmId: randomUUID(), action: { $case: 'createVm', createVm: { ...vmSpec(false), cpu: 0 } } });
    assert.equal(bad.ok, false);
    assert.equal(bad.error?.code, pb.ErrorCode.ERROR_CODE_INVALID_ARGUMENT);

    const clear = await orch.command({ deadline: undefined, vmId: randomUUID(), action: { $case: 'createVm', createVm: { ...vmSpec(false), passwordHash: 'hunter2' } } });
    assert.equal(clear.error?.code, pb.ErrorCode.ERROR_CODE_INVALID_ARGUMENT);
    assert.ok(!clear.error?.message.includes('hunter2'), 'the message does not echo the password');

    const missing = await orch.command({ deadline: undefined, vmId: randomUUID(), action: { $case: 'startVm', startVm: {} } });
    assert.equal(missing.error?.code, pb.ErrorCode.ERROR_CODE_NOT_FOUND);

    const late = await orch.command({ deadline: new Date(Date.now() - 1000), vmId: plainId, action: { $case: 'stopVm', stopVm: { timeoutMs: 0, force: true } } });
    assert.equal(late.error?.code, pb.ErrorCode.ERROR_CODE_DEADLINE_EXCEEDED);

    const inv = await orch.command({ deadline: undefined, vmId: '', action: { $case: 'getInventory', getInventory: {} } });
    assert.equal(inv.payload?.$case, 'inventory');
    const domains = inv.payload?.$case === 'inventory' ? inv.payload.inventory.domains : [];
    assert.deepEqual(domains.map((d) => d.vmId).sort(), [haId, plainId].sort());
    assert.ok(domains.every((d) => d.state === pb.DomainState.DOMAIN_STATE_RUNNING && d.vcpus === 1 && d.uuid === d.vmId));

    const started = await orch.waitFor('STARTED events of both VMs', () => {
      const ev = orch.all('domainEvent').filter((e) => e.domainEvent.event === pb.DomainEventType.DOMAIN_EVENT_TYPE_STARTED);
      return ev.length >= 2 ? ev : undefined;
    });
    assert.deepEqual(started.map((e) => e.domainEvent.vmId).sort(), [haId, plainId].sort());

    // Heartbeats now carry the running VMs' counters.
    const hb = await orch.waitFor('a heartbeat with 2 VMs', () => orch.all('heartbeat').find((h) => h.heartbeat.vms.length === 2));
    assert.ok(hb.heartbeat.vms.every((v) => v.domainName === domainName(v.vmId)));
  });

  it('keeps its lease while libvirtd is frozen past it: heartbeats go on (libvirt reported down), nothing is fenced', async () => {
    assert.ok(agent);
    const pid = Number(execFileSync('pgrep', ['-x', '-o', 'libvirtd'], { encoding: 'utf8' }).trim());
    assert.ok(pid > 0, 'libvirtd runs');
    const recordsBefore = await agent.fenceStore.count();
    const beatsBefore = orch.all('heartbeat').length;
    // A libvirtd that does not answer (a hang, a slow restart) is not a lost orchestrator: the
    // heartbeat, which holds the lease, must not wait for libvirt's figures.
    process.kill(pid, 'SIGSTOP');
    try {
      await new Promise((r) => setTimeout(r, 2 * LEASE_MS));
      assert.ok(agent.lease.valid, 'the lease is still held');
      assert.equal(await agent.fenceStore.count(), recordsBefore, 'no fencing');
      const during = orch.all('heartbeat').slice(beatsBefore);
      assert.ok(during.length >= (2 * LEASE_MS) / 150 / 2, `heartbeats went on: ${during.length}`);
      assert.ok(
        during.some((b) => !b.heartbeat.libvirtConnected),
        'they say libvirt cannot be read',
      );
    } finally {
      process.kill(pid, 'SIGCONT');
    }
    await orch.waitFor('a heartbeat with libvirt readable again', () => orch.all('heartbeat').slice(beatsBefore).find((b) => b.heartbeat.libvirtConnected && b.heartbeat.vms.length > 0));
    const hv = new LibvirtHypervisor(agent.libvirt);
    assert.equal(await hv.state(domainName(haId)), 'running', 'the HA domain kept running');
    assert.equal(await agent.fenceStore.count(), recordsBefore);
  });

  it('fences its HA domain when grants stop, keeps the other, and reports after reconnecting', async () => {
    assert.ok(agent);
    const sessionsBefore = orch.sessions.length;

    const fenced = agent.fencing();
    const eventsBefore = orch.all('domainEvent').length;
    orch.pauseGrants = true;
    const t0 = Date.now();
    await fenced;
    const waited = Date.now() - t0;
    assert.ok(waited >= LEASE_MS - 400 && waited < LEASE_MS + 3000, `fenced after ${waited} ms`);

    const hv = new LibvirtHypervisor(agent.libvirt);
    const haName = domainName(haId);
    assert.equal(await hv.state(haName), 'shutoff', 'the HA domain was destroyed');
    assert.equal(await hv.state(domainName(plainId)), 'running', 'the non-HA domain keeps running');

    const records = await agent.fenceStore.list();
    assert.equal(records.length, 1);
    assert.deepEqual(records[0]!.record.domains.map((d) => d.domainName), [haName]);
    assert.equal(records[0]!.record.reason, 'lease expired');
    // Its own destroy is no guest's doing: no lifecycle event of it goes out (the orchestrator
    // would take it for an HA VM that died on a healthy host and start it again); the fence report
    // says it.
    await new Promise((r) => setTimeout(r, 300));
    const sent = orch.all('domainEvent').slice(eventsBefore);
    assert.deepEqual(sent.map((e) => [e.domainEvent.vmId, e.domainEvent.event, e.domainEvent.detail]), [], 'no event of the fenced domain');

    orch.pauseGrants = false;
    const report = await orch.waitFor('a FenceReport on a new session', () => {
      const s = orch.sessions.slice(sessionsBefore).find((x) => x.messages.some((m) => m.body?.$case === 'fenceReport'));
      return s?.messages.find((m) => m.body?.$case === 'fenceReport');
    });
    assert.equal(report.body?.$case, 'fenceReport');
    if (report.body?.$case === 'fenceReport') {
      assert.deepEqual(report.body.fenceReport.domains.map((d) => d.domainName), [haName]);
      assert.ok(report.body.fenceReport.leaseExpiredAt instanceof Date);
    }
    const deadline = Date.now() + 10_000;
    while ((await agent.fenceStore.count()) > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    assert.equal(await agent.fenceStore.count(), 0, 'the record is deleted after a grant answers a later heartbeat');
    assert.ok(agent.lease.valid, 'the lease is held again');
  });

  it('stops gracefully: says Goodbye with the VMs it leaves running and, acknowledged, exits at once without fencing', async () => {
    assert.ok(agent);
    const s = orch.current();
    // The HA domain, fenced above, runs again.
    const start = await orch.command({ deadline: undefined, vmId: haId, action: { $case: 'startVm', startVm: {} } });
    assert.equal(start.ok, true, JSON.stringify(start.error));
    const records = await agent.fenceStore.count();
    const t0 = Date.now();
    await agent.stop('SIGTERM');
    const took = Date.now() - t0;
    const bye = orch.all('goodbye').at(-1)?.goodbye;
    assert.deepEqual([...(bye?.runningVmIds ?? [])].sort(), [haId, plainId].sort(), 'both domains are left running');
    assert.equal(bye?.reason, 'SIGTERM');
    assert.ok(took < LEASE_MS, `stopped in ${took} ms, without waiting for the lease`);
    await orch.waitFor('the session to end', () => (s?.ended ? true : undefined), 5000);
    assert.equal(agent.libvirt.state, 'closed');
    assert.equal(await agent.fenceStore.count(), records, 'nothing fenced');
    agent = undefined;
  });

  it('a Goodbye the orchestrator does not acknowledge: it waits for the lease’s end and fences its HA domain before it exits', async () => {
    orch.ackGoodbye = false;
    try {
      const a = await startAgent(config(join(dir, 'data'), undefined), { log, backoff: { initialMs: 100, maxMs: 1000 }, fenceRetryMs: 100 });
      agent = a;
      const sessions = orch.sessions.length;
      await orch.waitFor('a granted session', () => (orch.sessions.length > sessions && a.status().connected && a.lease.valid ? true : undefined));
      // The test driver's domains lived in the last agent's connection: this one makes its own.
      const ha = randomUUID();
      const made = await orch.command({ deadline: undefined, vmId: ha, action: { $case: 'createVm', createVm: vmSpec(true) } });
      assert.equal(made.ok, true, JSON.stringify(made.error));
      const records = await a.fenceStore.count();
      const fenced = a.fencing();
      const t0 = Date.now();
      await a.stop('SIGTERM');
      const took = Date.now() - t0;
      assert.deepEqual(orch.all('goodbye').at(-1)?.goodbye.runningVmIds, [ha]);
      assert.equal(await fenced, true, 'every HA domain destroyed before the exit');
      assert.ok(took >= LEASE_MS - 1000 && took < LEASE_MS + 6000, `stopped after ${took} ms: at the lease's end`);
      const list = await a.fenceStore.list();
      assert.equal(list.length, records + 1);
      assert.deepEqual(list.at(-1)?.record.domains.map((d) => d.domainName), [domainName(ha)]);
      agent = undefined;
    } finally {
      orch.ackGoodbye = true;
    }
  });
});
