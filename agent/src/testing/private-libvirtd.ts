/**
 * Test helper: several real QEMU "hosts" on one machine. Each is a private, root, monolithic
 * libvirtd (Debian 12 has no virtqemud) in a mount namespace of its own, where private temporary
 * directories are bind-mounted over /run/libvirt, /var/lib/libvirt, /var/cache/libvirt,
 * /var/log/libvirt and /etc/libvirt. Its sockets live in a directory that is NOT mounted over, so
 * the rest of the machine (our TypeScript client, `socketPath`) reaches them; its pid file is its
 * own (the default /run/libvirtd.pid belongs to the machine's libvirtd).
 *
 *   const shared = await createSharedDir('kss');               // the "shared storage"
 *   const a = await startPrivateLibvirtd({ name: 'a' });       // t.after(() => a.stop())
 *   const lv = await a.connect();
 *   const pool = await defineDirPool(lv, 'shared', shared.dir);
 *
 * Each daemon's qemu driver runs with `lock_manager = "lockd"` and a virtlockd of its own, started
 * in the same namespace (its socket is the namespace's /run/libvirt/virtlockd-sock). The locks are
 * fcntl locks taken on the disk files themselves (no lockspace directory), so two daemons pointing
 * at the same file on the shared directory exclude each other exactly as two hosts on NFS would.
 *
 * The private configuration also drops what a second daemon on one machine must not share with the
 * first: no virtlogd (`stdio_handler = "file"`), no cgroups (domain cgroups are named by domain id
 * and name, which two daemons can both use), no per-domain mount namespace, no xattr ownership
 * memory on files another daemon also labels, no networks, no autostart.
 *
 * stop() kills the daemon, every QEMU it started (from its pid files), and its virtlockd, waits for
 * them, and removes the directories; the namespace and its mounts vanish with their last process.
 * Needs root, util-linux's unshare, libvirt-daemon-system and qemu-system-x86.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmodSync, cpSync, existsSync, mkdirSync, mkdtempSync, openSync, closeSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { Flags, Libvirt, type StoragePoolRef } from '@kloudak/libvirt';
import { escapeXml } from '../xml/escape.js';

/** The directories bind-mounted over the machine's own, by their name under the daemon's dir. */
const PRIVATE_MOUNTS: ReadonlyArray<readonly [string, string]> = [
  ['run', '/run/libvirt'],
  ['lib', '/var/lib/libvirt'],
  ['cache', '/var/cache/libvirt'],
  ['log', '/var/log/libvirt'],
  ['etc', '/etc/libvirt'],
];

/** Where the machine's libvirtd keeps its QEMU capabilities cache (copied, to skip a probe of ~1 s). */
const CAPS_CACHE = '/var/cache/libvirt/qemu/capabilities';

/** Options of {@link startPrivateLibvirtd}. */
export interface PrivateLibvirtdOptions {
  /** Short name (letters, digits, dashes), in the directory name and the logs. */
  name: string;
  /**
   * `lockd` (default): the qemu driver takes virtlockd's locks on every disk; `none`: no lock
   * manager (what a host without it would do: only QEMU's own image locking is left).
   */
  lockManager?: 'lockd' | 'none';
  /** Extra lines for qemu.conf. */
  qemuConf?: readonly string[];
  /** How long start() waits for the socket (default 20 s). */
  startTimeoutMs?: number;
}

/** A running private libvirtd. */
export interface PrivateLibvirtd {
  readonly name: string;
  /** Its directory: the private mounts' sources, its sockets, pid files and logs. */
  readonly dir: string;
  /** libvirtd's read-write socket, reachable from the root mount namespace. */
  readonly socketPath: string;
  /** The URI to open on that socket. */
  readonly uri: 'qemu:///system';
  /** The namespace's /run/libvirt/qemu, seen from outside: QEMU pid files (`<domain>.pid`). */
  readonly qemuRunDir: string;
  /** libvirtd's pid. */
  readonly pid: number;
  /** virtlockd's pid (null without the lock manager). */
  readonly virtlockdPid: number | null;
  /** A new connection to this daemon (the caller closes it). */
  connect(): Promise<Libvirt>;
  /** Pids of the QEMU processes it started that are still alive. */
  qemuPids(): number[];
  /** libvirtd's and virtlockd's logs. */
  logs(): string;
  /** Kills everything it started (daemon, QEMUs, virtlockd) and removes its directory. Idempotent. */
  stop(): Promise<void>;
}

/** Whether a process exists and is not a zombie (a daemonised QEMU waits for PID 1 to reap it). */
export function processAlive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
}

