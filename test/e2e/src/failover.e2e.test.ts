// Host failure and evacuation, end to end (issue 11): a real orchestrator (PostgreSQL, NATS, the
// REST API, the task worker, the agent link) and three real agent processes, each on its own
// simulated host (libvirt's test driver through libvirtd) and in its own network namespace
// (ns-hosts.ts: it reaches the orchestrator's agent port over a bridge), in one area.
//
// Host A runs HA and non-HA VMs; its agent is SIGKILLed (with the test driver its domains die
// with its connection: "a host's agent and its VMs"). After the lease it was granted plus the
// margin, A is down; its HA VMs must run on B and C, keeping their addresses and MACs, the one
// that fits nowhere and the non-HA ones must be `lost` with a reason, and there must be one
// evacuation for the episode. Then A comes back with its old domains still defined: before any
// other command reaches A they are evicted (the VMs now run elsewhere), a domain of no VM is
// deleted with its volume, and the lost VMs left on A take the state A reports, except the lost HA
// VM that was running, which is started again there (nowhere else could take it). Last, B's agent is
// stopped cleanly (SIGTERM): it says Goodbye, B goes down, and its HA VMs stay where they are (the
// evacuation held) until its agent is back, when the evacuation is cancelled.
//
// THE SHARED POOL. A test-driver host's storage pool is private to its agent's connection: a
// volume created on A does not exist on B. So the test writes, into B's and C's node files, the
// root volumes A's VMs have in the area's pool (with a size of their own, 3 GiB, which no clone
// would have), as a shared pool would show them; B and C start once the VMs exist. That a recover
// never clones a disk that is missing, but fails with NOT_FOUND, is checked on the agent itself
// (agent/src/ops/host-ops.sim.test.ts).
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ensureLibvirtd } from '@kloudak/libvirt/testing';
import { rootVolumeName } from '@kloudak/agent';
import { createSimHost, ensureOvs, simDomainXml } from '@kloudak/agent/testing';
import type { Orchestrator } from '@kloudak/orchestrator';
import { Cleanup } from '@kloudak/testkit';
import { spawnAgentProcess, type AgentProcess } from './agent-process.js';
import { createNamespaceFleet, type NamespaceFleet } from './ns-hosts.js';
import { agentTestEnv, ApiClient, type Json } from './api-client.js';
import { createNetwork, hostInventory, joinToken, setUpSimArea, startTestOrchestrator } from './vm-harness.js';

const RUN = `kfo${randomBytes(3).toString('hex')}`;
const ADMIN = { username: 'root-admin', password: 'e2e-Failover-Pass-2026!' };
const WS = `${RUN}-ws`;
const LEASE_MS = 3000;
const MARGIN_MS = 1000;
const GIB = 1024 ** 3;

