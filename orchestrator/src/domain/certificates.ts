// Which client certificates of a host the orchestrator accepts (AGENT-LINK.md, "Renewal,
// revocation and re-enrollment"): an allow-list of at most two serials per host, never a
// deny-list, so a certificate that was replaced, re-keyed or never recorded is refused.

/** A host's certificate columns. */
export interface HostCertificates {
  /** The current serial; null after a re-key (nothing is valid until the host re-enrolls). */
  certSerial: string | null;
  /** The serial the last renewal replaced, accepted until `prevCertValidUntil`. */
  prevCertSerial: string | null;
  prevCertValidUntil: Date | null;
}

/** How a presented serial stands: the current one, the replaced one still in its grace, or refused. */
export type SerialStanding = 'current' | 'previous' | 'refused';

/** How `serial` stands for a host with these certificates at `now` (ms). */
export function serialStanding(h: HostCertificates, serial: string, now: number): SerialStanding {
  if (h.certSerial !== null && h.certSerial === serial) return 'current';
  if (h.prevCertSerial !== null && h.prevCertSerial === serial && h.prevCertValidUntil !== null && h.prevCertValidUntil.getTime() > now) return 'previous';
  return 'refused';
}

