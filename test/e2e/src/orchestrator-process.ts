import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { freePort, waitFor } from '@kloudak/testkit';

/** Path of the built orchestrator binary. */
export const ORCHESTRATOR_MAIN = fileURLToPath(new URL('../../../orchestrator/dist/main.js', import.meta.url));

/** An orchestrator running as its own process, with everything it printed. */
export interface OrchestratorProcess {
  url: string;
  child: ChildProcess;
  output(): string;
  /** SIGTERM and wait for exit; resolves the exit code. */
  stop(): Promise<number | null>;
  /** SIGKILL (no shutdown at all: leases stay, results in flight are lost) and wait for the exit. */
  kill(): Promise<void>;
}

/**
 * Start `kloudak-orchestrator serve` with the given environment and wait until /readyz answers 200.
 * The HTTP port is a free one picked here; another process can still take it before the
 * orchestrator binds it (a concurrent orchestrator's agent link on port 0 did, in CI), so a start
 * that fails with EADDRINUSE on a port this function picked is tried again on a new one.
 */
export async function startOrchestratorProcess(env: Record<string, string>, timeoutMs = 60_000): Promise<OrchestratorProcess> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await startOnce(env, timeoutMs);
    } catch (err) {
      const picked = env['KLOUDAK_PORT'] === undefined;
      if (!picked || attempt >= 3 || !(err instanceof Error) || !err.message.includes('EADDRINUSE')) throw err;
    }
  }
}

async function startOnce(env: Record<string, string>, timeoutMs: number): Promise<OrchestratorProcess> {
  const port = await freePort();
  let out = '';
  const child = spawn(process.execPath, [ORCHESTRATOR_MAIN, 'serve'], {
    env: { PATH: process.env['PATH'] ?? '', KLOUDAK_HOST: '127.0.0.1', KLOUDAK_PORT: String(port), KLOUDAK_PASSWORD_HASH_COST: '12', KLOUDAK_AGENT_PORT: '0', KLOUDAK_GRPC_PORT: '0', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  child.stdout?.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr?.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const url = `http://127.0.0.1:${port}`;
  try {
    await Promise.race([
      waitFor(async () => (await fetch(`${url}/readyz`)).status === 200, timeoutMs, `orchestrator on ${url}`),
      exited.then((code) => {
        throw new Error(`orchestrator exited early with ${code}:\n${out}`);
      }),
    ]);
  } catch (err) {
    child.kill('SIGKILL');
    throw err;
  }
  return {
    url,
    child,
    output: () => out,
    stop: async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      return exited;
    },
    kill: async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      await exited;
    },
  };
}
