/**
 * VLAN isolation holes on the host, on the real Open vSwitch (netdev datapath) with network
 * namespaces, and on a simulated libvirt host:
 * - the uplink's `trunks` set never becomes empty (empty = every VLAN): a namespace plugged in as
 *   the uplink receives no frame of any VLAN once the last network's VLAN is removed, or when the
 *   operator added it unrestricted;
 * - there is no untagged NIC: VLAN 0 (and 1, 4095) is refused for VM NICs, hot-plugged NICs and
 *   networks before anything reaches OVS or libvirt.
 *
 * Frames are counted at the namespace end of a veth by a packet socket (AF_PACKET, every protocol),
 * which sees every frame OVS delivers, tagged or not, and counted by source MAC: a leak of VLAN 200
 * is a frame sent by the VLAN 200 host. Counting every frame (as `ip -s link` does) also counted
 * the hosts' own housekeeping on an allowed VLAN, such as an ARP exchange with the uplink, and
 * failed once in CI on a frame that was no leak. Each "nothing" is paired with a control that shows
 * the same traffic does arrive when it should.
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

/**
 * Prints one line per frame received on the interface named by argv[1]: source MAC, destination
 * MAC, ethertype and VLAN id (from the packet's auxdata, since the kernel strips the tag; `-` when
 * untagged). Frames the namespace sends itself are skipped. Debian's openvswitch-switch depends on
 * python3, so it is on every machine that runs these tests.
 */
const SNIFFER = `
import socket, struct, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
s.setsockopt(263, 8, 1)  # SOL_PACKET, PACKET_AUXDATA
s.bind((sys.argv[1], 0))
print('ready', flush=True)
while True:
    frame, anc, _flags, addr = s.recvmsg(65535, socket.CMSG_SPACE(20))
    if addr[2] == 4:  # PACKET_OUTGOING
        continue
    vlan = '-'
    for level, kind, data in anc:
        if level == 263 and kind == 8 and len(data) >= 20:
            status, _l, _s, _m, _n, tci, _tpid = struct.unpack('IIIHHHH', data[:20])
            if status & 0x10:  # TP_STATUS_VLAN_VALID
                vlan = str(tci & 0xfff)
    print(frame[6:12].hex(':'), frame[0:6].hex(':'), frame[12:14].hex(), vlan, flush=True)
`;

