// The journald destination: its field mapping (pure), the logger through a recording binding, and
// the real thing — the agent's logger, the native binding and a real systemd-journald, read back
// with `journalctl -o json`. No journald runs on the CI machines (PID 1 is not systemd) and the
// binding drops entries silently without its socket, so the test starts its own journald, in a
// mount and PID namespace of its own: a tmpfs over /run (the journal's sockets) and over
// /var/log/journal hides the host's, nothing it writes outlives the namespace, and no journald
// that might run on the host is touched. Needs root (namespaces, mounts) and the systemd package.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { journalEntryOf, JournaldDestination, loadJournaldBinding, type JournaldBinding } from './journald.js';
import { createAgentLogger } from './logger.js';

const JOURNALD = '/lib/systemd/systemd-journald';

/**
 * Runs `node child.mjs` against a journald of its own (see the file comment) and returns what
 * `journalctl -o json` shows for HOST_ID=`marker` once `expect` entries are there (or after 5 s).
 */
function throughRealJournald(childSource: string, marker: string, expect: number): { entries: Array<Record<string, unknown>>; raw: string } {
  assert.ok(existsSync(JOURNALD), `${JOURNALD} is missing (apt-get install systemd)`);
  const work = mkdtempSync(join(tmpdir(), 'kloudak-journald-'));
  try {
    const child = join(work, 'child.mjs');
    writeFileSync(child, childSource);
    const script = `
      set -eu
      mount -t tmpfs -o mode=0755 tmpfs /run
      mkdir -p /run/systemd/journal /run/log/journal
      if [ -d /var/log/journal ]; then mount -t tmpfs -o mode=0755 tmpfs /var/log/journal; fi
      ${JOURNALD} &
      i=0
      while [ ! -S /run/systemd/journal/socket ]; do
        i=$((i + 1)); [ "$i" -le 100 ] || { echo "journald did not open its socket" >&2; exit 1; }
        sleep 0.05
      done
      "$1" "$2"
      i=0
      while :; do
        out=$(journalctl -o json --no-pager "HOST_ID=$3" 2>/dev/null || true)
        n=$(printf '%s' "$out" | grep -c . || true)
        if [ "$n" -ge "$4" ] || [ "$i" -ge 100 ]; then break; fi
        i=$((i + 1)); sleep 0.05
      done
      printf '%s\n' "$out"
    `;
    // --pid --fork --kill-child: journald dies with the script, however the script ends.
    const r = spawnSync(
      'unshare',
      ['--mount', '--propagation', 'private', '--pid', '--fork', '--kill-child', '--mount-proc', 'bash', '-c', script, 'journald-test', process.execPath, child, marker, String(expect)],
      { encoding: 'utf8', timeout: 60_000 },
    );
    if (r.error) throw r.error;
    assert.equal(r.status, 0, `the journald run failed (exit ${r.status ?? r.signal}):\n${r.stdout}\n${r.stderr}`);
    const entries = r.stdout
      .split('\n')
      .filter((l) => l.trim() !== '')
      .map((l) => JSON.parse(l) as Record<string, unknown>);
    return { entries, raw: r.stdout };
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

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
    const json = JSON.parse(entries[0]!.fields['KLOUDAK_JSON'] ?? 'null') as Record<string, unknown>;
    assert.equal(json['msg'], 'hello');
    assert.equal(json['joinToken'], '[redacted]');
    assert.equal(json['passwordHash'], '[redacted]');
    assert.doesNotMatch(JSON.stringify(entries), /kjt1\.secret|\$6\$x\$y/);
    assert.equal(entries[0]!.fields['PRIORITY'], undefined, 'the binding sets PRIORITY from the method');
  });

  it('the agent logger reaches a real journald: message, priority, fields, stack trace; secrets redacted', () => {
    assert.ok(loadJournaldBinding().binding, 'systemd-journald is installed and built for this node');
    const marker = `h-${process.pid}-${Date.now()}`;
    const token = `kjt1.${marker}.TOPSECRET-token`;
    const hash = '$6$saltsalt$TOPSECRETHASH';
    const logger = new URL('./logger.js', import.meta.url).href;
    const child = `
      const { createAgentLogger } = await import(${JSON.stringify(logger)});
      const { logger, target } = createAgentLogger({ level: 'info', target: 'journald', underSystemd: true });
      if (target !== 'journald') { console.error('logger target is ' + target); process.exit(3); }
      const log = logger.child({ host_id: ${JSON.stringify(marker)} });
      log.error({ vm_id: 'vm-1', command_id: 'cmd-1', joinToken: ${JSON.stringify(token)}, passwordHash: ${JSON.stringify(hash)}, err: new Error('disk on fire') }, 'create failed');
      log.info({ vm_id: 'vm-2' }, 'created');
      log.debug('below the level: never sent');
    `;
    const { entries, raw } = throughRealJournald(child, marker, 2);
    assert.equal(entries.length, 2, `two entries in the journal:\n${raw}`);
    const [err, info] = entries;
    assert.equal(err!['MESSAGE'], 'create failed');
    assert.equal(err!['PRIORITY'], '3');
    assert.equal(err!['_TRANSPORT'], 'journal');
    assert.equal(err!['COMPONENT'], 'agent');
    assert.equal(err!['HOST_ID'], marker);
    assert.equal(err!['VM_ID'], 'vm-1');
    assert.equal(err!['COMMAND_ID'], 'cmd-1');
    assert.equal(err!['ERR'], 'disk on fire');
    assert.match(String(err!['STACK_TRACE']), /^Error: disk on fire\n\s+at /);
    const json = JSON.parse(String(err!['KLOUDAK_JSON'])) as Record<string, unknown>;
    assert.equal(json['joinToken'], '[redacted]');
    assert.equal(json['passwordHash'], '[redacted]');
    assert.equal(info!['MESSAGE'], 'created');
    assert.equal(info!['PRIORITY'], '6');
    assert.equal(info!['VM_ID'], 'vm-2');
    // Nowhere in the journal, in any field.
    assert.ok(!raw.includes('TOPSECRET'), `a secret reached the journal:\n${raw}`);
  });

  it('falls back to stdout when not under systemd', () => {
    const r = createAgentLogger({ level: 'info', target: 'auto', underSystemd: false });
    assert.equal(r.target, 'stdout');
    const out: string[] = [];
    const custom = createAgentLogger({ level: 'info', target: 'auto', underSystemd: false, destination: new Writable({ write: (c, _e, cb) => (out.push(String(c)), cb()) }) as never });
    custom.logger.info({ key: 'PRIVATE', vm_id: 'v3' }, 'x');
    assert.equal(out.length, 1, 'one line written');
    const line = JSON.parse(out[0]!) as Record<string, unknown>;
    assert.equal(line['msg'], 'x');
    assert.equal(line['vm_id'], 'v3');
    assert.equal(line['key'], '[redacted]');
    assert.ok(!out[0]!.includes('PRIVATE'));
  });
});
