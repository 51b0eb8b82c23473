#!/usr/bin/env node
/**
 * kloudak-agent: the composition root. `--version` is answered before anything else is loaded or
 * read (the RPM test runs it on an esbuild bundle of this file, on a machine without config).
 */
import { AGENT_VERSION } from './version.js';

const argv = process.argv.slice(2);
if (argv.includes('--version') || argv.includes('-V')) {
  process.stdout.write(`${AGENT_VERSION}\n`);
  process.exit(0);
}

// The fence guard (fence/guard.ts): the agent forks this same program with `fence-guard`.
else if (argv[0] === 'fence-guard') {
  void import('./fence/guard-process.js')
    .then(({ runFenceGuard }) => runFenceGuard())
    .then(
      (code) => process.exit(code),
      (err: unknown) => {
        process.stderr.write(`kloudak-agent fence-guard: ${(err as Error)?.stack ?? String(err)}\n`);
        process.exit(1);
      },
    );
}

// The daemon is imported lazily so that `--version` never pays for (or fails on) its modules.
// No top-level await: the file must also bundle to CommonJS (esbuild --format=cjs).
else {
  void import('./daemon.js')
    .then(({ runDaemon }) => runDaemon(argv))
    .then(
      (code) => {
        // The daemon has stopped everything it started (and the logger writes synchronously), but
        // grpc-js keeps a closed channel's HTTP/2 connection in its subchannel pool until a 10 s
        // sweep: waiting for the event loop to drain would hold the exit (and the orchestrator's
        // own graceful stop, which waits on that connection) for up to 10 s.
        process.exit(code);
      },
      (err: unknown) => {
        process.stderr.write(`kloudak-agent: ${(err as Error)?.stack ?? String(err)}\n`);
        process.exitCode = 1;
      },
    );
}
