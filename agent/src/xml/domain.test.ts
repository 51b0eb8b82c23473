/**
 * Domain XML: unit checks of what goes where, and every generated document checked against
 * libvirt's own schema with `virt-xml-validate` (package libvirt-clients; uses xmllint from
 * libxml2-utils). That libvirt also accepts and starts these documents is shown by
 * hypervisor/libvirt-hypervisor.test.ts.
 */
import test, { after, before, describe } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { domainName, rootVolumeName, seedVolumeName, tapName } from '../names.js';
import { DEFAULT_HOST_SETTINGS } from '../settings.js';
import type { HostSettings } from '../settings.js';
import { SpecError } from '../spec.js';
import type { NicSpec, VmSpec } from '../spec.js';
import { consoleLogPath, domainXml, KLOUDAK_VM_NS, nicXml } from './domain.js';

const VM = '0c9e7b1a-3f4d-4e5a-9b6c-7d8e9f0a1b2c';
const NET_A = 'a1b2c3d4-0000-4000-8000-000000000001';
const NET_B = 'a1b2c3d4-0000-4000-8000-000000000002';

const host: HostSettings = { ...DEFAULT_HOST_SETTINGS, consoleDir: '/var/log/kloudak/console' };
const ci: HostSettings = { ...host, domainType: 'qemu', nicOffload: false, ovsDatapath: 'netdev' };

function spec(over: Partial<VmSpec> = {}): VmSpec {
  return {
    vmId: VM,
    hostname: 'web-1',
    cpu: 2,
    ramMb: 1024,
    diskGb: 10,
    pool: 'default',
    templateVolume: 'debian-12.qcow2',
    nics: [{ networkId: NET_A, mac: '52:54:00:12:34:56', vlan: 101, ip: { address: '10.1.0.5/24', gateway: '10.1.0.1', dns: ['10.1.0.1'] } }],
    sshKeys: ['ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA user@host'],
    ha: true,
    ...over,
  };
}

let dir: string;
before(() => {
  dir = mkdtempSync(join(tmpdir(), 'kloudak-domxml-'));
});
after(() => rmSync(dir, { recursive: true, force: true }));

let files = 0;
function writeTemp(content: string): string {
  const file = join(dir, `${files++}.xml`);
  writeFileSync(file, content);
  return file;
}

/** Fails unless libvirt's schema accepts the document. */
function assertValid(doc: string, schema: 'domain' | 'storagevol' = 'domain'): void {
  const file = writeTemp(doc);
  const r = spawnSync('virt-xml-validate', [file, schema], { encoding: 'utf8' });
  if (r.error) throw new Error(`cannot run virt-xml-validate (apt-get install libvirt-clients libxml2-utils): ${r.error.message}`);
  assert.equal(r.status, 0, `virt-xml-validate rejected:\n${doc}\n${r.stdout}${r.stderr}`);
}

