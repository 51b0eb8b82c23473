// A host's client certificates (AGENT-LINK.md, "Renewal, revocation and re-enrollment"): the
// current serial, the one a renewal replaced with its grace, renewal, re-key and re-enrollment.
// Every change is one conditional UPDATE, so two renewals (or a renewal and a re-key) racing
// cannot both win.
import type { HostCertificates } from '../domain/certificates.js';
import type { DbOrTx, Tx } from './db.js';

const CERT_COLUMNS = { certSerial: true, prevCertSerial: true, prevCertValidUntil: true } as const;

/** A host's name, area and certificate columns, or null when it does not exist. */
export async function hostCertificates(db: DbOrTx, hostId: string): Promise<({ id: string; name: string; areaId: string } & HostCertificates) | null> {
  return db.host.findUnique({ where: { id: hostId }, select: { id: true, name: true, areaId: true, ...CERT_COLUMNS } });
}

/**
 * Make `issued` the host's current certificate and keep `presented` (the serial that asked for the
 * renewal) valid until `graceUntil`, if the current serial is still `expectedCurrent`. False when
 * it changed meanwhile (another renewal, a re-key) or the host is gone.
 */
export async function renewHostCertificate(
  tx: Tx,
  hostId: string,
  expectedCurrent: string,
  issued: { serial: string; notAfter: Date },
  presented: { serial: string; graceUntil: Date },
): Promise<boolean> {
  const n = await tx.host.updateMany({
    where: { id: hostId, certSerial: expectedCurrent },
    data: { certSerial: issued.serial, certExpiresAt: issued.notAfter, prevCertSerial: presented.serial, prevCertValidUntil: presented.graceUntil },
  });
  return n.count === 1;
}

/** The agent connected with its current certificate: the replaced one is no longer accepted. */
export async function retirePreviousCertificate(db: DbOrTx, hostId: string, currentSerial: string): Promise<void> {
  await db.host.updateMany({ where: { id: hostId, certSerial: currentSerial, prevCertSerial: { not: null } }, data: { prevCertSerial: null, prevCertValidUntil: null } });
}

/** Re-key: no certificate of the host is accepted any more. False when the host does not exist. */
export async function revokeHostCertificates(tx: Tx, hostId: string): Promise<boolean> {
  const n = await tx.host.updateMany({ where: { id: hostId }, data: { certSerial: null, certExpiresAt: null, prevCertSerial: null, prevCertValidUntil: null } });
  return n.count === 1;
}

/** Re-enrollment: a new current certificate, every earlier one revoked at once. */
export async function reenrolledHostCertificate(tx: Tx, hostId: string, issued: { serial: string; notAfter: Date }, agentVersion: string): Promise<void> {
  await tx.host.update({
    where: { id: hostId },
    data: { certSerial: issued.serial, certExpiresAt: issued.notAfter, prevCertSerial: null, prevCertValidUntil: null, agentVersion },
  });
}
