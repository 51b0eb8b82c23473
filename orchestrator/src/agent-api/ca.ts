// Kloudak's own certificate authority for the agent link (AGENT-LINK.md, "Transport and trust"):
// an ECDSA P-256 CA kept under <dataDir>/ca, the orchestrator's server certificate, one client
// certificate per enrolled host, and the check of a client certificate presented on Connect.
import 'reflect-metadata';
import { createHash, createPrivateKey, createPublicKey, randomBytes, webcrypto, X509Certificate as NodeX509 } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';
import * as x509 from '@peculiar/x509';
import { KloudakError, UnauthenticatedError, ValidationError, type Logger } from '@kloudak/common';
import type { Clock } from '../clock.js';

x509.cryptoProvider.set(webcrypto as never);

// The DOM's CryptoKey types are not in this project's libs; node's are the same objects.
type Key = webcrypto.CryptoKey;
type KeyPair = webcrypto.CryptoKeyPair;

const subtle = webcrypto.subtle;
const EC = { name: 'ECDSA', namedCurve: 'P-256' } as const;
const SIGN = { name: 'ECDSA', hash: 'SHA-256' } as const;
const DAY = 86_400_000;
/** CA validity: 10 years. */
const CA_DAYS = 3650;
/** Server certificate validity; renewed when fewer than RENEW_DAYS remain. */
const SERVER_DAYS = 397;
const RENEW_DAYS = 30;
/** Client certificate validity by default: 1 year (KLOUDAK_AGENT_CERT_LIFETIME_SECONDS). */
export const DEFAULT_CLIENT_CERT_LIFETIME_MS = 365 * DAY;
/** Certificates are back-dated a little so a host whose clock lags by minutes accepts them. */
const BACKDATE_MS = 5 * 60_000;
const CLIENT_AUTH_OID = '1.3.6.1.5.5.7.3.2';
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/** A client certificate signed for an enrolled host. */
export interface IssuedCertificate {
  /** PEM of the certificate. */
  certPem: string;
  /** Lower-case hex serial without leading zeros (as {@link normalizeSerial} gives). */
  serial: string;
  notAfter: Date;
}

/** The identity proven by a valid client certificate. */
export interface PeerIdentity {
  /** The subject CN: the host's id. */
  hostId: string;
  serial: string;
  notAfter: Date;
}

/** The orchestrator's server key pair for TLS, chain = [server certificate, CA certificate]. */
export interface ServerKeyPair {
  keyPem: string;
  /** Server certificate followed by the CA certificate, PEM. */
  chainPem: string;
  notAfter: Date;
}

/** Lower-case hex without leading zeros, so serials from different libraries compare equal. */
export function normalizeSerial(hex: string): string {
  return hex.toLowerCase().replace(/^0+(?=.)/, '');
}

/** An IP in one canonical text form (node prints IPv6 SANs uncompressed). */
function normalizeIp(ip: string): string {
  if (!ip.includes(':')) return ip;
  try {
    return new URL(`http://[${ip}]/`).hostname.toLowerCase();
  } catch {
    return ip.toLowerCase();
  }
}

function pem(label: string, der: ArrayBuffer | Buffer): string {
  const b64 = Buffer.from(der as ArrayBuffer).toString('base64');
  return `-----BEGIN ${label}-----\n${b64.replace(/(.{64})/g, '$1\n').replace(/\n$/, '')}\n-----END ${label}-----\n`;
}

function pemBody(text: string, label: string): Buffer {
  const m = new RegExp(`-----BEGIN ${label}-----([A-Za-z0-9+/=\\s]+)-----END ${label}-----`).exec(text);
  if (!m) throw new Error(`no ${label} in PEM`);
  return Buffer.from((m[1] as string).replace(/\s+/g, ''), 'base64');
}

/** A positive 128-bit serial (the top bit is cleared so the DER integer stays positive). */
function randomSerial(): string {
  const b = randomBytes(16);
  b[0] = ((b[0] as number) & 0x7f) | 0x01;
  return b.toString('hex');
}

async function importPrivateKey(keyPem: string): Promise<Key> {
  return (await subtle.importKey('pkcs8', pemBody(keyPem, 'PRIVATE KEY'), EC, false, ['sign'])) as Key;
}

