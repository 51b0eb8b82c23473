// A real VM through the API: the orchestrator (PostgreSQL, NATS, REST, tasks) and a real agent on
// qemu:///system with Open vSwitch — the local host of `npm start`, made the same way. The template
// `test-guest` boots its kernel directly (template boot settings); the guest configures the address
// IPAM gave it from its NoCloud seed and serves its instance-id over HTTP. A client in a namespace
// on the network's VLAN reaches it; a client on another network's VLAN cannot. A second network is
// attached and detached live (its OVS port appears with its VLAN, then goes). Deleting the VM leaves
// no domain, volume or port (checked through libvirt and ovs-vsctl).
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { chmodSync, copyFileSync, existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createLogger } from '@kloudak/common';
import { Flags, Libvirt, type StoragePoolRef } from '@kloudak/libvirt';
import { ensureLibvirtd } from '@kloudak/libvirt/testing';
import { domainName, tapName } from '@kloudak/agent';
import { createTestNet, ensureOvs, type TestNet } from '@kloudak/agent/testing';
import { configWith, startOrchestrator, systemClock, type Orchestrator } from '@kloudak/orchestrator';
import { Cleanup, freePort, freshDatabase, waitFor, TEST_NATS_URL } from '@kloudak/testkit';
import { spawnAgentProcess } from './agent-process.js';

const REPO = fileURLToPath(new URL('../../../', import.meta.url));
const GUEST = process.env['KLOUDAK_TEST_GUEST_DIR'] ?? join(REPO, '.cache', 'test-guest');
const RUN = `kb${randomBytes(3).toString('hex')}`;
const ADMIN = { username: 'root-admin', password: 'e2e-Vm-Boot-Pass-2026!' };
const WS = `${RUN}-ws`;
const SUBNET = '10.247.0';

type Json = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any -- API answers

