// A real agent process (`agent/dist/main.js`) for whole-system tests, with its JSON log lines.
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const REPO = fileURLToPath(new URL('../../../', import.meta.url));
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
  /** SIGKILL unless it already ended, and wait for the exit. */
  kill(): Promise<void>;
}

/**
 * Start an agent named `name` that dials `orchestrator` (host:port) with its identity in `dataDir`
 * (enrolling with KLOUDAK_AGENT_JOIN_TOKEN from `env` on the first start). Logs go to stdout as JSON.
 */
export function spawnAgentProcess(name: string, orchestrator: string, dataDir: string, env: Record<string, string>): AgentProcess {
  let out = '';
  const child = spawn(process.execPath, [AGENT_MAIN], {
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
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      await exited;
    },
  };
}
