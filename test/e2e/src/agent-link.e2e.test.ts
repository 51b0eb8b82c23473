// The agent link end to end: a real orchestrator (PostgreSQL, NATS, gRPC over mutual TLS, in this
// process so the test can call its AgentChannel) and real agent processes (`agent/dist/main.js`)
// enrolled with join tokens — three on simulated hosts (libvirt's test driver through libvirtd) and
// one on qemu:///system with Open vSwitch that boots the test guest through sendCommand.
//
// Every agent dials the orchestrator through a TCP relay owned by the test, so a test can cut the
// network between one agent and the orchestrator (streams reset, new connections refused) without
// touching either process: that is how "stream cut mid-command" and "orchestrator unreachable past
// the lease" are made.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Libvirt } from '@kloudak/libvirt';
import { ensureLibvirtd, stopLibvirtd } from '@kloudak/libvirt/testing';
import { domainName } from '@kloudak/agent';
import { createSimHost, ensureOvs, type SimHost } from '@kloudak/agent/testing';
import type { CommandAction, Orchestrator } from '@kloudak/orchestrator';
import { Cleanup, waitFor } from '@kloudak/testkit';
import { spawnAgentProcess, type AgentProcess } from './agent-process.js';
import { agentHostEnv, ApiClient, jsonLines } from './api-client.js';
import { GUEST, QEMU_URI, removeDomains, setUpQemuHost, testGuestImage } from './qemu-host.js';
import { Relay } from './relay.js';
import { startInProcessOrchestrator } from './vm-harness.js';

const RUN = `ke${randomBytes(3).toString('hex')}`;
const ADMIN = { username: 'root-admin', password: 'e2e-Agent-Link-Pass-2026!' };
const HEARTBEAT_MS = 200;
const LEASE_MS = 2_500;
// The margin must cover the agent's destroy of its HA domains (about 1.5 s under TCG here): the
// orchestrator may restart them elsewhere once the host is down, so they must be off by then.
const DOWN_MARGIN_MS = 3_000;

/** An agent process that dials the orchestrator through its own relay. */
interface RelayedAgent extends AgentProcess {
  relay: Relay;
}