async function newKeyPair(): Promise<{ keys: KeyPair; keyPem: string }> {
  const keys = (await subtle.generateKey(EC, true, ['sign', 'verify'])) as KeyPair;
  const keyPem = pem('PRIVATE KEY', await subtle.exportKey('pkcs8', keys.privateKey));
  return { keys, keyPem };
}

/** Write a file through a temporary name and a rename, so a crash never leaves half a file. */
function writeAtomic(path: string, data: string, mode: number): void {
  const tmp = `${path}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
  writeFileSync(tmp, data, { mode });
  chmodSync(tmp, mode);
  renameSync(tmp, path);
}

/** Options of {@link CertificateAuthority.open}. */
export interface CaOptions {
  /** The orchestrator's data dir; the CA lives in `<dataDir>/ca`. */
  dataDir: string;
  /** Extra names for the server certificate (KLOUDAK_AGENT_TLS_NAMES). */
  extraNames: readonly string[];
  clock: Clock;
  log: Logger;
  /** Validity of client certificates; default {@link DEFAULT_CLIENT_CERT_LIFETIME_MS}. Tests use seconds. */
  clientLifetimeMs?: number;
}

/**
 * How far a client certificate is back-dated: 5 minutes, or a tenth of a short lifetime. Agents
 * renew when a fraction of the span notBefore..notAfter is left, so a back-dating as long as the
 * lifetime itself would make a short-lived certificate look due for renewal at once.
 */
export function clientBackdateMs(lifetimeMs: number): number {
  return Math.min(BACKDATE_MS, Math.floor(lifetimeMs / 10));
}

/**
 * The CA of the agent link. Orchestrators that share a database must share its directory; the
 * first to start creates it (atomically: a directory rename, so two starting together agree).
 */
export class CertificateAuthority {
  /** SHA-256 of the CA certificate's DER, lower-case hex: the `caFingerprint` of join tokens. */
  readonly fingerprint: string;
  readonly caCertPem: string;
  private readonly caCert: NodeX509;
  private readonly caCertX: x509.X509Certificate;
  private server: ServerKeyPair;

  private constructor(
    private readonly dir: string,
    caCertPem: string,
    private readonly caKey: Key,
    private readonly opts: CaOptions,
    server: ServerKeyPair,
  ) {
    this.caCertPem = caCertPem;
    this.caCert = new NodeX509(caCertPem);
    this.caCertX = new x509.X509Certificate(caCertPem);
    this.fingerprint = createHash('sha256').update(this.caCert.raw).digest('hex');
    this.server = server;
  }

  /** Load the CA from `<dataDir>/ca`, creating it on first start; make or renew the server certificate. */
  static async open(opts: CaOptions): Promise<CertificateAuthority> {
    const dir = join(opts.dataDir, 'ca');
    if (!existsSync(join(dir, 'ca.key')) || !existsSync(join(dir, 'ca.crt'))) await createCaDir(opts.dataDir, dir, opts);
    const caCertPem = readFileSync(join(dir, 'ca.crt'), 'utf8');
    const caKey = await importPrivateKey(readFileSync(join(dir, 'ca.key'), 'utf8'));
    const placeholder: ServerKeyPair = { keyPem: '', chainPem: '', notAfter: new Date(0) };
    const ca = new CertificateAuthority(dir, caCertPem, caKey, opts, placeholder);
    ca.server = await ca.loadOrIssueServer();
    return ca;
  }

  /** Validity of the client certificates this CA signs. */
  get clientLifetimeMs(): number {
    return this.opts.clientLifetimeMs ?? DEFAULT_CLIENT_CERT_LIFETIME_MS;
  }

  /** The current server key pair (renewed by {@link renewServerIfDue}). */
  serverKeyPair(): ServerKeyPair {
    return this.server;
  }

  /** The names the server certificate must carry. */
  serverNames(): { dns: string[]; ips: string[] } {
    const all = ['localhost', '127.0.0.1', '::1', hostname(), ...this.opts.extraNames].map((n) => n.trim()).filter((n) => n !== '');
    const isIp = (n: string) => /^[0-9.]+$/.test(n) || n.includes(':');
    return { dns: [...new Set(all.filter((n) => !isIp(n)))], ips: [...new Set(all.filter(isIp))] };
  }

  /** Issue a new server certificate when fewer than 30 days remain; true when it changed. */
  async renewServerIfDue(): Promise<boolean> {
    if (this.server.notAfter.getTime() - this.opts.clock.now() > RENEW_DAYS * DAY) return false;
    this.server = await this.issueServer();
    return true;
  }

  private async loadOrIssueServer(): Promise<ServerKeyPair> {
    const keyPath = join(this.dir, 'server.key');
    const crtPath = join(this.dir, 'server.crt');
    if (existsSync(keyPath) && existsSync(crtPath)) {
      try {
        const keyPem = readFileSync(keyPath, 'utf8');
        const certPem = readFileSync(crtPath, 'utf8');
        const cert = new NodeX509(certPem);
        const notAfter = new Date(cert.validTo);
        const want = this.serverNames();
        const entries = (cert.subjectAltName ?? '').split(', ');
        const dns = new Set(entries.filter((e) => e.startsWith('DNS:')).map((e) => e.slice(4)));
        const ips = new Set(entries.filter((e) => e.startsWith('IP Address:')).map((e) => normalizeIp(e.slice(11))));
        const hasAll = want.dns.every((n) => dns.has(n)) && want.ips.every((n) => ips.has(normalizeIp(n)));
        // Two instances renewing at once could leave a key and a certificate from different runs.
        const matches = cert.checkPrivateKey(createPrivateKey(keyPem));
        if (matches && hasAll && cert.verify(this.caCert.publicKey) && notAfter.getTime() - this.opts.clock.now() > RENEW_DAYS * DAY) {
          return { keyPem, chainPem: certPem.trimEnd() + '\n' + this.caCertPem, notAfter };
        }
      } catch (err) {
        this.opts.log.warn({ component: 'agent-ca', err }, 'server certificate unreadable; issuing a new one');
      }
    }
    return this.issueServer();
  }

  private async issueServer(): Promise<ServerKeyPair> {
    const { keys, keyPem } = await newKeyPair();
    const now = this.opts.clock.now();
    const names = this.serverNames();
    const cert = await x509.X509CertificateGenerator.create({
      serialNumber: randomSerial(),
      subject: 'CN=kloudak-orchestrator',
      issuer: this.caCertX.subjectName,
      notBefore: new Date(now - BACKDATE_MS),
      notAfter: new Date(now + SERVER_DAYS * DAY),
      signingAlgorithm: SIGN,
      publicKey: keys.publicKey,
      signingKey: this.caKey,
      extensions: [
        new x509.BasicConstraintsExtension(false, undefined, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
        new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth]),
        new x509.SubjectAlternativeNameExtension([
          ...names.dns.map((value) => ({ type: 'dns' as const, value })),
          ...names.ips.map((value) => ({ type: 'ip' as const, value })),
        ]),
        await x509.AuthorityKeyIdentifierExtension.create(await this.caPublicKey()),
      ],
    });
    const certPem = cert.toString('pem') + '\n';
    writeAtomic(join(this.dir, 'server.key'), keyPem, 0o600);
    writeAtomic(join(this.dir, 'server.crt'), certPem, 0o644);
    this.opts.log.info({ component: 'agent-ca', serial: normalizeSerial(cert.serialNumber), not_after: cert.notAfter.toISOString(), names: [...names.dns, ...names.ips] }, 'server certificate issued');
    return { keyPem, chainPem: certPem + this.caCertPem, notAfter: cert.notAfter };
  }

  private async caPublicKey(): Promise<Key> {
    return this.caCertX.publicKey.export(EC, ['verify']);
  }

  /**
   * Sign a client certificate for host `hostId` over the agent's public key (SPKI PEM, ECDSA
   * P-256). A malformed or other kind of key is a ValidationError.
   */
  async signClient(hostId: string, publicKeyPem: string): Promise<IssuedCertificate> {
    let spki: Buffer;
    try {
      const key = createPublicKey({ key: publicKeyPem, format: 'pem' });
      if (key.asymmetricKeyType !== 'ec' || key.asymmetricKeyDetails?.namedCurve !== 'prime256v1') {
        throw new Error('not an ECDSA P-256 key');
      }
      spki = key.export({ type: 'spki', format: 'der' });
    } catch (err) {
      throw new ValidationError('public_key_pem must be an ECDSA P-256 public key in PEM (SubjectPublicKeyInfo)', { reason: err instanceof Error && err.message === 'not an ECDSA P-256 key' ? 'wrong key type' : 'unparsable' });
    }
    const publicKey = (await subtle.importKey('spki', spki, EC, true, ['verify'])) as Key;
    const now = this.opts.clock.now();
    const serial = randomSerial();
    const lifetime = this.clientLifetimeMs;
    const cert = await x509.X509CertificateGenerator.create({
      serialNumber: serial,
      subject: `CN=${hostId}`,
      issuer: this.caCertX.subjectName,
      notBefore: new Date(now - clientBackdateMs(lifetime)),
      notAfter: new Date(now + lifetime),
      signingAlgorithm: SIGN,
      publicKey,
      signingKey: this.caKey,
      extensions: [
        new x509.BasicConstraintsExtension(false, undefined, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
        new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.clientAuth]),
        await x509.AuthorityKeyIdentifierExtension.create(await this.caPublicKey()),
      ],
    });
    return { certPem: cert.toString('pem') + '\n', serial: normalizeSerial(serial), notAfter: cert.notAfter };
  }

  /**
   * Check a client certificate (DER) presented on Connect: signed by this CA, inside its validity
   * period by our clock, for client authentication, with a host id as CN. Throws
   * UnauthenticatedError otherwise; never says more than needed about why.
   */
  verifyClient(der: Buffer): PeerIdentity {
    let cert: NodeX509;
    try {
      cert = new NodeX509(der);
    } catch {
      throw new UnauthenticatedError('client certificate is unreadable');
    }
    if (!cert.checkIssued(this.caCert) || !cert.verify(this.caCert.publicKey)) {
      throw new UnauthenticatedError('client certificate is not signed by this orchestrator');
    }
    const now = this.opts.clock.now();
    const notAfter = new Date(cert.validTo);
    if (now < new Date(cert.validFrom).getTime() || now > notAfter.getTime()) {
      throw new UnauthenticatedError('client certificate is expired or not yet valid');
    }
    if (cert.ca) throw new UnauthenticatedError('a CA certificate is not a client certificate');
    if (!(cert.keyUsage ?? []).includes(CLIENT_AUTH_OID)) throw new UnauthenticatedError('certificate is not for client authentication');
    const cn = /^CN=(.+)$/m.exec(cert.subject)?.[1]?.trim() ?? '';
    if (!UUID.test(cn)) throw new UnauthenticatedError('client certificate does not name a host');
    return { hostId: cn, serial: normalizeSerial(cert.serialNumber), notAfter };
  }
}

/** Make a CA in a temporary directory and rename it into place; a concurrent winner is kept. */
async function createCaDir(dataDir: string, dir: string, opts: CaOptions): Promise<void> {
  mkdirSync(dataDir, { recursive: true });
  const tmp = join(dataDir, `ca.tmp-${process.pid}-${randomBytes(4).toString('hex')}`);
  mkdirSync(tmp, { mode: 0o700 });
  try {
    const { keys, keyPem } = await newKeyPair();
    const now = opts.clock.now();
    const cert = await x509.X509CertificateGenerator.createSelfSigned({
      serialNumber: randomSerial(),
      name: `CN=Kloudak agent CA ${randomBytes(4).toString('hex')}, O=Kloudak`,
      notBefore: new Date(now - BACKDATE_MS),
      notAfter: new Date(now + CA_DAYS * DAY),
      signingAlgorithm: SIGN,
      keys,
      extensions: [
        new x509.BasicConstraintsExtension(true, 0, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
        await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
      ],
    });
    writeFileSync(join(tmp, 'ca.key'), keyPem, { mode: 0o600 });
    chmodSync(join(tmp, 'ca.key'), 0o600);
    writeFileSync(join(tmp, 'ca.crt'), cert.toString('pem') + '\n', { mode: 0o644 });
    try {
      // An empty ca/ (made by hand) is replaced; a populated one (another instance won) is kept.
      renameSync(tmp, dir);
      opts.log.info({ component: 'agent-ca', dir }, 'agent CA created');
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code !== 'ENOTEMPTY' && code !== 'EEXIST') throw err;
    }
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
  if (!existsSync(join(dir, 'ca.key')) || !existsSync(join(dir, 'ca.crt'))) {
    throw new KloudakError('internal', `${dir} exists but holds no CA (ca.key and ca.crt)`);
  }
}
