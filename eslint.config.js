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
);
