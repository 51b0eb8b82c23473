#!/usr/bin/env node
// The orchestrator's composition root: reads config once, builds every dependency, and runs the
// chosen command. Nothing else in the orchestrator constructs global state.
import { createInterface } from 'node:readline';
import { ConfigError, createLogger, KloudakError, watchLifeline } from '@kloudak/common';
import { openDatabase } from '@kloudak/prisma';
import { createAdmin } from './admin.js';
import { systemClock } from './clock.js';
import { readConfig } from './config.js';
import { startOrchestrator } from './server.js';

const USAGE = `usage: kloudak-orchestrator [serve] [--port N] [--host H] [--data-dir D] [--database-url URL] [--config FILE]
       kloudak-orchestrator migrate
       kloudak-orchestrator admin create --username NAME [--email EMAIL] [--password-stdin]
         (password from stdin with --password-stdin, else from KLOUDAK_ADMIN_PASSWORD)`;

function flag(argv: string[], name: string): string | undefined {
  const i = argv.indexOf(`--${name}`);
  if (i !== -1) return argv[i + 1];
  return argv.find((a) => a.startsWith(`--${name}=`))?.slice(name.length + 3);
}

async function readStdinLine(): Promise<string> {
  const rl = createInterface({ input: process.stdin });
  for await (const line of rl) {
    rl.close();
    return line;
  }
  return '';
}

async function main(argv: string[]): Promise<number> {
  const positional = argv.filter((a, i) => !a.startsWith('--') && !(argv[i - 1]?.startsWith('--') && !argv[i - 1]?.includes('=')));
  const command = positional[0] ?? 'serve';
  if (command === 'help' || argv.includes('--help')) {
    console.log(USAGE);
    return 0;
  }
  const config = readConfig(argv);
  const log = createLogger({ component: 'orchestrator', level: config.logLevel });

  if (command === 'serve') {
    // Watched from the start: a parent that dies while this one is still starting is noticed too.
    let onLifelineLost: (reason: string) => void = () => undefined;
    const lifelineLost = new Promise<string>((resolve) => (onLifelineLost = resolve));
    const lifeline = config.lifelineFd === undefined ? undefined : watchLifeline(config.lifelineFd, (reason) => onLifelineLost(reason));
    const orch = await startOrchestrator(config, log, systemClock);
    const where = config.databaseUrl ? 'PostgreSQL' : `embedded PGlite in ${config.dataDir}/pglite`;
    process.stderr.write(
      `\nKloudak is up: ${orch.url}  (API ${orch.url}/api/v1, OpenAPI ${orch.url}/api/v1/openapi.json)\n` +
        `gRPC API: ${orch.grpcUrl} (kloudak.api.v1, with reflection)\ndatabase: ${where}\n` +
        `agents: ${orch.agentUrl} (TLS; agent CA fingerprint ${orch.ca.fingerprint})\n\n`,
    );
    await new Promise<void>((resolve) => {
      const stop = (sig: string) => {
        log.info({ signal: sig }, 'shutting down');
        resolve();
      };
      process.once('SIGTERM', () => stop('SIGTERM'));
      process.once('SIGINT', () => stop('SIGINT'));
      void lifelineLost.then((reason) => {
        log.warn({ reason }, 'lifeline lost: the process that started the orchestrator is gone');
        stop('lifeline');
      });
    });
    lifeline?.close();
    await orch.close();
    log.flush();
    return 0;
  }

  const db = await openDatabase({ url: config.databaseUrl || undefined, dataDir: config.dataDir });
  try {
    if (command === 'migrate') {
      const r = await db.migrate();
      console.log(JSON.stringify({ applied: r.applied, alreadyApplied: r.alreadyApplied }));
      return 0;
    }
    if (command === 'admin' && positional[1] === 'create') {
      const username = flag(argv, 'username');
      if (!username) {
        console.error(USAGE);
        return 2;
      }
      const password = argv.includes('--password-stdin') ? await readStdinLine() : config.adminPassword;
      if (!password) {
        console.error('no password: use --password-stdin or set KLOUDAK_ADMIN_PASSWORD');
        return 2;
      }
      await db.migrate();
      const r = await createAdmin(db.client, { username, email: flag(argv, 'email') ?? '', password }, config.passwordHashCost);
      console.log(r.created ? `admin ${username} created` : `user ${username} is now an admin (password reset)`);
      return 0;
    }
    console.error(USAGE);
    return 2;
  } finally {
    await db.close();
  }
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    // Configuration and validation problems are the operator's to fix: say what, without a stack.
    if (err instanceof ConfigError || err instanceof KloudakError) console.error(`kloudak-orchestrator: ${err.message}`);
    else console.error('kloudak-orchestrator: fatal:', err);
    process.exitCode = 1;
  },
);