describe('host failure: HA VMs restart on the other hosts of the area; a returning host is cleaned first', { timeout: 240_000 }, () => {
  const cleanup = new Cleanup();
  let orch: Orchestrator;
  /** The three hosts' network namespaces around the orchestrator's agent address. */
  let fleet: NamespaceFleet;
  let bridge: string;
  const agents = new Map<string, AgentProcess>();
  const simDirs = new Map<string, string>();
  const hostIds = new Map<string, string>();
  const client = new ApiClient(() => orch.url, WS);
  const api = (method: string, path: string, body?: unknown) => client.call(method, path, body);
  const A = `${RUN}-a`;
  const B = `${RUN}-b`;
  const C = `${RUN}-c`;
  /** The VMs made on A: name → its view at creation (id, interfaces). */
  const vms = new Map<string, Json>();
  const HA = ['ha-1', 'ha-2', 'ha-3', 'ha-4'];

  function startAgent(name: string, env: Record<string, string>, joinToken?: string): AgentProcess {
    const known = agents.get(name);
    const dataDir = known?.dataDir ?? mkdtempSync(join(tmpdir(), `${RUN}-agent-`));
    if (!known) cleanup.add(async () => rmSync(dataDir, { recursive: true, force: true }));
    // Each host's agent in a network namespace of its own, reaching the orchestrator over the fleet's bridge.
    const ns = fleet.hosts[[A, B, C].indexOf(name)]!.ns;
    const a = spawnAgentProcess(name, `${fleet.orchestratorIp}:${orch.agentPort}`, dataDir, { ...agentTestEnv(bridge), ...(joinToken ? { KLOUDAK_AGENT_JOIN_TOKEN: joinToken } : {}), ...env }, ns);
    agents.set(name, a);
    cleanup.add(() => a.kill());
    return a;
  }

  /** Write host `name`'s node file (with these volumes and domains) and start its agent (enrolling it the first time). */
  async function startHost(name: string, shape: { cpus: number; memoryMb: number }, extra: { volumes?: { name: string; capacityGb: number }[]; domains?: string[] } = {}): Promise<string> {
    let dir = simDirs.get(name);
    if (!dir) {
      dir = mkdtempSync(join(tmpdir(), `${RUN}-sim-`));
      simDirs.set(name, dir);
      const d = dir;
      cleanup.add(async () => rmSync(d, { recursive: true, force: true }));
    }
    const sim = createSimHost({ dir, ...shape, poolName: RUN, ...extra });
    const token = hostIds.has(name) ? undefined : await joinToken(client, RUN);
    startAgent(name, { KLOUDAK_AGENT_LIBVIRT_URI: sim.uri, KLOUDAK_AGENT_CONSOLE_DIR: dir }, token);
    const id = await client.waitHostUp(name, () => agents.get(name)?.output() ?? '');
    hostIds.set(name, id);
    return id;
  }

  async function vm(name: string): Promise<Json> {
    const r = await api('GET', `/workspaces/${WS}/vms/${name}`);
    assert.equal(r.status, 200, JSON.stringify(r.body));
    return r.body;
  }

  async function waitFor(what: string, ok: () => Promise<boolean>, timeoutMs = 60_000): Promise<void> {
    const until = Date.now() + timeoutMs;
    while (!(await ok())) {
      if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  /** vm id → the hosts whose libvirt has a domain for it (any state), over every connected host. */
  async function domainsEverywhere(): Promise<Map<string, string[]>> {
    const where = new Map<string, string[]>();
    for (const [name, id] of hostIds) {
      if (!orch.agentLink.status(id).connected) continue;
      for (const d of (await hostInventory(orch, id)).domains) where.set(d.vmId, [...(where.get(d.vmId) ?? []), name]);
    }
    return where;
  }

  before(async () => {
    await ensureLibvirtd();
    await ensureOvs();
    fleet = await createNamespaceFleet(cleanup, 'kfo', 234, 3);
    orch = await startTestOrchestrator(cleanup, 'kloudak_e2e_failover', ADMIN, {
      agentLeaseMs: LEASE_MS,
      agentDownMarginMs: MARGIN_MS,
      agentHost: fleet.orchestratorIp,
      agentTlsNames: fleet.orchestratorIp,
    });
    await client.login(ADMIN);
    ({ bridge } = await setUpSimArea(cleanup, client, { name: RUN, subnetBase: '10.249.0', vlanRange: '430-431', workspaces: [WS], netPrefix: 'ko-', poolPath: '/srv/shared' }));
  });

  after(async () => {
    await cleanup.run();
  });

  it('places the VMs on A, the only host so far', async () => {
    await startHost(A, { cpus: 8, memoryMb: 8192 });
    await createNetwork(client, 'front', RUN);
    const specs: [string, boolean, number][] = [...HA.map((n): [string, boolean, number] => [n, true, 512]), ['big', true, 3072], ['plain-1', false, 256], ['plain-2', false, 256]];
    const tasks: string[] = [];
    for (const [name, ha, ramMb] of specs) {
      const r = await api('POST', `/workspaces/${WS}/vms`, { name, template: `${RUN}-tpl`, networks: ['front'], ha, ramMb });
      assert.equal(r.status, 202, JSON.stringify(r.body));
      assert.equal(r.body['vm']['host'], A);
      vms.set(name, r.body['vm']);
      tasks.push(r.body['task']['id']);
    }
    for (const t of tasks) await client.succeeded(t);
  });

  it('restarts A\'s HA VMs on B and C after A\'s lease and margin, keeping addresses and MACs; the rest is lost, with why', async () => {
    // B and C see the area's shared pool: the root volumes of A's VMs are in it (see the header).
    const shared = [...vms.values()].map((v) => ({ name: rootVolumeName(v['id']), capacityGb: 3 }));
    await startHost(B, { cpus: 4, memoryMb: 2048 }, { volumes: shared });
    await startHost(C, { cpus: 4, memoryMb: 2048 }, { volumes: shared });

    const killedAt = Date.now();
    await agents.get(A)!.kill();
    await waitFor('the HA VMs running on B and C', async () => {
      for (const n of HA) {
        const v = await vm(n);
        if (v['state'] !== 'running' || (v['host'] !== B && v['host'] !== C)) return false;
      }
      return true;
    });
    const failoverMs = Date.now() - killedAt;
    console.log(`# failover: A's agent killed → its ${HA.length} HA VMs running on B and C in ${failoverMs} ms (lease ${LEASE_MS} ms + margin ${MARGIN_MS} ms)`);

    // Never before the lease A was granted plus the margin (A must have fenced by then).
    const evacuations = await orch.db.client.evacuation.findMany({ where: { hostId: hostIds.get(A)! } });
    assert.equal(evacuations.length, 1, 'one evacuation for the episode');
    const e = evacuations[0]!;
    assert.equal(e.state, 'planned');
    const ev = e.evidence as Json;
    assert.equal(ev['leaseMs'], LEASE_MS);
    assert.equal(ev['downMarginMs'], MARGIN_MS);
    assert.ok(ev['lastHeartbeatAt'] && ev['lastLeaseGrantedAt'], JSON.stringify(ev));
    assert.ok(e.createdAt.getTime() >= new Date(ev['lastLeaseGrantedAt']).getTime() + LEASE_MS + MARGIN_MS - 50, `down at ${e.createdAt.toISOString()}, evidence ${JSON.stringify(ev)}`);
    assert.ok(failoverMs >= LEASE_MS, `${failoverMs} ms`);
    const downEvent = await orch.db.client.outboxEvent.findFirst({ where: { entity: 'host', entityId: hostIds.get(A)!, event: 'state', state: 'down' } });
    assert.ok(downEvent, 'the host-down event');
    assert.deepEqual((downEvent.payload as Json)['evidence']['leaseMs'], LEASE_MS);
    assert.equal((downEvent.payload as Json)['evacuationId'], e.id);

    const placed = { [B]: 0, [C]: 0 } as Record<string, number>;
    for (const n of HA) {
      const v = await vm(n);
      placed[v['host']] = (placed[v['host']] ?? 0) + 1;
      assert.deepEqual(v['interfaces'], vms.get(n)!['interfaces'], `${n} keeps its address and MAC`);
      assert.equal(v['reason'], null);
    }
    assert.deepEqual(placed, { [B]: 2, [C]: 2 }, 'spread over B and C');
    const big = await vm('big');
    assert.equal(big['state'], 'lost');
    assert.equal(big['host'], A);
    assert.match(big['reason'], /no host of the area can take/);
    for (const n of ['plain-1', 'plain-2']) {
      const v = await vm(n);
      assert.equal(v['state'], 'lost');
      assert.match(v['reason'], /not an HA VM/);
    }
    const recover = await client.task((await vm('ha-1'))['task']);
    assert.equal(recover['kind'], 'vm.recover');
    assert.deepEqual(recover['steps'].map((s: Json) => s['name']), ['claim', 'networks', 'recover', 'running']);

    // Each HA VM runs on exactly one host, from the shared pool's volume (3 GiB: not a new clone).
    const where = await domainsEverywhere();
    for (const n of HA) assert.equal(where.get(vms.get(n)!['id'])?.length, 1, `${n}: ${where.get(vms.get(n)!['id'])}`);
    for (const h of [B, C]) {
      const inv = await hostInventory(orch, hostIds.get(h)!);
      for (const d of inv.domains) {
        assert.equal(d.state, 'running');
        const root = inv.volumes.find((x) => x.name === rootVolumeName(d.vmId));
        assert.equal(root?.capacityBytes, 3 * GIB);
      }
    }

    // Liveness evaluated again and the evacuation asked again: still one, nothing moves.
    orch.agentLink.tick();
    await orch.agentLink.settled();
    assert.equal(await orch.db.client.evacuation.count({ where: { hostId: hostIds.get(A)! } }), 1);
    assert.equal(await orch.db.client.task.count({ where: { kind: 'vm.recover' } }), HA.length);
  });

  it('A comes back with its old domains: those now elsewhere are evicted before any other command, orphans deleted, lost VMs reconciled, a lost HA VM that was running started again', async () => {
    const aId = hostIds.get(A)!;
    // Queued while A is away: released only once A is clean, so what it sees is what A holds then.
    const first = orch.agents.sendCommand(aId, { action: { kind: 'getInventory' } }, { deadline: Date.now() + 60_000 });
    const orphan = randomUUID();
    const id = (n: string) => vms.get(n)!['id'] as string;
    // A rebooted: libvirt kept its persistent domains — the HA ones fenced (shut off), plain-1 was
    // left running, plain-2 and big off — and one of no VM at all, with its volume.
    const domains = [
      ...HA.map((n) => simDomainXml(id(n), 'shutoff')),
      simDomainXml(orphan, 'running'),
      simDomainXml(id('big'), 'shutoff'),
      simDomainXml(id('plain-1'), 'running'),
      simDomainXml(id('plain-2'), 'shutoff'),
    ];
    const volumes = [...[...vms.values()].map((v) => ({ name: rootVolumeName(v['id']), capacityGb: 3 })), { name: rootVolumeName(orphan), capacityGb: 1 }];
    await startHost(A, { cpus: 8, memoryMb: 8192 }, { volumes, domains });

    const seen = await first;
    assert.equal(seen.ok, true, JSON.stringify(seen.error));
    const firstDomains = seen.inventory!.domains.map((d) => d.vmId).sort();
    assert.deepEqual(firstDomains, [id('big'), id('plain-1'), id('plain-2')].sort(), 'the first command A ran saw no HA VM and no orphan');
    const vols = seen.inventory!.volumes.map((v) => v.name);
    assert.ok(!vols.includes(rootVolumeName(orphan)), 'the orphan\'s volume is deleted');
    for (const n of HA) assert.ok(vols.includes(rootVolumeName(id(n))), `${n}'s disk is kept (in use on another host)`);

    await waitFor('lost VMs reconciled', async () => (await vm('plain-1'))['state'] === 'running' && (await vm('plain-2'))['state'] === 'stopped', 10_000);
    // big, an HA VM lost while running (it fit nowhere), is started again on A, its disk there.
    await waitFor('big started again on A', async () => (await vm('big'))['state'] === 'running', 20_000);
    assert.equal((await vm('big'))['host'], A);
    assert.equal(await orch.db.client.task.count({ where: { kind: 'vm.start', targetId: id('big'), state: 'succeeded' } }), 1);
    for (const n of HA) assert.equal((await vm(n))['state'], 'running');
    const where = await domainsEverywhere();
    for (const [vmId, hosts] of where) assert.equal(hosts.length, 1, `${vmId} on ${hosts.join(', ')}`);
    assert.equal(where.get(orphan), undefined);
    const cleaned = await orch.db.client.outboxEvent.findFirst({ where: { entity: 'host', entityId: aId, event: 'cleaned' } });
    const data = (cleaned?.payload ?? {}) as Json;
    assert.deepEqual([...(data['evicted'] as string[])].sort(), HA.map(id).sort());
    assert.deepEqual(data['deleted'], [orphan]);
    assert.deepEqual(data['restarted'], [id('big')]);
  });
  it('B\'s agent stopped cleanly (SIGTERM): B goes down, but its HA VMs are neither restarted nor lost; back, B keeps them', async () => {
    const bId = hostIds.get(B)!;
    const id = (n: string) => vms.get(n)!['id'] as string;
    const onB: string[] = [];
    for (const n of HA) if ((await vm(n))['host'] === B) onB.push(n);
    assert.equal(onB.length, 2, 'B runs two of the HA VMs');
    const recovers = await orch.db.client.task.count({ where: { kind: 'vm.recover' } });
    const b = agents.get(B)!;
    await b.stop(20_000);
    assert.equal(await b.exited, 0, b.output().slice(-2000));
    assert.match(b.output(), /"msg":"Goodbye sent"/);
    const stopped = (await api('GET', `/hosts/${bId}`)).body;
    assert.equal(stopped['agentStopped']?.['runningVms'], 2, JSON.stringify(stopped));

    // Down after its lease and margin; its evacuation held, with why, and nothing moved.
    await waitFor('B down with its evacuation held', async () => {
      const e = await orch.db.client.evacuation.findFirst({ where: { hostId: bId } });
      return (e?.evidence as Json | undefined)?.['held']?.['why'] === 'agent_stopped';
    }, 20_000);
    assert.equal((await api('GET', `/hosts/${bId}`)).body['state'], 'down');
    await new Promise((r) => setTimeout(r, 2000)); // sweeps go by
    for (const n of onB) {
      const v = await vm(n);
      assert.deepEqual([v['state'], v['host']], ['running', B], `${n} stays as it was: it may still run`);
    }
    assert.equal(await orch.db.client.task.count({ where: { kind: 'vm.recover' } }), recovers, 'no restart elsewhere');

    // B's agent starts again (an upgrade that took longer than the lease), its VMs still running.
    const volumes = [...vms.values()].map((v) => ({ name: rootVolumeName(v['id']), capacityGb: 3 }));
    await startHost(B, { cpus: 4, memoryMb: 2048 }, { volumes, domains: onB.map((n) => simDomainXml(id(n), 'running')) });
    await waitFor('the held evacuation cancelled', async () => (await orch.db.client.evacuation.findFirst({ where: { hostId: bId } }))?.state === 'cancelled', 10_000);
    const back = (await api('GET', `/hosts/${bId}`)).body;
    assert.deepEqual([back['state'], back['agentStopped']], ['up', null]);
    for (const n of onB) assert.deepEqual([(await vm(n))['state'], (await vm(n))['host']], ['running', B]);
    const where = await domainsEverywhere();
    for (const n of HA) assert.equal(where.get(id(n))?.length, 1, `${n} runs once: ${where.get(id(n))}`);
    assert.equal(await orch.db.client.task.count({ where: { kind: 'vm.recover' } }), recovers);
  });
});
