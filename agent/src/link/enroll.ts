/**
 * First start of an agent (AGENT-LINK.md, "Join tokens and enrollment"): pin the orchestrator's
 * CA by the fingerprint in the join token, make a key pair that never leaves the host, and
 * exchange the token for a host id and a client certificate.
 */
import { X509Certificate, createHash, generateKeyPairSync } from 'node:crypto';
import { isIP } from 'node:net';
import { connect as tlsConnect, type DetailedPeerCertificate } from 'node:tls';
import { credentials, Metadata, status as GrpcStatus, type ServiceError } from '@grpc/grpc-js';
import { AgentLinkClient } from '@kloudak/proto/agent';
import { AGENT_VERSION } from '../version.js';
import { parseJoinToken, saveIdentity, type Identity } from './identity.js';

/** Enrollment failed for a reason that retrying will not fix (wrong orchestrator, bad token, name taken). */
export class EnrollmentError extends Error {
  /** gRPC status code, when the orchestrator answered. */
  readonly grpcCode: number | undefined;
  constructor(message: string, grpcCode?: number, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'EnrollmentError';
    this.grpcCode = grpcCode;
  }
}

/** `host:port` → its parts (`[v6]:port` too). */
export function splitHostPort(addr: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]+)):(\d{1,5})$/.exec(addr);
  if (!m) throw new Error(`not a host:port address: ${JSON.stringify(addr)}`);
  return { host: (m[1] ?? m[2])!, port: Number(m[3]) };
}

/** SHA-256 of a DER certificate, lower-case hex. */
export function fingerprintOfDer(der: Uint8Array): string {
  return createHash('sha256').update(der).digest('hex');
}

/** SHA-256 of a PEM certificate's DER, lower-case hex. */
export function fingerprintOfPem(pem: string): string {
  return fingerprintOfDer(new X509Certificate(pem).raw);
}

