/**
 * MAC addresses of VM NICs, derived from the VM's id and the NIC's index, so that a retried step
 * (or a re-run claim) computes the same MAC instead of inventing a new one. Pure.
 *
 * Format: `0a:h1:h2:h3:h4:h5`. The first octet 0x0a has the locally-administered bit set and the
 * multicast bit clear (a unicast address no vendor OUI can use), and is a rarer choice than 0x02
 * (Docker's 02:42, many tools' 02:00) or 0x52 (QEMU's 52:54:00), so Kloudak's NICs are easy to tell
 * apart in an OVS port list. It is never 0xfe, which libvirt keeps for the host side of tap devices.
 * The other 40 bits come from a 53-bit non-cryptographic hash (cyrb53) of "vmId#index[#salt]".
 *
 * Collisions: with 40 random-looking bits, n NICs collide somewhere with probability about
 * n² / 2⁴¹ — 5 × 10⁻⁷ for the 1,000 NICs of a busy VLAN (the only place two equal MACs would
 * actually clash on the wire), but ~2 % for 200,000 NICs across a whole deployment (100,000 VMs
 * × 2). So a claim asks which of the NIC's first candidates (salt 0, 1, 2, …: {@link macCandidates})
 * are held already and takes the first free one ({@link pickMac}); the MAC is stored with the NIC,
 * so later steps and retries read it back rather than derive it. The database's unique key on the
 * MAC stays the backstop for two claims racing for the same candidate. A VM's NICs differ because the index is hashed in; a NIC detached and
 * another attached at the same index gets the same MAC again, which is harmless as long as the
 * two never exist at once.
 */

/** cyrb53 (public domain, bryc): two 32-bit lanes mixed with Math.imul; good spread, not secure. */
function cyrb53(s: string): { hi: number; lo: number } {
  let h1 = 0xdeadbeef;
  let h2 = 0x41c6ce57;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    h1 = Math.imul(h1 ^ c, 2654435761);
    h2 = Math.imul(h2 ^ c, 1597334677);
  }
  h1 = Math.imul(h1 ^ (h1 >>> 16), 2246822507);
  h1 ^= Math.imul(h2 ^ (h2 >>> 13), 3266489909);
  h2 = Math.imul(h2 ^ (h2 >>> 16), 2246822507);
  h2 ^= Math.imul(h1 ^ (h1 >>> 13), 3266489909);
  return { hi: h2 >>> 0, lo: h1 >>> 0 };
}

/** The fixed first octet of every derived MAC (locally administered, unicast). */
export const MAC_FIRST_OCTET = 0x0a;

/**
 * The MAC of NIC number `nicIndex` (0-based) of VM `vmId`. The id is case-folded, so the same
 * UUID in either case gives the same MAC. `salt` > 0 only after a collision (see the module note).
 */
export function deriveMac(vmId: string, nicIndex: number, salt = 0): string {
  if (!Number.isInteger(nicIndex) || nicIndex < 0) throw new RangeError(`deriveMac: nicIndex must be an integer >= 0, got ${nicIndex}`);
  if (!Number.isInteger(salt) || salt < 0) throw new RangeError(`deriveMac: salt must be an integer >= 0, got ${salt}`);
  const { hi, lo } = cyrb53(`${vmId.toLowerCase()}#${nicIndex}${salt > 0 ? `#${salt}` : ''}`);
  const octets = [MAC_FIRST_OCTET, hi & 0xff, lo >>> 24, (lo >>> 16) & 0xff, (lo >>> 8) & 0xff, lo & 0xff];
  return octets.map((o) => o.toString(16).padStart(2, '0')).join(':');
}

/** How many salts a claim tries: eight 40-bit candidates all taken is beyond any real deployment. */
export const MAC_CANDIDATES = 8;

/** The MACs NIC `nicIndex` of `vmId` may get, in order of preference (salt 0, 1, …). */
export function macCandidates(vmId: string, nicIndex: number, count = MAC_CANDIDATES): string[] {
  return Array.from({ length: count }, (_, salt) => deriveMac(vmId, nicIndex, salt));
}

/** The first of the NIC's candidates no other NIC holds (`inUse`, lower case), or null when all are. */
export function pickMac(vmId: string, nicIndex: number, inUse: ReadonlySet<string>, count = MAC_CANDIDATES): string | null {
  return macCandidates(vmId, nicIndex, count).find((m) => !inUse.has(m)) ?? null;
}

/** True for `xx:xx:xx:xx:xx:xx` (lower or upper case) with the local bit set and the multicast bit clear. */
export function isLocalUnicastMac(mac: string): boolean {
  if (!/^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$/.test(mac)) return false;
  const first = parseInt(mac.slice(0, 2), 16);
  return (first & 0x02) !== 0 && (first & 0x01) === 0;
}
