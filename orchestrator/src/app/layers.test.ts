// The layers of the orchestrator are held by ESLint (eslint.config.js, no-restricted-imports, and
// no-restricted-syntax for Prisma calls in app/). This runs the repository's own ESLint
// configuration over small sources placed, virtually, in each layer: the imports and calls a layer
// may not make are refused, the ones it needs pass. Removing or loosening a rule fails here, not
// silently.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ESLint } from 'eslint';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
const src = join(root, 'orchestrator', 'src');
const eslint = new ESLint({ cwd: root });

/** Messages of the rules matching `rule` that ESLint reports for `code` as if it were the file `path` (relative to orchestrator/src). */
async function restricted(path: string, code: string, rule = /no-restricted-imports/): Promise<string[]> {
  const [r] = await eslint.lintText(code, { filePath: join(src, path) });
  return (r?.messages ?? []).filter((m) => rule.test(m.ruleId ?? '')).map((m) => m.message);
}

const CASES: { layer: string; path: string; refused: string[]; allowed: string[] }[] = [
  {
    layer: 'domain/ does no I/O and knows no layer above it',
    path: 'domain/probe.ts',
    refused: [
      "import { readFileSync } from 'node:fs';",
      "import { connect } from 'net';",
      "import { openDatabase } from '@kloudak/prisma';",
      "import { transaction } from '../store/db.js';",
      "import { signup } from '../app/auth.js';",
      "import { route } from '../http/route.js';",
    ],
    allowed: ["import { ConflictError } from '@kloudak/common';", "import { parseCidr } from './inventory-rules.js';", "import { createHash } from 'node:crypto';"],
  },
  {
    layer: 'store/ never imports app/ or an adapter',
    path: 'store/probe.ts',
    refused: ["import type { Caller } from '../app/principal.js';", "import { route } from '../http/route.js';", "import Koa from 'koa';"],
    allowed: ["import type { PrismaClient } from '@kloudak/prisma';", "import { toPermissions } from '../domain/permissions.js';"],
  },
  {
    layer: 'app/ sees no adapter and reaches the database through store/',
    path: 'app/probe.ts',
    refused: ["import { route } from '../http/route.js';", "import Koa from 'koa';", "import * as grpc from '@grpc/grpc-js';", "import { openDatabase } from '@kloudak/prisma';"],
    allowed: ["import type { Database } from '@kloudak/prisma';", "import { transaction } from '../store/db.js';", "import { requireFlags } from '../domain/permissions.js';"],
  },
  {
    layer: 'adapters never touch Prisma or store/',
    path: 'http/routes/probe.ts',
    refused: ["import { openDatabase } from '@kloudak/prisma';", "import type { PrismaClient } from '@kloudak/prisma';", "import { transaction } from '../../store/db.js';"],
    allowed: ["import * as workspaces from '../../app/workspaces.js';", "import { Type } from '@sinclair/typebox';"],
  },
];

describe('the orchestrator\'s layers, as ESLint holds them', () => {
  for (const c of CASES) {
    it(c.layer, async () => {
      for (const line of c.refused) {
        assert.equal((await restricted(c.path, `${line}\nexport {};\n`)).length, 1, `${c.path} must refuse: ${line}`);
      }
      for (const line of c.allowed) {
        assert.deepEqual(await restricted(c.path, `${line}\nexport {};\n`), [], `${c.path} may: ${line}`);
      }
    });
  }
});

// app/ receives a database handle (s.db.client, a transaction) to pass on to store/ functions; a
// type-only import of Prisma cannot stop it from querying that handle itself, so calls are held too.
const APP_CALLS = {
  refused: [
    'await s.db.client.vm.findUnique({ where: { id } });',
    'await tx.network.create({ data });',
    'await db.task.findMany({ where: {} });',
    'await tx.vmInterface.aggregate({ _max: { position: true } });',
    'await tx.workspaceQuota.upsert({ where, create, update });',
    'await db.idempotencyKey.deleteMany({ where: { id } });',
    'await s.db.client.$transaction(async () => undefined);',
    'await tx.$queryRaw`SELECT 1`;',
    'await tx.$executeRaw`SELECT pg_advisory_xact_lock(1)`;',
    "await db.$queryRawUnsafe('SELECT 1');",
  ],
  allowed: [
    'await transaction(s.db.client, async (tx) => lockForClaims(tx, id, id));',
    'await vmsOf(s.db.client, id, { take: 1 });',
    'const seen = new Map<string, number>(); seen.delete(id);',
    'const names = new Set<string>(); names.delete(id);',
    'const found = [id].find((x) => x === id); void found;',
    'const copy = Object.create(null); void copy;',
  ],
};

describe('app/ makes no Prisma call, as ESLint holds it', () => {
  const wrap = (line: string) =>
    `declare const s: any, tx: any, db: any, id: string, data: unknown, where: unknown, create: unknown, update: unknown;\n` +
    `declare function transaction(...a: unknown[]): Promise<void>; declare function lockForClaims(...a: unknown[]): Promise<void>; declare function vmsOf(...a: unknown[]): Promise<void>;\n` +
    `export async function probe(): Promise<void> {\n  ${line}\n}\n`;
  it('refuses a model query, a raw query or $transaction on a client or a transaction', async () => {
    for (const line of APP_CALLS.refused) {
      assert.equal((await restricted('app/probe.ts', wrap(line), /no-restricted-syntax/)).length, 1, `app/ must refuse: ${line}`);
    }
  });
  it('allows transaction() and store/ functions, and Map, Set, array and Object methods', async () => {
    for (const line of APP_CALLS.allowed) {
      assert.deepEqual(await restricted('app/probe.ts', wrap(line), /no-restricted-syntax/), [], `app/ may: ${line}`);
    }
  });
  it('holds in app/ only: store/ makes these calls', async () => {
    assert.deepEqual(await restricted('store/probe.ts', wrap(APP_CALLS.refused[0]!), /no-restricted-syntax/), []);
  });
});
