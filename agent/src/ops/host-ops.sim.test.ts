// Host operations on several simulated hosts at once: libvirt's test driver opened through the
// real libvirtd with a custom file URI, which gives each connection its own private hypervisor
// (one "host" per connection), each host with its own real Open vSwitch bridge. The test driver
// cannot upload into volumes or hot-plug devices, so seeds are files (settings.seedDir) and NIC
// hot-plug must fail cleanly with libvirt's "not supported".
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Libvirt, NotSupportedError } from '@kloudak/libvirt';
import { ensureLibvirtd } from '@kloudak/libvirt/testing';
import { IsoSeedBuilder } from '../cloudinit/seed.js';
import { LibvirtHypervisor } from '../hypervisor/libvirt-hypervisor.js';
import { domainName, rootVolumeName, seedVolumeName } from '../names.js';
import { OvsNetworkDriver } from '../network/ovs.js';
import { DEFAULT_HOST_SETTINGS, type HostSettings } from '../settings.js';
import type { VmSpec } from '../spec.js';
import { LibvirtStorage } from '../storage/libvirt-storage.js';
import { ProcessRunner } from '../system/command-runner.js';
import { createTestNet, type TestNet } from '../testing/netns.js';
import { ensureOvs } from '../testing/ovs-service.js';
import { HostOperations, RootVolumeMissingError } from './host-ops.js';

const HOSTS = 4;
const VMS_PER_HOST = 3;
const POOL = 'sim-pool';
const TEMPLATE = 'template.qcow2';
const RUN = `ks${randomBytes(3).toString('hex')}`;

/** A simulated host: libvirt test-driver node with 8 CPUs, 16 GiB and one dir pool holding a template. */
function hostXml(poolPath: string): string {
  return `<node>
  <cpu><nodes>1</nodes><sockets>1</sockets><cores>8</cores><threads>1</threads><active>8</active><mhz>2000</mhz><model>x86_64</model></cpu>
  <memory>16777216</memory>
  <pool type='dir'>
    <name>${POOL}</name>
    <target><path>${poolPath}</path></target>
    <capacity unit='GiB'>100</capacity>
    <allocation unit='GiB'>1</allocation>
    <available unit='GiB'>99</available>
    <volume type='file'>
      <name>${TEMPLATE}</name>
      <capacity unit='GiB'>1</capacity>
      <allocation unit='MiB'>64</allocation>
      <target><path>${poolPath}/${TEMPLATE}</path><format type='qcow2'/></target>
    </volume>
  </pool>
</node>
`;
}

interface SimHost {
  index: number;
  lv: Libvirt;
  ops: HostOperations;
  hv: LibvirtHypervisor;
  storage: LibvirtStorage;
  settings: HostSettings;
  dir: string;
}

