/**
 * The agent's identity on disk (AGENT-LINK.md, "The agent's data dir"): identity.json,
 * client.key (0600), client.crt and ca.crt, each written to a temporary name, fsynced and renamed
 * so a crash never leaves half an identity; and the join token's format.
 *
 * A key and its certificate are replaced together (renewal, re-enrollment) through a small
 * journal: both are written as client.key.new and client.crt.new first, then renamed over the old
 * pair, key first. Loading finishes a replacement a crash interrupted (or drops one that was not
 * complete), so the agent always has a key and a certificate that belong together: never the old
 * key with the new certificate, and never no identity at all.
 */
import { X509Certificate, createPrivateKey, createPublicKey } from 'node:crypto';
import { constants } from 'node:fs';
import { access, mkdir, open, readFile, rename, rm } from 'node:fs/promises';
import { dirname, join } from 'node:path';

/** A join token's parts. The secret must never be logged. */
export interface JoinToken {
  id: string;
  secret: string;
  /** SHA-256 of the CA certificate's DER, lower-case hex. */
  caFingerprint: string;
}

/** A join token that does not have the `kjt1.<id>.<secret>.<fingerprint>` shape. */
export class TokenFormatError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'TokenFormatError';
  }
}

const TOKEN = /^kjt1\.([0-9a-f]{32})\.([A-Za-z0-9_-]{43})\.([0-9a-fA-F]{64})$/;

/** Parses `kjt1.<id: 32 hex>.<secret: 43 base64url>.<caFingerprint: 64 hex>`; the message never echoes the token. */
export function parseJoinToken(token: string): JoinToken {
  const m = TOKEN.exec(token.trim());
  if (!m) throw new TokenFormatError('the join token is malformed: expected kjt1.<32 hex>.<43 base64url>.<64 hex>');
  return { id: m[1]!, secret: m[2]!, caFingerprint: m[3]!.toLowerCase() };
}

/** What identity.json holds. */
export interface IdentityRecord {
  hostId: string;
  hostName: string;
  /** `host:port` the agent enrolled with. */
  orchestrator: string;
  caFingerprint: string;
  /**
   * Id of the last join token this identity came from or was refused with. A configured token
   * with another id is new: the agent tries it to enroll again (a re-enrollment token).
   */
  joinTokenId?: string;
}

/** An identity with its keys and certificates (PEM). */
export interface Identity extends IdentityRecord {
  clientKeyPem: string;
  clientCertPem: string;
  caCertPem: string;
}

/** Paths of the identity files in a data dir. */
export function identityPaths(dataDir: string): { json: string; key: string; cert: string; ca: string; newKey: string; newCert: string } {
  return {
    json: join(dataDir, 'identity.json'),
    key: join(dataDir, 'client.key'),
    cert: join(dataDir, 'client.crt'),
    ca: join(dataDir, 'ca.crt'),
    newKey: join(dataDir, 'client.key.new'),
    newCert: join(dataDir, 'client.crt.new'),
  };
}

/** Whether a PEM private key and a PEM certificate belong together. False when either is unreadable. */
export function keyMatchesCert(keyPem: string, certPem: string): boolean {
  try {
    const pub = createPublicKey(createPrivateKey(keyPem)).export({ type: 'spki', format: 'der' });
    return new X509Certificate(certPem).publicKey.export({ type: 'spki', format: 'der' }).equals(pub);
  } catch {
    return false;
  }
}

async function exists(path: string): Promise<boolean> {
  try {
    await access(path);
    return true;
  } catch {
    return false;
  }
}

