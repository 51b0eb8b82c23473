import { randomUUID } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import {
  SignJWT,
  exportPKCS8,
  exportSPKI,
  generateKeyPair,
  importPKCS8,
  importSPKI,
  jwtVerify,
  type CryptoKey,
} from 'jose';
import { UnauthenticatedError } from '@kloudak/common';
import type { Clock } from '../clock.js';
import type { Permissions } from '../domain/permissions.js';

/** What a Kloudak token says about its holder (the seed's token information, plus a version). */
export interface TokenClaims {
  sub: string;
  username: string;
  email: string;
  admin: boolean;
  /** The user's token version when issued; a later password change, removal from a workspace or workspace deletion refuses it. */
  ver: number;
  /** Permission flags per workspace name the user belongs to (at most MAX_TOKEN_WORKSPACES). */
  workspaces: Record<string, Permissions>;
  /** True when the user belongs to more workspaces than the token lists. */
  truncated?: boolean;
  jti: string;
  iat: number;
  exp: number;
}

/** The signing key pair of the API's tokens. */
export interface TokenKeys {
  privateKey: CryptoKey;
  publicKey: CryptoKey;
}

/** Where the key pair comes from. */
export interface KeySource {
  privateKeyFile?: string;
  publicKeyFile?: string;
  /** Default place for a generated pair. */
  dataDir: string;
}

/**
 * Load the Ed25519 key pair from the configured PEM files, or from `<dataDir>/keys`, generating it
 * there (private key mode 0600) on first start.
 */
export async function loadOrCreateKeys(src: KeySource): Promise<TokenKeys> {
  const privPath = src.privateKeyFile || join(src.dataDir, 'keys', 'jwt-ed25519.key');
  const pubPath = src.publicKeyFile || join(src.dataDir, 'keys', 'jwt-ed25519.pub');
  if (!existsSync(privPath)) {
    if (src.privateKeyFile) throw new Error(`token private key file ${privPath} does not exist`);
    const pair = await generateKeyPair('EdDSA', { crv: 'Ed25519', extractable: true });
    mkdirSync(dirname(privPath), { recursive: true, mode: 0o700 });
    writeFileSync(privPath, await exportPKCS8(pair.privateKey), { mode: 0o600 });
    chmodSync(privPath, 0o600);
    writeFileSync(pubPath, await exportSPKI(pair.publicKey), { mode: 0o644 });
  }
  return {
    privateKey: await importPKCS8(readFileSync(privPath, 'utf8'), 'EdDSA'),
    publicKey: await importSPKI(readFileSync(pubPath, 'utf8'), 'EdDSA'),
  };
}

/** Issues and verifies the API's JWTs (EdDSA only; alg=none and every other algorithm refused). */
export class TokenService {
  constructor(
    private readonly keys: TokenKeys,
    private readonly clock: Clock,
    private readonly opts: { issuer: string; audience: string; ttlSeconds: number },
  ) {}

  /** Sign a token for a user; returns it with its expiry. */
  async issue(c: Omit<TokenClaims, 'jti' | 'iat' | 'exp'>): Promise<{ token: string; expiresAt: Date; jti: string }> {
    const iat = Math.floor(this.clock.now() / 1000);
    const exp = iat + this.opts.ttlSeconds;
    const jti = randomUUID();
    const token = await new SignJWT({
      username: c.username,
      email: c.email,
      admin: c.admin,
      ver: c.ver,
      workspaces: c.workspaces,
      ...(c.truncated ? { workspaces_truncated: true } : {}),
    })
      .setProtectedHeader({ alg: 'EdDSA', typ: 'JWT' })
      .setSubject(c.sub)
      .setIssuer(this.opts.issuer)
      .setAudience(this.opts.audience)
      .setIssuedAt(iat)
      .setExpirationTime(exp)
      .setJti(jti)
      .sign(this.keys.privateKey);
    return { token, expiresAt: new Date(exp * 1000), jti };
  }

  /**
   * Check signature, algorithm, issuer, audience and expiry. Does not check the user still exists
   * or the token version: the caller does that against the database.
   */
  async verify(token: string): Promise<TokenClaims> {
    try {
      const { payload } = await jwtVerify(token, this.keys.publicKey, {
        algorithms: ['EdDSA'],
        issuer: this.opts.issuer,
        audience: this.opts.audience,
        currentDate: new Date(this.clock.now()),
        requiredClaims: ['sub', 'exp', 'iat', 'jti'],
      });
      if (
        typeof payload['username'] !== 'string' ||
        typeof payload['ver'] !== 'number' ||
        typeof payload['admin'] !== 'boolean'
      ) {
        throw new Error('claims missing');
      }
      return payload as unknown as TokenClaims;
    } catch {
      // jose's messages name the failing check; the client only learns that the token is invalid.
      throw new UnauthenticatedError('invalid or expired token');
    }
  }
}