function readPid(file: string): number | null {
  try {
    const pid = Number.parseInt(readFileSync(file, 'utf8').trim(), 10);
    return Number.isInteger(pid) && pid > 0 ? pid : null;
  } catch {
    return null;
  }
}

/** The process's executable name, or null when it is gone. */
function commOf(pid: number): string | null {
  try {
    return readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
  } catch {
    return null;
  }
}

function socketAccepts(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.createConnection(path);
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

async function waitGone(pids: readonly number[], timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (pids.some(processAlive)) {
    if (Date.now() > deadline) return false;
    await sleep(25);
  }
  return true;
}

function kill(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(pid, signal);
  } catch {
    // already gone
  }
}

/** The script run inside the new mount namespace: bind mounts, virtlockd, then exec libvirtd. */
const NAMESPACE_SCRIPT = [
  'set -e',
  'dir=$1; shift',
  // Every other argument pair is SOURCE TARGET.
  'while [ $# -gt 1 ]; do mount --bind "$dir/$1" "$2"; shift 2; done',
  'if [ "$1" = lockd ]; then virtlockd -d -f /etc/libvirt/virtlockd.conf -p "$dir/virtlockd.pid"; fi',
  'exec libvirtd -f /etc/libvirt/libvirtd.conf -p "$dir/libvirtd.pid"',
].join('\n');

/** Starts a private libvirtd (see the module comment). Throws, having cleaned up, if it does not come up. */
export async function startPrivateLibvirtd(opts: PrivateLibvirtdOptions): Promise<PrivateLibvirtd> {
  if (!/^[a-z0-9][a-z0-9-]{0,15}$/.test(opts.name)) throw new Error(`private libvirtd name ${JSON.stringify(opts.name)}: want 1-16 of [a-z0-9-]`);
  const lockd = (opts.lockManager ?? 'lockd') === 'lockd';
  const dir = mkdtempSync(join(tmpdir(), `kloudak-plv-${opts.name}-`));
  // QEMU runs as libvirt-qemu and walks through the mounted directories (the machine's are 0755).
  chmodSync(dir, 0o755);
  for (const [src] of PRIVATE_MOUNTS) mkdirSync(join(dir, src), { mode: 0o755 });
  const sockDir = join(dir, 'sock');
  mkdirSync(sockDir, { mode: 0o755 });
  const etc = join(dir, 'etc');
  for (const sub of ['qemu/networks/autostart', 'qemu/autostart', 'storage/autostart', 'nwfilter', 'secrets', 'hooks']) mkdirSync(join(etc, sub), { recursive: true });
  if (existsSync(CAPS_CACHE)) cpSync(CAPS_CACHE, join(dir, 'cache', 'qemu', 'capabilities'), { recursive: true });
  const log = join(dir, 'log');
  writeFileSync(
    join(etc, 'libvirtd.conf'),
    [
      `unix_sock_dir = "${sockDir}"`,
      'unix_sock_group = "root"',
      'unix_sock_rw_perms = "0700"',
      'auth_unix_rw = "none"',
      'auth_unix_ro = "none"',
      `log_outputs = "3:file:${join(log, 'libvirtd.log')}"`,
      '',
    ].join('\n'),
  );
  writeFileSync(
    join(etc, 'qemu.conf'),
    [
      'stdio_handler = "file"',
      'cgroup_controllers = [ ]',
      'namespaces = [ ]',
      'remember_owner = 0',
      ...(lockd ? ['lock_manager = "lockd"'] : []),
      ...(opts.qemuConf ?? []),
      '',
    ].join('\n'),
  );
  // auto_disk_leases: every disk is locked without a <lease> in the domain XML; no
  // file_lockspace_dir: the lock is an fcntl lock on the disk file itself (README, "Shared storage safety").
  writeFileSync(join(etc, 'qemu-lockd.conf'), 'auto_disk_leases = 1\nrequire_lease_for_disks = 1\n');
  writeFileSync(join(etc, 'virtlockd.conf'), `log_outputs = "3:file:${join(log, 'virtlockd.log')}"\n`);

  const out = openSync(join(dir, 'daemon.out'), 'a');
  const mounts = PRIVATE_MOUNTS.flatMap(([src, target]) => [src, target]);
  let child: ChildProcess;
  try {
    // unshare execs the shell, which execs libvirtd: child.pid is libvirtd's pid.
    child = spawn('unshare', ['--mount', '--propagation', 'private', '--', 'sh', '-c', NAMESPACE_SCRIPT, 'sh', dir, ...mounts, lockd ? 'lockd' : 'none'], {
      stdio: ['ignore', out, out],
    });
  } finally {
    closeSync(out);
  }
  let exited = false;
  child.once('exit', () => (exited = true));
  child.once('error', () => (exited = true));
  const socketPath = join(sockDir, 'libvirt-sock');
  const qemuRunDir = join(dir, 'run', 'qemu');

  const qemuPids = (): number[] => {
    let names: string[];
    try {
      names = readdirSync(qemuRunDir).filter((n) => n.endsWith('.pid'));
    } catch {
      return [];
    }
    return names
      .map((n) => readPid(join(qemuRunDir, n)))
      .filter((pid): pid is number => pid !== null && processAlive(pid) && (commOf(pid) ?? '').startsWith('qemu'));
  };
  const logs = (): string =>
    ['daemon.out', 'log/libvirtd.log', 'log/virtlockd.log']
      .map((f) => {
        try {
          return `--- ${f}\n${readFileSync(join(dir, f), 'utf8')}`;
        } catch {
          return `--- ${f}: none`;
        }
      })
      .join('\n');

  let stopping: Promise<void> | null = null;
  const stop = (): Promise<void> => {
    stopping ??= (async () => {
      // QEMUs first known, from their pid files, before the daemon can remove any.
      const qemus = qemuPids();
      const pid = child.pid;
      if (pid !== undefined && !exited) {
        kill(pid, 'SIGTERM');
        if (!(await waitGone([pid], 5000))) {
          kill(pid, 'SIGKILL');
          await waitGone([pid], 5000);
        }
      }
      // A domain started meanwhile: look again. QEMU survives its daemon, so each is killed here.
      const all = [...new Set([...qemus, ...qemuPids()])];
      for (const q of all) kill(q, 'SIGKILL');
      const lockdPid = readPid(join(dir, 'virtlockd.pid'));
      const lockdAlive = lockdPid !== null && commOf(lockdPid) === 'virtlockd';
      if (lockdAlive) kill(lockdPid, 'SIGKILL');
      const left = [...all, ...(lockdAlive ? [lockdPid] : [])];
      if (!(await waitGone(left, 10_000))) throw new Error(`private libvirtd ${opts.name}: processes still alive after SIGKILL: ${left.filter(processAlive).join(', ')}`);
      rmSync(dir, { recursive: true, force: true });
    })();
    return stopping;
  };

  const deadline = Date.now() + (opts.startTimeoutMs ?? 20_000);
  while (!(await socketAccepts(socketPath))) {
    if (exited || Date.now() > deadline) {
      const why = exited ? 'exited' : 'did not open its socket in time';
      const text = logs();
      await stop().catch(() => undefined);
      throw new Error(`private libvirtd ${opts.name} ${why}:\n${text}`);
    }
    await sleep(25);
  }
  // virtlockd daemonised before libvirtd started; its pid file is there once it forked.
  const virtlockdPid = lockd ? readPid(join(dir, 'virtlockd.pid')) : null;
  if (lockd) {
    if (virtlockdPid === null || commOf(virtlockdPid) !== 'virtlockd') {
      const text = logs();
      await stop().catch(() => undefined);
      throw new Error(`private libvirtd ${opts.name}: virtlockd is not running:\n${text}`);
    }
  }
  return {
    name: opts.name,
    dir,
    socketPath,
    uri: 'qemu:///system',
    qemuRunDir,
    pid: child.pid!,
    virtlockdPid,
    connect: () => Libvirt.connect({ uri: 'qemu:///system', socketPath }),
    qemuPids,
    logs,
    stop,
  };
}

