// Certificate renewal (AGENT-LINK.md, "Renewal, revocation and re-enrollment"): an enrolled agent
// sends a new public key on the unary RenewCertificate, authenticated by the client certificate
// of its TLS connection, and gets a certificate for the same host id. The presented serial must
// be the host's current one (or the one a renewal replaced, within its grace): a re-keyed or
// replaced certificate renews nothing.
import type * as grpc from '@grpc/grpc-js';
import { ConflictError, KloudakError, RateLimitedError, UnauthenticatedError, type Logger } from '@kloudak/common';
import type { Database } from '@kloudak/prisma';
import type { RenewCertificateRequest, RenewCertificateResponse } from '@kloudak/proto/agent';
import type { Clock } from '../clock.js';
import { serialStanding } from '../domain/certificates.js';
import { toGrpcError } from '../grpc/status.js';
import { transaction } from '../store/db.js';
import { hostCertificates, renewHostCertificate } from '../store/host-certs.js';
import { appendEvents } from '../store/outbox.js';
import type { CertificateAuthority, PeerIdentity } from './ca.js';

/** What renewal needs. */
export interface RenewalDeps {
  db: Database;
  ca: CertificateAuthority;
  clock: Clock;
  log: Logger;
  /** How long the replaced certificate stays accepted at most (until the agent connects with the new one). */
  graceMs: number;
}

/** The client certificate of a call, checked against the CA (signature, validity, usage, CN). */
export function peerIdentity(ca: CertificateAuthority, call: { getAuthContext(): { sslPeerCertificate?: { raw?: Buffer } } | undefined | null }): PeerIdentity {
  const raw = call.getAuthContext()?.sslPeerCertificate?.raw;
  if (!raw) throw new UnauthenticatedError('a client certificate signed by this orchestrator is required');
  return ca.verifyClient(raw);
}

/**
 * Renewals per host are spaced at least this much apart (a tenth of the lifetime, at most a
 * minute): each one signs a certificate and writes the host row, and an agent is not trusted to
 * ask only when it must.
 */
export function minRenewalSpacingMs(lifetimeMs: number): number {
  return Math.min(60_000, Math.floor(lifetimeMs / 10));
}

/** The renewal service of one orchestrator: the rule above and the per-host spacing (in memory). */
export class CertificateRenewal {
  private readonly last = new Map<string, number>();

  constructor(private readonly deps: RenewalDeps) {}

  /** Renew the certificate of the host that `peer` proves to be. */
  async renew(peer: PeerIdentity, req: RenewCertificateRequest): Promise<RenewCertificateResponse> {
    const { db, ca, clock, log } = this.deps;
    const now = clock.now();
    const spacing = minRenewalSpacingMs(ca.clientLifetimeMs);
    const prev = this.last.get(peer.hostId);
    const issued = await transaction(db.client, async (tx) => {
      const host = await hostCertificates(tx, peer.hostId);
      if (!host) throw new KloudakError('forbidden', 'this host is not (or no longer) enrolled');
      const standing = serialStanding(host, peer.serial, now);
      if (standing === 'refused' || host.certSerial === null) {
        throw new UnauthenticatedError('this client certificate was revoked or replaced; the host must re-enroll with a join token made for it');
      }
      // Checked once the certificate is known good, so a revoked one is told so, not to wait.
      if (prev !== undefined && now - prev < spacing) throw new RateLimitedError(Math.ceil((spacing - (now - prev)) / 1000));
      const cert = await ca.signClient(peer.hostId, req.publicKeyPem);
      // The presented certificate stays valid for the grace (never past its own expiry, which
      // verifyClient enforces anyway): a crash before the agent saved the new one must not lock it out.
      const graceUntil = new Date(Math.min(now + this.deps.graceMs, peer.notAfter.getTime()));
      if (!(await renewHostCertificate(tx, peer.hostId, host.certSerial, cert, { serial: peer.serial, graceUntil }))) {
        throw new ConflictError('the host\'s certificate changed meanwhile; retry', undefined, 'state');
      }
      await appendEvents(tx, [
        {
          workspaceId: null,
          entity: 'host',
          entityId: peer.hostId,
          event: 'certificate-renewed',
          name: host.name,
          data: { serial: cert.serial, expiresAt: cert.notAfter.toISOString(), replacedSerial: peer.serial, replacedValidUntil: graceUntil.toISOString() },
        },
      ]);
      return cert;
    });
    this.last.set(peer.hostId, now);
    log.info({ host_id: peer.hostId, cert_serial: issued.serial, replaced_serial: peer.serial, not_after: issued.notAfter.toISOString() }, 'client certificate renewed');
    return { clientCertificatePem: issued.certPem, caCertificatePem: ca.caCertPem, certificateExpiresAt: issued.notAfter };
  }

  /** Forget a host (deleted, re-keyed). */
  forget(hostId: string): void {
    this.last.delete(hostId);
  }

  /** The gRPC handler: authenticate the call's certificate, renew, answer; refusals logged without secrets. */
  handle(call: grpc.ServerUnaryCall<RenewCertificateRequest, RenewCertificateResponse>, cb: grpc.sendUnaryData<RenewCertificateResponse>): void {
    let peer: PeerIdentity;
    try {
      peer = peerIdentity(this.deps.ca, call);
    } catch (err) {
      this.deps.log.warn({ peer: call.getPeer(), reason: err instanceof KloudakError ? err.message : 'bad client certificate' }, 'certificate renewal refused');
      cb(toGrpcError(err instanceof KloudakError ? err : new UnauthenticatedError('bad client certificate')) as grpc.ServiceError);
      return;
    }
    this.renew(peer, call.request).then(
      (r) => cb(null, r),
      (err: unknown) => {
        if (err instanceof KloudakError && err.code !== 'internal') {
          this.deps.log.warn({ host_id: peer.hostId, cert_serial: peer.serial, code: err.code, reason: err.message }, 'certificate renewal refused');
        } else {
          this.deps.log.error({ host_id: peer.hostId, err }, 'certificate renewal failed');
        }
        cb(toGrpcError(err) as grpc.ServiceError);
      },
    );
  }
}
