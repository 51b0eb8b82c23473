import test from 'node:test';
import assert from 'node:assert/strict';
import { ConflictError, KloudakError, NotFoundError } from '@kloudak/common';
import { errorResponse, HTTP_STATUS, toKloudakError } from './errors.js';

function prismaError(code: string, meta?: Record<string, unknown>) {
  return Object.assign(new Error('db says no: secret detail'), { name: 'PrismaClientKnownRequestError', code, meta });
}

test('every error code maps to a 4xx, except internal and unavailable', () => {
  for (const [code, status] of Object.entries(HTTP_STATUS)) {
    if (code === 'internal') assert.equal(status, 500);
    else if (code === 'unavailable') assert.equal(status, 503);
    else assert.ok(status >= 400 && status < 500, code);
  }
});

test('toKloudakError maps database constraint errors to conflicts and not-found', () => {
  assert.equal(toKloudakError(prismaError('P2002')).code, 'conflict');
  assert.equal(toKloudakError(prismaError('P2003')).code, 'conflict');
  assert.equal(toKloudakError(prismaError('P2025')).code, 'not_found');
  const restrict = prismaError('P2039', { driverAdapterError: { cause: { originalCode: '23001' } } });
  assert.equal(toKloudakError(restrict).code, 'conflict');
  const unique = prismaError('P2010', { driverAdapterError: { cause: { originalCode: '23505' } } });
  assert.equal(toKloudakError(unique).code, 'conflict');
});

test('unknown errors become an internal error that reveals nothing', () => {
  const e = toKloudakError(new TypeError('cannot read x of undefined at /srv/secret/path.js'));
  assert.equal(e.code, 'internal');
  assert.equal(e.message, 'internal error');
  const { status, body } = errorResponse(e, 'req-1');
  assert.equal(status, 500);
  assert.deepEqual(body, { error: { code: 'internal', message: 'internal error', requestId: 'req-1' } });
  assert.equal(toKloudakError(new URIError('bad %')).code, 'bad_request');
  assert.equal(toKloudakError(prismaError('P9999')).code, 'internal');
  assert.equal(toKloudakError(prismaError('P1001')).code, 'unavailable');
  assert.equal(toKloudakError(Object.assign(new Error('x'), { name: 'PrismaClientInitializationError' })).code, 'unavailable');
});

test('typed errors keep their code, message and details', () => {
  const nf = new NotFoundError('workspace', 'w1');
  assert.equal(toKloudakError(nf), nf);
  assert.deepEqual(errorResponse(new ConflictError('busy', { vms: 2 }), 'r').body.error.details, { vms: 2 });
  assert.equal(errorResponse(new KloudakError('rate_limited', 'slow down'), 'r').status, 429);
});
