/**
 * The agent's logger: pino with Kloudak's fixed keys and redaction (plus the agent's own secrets:
 * the join token and private keys), written to journald when systemd started the agent and to
 * stdout otherwise.
 */
import { pino, type DestinationStream, type Logger } from 'pino';
import { REDACT_PATHS } from '@kloudak/common';
import { JournaldDestination, loadJournaldBinding } from './journald.js';

/** Extra redaction paths: what only the agent handles. */
export const AGENT_REDACT_PATHS: readonly string[] = [
  'joinToken',
  '*.joinToken',
  'join_token',
  '*.join_token',
  'privateKeyPem',
  '*.privateKeyPem',
  'clientKey',
  '*.clientKey',
  'key',
  '*.key',
];

/** Options of {@link createAgentLogger}. */
export interface AgentLoggerOptions {
  level: string;
  /** `auto`: journald when `underSystemd`, stdout otherwise. */
  target: 'auto' | 'journald' | 'stdout';
  underSystemd: boolean;
  /** Overrides the destination (tests). */
  destination?: DestinationStream;
}

/** Builds the logger; `target` says where it writes, `fallbackReason` why journald was not used. */
export function createAgentLogger(opts: AgentLoggerOptions): { logger: Logger; target: 'journald' | 'stdout' | 'custom'; fallbackReason?: string } {
  let destination: DestinationStream | undefined = opts.destination;
  let target: 'journald' | 'stdout' | 'custom' = destination ? 'custom' : 'stdout';
  let fallbackReason: string | undefined;
  const wantJournald = opts.target === 'journald' || (opts.target === 'auto' && opts.underSystemd);
  if (!destination && wantJournald) {
    const loaded = loadJournaldBinding();
    if (loaded.binding) {
      destination = new JournaldDestination(loaded.binding);
      target = 'journald';
    } else {
      fallbackReason = loaded.reason;
    }
  }
  const logger = pino(
    {
      level: opts.level,
      base: { component: 'agent' },
      redact: { paths: [...REDACT_PATHS, ...AGENT_REDACT_PATHS], censor: '[redacted]' },
      errorKey: 'err',
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
    },
    destination ?? pino.destination({ dest: 1, sync: true }),
  );
  if (fallbackReason !== undefined) logger.warn({ reason: fallbackReason }, 'journald binding unavailable; logging to stdout');
  return fallbackReason === undefined ? { logger, target } : { logger, target, fallbackReason };
}
