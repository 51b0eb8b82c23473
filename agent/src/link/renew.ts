/**
 * Certificate renewal (AGENT-LINK.md, "Renewal, revocation and re-enrollment"): once less than a
 * fraction of its certificate's validity is left (a third by default), the agent makes a new key,
 * asks RenewCertificate on its mTLS channel (authenticated by the current certificate), checks
 * the answer, replaces its key pair on disk through the journal of identity.ts, and the link then
 * reconnects with it. A failed renewal is retried well before expiry; the key never leaves the host.
 */
import { X509Certificate } from 'node:crypto';
import { Metadata, status as GrpcStatus, type ServiceError } from '@grpc/grpc-js';
import type { AgentLinkClient, RenewCertificateResponse } from '@kloudak/proto/agent';
import type { Logger } from 'pino';
import { fingerprintOfPem, generateClientKey } from './enroll.js';
import { replaceKeyPair, type Identity } from './identity.js';

/** The default fraction of the validity left at which the agent renews. */
export const DEFAULT_RENEW_FRACTION = 1 / 3;

/** When a certificate valid from `notBefore` to `notAfter` (ms) is due: once less than `fraction` of its validity is left. */
export function renewalDueAt(notBefore: number, notAfter: number, fraction: number): number {
  return notAfter - Math.max(0, Math.min(1, fraction)) * (notAfter - notBefore);
}

/** The validity of a PEM certificate, ms. */
export function validityOf(certPem: string): { notBefore: number; notAfter: number } {
  const c = new X509Certificate(certPem);
  return { notBefore: Date.parse(c.validFrom), notAfter: Date.parse(c.validTo) };
}

/**
 * Pause before retrying a failed renewal: a tenth of what is left, between 1 s and 10 minutes,
 * so a short outage is ridden out and the certificate is still renewed before it ends. Once it
 * has expired no renewal can succeed (the host must enroll again): 10 minutes, not a busy loop.
 */
export function retryDelayMs(notAfter: number, now: number): number {
  if (notAfter <= now) return 600_000;
  return Math.min(600_000, Math.max(1000, Math.floor((notAfter - now) / 10)));
}

/** A renewal the orchestrator refused, or whose answer was wrong. `grpcCode` when it answered. */
export class RenewalError extends Error {
  readonly grpcCode: number | undefined;
  constructor(message: string, grpcCode?: number, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'RenewalError';
    this.grpcCode = grpcCode;
  }
}

function call(client: AgentLinkClient, publicKeyPem: string, timeoutMs: number): Promise<RenewCertificateResponse> {
  return new Promise((resolve, reject) => {
    client.renewCertificate({ publicKeyPem }, new Metadata(), { deadline: Date.now() + timeoutMs }, (err: ServiceError | null, res) => {
      if (err) reject(new RenewalError(`RenewCertificate refused (${GrpcStatus[err.code] ?? err.code}): ${err.details || err.message}`, err.code, { cause: err }));
      else resolve(res);
    });
  });
}

/**
 * One renewal: a new key, the RPC on `client` (whose TLS presents the current certificate), the
 * checks (the pinned CA, a certificate for this key and this host, signed by that CA), and the
 * key pair replaced on disk. Returns the new identity.
 */
export async function renewIdentity(client: AgentLinkClient, identity: Identity, dataDir: string, timeoutMs = 30_000): Promise<Identity> {
  const key = generateClientKey();
  const res = await call(client, key.publicKeyPem, timeoutMs);
  if (fingerprintOfPem(res.caCertificatePem) !== identity.caFingerprint) throw new RenewalError('the orchestrator answered RenewCertificate with a CA other than the pinned one');
  const cert = new X509Certificate(res.clientCertificatePem);
  const ca = new X509Certificate(identity.caCertPem);
  if (cert.publicKey.export({ type: 'spki', format: 'pem' }).toString() !== key.publicKeyPem) throw new RenewalError('the renewed certificate is not for the key this agent sent');
  if (!cert.checkIssued(ca) || !cert.verify(ca.publicKey)) throw new RenewalError('the renewed certificate is not signed by the pinned CA');
  if (/^CN=(.+)$/m.exec(cert.subject)?.[1]?.trim() !== identity.hostId) throw new RenewalError('the renewed certificate is for another host');
  await replaceKeyPair(dataDir, key.privateKeyPem, res.clientCertificatePem);
  return { ...identity, clientKeyPem: key.privateKeyPem, clientCertPem: res.clientCertificatePem };
}

/** What the scheduler needs. */
export interface RenewalSchedulerOptions {
  /** Renew once less than this fraction of the validity is left. */
  fraction: number;
  /** The current certificate (PEM). */
  certPem: () => string;
  /** Renew now (throws on failure). */
  renew: () => Promise<void>;
  log: Logger;
  now?: () => number;
}

/** setTimeout's longest delay is 2^31-1 ms (24.8 days); a year-long certificate is looked at again daily. */
const MAX_TIMER_MS = 86_400_000;

/** Runs {@link RenewalSchedulerOptions.renew} when the certificate is due, and again after failures. */
export class RenewalScheduler {
  private timer: NodeJS.Timeout | null = null;
  private stopped = false;
  private running: Promise<void> | null = null;
  private readonly now: () => number;

  constructor(private readonly o: RenewalSchedulerOptions) {
    this.now = o.now ?? Date.now;
  }

  /** Arms the timer for the current certificate. */
  start(): void {
    this.stopped = false;
    this.arm(this.dueIn());
  }

  /** Disarms it; a renewal in progress finishes. */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    await this.running;
  }

  /** Milliseconds until the current certificate is due (0: now). */
  dueIn(): number {
    const v = validityOf(this.o.certPem());
    return Math.max(0, renewalDueAt(v.notBefore, v.notAfter, this.o.fraction) - this.now());
  }

  private arm(ms: number): void {
    if (this.stopped) return;
    if (this.timer) clearTimeout(this.timer);
    const wait = Math.min(ms, MAX_TIMER_MS);
    this.timer = setTimeout(() => {
      this.timer = null;
      // A long wait is cut in days: look again rather than renew early.
      if (wait < ms) this.arm(this.dueIn());
      else this.running = this.fire();
    }, wait);
    this.timer.unref();
  }

  private async fire(): Promise<void> {
    try {
      await this.o.renew();
      this.arm(this.dueIn());
    } catch (err) {
      const { notAfter } = validityOf(this.o.certPem());
      const delay = retryDelayMs(notAfter, this.now());
      const e = err as RenewalError;
      const expired = notAfter <= this.now();
      this.o.log[expired ? 'error' : 'warn'](
        { err: { message: e.message, code: e.grpcCode }, retry_in_ms: delay, not_after: new Date(notAfter).toISOString() },
        expired ? 'certificate expired and not renewed: the host must enroll again with a join token made for it' : 'certificate renewal failed; retrying',
      );
      this.arm(delay);
    } finally {
      this.running = null;
    }
  }
}
