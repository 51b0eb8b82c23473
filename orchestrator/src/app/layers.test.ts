// The layers of the orchestrator are held by ESLint (eslint.config.js, no-restricted-imports).
// This runs the repository's own ESLint configuration over small sources placed, virtually, in
// each layer: the imports a layer may not make are refused, the ones it needs pass. Removing or
// loosening a rule fails here, not silently.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ESLint } from 'eslint';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
const src = join(root, 'orchestrator', 'src');
const eslint = new ESLint({ cwd: root });

/** Rule ids ESLint reports for `code` as if it were the file `path` (relative to orchestrator/src). */
async function restricted(path: string, code: string): Promise<string[]> {
  const [r] = await eslint.lintText(code, { filePath: join(src, path) });
  return (r?.messages ?? []).filter((m) => /no-restricted-imports/.test(m.ruleId ?? '')).map((m) => m.message);
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