async function readOrNull(path: string): Promise<string | null> {
  try {
    return await readFile(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw err;
  }
}

/**
 * Replaces the key and certificate together (see the module comment): the new pair is written
 * and fsynced beside the old one, then renamed over it, key first. A crash at any point leaves
 * either the old pair or the new one once {@link recoverKeyPair} has run.
 */
export async function replaceKeyPair(dataDir: string, keyPem: string, certPem: string): Promise<void> {
  if (!keyMatchesCert(keyPem, certPem)) throw new Error('the certificate is not for this key');
  const p = identityPaths(dataDir);
  await writeFileAtomic(p.newKey, keyPem, 0o600);
  await writeFileAtomic(p.newCert, certPem);
  await rename(p.newKey, p.key);
  await rename(p.newCert, p.cert);
  await fsyncDir(dataDir);
}

/**
 * Finishes or drops a key replacement a crash interrupted: both new files present and matching
 * each other → renamed into place; only the new certificate left (the key was already renamed)
 * and matching client.key → renamed into place; anything else new → deleted (the old pair was
 * never touched). Returns what it did.
 */
export async function recoverKeyPair(dataDir: string): Promise<'none' | 'completed' | 'dropped'> {
  const p = identityPaths(dataDir);
  const [newKey, newCert] = await Promise.all([readOrNull(p.newKey), readOrNull(p.newCert)]);
  if (newKey === null && newCert === null) return 'none';
  if (newKey !== null && newCert !== null && keyMatchesCert(newKey, newCert)) {
    await rename(p.newKey, p.key);
    await rename(p.newCert, p.cert);
    await fsyncDir(dataDir);
    return 'completed';
  }
  if (newKey === null && newCert !== null) {
    const key = await readOrNull(p.key);
    if (key !== null && keyMatchesCert(key, newCert)) {
      await rename(p.newCert, p.cert);
      await fsyncDir(dataDir);
      return 'completed';
    }
  }
  for (const f of [p.newKey, p.newCert]) if (await exists(f)) await rm(f, { force: true });
  await fsyncDir(dataDir);
  return 'dropped';
}

/** Fsyncs a directory so a rename in it survives a crash. */
export async function fsyncDir(dir: string): Promise<void> {
  const fh = await open(dir, constants.O_RDONLY);
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** Writes `data` to `path` atomically: temporary file, fsync, rename, fsync of the directory. */
export async function writeFileAtomic(path: string, data: string | Uint8Array, mode = 0o644): Promise<void> {
  const tmp = `${path}.tmp-${process.pid}`;
  const fh = await open(tmp, 'w', mode);
  try {
    await fh.writeFile(data);
    await fh.chmod(mode); // the umask may have narrowed or widened the mode at open
    await fh.sync();
  } finally {
    await fh.close();
  }
  try {
    await rename(tmp, path);
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
  await fsyncDir(dirname(path));
}

/**
 * Saves an identity. The key and certificates are written first and identity.json last: its
 * presence is what says "enrolled", so a crash in between leaves the agent un-enrolled (and the
 * used token then fails clearly) instead of enrolled without a key. Over an existing identity
 * (re-enrollment of the same host id) the key pair is replaced through the journal, so a crash
 * leaves the old identity or the new one, whole.
 */
export async function saveIdentity(dataDir: string, id: Identity): Promise<void> {
  await mkdir(dataDir, { recursive: true, mode: 0o700 });
  const p = identityPaths(dataDir);
  await writeFileAtomic(p.ca, id.caCertPem);
  await replaceKeyPair(dataDir, id.clientKeyPem, id.clientCertPem);
  await saveIdentityRecord(dataDir, id);
}

/** Writes identity.json alone (atomically). */
export async function saveIdentityRecord(dataDir: string, id: IdentityRecord): Promise<void> {
  const record: IdentityRecord = { hostId: id.hostId, hostName: id.hostName, orchestrator: id.orchestrator, caFingerprint: id.caFingerprint };
  if (id.joinTokenId !== undefined) record.joinTokenId = id.joinTokenId;
  await writeFileAtomic(identityPaths(dataDir).json, `${JSON.stringify(record, null, 2)}\n`);
}

/** The identity in `dataDir`, or null when the agent has not enrolled. Throws on a damaged identity. */
export async function loadIdentity(dataDir: string): Promise<Identity | null> {
  const p = identityPaths(dataDir);
  let json: string;
  try {
    json = await readFile(p.json, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw err;
  }
  const rec = JSON.parse(json) as Partial<IdentityRecord>;
  for (const k of ['hostId', 'hostName', 'orchestrator', 'caFingerprint'] as const) {
    if (typeof rec[k] !== 'string' || rec[k] === '') throw new Error(`${p.json}: ${k} is missing`);
  }
  await recoverKeyPair(dataDir);
  const [clientKeyPem, clientCertPem, caCertPem] = await Promise.all([readFile(p.key, 'utf8'), readFile(p.cert, 'utf8'), readFile(p.ca, 'utf8')]);
  if (!keyMatchesCert(clientKeyPem, clientCertPem)) throw new Error(`${p.key} and ${p.cert} do not belong together`);
  return { ...(rec as IdentityRecord), clientKeyPem, clientCertPem, caCertPem };
}
