// ESLint flat config. Syntax-level rules only (no type-aware/project-service rules): `tsc -b`
// already type-checks, and type-aware linting would make lint as slow as a second build.
import js from '@eslint/js';
import { defineConfig, globalIgnores } from 'eslint/config';
import tseslint from 'typescript-eslint';

export default defineConfig(
  // Build output, generated code and dependencies are not ours to lint. Plain JavaScript is
  // compiled output or tooling (this file included); only TypeScript sources are linted.
  globalIgnores([
    '**/dist/**',
    '**/node_modules/**',
    '**/generated/**',
    'proto/gen/**',
    'data/**',
    '**/.turbo/**',
    '**/*.js',
    '**/*.cjs',
    '**/*.mjs',
  ]),
  {
    files: ['**/*.ts', '**/*.mts', '**/*.cts'],
    extends: [js.configs.recommended, tseslint.configs.recommended],
    rules: {
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
      'no-console': 'off',
    },
  },
  // The orchestrator's layers (orchestrator/src/app/README.md): adapters (http/, grpc/) parse and
  // call app/ use cases; app/ authorizes, validates and runs transactions over store/ queries and
  // pure domain/ rules. These rules keep each layer to its own imports.
  {
    files: ['orchestrator/src/domain/**/*.ts'],
    ignores: ['**/*.test.ts'],
    rules: {
      'no-restricted-imports': [
        'error',
        {
          paths: [
            ...['fs', 'fs/promises', 'net', 'http', 'https', 'http2', 'child_process', 'dgram', 'dns', 'tls', 'worker_threads', 'readline', 'cluster']
              .flatMap((m) => [m, `node:${m}`])
              .map((name) => ({ name, message: 'domain/ is pure: it takes data and returns data, no I/O.' })),
            ...['@kloudak/prisma', 'koa', '@koa/router', '@grpc/grpc-js', '@nats-io/transport-node', 'pino'].map((name) => ({
              name,
              message: 'domain/ is pure: no database, network, bus or logger.',
            })),
          ],
          patterns: [
            {
              regex: '(^|/)(store|app|http|grpc|agent-api|events|tasks|auth)(/|$)',
              message: 'domain/ depends on nothing but itself and @kloudak/common: the layers above call it.',
            },
          ],
        },
      ],
    },
  },
  {
    files: ['orchestrator/src/store/**/*.ts'],
    rules: {
      'no-restricted-imports': [
        'error',
        {
          paths: ['koa', '@koa/router', '@grpc/grpc-js'].map((name) => ({ name, message: 'store/ holds queries: no adapter types.' })),
          patterns: [{ regex: '(^|/)(app|http|grpc)(/|$)', message: 'store/ holds queries: it never imports app/ or an adapter.' }],
        },
      ],
    },
  },
  {
    files: ['orchestrator/src/app/**/*.ts'],
    rules: {
      '@typescript-eslint/no-restricted-imports': [
        'error',
        {
          paths: [
            { name: '@kloudak/prisma', allowTypeImports: true, message: 'app/ reaches the database through store/ (types only here).' },
            ...['koa', '@koa/router', '@grpc/grpc-js'].map((name) => ({ name, message: 'app/ never sees an adapter\'s types: every interface shares it.' })),
          ],
          patterns: [{ regex: '(^|/)(http|grpc)(/|$)', message: 'app/ never imports an adapter: adapters import app/.' }],
        },
      ],
      // Importing only Prisma's types is not enough: a client handed in (s.db.client, a tx) could
      // still be queried here. Every query is a store/ function; app/ only passes the handle on.
      'no-restricted-syntax': [
        'error',
        {
          // tx.$transaction(…), db.$queryRawUnsafe(…), s.db.client.$executeRaw(…)
          selector: 'CallExpression > MemberExpression.callee[property.name=/^\\$(transaction|queryRaw|executeRaw|queryRawUnsafe|executeRawUnsafe)$/]',
          message: 'app/ runs no SQL: use transaction() from store/db.ts and a store/ function (lockWorkspace, lockForClaims…).',
        },
        {
          // tx.$queryRaw`…`, tx.$executeRaw`…`
          selector: 'TaggedTemplateExpression > MemberExpression.tag[property.name=/^\\$(queryRaw|executeRaw)$/]',
          message: 'app/ runs no SQL: take a lock or query through a store/ function.',
        },
        {
          // db.vm.findMany(…), s.db.client.task.create(…): a model delegate's method, called on a
          // member (so Map#delete, Set#delete and array methods on a plain variable stay allowed).
          selector:
            'CallExpression > MemberExpression.callee[object.type="MemberExpression"][property.name=/^(findUnique|findUniqueOrThrow|findFirst|findFirstOrThrow|findMany|create|createMany|createManyAndReturn|update|updateMany|updateManyAndReturn|upsert|delete|deleteMany|count|aggregate|groupBy)$/]',
          message: 'app/ queries the database only through store/ functions (one per query or write, taking a Db or a Tx).',
        },
      ],
    },
  },
  {
    files: ['orchestrator/src/http/**/*.ts', 'orchestrator/src/grpc/**/*.ts'],
    ignores: ['**/*.test.ts'],
    rules: {
      'no-restricted-imports': [
        'error',
        {
          paths: [{ name: '@kloudak/prisma', message: 'adapters never touch the database: call an app/ use case.' }],
          patterns: [
            { regex: '^@prisma/', message: 'adapters never touch the database: call an app/ use case.' },
            { regex: '(^|/)store(/|$)', message: 'adapters call app/ use cases, never store/ queries.' },
          ],
        },
      ],
    },
  },
);
