/**
 * libvirt domain XML of a Kloudak VM. Names (domain, volumes, taps, console log) are derived from
 * the VM id only (names.ts); every value is escaped through the {@link xml} tag; the spec is
 * validated first ({@link checkVmSpec}).
 *
 * The VM boots from a qcow2 overlay volume (`vda`); its cloud-init NoCloud seed is a read-only
 * raw virtio disk (`vdb`), found by the guest through its `cidata` label. NICs are OVS ports
 * created and removed by libvirt itself (`virtualport type='openvswitch'`), named by tapName().
 */
import { join } from 'node:path';
import { domainName, rootVolumeName, seedVolumeName, tapName } from '../names.js';
import type { HostSettings } from '../settings.js';
import { checkIfName, checkNic, checkVmSpec, normalizeMac } from '../spec.js';
import type { NicSpec, VmSpec } from '../spec.js';
import { xml } from './escape.js';
import type { XmlFragment } from './escape.js';

/** Namespace of Kloudak's domain metadata. */
export const KLOUDAK_VM_NS = 'https://kloudak.dev/xmlns/vm/1';

/** The settings domain XML depends on. */
export type DomainXmlSettings = Pick<HostSettings, 'domainType' | 'nicOffload' | 'bridge' | 'consoleDir' | 'machine' | 'seedDir' | 'tapPrefix'>;

/** Path of a VM's serial console log. */
export function consoleLogPath(vmId: string, settings: Pick<HostSettings, 'consoleDir'>): string {
  return join(settings.consoleDir, `${domainName(vmId)}.log`);
}

/** Path of a VM's seed ISO when seeds are files (`settings.seedDir` set); null when they are volumes. */
export function seedFilePath(vmId: string, settings: Pick<HostSettings, 'seedDir'>): string | null {
  return settings.seedDir === undefined ? null : join(settings.seedDir, seedVolumeName(vmId));
}

/**
 * One NIC's `<interface>`: in the domain XML and for hot-(un)plug. `index` is the NIC's position
 * (guest order), which names its tap device.
 */
export function nicXml(vmId: string, index: number, nic: NicSpec, settings: Pick<HostSettings, 'nicOffload' | 'bridge' | 'tapPrefix'>): string {
  return nicFragment(vmId, index, nic, settings).toString();
}

function nicFragment(vmId: string, index: number, nic: NicSpec, settings: Pick<HostSettings, 'nicOffload' | 'bridge' | 'tapPrefix'>): XmlFragment {
  checkNic(nic, index);
  const bridge = nic.bridge ?? checkIfName('settings.bridge', settings.bridge);
  // Always tagged (checkNic refuses VLAN 0): a port without a tag would trunk every VLAN.
  const vlan = xml`
      <vlan><tag id='${nic.vlan}'/></vlan>`;
  // Offloads off on both sides: the host part covers the tap, the guest part virtio-net's features.
  const offload = settings.nicOffload
    ? null
    : xml`
      <driver name='qemu'>
        <host csum='off' gso='off' tso4='off' tso6='off' ecn='off' ufo='off'/>
        <guest csum='off' tso4='off' tso6='off' ecn='off' ufo='off'/>
      </driver>`;
  return xml`<interface type='bridge'>
      <source bridge='${bridge}'/>
      <virtualport type='openvswitch'/>${vlan}
      <target dev='${tapName(vmId, index, settings.tapPrefix)}'/>
      <mac address='${normalizeMac(nic.mac)}'/>
      <model type='virtio'/>${offload}
    </interface>`;
}

/** The domain XML of a VM. */
export function domainXml(spec: VmSpec, settings: DomainXmlSettings): string {
  checkVmSpec(spec);
  const name = domainName(spec.vmId);
  const consoleLog = consoleLogPath(spec.vmId, settings);

  const machine = settings.machine === undefined ? null : settings.machine;
  const boot = spec.boot
    ? xml`
    <kernel>${spec.boot.kernel}</kernel>
    <initrd>${spec.boot.initrd}</initrd>
    <cmdline>${spec.boot.cmdline}</cmdline>`
    : xml`
    <boot dev='hd'/>`;
  const osType = machine === null ? xml`<type>hvm</type>` : xml`<type machine='${machine}'>hvm</type>`;
  // KVM: the host's CPU as is (best performance; live migration only between identical hosts).
  // TCG: libvirt's default model, which every emulator supports.
  const cpu = settings.domainType === 'kvm' ? xml`
  <cpu mode='host-passthrough' check='none' migratable='on'/>` : null;

  const seedFile = seedFilePath(spec.vmId, settings);
  const seedDisk = seedFile === null
    ? xml`<disk type='volume' device='disk'>
      <driver name='qemu' type='raw'/>
      <source pool='${spec.pool}' volume='${seedVolumeName(spec.vmId)}'/>`
    : xml`<disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='${seedFile}'/>`;

  const nicMeta = spec.nics.map((n, i) => xml`
      <kloudak:nic index='${i}' network='${n.networkId}' mac='${normalizeMac(n.mac)}'/>`);
  const nics = spec.nics.map((n, i) => xml`
    ${nicFragment(spec.vmId, i, n, settings)}`);

  return xml`<domain type='${settings.domainType}'>
  <name>${name}</name>
  <uuid>${spec.vmId}</uuid>
  <metadata>
    <kloudak:vm xmlns:kloudak='${KLOUDAK_VM_NS}'>
      <kloudak:id>${spec.vmId}</kloudak:id>
      <kloudak:hostname>${spec.hostname}</kloudak:hostname>
      <kloudak:ha>${spec.ha ? 'true' : 'false'}</kloudak:ha>${nicMeta}
    </kloudak:vm>
  </metadata>
  <memory unit='MiB'>${spec.ramMb}</memory>
  <currentMemory unit='MiB'>${spec.ramMb}</currentMemory>
  <vcpu placement='static'>${spec.cpu}</vcpu>
  <os>
    ${osType}${boot}
  </os>
  <features>
    <acpi/>
    <apic/>
  </features>${cpu}
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <disk type='volume' device='disk'>
      <driver name='qemu' type='qcow2' discard='unmap'/>
      <source pool='${spec.pool}' volume='${rootVolumeName(spec.vmId)}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    ${seedDisk}
      <target dev='vdb' bus='virtio'/>
      <readonly/>
    </disk>${nics}
    <serial type='file'>
      <source path='${consoleLog}' append='on'/>
      <target port='0'/>
    </serial>
    <console type='file'>
      <source path='${consoleLog}' append='on'/>
      <target type='serial' port='0'/>
    </console>
    <memballoon model='virtio'/>
    <rng model='virtio'>
      <backend model='random'>/dev/urandom</backend>
    </rng>
  </devices>
</domain>
`.toString();
}
