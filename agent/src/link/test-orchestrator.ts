/**
 * A minimal orchestrator for the agent's own tests: a real grpc-js server of AgentLink over real
 * TLS, with a CA made here (ECDSA P-256 via @peculiar/x509 and WebCrypto). It enrolls, accepts
 * sessions (checking the client certificate's CN), answers heartbeats with grants (unless paused),
 * records every message and can send commands. Not the orchestrator: just enough of the contract
 * to drive the agent. (Test-only; never imported by the daemon.)
 */
import 'reflect-metadata';
import { createHash, randomBytes, randomUUID, webcrypto } from 'node:crypto';
import * as x509 from '@peculiar/x509';
import { Server, ServerCredentials, status, experimental, type ServerDuplexStream, type sendUnaryData, type ServerUnaryCall } from '@grpc/grpc-js';
import * as pb from '@kloudak/proto/agent';

const ALG = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' } as const;
x509.cryptoProvider.set(webcrypto as unknown as Parameters<typeof x509.cryptoProvider.set>[0]);

function pemKey(der: ArrayBuffer): string {
  const b64 = Buffer.from(der).toString('base64').replace(/(.{64})/g, '$1\n');
  return `-----BEGIN PRIVATE KEY-----\n${b64}\n-----END PRIVATE KEY-----\n`;
}

/** A CA with a server certificate for localhost / 127.0.0.1. */
export interface TestCa {
  caPem: string;
  caFingerprint: string;
  serverCertPem: string;
  serverKeyPem: string;
  /** Signs a client certificate (CN = hostId, clientAuth) for an SPKI PEM public key. */
  signClient(hostId: string, publicKeyPem: string): Promise<string>;
}

/** Makes a CA and its server certificate. */
export async function makeTestCa(name = 'Kloudak test CA'): Promise<TestCa> {
  const subtle = webcrypto.subtle;
  const now = Date.now();
  const notBefore = new Date(now - 60_000);
  const notAfter = new Date(now + 86_400_000);
  const caKeys = (await subtle.generateKey(ALG, true, ['sign', 'verify'])) as webcrypto.CryptoKeyPair;
  const ca = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: randomBytes(16).toString('hex').replace(/^[89a-f]/, '1'),
    name: `CN=${name}`,
    notBefore,
    notAfter,
    keys: caKeys,
    signingAlgorithm: ALG,
    extensions: [new x509.BasicConstraintsExtension(true, undefined, true), new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true)],
  });
  const serverKeys = (await subtle.generateKey(ALG, true, ['sign', 'verify'])) as webcrypto.CryptoKeyPair;
  const server = await x509.X509CertificateGenerator.create({
    serialNumber: randomBytes(16).toString('hex').replace(/^[89a-f]/, '1'),
    subject: 'CN=localhost',
    issuer: ca.subject,
    notBefore,
    notAfter,
    signingKey: caKeys.privateKey,
    publicKey: serverKeys.publicKey,
    signingAlgorithm: ALG,
    extensions: [
      new x509.SubjectAlternativeNameExtension([
        { type: 'dns', value: 'localhost' },
        { type: 'ip', value: '127.0.0.1' },
      ]),
      new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth]),
    ],
  });
  return {
    caPem: ca.toString('pem'),
    caFingerprint: createHash('sha256').update(Buffer.from(ca.rawData)).digest('hex'),
    serverCertPem: server.toString('pem'),
    serverKeyPem: pemKey(await subtle.exportKey('pkcs8', serverKeys.privateKey)),
    signClient: async (hostId, publicKeyPem) => {
      const der = Buffer.from(publicKeyPem.replace(/-----[A-Z ]+-----|\s/g, ''), 'base64');
      const pub = await subtle.importKey('spki', der, { name: 'ECDSA', namedCurve: 'P-256' }, true, ['verify']);
      const cert = await x509.X509CertificateGenerator.create({
        serialNumber: randomBytes(16).toString('hex').replace(/^[89a-f]/, '1'),
        subject: `CN=${hostId}`,
        issuer: ca.subject,
        notBefore,
        notAfter,
        signingKey: caKeys.privateKey,
        publicKey: pub,
        signingAlgorithm: ALG,
        extensions: [new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.clientAuth])],
      });
      return cert.toString('pem');
    },
  };
}

