import test from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Type } from '@sinclair/typebox';
import { envLayer, fileLayer, flagLayer, loadConfig } from './config.js';
import { ConfigError } from './errors.js';

const Schema = Type.Object(
  {
    port: Type.Integer({ minimum: 1, maximum: 65535, default: 8080 }),
    host: Type.String({ default: '127.0.0.1' }),
    signup: Type.Boolean({ default: true }),
  },
  { additionalProperties: false },
);

test('loadConfig layers defaults, file, env and flags in that order and freezes the result', () => {
  const cfg = loadConfig(Schema, { file: { port: 1000, host: 'file' }, env: { port: '2000' }, flags: { port: '3000' } });
  assert.deepEqual(cfg, { port: 3000, host: 'file', signup: true });
  assert.ok(Object.isFrozen(cfg));
  assert.deepEqual(loadConfig(Schema, { env: { signup: 'false' } }).signup, false);
  assert.equal(loadConfig(Schema, {}).port, 8080);
});

test('loadConfig refuses wrong types, out-of-range values and unknown keys with their paths', () => {
  assert.throws(() => loadConfig(Schema, { env: { port: 'seventy' } }), (e: Error) => e instanceof ConfigError && /\/port/.test(e.message));
  assert.throws(() => loadConfig(Schema, { flags: { port: '70000' } }), /\/port/);
  assert.throws(() => loadConfig(Schema, { file: { prot: 1 } }), ConfigError);
});

test('envLayer, flagLayer and fileLayer map their sources to keys', () => {
  assert.deepEqual(envLayer({ A_PORT: '1', OTHER: 'x', EMPTY: '' }, { A_PORT: 'port', EMPTY: 'host' }), { port: '1' });
  assert.deepEqual(flagLayer(['serve', '--port', '9', '--host=h', '--unknown', 'z'], { port: 'port', host: 'host' }), { port: '9', host: 'h' });
  const dir = mkdtempSync(join(tmpdir(), 'cfg-'));
  try {
    writeFileSync(join(dir, 'ok.json'), '{"port": 5}');
    writeFileSync(join(dir, 'bad.json'), '{port');
    writeFileSync(join(dir, 'arr.json'), '[1]');
    assert.deepEqual(fileLayer(join(dir, 'ok.json'), true), { port: 5 });
    assert.deepEqual(fileLayer(join(dir, 'missing.json'), false), {});
    assert.throws(() => fileLayer(join(dir, 'missing.json'), true), ConfigError);
    assert.throws(() => fileLayer(join(dir, 'bad.json'), true), /not valid JSON/);
    assert.throws(() => fileLayer(join(dir, 'arr.json'), true), /JSON object/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
