/**
 * The fence guard as a process (fence/guard.ts): `kloudak-agent fence-guard`, forked by the agent
 * with an IPC channel. {@link runFenceGuard} is the child's composition root; {@link GuardHandle}
 * is the agent's end, which starts the child, sends it the lease's end at every change and starts
 * it again if it dies.
 *
 * A forked child, not a thread: a worker thread lives in the agent's process, which is exactly
 * what is hung (or stopped by SIGSTOP) when the guard is needed.
 */
import { fork, type ChildProcess } from 'node:child_process';
import type { Logger } from 'pino';
import { createAgentLogger } from '../log/logger.js';
import { FenceGuard } from './guard.js';
import { bootId, hostMonoMs, LeaseStateFile } from './lease-state.js';
import { QemuPidfiles } from './qemu-pidfiles.js';
import { FenceStore } from './records.js';

/** What the agent tells its guard at start (in the environment: {@link GUARD_ENV}). */
export interface GuardSettings {
  runDir: string;
  dataDir: string;
  graceMs: number;
  pollMs?: number;
  logLevel: string;
  logTarget: 'auto' | 'journald' | 'stdout';
  underSystemd: boolean;
}

/** Messages from the agent to its guard. */
export type GuardMessage = { type: 'lease'; endHostMonoMs: number } | { type: 'release' };

/** The environment variable carrying {@link GuardSettings} (JSON) to the child. */
export const GUARD_ENV = 'KLOUDAK_AGENT_FENCE_GUARD_SETTINGS';

/** The `fence-guard` sub-command: runs until released or its duty is done. Returns the exit code. */
export async function runFenceGuard(): Promise<number> {
  let s: GuardSettings;
  try {
    s = JSON.parse(process.env[GUARD_ENV] ?? '') as GuardSettings;
    if (typeof s.runDir !== 'string' || typeof s.dataDir !== 'string' || typeof s.graceMs !== 'number') throw new Error('incomplete');
  } catch (err) {
    process.stderr.write(`kloudak-agent fence-guard: ${GUARD_ENV} is not valid (${(err as Error).message}): it is started by the agent only\n`);
    return 2;
  }
  if (!process.send) {
    process.stderr.write('kloudak-agent fence-guard: no IPC channel: it is started by the agent only\n');
    return 2;
  }
  const log = createAgentLogger({ level: s.logLevel, target: s.logTarget, underSystemd: s.underSystemd }).logger.child({ component: 'fence-guard' });
  const agentPid = process.ppid;
  const stateFile = new LeaseStateFile(s.dataDir);
  const guard = new FenceGuard({
    pidfiles: new QemuPidfiles({ runDir: s.runDir }),
    store: new FenceStore(s.dataDir),
    log,
    graceMs: s.graceMs,
    ...(s.pollMs !== undefined ? { pollMs: s.pollMs } : {}),
    now: hostMonoMs,
    agentPid,
    bootId: bootId(),
    readState: () => stateFile.load(),
  });
  process.on('message', (m: GuardMessage) => {
    if (m?.type === 'lease' && typeof m.endHostMonoMs === 'number') guard.lease(m.endHostMonoMs);
    else if (m?.type === 'release') guard.release();
  });
  process.once('disconnect', () => guard.agentGone());
  // Signals meant for the agent's whole process group (Ctrl-C of `npm start`) must not end the
  // guard before the agent releases it: the agent's clean stop does that.
  process.on('SIGINT', () => undefined);
  process.on('SIGTERM', () => undefined);
  guard.start();
  log.info({ pid: process.pid, agent_pid: agentPid, run_dir: s.runDir, grace_ms: s.graceMs }, 'fence guard started');
  await guard.done;
  if (process.connected) process.disconnect();
  return 0;
}

/** Options of {@link GuardHandle}. */
export interface GuardHandleOptions {
  /** The agent's main module (dist/main.js or the bundle): forked with `fence-guard`. */
  entry: string;
  settings: GuardSettings;
  log: Logger;
}

/** The agent's end of its fence guard. */
export class GuardHandle {
  private child: ChildProcess | null = null;
  private lastEnd: number | null = null;
  private stopped = false;
  private restarts = 0;

  constructor(private readonly o: GuardHandleOptions) {}

  /** Forks the guard. */
  start(): void {
    if (this.stopped) return;
    const child = fork(this.o.entry, ['fence-guard'], {
      env: { ...process.env, [GUARD_ENV]: JSON.stringify(this.o.settings) },
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
      execArgv: [],
      serialization: 'json',
    });
    // Neither the child nor its channel keeps the agent's event loop alive (the agent's stop
    // releases the guard; a test process that never stops its agent still exits).
    child.unref();
    child.channel?.unref();
    this.child = child;
    child.on('error', (err) => this.o.log.error({ err }, 'fence guard process error'));
    child.once('exit', (code, signal) => {
      if (this.child === child) this.child = null;
      if (this.stopped) return;
      // Killed by someone, or crashed: the lease stays guarded by a new one (with a pause, so a
      // guard that cannot start does not spin).
      this.o.log.error({ code, signal, restarts: this.restarts }, 'the fence guard exited: starting it again');
      this.restarts++;
      setTimeout(() => this.start(), Math.min(5000, 200 * this.restarts)).unref();
    });
    if (this.lastEnd !== null) this.send({ type: 'lease', endHostMonoMs: this.lastEnd });
  }

  /** The lease now ends at `endHostMonoMs` (host monotonic clock). */
  lease(endHostMonoMs: number): void {
    this.lastEnd = endHostMonoMs;
    this.send({ type: 'lease', endHostMonoMs });
  }

  /** The agent stops cleanly: the guard is released and exits. */
  async release(): Promise<void> {
    this.stopped = true;
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise<void>((r) => child.once('exit', () => r()));
    this.send({ type: 'release' });
    const timer = setTimeout(() => child.kill('SIGKILL'), 3000);
    await exited;
    clearTimeout(timer);
  }

  /** The guard's pid (tests). */
  get pid(): number | undefined {
    return this.child?.pid;
  }

  private send(m: GuardMessage): void {
    const child = this.child;
    if (!child?.connected) return;
    child.send(m, (err) => {
      if (err) this.o.log.warn({ err }, 'cannot reach the fence guard');
    });
  }
}
