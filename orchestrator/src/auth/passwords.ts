import { randomBytes, scrypt as scryptCb, timingSafeEqual, type ScryptOptions } from 'node:crypto';

function scrypt(password: string, salt: Buffer, keylen: number, opts: ScryptOptions): Promise<Buffer> {
  return new Promise((resolve, reject) =>
    scryptCb(password.normalize('NFKC'), salt, keylen, opts, (err, key) => (err ? reject(err) : resolve(key))),
  );
}

const KEY_LEN = 32;

/**
 * Hash a password with scrypt. The result records its parameters
 * (`scrypt$<log2N>$<r>$<p>$<salt>$<hash>`, base64url) so the cost can rise later
 * without breaking stored hashes.
 */
export async function hashPassword(password: string, log2N: number): Promise<string> {
  const salt = randomBytes(16);
  const N = 2 ** log2N;
  const r = 8;
  const p = 1;
  const key = await scrypt(password, salt, KEY_LEN, { N, r, p, maxmem: 256 * N * r });
  return ['scrypt', log2N, r, p, salt.toString('base64url'), key.toString('base64url')].join('$');
}

/** Check a password against a stored hash in constant time. A malformed hash never matches. */
export async function verifyPassword(password: string, stored: string): Promise<boolean> {
  const parts = stored.split('$');
  if (parts.length !== 6 || parts[0] !== 'scrypt') return false;
  const [, l, rs, ps, saltB64, keyB64] = parts as [string, string, string, string, string, string];
  const log2N = Number(l);
  const r = Number(rs);
  const p = Number(ps);
  if (![log2N, r, p].every(Number.isInteger) || log2N < 1 || log2N > 24) return false;
  const expected = Buffer.from(keyB64, 'base64url');
  const N = 2 ** log2N;
  const actual = await scrypt(password, Buffer.from(saltB64, 'base64url'), expected.length, {
    N,
    r,
    p,
    maxmem: 256 * N * r,
  });
  return actual.length === expected.length && timingSafeEqual(actual, expected);
}

const COMMON = new Set([
  'password',
  'password1',
  'password123',
  'passw0rd',
  '123456789',
  '1234567890',
  'qwertyuiop',
  'qwerty123',
  'iloveyou',
  'letmein123',
  'admin12345',
  'welcome123',
  'changeme123',
]);

/** Minimum length of a password. */
export const MIN_PASSWORD_LENGTH = 10;

/**
 * Why a password is too weak, or null when it is acceptable. Rules: at least 10 characters, at
 * most 256, not a well-known password, not containing the username, and either 16+ characters
 * or three of four character classes.
 */
export function passwordWeakness(password: string, username: string): string | null {
  if (password.length < MIN_PASSWORD_LENGTH) return `password must have at least ${MIN_PASSWORD_LENGTH} characters`;
  if (password.length > 256) return 'password must have at most 256 characters';
  if (COMMON.has(password.toLowerCase())) return 'password is too common';
  if (username.length >= 3 && password.toLowerCase().includes(username.toLowerCase())) {
    return 'password must not contain the username';
  }
  const classes = [/[a-z]/, /[A-Z]/, /[0-9]/, /[^a-zA-Z0-9]/].filter((re) => re.test(password)).length;
  if (password.length < 16 && classes < 3) {
    return 'password needs three of: lower case, upper case, digits, symbols (or 16+ characters)';
  }
  if (new Set(password).size < 5) return 'password repeats too few distinct characters';
  return null;
}
