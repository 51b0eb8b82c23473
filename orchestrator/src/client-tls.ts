// TLS for clients (REST, its WebSocket, gRPC): the key pair from the configured PEM files, and
// the warning when the API is served in plain text beyond this machine.
import { readFileSync } from 'node:fs';
import { X509Certificate, createPrivateKey } from 'node:crypto';
import { isIP } from 'node:net';
import { ConfigError, type Logger } from '@kloudak/common';
import type { OrchestratorConfig } from './config.js';

/** The certificate chain and key clients see (PEM); null: plain text. */
export type ClientTls = { cert: Buffer; key: Buffer } | null;

/**
 * Read `tlsCertFile` and `tlsKeyFile`: both or neither. A file that cannot be read, or that holds
 * no certificate or no private key, stops the start with a ConfigError naming it.
 */
export function loadClientTls(config: Pick<OrchestratorConfig, 'tlsCertFile' | 'tlsKeyFile'>): ClientTls {
  const { tlsCertFile, tlsKeyFile } = config;
  if (tlsCertFile === '' && tlsKeyFile === '') return null;
  if (tlsCertFile === '' || tlsKeyFile === '') throw new ConfigError('KLOUDAK_TLS_CERT_FILE and KLOUDAK_TLS_KEY_FILE go together: set both or neither');
  const read = (file: string, what: string): Buffer => {
    try {
      return readFileSync(file);
    } catch (err) {
      throw new ConfigError(`cannot read the TLS ${what} ${file}: ${(err as Error).message}`);
    }
  };
  const cert = read(tlsCertFile, 'certificate');
  const key = read(tlsKeyFile, 'key');
  try {
    new X509Certificate(cert);
  } catch {
    throw new ConfigError(`${tlsCertFile} holds no PEM certificate`);
  }
  try {
    createPrivateKey(key);
  } catch {
    throw new ConfigError(`${tlsKeyFile} holds no PEM private key`);
  }
  return { cert, key };
}

/** Whether `host` is reachable only from this machine (127.0.0.0/8, ::1, localhost). */
export function isLoopback(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, '').toLowerCase();
  if (h === 'localhost' || h === '::1') return true;
  if (isIP(h) === 4) return h.startsWith('127.');
  return h.startsWith('::ffff:127.');
}

/**
 * Warn, once at start, when REST and gRPC listen in plain text on an address other machines can
 * reach: tokens and passwords would cross the network readable.
 */
export function warnIfPlainText(log: Logger, host: string, tls: ClientTls): boolean {
  if (tls || isLoopback(host)) return false;
  log.warn(
    { host },
    'the API (REST, WebSocket and gRPC) listens in plain text on a non-loopback address: tokens and passwords cross the network unencrypted; set KLOUDAK_TLS_CERT_FILE and KLOUDAK_TLS_KEY_FILE',
  );
  return true;
}
