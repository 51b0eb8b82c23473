/**
 * Host-operation settings of the agent: the facts about this hypervisor host that shape the
 * domain XML and how the agent talks to libvirt and Open vSwitch. The daemon's configuration
 * (config.ts) is read and validated once and turned into these.
 */

/** Settings of host operations on one hypervisor host. */
export interface HostSettings {
  /** libvirt connection URI. `qemu:///system` on hypervisor hosts. */
  libvirtUri: string;
  /**
   * Domain type: `kvm` (hardware virtualisation; every real host) or `qemu` (TCG emulation, for
   * machines without usable KVM such as CI). Also selects the CPU mode: `host-passthrough` for
   * kvm, libvirt's default CPU model for qemu.
   */
  domainType: 'kvm' | 'qemu';
  /**
   * Open vSwitch datapath of the bridges the agent creates: `system` (the kernel module; real
   * hosts) or `netdev` (userspace; containers and CI, where the kernel module is unavailable).
   */
  ovsDatapath: 'system' | 'netdev';
  /**
   * Whether VM NICs keep checksum/segmentation offloads. `false` turns them off on both the host
   * and guest side of every virtio NIC (needed with the `netdev` datapath, whose userspace
   * switching drops offloaded packets). Real hosts with the `system` datapath keep it `true`.
   */
  nicOffload: boolean;
  /** Default OVS bridge of VM NICs, used when a NIC names no bridge of its own. */
  bridge: string;
  /**
   * Directory of the VMs' serial console logs, one `<domain name>.log` per VM (appended across
   * restarts). Must exist; it only needs to be accessible to root (libvirt opens the file).
   */
  consoleDir: string;
  /** How long a graceful (ACPI) shutdown may take before the domain is powered off. */
  shutdownTimeoutMs: number;
  /** QEMU machine type (e.g. `q35`, `pc`); unset: libvirt's default for the architecture. */
  machine?: string;
  /**
   * Where cloud-init seeds live. Unset (the default): a raw volume in the VM's pool, so any host
   * of the area that mounts the pool can start the VM. Set: an ISO file in this local directory,
   * for libvirt drivers that cannot upload into a volume (libvirt's test driver, which the
   * simulated hosts use).
   */
  seedDir?: string;
  /**
   * First two letters of the VM NICs' tap (and OVS port) names; default "kl". Hosts that share one
   * network stack — the simulated hosts of a test, all in one machine's root namespace — need
   * different ones: during a live migration the VM has a tap on both hosts at once.
   */
  tapPrefix?: string;
  /** How other hosts migrate VMs to this one (live migration, peer to peer). */
  migration?: MigrationSettings;
}

/** How a VM is live-migrated to this host. */
export interface MigrationSettings {
  /**
   * URI of this host's libvirtd as the other hosts' libvirtds reach it (the source daemon connects
   * to it itself), e.g. `qemu+tls://host-b/system`.
   */
  peerUri: string;
  /** Address other hosts' QEMU streams a VM's memory to (libvirt picks the port). */
  address: string;
  /** How long a migration from this host may take before it is cancelled (the VM keeps running here). */
  timeoutMs: number;
}

/** Defaults of a production host. */
export const DEFAULT_HOST_SETTINGS: Readonly<HostSettings> = Object.freeze({
  libvirtUri: 'qemu:///system',
  domainType: 'kvm',
  ovsDatapath: 'system',
  nicOffload: true,
  bridge: 'br-vm',
  consoleDir: '/var/log/kloudak/console',
  shutdownTimeoutMs: 60_000,
});