describe(`host operations on ${HOSTS} simulated hosts at once (test:///file through libvirtd)`, { timeout: 120_000 }, () => {
  let net: TestNet;
  const hosts: SimHost[] = [];
  const runner = new ProcessRunner();

  function spec(vlan: number, n: number, ha = true): VmSpec {
    return {
      vmId: randomUUID(),
      hostname: `sim-${n}`,
      cpu: 1,
      ramMb: 256,
      diskGb: 2,
      pool: POOL,
      templateVolume: TEMPLATE,
      nics: [{ networkId: randomUUID(), mac: `52:54:00:5a:${vlan.toString(16).padStart(2, '0').slice(-2)}:${n.toString(16).padStart(2, '0')}`, vlan, ip: { address: `10.244.${vlan}.${10 + n}/24` } }],
      sshKeys: [],
      ha,
    };
  }

  before(async () => {
    await ensureLibvirtd();
    await ensureOvs();
    net = await createTestNet('ks-');
    for (let i = 0; i < HOSTS; i++) {
      const dir = mkdtempSync(join(tmpdir(), `${RUN}-h${i}-`));
      const file = join(dir, 'host.xml');
      writeFileSync(file, hostXml(join(dir, 'pool')));
      // All hosts could share one file: each connection gets its own private copy of it anyway.
      const lv = await Libvirt.connect({ uri: `test://${file}` });
      const settings: HostSettings = {
        ...DEFAULT_HOST_SETTINGS,
        libvirtUri: `test://${file}`,
        domainType: 'qemu',
        ovsDatapath: 'netdev',
        nicOffload: false,
        bridge: await net.addBridge(`b${i}`),
        consoleDir: dir,
        seedDir: dir,
        shutdownTimeoutMs: 2_000,
      };
      const hv = new LibvirtHypervisor(lv);
      const storage = new LibvirtStorage(lv);
      const ops = new HostOperations({
        hypervisor: hv,
        storage,
        network: new OvsNetworkDriver(runner, { datapathType: 'netdev' }),
        seeds: new IsoSeedBuilder(runner),
        settings,
      });
      hosts.push({ index: i, lv, ops, hv, storage, settings, dir });
    }
  });

  after(async () => {
    for (const h of hosts) {
      await h.lv.close().catch(() => undefined);
      rmSync(h.dir, { recursive: true, force: true });
    }
    await net?.cleanup();
  });

  it('every operation runs on all hosts concurrently, and each host sees only its own VMs', async () => {
    const perHost = await Promise.all(
      hosts.map(async (h) => {
        const vlan = 10 + h.index;
        await h.ops.ensureNetwork(vlan);
        await h.ops.ensureNetwork(vlan); // idempotent
        const specs = Array.from({ length: VMS_PER_HOST }, (_, n) => spec(vlan, n, n !== 0));
        // Creates on one host run concurrently too (different VMs); a second create of the same VM changes nothing.
        await Promise.all(specs.map((s) => h.ops.createVm(s)));
        await Promise.all(specs.map((s) => h.ops.createVm(s)));
        return { h, specs };
      }),
    );

    for (const { h, specs } of perHost) {
      const inv = await h.ops.inventory([POOL], [h.settings.bridge]);
      assert.deepEqual(inv.domains.map((d) => d.vmId).sort(), specs.map((s) => s.vmId).sort(), `host ${h.index} lists exactly its own VMs`);
      assert.ok(inv.domains.every((d) => d.state === 'running'));
      assert.equal(inv.volumes.filter((v) => v.vmId !== null).length, VMS_PER_HOST, 'one root volume per VM (seeds are files here)');
      for (const s of specs) {
        assert.ok(existsSync(join(h.settings.seedDir ?? '', seedVolumeName(s.vmId))), 'seed file written');
        const xml = await h.hv.xml(domainName(s.vmId));
        assert.match(xml, new RegExp(`<tag id='${10 + h.index}'/>`), 'NIC on the host VLAN');
      }
      const root = await h.storage.get(POOL, `kloudak-${specs[0]?.vmId ?? ''}-root.qcow2`);
      assert.equal(root?.capacityBytes, 2n * 1024n ** 3n, 'root disk grown to diskGb');
    }

    // Lifecycle on every host at once: stop, start, reboot, fence, then a NIC hot-plug the driver refuses.
    await Promise.all(
      perHost.map(async ({ h, specs }) => {
        const [a, b, c] = specs as [VmSpec, VmSpec, VmSpec];
        assert.notEqual(await h.ops.stopVm(a.vmId), 'already-off');
        assert.equal(await h.hv.state(domainName(a.vmId)), 'shutoff');
        assert.equal(await h.ops.stopVm(a.vmId), 'already-off');
        await h.ops.startVm(a.vmId);
        await h.ops.startVm(a.vmId);
        await h.ops.rebootVm(b.vmId);
        assert.equal(await h.hv.state(domainName(b.vmId)), 'running');
        const fenced = await h.ops.fence([c.vmId, randomUUID()]);
        assert.deepEqual(fenced, { stopped: [c.vmId], failed: [] });
        await assert.rejects(
          h.ops.attachInterface(a.vmId, 1, { networkId: randomUUID(), mac: '52:54:00:5b:00:01', vlan: 99 }),
          (e: unknown) => e instanceof NotSupportedError,
          'the test driver cannot hot-plug: a typed "not supported", not a crash',
        );
        assert.equal(await h.ops.readConsole(a.vmId), '', 'no console log on a simulated host');
      }),
    );

    // A host's operations never reach another host: deleting on host 0 leaves the others untouched.
    const [first, ...others] = perHost;
    assert.ok(first);
    await Promise.all(first.specs.map((s) => first.h.ops.deleteVm({ vmId: s.vmId, pool: POOL }, [first.h.settings.bridge])));
    for (const { h, specs } of others) {
      assert.equal((await h.ops.inventory([POOL], [h.settings.bridge])).domains.length, specs.length);
    }

    // Delete everything everywhere, twice (idempotent), and check through libvirt that nothing is left.
    await Promise.all(
      perHost.flatMap(({ h, specs }) => specs.map((s) => h.ops.deleteVm({ vmId: s.vmId, pool: POOL }, [h.settings.bridge]))),
    );
    await Promise.all(
      perHost.flatMap(({ h, specs }) => specs.map((s) => h.ops.deleteVm({ vmId: s.vmId, pool: POOL }, [h.settings.bridge]))),
    );
    for (const { h, specs } of perHost) {
      const inv = await h.ops.inventory([POOL], [h.settings.bridge]);
      assert.deepEqual(inv, { domains: [], volumes: [], ports: [] }, `host ${h.index} is empty again`);
      assert.deepEqual((await h.lv.listAllDomains()).map((d) => d.name), []);
      assert.deepEqual((await h.storage.list(POOL)).map((v) => v.name), [TEMPLATE], 'only the template remains');
      for (const s of specs) assert.ok(!existsSync(join(h.dir, seedVolumeName(s.vmId))), 'seed file removed');
      await h.ops.deleteNetwork(10 + h.index);
    }
  });

  it('recover (failover) boots from the root volume the pool already has, never clones one, never deletes it; evict keeps the volumes', async () => {
    const [a, b] = [hosts[0]!, hosts[1]!];
    const vm = { ...spec(77, 1), recover: { start: true } };
    // b's pool lacks the VM's disk (test-driver pools are private): NOT_FOUND, and nothing made.
    await assert.rejects(b.ops.createVm(vm), RootVolumeMissingError);
    assert.equal(await b.storage.get(POOL, rootVolumeName(vm.vmId)), null, 'no clone');
    assert.equal(await b.hv.state(domainName(vm.vmId)), null, 'no domain');
    // a has it (as a shared pool would): the domain is defined and started from it.
    await a.ops.createVm({ ...vm, recover: undefined });
    await a.ops.evictVm(vm.vmId, [a.settings.bridge]);
    assert.equal(await a.hv.state(domainName(vm.vmId)), null, 'evicted: no domain');
    assert.notEqual(await a.storage.get(POOL, rootVolumeName(vm.vmId)), null, 'evicted: the disk stays');
    await a.ops.createVm(vm);
    assert.equal(await a.hv.state(domainName(vm.vmId)), 'running');
    // define only (the VM was stopped)
    await a.ops.evictVm(vm.vmId, [a.settings.bridge]);
    await a.ops.createVm({ ...vm, recover: { start: false } });
    assert.equal(await a.hv.state(domainName(vm.vmId)), 'shutoff');
    await a.ops.deleteVm({ vmId: vm.vmId, pool: POOL }, [a.settings.bridge]);
    assert.equal(await a.storage.get(POOL, rootVolumeName(vm.vmId)), null);
  });
});
