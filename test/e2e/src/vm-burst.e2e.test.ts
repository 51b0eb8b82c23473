// A burst against real components: 100 VM creates at once across 10 simulated hosts (10 real agent
// processes, each on its own libvirt test-driver host) and 10 network creates racing for 8 VLANs,
// through the REST API of an orchestrator on PostgreSQL. No host may be over-committed, no
// address, MAC or VLAN handed out twice, no quota passed; every task must end (succeeded here);
// deleting everything must leave every host's inventory empty.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ensureLibvirtd } from '@kloudak/libvirt/testing';
import { createSimHost, ensureOvs } from '@kloudak/agent/testing';
import type { Orchestrator } from '@kloudak/orchestrator';
import { Cleanup } from '@kloudak/testkit';
import { startAgentProcess, type AgentProcess } from './agent-process.js';
import { agentTestEnv, ApiClient, type Json } from './api-client.js';
import { hostInventory, joinToken, setUpSimArea, startTestOrchestrator } from './vm-harness.js';

const RUN = `kz${randomBytes(3).toString('hex')}`;
const ADMIN = { username: 'root-admin', password: 'e2e-Vm-Burst-Pass-2026!' };
const HOSTS = 10;
/** Per host: 2 CPUs × the default vCPU overcommit (4) = 8 vCPU; 4096 MB of RAM (no RAM overcommit) = 8 VMs of 512 MB. */
const HOST_CPUS = 2;
const HOST_RAM_MB = 4096;
const CPU_OVERCOMMIT = 4;
const VM = { cpu: 1, ramMb: 512 };
const PER_HOST = 8;
/** Workspace A may have 30 VMs; B has no quota. A asks for 40, B for 60: 90 allowed for 80 places. */
const QUOTA_A = 30;