/** A join token for `ca` (the secret is random; the test orchestrator accepts `tokens` it issued). */
export function makeJoinToken(caFingerprint: string): string {
  return `kjt1.${randomBytes(16).toString('hex')}.${randomBytes(32).toString('base64url')}.${caFingerprint}`;
}

/** One session as the test orchestrator saw it. */
export interface TestSession {
  hostId: string;
  /** CN of the client certificate. */
  peerCn: string | undefined;
  messages: pb.AgentMessage[];
  call: ServerDuplexStream<pb.AgentMessage, pb.OrchestratorMessage>;
  ended: boolean;
}

/** Options of {@link TestOrchestrator}. */
export interface TestOrchestratorOptions {
  ca: TestCa;
  heartbeatIntervalMs: number;
  leaseMs: number;
}

/** See the module comment. */
export class TestOrchestrator {
  readonly server = new Server();
  readonly sessions: TestSession[] = [];
  readonly tokens = new Set<string>();
  readonly enrolled = new Map<string, string>();
  /** While true, heartbeats get no grant (a stuck or partitioned orchestrator). */
  pauseGrants = false;
  /** Whether a Goodbye is acknowledged (as the orchestrator does once it recorded it). */
  ackGoodbye = true;
  port = 0;
  private readonly waiters = new Set<() => void>();

  constructor(private readonly o: TestOrchestratorOptions) {
    this.server.addService(pb.AgentLinkService, {
      enroll: (call: ServerUnaryCall<pb.EnrollRequest, pb.EnrollResponse>, cb: sendUnaryData<pb.EnrollResponse>) => void this.enroll(call, cb),
      connect: (call: ServerDuplexStream<pb.AgentMessage, pb.OrchestratorMessage>) => this.connect(call),
    });
  }

  get address(): string {
    return `127.0.0.1:${this.port}`;
  }

  async start(): Promise<void> {
    const ca = Buffer.from(this.o.ca.caPem);
    const identity = { certificate: Buffer.from(`${this.o.ca.serverCertPem.trim()}\n${this.o.ca.caPem.trim()}\n`), privateKey: Buffer.from(this.o.ca.serverKeyPem) };
    // Request a client certificate without requiring one (Enroll comes before the agent has one).
    const provider: experimental.CertificateProvider = {
      addCaCertificateListener: (l) => setImmediate(() => l({ caCertificate: ca })),
      removeCaCertificateListener: () => undefined,
      addIdentityCertificateListener: (l) => setImmediate(() => l(identity)),
      removeIdentityCertificateListener: () => undefined,
    };
    const creds = experimental.createCertificateProviderServerCredentials(provider, provider, false);
    this.port = await new Promise<number>((resolve, reject) => this.server.bindAsync('127.0.0.1:0', creds as ServerCredentials, (e, p) => (e ? reject(e) : resolve(p))));
    // The provider delivers the certificates on later ticks (grpc-js expects them asynchronously).
    await new Promise((r) => setTimeout(r, 20));
  }

  async stop(): Promise<void> {
    for (const s of this.sessions) if (!s.ended) s.call.end();
    await new Promise<void>((r) => this.server.tryShutdown(() => r()));
    this.server.forceShutdown();
  }

  /** Resolves when `pred` holds (checked on every message), or rejects after `timeoutMs`. */
  async waitFor<T>(what: string, pred: () => T | undefined | false, timeoutMs = 15_000): Promise<T> {
    const first = pred();
    if (first) return first;
    return new Promise<T>((resolve, reject) => {
      const check = (): void => {
        const v = pred();
        if (v) {
          clearTimeout(timer);
          this.waiters.delete(check);
          resolve(v);
        }
      };
      const timer = setTimeout(() => {
        this.waiters.delete(check);
        reject(new Error(`timed out waiting for ${what}`));
      }, timeoutMs);
      this.waiters.add(check);
    });
  }

