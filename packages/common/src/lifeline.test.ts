import { describe, it, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { closeSync, constants, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { watchLifeline } from './lifeline.js';
import { ConfigError } from './errors.js';

const dir = mkdtempSync(join(tmpdir(), 'kloudak-lifeline-'));
after(() => rmSync(dir, { recursive: true, force: true }));
let n = 0;

/** A real FIFO: [read end, write end] (the write end is opened read-write so opening never blocks). */
function fifo(): [number, number] {
  const path = join(dir, `fifo-${n++}`);
  execFileSync('mkfifo', [path]);
  const w = openSync(path, constants.O_RDWR);
  const r = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK);
  rmSync(path);
  return [r, w];
}

function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let t: NodeJS.Timeout | undefined;
  return Promise.race([p, new Promise<T>((_, reject) => (t = setTimeout(() => reject(new Error(`${what} within ${ms} ms`)), ms)))]).finally(() => clearTimeout(t));
}

describe('watchLifeline', () => {
  it('calls onLost once when the last write end closes, not before', async () => {
    const [r, w] = fifo();
    const calls: string[] = [];
    let resolve!: () => void;
    const lost = new Promise<void>((res) => (resolve = res));
    watchLifeline(r, (reason) => {
      calls.push(reason);
      resolve();
    });
    // Data (nobody should write, but) is ignored, and an open write end is not a loss.
    writeFileSync(w, 'x');
    await new Promise((res) => setTimeout(res, 300));
    assert.deepEqual(calls, [], 'not lost while the write end is open');
    closeSync(w);
    await within(lost, 5000, 'onLost');
    await new Promise((res) => setTimeout(res, 100));
    assert.equal(calls.length, 1);
    assert.match(calls[0] ?? '', /end of file/);
  });

  it('close() stops the watch without calling onLost', async () => {
    const [r, w] = fifo();
    let called = false;
    const l = watchLifeline(r, () => (called = true));
    l.close();
    l.close();
    closeSync(w);
    await new Promise((res) => setTimeout(res, 300));
    assert.equal(called, false);
  });

  it('refuses a descriptor that is not an open pipe', () => {
    const file = join(dir, 'plain');
    writeFileSync(file, '');
    const fd = openSync(file, 'r');
    try {
      assert.throws(() => watchLifeline(fd, () => undefined), (e: Error) => e instanceof ConfigError && /not a pipe/.test(e.message));
    } finally {
      closeSync(fd);
    }
    assert.throws(() => watchLifeline(fd, () => undefined), (e: Error) => e instanceof ConfigError && /not open/.test(e.message));
    assert.throws(() => watchLifeline(-1, () => undefined), ConfigError);
  });

  it('a child process stops by itself when the shell that started it is SIGKILLed', async () => {
    // The shape of scripts/up.sh: the shell holds the FIFO's write end, the child gets only the
    // read end (`{w}>&-`) and runs in its own session, so nothing signals it.
    const mod = new URL('./lifeline.js', import.meta.url).href;
    const child = `
      import { watchLifeline } from ${JSON.stringify(mod)};
      const keepAlive = setInterval(() => undefined, 1000);
      watchLifeline(Number(process.env.LIFELINE_FD), (reason) => {
        console.log('lost: ' + reason);
        clearInterval(keepAlive);
      });
      console.log('watching ' + process.pid);`;
    const script = `
      set -euo pipefail
      d="$(mktemp -d)"; mkfifo "$d/f"
      exec {w}<>"$d/f"; exec {r}<"$d/f"; rm -rf "$d"
      LIFELINE_FD=$r setsid ${JSON.stringify(process.execPath)} --input-type=module -e "$CHILD" {w}>&- &
      wait`;
    const sh = spawn('bash', ['-c', script], { env: { ...process.env, CHILD: child }, stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    let childPid = 0;
    const watching = new Promise<void>((res) =>
      sh.stdout.on('data', (d: Buffer) => {
        out += d.toString();
        const m = /watching (\d+)/.exec(out);
        if (m) {
          childPid = Number(m[1]);
          res();
        }
      }),
    );
    const outClosed = new Promise<void>((res) => sh.stdout.once('close', () => res()));
    try {
      await within(watching, 10_000, 'the child to start watching');
      await new Promise((res) => setTimeout(res, 300));
      assert.doesNotMatch(out, /lost/, 'the child keeps running while the shell lives');
      sh.kill('SIGKILL');
      // stdout closes when the child, its last holder, exits.
      await within(outClosed, 5000, 'the child to exit after its parent was SIGKILLed');
      assert.match(out, /lost: end of file/);
      // Gone, or a zombie waiting for PID 1 (which reaps late here).
      let state = 'gone';
      try {
        state = readFileSync(`/proc/${childPid}/stat`, 'utf8').replace(/^.*\) /s, '').charAt(0);
      } catch {
        // gone
      }
      assert.ok(state === 'gone' || state === 'Z', `the child has exited (state ${state})`);
    } finally {
      if (childPid) {
        try {
          process.kill(childPid, 'SIGKILL');
        } catch {
          // gone, as it should be
        }
      }
      sh.kill('SIGKILL');
    }
  });
});
