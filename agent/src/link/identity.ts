/**
 * The agent's identity on disk (AGENT-LINK.md, "The agent's data dir"): identity.json,
 * client.key (0600), client.crt and ca.crt, each written to a temporary name, fsynced and renamed
 * so a crash never leaves half an identity; and the join token's format.
 */
import { constants } from 'node:fs';
import { mkdir, open, readFile, rename, rm } from 'node:fs/promises';
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
}

/** An identity with its keys and certificates (PEM). */
export interface Identity extends IdentityRecord {
  clientKeyPem: string;
  clientCertPem: string;
  caCertPem: string;
}

/** Paths of the identity files in a data dir. */
export function identityPaths(dataDir: string): { json: string; key: string; cert: string; ca: string } {
  return {
    json: join(dataDir, 'identity.json'),
    key: join(dataDir, 'client.key'),
    cert: join(dataDir, 'client.crt'),
    ca: join(dataDir, 'ca.crt'),
  };
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
 * used token then fails clearly) instead of enrolled without a key.
 */
export async function saveIdentity(dataDir: string, id: Identity): Promise<void> {
  await mkdir(dataDir, { recursive: true, mode: 0o700 });
  const p = identityPaths(dataDir);
  await writeFileAtomic(p.key, id.clientKeyPem, 0o600);
  await writeFileAtomic(p.cert, id.clientCertPem);
  await writeFileAtomic(p.ca, id.caCertPem);
  const record: IdentityRecord = { hostId: id.hostId, hostName: id.hostName, orchestrator: id.orchestrator, caFingerprint: id.caFingerprint };
  await writeFileAtomic(p.json, `${JSON.stringify(record, null, 2)}\n`);
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
  const [clientKeyPem, clientCertPem, caCertPem] = await Promise.all([readFile(p.key, 'utf8'), readFile(p.cert, 'utf8'), readFile(p.ca, 'utf8')]);
  return { ...(rec as IdentityRecord), clientKeyPem, clientCertPem, caCertPem };
}
