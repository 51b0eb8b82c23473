import { pino, type Logger, type DestinationStream } from 'pino';

export type { Logger } from 'pino';

/**
 * Paths that may carry secrets anywhere in a log object. pino replaces them before
 * serialisation, so a careless `log.info({ body })` cannot leak a password or a token.
 */
export const REDACT_PATHS: readonly string[] = [
  'password',
  'passwordHash',
  'token',
  'authorization',
  'secret',
  'privateKey',
  '*.password',
  '*.passwordHash',
  '*.token',
  '*.authorization',
  '*.secret',
  '*.privateKey',
  'req.headers.authorization',
  'req.headers.token',
  'req.headers.cookie',
  'headers.authorization',
  'headers.token',
];

/** Options for {@link createLogger}. */
export interface LoggerOptions {
  /** Component name, written as the fixed `component` key. */
  component: string;
  level?: string;
  /** Where to write; stdout by default. */
  destination?: DestinationStream;
}

/** A structured JSON logger with fixed keys and secret redaction. */
export function createLogger(opts: LoggerOptions): Logger {
  return pino(
    {
      level: opts.level ?? 'info',
      base: { component: opts.component },
      redact: { paths: [...REDACT_PATHS], censor: '[redacted]' },
      errorKey: 'err',
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
    },
    opts.destination ?? pino.destination({ dest: 1, sync: false }),
  );
}
