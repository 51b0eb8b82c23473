import test from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CommandError, ProcessRunner, formatArgv, type CommandEvent } from './command-runner.js';

const node = process.execPath;

test('runs an argv without a shell and returns code, stdout and stderr', async () => {
  const r = await new ProcessRunner().run([
    node,
    '-e',
    'process.stdout.write(JSON.stringify(process.argv.slice(1))); process.stderr.write("warn")',
    '$(echo hi); rm -rf /nonexistent',
    "'quoted' \"and\" `ticks`",
  ]);
  assert.equal(r.code, 0);
  // Shell metacharacters arrive as plain bytes.
  assert.deepEqual(JSON.parse(r.stdout), ['$(echo hi); rm -rf /nonexistent', "'quoted' \"and\" `ticks`"]);
  assert.equal(r.stderr, 'warn');
});

test('a non-zero exit throws a CommandError with argv, code and the stderr tail', async () => {
  const err = await new ProcessRunner()
    .run([node, '-e', 'process.stderr.write("x".repeat(10000) + "\\nthe real reason\\n"); process.exit(3)'])
    .catch((e: unknown) => e);
  assert.ok(err instanceof CommandError);
  assert.equal(err.reason, 'exit');
  assert.equal(err.code, 3);
  assert.equal(err.signal, null);
  assert.equal(err.timedOut, false);
  assert.equal(err.program, node);
  assert.deepEqual(err.argv.slice(1, 2), ['-e']);
  assert.ok(err.stderrTail.endsWith('the real reason'));
  assert.ok(err.stderrTail.length <= 4096);
  assert.match(err.message, /exited with code 3: .*the real reason/);
  assert.ok(err.message.length < 1200, 'message stays short');
});

test('allowFailure resolves with the exit code instead of throwing', async () => {
  const r = await new ProcessRunner().run([node, '-e', 'console.log("out"); process.exit(7)'], { allowFailure: true });
  assert.deepEqual(r, { code: 7, stdout: 'out\n', stderr: '' });
});

test('a process killed by a signal fails; with allowFailure its code is 128 + signal', async () => {
  const argv = [node, '-e', 'process.kill(process.pid, "SIGTERM")'];
  const err = await new ProcessRunner().run(argv).catch((e: unknown) => e);
  assert.ok(err instanceof CommandError);
  assert.equal(err.reason, 'signal');
  assert.equal(err.signal, 'SIGTERM');
  assert.equal(err.code, null);
  const r = await new ProcessRunner().run(argv, { allowFailure: true });
  assert.equal(r.code, 143);
});

