/**
 * A pino destination that writes each log line to journald through the native systemd-journald
 * binding, with structured fields: MESSAGE, PRIORITY (from pino's level), COMPONENT, HOST_ID,
 * VM_ID, COMMAND_ID, ERR / STACK_TRACE for errors, and the whole JSON line in KLOUDAK_JSON so
 * nothing is lost. No maintained pino transport for journald exists, hence this small one.
 *
 * The binding is native and optional: {@link loadJournaldBinding} returns null when it cannot be
 * loaded (not installed next to a bundle, built for another Node ABI), and the caller falls back
 * to stdout.
 */
import { createRequire } from 'node:module';
import type { DestinationStream } from 'pino';

/** The part of the systemd-journald binding this destination uses (its static level methods). */
export interface JournaldBinding {
  emerg(message: string, fields?: Record<string, string>): void;
  alert(message: string, fields?: Record<string, string>): void;
  crit(message: string, fields?: Record<string, string>): void;
  err(message: string, fields?: Record<string, string>): void;
  warning(message: string, fields?: Record<string, string>): void;
  notice(message: string, fields?: Record<string, string>): void;
  info(message: string, fields?: Record<string, string>): void;
  debug(message: string, fields?: Record<string, string>): void;
}

/** The binding, or null (with the reason) when it cannot be loaded. */
export function loadJournaldBinding(): { binding: JournaldBinding } | { binding: null; reason: string } {
  // The module name goes through a variable so that bundlers leave the require to run time:
  // the native addon cannot be bundled, and its absence must only cost journald logging.
  const name = 'systemd-journald';
  try {
    // In a CommonJS bundle `require` exists (and import.meta.url does not); in ESM, the reverse.
    const req = typeof require === 'function' ? require : createRequire(import.meta.url);
    return { binding: req(name) as JournaldBinding };
  } catch (err) {
    return { binding: null, reason: (err as Error).message };
  }
}

/** syslog priorities by pino level number. */
export function priorityOf(level: number): { priority: number; method: keyof JournaldBinding } {
  if (level >= 60) return { priority: 2, method: 'crit' }; // fatal
  if (level >= 50) return { priority: 3, method: 'err' };
  if (level >= 40) return { priority: 4, method: 'warning' };
  if (level >= 30) return { priority: 6, method: 'info' };
  return { priority: 7, method: 'debug' }; // debug, trace
}

const LEVEL_NUMBERS: Record<string, number> = { trace: 10, debug: 20, info: 30, warn: 40, error: 50, fatal: 60 };

/** One journal entry: the message, its priority and its fields (PRIORITY and MESSAGE included). */
export interface JournalEntry {
  method: keyof JournaldBinding;
  message: string;
  fields: Record<string, string>;
}

/** Maps one pino JSON line to a journal entry. Lines that are not JSON objects become plain info messages. */
export function journalEntryOf(line: string): JournalEntry {
  let obj: Record<string, unknown>;
  try {
    const parsed: unknown = JSON.parse(line);
    if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) throw new Error('not an object');
    obj = parsed as Record<string, unknown>;
  } catch {
    return { method: 'info', message: line.trimEnd(), fields: { PRIORITY: '6', MESSAGE: line.trimEnd() } };
  }
  const rawLevel = obj['level'];
  const level = typeof rawLevel === 'number' ? rawLevel : (LEVEL_NUMBERS[String(rawLevel)] ?? 30);
  const { priority, method } = priorityOf(level);
  const err = obj['err'] as { message?: unknown; stack?: unknown } | undefined;
  const msg = typeof obj['msg'] === 'string' ? obj['msg'] : typeof err?.message === 'string' ? err.message : '';
  const fields: Record<string, string> = { PRIORITY: String(priority), MESSAGE: msg };
  const copy: Array<[string, string]> = [
    ['component', 'COMPONENT'],
    ['host_id', 'HOST_ID'],
    ['vm_id', 'VM_ID'],
    ['command_id', 'COMMAND_ID'],
  ];
  for (const [key, field] of copy) {
    const v = obj[key];
    if (v !== undefined && v !== null && v !== '') fields[field] = String(v);
  }
  if (err && typeof err === 'object') {
    if (typeof err.message === 'string') fields['ERR'] = err.message;
    if (typeof err.stack === 'string') fields['STACK_TRACE'] = err.stack;
  }
  fields['KLOUDAK_JSON'] = line.trimEnd();
  return { method, message: msg, fields };
}

/** A pino destination writing to journald through `binding`. */
export class JournaldDestination implements DestinationStream {
  constructor(private readonly binding: JournaldBinding) {}

  write(line: string): void {
    const { method, message, fields } = journalEntryOf(line);
    // The binding sets PRIORITY from the method and refuses it among the fields; MESSAGE is its first argument.
    const rest: Record<string, string> = {};
    for (const [k, v] of Object.entries(fields)) if (k !== 'PRIORITY' && k !== 'MESSAGE') rest[k] = v;
    try {
      this.binding[method](message === '' ? ' ' : message, rest);
    } catch {
      // A logger must never throw into the code that logs; journald being gone loses the line.
    }
  }
}
