/**
 * VLAN ids of networks: each network of an area gets the lowest free id of the area's range.
 * Pure — the caller reads the area's used ids and writes the allocation in one transaction; the
 * unique key on (area, vlan) makes a double allocation impossible (the loser retries).
 */
import { VLAN_MAX, VLAN_MIN } from './inventory-rules.js';

export { VLAN_MAX, VLAN_MIN };

/** A VLAN id was found. */
export interface VlanAllocation {
  ok: true;
  vlan: number;
}

/** Every id of the range is taken (the caller answers 409). */
export interface VlanExhausted {
  ok: false;
  reason: 'exhausted';
  /** Ids the range offers once 0, 1 and 4095 are left out. */
  size: number;
  message: string;
}

/**
 * The lowest id of `range` (inclusive) not in `used`. Never 0 (untagged), 1 (the default VLAN)
 * or 4095 (reserved), even if the range includes them: the range is clamped to 2–4094. Ids in
 * `used` outside the range are ignored, so freed ids are reused lowest first.
 */
export function allocateVlan(range: { first: number; last: number }, used: Iterable<number>): VlanAllocation | VlanExhausted {
  const first = Math.max(VLAN_MIN, Math.ceil(range.first));
  const last = Math.min(VLAN_MAX, Math.floor(range.last));
  const taken = new Uint8Array(VLAN_MAX + 1);
  for (const v of used) if (Number.isInteger(v) && v >= 0 && v <= VLAN_MAX) taken[v] = 1;
  for (let v = first; v <= last; v++) if (taken[v] === 0) return { ok: true, vlan: v };
  const size = Math.max(0, last - first + 1);
  return {
    ok: false,
    reason: 'exhausted',
    size,
    message:
      size === 0
        ? `the area's VLAN range ${range.first}-${range.last} has no usable id (${VLAN_MIN}-${VLAN_MAX})`
        : `all ${size} VLAN ids of the area's range ${first}-${last} are in use`,
  };
}
