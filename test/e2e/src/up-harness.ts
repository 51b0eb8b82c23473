// Runs scripts/up.sh (`npm start`) for the e2e tests: the local host it is to make, start it and
// wait until it says it is ready, find the processes it started, sign in, wait for the local host.
// Shared by up.e2e.test.ts and up-lifecycle.e2e.test.ts.
import assert from 'node:assert/strict';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort, waitFor, TEST_NATS_URL, type Cleanup, type CleanupStack } from '@kloudak/testkit';
import { GUEST, QEMU_URI, REPO } from './paths.js';

export { GUEST, REPO };

/** A local host for up.sh to make: the data dir to start it on, the host's name, and the environment that asks for it. */
export interface UpHost {
  dataDir: string;
  hostName: string;
  env: Record<string, string>;
}

/** Deletes an OVS bridge up.sh made (nothing when it is not there). */
function deleteBridge(bridge: string): void {
  execFileSync('ovs-vsctl', ['--timeout=10', '--if-exists', 'del-br', bridge]);
}

/** A simulated local host (libvirt's test driver) named after `run`; `cleanup` removes its data dir and its bridge. */
export function simulatedUpHost(cleanup: CleanupStack, run: string): UpHost {
  const dataDir = mkdtempSync(join(tmpdir(), `${run}-sim-`));
  cleanup.add(() => rmSync(dataDir, { recursive: true, force: true }));
  const hostName = `${run}-sim`;
  const bridge = `${run}s`;
  cleanup.add(() => deleteBridge(bridge));
  return { dataDir, hostName, env: { KLOUDAK_UP_HOST: 'simulated', KLOUDAK_AGENT_HOSTNAME: hostName, KLOUDAK_AGENT_BRIDGE: bridge } };
}

/**
 * A qemu local host named after `run`: a host dir for its pool and boot files, a libvirt pool
 * holding the test guest, an OVS bridge (userspace datapath); `cleanup` removes the data dir, the
 * host dir, the pool and the bridge.
 */
export function qemuUpHost(cleanup: CleanupStack, run: string): UpHost & { hostDir: string; pool: string } {
  const dataDir = mkdtempSync(join(tmpdir(), `${run}-q-`));
  const hostDir = mkdtempSync(join(tmpdir(), `${run}-qh-`));
  // libvirt runs QEMU as libvirt-qemu: the pool's directories must be searchable by it.
  chmodSync(hostDir, 0o755);
  const pool = `${run}-pool`;
  const bridge = `${run}q`;
  cleanup.add(() => rmSync(dataDir, { recursive: true, force: true }));
  cleanup.add(() => rmSync(hostDir, { recursive: true, force: true }));
  cleanup.add(() => {
    for (const cmd of [['pool-destroy', pool], ['pool-undefine', pool]]) {
      try {
        execFileSync('virsh', ['-q', '-c', QEMU_URI, ...cmd], { stdio: 'ignore' });
      } catch {
        // not there
      }
    }
  });
  cleanup.add(() => deleteBridge(bridge));
  const hostName = `${run}-qemu`;
  const env = {
    KLOUDAK_UP_HOST: 'qemu',
    KLOUDAK_UP_HOST_DIR: hostDir,
    KLOUDAK_UP_POOL: pool,
    KLOUDAK_TEST_GUEST_DIR: GUEST,
    KLOUDAK_AGENT_HOSTNAME: hostName,
    KLOUDAK_AGENT_BRIDGE: bridge,
    KLOUDAK_AGENT_OVS_DATAPATH: 'netdev',
    KLOUDAK_AGENT_NIC_OFFLOAD: 'off',
  };
  return { dataDir, hostName, env, hostDir, pool };
}

/** One run of scripts/up.sh. */
export interface Up {
  child: ChildProcess;
  base: string;
  httpPort: number;
  agentPort: number;
  output(): string;
  /** Exit code, or 128 + n for a signal. */
  exited: Promise<number | null>;
}

const SIGNALS: Record<string, number> = { SIGINT: 2, SIGKILL: 9, SIGTERM: 15 };

/** How a run is started. */
export interface UpOptions {
  /** Reuse these ports (a restart); default: free ones. */
  httpPort?: number;
  agentPort?: number;
  /**
   * Start it as the leader of its own process group, as a terminal or a supervisor runs `npm start`
   * (so the test can signal the whole group, like Ctrl-C does).
   */
  group?: boolean;
  /** Run it as the README says, `npm start` (npm, then sh, then up.sh), instead of up.sh directly. */
  npm?: boolean;
  /** Return at once instead of waiting for "Kloudak is ready." (default true). */
  waitReady?: boolean;
}