describe('the agent link end to end: real orchestrator, real agents', { timeout: 300_000 }, () => {
  const cleanup = new Cleanup();
  let orch: Orchestrator;
  let areaId: string;
  let lv: Libvirt;
  let bridge: string;
  let consoleDir: string;
  const sims: SimHost[] = [];
  const agents = new Map<string, RelayedAgent>();
  /** VMs made on qemu:///system; removed by DeleteVm in the last test, or here if a test failed first. */
  const qemuVms: string[] = [];

  const client = new ApiClient(() => orch.url, '');
  const api = (method: string, path: string, body?: unknown) => client.call(method, path, body);

  async function joinToken(): Promise<string> {
    const r = await api('POST', '/hosts/join-tokens', { area: areaId, expiresIn: 600 });
    assert.equal(r.status, 201, JSON.stringify(r.body));
    return r.body['token'] as string;
  }

  async function host(name: string): Promise<Record<string, unknown>> {
    const list = await api('GET', '/hosts?limit=100');
    const items = (list.body['items'] ?? list.body['hosts'] ?? []) as Array<Record<string, unknown>>;
    const h = items.find((x) => x['name'] === name);
    assert.ok(h, `host ${name} listed: ${JSON.stringify(list.body)}`);
    return (await api('GET', `/hosts/${String(h['id'])}`)).body;
  }

  /** An agent process named `name` that dials through `relay`, with this test's heartbeat, fencing lease and debug logs. */
  function spawnAgent(name: string, env: Record<string, string>, relay: Relay, dataDir: string): RelayedAgent {
    const a = {
      ...spawnAgentProcess(name, `127.0.0.1:${relay.port}`, dataDir, {
        KLOUDAK_AGENT_HEARTBEAT_MS: String(HEARTBEAT_MS),
        KLOUDAK_AGENT_FENCE_LEASE_MS: String(LEASE_MS),
        KLOUDAK_AGENT_LOG_LEVEL: 'debug',
        ...env,
      }),
      relay,
    };
    agents.set(name, a);
    return a;
  }

  async function startAgent(name: string, env: Record<string, string>): Promise<RelayedAgent> {
    const relay = await Relay.start(orch.agentPort);
    cleanup.add(() => relay.close());
    const dataDir = mkdtempSync(join(tmpdir(), `${RUN}-agent-`));
    cleanup.add(async () => rmSync(dataDir, { recursive: true, force: true }));
    const a = spawnAgent(name, { KLOUDAK_AGENT_JOIN_TOKEN: await joinToken(), ...env }, relay, dataDir);
    cleanup.add(() => a.kill());
    return a;
  }

  async function stopAgent(a: AgentProcess, signal: NodeJS.Signals): Promise<number | null> {
    a.child.kill(signal);
    return a.exited;
  }

  async function waitState(name: string, state: string, timeoutMs = 20_000): Promise<Record<string, unknown>> {
    let last: Record<string, unknown> = {};
    await waitFor(async () => {
      last = await host(name);
      return last['state'] === state && (state !== 'up' || last['connected'] === true);
    }, timeoutMs, `host ${name} ${state}`).catch((e: unknown) => {
      throw new Error(`${(e as Error).message}; last: ${JSON.stringify(last)}; agent output:\n${agents.get(name)?.output().slice(-3000) ?? ''}`);
    });
    return last;
  }

  async function hostId(name: string): Promise<string> {
    return (await host(name))['id'] as string;
  }

  /**
   * Record a VM as placed on a host, as its create task would have: this test drives the link
   * directly, and a Kloudak domain of no VM at all is an orphan the orchestrator deletes when its
   * host says Hello (ha/failover.ts), and the fence evidence counts only for VMs on that host.
   */
  let fixture: { templateId: string; workspaceId: string } | undefined;
  async function recordVm(vmId: string, onHost: string, ha: boolean): Promise<void> {
    const db = orch.db.client;
    fixture ??= {
      templateId: (await db.template.create({ data: { name: `${RUN}-vm-tpl`, os: 'test', cpu: 1, ramMb: 128, diskGb: 1, image: 'none.qcow2' } })).id,
      workspaceId: (await db.workspace.create({ data: { name: `${RUN}-vm-ws`, description: '' } })).id,
    };
    const h = await db.host.findUniqueOrThrow({ where: { id: onHost } });
    await db.vm.create({ data: { id: vmId, name: `vm-${vmId.slice(0, 8)}`, workspaceId: fixture.workspaceId, areaId: h.areaId, templateId: fixture.templateId, hostId: onHost, cpu: 1, ramMb: 128, diskGb: 1, state: 'running', haEnabled: ha } });
  }

  function createVmAction(vmId: string, ha: boolean, ip: string): CommandAction {
    return {
      kind: 'createVm',
      hostname: `e2e-${vmId.slice(0, 8)}`,
      cpu: 1,
      ramMb: 128,
      diskGb: 1,
      pool: RUN,
      templateVolume: 'testguest.qcow2',
      nics: [{ networkId: randomUUID(), mac: `52:54:00:4e:00:${ip.split('.').at(-1)?.padStart(2, '0') ?? '01'}`, bridge, vlan: 100, address: `${ip}/24`, gateway: '', dnsServers: [] }],
      sshAuthorizedKeys: [],
      passwordHash: '',
      ha,
      boot: { kernel: join(GUEST, 'vmlinux'), initrd: join(GUEST, 'initrd.img'), cmdline: 'console=ttyS0 panic=-1 root=/dev/vda quiet' },
    };
  }

  before(async () => {
    if (!existsSync(join(GUEST, 'template.qcow2'))) throw new Error(`test guest missing in ${GUEST}: run scripts/build-test-guest.sh`);
    await ensureLibvirtd();
    await ensureOvs();
    orch = await startInProcessOrchestrator(
      cleanup,
      'kloudak_e2e_agent',
      ADMIN,
      { heartbeatIntervalMs: HEARTBEAT_MS, agentLeaseMs: LEASE_MS, agentDownMarginMs: DOWN_MARGIN_MS },
      { livenessTickMs: 100 },
    );
    await client.login(ADMIN);
    const area = await api('POST', '/areas', { name: 'e2e', subnet: '10.243.0.0/24', gateway: '10.243.0.1', vlanRange: '100-199' });
    assert.equal(area.status, 201, JSON.stringify(area.body));
    areaId = area.body['id'] as string;

    // The qemu host's world: a storage pool with the test guest's template, an OVS bridge, a console dir.
    ({ lv, bridge, consoleDir } = await setUpQemuHost(cleanup, { name: RUN, netPrefix: 'ke-', fill: testGuestImage('testguest.qcow2') }));
    // Runs before the pool, bridge and libvirt connection go (cleanup runs newest first).
    cleanup.add(() => removeDomains(lv, qemuVms));
  });

  after(async () => {
    await cleanup.run();
  });

  it('agents on three simulated hosts and one qemu host enroll with join tokens and come up', async () => {
    for (let i = 0; i < 3; i++) {
      const dir = mkdtempSync(join(tmpdir(), `${RUN}-sim${i}-`));
      cleanup.add(async () => rmSync(dir, { recursive: true, force: true }));
      const sim = createSimHost({ dir, cpus: 4 + i, memoryMb: 8192 });
      sims.push(sim);
      await startAgent(`${RUN}-sim-${i}`, { KLOUDAK_AGENT_LIBVIRT_URI: sim.uri, ...agentHostEnv(bridge), KLOUDAK_AGENT_CONSOLE_DIR: dir });
    }
    await startAgent(`${RUN}-qemu`, { KLOUDAK_AGENT_LIBVIRT_URI: QEMU_URI, ...agentHostEnv(bridge), KLOUDAK_AGENT_CONSOLE_DIR: consoleDir });
    for (let i = 0; i < 3; i++) {
      const h = await waitState(`${RUN}-sim-${i}`, 'up');
      assert.equal((h['capacity'] as Record<string, unknown>)['cpus'], 4 + i, 'capacity of the simulated node, from Hello');
      assert.ok(h['lastHeartbeatAt']);
    }
    const q = await waitState(`${RUN}-qemu`, 'up');
    assert.ok(((q['capacity'] as Record<string, unknown>)['cpus'] as number) >= 1);
    await waitFor(async () => (await host(`${RUN}-qemu`))['usage'] !== null, 10_000, 'usage from heartbeats');
    for (const a of agents.values()) {
      assert.ok(!a.output().includes(a.env['KLOUDAK_AGENT_JOIN_TOKEN'] ?? '\u0000'), `${a.name}: the join token never appears in its log`);
      assert.ok(!/BEGIN [A-Z ]*PRIVATE KEY/.test(a.output()), `${a.name}: no private key in its log`);
    }
  });

  it('a used join token is refused: the agent exits with a clear error and writes no identity', async () => {
    const used = agents.get(`${RUN}-sim-0`)?.env['KLOUDAK_AGENT_JOIN_TOKEN'] ?? '';
    const relay = await Relay.start(orch.agentPort);
    cleanup.add(() => relay.close());
    const dataDir = mkdtempSync(join(tmpdir(), `${RUN}-agent-`));
    cleanup.add(async () => rmSync(dataDir, { recursive: true, force: true }));
    const sim = sims[0];
    assert.ok(sim);
    const a = spawnAgent(`${RUN}-reuse`, { KLOUDAK_AGENT_JOIN_TOKEN: used, KLOUDAK_AGENT_LIBVIRT_URI: sim.uri, KLOUDAK_AGENT_BRIDGE: bridge, KLOUDAK_AGENT_OVS_DATAPATH: 'netdev' }, relay, dataDir);
    const code = await Promise.race([a.exited, new Promise<'hung'>((r) => setTimeout(() => r('hung'), 30_000))]);
    if (code === 'hung') a.child.kill('SIGKILL');
    assert.notEqual(code, 0, `agent with a used token must fail: ${a.output().slice(-1500)}`);
    assert.notEqual(code, 'hung');
    assert.match(a.output(), /join token|already used|UNAUTHENTICATED/i);
    assert.ok(!a.output().includes(used.split('.')[2] ?? '\u0000'), 'the token secret is not in the error');
    assert.ok(!existsSync(join(dataDir, 'identity.json')));
  });

  it('sendCommand boots the test guest on the qemu host; the same VM on a simulated host runs too', async () => {
    const qemuId = await hostId(`${RUN}-qemu`);
    const vmId = randomUUID();
    qemuVms.push(vmId);
    // Recorded as not HA in the inventory (the domain itself is HA, so the agent fences it): the
    // host-down episode of the partition test below then marks it lost where it is instead of
    // moving its claim to a simulated host, whose recover fails and moves it back — the fence
    // report is counted only for VMs placed on the reporting host when it arrives.
    await recordVm(vmId, qemuId, false);
    const created = await orch.agents.sendCommand(qemuId, { vmId, action: createVmAction(vmId, true, '10.243.0.41') }, { deadline: Date.now() + 60_000 });
    assert.equal(created.ok, true, JSON.stringify(created.error));
    let consoleText = '';
    await waitFor(async () => {
      const r = await orch.agents.sendCommand(qemuId, { vmId, action: { kind: 'readConsole', maxBytes: 65536 } }, { deadline: Date.now() + 10_000 });
      consoleText = r.console?.data.toString('utf8') ?? '';
      return consoleText.includes('KLOUDAK-READY');
    }, 90_000, 'the guest prints its ready line').catch((e: unknown) => {
      throw new Error(`${(e as Error).message}\n${consoleText.slice(-2000)}`);
    });
    assert.match(consoleText, new RegExp(`KLOUDAK-READY instance-id=${vmId} .*ip=10\\.243\\.0\\.41`));
    const inv = await orch.agents.sendCommand(qemuId, { action: { kind: 'getInventory' } }, { deadline: Date.now() + 10_000 });
    assert.ok(inv.inventory?.domains.some((d) => d.vmId === vmId && d.state === 'running'), JSON.stringify(inv.inventory?.domains));

    // The same create on a simulated host (seed as a file there; the test driver cannot upload).
    const simId = await hostId(`${RUN}-sim-1`);
    const simVm = randomUUID();
    await recordVm(simVm, simId, true);
    const sim = sims[1];
    assert.ok(sim);
    const simAction = { ...createVmAction(simVm, true, '10.243.0.42'), pool: sim.poolName, templateVolume: sim.templateVolume };
    delete (simAction as { boot?: unknown }).boot;
    const r = await orch.agents.sendCommand(simId, { vmId: simVm, action: simAction }, { deadline: Date.now() + 30_000 });
    assert.equal(r.ok, true, JSON.stringify(r.error));
    const simInv = await orch.agents.sendCommand(simId, { action: { kind: 'getInventory' } }, { deadline: Date.now() + 10_000 });
    assert.deepEqual(simInv.inventory?.domains.map((d) => d.vmId), [simVm], 'the simulated host has exactly its own VM');
    (globalThis as Record<string, unknown>)['__qemuVm'] = vmId;
  });

  it('a stream cut mid-command: the result arrives after the reconnect and the command ran once', async () => {
    const a = agents.get(`${RUN}-qemu`);
    assert.ok(a);
    const qemuId = await hostId(a.name);
    const vmId = (globalThis as Record<string, unknown>)['__qemuVm'] as string;
    // A graceful stop takes the guest a second or more: long enough to cut the stream meanwhile.
    const pending = orch.agents.sendCommand(qemuId, { vmId, action: { kind: 'stopVm', timeoutMs: 20_000, force: false } }, { deadline: Date.now() + 60_000 });
    await new Promise((r) => setTimeout(r, 200));
    // No other host may take the HA VM: the failover of the host's down episode then leaves its
    // claim here (lost), and the fence report that names it counts as this host's evidence. (A
    // recover elsewhere would move the claim, and a report arriving meanwhile names a VM no longer
    // placed on this host.)
    const others = ((await api('GET', '/hosts')).body['items'] as { id: string; name: string }[]).filter((x) => x.id !== qemuId);
    for (const o of others) assert.equal((await api('PATCH', `/hosts/${o.id}`, { maintenance: true })).status, 200);
    const cutAt = Date.now();
    // Stalled, not reset: neither end sees the connection end, as when packets are silently lost.
    a.relay.stall();
    await new Promise((r) => setTimeout(r, 1_000));
    a.relay.heal();
    const result = await pending;
    assert.equal(result.ok, true, JSON.stringify(result.error));
    assert.ok(result.completedAt.getTime() > cutAt, 'the stop was still running when the stream was cut');
    const lines = jsonLines(a.output());
    const runs = lines.filter((l) => l['command_id'] === result.commandId && l['msg'] === 'command succeeded');
    assert.equal(runs.length, 1, `ran once: ${JSON.stringify(lines.filter((l) => l['command_id'] === result.commandId))}`);
    assert.equal((await lv.getDomainState(await lv.lookupDomainByName(domainName(vmId)))).state, 5, 'shut off');
    const start = await orch.agents.sendCommand(qemuId, { vmId, action: { kind: 'startVm' } }, { deadline: Date.now() + 30_000 });
    assert.equal(start.ok, true, JSON.stringify(start.error));
  });

  it('the agent killed and restarted: Hello reconciles, the VM kept running', async () => {
    const a = agents.get(`${RUN}-qemu`);
    assert.ok(a);
    const before = await host(a.name);
    await stopAgent(a, 'SIGKILL');
    const vmId = (globalThis as Record<string, unknown>)['__qemuVm'] as string;
    // Restarted with the same data dir: no join token needed, the identity is on disk.
    const env = { ...a.env };
    delete env['KLOUDAK_AGENT_JOIN_TOKEN'];
    const again = spawnAgent(a.name, env, a.relay, a.dataDir);
    cleanup.add(() => again.kill());
    await waitFor(async () => {
      const h = await host(a.name);
      // `up` too: the new session's state write follows its Hello (the host may have gone
      // suspect while no agent ran), so a check right after the session opens can race it.
      return h['connected'] === true && h['agentStartedAt'] !== before['agentStartedAt'] && h['state'] === 'up';
    }, 20_000, 'a new session with a new agent start time, and the host up');
    const h = await host(a.name);
    assert.equal(h['id'], before['id'], 'the same host, not a new one');
    assert.equal(h['state'], 'up');
    const inv = await orch.agents.sendCommand(h['id'] as string, { action: { kind: 'getInventory' } }, { deadline: Date.now() + 10_000 });
    assert.ok(inv.inventory?.domains.some((d) => d.vmId === vmId && d.state === 'running'), 'the VM survived the agent');
  });

  it('libvirtd restarted: heartbeats continue and say libvirt is down, then up again', async () => {
    const name = `${RUN}-qemu`;
    await stopLibvirtd();
    try {
      await waitFor(async () => {
        const h = await host(name);
        return h['state'] === 'up' && (h['usage'] as Record<string, unknown> | null)?.['libvirtConnected'] === false;
      }, 15_000, 'heartbeats reporting libvirt down');
    } finally {
      await ensureLibvirtd();
    }
    await waitFor(async () => (await host(name)) ['usage'] !== null && ((await host(name))['usage'] as Record<string, unknown>)['libvirtConnected'] === true, 30_000, 'libvirt up again');
    assert.equal((await host(name))['state'], 'up', 'the host never left up');
    // Our own connection reconnects too (the restart was real).
    await waitFor(async () => lv.state === 'ready', 30_000, 'test libvirt client reconnected');
  });

  it('the orchestrator unreachable past the lease (a path that drops everything): the HA VM is fenced, the non-HA one keeps running, the stream ends, and it is reported', async () => {
    const a = agents.get(`${RUN}-qemu`);
    assert.ok(a);
    const qemuId = await hostId(a.name);
    const haVm = (globalThis as Record<string, unknown>)['__qemuVm'] as string;
    const plainVm = randomUUID();
    qemuVms.push(plainVm);
    await recordVm(plainVm, qemuId, false);
    const c = await orch.agents.sendCommand(qemuId, { vmId: plainVm, action: createVmAction(plainVm, false, '10.243.0.43') }, { deadline: Date.now() + 60_000 });
    assert.equal(c.ok, true, JSON.stringify(c.error));
    const state = async (vm: string) => (await lv.getDomainState(await lv.lookupDomainByName(domainName(vm)))).state;
    assert.equal(await state(haVm), 1, 'HA VM running before the partition');
    // (Both VMs are recorded as placed on the qemu host: the fence evidence counts only for those.)

    // No other host may take the HA VM: the failover of the host's down episode then leaves its
    // claim here (lost), and the fence report that names it counts as this host's evidence. (A
    // recover elsewhere would move the claim, and a report arriving meanwhile names a VM no longer
    // placed on this host.)
    const others = ((await api('GET', '/hosts')).body['items'] as { id: string; name: string }[]).filter((x) => x.id !== qemuId);
    for (const o of others) assert.equal((await api('PATCH', `/hosts/${o.id}`, { maintenance: true })).status, 200);
    const cutAt = Date.now();
    // Stalled, not reset: neither end sees the connection end, as when packets are silently lost.
    a.relay.stall();
    // Watch both sides at once: the agent's fencing (through libvirt) and the orchestrator's verdict.
    let fencedAfter: number | null = null;
    let downAfter: number | null = null;
    while (fencedAfter === null || downAfter === null) {
      assert.ok(Date.now() - cutAt < LEASE_MS + DOWN_MARGIN_MS + 15_000, `fenced after ${fencedAfter} ms, down after ${downAfter} ms`);
      if (fencedAfter === null && (await state(haVm)) === 5) fencedAfter = Date.now() - cutAt;
      if (downAfter === null && (await host(a.name))['state'] === 'down') downAfter = Date.now() - cutAt;
      await new Promise((r) => setTimeout(r, 50));
    }
    assert.ok(fencedAfter <= downAfter, `the HA VM was off (${fencedAfter} ms) before the orchestrator declared the host down (${downAfter} ms)`);
    assert.equal(await state(plainVm), 1, 'the non-HA VM keeps running');
    // The orchestrator's HTTP/2 pings go unanswered: it ends the stream about when it declared the
    // host down (one ping per lease, answered within the margin), so the host stops showing connected.
    let disconnectedAfter: number | null = null;
    while (disconnectedAfter === null) {
      assert.ok(Date.now() - cutAt < 2 * (LEASE_MS + DOWN_MARGIN_MS) + 5_000, `the stalled stream still shows connected ${Date.now() - cutAt} ms after the stall`);
      if ((await host(a.name))['connected'] === false) disconnectedAfter = Date.now() - cutAt;
      else await new Promise((r) => setTimeout(r, 100));
    }
    a.relay.heal();
    await waitState(a.name, 'up');
    await waitFor(async () => (await orch.db.client.fenceReport.count({ where: { hostId: qemuId } })) > 0, 10_000, 'fence report stored');
    const reports = await orch.db.client.fenceReport.findMany({ where: { hostId: qemuId } });
    // Exactly one: the earlier tests (a libvirtd restart, an agent killed) must not have fenced.
    assert.equal(reports.length, 1, `one fence report: ${JSON.stringify(reports.map((r) => [r.leaseExpiredAt, r.domains]))}`);
    const [report] = reports;
    // On failure, what the agent said about fencing (a report without the VM was seen once in CI).
    const fenceLog = () => a.output().split('\n').filter((l) => /fenc|lease expired|QEMU/.test(l)).slice(-20).join('\n');
    assert.ok(JSON.stringify(report).includes(haVm), `the report names the fenced VM: ${JSON.stringify(report, (_k, v: unknown) => (typeof v === 'bigint' ? String(v) : v))}\n${fenceLog()}`);
    assert.ok(!JSON.stringify(report).includes(plainVm));
    console.log(`# HA VM off ${fencedAfter} ms after the stall, host down after ${downAfter} ms, stream ended after ${disconnectedAfter} ms (lease ${LEASE_MS} ms, margin ${DOWN_MARGIN_MS} ms)`);
  });

  it('DeleteVm through the link leaves nothing; SIGTERM stops every agent cleanly (exit 0)', async () => {
    const qemuId = await hostId(`${RUN}-qemu`);
    for (const vmId of qemuVms) {
      const r = await orch.agents.sendCommand(qemuId, { vmId, action: { kind: 'deleteVm', pool: RUN, bridges: [bridge] } }, { deadline: Date.now() + 60_000 });
      assert.equal(r.ok, true, JSON.stringify(r.error));
      await assert.rejects(lv.lookupDomainByName(domainName(vmId)), 'domain gone');
    }
    const inv = await orch.agents.sendCommand(qemuId, { action: { kind: 'getInventory' } }, { deadline: Date.now() + 10_000 });
    assert.deepEqual(inv.inventory?.domains.filter((d) => qemuVms.includes(d.vmId)), []);
    assert.deepEqual(inv.inventory?.volumes.filter((v) => qemuVms.includes(v.vmId)), []);
    for (const a of agents.values()) {
      if (a.child.exitCode !== null || a.child.signalCode !== null) continue;
      assert.equal(await stopAgent(a, 'SIGTERM'), 0, `${a.name} exits 0:\n${a.output().slice(-1500)}`);
    }
  });
});
