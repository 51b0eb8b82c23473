// A PostgreSQL server of a test's own (initdb + pg_ctl from the installed server packages), for
// tests that do to the server what must not happen to the shared one: pause it (SIGSTOP), kill it.
import { execFileSync } from 'node:child_process';
import { chownSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort } from './net.js';

/** A running private PostgreSQL server. */
export interface PrivatePostgres {
  /** Connection string of its `postgres` database (user postgres, trust auth, on 127.0.0.1). */
  url: string;
  port: number;
  /** Stop every process of the server (SIGSTOP): connections hang, nothing answers. */
  pause(): void;
  /** Let them run again (SIGCONT). */
  resume(): void;
  /** Shut the server down at once (`pg_ctl stop -m immediate`), keeping its data. */
  halt(): void;
  /** Start it again after {@link halt}, on the same port. */
  start(): void;
  /** Stop the server (resumed first) and remove its data directory. Idempotent. */
  stop(): void;
}

/** The directory of the newest installed PostgreSQL server's programs (Debian: /usr/lib/postgresql/N/bin). */
export function postgresBinDir(): string {
  const root = '/usr/lib/postgresql';
  const versions = existsSync(root) ? readdirSync(root).filter((v) => existsSync(join(root, v, 'bin', 'initdb'))) : [];
  const newest = versions.sort((a, b) => Number(b) - Number(a))[0];
  if (!newest) throw new Error(`no PostgreSQL server programs under ${root} (apt install postgresql)`);
  return join(root, newest, 'bin');
}

/** Pids whose parent is `pid` (from /proc). */
function childrenOf(pid: number): number[] {
  const out: number[] = [];
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      // stat: "pid (comm) state ppid ..."; comm may hold spaces and parentheses: split after the last ')'.
      const stat = readFileSync(`/proc/${d}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      if (ppid === pid) out.push(Number(d));
    } catch {
      // gone meanwhile
    }
  }
  return out;
}

/**
 * initdb a new cluster in a temporary directory (as the `postgres` user when run as root, since
 * PostgreSQL refuses to run as root), and start it on a free loopback port with its socket in
 * that directory.
 */
export async function startPrivatePostgres(): Promise<PrivatePostgres> {
  const bin = postgresBinDir();
  const dir = mkdtempSync(join(tmpdir(), 'kloudak-pg-'));
  const data = join(dir, 'data');
  const asRoot = process.getuid?.() === 0;
  const run = (prog: string, args: string[]) => {
    const argv = asRoot ? ['-u', 'postgres', '--', join(bin, prog), ...args] : args;
    execFileSync(asRoot ? 'runuser' : join(bin, prog), argv, { stdio: ['ignore', 'pipe', 'pipe'], timeout: 60_000 });
  };
  if (asRoot) {
    const uid = Number(execFileSync('id', ['-u', 'postgres']).toString().trim());
    const gid = Number(execFileSync('id', ['-g', 'postgres']).toString().trim());
    chownSync(dir, uid, gid);
  }
  const port = await freePort();
  let stopped = false;
  const stop = () => {
    if (stopped) return;
    stopped = true;
    try {
      resume();
      run('pg_ctl', ['-D', data, '-m', 'immediate', '-w', 'stop']);
    } catch {
      // not running
    }
    rmSync(dir, { recursive: true, force: true });
  };
  const postmaster = (): number | undefined => {
    try {
      return Number(readFileSync(join(data, 'postmaster.pid'), 'utf8').split('\n')[0]);
    } catch {
      return undefined;
    }
  };
  const signal = (sig: NodeJS.Signals) => {
    const pm = postmaster();
    if (pm === undefined) return;
    // Children first on pause (the postmaster cannot fork new ones meanwhile), the postmaster first on resume.
    const all = sig === 'SIGSTOP' ? [...childrenOf(pm), pm] : [pm, ...childrenOf(pm)];
    for (const p of all) {
      try {
        process.kill(p, sig);
      } catch {
        // exited
      }
    }
  };
  const resume = () => signal('SIGCONT');
  const start = () =>
    run('pg_ctl', ['-D', data, '-l', join(dir, 'server.log'), '-w', '-o', `-c port=${port} -c listen_addresses=127.0.0.1 -c unix_socket_directories=${dir} -c fsync=off`, 'start']);
  const halt = () => {
    resume();
    run('pg_ctl', ['-D', data, '-m', 'immediate', '-w', 'stop']);
  };
  try {
    run('initdb', ['-D', data, '-A', 'trust', '-U', 'postgres', '--no-sync']);
    start();
  } catch (err) {
    stop();
    throw err;
  }
  return { url: `postgresql://postgres@127.0.0.1:${port}/postgres`, port, pause: () => signal('SIGSTOP'), resume, halt, start, stop };
}
