import test from 'node:test';
import assert from 'node:assert/strict';
import { RevertStack } from './revert.js';

test('RevertStack undoes completed steps newest first and rethrows the original error', async () => {
  const log: string[] = [];
  const boom = new Error('step 3 failed');
  await assert.rejects(
    RevertStack.run(async (s) => {
      log.push('do 1');
      s.push('one', async () => void log.push('undo 1'));
      log.push('do 2');
      s.push('two', async () => void log.push('undo 2'));
      throw boom;
    }),
    (e) => e === boom,
  );
  assert.deepEqual(log, ['do 1', 'do 2', 'undo 2', 'undo 1']);
});

test('a failing undo does not stop the others and is reported on the error', async () => {
  const log: string[] = [];
  const err = await RevertStack.run(async (s) => {
    s.push('a', async () => void log.push('undo a'));
    s.push('b', async () => {
      throw new Error('cannot undo b');
    });
    s.push('c', async () => void log.push('undo c'));
    throw new Error('fail');
  }).catch((e: Error & { revertFailures?: { what: string }[] }) => e);
  assert.deepEqual(log, ['undo c', 'undo a']);
  assert.deepEqual(err.revertFailures?.map((f) => f.what), ['b']);
});

test('success runs no undo', async () => {
  let undone = false;
  const v = await RevertStack.run(async (s) => {
    s.push('x', async () => {
      undone = true;
    });
    return 42;
  });
  assert.equal(v, 42);
  assert.equal(undone, false);
});
