import test from 'node:test';
import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { createLogger } from './logger.js';

test('createLogger writes JSON with the component key and redacts secrets at any usual place', () => {
  const lines: string[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      lines.push(chunk.toString());
      cb();
    },
  });
  const log = createLogger({ component: 'test', destination: sink });
  log.info({ password: 'hunter2-secret', body: { password: 'p2-secret', token: 't-secret' }, headers: { authorization: 'Bearer abc-secret' } }, 'hello');
  const out = lines.join('');
  const rec = JSON.parse(out);
  assert.equal(rec.component, 'test');
  assert.equal(rec.level, 'info');
  assert.equal(rec.msg, 'hello');
  assert.ok(!out.includes('secret'), out);
});