/** Frames received by one namespace host, as its sniffer printed them. */
interface Sniffed {
  /** Lines printed so far (after "ready"). */
  lines(): string[];
}

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

  const macs = new Map<NamespaceHost, string>();
  const sniffers = new Map<NamespaceHost, Sniffed>();

  const vsctl = async (...args: string[]): Promise<string> => (await runner.run(['ovs-vsctl', '--timeout=10', ...args])).stdout.trim();
  const macOf = async (h: NamespaceHost): Promise<string> => {
    const r = await net.exec(h.ns, ['ip', '-j', 'link', 'show', 'dev', h.iface]);
    const [link] = JSON.parse(r.stdout) as [{ address: string }];
    return link.address;
  };
  const sniff = async (h: NamespaceHost): Promise<Sniffed> => {
    const p = net.spawn(h.ns, ['/usr/bin/python3', '-c', SNIFFER, h.iface]);
    await p.waitForOutput('ready\n', 10_000);
    return { lines: () => p.output().split('\n').filter((l) => l !== '' && l !== 'ready') };
  };
  /** The frames `to` has received so far that `from` sent. */
  const framesFrom = (from: NamespaceHost, to: NamespaceHost): string[] => {
    const mac = macs.get(from);
    const s = sniffers.get(to);
    assert.ok(mac !== undefined && s !== undefined, 'host set up in before()');
    return s.lines().filter((l) => l.startsWith(`${mac} `));
  };
  /** `BURST` broadcast frames (ICMP echo to the subnet's broadcast address) from `from`, on its VLAN. */
  const broadcast = async (from: NamespaceHost): Promise<void> => {
    await net.exec(from.ns, ['ping', '-b', '-n', '-q', '-c', String(BURST), '-i', '0.02', '-W', '1', `${SUBNET}.255`], { allowFailure: true, timeoutMs: 10_000 });
  };
  /**
   * The frames of `from` that reach `to` while `from` broadcasts, one line each (src, dst,
   * ethertype, VLAN), so that a failing "none" shows what got through.
   */
  const leaked = async (from: NamespaceHost, to: NamespaceHost): Promise<string[]> => {
    const before = framesFrom(from, to).length;
    await broadcast(from);
    await new Promise((r) => setTimeout(r, 200)); // the userspace datapath may lag a little
    return framesFrom(from, to).slice(before);
  };

  before(async () => {
    await ensureOvs();
    net = await createTestNet('kv-');
    br = await net.addBridge('br');
    // Plugged in the way an operator adds a physical uplink: no tag, no trunks.
    up = await net.addNamespaceHost({ name: 'up', bridge: br, vlan: null, address: `${SUBNET}.1/24` });
    a = await net.addNamespaceHost({ name: 'a', bridge: br, vlan: 200, address: `${SUBNET}.2/24` });
    c = await net.addNamespaceHost({ name: 'c', bridge: br, vlan: 300, address: `${SUBNET}.3/24` });
    for (const h of [a, c]) macs.set(h, await macOf(h));
    for (const h of [up, c]) sniffers.set(h, await sniff(h));
    ovs = new OvsNetworkDriver(runner, { datapathType: 'netdev', uplink: up.port });
  });
  after(() => net?.cleanup());

  test('an unrestricted uplink receives every VLAN; ensureBridge parks it and then it receives none', async () => {
    assert.equal(await vsctl('get', 'port', up.port, 'trunks'), '[]');
    // Control: this is the hole, and the counter sees it.
    assert.ok((await leaked(a, up)).length >= BURST, 'with no tag and no trunks the uplink gets VLAN 200 frames');
    assert.ok((await leaked(c, up)).length >= BURST, 'and VLAN 300 frames');

    await ovs.ensureBridge(br);
    assert.deepEqual(await leaked(a, up), [], 'no VLAN 200 frame reaches the parked uplink');
    assert.deepEqual(await leaked(c, up), [], 'no VLAN 300 frame either');
    assert.equal(await vsctl('get', 'port', up.port, 'trunks'), '[4095]');
  });

  test('with one network, the uplink receives that VLAN only', async () => {
    await ovs.ensureVlan(br, 200);
    assert.equal(await vsctl('get', 'port', up.port, 'trunks'), '[200]');
    assert.ok((await leaked(a, up)).length >= BURST, 'VLAN 200 frames go out through the uplink');
    assert.deepEqual(await leaked(c, up), [], 'VLAN 300 frames do not');
  });

  test('after the last network VLAN is removed, the uplink receives no frame of any VLAN', async () => {
    await ovs.removeVlan(br, 200);
    assert.deepEqual(await leaked(a, up), [], 'no VLAN 200 frame');
    assert.deepEqual(await leaked(c, up), [], 'no VLAN 300 frame');
    assert.notEqual(await vsctl('get', 'port', up.port, 'trunks'), '[]', 'never an empty set while the uplink is on the bridge');
    // And the tenants stay apart from each other meanwhile.
    assert.deepEqual(await leaked(a, c), [], 'VLAN 300 sees nothing of VLAN 200');

    // Control: the VLAN can come back, and then it flows again.
    await ovs.ensureVlan(br, 300);
    assert.ok((await leaked(c, up)).length >= BURST, 'VLAN 300 flows once allowed');
    assert.deepEqual(await leaked(a, up), []);
    await ovs.removeVlan(br, 300);
    assert.deepEqual(await leaked(c, up), []);
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
