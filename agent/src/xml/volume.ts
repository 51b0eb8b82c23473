/**
 * libvirt storage volume XML: qcow2 overlays on a template (VM root disks) and raw volumes
 * (cloud-init seeds). Values are escaped; sizes are exact byte counts.
 */
import { xml } from './escape.js';

/** Disk image formats the agent creates or backs onto. */
export type VolumeFormat = 'qcow2' | 'raw';

function checkCapacity(capacityBytes: bigint): void {
  if (typeof capacityBytes !== 'bigint' || capacityBytes < 0n) throw new RangeError(`bad volume capacity ${String(capacityBytes)}`);
}

function checkName(name: string): void {
  // A volume name becomes a file name in the pool directory.
  if (typeof name !== 'string' || name === '' || name === '.' || name === '..' || name.includes('/')) {
    throw new RangeError(`bad volume name ${JSON.stringify(name)}`);
  }
}

/** A qcow2 volume whose backing file is `backingPath` (in format `backingFormat`). */
export function overlayVolumeXml(opts: {
  name: string;
  capacityBytes: bigint;
  backingPath: string;
  backingFormat: VolumeFormat;
}): string {
  checkName(opts.name);
  checkCapacity(opts.capacityBytes);
  return xml`<volume type='file'>
  <name>${opts.name}</name>
  <capacity unit='bytes'>${opts.capacityBytes}</capacity>
  <allocation unit='bytes'>0</allocation>
  <target>
    <format type='qcow2'/>
  </target>
  <backingStore>
    <path>${opts.backingPath}</path>
    <format type='${opts.backingFormat}'/>
  </backingStore>
</volume>
`.toString();
}

/** A raw volume of exactly `capacityBytes` bytes (allocated on write). */
export function rawVolumeXml(opts: { name: string; capacityBytes: bigint }): string {
  checkName(opts.name);
  checkCapacity(opts.capacityBytes);
  return xml`<volume type='file'>
  <name>${opts.name}</name>
  <capacity unit='bytes'>${opts.capacityBytes}</capacity>
  <allocation unit='bytes'>0</allocation>
  <target>
    <format type='raw'/>
  </target>
</volume>
`.toString();
}
