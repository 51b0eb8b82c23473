/**
 * LibvirtHypervisor against the real libvirtd (started when it is not running):
 * - test:///default: the lifecycle and its idempotency, list, reboot, typed errors;
 * - qemu:///system: a tiny TCG domain (no OS) for start/stop and device hot-plug on the live
 *   domain and its definition (a USB disk: its unplug needs no guest cooperation);
 * - qemu:///system end to end: a VM from its VmSpec, i.e. domainXml() with a qcow2 overlay root
 *   disk (LibvirtStorage) and a cloud-init seed (IsoSeedBuilder) in a `dir` pool in a
 *   temp directory, NICs on a temporary OVS bridge (userspace datapath), a console log file.
 *
 * Needs: libvirt-daemon-system, qemu-system-x86, qemu-utils, xorriso (or genisoimage) and a running Open
 * vSwitch (openvswitch-switch). Everything created gets a unique name and is removed at the end,
 * on failure too.
 */
import test, { after, before, describe } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Flags, InvalidError, Libvirt, NotFoundError } from '@kloudak/libvirt';
import type { StoragePoolRef } from '@kloudak/libvirt';
import { ensureLibvirtd } from '@kloudak/libvirt/testing';
import { IsoSeedBuilder, seedFiles } from '../cloudinit/seed.js';
import { domainName, rootVolumeName, seedVolumeName, tapName } from '../names.js';
import { DEFAULT_HOST_SETTINGS } from '../settings.js';
import type { HostSettings } from '../settings.js';
import type { VmSpec } from '../spec.js';
import { LibvirtStorage } from '../storage/libvirt-storage.js';
import { consoleLogPath, domainXml, nicXml } from '../xml/domain.js';
import { domainStateName, LibvirtHypervisor } from './libvirt-hypervisor.js';
import { Cleanup } from '@kloudak/testkit';
import { ProcessRunner } from '../system/command-runner.js';

/** Unique per run, so leftovers of a crashed run never collide with this one. */
const RUN = `kloudak-hv${process.pid}-${Date.now().toString(36)}`;


const runner = new ProcessRunner();