describe('a real VM through the API on a qemu host', { timeout: 300_000 }, () => {
  const cleanup = new Cleanup();
  let orch: Orchestrator;
  let token = '';
  let net: TestNet;
  let lv: Libvirt;
  let pool: StoragePoolRef;
  let bridge: string;
  let consoleDir: string;
  let hostId = '';
  let vmId = '';

  async function api(method: string, path: string, body?: unknown): Promise<{ status: number; body: Json }> {
    const res = await fetch(`${orch.url}/api/v1${path}`, {
      method,
      headers: { 'content-type': 'application/json', ...(token ? { authorization: `Bearer ${token}` } : {}) },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.text();
    return { status: res.status, body: text ? (JSON.parse(text) as Json) : {} };
  }

  async function succeeded(id: string, timeoutMs = 120_000): Promise<Json> {
    let t: Json = {};
    await waitFor(async () => {
      t = (await api('GET', `/workspaces/${WS}/tasks/${id}`)).body;
      return ['succeeded', 'failed', 'rolled_back'].includes(t['state']);
    }, timeoutMs, `task ${id}`).catch((e: unknown) => {
      throw new Error(`${(e as Error).message}: ${JSON.stringify(t)}`);
    });
    assert.equal(t['state'], 'succeeded', JSON.stringify(t));
    return t;
  }

  async function inventory() {
    const r = await orch.agents.sendCommand(hostId, { action: { kind: 'getInventory' } }, { deadline: Date.now() + 10_000 });
    assert.equal(r.ok, true, JSON.stringify(r.error));
    return r.inventory!;
  }

  /** Fallback cleanup straight through libvirt, should a test fail before the VM's delete. */
  async function removeVm(): Promise<void> {
    if (!vmId) return;
    const dom = await lv.lookupDomainByName(domainName(vmId)).catch(() => null);
    if (!dom) return;
    await lv.destroyDomain(dom).catch(() => undefined);
    await lv.undefineDomain(dom).catch(() => undefined);
  }

  before(async () => {
    if (!existsSync(join(GUEST, 'template.qcow2'))) throw new Error(`test guest missing in ${GUEST}: run scripts/build-test-guest.sh`);
    await ensureLibvirtd();
    await ensureOvs();
    const db = await freshDatabase('kloudak_e2e_boot');
    cleanup.add(() => db.drop());
    const dataDir = mkdtempSync(join(tmpdir(), `${RUN}-orch-`));
    cleanup.add(async () => rmSync(dataDir, { recursive: true, force: true }));
    orch = await startOrchestrator(
      configWith({
        port: 0,
        host: '127.0.0.1',
        agentPort: await freePort(),
        agentHost: '127.0.0.1',
        dataDir,
        databaseUrl: db.url,
        natsUrl: TEST_NATS_URL,
        adminUser: ADMIN.username,
        adminPassword: ADMIN.password,
        passwordHashCost: 12,
        heartbeatIntervalMs: 500,
        taskBackoffMs: 500,
        logLevel: 'warn',
      }),
      createLogger({ component: 'orchestrator', level: 'warn' }),
      systemClock,
      { livenessTickMs: 100 },
    );
    cleanup.add(() => orch.close());
    token = (await api('POST', '/auth/login', ADMIN)).body['token'];

    // The host's world, as up.sh makes it: a dir pool holding the guest image, its boot files, a bridge.
    lv = await Libvirt.connect({ uri: 'qemu:///system' });
    cleanup.add(() => lv.close());
    net = await createTestNet('kb-');
    cleanup.add(() => net.cleanup());
    bridge = await net.addBridge('br');
    const poolDir = join(mkdtempSync(join(tmpdir(), `${RUN}-pool-`)), 'pool');
    chmodSync(join(poolDir, '..'), 0o755);
    cleanup.add(async () => rmSync(join(poolDir, '..'), { recursive: true, force: true }));
    pool = await lv.defineStoragePool(`<pool type='dir'><name>${RUN}</name><target><path>${poolDir}</path></target></pool>`);
    cleanup.add(async () => {
      await lv.destroyStoragePool(pool).catch(() => undefined);
      await lv.undefineStoragePool(pool).catch(() => undefined);
    });
    await lv.createStoragePool(pool, Flags.POOL_CREATE_WITH_BUILD);
    copyFileSync(join(GUEST, 'template.qcow2'), join(poolDir, 'testguest.qcow2'));
    await lv.refreshStoragePool(pool).catch(() => undefined);
    consoleDir = mkdtempSync(join(tmpdir(), `${RUN}-console-`));
    chmodSync(consoleDir, 0o755);
    cleanup.add(async () => rmSync(consoleDir, { recursive: true, force: true }));
    cleanup.add(() => removeVm());

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
    const agentDir = mkdtempSync(join(tmpdir(), `${RUN}-agent-`));
    cleanup.add(async () => rmSync(agentDir, { recursive: true, force: true }));
    const agent = spawnAgentProcess(`${RUN}-qemu`, `127.0.0.1:${orch.agentPort}`, agentDir, {
      KLOUDAK_AGENT_JOIN_TOKEN: jt.body['token'],
      KLOUDAK_AGENT_LIBVIRT_URI: 'qemu:///system',
      KLOUDAK_AGENT_DOMAIN_TYPE: 'qemu',
      KLOUDAK_AGENT_OVS_DATAPATH: 'netdev',
      KLOUDAK_AGENT_NIC_OFFLOAD: 'off',
      KLOUDAK_AGENT_BRIDGE: bridge,
      KLOUDAK_AGENT_CONSOLE_DIR: consoleDir,
      KLOUDAK_AGENT_HEARTBEAT_MS: '500',
    });
    cleanup.add(() => agent.kill());
    await waitFor(async () => {
      const h = ((await api('GET', '/hosts?limit=100')).body['items'] as Json[]).find((x) => x['name'] === `${RUN}-qemu`);
      if (!h) return false;
      hostId = h['id'];
      const d = (await api('GET', `/hosts/${hostId}`)).body;
      return d['state'] === 'up' && d['connected'] === true;
    }, 30_000, 'the qemu host up').catch((e: unknown) => {
      throw new Error(`${(e as Error).message}\n${agent.output().slice(-2000)}`);
    });
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
