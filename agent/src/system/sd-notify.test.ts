// sd_notify through the real systemd-notify, received on a real unix datagram socket standing in
// for systemd's (python3 binds it: Node has no unix datagram sockets).
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { waitFor } from '@kloudak/testkit';
import { ProcessRunner } from './command-runner.js';
import { SdNotifier } from './sd-notify.js';

const LISTENER = `
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
print("listening", flush=True)
while True:
    print(s.recv(4096).decode().replace("\\n", "|"), flush=True)
`;

describe('sd_notify (systemd-notify to NOTIFY_SOCKET)', () => {
  let dir: string;
  let socketPath: string;
  let listener: ChildProcess;
  let received = '';

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'ksdn-'));
    socketPath = join(dir, 'notify');
    listener = spawn('python3', ['-c', LISTENER, socketPath], { stdio: ['ignore', 'pipe', 'inherit'] });
    listener.stdout?.on('data', (d: Buffer) => (received += d.toString()));
    await waitFor(async () => received.includes('listening') && existsSync(socketPath), 10_000, 'the notify socket');
  });
  after(() => {
    listener?.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  });

  it('sends READY=1, STATUS= (one line) and STOPPING=1 to the socket systemd gave', async () => {
    // systemd-notify reads NOTIFY_SOCKET from its environment, inherited from ours.
    const before = process.env['NOTIFY_SOCKET'];
    process.env['NOTIFY_SOCKET'] = socketPath;
    try {
      const n = new SdNotifier(new ProcessRunner(), socketPath);
      assert.equal(n.enabled, true);
      await n.ready();
      await n.status('connected\nto orchestrator');
      await n.stopping();
    } finally {
      if (before === undefined) delete process.env['NOTIFY_SOCKET'];
      else process.env['NOTIFY_SOCKET'] = before;
    }
    await waitFor(async () => received.includes('STOPPING=1'), 5000, 'STOPPING=1');
    const lines = received.split('\n').filter((l) => l && l !== 'listening' && !l.startsWith('BARRIER'));
    assert.deepEqual(lines, ['READY=1', 'STATUS=connected to orchestrator', 'STOPPING=1']);
  });

  it('does nothing without NOTIFY_SOCKET (not started by systemd as Type=notify)', async () => {
    // systemd-notify's BARRIER=1 after each message may still be arriving: compare the rest.
    const messages = () => received.split('\n').filter((l) => !l.startsWith('BARRIER')).join('\n');
    const before = messages();
    const n = new SdNotifier(new ProcessRunner(), undefined);
    assert.equal(n.enabled, false);
    await n.ready();
    await n.stopping();
    await new Promise((r) => setTimeout(r, 200));
    assert.equal(messages(), before);
  });
});
