// The journald destination's field mapping, with the real native binding loaded. No journald runs
// on the CI machines (PID 1 is not systemd) and the binding drops entries silently without its
// socket, so what reaches journald is checked through a recording binding; the real one is
// exercised to prove it loads and accepts what the destination sends.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { pino } from 'pino';
import { JournaldDestination, journalEntryOf, loadJournaldBinding, type JournaldBinding } from './journald.js';
import { createAgentLogger } from './logger.js';

function recording(): { binding: JournaldBinding; entries: Array<{ method: string; message: string; fields: Record<string, string> }> } {
  const entries: Array<{ method: string; message: string; fields: Record<string, string> }> = [];
  const binding = Object.fromEntries(
    ['emerg', 'alert', 'crit', 'err', 'warning', 'notice', 'info', 'debug'].map((m) => [m, (message: string, fields: Record<string, string> = {}) => entries.push({ method: m, message, fields })]),
  ) as unknown as JournaldBinding;
  return { binding, entries };
}

describe('journald destination', () => {
  it('maps pino lines to MESSAGE, PRIORITY and the fixed fields', () => {
    const e = journalEntryOf(JSON.stringify({ level: 'warn', msg: 'command failed', component: 'runner', host_id: 'h1', vm_id: 'v1', command_id: 'c1', err: { message: 'boom', stack: 'Error: boom\n  at x' } }));
    assert.equal(e.method, 'warning');
    assert.equal(e.fields['PRIORITY'], '4');
    assert.equal(e.fields['MESSAGE'], 'command failed');
    assert.equal(e.fields['HOST_ID'], 'h1');
    assert.equal(e.fields['VM_ID'], 'v1');
    assert.equal(e.fields['COMMAND_ID'], 'c1');
    assert.equal(e.fields['COMPONENT'], 'runner');
    assert.equal(e.fields['ERR'], 'boom');
    assert.match(e.fields['STACK_TRACE']!, /at x/);
    assert.equal(journalEntryOf(JSON.stringify({ level: 60, msg: 'x' })).fields['PRIORITY'], '2');
    assert.equal(journalEntryOf(JSON.stringify({ level: 'debug', msg: 'x' })).fields['PRIORITY'], '7');
    assert.equal(journalEntryOf('not json').fields['MESSAGE'], 'not json');
  });

  it('a pino logger writes through it, with secrets redacted', () => {
    const { binding, entries } = recording();
    const { logger } = createAgentLogger({ level: 'info', target: 'journald', underSystemd: true, destination: new JournaldDestination(binding) });
    logger.child({ host_id: 'h2' }).info({ vm_id: 'v2', joinToken: 'kjt1.secret', passwordHash: '$6$x$y' }, 'hello');
    assert.equal(entries.length, 1);
    assert.equal(entries[0]!.method, 'info');
    assert.equal(entries[0]!.message, 'hello');
    assert.equal(entries[0]!.fields['HOST_ID'], 'h2');
    assert.equal(entries[0]!.fields['VM_ID'], 'v2');
    assert.ok(!entries[0]!.fields['KLOUDAK_JSON']!.includes('kjt1.secret') && !entries[0]!.fields['KLOUDAK_JSON']!.includes('$6$x$y'));
    assert.equal(entries[0]!.fields['PRIORITY'], undefined, 'the binding sets PRIORITY from the method');
  });

  it('the real native binding loads and accepts what the destination sends', () => {
    const loaded = loadJournaldBinding();
    assert.ok(loaded.binding, 'systemd-journald is installed and built');
    const dest = new JournaldDestination(loaded.binding);
    const log = pino({ level: 'info' }, dest);
    assert.doesNotThrow(() => log.error({ vm_id: 'v', command_id: 'c', err: new Error('x') }, 'through the binding'));
  });

  it('falls back to stdout when not under systemd', () => {
    const r = createAgentLogger({ level: 'info', target: 'auto', underSystemd: false });
    assert.equal(r.target, 'stdout');
    const out: string[] = [];
    const custom = createAgentLogger({ level: 'info', target: 'auto', underSystemd: false, destination: new Writable({ write: (c, _e, cb) => (out.push(String(c)), cb()) }) as never });
    custom.logger.info({ key: 'PRIVATE' }, 'x');
    assert.ok(!out.join('').includes('PRIVATE'));
  });
});