/** The DER certificates a TLS server presents, leaf first, taken without verifying anything. */
export async function fetchPeerChain(orchestrator: string, servername?: string, timeoutMs = 10_000): Promise<Buffer[]> {
  const { host, port } = splitHostPort(orchestrator);
  // SNI carries names only, never addresses.
  const sni = servername ?? (isIP(host) === 0 ? host : undefined);
  return new Promise((resolve, reject) => {
    const sock = tlsConnect({
      host,
      port,
      // Nothing is trusted yet: the chain is checked against the token's fingerprint below.
      rejectUnauthorized: false,
      ALPNProtocols: ['h2'],
      ...(sni === undefined ? {} : { servername: sni }),
    });
    const timer = setTimeout(() => sock.destroy(new Error(`TLS handshake with ${orchestrator} took longer than ${timeoutMs} ms`)), timeoutMs);
    sock.once('secureConnect', () => {
      const chain: Buffer[] = [];
      let cert: DetailedPeerCertificate | undefined = sock.getPeerCertificate(true);
      const seen = new Set<string>();
      while (cert && cert.raw && !seen.has(cert.fingerprint256)) {
        seen.add(cert.fingerprint256);
        chain.push(cert.raw);
        cert = cert.issuerCertificate;
      }
      clearTimeout(timer);
      sock.destroy();
      resolve(chain);
    });
    sock.once('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
  });
}

/**
 * The CA certificate (PEM) among `chain` whose DER has SHA-256 `fingerprint` and which issued the
 * leaf (the server certificate). Throws {@link EnrollmentError} when there is none.
 */
export function pinCa(chain: readonly Buffer[], fingerprint: string, orchestrator: string): string {
  const leafDer = chain[0];
  if (!leafDer) throw new EnrollmentError(`${orchestrator} presented no certificate`);
  const leaf = new X509Certificate(leafDer);
  for (const der of chain) {
    if (fingerprintOfDer(der) !== fingerprint.toLowerCase()) continue;
    const ca = new X509Certificate(der);
    if (leaf.checkIssued(ca) && leaf.verify(ca.publicKey)) return ca.toString();
  }
  throw new EnrollmentError(
    `the orchestrator at ${orchestrator} is not the one the join token was made for: no certificate in its chain has the token's CA fingerprint and issued its server certificate`,
  );
}

/** A fresh ECDSA P-256 key pair, PEM (SPKI public, PKCS#8 private). */
export function generateClientKey(): { publicKeyPem: string; privateKeyPem: string } {
  const { publicKey, privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  return {
    publicKeyPem: publicKey.export({ type: 'spki', format: 'pem' }).toString(),
    privateKeyPem: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
  };
}

/** gRPC channel options for a pinned CA: the name the server certificate is checked against. */
export function channelOptions(serverName: string | undefined): Record<string, string | number> {
  const o: Record<string, string | number> = {
    'grpc.keepalive_time_ms': 10_000,
    'grpc.keepalive_timeout_ms': 5_000,
    'grpc.keepalive_permit_without_calls': 1,
    // Our own backoff drives reconnection; grpc-js's must not hold a broken channel for long.
    'grpc.initial_reconnect_backoff_ms': 200,
    'grpc.max_reconnect_backoff_ms': 2_000,
  };
  if (serverName !== undefined) {
    o['grpc.ssl_target_name_override'] = serverName;
    o['grpc.default_authority'] = serverName;
  }
  return o;
}

/** Inputs of {@link enroll}. */
export interface EnrollOptions {
  orchestrator: string;
  joinToken: string;
  hostName: string;
  dataDir: string;
  tlsServerName?: string;
  /** Deadline of the Enroll call. */
  timeoutMs?: number;
  /** Re-enrollment: the id of the host this agent is (sent as EnrollRequest.host_id). */
  hostId?: string;
}

/** Whether an enrollment failure is worth retrying (the orchestrator could not be reached). */
export function isRetryableEnrollError(err: unknown): boolean {
  if (err instanceof EnrollmentError) return err.grpcCode === GrpcStatus.UNAVAILABLE || err.grpcCode === GrpcStatus.DEADLINE_EXCEEDED;
  const code = (err as NodeJS.ErrnoException).code;
  return typeof code === 'string' && ['ECONNREFUSED', 'ECONNRESET', 'EHOSTUNREACH', 'ENETUNREACH', 'ETIMEDOUT', 'EAI_AGAIN', 'EPIPE'].includes(code);
}

/** Runs the whole enrollment and saves the identity; returns it. */
export async function enroll(o: EnrollOptions): Promise<Identity> {
  const token = parseJoinToken(o.joinToken);
  const chain = await fetchPeerChain(o.orchestrator, o.tlsServerName);
  const caPem = pinCa(chain, token.caFingerprint, o.orchestrator);
  const key = generateClientKey();
  const client = new AgentLinkClient(o.orchestrator, credentials.createSsl(Buffer.from(caPem)), channelOptions(o.tlsServerName));
  try {
    const res = await callEnroll(
      client,
      { joinToken: o.joinToken, hostName: o.hostName, publicKeyPem: key.publicKeyPem, agentVersion: AGENT_VERSION, hostId: o.hostId ?? '' },
      o.timeoutMs ?? 30_000,
    );
    if (fingerprintOfPem(res.caCertificatePem) !== token.caFingerprint) {
      throw new EnrollmentError('the orchestrator answered Enroll with a CA certificate other than the pinned one');
    }
    const cert = new X509Certificate(res.clientCertificatePem);
    if (cert.publicKey.export({ type: 'spki', format: 'pem' }).toString() !== key.publicKeyPem) {
      throw new EnrollmentError('the client certificate from Enroll is not for the key this agent sent');
    }
    const identity: Identity = {
      hostId: res.hostId,
      hostName: o.hostName,
      orchestrator: o.orchestrator,
      caFingerprint: token.caFingerprint,
      joinTokenId: token.id,
      clientKeyPem: key.privateKeyPem,
      clientCertPem: res.clientCertificatePem,
      caCertPem: caPem,
    };
    await saveIdentity(o.dataDir, identity);
    return identity;
  } finally {
    client.close();
  }
}

function callEnroll(
  client: AgentLinkClient,
  req: { joinToken: string; hostName: string; publicKeyPem: string; agentVersion: string; hostId: string },
  timeoutMs: number,
): Promise<{ hostId: string; clientCertificatePem: string; caCertificatePem: string }> {
  return new Promise((resolve, reject) => {
    client.enroll(req, new Metadata(), { deadline: Date.now() + timeoutMs }, (err: ServiceError | null, res) => {
      if (err) {
        // The orchestrator's message never carries the token; ours does not either.
        reject(new EnrollmentError(`Enroll refused (${GrpcStatus[err.code] ?? err.code}): ${err.details || err.message}`, err.code, { cause: err }));
      } else {
        resolve(res);
      }
    });
  });
}