  /** Messages of every session, in order, of one kind. */
  all<K extends NonNullable<pb.AgentMessage['body']>['$case']>(kind: K): Array<Extract<NonNullable<pb.AgentMessage['body']>, { $case: K }>> {
    return this.sessions.flatMap((s) => s.messages.map((m) => m.body).filter((b): b is Extract<NonNullable<pb.AgentMessage['body']>, { $case: K }> => b?.$case === kind));
  }

  /** The open session, if any. */
  current(): TestSession | undefined {
    return [...this.sessions].reverse().find((s) => !s.ended);
  }

  /** Sends a command on the open session and resolves with its result. */
  async command(c: Omit<pb.Command, 'commandId'> & { commandId?: string }, timeoutMs = 30_000): Promise<pb.CommandResult> {
    const s = this.current();
    if (!s) throw new Error('no open session');
    const commandId = c.commandId ?? randomUUID();
    const before = new Set(this.all('commandResult').map((r) => r.commandResult));
    s.call.write({ body: { $case: 'command', command: { ...c, commandId } } });
    const r = await this.waitFor(`result of ${commandId}`, () => this.all('commandResult').find((x) => x.commandResult.commandId === commandId && !before.has(x.commandResult)), timeoutMs);
    return r.commandResult;
  }

  private notify(): void {
    for (const w of [...this.waiters]) w();
  }

  private async enroll(call: ServerUnaryCall<pb.EnrollRequest, pb.EnrollResponse>, cb: sendUnaryData<pb.EnrollResponse>): Promise<void> {
    const r = call.request;
    if (!this.tokens.delete(r.joinToken)) return cb({ code: status.UNAUTHENTICATED, details: 'unknown or used join token' });
    if ([...this.enrolled.values()].includes(r.hostName)) return cb({ code: status.ALREADY_EXISTS, details: 'a host of that name exists' });
    const hostId = randomUUID();
    try {
      const cert = await this.o.ca.signClient(hostId, r.publicKeyPem);
      this.enrolled.set(hostId, r.hostName);
      cb(null, { hostId, clientCertificatePem: cert, caCertificatePem: this.o.ca.caPem, certificateExpiresAt: new Date(Date.now() + 86_400_000) });
    } catch (e) {
      cb({ code: status.INVALID_ARGUMENT, details: `bad key: ${(e as Error).message}` });
    }
  }

  private connect(call: ServerDuplexStream<pb.AgentMessage, pb.OrchestratorMessage>): void {
    const peer = call.getAuthContext().sslPeerCertificate as { subject?: { CN?: string } } | undefined;
    const s: TestSession = { hostId: '', peerCn: peer?.subject?.CN, messages: [], call, ended: false };
    if (!s.peerCn || !this.enrolled.has(s.peerCn)) {
      call.destroy(Object.assign(new Error('no valid client certificate'), { code: status.UNAUTHENTICATED }));
      return;
    }
    for (const old of this.sessions) {
      if (!old.ended && old.peerCn === s.peerCn) {
        old.ended = true;
        old.call.destroy(Object.assign(new Error('replaced by a newer session'), { code: status.ABORTED }));
      }
    }
    this.sessions.push(s);
    call.on('data', (m: pb.AgentMessage) => {
      s.messages.push(m);
      const b = m.body;
      if (b?.$case === 'hello') {
        s.hostId = b.hello.hostId;
        call.write({ body: { $case: 'helloAck', helloAck: { hostId: b.hello.hostId, heartbeatIntervalMs: this.o.heartbeatIntervalMs, lease: { heartbeatSequence: 0n, durationMs: this.o.leaseMs, grantedAt: new Date() } } } });
      } else if (b?.$case === 'goodbye' && this.ackGoodbye) {
        call.write({ body: { $case: 'goodbyeAck', goodbyeAck: {} } });
      } else if (b?.$case === 'heartbeat' && !this.pauseGrants) {
        call.write({ body: { $case: 'leaseGrant', leaseGrant: { heartbeatSequence: b.heartbeat.sequence, durationMs: this.o.leaseMs, grantedAt: new Date() } } });
      }
      this.notify();
    });
    const end = (): void => {
      s.ended = true;
      this.notify();
    };
    call.on('end', () => {
      end();
      call.end();
    });
    call.on('error', end);
    call.on('close', end);
  }
}
