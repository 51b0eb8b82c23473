// Draining a real QEMU host live, end to end (issue 11, "Admin actions: drain a host: live
// migration where the pool is shared"; "per area, an n+1 check in the API").
//
// Three hosts A, B and C of one area (qemu-fleet.ts: each a network namespace with its own agent,
// on a private libvirtd of its own, all mounting one shared dir pool). A runs a booted test guest.
// C's libvirtd is out of its peers' reach (its agent announces a socket that does not exist): a
// drain towards C fails, and rolls back with the VM still running on A and A active again.
// Then POST /hosts/A/drain puts A in maintenance and live-migrates the guest to B: libvirt's
// peer-to-peer migration, A's libvirtd connecting to B's over B's unix socket (the hosts'
// namespaces are network namespaces only: they share the file system), QEMU streaming the memory
// over loopback (the private libvirtds and their QEMUs run in the root network namespace; only the
// agents are in the hosts' namespaces). Expected: the domain runs on B, started by the migration
// (libvirt's state reason), with the same disk and no second boot; it is gone from A; the API
// shows the VM running on B and A in maintenance; the n+1 check answers before and after.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { domainName } from '@kloudak/agent';
import { DomainState } from '@kloudak/libvirt';
import type { Orchestrator } from '@kloudak/orchestrator';
import { Cleanup, waitFor } from '@kloudak/testkit';
import { FINAL_TASK_STATES, type ApiClient, type Json } from './api-client.js';
import { startQemuFleet, type FleetHost } from './qemu-fleet.js';

const RUN = `hd${randomBytes(3).toString('hex')}`;
const ADMIN = { username: 'root-admin', password: 'e2e-Host-Drain-Pass-2026!' };
const WS = `${RUN}-ws`;
/** libvirt's VIR_DOMAIN_RUNNING_MIGRATED: the domain runs because an incoming migration finished. */
const RUNNING_MIGRATED = 2;