/** Starts scripts/up.sh and waits for "Kloudak is ready."; `cleanup` stops it whatever happens. */
export async function startUp(cleanup: Cleanup, dataDir: string, env: Record<string, string>, opts: UpOptions = {}): Promise<Up> {
  const httpPort = opts.httpPort ?? (await freePort());
  const agentPort = opts.agentPort ?? (await freePort());
  const [cmd, args] = opts.npm ? ['npm', ['start', '--silent']] : ['bash', [join(REPO, 'scripts/up.sh')]];
  const child = spawn(cmd, args, {
    cwd: REPO,
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: opts.group ?? false,
    env: {
      ...process.env,
      KLOUDAK_UP_SKIP_BUILD: '1',
      KLOUDAK_DATA_DIR: dataDir,
      KLOUDAK_PORT: String(httpPort),
      KLOUDAK_AGENT_PORT: String(agentPort),
      KLOUDAK_GRPC_PORT: '0',
      NATS_URL: TEST_NATS_URL,
      // Hashing cost of the one admin password; the default is made for production.
      KLOUDAK_PASSWORD_HASH_COST: '12',
      KLOUDAK_LOG_LEVEL: 'warn',
      KLOUDAK_AGENT_LOG_LEVEL: 'info',
      ...env,
    },
  });
  let out = '';
  child.stdout?.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr?.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<number | null>((resolve) =>
    child.once('exit', (code, sig) => resolve(code ?? (sig ? 128 + (SIGNALS[sig] ?? 0) : null))),
  );
  // Whatever happens in the test, the script is stopped (it stops its own children); whatever it
  // left behind (a failing test of exactly that) is killed.
  cleanup.add(async () => {
    if (child.exitCode === null && child.signalCode === null) {
      if (opts.group && child.pid) process.kill(-child.pid, 'SIGTERM');
      else child.kill('SIGTERM');
      await exited;
    }
    for (const pid of processesWith(dataDir)) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // gone meanwhile
      }
    }
  });
  const up: Up = { child, base: `http://127.0.0.1:${httpPort}`, httpPort, agentPort, output: () => out, exited };
  let gone = false;
  void exited.then(() => (gone = true));
  if (opts.waitReady === false) return up;
  // (waitFor swallows errors thrown by its check: an early exit must end the wait instead.)
  await waitFor(async () => gone || out.includes('Kloudak is ready.'), 180_000, 'up.sh to print "Kloudak is ready."');
  if (!out.includes('Kloudak is ready.')) throw new Error(`up.sh exited (${await exited}) before it was ready:\n${out.slice(-4000)}`);
  return up;
}

/** SIGTERM to up.sh; it ends with 128+15 after stopping its children. */
export async function stopUp(up: Up): Promise<void> {
  up.child.kill('SIGTERM');
  const code = await up.exited;
  assert.equal(code, 143, `up.sh ends on SIGTERM with 128+15:\n${up.output().slice(-2000)}`);
}

/** Whether a process has ended (gone, or a zombie that PID 1 has not reaped yet). */
export function ended(pid: number): boolean {
  try {
    return readFileSync(`/proc/${pid}/stat`, 'utf8').replace(/^.*\) /s, '').startsWith('Z');
  } catch {
    return true;
  }
}

/** Live pids of processes whose environment names `needle` (the orchestrator's and agent's data dirs). */
export function processesWith(needle: string): number[] {
  const pids: number[] = [];
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d) || Number(d) === process.pid) continue;
    try {
      if (readFileSync(`/proc/${d}/environ`).includes(needle) && !ended(Number(d))) pids.push(Number(d));
    } catch {
      // gone meanwhile, or not ours to read
    }
  }
  return pids;
}

/** Whether nothing listens on the port any more: it can be bound again, on every address. */
export async function portFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const srv = createServer();
    srv.once('error', () => resolve(false));
    srv.listen({ port, host: '0.0.0.0', exclusive: true }, () => srv.close(() => resolve(true)));
  });
}

export async function api(base: string, token: string, path: string): Promise<{ status: number; body: Record<string, unknown> }> {
  const res = await fetch(`${base}/api/v1${path}`, { headers: { authorization: `Bearer ${token}` } });
  return { status: res.status, body: (await res.json()) as Record<string, unknown> };
}

export async function login(up: Up, dataDir: string): Promise<string> {
  const password = readFileSync(join(dataDir, 'admin-password'), 'utf8').trim();
  assert.ok(!up.output().includes(password), 'the admin password is never printed');
  const res = await fetch(`${up.base}/api/v1/auth/login`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ username: 'admin', password }),
  });
  assert.equal(res.status, 200);
  return ((await res.json()) as { token: string }).token;
}

export type Host = { id: string; name: string; state: string; connected: boolean; capacity: { cpus: number }; area: string };

export async function waitHostUp(up: Up, token: string, name: string): Promise<Host> {
  let found: Host | undefined;
  await waitFor(async () => {
    const r = await api(up.base, token, '/hosts');
    found = (r.body['items'] as Host[]).find((h) => h.name === name);
    return found?.state === 'up' && found.connected;
  }, 60_000, `host ${name} up and connected:\n${up.output().slice(-3000)}`);
  return found as Host;
}

export function assertNoSecrets(up: Up): void {
  assert.ok(!/kjt1\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]{8,}/.test(up.output()), 'no join token in the output');
  assert.ok(!/BEGIN [A-Z ]*PRIVATE KEY/.test(up.output()), 'no private key in the output');
  assert.ok(!/DeprecationWarning|ERROR|"level":("?(error|fatal)"?|50|60)\b/.test(up.output()), `no warning or error:\n${up.output().slice(-3000)}`);
}
