/**
 * Names of everything the agent creates on a host, derived from Kloudak ids only: two workspaces
 * may both have a VM called "web", and a user-chosen name must never reach a path or a command.
 */

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/** Throws unless `id` is a lower-case UUID: the one shape every derived name starts from. */
export function checkId(id: string): string {
  if (!UUID.test(id)) throw new Error(`not a Kloudak id: ${JSON.stringify(id)}`);
  return id;
}

/** Prefix of every Kloudak domain and volume, so inventory can tell ours from others. */
export const PREFIX = 'kloudak-';

/** Libvirt domain name of a VM. */
export function domainName(vmId: string): string {
  return `${PREFIX}${checkId(vmId)}`;
}

/** Root disk volume (qcow2 overlay) of a VM. */
export function rootVolumeName(vmId: string): string {
  return `${PREFIX}${checkId(vmId)}-root.qcow2`;
}

/** Cloud-init seed volume of a VM. */
export function seedVolumeName(vmId: string): string {
  return `${PREFIX}${checkId(vmId)}-seed.iso`;
}

/**
 * Host-side interface (and OVS port) name of a VM's NIC: at most 15 characters (IFNAMSIZ - 1).
 * The host's tap prefix (default "kl", see HostSettings.tapPrefix) + first 10 hex digits of the VM
 * id + "-" + NIC index.
 */
export function tapName(vmId: string, index: number, prefix = DEFAULT_TAP_PREFIX): string {
  if (!Number.isInteger(index) || index < 0 || index > 99) throw new Error(`bad NIC index ${index}`);
  if (!TAP_PREFIX.test(prefix)) throw new Error(`bad tap prefix ${JSON.stringify(prefix)}`);
  return `${prefix}${checkId(vmId).replace(/-/g, '').slice(0, 10)}-${index}`;
}

/** The tap prefix of a host that sets none. */
export const DEFAULT_TAP_PREFIX = 'kl';
/** A tap prefix: two lower-case letters (a tap name has at most 15 characters). */
export const TAP_PREFIX = /^[a-z]{2}$/;

/** The VM id a Kloudak domain name stands for, or null for a foreign domain. */
export function vmIdOfDomain(name: string): string | null {
  if (!name.startsWith(PREFIX)) return null;
  const id = name.slice(PREFIX.length);
  return UUID.test(id) ? id : null;
}
