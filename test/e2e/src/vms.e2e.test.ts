// VMs and networks for users, end to end: a real orchestrator (PostgreSQL, NATS, the REST API, the
// task worker) and two real agent processes, each on its own simulated host (libvirt's test driver
// through libvirtd, `test:///<file>`), with Open vSwitch for the VLANs. Everything goes through the
// REST API as a user would; what exists on the hosts is checked through each agent's own libvirt
// (its inventory), since a test-driver host lives only in its agent's connection.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ensureLibvirtd } from '@kloudak/libvirt/testing';
import { seedVolumeName } from '@kloudak/agent';
import { createSimHost, ensureOvs } from '@kloudak/agent/testing';
import type { Orchestrator } from '@kloudak/orchestrator';
import { Cleanup } from '@kloudak/testkit';
import { spawnAgentProcess, type AgentProcess } from './agent-process.js';
import { agentTestEnv, ApiClient, type Json } from './api-client.js';
import { hostInventory, joinToken, setUpSimArea, startTestOrchestrator } from './vm-harness.js';

const RUN = `kv${randomBytes(3).toString('hex')}`;
const ADMIN = { username: 'root-admin', password: 'e2e-Vms-Networks-Pass-2026!' };
const WS = `${RUN}-ws`;

describe('VMs and networks through the API, on two simulated hosts', { timeout: 300_000 }, () => {
  const cleanup = new Cleanup();
  let orch: Orchestrator;
  let bridge: string;
  const agents = new Map<string, AgentProcess>();
  const hostIds = new Map<string, string>();

  const client = new ApiClient(() => orch.url, WS);
  const api = (method: string, path: string, body?: unknown) => client.call(method, path, body);
  const taskEnd = (id: string, timeoutMs?: number) => client.taskEnd(id, timeoutMs);
  const succeeded = (id: string) => client.succeeded(id);

  const inventory = (hostName: string) => hostInventory(orch, hostIds.get(hostName)!);

  async function startAgent(name: string, env: Record<string, string>, joinToken?: string): Promise<AgentProcess> {
    const dataDir = agents.get(name)?.dataDir ?? mkdtempSync(join(tmpdir(), `${RUN}-agent-`));
    if (!agents.has(name)) cleanup.add(async () => rmSync(dataDir, { recursive: true, force: true }));
    const a = spawnAgentProcess(name, `127.0.0.1:${orch.agentPort}`, dataDir, {
      ...agentTestEnv(bridge),
      ...(joinToken ? { KLOUDAK_AGENT_JOIN_TOKEN: joinToken } : {}),
      ...env,
    });
    agents.set(name, a);
    cleanup.add(() => a.kill());
    return a;
  }

  async function waitUp(name: string): Promise<string> {
    const id = await client.waitHostUp(name, () => agents.get(name)?.output() ?? '');
    hostIds.set(name, id);
    return id;
  }

  before(async () => {
    await ensureLibvirtd();
    await ensureOvs();
    orch = await startTestOrchestrator(cleanup, 'kloudak_e2e_vms', ADMIN);
    await client.login(ADMIN);
    ({ bridge } = await setUpSimArea(cleanup, client, { name: RUN, subnetBase: '10.246.0', vlanRange: '300-301', workspaces: [WS], netPrefix: 'kv-' }));

    for (const i of [0, 1]) {
      const dir = mkdtempSync(join(tmpdir(), `${RUN}-sim${i}-`));
      cleanup.add(async () => rmSync(dir, { recursive: true, force: true }));
      const sim = createSimHost({ dir, cpus: 4, memoryMb: 4096, poolName: RUN });
      await startAgent(`${RUN}-h${i}`, { KLOUDAK_AGENT_LIBVIRT_URI: sim.uri, KLOUDAK_AGENT_CONSOLE_DIR: dir }, await joinToken(client, RUN));
    }
    for (const i of [0, 1]) await waitUp(`${RUN}-h${i}`);
  });

  after(async () => {
    await cleanup.run();
  });

  it('creates a network: 202 at once with its VLAN and task, then active', async () => {
    const r = await api('POST', `/workspaces/${WS}/networks`, { name: 'front', area: RUN });
    assert.equal(r.status, 202, JSON.stringify(r.body));
    assert.equal(r.body['network']['vlan'], 300);
    assert.equal(r.body['network']['subnet'], '10.246.0.0/24');
    await succeeded(r.body['task']['id']);
    assert.equal((await api('GET', `/workspaces/${WS}/networks/front`)).body['state'], 'active');
    const back = await api('POST', `/workspaces/${WS}/networks`, { name: 'back', area: RUN });
    assert.equal(back.status, 202);
    assert.equal(back.body['network']['vlan'], 301);
    // The area's VLAN range (300-301) is used up: a clear 409, and nothing was created.
    const third = await api('POST', `/workspaces/${WS}/networks`, { name: 'third', area: RUN });
    assert.equal(third.status, 409, JSON.stringify(third.body));
    assert.match(third.body['error']['message'], /VLAN/i);
    assert.equal((await api('GET', `/workspaces/${WS}/networks/third`)).status, 404);
  });

  it('creates a VM that runs on the host placement chose, with an address and a MAC on the network', async () => {
    const userData = '#cloud-config\nruncmd:\n  - [touch, /run/kloudak-e2e-user-data]\n';
    const r = await api('POST', `/workspaces/${WS}/vms`, {
      name: 'web',
      template: `${RUN}-tpl`,
      networks: ['front'],
      sshKeys: ['ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKkloudakTestKeyNotARealOne user@test'],
      userData,
    });
    assert.equal(r.status, 202, JSON.stringify(r.body));
    const vm = r.body['vm'];
    assert.equal(vm['state'], 'scheduled');
    assert.ok(hostIds.has(vm['host']), `placed on one of the hosts: ${vm['host']}`);
    assert.equal(vm['interfaces'][0]['ip'], '10.246.0.2');
    assert.equal(vm['interfaces'][0]['vlan'], 300);
    assert.match(vm['interfaces'][0]['mac'], /^0a(:[0-9a-f]{2}){5}$/);
    const t = await taskEnd(r.body['task']['id']);
    assert.equal(t['state'], 'succeeded', JSON.stringify(t));
    assert.deepEqual(t['steps'].map((s: Json) => s['name']), ['claim', 'networks', 'create', 'running']);
    assert.equal(t['placement']['host'], vm['host'], 'why here: the chosen host is on the task');
    assert.ok(!JSON.stringify(t).includes('ssh-ed25519'), 'no key in the task record');
    assert.ok(!JSON.stringify(t).includes('kloudak-e2e-user-data'), 'no user-data in the task record');
    assert.ok(!JSON.stringify(r.body).includes('kloudak-e2e-user-data'), 'no user-data in the answer');
    // The user-data reached the host: in the VM's seed (a file on simulated hosts), beside Kloudak's.
    const agentDir = agents.get(vm['host'])!.dataDir;
    const seed = execFileSync('isoinfo', ['-J', '-i', join(agentDir, 'seeds', seedVolumeName(vm['id'])), '-x', '/user-data'], { encoding: 'utf8' });
    assert.match(seed, /^Content-Type: multipart\/mixed/);
    assert.ok(seed.includes(userData.trimEnd()), seed);
    assert.ok(seed.includes('ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKkloudakTestKeyNotARealOne'), 'and Kloudak\'s part with the key');
    const got = (await api('GET', `/workspaces/${WS}/vms/web`)).body;
    assert.equal(got['state'], 'running');
    const inv = await inventory(vm['host']);
    assert.deepEqual(inv.domains.map((d) => [d.vmId, d.state]), [[vm['id'], 'running']]);
    const other = [...hostIds.keys()].find((h) => h !== vm['host'])!;
    assert.deepEqual((await inventory(other)).domains, [], 'nothing on the other host');
    // Spread: the next VM goes to the other host.
    const r2 = await api('POST', `/workspaces/${WS}/vms`, { name: 'db', template: `${RUN}-tpl`, networks: ['front'] });
    assert.equal(r2.status, 202, JSON.stringify(r2.body));
    assert.equal(r2.body['vm']['host'], other);
    assert.equal(r2.body['vm']['interfaces'][0]['ip'], '10.246.0.3');
    await succeeded(r2.body['task']['id']);
  });

  it('answers bad input with a 4xx naming the field, and creates nothing', async () => {
    const base = { name: 'bad', template: `${RUN}-tpl`, networks: ['front'] };
    const cases: [unknown, number, RegExp][] = [
      [{ ...base, template: 'nope' }, 400, /template/],
      [{ ...base, networks: ['nope'] }, 400, /network/],
      [{ ...base, area: 'nope' }, 400, /area/],
      [{ ...base, name: 'web' }, 409, /web/],
      [{ ...base, cpu: 64 }, 409, /vCPU|cpu/i],
      [{ ...base, ramMb: 1_000_000 }, 409, /RAM|ram/i],
      [{ ...base, networks: [] }, 400, /networks/],
      [{ ...base, userData: 'packages: [nginx]' }, 400, /userData/],
    ];
    for (const [body, status, re] of cases) {
      const r = await api('POST', `/workspaces/${WS}/vms`, body);
      assert.equal(r.status, status, `${JSON.stringify(body)} → ${r.status} ${JSON.stringify(r.body)}`);
      assert.match(JSON.stringify(r.body['error']), re);
    }
    const full = await api('POST', `/workspaces/${WS}/vms`, { ...base, cpu: 64 });
    assert.ok(Array.isArray(full.body['error']['details']['rejections']), 'why not: per-host rejections');
    assert.equal(full.body['error']['details']['rejections'].length, 2);
    assert.equal((await api('GET', `/workspaces/${WS}/vms/bad`)).status, 404);
    // Quota: one more VM than allowed is refused with the limit named.
    assert.equal((await api('PUT', `/workspaces/${WS}/quota`, { vms: 2 })).status, 200);
    const q = await api('POST', `/workspaces/${WS}/vms`, base);
    assert.equal(q.status, 409);
    assert.match(q.body['error']['message'], /quota exceeded: vms/);
    const quota = (await api('GET', `/workspaces/${WS}/quota`)).body;
    assert.equal(quota['limits']['vms'], 2);
    assert.equal(quota['usage']['vms'], 2);
    assert.equal(quota['usage']['addresses'], 2);
    assert.equal((await api('PUT', `/workspaces/${WS}/quota`, {})).status, 200);
  });

  it('stops, starts and reboots a VM', async () => {
    const host = (await api('GET', `/workspaces/${WS}/vms/web`)).body['host'];
    const wrong = await api('POST', `/workspaces/${WS}/vms/web/actions`, { action: 'start' });
    assert.equal(wrong.status, 409, 'start of a running VM');
    for (const [action, state, domain] of [['stop', 'stopped', 'shutoff'], ['start', 'running', 'running'], ['reboot', 'running', 'running']] as const) {
      const r = await api('POST', `/workspaces/${WS}/vms/web/actions`, { action });
      assert.equal(r.status, 202, JSON.stringify(r.body));
      await succeeded(r.body['task']['id']);
      assert.equal((await api('GET', `/workspaces/${WS}/vms/web`)).body['state'], state);
      const d = (await inventory(host)).domains[0];
      assert.equal(d?.state, domain, `${action}: ${JSON.stringify(d)}`);
    }
  });

  it('rolls back a live NIC attach the host cannot do: one attempt, the NIC record and its address gone', async () => {
    // libvirt's test driver has no device hot-plug (the qemu e2e attaches and detaches for real):
    // the agent answers "unimplemented", which no retry can cure.
    const r = await api('PATCH', `/workspaces/${WS}/vms/web`, { networks: ['front', 'back'], description: 'two legs' });
    assert.equal(r.status, 200, JSON.stringify(r.body));
    assert.equal(r.body['tasks'].length, 1);
    assert.deepEqual(r.body['vm']['interfaces'].map((i: Json) => i['network']), ['front', 'back'], 'claimed at once');
    const t = await taskEnd(r.body['tasks'][0]['id']);
    assert.equal(t['state'], 'rolled_back', JSON.stringify(t));
    assert.equal(t['steps'][1]['attempts'], 1, 'not retried');
    assert.match(t['error'], /unimplemented/);
    const vm = (await api('GET', `/workspaces/${WS}/vms/web`)).body;
    assert.equal(vm['description'], 'two legs');
    assert.equal(vm['state'], 'running');
    assert.deepEqual(vm['interfaces'].map((i: Json) => i['network']), ['front']);
    const quota = (await api('GET', `/workspaces/${WS}/quota`)).body;
    assert.equal(quota['usage']['addresses'], 2, 'the address of the failed NIC is free again');
    const busy = await api('POST', `/workspaces/${WS}/vms`, { name: 'leg', template: `${RUN}-tpl`, networks: ['back'] });
    assert.equal(busy.status, 202);
    assert.equal(busy.body['vm']['interfaces'][0]['ip'], '10.246.0.4');
    await succeeded(busy.body['task']['id']);
    const inUse = await api('DELETE', `/workspaces/${WS}/networks/back`);
    assert.equal(inUse.status, 409, 'a network with VMs attached cannot go');
  });

  it('rolls a create back when its host goes away for good, and a delete afterwards leaves nothing', async () => {
    // The next VM goes to h0 or h1 (spread); kill that host's agent as soon as the VM is placed.
    const r = await api('POST', `/workspaces/${WS}/vms`, { name: 'doomed', template: `${RUN}-tpl`, networks: ['front'] });
    assert.equal(r.status, 202, JSON.stringify(r.body));
    const hostName = r.body['vm']['host'] as string;
    const a = agents.get(hostName)!;
    await a.kill();
    const t = await taskEnd(r.body['task']['id'], 90_000);
    assert.ok(['rolled_back', 'failed'].includes(t['state']), JSON.stringify(t));
    const vm = (await api('GET', `/workspaces/${WS}/vms/doomed`)).body;
    assert.equal(vm['state'], 'error');
    if (t['state'] === 'rolled_back') {
      // Nothing reached the host, or what did was undone: the claims are released.
      assert.equal(vm['host'], null);
      assert.deepEqual(vm['interfaces'].map((i: Json) => i['ip']), [null]);
    }
    // The host comes back (same identity); deleting the VM in error removes it everywhere.
    await startAgent(hostName, { KLOUDAK_AGENT_LIBVIRT_URI: a.env['KLOUDAK_AGENT_LIBVIRT_URI']!, KLOUDAK_AGENT_CONSOLE_DIR: a.env['KLOUDAK_AGENT_CONSOLE_DIR']! });
    await waitUp(hostName);
    const del = await api('DELETE', `/workspaces/${WS}/vms/doomed`);
    assert.equal(del.status, 202, JSON.stringify(del.body));
    await succeeded(del.body['task']['id']);
    assert.equal((await api('GET', `/workspaces/${WS}/vms/doomed`)).status, 404);
    assert.ok(!(await inventory(hostName)).domains.some((d) => d.vmId === r.body['vm']['id']));
  });

  it('deletes VMs and networks: gone from the API and from the hosts, names free again, tasks still readable', async () => {
    const vms = ((await api('GET', `/workspaces/${WS}/vms`)).body['items'] as Json[]).map((v) => v['name'] as string);
    const tasks: string[] = [];
    for (const name of vms) {
      const r = await api('DELETE', `/workspaces/${WS}/vms/${name}`);
      assert.equal(r.status, 202, JSON.stringify(r.body));
      tasks.push(r.body['task']['id']);
    }
    for (const id of tasks) await succeeded(id);
    assert.deepEqual((await api('GET', `/workspaces/${WS}/vms`)).body['items'], []);
    for (const h of hostIds.keys()) {
      const inv = await inventory(h);
      assert.deepEqual(inv.domains, [], `${h}: no domain left`);
      assert.deepEqual(inv.volumes.filter((v) => v.vmId), [], `${h}: no VM volume left`);
    }
    for (const name of ['front', 'back']) {
      const r = await api('DELETE', `/workspaces/${WS}/networks/${name}`);
      assert.equal(r.status, 202, JSON.stringify(r.body));
      await succeeded(r.body['task']['id']);
      assert.equal((await api('GET', `/workspaces/${WS}/networks/${name}`)).status, 404);
    }
    // Names and VLANs are free again; the old tasks are still there.
    const again = await api('POST', `/workspaces/${WS}/networks`, { name: 'front', area: RUN });
    assert.equal(again.status, 202);
    assert.equal(again.body['network']['vlan'], 300);
    await succeeded(again.body['task']['id']);
    assert.equal((await api('GET', `/workspaces/${WS}/tasks/${tasks[0]}`)).status, 200);
    const del = await api('DELETE', `/workspaces/${WS}/networks/front`);
    await succeeded(del.body['task']['id']);
  });
});
