/**
 * VLAN isolation holes on the host, on the real Open vSwitch (netdev datapath) with network
 * namespaces, and on a simulated libvirt host:
 * - the uplink's `trunks` set never becomes empty (empty = every VLAN): a namespace plugged in as
 *   the uplink receives no frame of any VLAN once the last network's VLAN is removed, or when the
 *   operator added it unrestricted;
 * - there is no untagged NIC: VLAN 0 (and 1, 4095) is refused for VM NICs, hot-plugged NICs and
 *   networks before anything reaches OVS or libvirt.
 *
 * Frames are counted at the namespace end of a veth (`ip -s link`): the kernel counts every frame
 * OVS delivers, tagged or not, so a count that does not move means nothing got through. Each
 * "nothing" is paired with a control that shows the same traffic does arrive when it should.
 */
import test, { after, before, describe } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Libvirt } from '@kloudak/libvirt';
import { ensureLibvirtd } from '@kloudak/libvirt/testing';
import * as pb from '@kloudak/proto/agent';
import { pino } from 'pino';
import { IsoSeedBuilder } from '../cloudinit/seed.js';
import { LibvirtHypervisor } from '../hypervisor/libvirt-hypervisor.js';
import { commandFromProto } from '../link/convert.js';
import { domainName } from '../names.js';
import { HostOperations } from '../ops/host-ops.js';
import type { CommandResult, CommandRunner, RunOptions } from '../ports.js';
import { CommandDispatcher } from '../runner/commands.js';
import { DEFAULT_HOST_SETTINGS, type HostSettings } from '../settings.js';
import { SpecError, type NicSpec, type VmSpec } from '../spec.js';
import { LibvirtStorage } from '../storage/libvirt-storage.js';
import { ProcessRunner } from '../system/command-runner.js';
import { createSimHost, type SimHost } from '../testing/sim-host.js';
import { createTestNet, type NamespaceHost, type TestNet } from '../testing/netns.js';
import { ensureOvs } from '../testing/ovs-service.js';
import { OvsNetworkDriver } from './ovs.js';

const SUBNET = '10.245.0';
const BURST = 10;

/** The real runner, counting the processes it starts (to prove that nothing ran). */
class CountingRunner implements CommandRunner {
  calls: string[][] = [];
  private readonly real = new ProcessRunner();
  run(argv: readonly string[], opts?: RunOptions): Promise<CommandResult> {
    this.calls.push([...argv]);
    return this.real.run(argv, opts);
  }
}

