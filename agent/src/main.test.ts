// The daemon's exit codes, as systemd sees them (the unit has RestartPreventExitStatus=2): the
// compiled main.js run as a process.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const MAIN = fileURLToPath(new URL('./main.js', import.meta.url));

/** Runs main.js; resolves with its exit code and output. `onOutput` may signal it. */
function run(args: string[], env: Record<string, string>, onOutput?: (out: string, kill: (s: NodeJS.Signals) => void) => void): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [MAIN, ...args], { env: { PATH: process.env['PATH'] ?? '', KLOUDAK_AGENT_LOG_TARGET: 'stdout', ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    const kill = (s: NodeJS.Signals) => child.kill(s);
    const take = (d: Buffer) => {
      out += d.toString();
      onOutput?.(out, kill);
    };
    child.stdout.on('data', take);
    child.stderr.on('data', take);
    const guard = setTimeout(() => child.kill('SIGKILL'), 20_000);
    child.once('exit', (code) => {
      clearTimeout(guard);
      resolve({ code, out });
    });
  });
}

describe('kloudak-agent exit codes', () => {
  let dir: string;
  let empty: string;
  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'kmain-'));
    empty = join(dir, 'agent.yaml');
    writeFileSync(empty, '');
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('exits 2 on an invalid setting, naming it', async () => {
    const r = await run(['--config', empty], { KLOUDAK_AGENT_HEARTBEAT_MS: 'often' });
    assert.equal(r.code, 2, r.out);
    assert.match(r.out, /heartbeat/i);
  });

  it('exits 2 when a first start has no orchestrator or no join token (no restart loop under systemd)', async () => {
    const noOrch = await run(['--config', empty], { KLOUDAK_AGENT_DATA_DIR: join(dir, 'a') });
    assert.equal(noOrch.code, 2, noOrch.out);
    assert.match(noOrch.out, /KLOUDAK_AGENT_ORCHESTRATOR/);
    const noToken = await run(['--config', empty], { KLOUDAK_AGENT_DATA_DIR: join(dir, 'b'), KLOUDAK_AGENT_ORCHESTRATOR: '127.0.0.1:1' });
    assert.equal(noToken.code, 2, noToken.out);
    assert.match(noToken.out, /KLOUDAK_AGENT_JOIN_TOKEN/);
  });

  it('exits 1 when it cannot start: a malformed join token', async () => {
    const r = await run(['--config', empty], { KLOUDAK_AGENT_DATA_DIR: join(dir, 'c'), KLOUDAK_AGENT_ORCHESTRATOR: '127.0.0.1:1', KLOUDAK_AGENT_JOIN_TOKEN: 'not-a-token' });
    assert.equal(r.code, 1, r.out);
    assert.ok(!r.out.includes('not-a-token'), 'the token is never echoed');
  });

  it('exits 0 on SIGTERM while it still waits for an unreachable orchestrator to enroll it', async () => {
    // A port nobody listens on: enrollment fails as "unreachable" and is retried with backoff.
    const server: Server = createServer();
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const port = (server.address() as { port: number }).port;
    await new Promise<void>((r) => server.close(() => r()));
    let sent = false;
    const secret = 'S'.repeat(43);
    const token = `kjt1.${'a'.repeat(32)}.${secret}.${'c'.repeat(64)}`;
    const r = await run(['--config', empty], { KLOUDAK_AGENT_DATA_DIR: join(dir, 'd'), KLOUDAK_AGENT_ORCHESTRATOR: `127.0.0.1:${port}`, KLOUDAK_AGENT_JOIN_TOKEN: token }, (out, kill) => {
      if (!sent && /retrying/.test(out)) {
        sent = true;
        kill('SIGTERM');
      }
    });
    assert.ok(sent, `it waited and retried:\n${r.out}`);
    assert.equal(r.code, 0, r.out);
    assert.ok(!r.out.includes(secret), 'the secret part of the token never appears');
  });
});
