// A real VM through the API: the orchestrator (PostgreSQL, NATS, REST, tasks) and a real agent on
// qemu:///system with Open vSwitch — the local host of `npm start`, made the same way. The template
// `test-guest` boots its kernel directly (template boot settings); the guest configures the address
// IPAM gave it from its NoCloud seed and serves its instance-id over HTTP. A client in a namespace
// on the network's VLAN reaches it; a client on another network's VLAN cannot. A second network is
// attached and detached live (its OVS port appears with its VLAN, then goes). Its guest powered off
// and its domain started outside Kloudak, its state follows; an HA VM destroyed outside Kloudak is
// started again. Deleting the VM
// leaves no domain, volume or port (checked through libvirt and ovs-vsctl).
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Libvirt } from '@kloudak/libvirt';
import { ensureLibvirtd } from '@kloudak/libvirt/testing';
import { domainName, tapName } from '@kloudak/agent';
import { ensureOvs, type TestNet } from '@kloudak/agent/testing';
import type { Orchestrator } from '@kloudak/orchestrator';
import { Cleanup, waitFor } from '@kloudak/testkit';
import { startAgentProcess } from './agent-process.js';
import { agentHostEnv, ApiClient } from './api-client.js';
import { GUEST, QEMU_URI, removeDomains, setUpQemuHost, testGuestImage } from './qemu-host.js';
import { hostInventory, startInProcessOrchestrator } from './vm-harness.js';

const RUN = `kb${randomBytes(3).toString('hex')}`;
const ADMIN = { username: 'root-admin', password: 'e2e-Vm-Boot-Pass-2026!' };
const WS = `${RUN}-ws`;
const SUBNET = '10.247.0';

