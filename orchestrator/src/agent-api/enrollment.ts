// Enrollment (AGENT-LINK.md, "Join tokens and enrollment"): a new host presents a join token,
// its name and a public key, and gets a client certificate for its new host id. The token is
// consumed in the same transaction that creates the host, so one token enrolls one host.
import { randomUUID } from 'node:crypto';
import type * as grpc from '@grpc/grpc-js';
import { ConflictError, KloudakError, UnauthenticatedError, ValidationError, type Logger } from '@kloudak/common';
import type { Database } from '@kloudak/prisma';
import type { EnrollRequest, EnrollResponse } from '@kloudak/proto/agent';
import type { Clock } from '../clock.js';
import { createEnrolledHost, hostNamed } from '../store/agent-hosts.js';
import { transaction } from '../store/db.js';
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
  const agentVersion = req.agentVersion.slice(0, 64);
  const hostId = randomUUID();
  const now = new Date(deps.clock.now());
  const issued = await transaction(deps.db.client, async (tx) => {
    const t = await consumeJoinToken(tx, token, now);
    if (!t) throw new UnauthenticatedError('invalid, expired, used or revoked join token');
    if (await hostNamed(tx, req.hostName)) throw new ConflictError(`a host named '${req.hostName}' exists`, undefined, 'exists');
    const cert = await deps.ca.signClient(hostId, req.publicKeyPem);
    await createEnrolledHost(tx, { id: hostId, name: req.hostName, areaId: t.areaId, agentVersion, certSerial: cert.serial, certExpiresAt: cert.notAfter });
    await recordEnrolledHost(tx, token.id, hostId);
    await appendEvents(tx, [
      { workspaceId: null, entity: 'host', entityId: hostId, event: 'created', state: 'unknown', name: req.hostName, data: { areaId: t.areaId, joinTokenId: token.id } },
    ]);
    return cert;
  });
  deps.log.info({ host_id: hostId, host_name: req.hostName, join_token_id: token.id, agent_version: agentVersion, cert_serial: issued.serial }, 'host enrolled');
  return { hostId, clientCertificatePem: issued.certPem, caCertificatePem: deps.ca.caCertPem, certificateExpiresAt: issued.notAfter };
}

/** The gRPC error an enrollment failure answers (logged here: refusals as warnings, faults as errors; never the token). */
export function enrollmentError(log: Logger, err: unknown, req: EnrollRequest): grpc.ServiceError {
  let e = err;
  // Two enrollments of one name racing past the check: the unique index decides.
  if ((err as { code?: string }).code === 'P2002') e = new ConflictError(`a host named '${req.hostName}' exists`, undefined, 'exists');
  const tokenId = parseJoinToken(req.joinToken.trim())?.id;
  if (e instanceof KloudakError && e.code !== 'internal') {
    log.warn({ host_name: req.hostName.slice(0, 253), join_token_id: tokenId, code: e.code, reason: e.message }, 'enrollment refused');
  } else {
    log.error({ err, host_name: req.hostName.slice(0, 253), join_token_id: tokenId }, 'enrollment failed');
  }
  return toGrpcError(e) as grpc.ServiceError;
}
