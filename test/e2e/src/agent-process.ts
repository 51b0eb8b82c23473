// A real agent process (`agent/dist/main.js`) for whole-system tests and benchmarks, with its
// JSON log lines.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { CleanupStack } from '@kloudak/testkit';
import { REPO } from './paths.js';

/** The compiled agent's entry point. */
export const AGENT_MAIN = join(REPO, 'agent/dist/main.js');

/** An agent running as its own process. */
export interface AgentProcess {
  name: string;
  dataDir: string;
  env: Record<string, string>;
  child: ChildProcess;
  output(): string;
  exited: Promise<number | null>;
  /**
   * SIGKILL to the agent and every process of its group (its fence guard: a host's death ends all
   * its processes), unless it already ended, and wait for the agent's exit.
   */
  kill(): Promise<void>;
  /** SIGTERM unless it already ended, SIGKILL if it has not exited `graceMs` later; waits for the exit. */
  stop(graceMs: number): Promise<void>;
}

/**
 * Start an agent named `name` that dials `orchestrator` (host:port) with its identity in `dataDir`
 * (enrolling with KLOUDAK_AGENT_JOIN_TOKEN from `env` on the first start), in the network
 * namespace `netns` when given. Logs go to stdout as JSON.
 */
export function spawnAgentProcess(name: string, orchestrator: string, dataDir: string, env: Record<string, string>, netns?: string): AgentProcess {
  let out = '';
  // In a network namespace through `ip netns exec`, which execs the agent: the child is the agent.
  const [cmd, args] = netns === undefined ? [process.execPath, [AGENT_MAIN]] : ['ip', ['netns', 'exec', netns, process.execPath, AGENT_MAIN]];
  const child = spawn(cmd, args, {
    env: {
      PATH: process.env['PATH'] ?? '',
      KLOUDAK_AGENT_ORCHESTRATOR: orchestrator,
      KLOUDAK_AGENT_DATA_DIR: dataDir,
      KLOUDAK_AGENT_HOSTNAME: name,
      KLOUDAK_AGENT_LOG_TARGET: 'stdout',
      KLOUDAK_AGENT_LOG_LEVEL: 'info',
      ...env,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
    // Its own process group, with its fence guard (agent/src/fence/guard.ts) in it: kill() ends both.
    detached: true,
  });
  child.stdout?.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr?.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  return {
    name,
    dataDir,
    env,
    child,
    exited,
    output: () => out,
    async kill() {
      if (child.exitCode === null && child.signalCode === null) {
        try {
          process.kill(-child.pid!, 'SIGKILL');
        } catch {
          child.kill('SIGKILL');
        }
      }
      await exited;
    },
    async stop(graceMs) {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      const t = setTimeout(() => child.kill('SIGKILL'), graceMs);
      await exited;
      clearTimeout(t);
    },
  };
}

/**
 * {@link spawnAgentProcess} with a new data dir under the temporary directory (named after
 * `dirPrefix`); `cleanup` ends the agent (SIGKILL, or SIGTERM first when `stopGraceMs` is given)
 * and then removes the dir.
 */
export function startAgentProcess(
  cleanup: CleanupStack,
  name: string,
  orchestrator: string,
  env: Record<string, string>,
  opts: { dirPrefix: string; stopGraceMs?: number },
): AgentProcess {
  const dataDir = mkdtempSync(join(tmpdir(), `${opts.dirPrefix}-agent-`));
  cleanup.add(() => rmSync(dataDir, { recursive: true, force: true }), `remove ${dataDir}`);
  const agent = spawnAgentProcess(name, orchestrator, dataDir, env);
  const grace = opts.stopGraceMs;
  cleanup.add(() => (grace === undefined ? agent.kill() : agent.stop(grace)), `stop the agent ${name}`);
  return agent;
}