/** Runs a command synchronously; throws with its output unless it succeeds. */
function sh(cmd: string, ...args: string[]): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  if (r.error) throw new Error(`cannot run ${cmd}: ${r.error.message}`);
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${r.status}: ${r.stderr}`);
  return r.stdout.trim();
}

before(async () => {
  await ensureLibvirtd();
});

test('libvirt state numbers map to the port names', () => {
  assert.deepEqual([0, 1, 2, 3, 4, 5, 6, 7, 99].map(domainStateName), [
    'nostate',
    'running',
    'blocked',
    'paused',
    'shutdown',
    'shutoff',
    'crashed',
    'pmsuspended',
    'nostate',
  ]);
});

describe('test:///default', () => {
  let lv: Libvirt;
  let hv: LibvirtHypervisor;
  const cleanup = new Cleanup();
  before(async () => {
    lv = await Libvirt.connect({ uri: 'test:///default' });
    cleanup.add(() => lv.close());
    hv = new LibvirtHypervisor(lv);
  });
  after(() => cleanup.run());

  const testXml = (name: string, uuid: string): string =>
    `<domain type='test'><name>${name}</name><uuid>${uuid}</uuid><memory unit='MiB'>64</memory><vcpu>1</vcpu><os><type>hvm</type></os></domain>`;

  test('define, start, state, list, reboot, shutdown, destroy, undefine: each idempotent where the port says so', async () => {
    const name = `${RUN}-a`;
    const uuid = randomUUID();
    cleanup.add(() => hv.undefine(name));
    cleanup.add(() => hv.destroy(name));

    assert.equal(await hv.state(name), null, 'no such domain yet');
    await hv.define(testXml(name, uuid));
    await hv.define(testXml(name, uuid)); // redefining is an update
    assert.equal(await hv.state(name), 'shutoff');
    assert.match(await hv.xml(name), new RegExp(`<uuid>${uuid}</uuid>`));

    await hv.start(name);
    await hv.start(name); // already running: fine
    assert.equal(await hv.state(name), 'running');
    const listed = (await hv.list()).filter((d) => d.name.startsWith(RUN));
    assert.deepEqual(listed, [{ name, uuid, state: 'running' }]);
    assert.ok((await hv.list()).some((d) => d.name === 'test'), 'foreign domains are listed too');

    await hv.reboot(name);
    assert.equal(await hv.state(name), 'running');

    await hv.shutdown(name);
    assert.equal(await hv.state(name), 'shutoff');
    await hv.shutdown(name); // not running: fine
    await hv.destroy(name); // not running: fine

    await hv.start(name);
    await hv.destroy(name);
    assert.equal(await hv.state(name), 'shutoff');
    assert.deepEqual((await hv.list()).filter((d) => d.name.startsWith(RUN)), [{ name, uuid, state: 'shutoff' }]);

    await hv.undefine(name);
    assert.equal(await hv.state(name), null);
    await hv.undefine(name); // missing: fine
    await hv.destroy(name); // missing: fine
    await hv.shutdown(name); // missing: fine
    assert.deepEqual((await hv.list()).filter((d) => d.name.startsWith(RUN)), []);
  });

  test('undefining a running domain leaves it running until destroyed, then gone', async () => {
    const name = `${RUN}-b`;
    cleanup.add(() => hv.destroy(name));
    await hv.define(testXml(name, randomUUID()));
    await hv.start(name);
    await hv.undefine(name);
    assert.equal(await hv.state(name), 'running', 'transient now');
    await hv.undefine(name); // no definition left: fine
    await hv.destroy(name);
    assert.equal(await hv.state(name), null);
  });

  test('operations that need the domain fail with NotFoundError; bad XML is refused', async () => {
    const missing = `${RUN}-missing`;
    await assert.rejects(hv.start(missing), NotFoundError);
    await assert.rejects(hv.xml(missing), NotFoundError);
    await assert.rejects(hv.reboot(missing), NotFoundError);
    await assert.rejects(hv.attachDevice(missing, '<disk/>'), NotFoundError);
    await assert.rejects(hv.detachDevice(missing, '<disk/>'), NotFoundError);
    await assert.rejects(hv.define('<domain type="test"><name>x'), InvalidError);
  });
});

describe('qemu:///system: a tiny TCG domain', () => {
  test('start, hot-plug on the live domain and its definition, detach idempotent, stop, undefine', async () => {
    const lv = await Libvirt.connect({ uri: 'qemu:///system' });
    const hv = new LibvirtHypervisor(lv);
    const dir = mkdtempSync(join(tmpdir(), `${RUN}-tiny-`));
    chmodSync(dir, 0o711); // qemu (user libvirt-qemu) must reach the disk image inside
    const cleanup = new Cleanup();
    cleanup.add(() => rmSync(dir, { recursive: true, force: true }));
    cleanup.add(() => lv.close());
    const name = `${RUN}-tiny`;
    try {
      cleanup.add(() => hv.undefine(name));
      cleanup.add(() => hv.destroy(name));
      const tinyXml = `<domain type='qemu'><name>${name}</name><memory unit='MiB'>32</memory><vcpu>1</vcpu>
          <os><type arch='x86_64' machine='pc'>hvm</type></os><features><acpi/><apic/></features>
          <devices><controller type='usb' model='piix3-uhci'/><video><model type='none'/></video></devices></domain>`;
      await hv.define(tinyXml);
      assert.equal(await hv.state(name), 'shutoff');
      await hv.start(name);
      await hv.start(name);
      assert.equal(await hv.state(name), 'running');

      const img = join(dir, 'usb.raw');
      writeFileSync(img, Buffer.alloc(1024 * 1024));
      const disk = `<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='${img}'/><target dev='sdb' bus='usb'/></disk>`;
      const dom = await lv.lookupDomainByName(name);
      const liveXml = (): Promise<string> => lv.getDomainXml(dom);
      const configXml = (): Promise<string> => lv.getDomainXml(dom, Flags.XML_INACTIVE);

      await hv.attachDevice(name, disk);
      assert.match(await liveXml(), /<target dev='sdb' bus='usb'\/>/, 'live');
      assert.match(await configXml(), /<target dev='sdb' bus='usb'\/>/, 'persistent');
      await hv.detachDevice(name, disk);
      assert.doesNotMatch(await liveXml(), /dev='sdb'/);
      assert.doesNotMatch(await configXml(), /dev='sdb'/);
      await hv.detachDevice(name, disk); // gone from both: fine

      // In the definition only: a live detach finds nothing, the config one removes it.
      await lv.attachDevice(dom, disk, Flags.AFFECT_CONFIG);
      await hv.detachDevice(name, disk);
      assert.doesNotMatch(await configXml(), /dev='sdb'/);

      await hv.reboot(name); // ACPI request; no guest answers, the domain keeps running
      await hv.shutdown(name);
      assert.equal(await hv.state(name), 'running', 'no OS to honour the ACPI request');
      await hv.destroy(name);
      assert.equal(await hv.state(name), 'shutoff');
      await hv.destroy(name);

      // Stopped: attach and detach touch the definition only.
      await hv.attachDevice(name, disk);
      assert.match(await configXml(), /<target dev='sdb' bus='usb'\/>/);
      await hv.detachDevice(name, disk);
      assert.doesNotMatch(await configXml(), /dev='sdb'/);

      await hv.undefine(name);
      assert.equal(await hv.state(name), null);
      await hv.undefine(name);

      // Undefined while running: transient until destroyed; undefining again succeeds.
      await hv.define(tinyXml);
      await hv.start(name);
      await hv.undefine(name);
      assert.equal(await hv.state(name), 'running');
      await hv.undefine(name); // qemu: "cannot undefine transient domain" → nothing to remove
      await hv.destroy(name);
      assert.equal(await hv.state(name), null);
    } finally {
      await cleanup.run();
    }
  });
});

describe('qemu:///system: a VM from its spec (XML, overlay disk, seed, OVS NICs, console)', () => {
  test('defines, boots under TCG, plugs its NICs into OVS with their VLANs, hot-plugs one, and is removed', async (t) => {
    sh('ovs-vsctl', '--timeout=5', 'show'); // fails clearly when Open vSwitch does not run
    const lv = await Libvirt.connect({ uri: 'qemu:///system' });
    const hv = new LibvirtHypervisor(lv);
    const storage = new LibvirtStorage(lv);
    const cleanup = new Cleanup();
    cleanup.add(() => lv.close());
    try {
      // A dir pool in a temp directory (built by libvirt, mode 0711, so qemu can reach the files).
      const poolDir = mkdtempSync(join(tmpdir(), `${RUN}-pool-`));
      rmSync(poolDir, { recursive: true });
      cleanup.add(() => rmSync(poolDir, { recursive: true, force: true }));
      const pool: StoragePoolRef = await lv.defineStoragePool(`<pool type='dir'><name>${RUN}</name><target><path>${poolDir}</path></target></pool>`);
      cleanup.add(() => lv.undefineStoragePool(pool));
      await lv.createStoragePool(pool, Flags.POOL_CREATE_WITH_BUILD);
      cleanup.add(() => lv.destroyStoragePool(pool));

      // Bridge (userspace datapath: no kernel module needed) and console directory.
      const bridge = `klt${randomBytes(4).toString('hex')}`;
      sh('ovs-vsctl', '--timeout=10', 'add-br', bridge, '--', 'set', 'bridge', bridge, 'datapath_type=netdev');
      cleanup.add(() => sh('ovs-vsctl', '--timeout=10', '--if-exists', 'del-br', bridge));
      const consoleDir = mkdtempSync(join(tmpdir(), `${RUN}-console-`));
      cleanup.add(() => rmSync(consoleDir, { recursive: true, force: true }));
      const settings: HostSettings = { ...DEFAULT_HOST_SETTINGS, domainType: 'qemu', ovsDatapath: 'netdev', nicOffload: false, bridge, consoleDir };

      const template = 'template.qcow2';
      sh('qemu-img', 'create', '-q', '-f', 'qcow2', join(poolDir, template), '64M');
      const spec: VmSpec = {
        vmId: randomUUID(),
        hostname: `web & "co" <1>`,
        cpu: 1,
        ramMb: 64,
        diskGb: 1,
        pool: RUN,
        templateVolume: template,
        nics: [
          { networkId: randomUUID(), mac: '52:54:00:7e:00:01', vlan: 101, ip: { address: '10.9.0.5/24', gateway: '10.9.0.1', dns: ['10.9.0.1'] } },
          { networkId: randomUUID(), mac: '52:54:00:7e:00:02', vlan: 2 },
        ],
        sshKeys: ['ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA test@kloudak'],
        ha: true,
      };
      const name = domainName(spec.vmId);

      cleanup.add(() => storage.delete(RUN, template));
      cleanup.add(() => storage.delete(RUN, rootVolumeName(spec.vmId)));
      cleanup.add(() => storage.delete(RUN, seedVolumeName(spec.vmId)));
      const root = await storage.cloneOverlay(RUN, template, rootVolumeName(spec.vmId), spec.diskGb);
      assert.equal(root.capacityBytes, 1024n ** 3n);
      const iso = await new IsoSeedBuilder(runner).build(seedFiles(spec));
      await storage.putRaw(RUN, seedVolumeName(spec.vmId), iso);

      cleanup.add(() => hv.undefine(name));
      cleanup.add(() => hv.destroy(name));
      await hv.define(domainXml(spec, settings));
      await hv.start(name);
      assert.equal(await hv.state(name), 'running');

      const tag = (port: string): string => sh('ovs-vsctl', '--timeout=5', 'get', 'port', port, 'tag');
      assert.deepEqual(sh('ovs-vsctl', '--timeout=5', 'list-ports', bridge).split('\n').sort(), [tapName(spec.vmId, 0), tapName(spec.vmId, 1)].sort());
      assert.equal(tag(tapName(spec.vmId, 0)), '101');
      assert.equal(tag(tapName(spec.vmId, 1)), '2');
      assert.ok(existsSync(consoleLogPath(spec.vmId, settings)), 'console log file');

      const live = await hv.xml(name);
      assert.match(live, new RegExp(`<source pool='${RUN}' volume='${rootVolumeName(spec.vmId)}'[^>]*/>\\s*<backingStore type='file'[^>]*>\\s*<format type='qcow2'/>\\s*<source file='${join(poolDir, template)}'/>`), 'root overlay on the template');
      assert.match(live, /<readonly\/>/);
      assert.match(live, /<host csum='off'/);
      assert.match(live, /<kloudak:hostname>web &amp; "co" &lt;1&gt;<\/kloudak:hostname>/);

      // Hot-plug a third NIC into the running VM: a new tagged OVS port.
      const extra = { networkId: randomUUID(), mac: '52:54:00:7e:00:03', vlan: 202 };
      await hv.attachDevice(name, nicXml(spec.vmId, 2, extra, settings));
      assert.equal(tag(tapName(spec.vmId, 2)), '202');
      assert.match(await lv.getDomainXml(await lv.lookupDomainByName(name), Flags.XML_INACTIVE), /52:54:00:7e:00:03/, 'and in the definition');

      await hv.destroy(name);
      assert.equal(await hv.state(name), 'shutoff');
      assert.equal(sh('ovs-vsctl', '--timeout=5', 'list-ports', bridge), '', 'libvirt removed the ports');
      await hv.undefine(name);
      assert.equal(await hv.state(name), null);
      t.diagnostic(`seed ${iso.length} bytes, root overlay ${root.path}`);
    } finally {
      await cleanup.run();
    }
  });
});
