/**
 * Test helpers that make sure a real libvirtd is running (this machine has no systemd, so the
 * daemons are started by hand: `virtlogd -d; libvirtd -d`), and that stop it for reconnection
 * tests. A missing libvirt installation is an error, never a skipped test.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import net from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { DEFAULT_SOCKET_PATH } from '../client.js';

const LIBVIRTD_PID_FILE = '/run/libvirtd.pid';
const VIRTLOGD_PID_FILE = '/run/virtlogd.pid';

/** Whether something accepts connections on the socket. */
export function socketAccepts(path = DEFAULT_SOCKET_PATH): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.createConnection(path);
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

/** Whether a process exists and is not a zombie (a daemonised process may wait to be reaped). */
function alive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Format: "pid (comm) S ..."; comm may hold spaces, so look after the last ')'.
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
}

/** Pid from a daemon's pid file, if that process is alive and has the expected name. */
export function daemonPid(pidFile: string, name: string): number | null {
  if (!existsSync(pidFile)) return null;
  const pid = Number.parseInt(readFileSync(pidFile, 'utf8').trim(), 10);
  if (!Number.isInteger(pid) || pid <= 0) return null;
  try {
    return alive(pid) && readFileSync(`/proc/${pid}/comm`, 'utf8').trim() === name ? pid : null;
  } catch {
    return null; // no such process
  }
}

/**
 * Run a command with every file descriptor above 2 closed: the daemons started here outlive the
 * test, and must not keep what this process inherited open (a test runner's lock or pipe).
 */
function run(cmd: string, args: string[]): void {
  const closeFds = 'for fd in /proc/self/fd/*; do fd=${fd##*/}; [ "$fd" -gt 2 ] 2>/dev/null && eval "exec $fd>&-"; done; exec "$0" "$@"';
  const r = spawnSync('/bin/bash', ['-c', closeFds, cmd, ...args], { stdio: ['ignore', 'pipe', 'pipe'], encoding: 'utf8' });
  if (r.error) {
    throw new Error(
      `cannot run ${cmd}: ${r.error.message} (install libvirt: apt-get install libvirt-daemon-system qemu-system-x86)`,
    );
  }
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${r.status}: ${r.stderr}`);
}

/**
 * Makes sure libvirtd (and virtlogd, which qemu domains need) run and the socket accepts
 * connections; starts them if not. Throws if they cannot be started within `timeoutMs`.
 */
export async function ensureLibvirtd(timeoutMs = 20_000): Promise<void> {
  if (daemonPid(VIRTLOGD_PID_FILE, 'virtlogd') === null) run('virtlogd', ['-d']);
  // A live libvirtd whose socket does not answer yet is starting up: wait for it below.
  if (daemonPid(LIBVIRTD_PID_FILE, 'libvirtd') === null) run('libvirtd', ['-d']);
  const deadline = Date.now() + timeoutMs;
  while (!(await socketAccepts())) {
    if (Date.now() > deadline) throw new Error(`libvirtd did not accept connections on ${DEFAULT_SOCKET_PATH} within ${timeoutMs} ms`);
    await sleep(100);
  }
}

/**
 * Stops libvirtd by the pid in its pid file (SIGTERM, then SIGKILL after `timeoutMs`) and waits
 * until the process is gone. Returns the pid it stopped.
 */
export async function stopLibvirtd(timeoutMs = 15_000): Promise<number> {
  const pid = daemonPid(LIBVIRTD_PID_FILE, 'libvirtd');
  if (pid === null) throw new Error('libvirtd is not running (no live pid in /run/libvirtd.pid)');
  process.kill(pid, 'SIGTERM');
  const deadline = Date.now() + timeoutMs;
  while (alive(pid)) {
    if (Date.now() > deadline) {
      process.kill(pid, 'SIGKILL');
      await sleep(200);
      break;
    }
    await sleep(50);
  }
  return pid;
}