describe('the uplink never carries every VLAN (real OVS, namespaces)', { timeout: 120_000 }, () => {
  const runner = new ProcessRunner();
  let net: TestNet;
  let ovs: OvsNetworkDriver;
  let br: string;
  let up: NamespaceHost;
  let a: NamespaceHost;
  let c: NamespaceHost;

  const vsctl = async (...args: string[]): Promise<string> => (await runner.run(['ovs-vsctl', '--timeout=10', ...args])).stdout.trim();
  /** Frames received so far by the namespace end of `h`'s veth. */
  const rxFrames = async (h: NamespaceHost): Promise<number> => {
    const r = await net.exec(h.ns, ['ip', '-j', '-s', 'link', 'show', 'dev', h.iface]);
    const [link] = JSON.parse(r.stdout) as [{ stats64: { rx: { packets: number } } }];
    return link.stats64.rx.packets;
  };
  /** `BURST` broadcast frames (ICMP echo to the subnet's broadcast address) from `from`, on its VLAN. */
  const broadcast = async (from: NamespaceHost): Promise<void> => {
    await net.exec(from.ns, ['ping', '-b', '-n', '-q', '-c', String(BURST), '-i', '0.02', '-W', '1', `${SUBNET}.255`], { allowFailure: true, timeoutMs: 10_000 });
  };
  /** How many frames `to` receives while `from` broadcasts. */
  const leaked = async (from: NamespaceHost, to: NamespaceHost): Promise<number> => {
    const before = await rxFrames(to);
    await broadcast(from);
    await new Promise((r) => setTimeout(r, 200)); // the userspace datapath may lag a little
    return (await rxFrames(to)) - before;
  };

  before(async () => {
    await ensureOvs();
    net = await createTestNet('kv-');
    br = await net.addBridge('br');
    // Plugged in the way an operator adds a physical uplink: no tag, no trunks.
    up = await net.addNamespaceHost({ name: 'up', bridge: br, vlan: null, address: `${SUBNET}.1/24` });
    a = await net.addNamespaceHost({ name: 'a', bridge: br, vlan: 200, address: `${SUBNET}.2/24` });
    c = await net.addNamespaceHost({ name: 'c', bridge: br, vlan: 300, address: `${SUBNET}.3/24` });
    // The root-namespace end of a veth sends its own IPv6 router solicitations and MLD reports
    // straight to the namespace end, past OVS: silence them, so that every frame counted came
    // through the bridge.
    for (const h of [up, a, c]) await runner.run(['sysctl', '-q', '-w', `net.ipv6.conf.${h.port}.disable_ipv6=1`]);
    ovs = new OvsNetworkDriver(runner, { datapathType: 'netdev', uplink: up.port });
  });
  after(() => net?.cleanup());

  test('an unrestricted uplink receives every VLAN; ensureBridge parks it and then it receives none', async () => {
    assert.equal(await vsctl('get', 'port', up.port, 'trunks'), '[]');
    // Control: this is the hole, and the counter sees it.
    assert.ok((await leaked(a, up)) >= BURST, 'with no tag and no trunks the uplink gets VLAN 200 frames');
    assert.ok((await leaked(c, up)) >= BURST, 'and VLAN 300 frames');

    await ovs.ensureBridge(br);
    assert.equal(await leaked(a, up), 0, 'no VLAN 200 frame reaches the parked uplink');
    assert.equal(await leaked(c, up), 0, 'no VLAN 300 frame either');
    assert.equal(await vsctl('get', 'port', up.port, 'trunks'), '[4095]');
  });

  test('with one network, the uplink receives that VLAN only', async () => {
    await ovs.ensureVlan(br, 200);
    assert.equal(await vsctl('get', 'port', up.port, 'trunks'), '[200]');
    assert.ok((await leaked(a, up)) >= BURST, 'VLAN 200 frames go out through the uplink');
    assert.equal(await leaked(c, up), 0, 'VLAN 300 frames do not');
  });

  test('after the last network VLAN is removed, the uplink receives no frame of any VLAN', async () => {
    await ovs.removeVlan(br, 200);
    assert.equal(await leaked(a, up), 0, 'no VLAN 200 frame');
    assert.equal(await leaked(c, up), 0, 'no VLAN 300 frame');
    assert.notEqual(await vsctl('get', 'port', up.port, 'trunks'), '[]', 'never an empty set while the uplink is on the bridge');
    // And the tenants stay apart from each other meanwhile.
    assert.equal(await leaked(a, c), 0, 'VLAN 300 sees nothing of VLAN 200');

    // Control: the VLAN can come back, and then it flows again.
    await ovs.ensureVlan(br, 300);
    assert.ok((await leaked(c, up)) >= BURST, 'VLAN 300 flows once allowed');
    assert.equal(await leaked(a, up), 0);
    await ovs.removeVlan(br, 300);
    assert.equal(await leaked(c, up), 0);
  });

  test('cleanup leaves nothing', async () => {
    await net.cleanup();
    assert.deepEqual(await net.leftovers(), []);
  });
});

