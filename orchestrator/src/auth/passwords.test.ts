import test from 'node:test';
import assert from 'node:assert/strict';
import { hashPassword, passwordWeakness, verifyPassword } from './passwords.js';

test('hashPassword and verifyPassword round-trip; wrong password and malformed hash fail', async () => {
  const h = await hashPassword('Correct-Horse-9', 12);
  assert.match(h, /^scrypt\$12\$8\$1\$/);
  assert.ok(!h.includes('Correct-Horse-9'));
  assert.equal(await verifyPassword('Correct-Horse-9', h), true);
  assert.equal(await verifyPassword('correct-horse-9', h), false);
  assert.equal(await verifyPassword('Correct-Horse-9', 'plain'), false);
  assert.equal(await verifyPassword('Correct-Horse-9', 'scrypt$99$8$1$AA$AA'), false);
  assert.notEqual(await hashPassword('Correct-Horse-9', 12), h, 'salted');
});

test('passwordWeakness enforces the strength rules', () => {
  assert.equal(passwordWeakness('Tr0ub4dor&3x', 'alice'), null);
  assert.equal(passwordWeakness('a long passphrase of words', 'alice'), null);
  assert.match(passwordWeakness('Sh0rt!', 'alice') ?? '', /at least 10/);
  assert.match(passwordWeakness('password123', 'alice') ?? '', /common/);
  assert.match(passwordWeakness('xXalice-2024!', 'alice') ?? '', /username/);
  assert.match(passwordWeakness('alllowercase', 'bob') ?? '', /three of/);
  assert.match(passwordWeakness('aaaaaaaaaaaaaaaaaaaa', 'bob') ?? '', /distinct/);
});
