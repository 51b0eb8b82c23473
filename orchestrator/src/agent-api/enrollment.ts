// Enrollment (AGENT-LINK.md, "Join tokens and enrollment"): a new host presents a join token,
// its name and a public key, and gets a client certificate for its new host id. The token is
// consumed in the same transaction that creates the host, so one token enrolls one host.
// Re-enrollment: a token made for an existing host (JoinToken.forHostId) gives that host a new
// certificate under the same id, revoking every earlier one; its VMs and history stay.
import { randomUUID } from 'node:crypto';
import type * as grpc from '@grpc/grpc-js';
import { ConflictError, ForbiddenError, KloudakError, UnauthenticatedError, ValidationError, type Logger } from '@kloudak/common';
import type { Database } from '@kloudak/prisma';
import type { EnrollRequest, EnrollResponse } from '@kloudak/proto/agent';
import type { Clock } from '../clock.js';
import { createEnrolledHost, hostNamed } from '../store/agent-hosts.js';
import { transaction } from '../store/db.js';
import { hostCertificates, reenrolledHostCertificate } from '../store/host-certs.js';
import { consumeJoinToken, parseJoinToken, recordEnrolledHost } from '../store/join-tokens.js';
import type { CertificateAuthority } from './ca.js';
import { toGrpcError } from '../grpc/status.js';
import { appendEvents } from '../store/outbox.js';

const HOST_NAME = /^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$/;

/** What enrollment needs. */
export interface EnrollmentDeps {
  db: Database;
  ca: CertificateAuthority;
  clock: Clock;
  log: Logger;
  /** A host enrolled again: its old certificates are revoked, so a session still open on them must end. */
  onReenrolled?: (hostId: string) => void;
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/** A host's name taken by an enrollment with a token for a new host. */
function nameTaken(name: string): ConflictError {
  return new ConflictError(`a host named '${name}' exists; to enroll it again, use a join token made for that host`, undefined, 'exists');
}

/** Enroll a host: check the token (pinned to this CA), name and key; create the host and sign its certificate. */
export async function enroll(deps: EnrollmentDeps, req: EnrollRequest): Promise<EnrollResponse> {
  const token = parseJoinToken(req.joinToken.trim());
  if (!token) throw new UnauthenticatedError('invalid join token');
  if (token.caFingerprint !== deps.ca.fingerprint) throw new UnauthenticatedError('the join token was made for another orchestrator');
  if (!HOST_NAME.test(req.hostName)) throw new ValidationError('host_name must be a DNS host name (letters, digits, "-" and ".")');
  if (!req.publicKeyPem.includes('-----BEGIN PUBLIC KEY-----') || req.publicKeyPem.length > 4096) {
    throw new ValidationError('public_key_pem must be a PEM SubjectPublicKeyInfo');
  }
  const claimedId = req.hostId.trim().toLowerCase();
  if (claimedId !== '' && !UUID.test(claimedId)) throw new ValidationError('host_id must be a host id (UUID) or empty');
  const agentVersion = req.agentVersion.slice(0, 64);
  const now = new Date(deps.clock.now());
  // Every refusal below throws inside the transaction, so a refused token stays unused.
  const { hostId, cert: issued, reenrolled } = await transaction(deps.db.client, async (tx) => {
    const t = await consumeJoinToken(tx, token, now);
    if (!t) throw new UnauthenticatedError('invalid, expired, used or revoked join token');
    if (t.forHostId !== null) {
      // Re-enrollment: the token names the host; the agent must be that host.
      const host = await hostCertificates(tx, t.forHostId);
      if (!host) throw new UnauthenticatedError('invalid, expired, used or revoked join token');
      if (req.hostName !== host.name) throw new ForbiddenError(`this join token re-enrolls the host named '${host.name}', not '${req.hostName}'`);
      if (claimedId !== '' && claimedId !== host.id) throw new ForbiddenError(`this join token re-enrolls host ${host.id}, not host ${claimedId}`);
      const cert = await deps.ca.signClient(host.id, req.publicKeyPem);
      await reenrolledHostCertificate(tx, host.id, cert, agentVersion);
      await recordEnrolledHost(tx, token.id, host.id);
      await appendEvents(tx, [
        {
          workspaceId: null,
          entity: 'host',
          entityId: host.id,
          event: 'reenrolled',
          name: host.name,
          data: { joinTokenId: token.id, serial: cert.serial, expiresAt: cert.notAfter.toISOString(), revokedSerials: [host.certSerial, host.prevCertSerial].filter((x) => x !== null) },
        },
      ]);
      return { hostId: host.id, cert, reenrolled: true };
    }
    if (await hostNamed(tx, req.hostName)) throw nameTaken(req.hostName);
    const id = randomUUID();
    const cert = await deps.ca.signClient(id, req.publicKeyPem);
    await createEnrolledHost(tx, { id, name: req.hostName, areaId: t.areaId, agentVersion, certSerial: cert.serial, certExpiresAt: cert.notAfter });
    await recordEnrolledHost(tx, token.id, id);
    await appendEvents(tx, [
      { workspaceId: null, entity: 'host', entityId: id, event: 'created', state: 'unknown', name: req.hostName, data: { areaId: t.areaId, joinTokenId: token.id } },
    ]);
    return { hostId: id, cert, reenrolled: false };
  });
  if (reenrolled) deps.onReenrolled?.(hostId);
  deps.log.info(
    { host_id: hostId, host_name: req.hostName, join_token_id: token.id, agent_version: agentVersion, cert_serial: issued.serial, reenrolled },
    reenrolled ? 'host enrolled again' : 'host enrolled',
  );
  return { hostId, clientCertificatePem: issued.certPem, caCertificatePem: deps.ca.caCertPem, certificateExpiresAt: issued.notAfter };
}

/** The gRPC error an enrollment failure answers (logged here: refusals as warnings, faults as errors; never the token). */
export function enrollmentError(log: Logger, err: unknown, req: EnrollRequest): grpc.ServiceError {
  let e = err;
  // Two enrollments of one name racing past the check: the unique index decides.
  if ((err as { code?: string }).code === 'P2002') e = nameTaken(req.hostName);
  const tokenId = parseJoinToken(req.joinToken.trim())?.id;
  if (e instanceof KloudakError && e.code !== 'internal') {
    log.warn({ host_name: req.hostName.slice(0, 253), join_token_id: tokenId, code: e.code, reason: e.message }, 'enrollment refused');
  } else {
    log.error({ err, host_name: req.hostName.slice(0, 253), join_token_id: tokenId }, 'enrollment failed');
  }
  return toGrpcError(e) as grpc.ServiceError;
}