/** XPath over the document with xmllint (namespaces ignored through local-name()). */
function xpath(doc: string, expr: string): string {
  const r = spawnSync('xmllint', ['--xpath', expr, writeTemp(doc)], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  return r.stdout.replace(/\n$/, ''); // xmllint ends its output with a newline
}

describe('domainXml', () => {
  test('a KVM host VM: names from the id, CPU passthrough, volumes, NIC on OVS, console file, metadata', () => {
    const doc = domainXml(spec(), host);
    assertValid(doc);
    assert.equal(xpath(doc, 'string(/domain/@type)'), 'kvm');
    assert.equal(xpath(doc, 'string(/domain/name)'), domainName(VM));
    assert.equal(xpath(doc, 'string(/domain/uuid)'), VM);
    assert.equal(xpath(doc, 'string(/domain/memory)'), '1024');
    assert.equal(xpath(doc, 'string(/domain/memory/@unit)'), 'MiB');
    assert.equal(xpath(doc, 'string(/domain/vcpu)'), '2');
    assert.equal(xpath(doc, 'string(/domain/cpu/@mode)'), 'host-passthrough');
    assert.equal(xpath(doc, 'count(/domain/features/acpi)+count(/domain/features/apic)'), '2');
    assert.equal(xpath(doc, 'string(/domain/os/type)'), 'hvm');
    assert.equal(xpath(doc, 'string(/domain/os/boot/@dev)'), 'hd');
    assert.equal(xpath(doc, 'string(/domain/on_crash)'), 'destroy');

    const root = '/domain/devices/disk[target/@dev="vda"]';
    assert.equal(xpath(doc, `string(${root}/@type)`), 'volume');
    assert.equal(xpath(doc, `string(${root}/driver/@type)`), 'qcow2');
    assert.equal(xpath(doc, `string(${root}/source/@pool)`), 'default');
    assert.equal(xpath(doc, `string(${root}/source/@volume)`), rootVolumeName(VM));
    assert.equal(xpath(doc, `string(${root}/target/@bus)`), 'virtio');
    const seed = '/domain/devices/disk[target/@dev="vdb"]';
    assert.equal(xpath(doc, `string(${seed}/driver/@type)`), 'raw');
    assert.equal(xpath(doc, `string(${seed}/source/@volume)`), seedVolumeName(VM));
    assert.equal(xpath(doc, `count(${seed}/readonly)`), '1');

    const nic = '/domain/devices/interface';
    assert.equal(xpath(doc, `count(${nic})`), '1');
    assert.equal(xpath(doc, `string(${nic}/@type)`), 'bridge');
    assert.equal(xpath(doc, `string(${nic}/source/@bridge)`), 'br-vm');
    assert.equal(xpath(doc, `string(${nic}/virtualport/@type)`), 'openvswitch');
    assert.equal(xpath(doc, `string(${nic}/vlan/tag/@id)`), '101');
    assert.equal(xpath(doc, `string(${nic}/target/@dev)`), tapName(VM, 0));
    assert.equal(xpath(doc, `string(${nic}/mac/@address)`), '52:54:00:12:34:56');
    assert.equal(xpath(doc, `string(${nic}/model/@type)`), 'virtio');
    assert.equal(xpath(doc, `count(${nic}/driver)`), '0', 'offloads stay on when nicOffload is true');

    const log = `/var/log/kloudak/console/${domainName(VM)}.log`;
    assert.equal(consoleLogPath(VM, host), log);
    assert.equal(xpath(doc, 'string(/domain/devices/serial[@type="file"]/source/@path)'), log);
    assert.equal(xpath(doc, 'string(/domain/devices/console[@type="file"]/source/@path)'), log);
    assert.equal(xpath(doc, 'string(/domain/devices/memballoon/@model)'), 'virtio');

    const meta = '/domain/metadata/*[local-name()="vm"]';
    assert.equal(xpath(doc, `namespace-uri(${meta})`), KLOUDAK_VM_NS);
    assert.equal(xpath(doc, `string(${meta}/*[local-name()="id"])`), VM);
    assert.equal(xpath(doc, `string(${meta}/*[local-name()="hostname"])`), 'web-1');
    assert.equal(xpath(doc, `string(${meta}/*[local-name()="ha"])`), 'true');
    assert.equal(xpath(doc, `string(${meta}/*[local-name()="nic"]/@network)`), NET_A);
  });

  test('a CI host VM: qemu type, default CPU, offloads off, machine type, direct kernel boot', () => {
    const boot = { kernel: '/var/lib/kloudak/boot/vmlinuz', initrd: '/var/lib/kloudak/boot/initrd.img', cmdline: "console=ttyS0 root=/dev/vda quiet x='1 2'" };
    const doc = domainXml(spec({ boot }), { ...ci, machine: 'pc' });
    assertValid(doc);
    assert.equal(xpath(doc, 'string(/domain/@type)'), 'qemu');
    assert.equal(xpath(doc, 'count(/domain/cpu)'), '0');
    assert.equal(xpath(doc, 'string(/domain/os/type/@machine)'), 'pc');
    assert.equal(xpath(doc, 'string(/domain/os/kernel)'), boot.kernel);
    assert.equal(xpath(doc, 'string(/domain/os/initrd)'), boot.initrd);
    assert.equal(xpath(doc, 'string(/domain/os/cmdline)'), boot.cmdline);
    assert.equal(xpath(doc, 'count(/domain/os/boot)'), '0');
    const drv = '/domain/devices/interface/driver';
    assert.equal(xpath(doc, `string(${drv}/@name)`), 'qemu');
    for (const f of ['csum', 'gso', 'tso4', 'tso6', 'ecn', 'ufo']) assert.equal(xpath(doc, `string(${drv}/host/@${f})`), 'off', `host ${f}`);
    for (const f of ['csum', 'tso4', 'tso6', 'ecn', 'ufo']) assert.equal(xpath(doc, `string(${drv}/guest/@${f})`), 'off', `guest ${f}`);
  });

  test('several NICs: own bridge or the host default, every one tagged, tap names by index', () => {
    const nics: NicSpec[] = [
      { networkId: NET_A, mac: '52:54:00:00:00:01', vlan: 2 },
      { networkId: NET_B, mac: '52:54:00:00:00:02', vlan: 4094, bridge: 'br-ext' },
      { networkId: NET_A, mac: '52:54:00:00:00:03', vlan: 7, ip: { address: 'fd00::5/64', gateway: 'fd00::1' } },
    ];
    for (const settings of [host, ci]) {
      const doc = domainXml(spec({ nics }), settings);
      assertValid(doc);
      assert.equal(xpath(doc, 'count(/domain/devices/interface)'), '3');
      for (let i = 0; i < 3; i++) {
        const nic = `/domain/devices/interface[${i + 1}]`;
        assert.equal(xpath(doc, `string(${nic}/target/@dev)`), tapName(VM, i));
        assert.equal(xpath(doc, `string(${nic}/mac/@address)`), nics[i]!.mac);
      }
      assert.equal(xpath(doc, 'string(/domain/devices/interface[1]/vlan/tag/@id)'), '2');
      assert.equal(xpath(doc, 'string(/domain/devices/interface[1]/source/@bridge)'), 'br-vm');
      assert.equal(xpath(doc, 'string(/domain/devices/interface[2]/source/@bridge)'), 'br-ext');
      assert.equal(xpath(doc, 'string(/domain/devices/interface[2]/vlan/tag/@id)'), '4094');
    }
  });

  test('seeds as files (settings.seedDir): the seed disk is that file, the root disk still a volume', () => {
    const doc = domainXml(spec(), { ...ci, seedDir: '/var/lib/kloudak/seeds' });
    assertValid(doc);
    const seed = '/domain/devices/disk[target/@dev="vdb"]';
    assert.equal(xpath(doc, `string(${seed}/@type)`), 'file');
    assert.equal(xpath(doc, `string(${seed}/source/@file)`), `/var/lib/kloudak/seeds/${seedVolumeName(VM)}`);
    assert.equal(xpath(doc, `count(${seed}/readonly)`), '1');
    assert.equal(xpath(doc, 'string(/domain/devices/disk[target/@dev="vda"]/@type)'), 'volume');
  });

  test('no NICs, no keys, no password: still a valid domain', () => {
    assertValid(domainXml(spec({ nics: [], sshKeys: [], ha: false }), ci));
  });

  test('odd hostnames and paths are escaped: valid XML, read back unchanged, never in a name', () => {
    for (const hostname of [`o'brien "the" <web> & co`, `]]>&amp;<!--`, 'café-日本', `' onload='x`]) {
      const settings = { ...ci, consoleDir: `/var/log/it's & "here"` };
      const doc = domainXml(spec({ hostname, pool: `p&'<>"` }), settings);
      assertValid(doc);
      assert.equal(xpath(doc, 'string(/domain/metadata/*/*[local-name()="hostname"])'), hostname);
      assert.equal(xpath(doc, 'string(/domain/name)'), domainName(VM));
      assert.equal(xpath(doc, 'string(/domain/devices/disk[1]/source/@pool)'), `p&'<>"`);
      assert.equal(xpath(doc, 'string(/domain/devices/serial/source/@path)'), `/var/log/it's & "here"/${domainName(VM)}.log`);
    }
  });

  test('invalid specs are refused before any XML is written', () => {
    const nic = spec().nics[0]!;
    const bad: [string, Partial<VmSpec>][] = [
      ['vm id', { vmId: 'web' }],
      ['upper-case id', { vmId: VM.toUpperCase() }],
      ['hostname with newline', { hostname: 'a\nb' }],
      ['empty hostname', { hostname: '' }],
      ['cpu 0', { cpu: 0 }],
      ['fractional RAM', { ramMb: 1.5 }],
      ['disk 0', { diskGb: 0 }],
      ['MAC', { nics: [{ ...nic, mac: '52:54:00:12:34' }] }],
      ['multicast MAC', { nics: [{ ...nic, mac: '01:00:5e:00:00:01' }] }],
      ['duplicate MAC', { nics: [nic, { ...nic, mac: nic.mac.toUpperCase() }] }],
      ['VLAN 4095', { nics: [{ ...nic, vlan: 4095 }] }],
      // No untagged NIC: an OVS port without a tag trunks every VLAN of the bridge.
      ['VLAN 0', { nics: [{ ...nic, vlan: 0 }] }],
      ['VLAN 1', { nics: [{ ...nic, vlan: 1 }] }],
      ['negative VLAN', { nics: [{ ...nic, vlan: -1 }] }],
      ['bridge with a slash', { nics: [{ ...nic, bridge: '../x' }] }],
      ['bridge too long', { nics: [{ ...nic, bridge: 'br-0123456789abc' }] }],
      ['network id', { nics: [{ ...nic, networkId: 'net' }] }],
      ['address without prefix', { nics: [{ ...nic, ip: { address: '10.1.0.5' } }] }],
      ['prefix 33', { nics: [{ ...nic, ip: { address: '10.1.0.5/33' } }] }],
      ['gateway of the other family', { nics: [{ ...nic, ip: { address: '10.1.0.5/24', gateway: 'fd00::1' } }] }],
      ['dns not an address', { nics: [{ ...nic, ip: { address: '10.1.0.5/24', dns: ['dns.example'] } }] }],
      ['clear-text password', { passwordHash: 'hunter2' }],
      ['ssh key with newline', { sshKeys: ['ssh-ed25519 AAAA\ncommand="evil" ssh-ed25519 BBBB'] }],
      ['kernel path with NUL', { boot: { kernel: '/boot/a\u0000', initrd: '/boot/i', cmdline: '' } }],
    ];
    for (const [what, over] of bad) assert.throws(() => domainXml(spec(over), host), (e: unknown) => e instanceof Error, what);
    assert.throws(() => domainXml(spec({ passwordHash: 'secret password' }), host), SpecError);
    assert.throws(() => domainXml(spec(), { ...host, bridge: 'no such/bridge' }), SpecError);
    // A valid hash passes (it is not written to the domain XML at all).
    const withHash = domainXml(spec({ passwordHash: '$6$rounds=5000$saltsalt$abcdefghijklmnopqrstuvwxyz./0123456789ABCDEF' }), host);
    assert.doesNotMatch(withHash, /\$6\$/);
  });
});

describe('nicXml', () => {
  test('the hot-plug element equals the one in the domain and validates inside a domain', () => {
    const nic: NicSpec = { networkId: NET_B, mac: '52:54:00:AB:CD:EF', vlan: 300 };
    for (const settings of [host, ci]) {
      const el = nicXml(VM, 1, nic, settings);
      assert.match(el, /^<interface type='bridge'>/);
      assert.match(el, /<mac address='52:54:00:ab:cd:ef'\/>/, 'MAC written lower-case');
      assert.match(el, new RegExp(`<target dev='${tapName(VM, 1)}'/>`));
      const doc = domainXml(spec({ nics: [spec().nics[0]!, nic] }), settings);
      assert.ok(doc.includes(el), 'same element as in the full domain XML');
      assertValid(`<domain type='qemu'><name>x</name><memory>65536</memory><os><type>hvm</type></os><devices>${el}</devices></domain>`);
    }
    // A host with a tap prefix of its own (test hosts sharing one network stack) uses it everywhere.
    const kb = { ...ci, tapPrefix: 'kb' };
    assert.match(nicXml(VM, 1, nic, kb), new RegExp(`<target dev='${tapName(VM, 1, 'kb')}'/>`));
    assert.ok(domainXml(spec(), kb).includes(`<target dev='${tapName(VM, 0, 'kb')}'/>`));
    assert.throws(() => nicXml(VM, 100, nic, host), /bad NIC index/);
    assert.throws(() => nicXml('x', 0, nic, host), /not a Kloudak id/);
  });
});