/** A directory standing in for an area's shared storage (what an NFS mount would be). */
export interface SharedDir {
  /** The pool's directory, reachable by QEMU (libvirt-qemu) through its parents. */
  readonly dir: string;
  /** Removes it. */
  cleanup(): void;
}

/** A new shared storage directory under the temporary directory (`prefix` starts its parent's name). */
export function createSharedDir(prefix: string): SharedDir {
  const parent = mkdtempSync(join(tmpdir(), `${prefix}-${randomBytes(3).toString('hex')}-`));
  chmodSync(parent, 0o755);
  const dir = join(parent, 'pool');
  mkdirSync(dir, { mode: 0o755 });
  return { dir, cleanup: () => rmSync(parent, { recursive: true, force: true }) };
}

/**
 * Defines, builds and starts a `dir` pool named `name` on `dir` (which may already hold volumes,
 * made through another daemon: they show after the start's refresh). The pool lives in the private
 * daemon's /etc/libvirt, which its stop() removes.
 */
export async function defineDirPool(lv: Libvirt, name: string, dir: string): Promise<StoragePoolRef> {
  const pool = await lv.defineStoragePool(`<pool type='dir'><name>${escapeXml(name)}</name><target><path>${escapeXml(dir)}</path></target></pool>`);
  await lv.createStoragePool(pool, Flags.POOL_CREATE_WITH_BUILD);
  return pool;
}