describe('draining a qemu host live-migrates its running VM to the other host of the area', { timeout: 240_000 }, () => {
  const cleanup = new Cleanup();
  let orch: Orchestrator;
  let hosts: FleetHost[] = [];
  let client: ApiClient;
  const api = (method: string, path: string, body?: unknown) => client.call(method, path, body);
  let vmId = '';
  let sharedDir = '';

  before(async () => {
    const f = await startQemuFleet(cleanup, {
      run: RUN,
      names: ['a', 'b', 'c'],
      nsPrefix: 'hd',
      octet: 237,
      dbPrefix: 'kloudak_e2e_host_drain',
      area: { subnet: '10.236.0.0/24', gateway: '10.236.0.1', vlanRange: '440-441' },
      admin: ADMIN,
      agentEnv: (i, h) => ({
        // Both hosts' QEMUs share the root network namespace: during the migration the VM has a tap
        // on each, so their names must differ (a real host has a network stack of its own).
        KLOUDAK_AGENT_TAP_PREFIX: ['ka', 'kb', 'kc'][i]!,
        // Peer to peer: the source libvirtd dials the destination's private socket itself (C's is
        // announced wrong: no peer can reach it).
        KLOUDAK_AGENT_MIGRATION_URI: `qemu+unix:///system?socket=${i === 2 ? `${h.plv.socketPath}.nowhere` : h.plv.socketPath}`,
        KLOUDAK_AGENT_MIGRATION_ADDRESS: '127.0.0.1',
      }),
    });
    ({ orch, hosts, client, sharedDir } = f);
    const [, b, c] = hosts as [FleetHost, FleetHost, FleetHost];
    // The VM on A: B and C are in maintenance while it is placed.
    for (const h of [b, c]) assert.equal((await api('PATCH', `/hosts/${h.id}`, { maintenance: true })).status, 200);
    const r = await api('POST', `/workspaces/${WS}/vms`, { name: 'web', template: f.template, networks: ['n'], ha: true });
    assert.equal(r.status, 202, JSON.stringify(r.body));
    vmId = r.body['vm']['id'];
    await client.succeeded(r.body['task']['id'], 120_000);
    // Booted (its init printed the ready line) before it moves.
    await waitFor(async () => String((await api('GET', `/workspaces/${WS}/vms/web/console`)).body['text'] ?? '').includes('KLOUDAK-READY'), 60_000, 'the guest booted on A');
  });

  after(async () => {
    await cleanup.run();
  });

  async function drainTask(hostId: string): Promise<Json> {
    let t: Json = {};
    await waitFor(async () => {
      t = (await api('GET', `/hosts/${hostId}/drain`)).body;
      return FINAL_TASK_STATES.includes(t['state']);
    }, 90_000, 'the drain task').catch((e: unknown) => {
      throw new Error(`${(e as Error).message}: ${JSON.stringify(t)}\n${hosts.map((h) => h.agent.output().slice(-3000)).join('\n')}`);
    });
    return t;
  }

  it('a drain whose migration fails rolls back: the VM keeps running on A, nothing is left on C, A is active again', async () => {
    const [a, , c] = hosts as [FleetHost, FleetHost, FleetHost];
    const name = domainName(vmId);
    assert.equal((await api('PATCH', `/hosts/${c.id}`, { maintenance: false })).status, 200);
    const d = await api('POST', `/hosts/${a.id}/drain`, {});
    assert.equal(d.status, 202, JSON.stringify(d.body));
    const t = await drainTask(a.id);
    assert.equal(t['state'], 'rolled_back', JSON.stringify(t));
    assert.deepEqual(t['placement']['drain']['moves'].map((m: Json) => [m['toHostId'], m['how']]), [[c.id, 'live']]);
    assert.match(t['error'], /could not move/);
    const st = await a.lv.getDomainState(await a.lv.lookupDomainByName(name));
    assert.equal(st.state, DomainState.RUNNING, 'still running on A');
    assert.deepEqual((await c.lv.listAllDomains()).filter((x) => x.name === name), [], 'nothing left on C');
    const vm = (await api('GET', `/workspaces/${WS}/vms/web`)).body;
    assert.deepEqual([vm['host'], vm['state']], [a.name, 'running']);
    assert.equal((await api('GET', `/hosts/${a.id}`)).body['adminState'], 'active', 'the maintenance step was undone');
    const row = await orch.db.client.vm.findUniqueOrThrow({ where: { id: vmId } });
    assert.deepEqual([row.hostId, row.migratingToHostId], [a.id, null], 'its claim on A, no room held on C any more');
    const failed = await orch.db.client.outboxEvent.count({ where: { entityId: vmId, event: 'migration_failed' } });
    assert.ok(failed >= 1, 'a vm.migration_failed event per failed attempt');
    assert.equal((await api('PATCH', `/hosts/${c.id}`, { maintenance: true })).status, 200);
    console.log(`# failed drain: ${t['attempts']} attempts, rolled back in ${Date.parse(t['finishedAt']) - Date.parse(t['createdAt'])} ms; error: ${String(t['error']).slice(0, 300)}`);
  });

  it('n+1 before, drain A: the VM runs on B (migrated, same disk, not rebooted), gone from A; A in maintenance', async () => {
    const [a, b] = hosts as [FleetHost, FleetHost];
    const name = domainName(vmId);
    assert.equal((await api('PATCH', `/hosts/${b.id}`, { maintenance: false })).status, 200);
    const diskBefore = /<source file='([^']+)'/.exec(await a.lv.getDomainXml(await a.lv.lookupDomainByName(name)))?.[1];
    assert.ok(diskBefore?.startsWith(`${sharedDir}/`), `the VM's disk is on the shared pool: ${diskBefore}`);

    // n+1: A is the largest host (it holds the VM); B can take its HA VM.
    const before = await api('GET', `/areas/${RUN}/capacity`);
    assert.equal(before.status, 200, JSON.stringify(before.body));
    assert.equal(before.body['largestHost']['id'], a.id);
    assert.deepEqual([before.body['survives'], before.body['ha']['placed'], before.body['all']['survives']], [true, 1, true]);

    const t0 = Date.now();
    const d = await api('POST', `/hosts/${a.id}/drain`, {});
    assert.equal(d.status, 202, JSON.stringify(d.body));
    const again = await api('POST', `/hosts/${a.id}/drain`, {});
    assert.equal(again.status, 202, JSON.stringify(again.body));
    assert.equal(again.body['task']['id'], d.body['task']['id'], 'a drain under way is answered again, not queued twice');
    const t = await drainTask(a.id);
    const drainMs = Date.now() - t0;
    assert.equal(t['state'], 'succeeded', JSON.stringify(t));
    const progress = t['placement']['drain']['progress'];
    assert.deepEqual([progress['moved'], progress['failed'], progress['of']], [1, 0, 1]);
    assert.deepEqual(t['placement']['drain']['moves'].map((m: Json) => [m['vmId'], m['toHostId'], m['how']]), [[vmId, b.id, 'live']]);

    // What really runs where, by each host's own libvirtd.
    const onB = await b.lv.lookupDomainByName(name);
    const st = await b.lv.getDomainState(onB);
    assert.deepEqual([st.state, st.reason], [DomainState.RUNNING, RUNNING_MIGRATED], 'running on B because a migration brought it there');
    assert.deepEqual((await a.lv.listAllDomains()).filter((x) => x.name === name), [], 'gone from A (not even defined)');
    const diskAfter = /<source file='([^']+)'/.exec(await b.lv.getDomainXml(onB))?.[1];
    assert.equal(diskAfter, diskBefore, 'the same disk on the shared pool');

    // The API: on B, running; A in maintenance; the infrastructure event of the move.
    const vm = (await api('GET', `/workspaces/${WS}/vms/web`)).body;
    assert.deepEqual([vm['host'], vm['state']], [b.name, 'running']);
    assert.equal((await api('GET', `/hosts/${a.id}`)).body['adminState'], 'maintenance');
    const row = await orch.db.client.vm.findUniqueOrThrow({ where: { id: vmId } });
    assert.deepEqual([row.hostId, row.migratingToHostId], [b.id, null], 'its claim moved to B, no room held twice');
    const migrated = await orch.db.client.outboxEvent.findFirst({ where: { entityId: vmId, event: 'migrated' } });
    assert.ok(migrated, 'a vm.migrated event');
    const migrateMs = (migrated.payload as Json)['migrateMs'];
    // The guest kept running: B's console log (appended from the migration on) has no boot banner.
    const consoleB = String((await api('GET', `/workspaces/${WS}/vms/web/console`)).body['text'] ?? '');
    assert.doesNotMatch(consoleB, /Linux version/, 'no second boot on B');

    // n+1 after: B is the largest host now, and A (in maintenance) takes nothing.
    const after = (await api('GET', `/areas/${RUN}/capacity`)).body;
    assert.equal(after['largestHost']['id'], b.id);
    assert.equal(after['survives'], false);
    assert.equal(after['ha']['left'][0]['rejections'].find((x: Json) => x['hostId'] === a.id)['filter'], 'admin');
    console.log(`# drain of ${a.name}: task ${drainMs} ms, live migration of the 128 MiB test guest ${migrateMs} ms`);
  });

  it('drain B in restart mode: the VM is shut down on B and booted on A from the same disk; B in maintenance', async () => {
    const [a, b] = hosts as [FleetHost, FleetHost];
    const name = domainName(vmId);
    const diskBefore = /<source file='([^']+)'/.exec(await b.lv.getDomainXml(await b.lv.lookupDomainByName(name)))?.[1];
    assert.equal((await api('PATCH', `/hosts/${a.id}`, { maintenance: false })).status, 200);
    const t0 = Date.now();
    const d = await api('POST', `/hosts/${b.id}/drain`, { mode: 'restart' });
    assert.equal(d.status, 202, JSON.stringify(d.body));
    const t = await drainTask(b.id);
    const drainMs = Date.now() - t0;
    assert.equal(t['state'], 'succeeded', JSON.stringify(t));
    assert.deepEqual(t['placement']['drain']['moves'].map((m: Json) => [m['toHostId'], m['how']]), [[a.id, 'restart']]);
    const onA = await a.lv.lookupDomainByName(name);
    const st = await a.lv.getDomainState(onA);
    assert.equal(st.state, DomainState.RUNNING);
    assert.notEqual(st.reason, RUNNING_MIGRATED, 'started, not migrated');
    assert.deepEqual((await b.lv.listAllDomains()).filter((x) => x.name === name), [], 'gone from B');
    assert.equal(/<source file='([^']+)'/.exec(await a.lv.getDomainXml(onA))?.[1], diskBefore, 'the same disk');
    const vm = (await api('GET', `/workspaces/${WS}/vms/web`)).body;
    assert.deepEqual([vm['host'], vm['state']], [a.name, 'running']);
    assert.equal((await api('GET', `/hosts/${b.id}`)).body['adminState'], 'maintenance');
    // It booted again on A, from the disk the migration kept.
    await waitFor(async () => String((await api('GET', `/workspaces/${WS}/vms/web/console`)).body['text'] ?? '').includes('KLOUDAK-READY'), 60_000, 'the guest booted on A');
    console.log(`# restart-mode drain of ${b.name}: task ${drainMs} ms (ACPI shutdown on B, start on A)`);
  });
});