describe('no untagged NIC: VLAN 0, 1 and 4095 are refused before OVS or libvirt (simulated host)', { timeout: 60_000 }, () => {
  let dir: string;
  let sim: SimHost;
  let lv: Libvirt;
  let net: TestNet;
  let ops: HostOperations;
  let settings: HostSettings;
  const counting = new CountingRunner();
  const log = pino({ level: 'silent' });

  const nic = (vlan: number): NicSpec => ({ networkId: randomUUID(), mac: '52:54:00:4c:00:01', vlan });
  const spec = (vlan: number): VmSpec => ({
    vmId: randomUUID(),
    hostname: 'untagged',
    cpu: 1,
    ramMb: 128,
    diskGb: 1,
    pool: sim.poolName,
    templateVolume: sim.templateVolume,
    nics: [nic(vlan)],
    sshKeys: [],
    ha: false,
  });

  before(async () => {
    await ensureLibvirtd();
    await ensureOvs();
    dir = mkdtempSync(join(tmpdir(), 'kvlan-'));
    sim = createSimHost({ dir });
    lv = await Libvirt.connect({ uri: sim.uri });
    net = await createTestNet('kw-');
    // The bridge is named after the test net but never created: nothing may create it.
    settings = { ...DEFAULT_HOST_SETTINGS, domainType: 'qemu', ovsDatapath: 'netdev', nicOffload: false, bridge: net.name('vm'), consoleDir: dir, seedDir: dir };
    // Registered first: removed at cleanup even when a refusal fails and something creates it.
    net.defer(`bridge ${settings.bridge}`, () => new ProcessRunner().run(['ovs-vsctl', '--timeout=10', '--if-exists', 'del-br', settings.bridge]).then(() => {}));
    ops = new HostOperations({
      hypervisor: new LibvirtHypervisor(lv),
      storage: new LibvirtStorage(lv),
      network: new OvsNetworkDriver(counting, { datapathType: 'netdev' }),
      seeds: new IsoSeedBuilder(counting),
      settings,
    });
  });
  after(async () => {
    await lv?.close();
    await net?.cleanup();
    rmSync(dir, { recursive: true, force: true });
    assert.deepEqual(await net.leftovers(), [], 'nothing of the test net is left');
  });

  test('createVm, attachInterface, ensureNetwork and deleteNetwork refuse them with a SpecError', async () => {
    const hv = new LibvirtHypervisor(lv);
    const storage = new LibvirtStorage(lv);
    const volumesBefore = (await storage.list(sim.poolName)).map((v) => v.name);
    for (const vlan of [0, 1, 4095]) {
      const s = spec(vlan);
      await assert.rejects(ops.createVm(s), (e: unknown) => e instanceof SpecError && /nic 0 vlan must be a VLAN id in 2\.\.4094/.test(e.message), `createVm on VLAN ${vlan}`);
      assert.equal(await hv.state(domainName(s.vmId)), null, 'no domain defined');
      await assert.rejects(ops.attachInterface(s.vmId, 1, nic(vlan)), SpecError, `attachInterface on VLAN ${vlan}`);
      await assert.rejects(ops.ensureNetwork(vlan), SpecError, `ensureNetwork on VLAN ${vlan}`);
      await assert.rejects(ops.deleteNetwork(vlan), SpecError, `deleteNetwork on VLAN ${vlan}`);
    }
    assert.deepEqual([...counting.calls], [], 'no ovs-vsctl (or any other process) ran');
    assert.deepEqual((await hv.list()).map((d) => d.name), [], 'libvirt has no domain');
    assert.deepEqual((await storage.list(sim.poolName)).map((v) => v.name), volumesBefore, 'and no new volume');
    const exists = await new ProcessRunner().run(['ovs-vsctl', '--timeout=10', 'br-exists', settings.bridge], { allowFailure: true });
    assert.equal(exists.code, 2, 'the bridge was never created');

    // Control: a tagged NIC on the same host gets through the same path (the bridge appears).
    await ops.ensureNetwork(2);
    assert.ok(counting.calls.some((argv) => argv.includes('add-br')), 'VLAN 2 reaches OVS');
  });

  test('through the link: an untagged NIC or a VLAN 1 network is answered INVALID_ARGUMENT', async () => {
    const dispatcher = new CommandDispatcher({ ops, inventory: () => Promise.reject(new Error('unused')), defaultBridge: settings.bridge, log });
    const before = counting.calls.length;
    const pbNic = (vlan: number): pb.Nic => ({ networkId: randomUUID(), mac: '52:54:00:4c:00:02', vlan, bridge: '', address: '', gateway: '', dnsServers: [] });
    const commands: pb.Command[] = [
      { commandId: randomUUID(), vmId: randomUUID(), deadline: undefined, action: { $case: 'attachInterface', attachInterface: { index: 1, nic: pbNic(0) } } },
      { commandId: randomUUID(), vmId: '', deadline: undefined, action: { $case: 'ensureNetwork', ensureNetwork: { networkId: randomUUID(), vlan: 1, bridge: '' } } },
      { commandId: randomUUID(), vmId: '', deadline: undefined, action: { $case: 'deleteNetwork', deleteNetwork: { networkId: randomUUID(), vlan: 0, bridge: '' } } },
    ];
    for (const c of commands) {
      const out = await dispatcher.dispatch(commandFromProto(c));
      assert.equal(out.ok, false);
      assert.equal(out.error?.code, 'INVALID_ARGUMENT', `${c.action?.$case}: ${out.error?.message}`);
      assert.match(out.error?.message ?? '', /2\.\.4094|2-4094/);
    }
    assert.equal(counting.calls.length, before, 'nothing ran');
  });
});