test('a run past its time limit is SIGKILLed with its children and throws timedOut', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'kloudak-runner-'));
  try {
    const pidFile = join(dir, 'pid');
    // The child ignores SIGTERM and starts a grandchild (same process group): both must die.
    const script = `
      process.on('SIGTERM', () => {});
      const c = require('node:child_process').spawn(process.execPath, ['-e', 'setInterval(() => {}, 1000)'], { stdio: 'ignore' });
      require('node:fs').writeFileSync(process.argv[1], String(c.pid));
      setInterval(() => {}, 1000);`;
    const events: CommandEvent[] = [];
    const runner = new ProcessRunner({ onEvent: (e) => events.push(e) });
    const started = Date.now();
    const err = await runner.run([node, '-e', script, pidFile], { timeoutMs: 700, allowFailure: true }).catch((e: unknown) => e);
    const took = Date.now() - started;
    assert.ok(err instanceof CommandError, 'allowFailure does not cover time-outs');
    assert.equal(err.reason, 'timeout');
    assert.equal(err.timedOut, true);
    assert.equal(err.code, null);
    assert.match(err.message, /timed out and was killed/);
    assert.ok(took >= 650 && took < 5000, `took ${took} ms`);
    const end = events.find((e) => e.event === 'end');
    assert.ok(end && end.event === 'end' && end.timedOut && end.failure === 'timeout');

    const grandchild = Number(readFileSync(pidFile, 'utf8'));
    assert.ok(grandchild > 0);
    // Killed with its group; it is then reaped (by init or whoever adopts it): poll briefly.
    let alive = true;
    for (let i = 0; i < 100 && alive; i++) {
      try {
        process.kill(grandchild, 0);
        alive = readFileSync(`/proc/${grandchild}/stat`, 'utf8').split(') ')[1]?.[0] !== 'Z';
        if (alive) await new Promise((r) => setTimeout(r, 20));
      } catch {
        alive = false;
      }
    }
    assert.equal(alive, false, 'grandchild still alive');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('input is written to stdin and never appears in errors or debug events', async () => {
  const events: CommandEvent[] = [];
  const runner = new ProcessRunner({ onEvent: (e) => events.push(e) });
  const echo = [node, '-e', 'process.stdin.pipe(process.stdout)'];
  assert.equal((await runner.run(echo, { input: 'hello\nworld' })).stdout, 'hello\nworld');
  assert.equal((await runner.run(echo, { input: new Uint8Array([0x68, 0x69]) })).stdout, 'hi');

  const secret = 's3cret-passw0rd';
  const err = await runner
    .run([node, '-e', 'process.stdin.resume(); process.stdin.on("end", () => process.exit(1))'], { input: secret })
    .catch((e: unknown) => e);
  assert.ok(err instanceof CommandError);
  assert.ok(!err.message.includes(secret));
  assert.ok(!JSON.stringify(events).includes(secret));
  const start = events.find((e) => e.event === 'start');
  assert.ok(start && start.event === 'start' && start.inputBytes === 5 + 1 + 5);
});

test('without input, stdin is /dev/null (a reader sees end of file at once)', async () => {
  const r = await new ProcessRunner().run([node, '-e', 'let n=0; process.stdin.on("data", d => n += d.length).on("end", () => console.log(n))'], {
    timeoutMs: 5000,
  });
  assert.equal(r.stdout.trim(), '0');
});

test('a process that exits without reading a large input does not break the runner', async () => {
  const r = await new ProcessRunner().run([node, '-e', 'process.exit(0)'], { input: 'x'.repeat(4 * 1024 * 1024) });
  assert.equal(r.code, 0);
});

test('a missing program is a CommandError (spawn, ENOENT), not a crash', async () => {
  const err = await new ProcessRunner().run(['kloudak-no-such-program', '--flag']).catch((e: unknown) => e);
  assert.ok(err instanceof CommandError);
  assert.equal(err.reason, 'spawn');
  assert.equal(err.code, null);
  assert.equal((err.cause as NodeJS.ErrnoException).code, 'ENOENT');
  assert.match(err.message, /^kloudak-no-such-program --flag could not be started: program not found/);
  // allowFailure does not turn "not installed" into an exit code.
  await assert.rejects(new ProcessRunner().run(['kloudak-no-such-program'], { allowFailure: true }), CommandError);
});

test('an argument with a NUL byte is refused as a spawn failure', async () => {
  const err = await new ProcessRunner().run([node, 'a\0b']).catch((e: unknown) => e);
  assert.ok(err instanceof CommandError);
  assert.equal(err.reason, 'spawn');
});

test('an empty argv is a programming error', async () => {
  await assert.rejects(new ProcessRunner().run([]), TypeError);
});

test('stdout beyond the limit kills the process and fails; stderr keeps its tail', async () => {
  const runner = new ProcessRunner({ maxOutputBytes: 1000 });
  const err = await runner
    .run([node, '-e', 'const b = "y".repeat(100); setInterval(() => process.stdout.write(b), 1)'], { timeoutMs: 10_000 })
    .catch((e: unknown) => e);
  assert.ok(err instanceof CommandError);
  assert.equal(err.reason, 'output_limit');

  const r = await runner.run([node, '-e', 'process.stderr.write("a".repeat(5000) + "END")']);
  assert.equal(r.stderr.length, 1000);
  assert.ok(r.stderr.endsWith('aEND'));
});

test('multi-byte characters split across chunks decode intact', async () => {
  const r = await new ProcessRunner().run([
    node,
    '-e',
    'const b = Buffer.from("żółw🐢"); process.stdout.write(b.subarray(0, 3)); setTimeout(() => process.stdout.write(b.subarray(3)), 20)',
  ]);
  assert.equal(r.stdout, 'żółw🐢');
});

test('debug events describe each run; a throwing hook changes nothing', async () => {
  const events: CommandEvent[] = [];
  const runner = new ProcessRunner({
    onEvent: (e) => {
      events.push(e);
      throw new Error('hook failed');
    },
  });
  // The process takes at least 300 ms (a timer): the reported duration must cover it and fit
  // inside the time the call took as seen from here.
  const script = 'setTimeout(() => { console.log("ok"); console.error("e") }, 300)';
  const before = performance.now();
  const r = await runner.run([node, '-e', script], { timeoutMs: 9000 });
  const wallMs = performance.now() - before;
  assert.equal(r.stdout, 'ok\n');
  assert.equal(events.length, 2);
  const [start, end] = events;
  assert.deepEqual(start, { event: 'start', argv: [node, '-e', script], timeoutMs: 9000, inputBytes: 0 });
  assert.ok(end && end.event === 'end');
  assert.deepEqual(end.argv, [node, '-e', script]);
  assert.equal(end.code, 0);
  assert.equal(end.signal, null);
  assert.equal(end.timedOut, false);
  assert.equal(end.stdoutBytes, 3);
  assert.equal(end.stderrBytes, 2);
  assert.equal(end.failure, undefined);
  assert.ok(end.durationMs >= 300 && end.durationMs <= Math.ceil(wallMs), `durationMs ${end.durationMs} is within [300, ${wallMs.toFixed(1)}]`);
});

test('formatArgv quotes what a reader could misread and cuts long argv', () => {
  assert.equal(formatArgv(['ovs-vsctl', '--timeout=5', 'add-br', 'br0']), 'ovs-vsctl --timeout=5 add-br br0');
  assert.equal(formatArgv(['echo', 'a b', '']), 'echo "a b" ""');
  assert.ok(formatArgv(['x', 'y'.repeat(1000)]).length <= 401);
});

test('withContext prefixes the message and keeps the fields', () => {
  const e = new CommandError({ argv: ['ovs-vsctl', 'add-br', 'b'], reason: 'exit', code: 1, stderr: 'boom\n' });
  const c = e.withContext('cannot create bridge b');
  assert.equal(c.message, 'cannot create bridge b: ovs-vsctl add-br b exited with code 1: boom');
  assert.equal(c.code, 1);
  assert.equal(c.reason, 'exit');
  assert.equal(c.stderrTail, 'boom');
  assert.equal(c.cause, e);
});