describe('a real VM through the API on a qemu host', { timeout: 300_000 }, () => {
  const cleanup = new Cleanup();
  let orch: Orchestrator;
  let net: TestNet;
  let lv: Libvirt;
  let bridge: string;
  let hostId = '';
  let vmId = '';

  const client = new ApiClient(() => orch.url, WS);
  const api = (method: string, path: string, body?: unknown) => client.call(method, path, body);
  const succeeded = (id: string) => client.succeeded(id, 120_000);
  const inventory = () => hostInventory(orch, hostId);

  before(async () => {
    if (!existsSync(join(GUEST, 'template.qcow2'))) throw new Error(`test guest missing in ${GUEST}: run scripts/build-test-guest.sh`);
    await ensureLibvirtd();
    await ensureOvs();
    orch = await startInProcessOrchestrator(cleanup, 'kloudak_e2e_boot', ADMIN, { heartbeatIntervalMs: 500, taskBackoffMs: 500 }, { livenessTickMs: 100 });
    await client.login(ADMIN);

    // The host's world, as up.sh makes it: a dir pool holding the guest image, its boot files, a bridge.
    const host = await setUpQemuHost(cleanup, { name: RUN, netPrefix: 'kb-', fill: testGuestImage('testguest.qcow2') });
    ({ lv, net, bridge } = host);
    const { poolDir, consoleDir } = host;
    // Should a test fail before the VM's delete.
    cleanup.add(() => removeDomains(lv, vmId ? [vmId] : []));

    assert.equal((await api('POST', '/areas', { name: RUN, subnet: `${SUBNET}.0/24`, gateway: `${SUBNET}.1`, vlanRange: '410-419' })).status, 201);
    assert.equal((await api('POST', '/pools', { name: RUN, area: RUN, path: poolDir, type: 'dir' })).status, 201);
    const cmdline = readFileSync(join(GUEST, 'cmdline'), 'utf8').trim();
    const tpl = await api('POST', '/templates', {
      name: `${RUN}-guest`,
      os: 'kloudak-test-guest',
      cpu: 1,
      ramMb: 128,
      diskGb: 1,
      image: 'testguest.qcow2',
      boot: { kernel: join(GUEST, 'vmlinuz'), initrd: join(GUEST, 'initrd.img'), cmdline },
    });
    assert.equal(tpl.status, 201, JSON.stringify(tpl.body));
    assert.deepEqual(tpl.body['boot'], { kernel: join(GUEST, 'vmlinuz'), initrd: join(GUEST, 'initrd.img'), cmdline });
    assert.equal((await api('POST', '/workspaces', { name: WS })).status, 201);

    const jt = await api('POST', '/hosts/join-tokens', { area: RUN, expiresIn: 600 });
    const agent = startAgentProcess(cleanup, `${RUN}-qemu`, `127.0.0.1:${orch.agentPort}`, {
      ...agentHostEnv(bridge),
      KLOUDAK_AGENT_JOIN_TOKEN: jt.body['token'],
      KLOUDAK_AGENT_LIBVIRT_URI: QEMU_URI,
      KLOUDAK_AGENT_CONSOLE_DIR: consoleDir,
      KLOUDAK_AGENT_HEARTBEAT_MS: '500',
    }, { dirPrefix: RUN });
    hostId = await client.waitHostUp(`${RUN}-qemu`, () => agent.output());
  });

  after(async () => {
    await cleanup.run();
  });

  it('boots the template with direct kernel boot and answers HTTP on its IPAM address, on its VLAN only', async () => {
    const front = await api('POST', `/workspaces/${WS}/networks`, { name: 'front', area: RUN });
    assert.equal(front.status, 202, JSON.stringify(front.body));
    const back = await api('POST', `/workspaces/${WS}/networks`, { name: 'back', area: RUN });
    await succeeded(front.body['task']['id']);
    await succeeded(back.body['task']['id']);
    const r = await api('POST', `/workspaces/${WS}/vms`, { name: 'web', template: `${RUN}-guest`, networks: ['front'], ha: false });
    assert.equal(r.status, 202, JSON.stringify(r.body));
    vmId = r.body['vm']['id'];
    const ip = r.body['vm']['interfaces'][0]['ip'] as string;
    const vlan = r.body['vm']['interfaces'][0]['vlan'] as number;
    assert.equal(ip, `${SUBNET}.2`);
    await succeeded(r.body['task']['id']);
    // The guest prints its ready line once it configured its seed's address.
    let text = '';
    await waitFor(async () => {
      text = (await api('GET', `/workspaces/${WS}/vms/web/console`)).body['text'] ?? '';
      return text.includes('KLOUDAK-READY');
    }, 120_000, 'the guest ready line').catch((e: unknown) => {
      throw new Error(`${(e as Error).message}\n${text.slice(-2000)}`);
    });
    assert.match(text, new RegExp(`KLOUDAK-READY instance-id=${vmId} hostname=web ip=${SUBNET.replace(/\./g, '\\.')}\\.2`));
    const same = await net.addNamespaceHost({ name: 'same', bridge, vlan, address: `${SUBNET}.250/24` });
    const other = await net.addNamespaceHost({ name: 'other', bridge, vlan: back.body['network']['vlan'], address: `${SUBNET}.251/24` });
    const fetchIn = (ns: string) =>
      net.exec(ns, [process.execPath, '-e', `fetch('http://${ip}/',{signal:AbortSignal.timeout(4000)}).then(r=>r.text()).then(t=>process.stdout.write(t),()=>process.exit(3))`], {
        allowFailure: true,
        timeoutMs: 15_000,
      });
    let got = await fetchIn(same.ns);
    for (let i = 0; i < 5 && got.code !== 0; i++) got = await fetchIn(same.ns);
    assert.equal(got.code, 0, got.stderr);
    assert.equal(got.stdout.trim(), vmId, 'the guest serves its instance-id on its network\'s VLAN');
    const blocked = await fetchIn(other.ns);
    assert.notEqual(blocked.code, 0, 'a client on another network\'s VLAN cannot reach it');
  });

  it('attaches a second network live, then detaches it: the OVS port comes with its VLAN and goes', async () => {
    const backVlan = (await api('GET', `/workspaces/${WS}/networks/back`)).body['vlan'] as number;
    const a = await api('PATCH', `/workspaces/${WS}/vms/web`, { networks: ['front', 'back'] });
    assert.equal(a.status, 200, JSON.stringify(a.body));
    await succeeded(a.body['tasks'][0]['id']);
    // The VM's ports are named after it and its NIC index (the agent's tap names).
    const mine = (p: { name: string }) => p.name === tapName(vmId, 0) || p.name === tapName(vmId, 1);
    const inv = await inventory();
    const ports = inv.ovsPorts.filter(mine);
    assert.deepEqual(ports.map((p) => [p.name, p.vlan]), [[tapName(vmId, 0), backVlan - 1], [tapName(vmId, 1), backVlan]], JSON.stringify(inv.ovsPorts));
    const d = await api('PATCH', `/workspaces/${WS}/vms/web`, { networks: ['front'] });
    await succeeded(d.body['tasks'][0]['id']);
    const after = (await inventory()).ovsPorts.filter(mine);
    assert.deepEqual(after.map((p) => p.vlan), [backVlan - 1]);
  });

  it('follows a guest that powers itself off and a domain started or destroyed outside Kloudak: a non-HA VM shows it, an HA VM is started again on its host', async () => {
    const vmOf = async (name: string) => (await api('GET', `/workspaces/${WS}/vms/${name}`)).body;
    const domainState = async (id: string) => (await lv.getDomainState(await lv.lookupDomainByName(domainName(id)))).state;
    const RUNNING = 1;
    // web is not HA. Its guest powers itself off (the ACPI power button, as `virsh shutdown`
    // presses it; the guest's acpid runs poweroff, as a user's `poweroff` inside would): it is
    // shown stopped with the cause, and stays so.
    await lv.shutdownDomain(await lv.lookupDomainByName(domainName(vmId)));
    await waitFor(async () => (await vmOf('web'))['state'] === 'stopped', 60_000, 'web shown stopped');
    assert.equal((await vmOf('web'))['reason'], 'the guest shut itself down');
    // Started again from outside: shown running.
    await lv.createDomain(await lv.lookupDomainByName(domainName(vmId)));
    await waitFor(async () => (await vmOf('web'))['state'] === 'running', 20_000, 'web shown running');

    // An HA VM destroyed the same way: HA starts it again on the same host.
    const r = await api('POST', `/workspaces/${WS}/vms`, { name: 'keep', template: `${RUN}-guest`, networks: ['front'], ha: true });
    assert.equal(r.status, 202, JSON.stringify(r.body));
    const keepId = r.body['vm']['id'] as string;
    cleanup.add(() => removeDomains(lv, [keepId]));
    const created = r.body['task']['id'] as string;
    await succeeded(created);
    await lv.destroyDomain(await lv.lookupDomainByName(domainName(keepId)));
    await waitFor(async () => (await vmOf('keep'))['task'] !== created, 20_000, 'a task for keep');
    const restart = (await vmOf('keep'))['task'] as string;
    await succeeded(restart);
    const t = await api('GET', `/workspaces/${WS}/tasks/${restart}`);
    assert.equal(t.body['kind'], 'vm.start', JSON.stringify(t.body));
    const keep = await vmOf('keep');
    assert.deepEqual([keep['state'], keep['host']], ['running', `${RUN}-qemu`]);
    assert.equal(await domainState(keepId), RUNNING, 'its domain runs again');
    const d = await api('DELETE', `/workspaces/${WS}/vms/keep`);
    await succeeded(d.body['task']['id']);
    assert.equal(await lv.lookupDomainByName(domainName(keepId)).catch(() => null), null);
  });

  it('deletes the VM: no domain, volume or port is left', async () => {
    const r = await api('DELETE', `/workspaces/${WS}/vms/web`);
    assert.equal(r.status, 202);
    await succeeded(r.body['task']['id']);
    assert.equal((await api('GET', `/workspaces/${WS}/vms/web`)).status, 404);
    const inv = await inventory();
    assert.deepEqual(inv.domains.filter((x) => x.vmId === vmId), []);
    assert.deepEqual(inv.volumes.filter((x) => x.vmId === vmId), []);
    assert.deepEqual(inv.ovsPorts.filter((x) => x.name === tapName(vmId, 0) || x.name === tapName(vmId, 1)), [], 'no port of the VM');
    assert.equal(await lv.lookupDomainByName(domainName(vmId)).catch(() => null), null, 'libvirt has no such domain');
    for (const n of ['front', 'back']) await succeeded((await api('DELETE', `/workspaces/${WS}/networks/${n}`)).body['task']['id']);
    vmId = '';
  });
});