describe('a burst of 100 VM creates across 10 simulated hosts', { timeout: 300_000 }, () => {
  const cleanup = new Cleanup();
  let orch: Orchestrator;
  let bridge = '';
  const agents: AgentProcess[] = [];
  const hostIds: string[] = [];
  const wsA = `${RUN}-a`;
  const wsB = `${RUN}-b`;
  const client = new ApiClient(() => orch.url, wsA);
  const api = (method: string, path: string, body?: unknown) => client.call(method, path, body);
  const networks = new Map<string, string[]>();
  const created: { ws: string; vm: Json; task: string }[] = [];

  before(async () => {
    await ensureLibvirtd();
    await ensureOvs();
    orch = await startTestOrchestrator(cleanup, 'kloudak_e2e_burst', ADMIN, { taskStepTimeoutMs: 30_000, taskTimeoutMs: 120_000 });
    await client.login(ADMIN);
    ({ bridge } = await setUpSimArea(cleanup, client, { name: RUN, subnetBase: '10.249.0', vlanRange: '430-437', workspaces: [wsA, wsB], netPrefix: 'kz-', template: { ramMb: 512 } }));
    assert.equal((await api('PUT', `/workspaces/${wsA}/quota`, { vms: QUOTA_A })).status, 200);

    const started = Date.now();
    for (let i = 0; i < HOSTS; i++) {
      const dir = mkdtempSync(join(tmpdir(), `${RUN}-sim${i}-`));
      cleanup.add(async () => rmSync(dir, { recursive: true, force: true }));
      const sim = createSimHost({ dir, cpus: HOST_CPUS, memoryMb: HOST_RAM_MB, poolName: RUN });
      const token = await joinToken(client, RUN);
      const a = startAgentProcess(cleanup, `${RUN}-h${i}`, `127.0.0.1:${orch.agentPort}`, {
        ...agentTestEnv(bridge),
        KLOUDAK_AGENT_HEARTBEAT_MS: '1000',
        KLOUDAK_AGENT_JOIN_TOKEN: token,
        KLOUDAK_AGENT_LIBVIRT_URI: sim.uri,
        KLOUDAK_AGENT_CONSOLE_DIR: dir,
      }, { dirPrefix: `${RUN}-h${i}` });
      agents.push(a);
    }
    for (const a of agents) hostIds.push(await client.waitHostUp(a.name, () => a.output(), 60_000));
    console.log(`# ${HOSTS} agents up in ${Date.now() - started} ms`);
  });

  after(async () => {
    await cleanup.run();
  });

  it('hands out 8 VLANs to 10 racing network creates: each once, the rest refused with 409', async () => {
    const reqs = [wsA, wsB].flatMap((ws) => [0, 1, 2, 3, 4].map((i) => ({ ws, name: `n${i}` })));
    const answers = await Promise.all(reqs.map((r) => api('POST', `/workspaces/${r.ws}/networks`, { name: r.name, area: RUN })));
    const ok = answers.filter((a) => a.status === 202);
    assert.equal(ok.length, 8, JSON.stringify(answers.map((a) => [a.status, a.body['error']?.['message']])));
    for (const a of answers.filter((x) => x.status !== 202)) {
      assert.equal(a.status, 409);
      assert.match(a.body['error']['message'], /VLAN/i);
    }
    const vlans = ok.map((a) => a.body['network']['vlan'] as number).sort((x, y) => x - y);
    assert.deepEqual(vlans, [430, 431, 432, 433, 434, 435, 436, 437], 'every VLAN of the range exactly once');
    for (const [i, a] of answers.entries()) {
      if (a.status !== 202) continue;
      await client.succeeded(a.body['task']['id'], 60_000, reqs[i]!.ws);
      networks.set(reqs[i]!.ws, [...(networks.get(reqs[i]!.ws) ?? []), reqs[i]!.name]);
    }
    assert.ok((networks.get(wsA)?.length ?? 0) >= 3 && (networks.get(wsB)?.length ?? 0) >= 3);
  });

  it('creates 100 VMs at once: 80 placed, none over capacity, quota kept, addresses unique, every task ends', async () => {
    const reqs = [...Array.from({ length: 40 }, (_, i) => ({ ws: wsA, i })), ...Array.from({ length: 60 }, (_, i) => ({ ws: wsB, i }))];
    const started = Date.now();
    const answers = await Promise.all(
      reqs.map((r) => {
        const nets = networks.get(r.ws)!;
        return api('POST', `/workspaces/${r.ws}/vms`, { name: `vm${r.i}`, template: `${RUN}-tpl`, networks: [nets[r.i % nets.length]!], ...VM });
      }),
    );
    const acceptedMs = Date.now() - started;
    for (const [i, a] of answers.entries()) {
      if (a.status === 202) created.push({ ws: reqs[i]!.ws, vm: a.body['vm'], task: a.body['task']['id'] });
      else {
        assert.equal(a.status, 409, JSON.stringify(a.body));
        assert.match(a.body['error']['message'], /quota exceeded: vms|no host/i, JSON.stringify(a.body));
      }
    }
    const inA = created.filter((c) => c.ws === wsA).length;
    assert.equal(created.length, HOSTS * PER_HOST, `every place taken, none twice: ${answers.map((a) => a.status).join(',')}`);
    assert.ok(inA <= QUOTA_A, `workspace A has ${inA} VMs, quota ${QUOTA_A}`);
    for (const [ws, limit] of [[wsA, QUOTA_A]] as const) {
      const q = (await api('GET', `/workspaces/${ws}/quota`)).body;
      assert.ok(q['usage']['vms'] <= limit, JSON.stringify(q));
    }
    // Claims: per host (the VM view names it), the sum of claimed vCPU and RAM within its capacity.
    const perHost = new Map<string, { cpu: number; ramMb: number; n: number }>();
    for (const c of created) {
      const h = perHost.get(c.vm['host']) ?? { cpu: 0, ramMb: 0, n: 0 };
      perHost.set(c.vm['host'], { cpu: h.cpu + c.vm['cpu'], ramMb: h.ramMb + c.vm['ramMb'], n: h.n + 1 });
    }
    assert.deepEqual([...perHost.keys()].sort(), agents.map((a) => a.name).sort(), 'placed on the hosts of the test');
    for (const [i, id] of hostIds.entries()) {
      const cap = (await api('GET', `/hosts/${id}`)).body['capacity'];
      assert.equal(cap['cpus'], HOST_CPUS);
      const used = perHost.get(agents[i]!.name)!;
      assert.ok(used.cpu <= cap['cpus'] * CPU_OVERCOMMIT, `${agents[i]!.name}: ${used.cpu} vCPU on ${cap['cpus']} CPUs`);
      assert.ok(used.ramMb <= cap['ramMb'], `${agents[i]!.name}: ${used.ramMb} MB claimed of ${cap['ramMb']} MB`);
    }
    const ips = created.map((c) => c.vm['interfaces'][0]['ip'] as string);
    const macs = created.map((c) => c.vm['interfaces'][0]['mac'] as string);
    assert.equal(new Set(ips).size, ips.length, 'no address twice');
    assert.ok(ips.every((ip) => /^10\.249\.0\.\d+$/.test(ip)));
    assert.equal(new Set(macs).size, macs.length, 'no MAC twice');

    // Every task ends; on healthy hosts every one succeeds, and each host runs what was placed on it.
    const ends = await Promise.all(created.map((c) => client.taskEnd(c.task, 180_000, c.ws)));
    const doneMs = Date.now() - started;
    assert.deepEqual(ends.filter((t) => t['state'] !== 'succeeded').map((t) => [t['id'], t['state'], t['error']]), []);
    console.log(`# ${answers.length} creates answered in ${acceptedMs} ms; ${created.length} VMs running after ${doneMs} ms`);
    for (const [i, id] of hostIds.entries()) {
      const inv = await hostInventory(orch, id);
      const want = created.filter((c) => c.vm['host'] === agents[i]!.name).map((c) => c.vm['id'] as string).sort();
      assert.deepEqual(inv.domains.map((d) => d.vmId.toLowerCase()).sort(), want, `host ${agents[i]!.name}`);
      assert.ok(inv.domains.every((d) => d.state === 'running'));
    }
    for (const ws of [wsA, wsB]) {
      const tasks = (await client.call('GET', `/workspaces/${ws}/tasks?limit=200`)).body['items'] as Json[];
      assert.deepEqual(tasks.filter((t) => !['succeeded', 'failed', 'rolled_back'].includes(t['state'])).map((t) => [t['id'], t['state']]), [], 'no task left queued or running');
    }
  });

  it('deletes them all at once: every task succeeds and every host is empty', async () => {
    const started = Date.now();
    const answers = await Promise.all(created.map((c) => api('DELETE', `/workspaces/${c.ws}/vms/${c.vm['name']}`)));
    assert.deepEqual(answers.filter((a) => a.status !== 202).map((a) => a.body), []);
    const ends = await Promise.all(answers.map((a, i) => client.taskEnd(a.body['task']['id'], 180_000, created[i]!.ws)));
    assert.deepEqual(ends.filter((t) => t['state'] !== 'succeeded').map((t) => [t['id'], t['state'], t['error']]), []);
    console.log(`# ${created.length} deletes done in ${Date.now() - started} ms`);
    for (const id of hostIds) {
      const inv = await hostInventory(orch, id);
      assert.deepEqual(inv.domains, [], `${id}: no domain left`);
      assert.deepEqual(inv.volumes.filter((v) => v.vmId), [], `${id}: no VM volume left`);
    }
    for (const [ws, names] of networks) {
      const dels = await Promise.all(names.map((n) => api('DELETE', `/workspaces/${ws}/networks/${n}`)));
      for (const d of dels) await client.succeeded(d.body['task']['id'], 60_000, ws);
    }
    for (const ws of [wsA, wsB]) assert.deepEqual((await api('GET', `/workspaces/${ws}/vms`)).body['items'], []);
  });
});
