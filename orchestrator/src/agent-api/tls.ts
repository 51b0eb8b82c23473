// TLS of the agent link: the server asks every peer for a client certificate but does not require
// one, because Enroll comes before the agent has a certificate. Connect checks it itself.
import * as grpc from '@grpc/grpc-js';
import type { SecureContextOptions } from 'node:tls';
import type { ServerKeyPair } from './ca.js';

/**
 * TLS server credentials that REQUEST a client certificate without requiring one: Enroll comes
 * before the agent has a certificate. grpc-js's createSsl(…, true) would require it for every
 * call, so this subclass passes requestCert without rejectUnauthorized to node's TLS server.
 * A certificate that does not verify against our CA leaves the connection up but unauthorized;
 * grpc-js then reports no peer certificate, and Connect refuses it (and checks it again itself).
 */
export class OptionalClientCertCredentials extends grpc.ServerCredentials {
  constructor(caPem: string, pair: ServerKeyPair) {
    super({ requestCert: true, rejectUnauthorized: false }, OptionalClientCertCredentials.context(caPem, pair));
  }

  static context(caPem: string, pair: ServerKeyPair): SecureContextOptions {
    return { ca: Buffer.from(caPem), cert: Buffer.from(pair.chainPem), key: Buffer.from(pair.keyPem), minVersion: 'TLSv1.2' };
  }

  /** Swap the server certificate on the running server (renewal). */
  replace(caPem: string, pair: ServerKeyPair): void {
    this.updateSecureContextOptions(OptionalClientCertCredentials.context(caPem, pair));
  }

  override _equals(other: grpc.ServerCredentials): boolean {
    return other === this;
  }
}
