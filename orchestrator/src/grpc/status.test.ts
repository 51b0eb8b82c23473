// The one table from error codes to gRPC statuses, and the field paths of INVALID_ARGUMENT.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { status } from '@grpc/grpc-js';
import { ConflictError, ForbiddenError, KloudakError, NotFoundError, RateLimitedError, UnauthenticatedError, ValidationError, type ErrorCode } from '@kloudak/common';
import { HTTP_STATUS } from '../http/errors.js';
import { CONFLICT_STATUS, fieldPath, fieldViolations, GRPC_STATUS, grpcStatusOf, STATUS_DETAILS_KEY, toGrpcError } from './status.js';

test('every error code has a gRPC status, and each HTTP status class maps to the expected gRPC one', () => {
  assert.deepEqual(Object.keys(GRPC_STATUS).sort(), Object.keys(HTTP_STATUS).sort());
  const want: Record<ErrorCode, status> = {
    bad_request: status.INVALID_ARGUMENT,
    validation_failed: status.INVALID_ARGUMENT,
    unauthenticated: status.UNAUTHENTICATED,
    forbidden: status.PERMISSION_DENIED,
    not_found: status.NOT_FOUND,
    conflict: status.FAILED_PRECONDITION,
    unprocessable: status.INVALID_ARGUMENT,
    payload_too_large: status.RESOURCE_EXHAUSTED,
    unsupported_media_type: status.INVALID_ARGUMENT,
    rate_limited: status.RESOURCE_EXHAUSTED,
    unavailable: status.UNAVAILABLE,
    internal: status.INTERNAL,
  };
  assert.deepEqual(GRPC_STATUS, want);
  assert.deepEqual(CONFLICT_STATUS, { exists: status.ALREADY_EXISTS, state: status.FAILED_PRECONDITION, quota: status.RESOURCE_EXHAUSTED });
});

test('typed errors map to their statuses; conflicts by kind', () => {
  const cases: [KloudakError, status][] = [
    [new UnauthenticatedError(), status.UNAUTHENTICATED],
    [new ForbiddenError(), status.PERMISSION_DENIED],
    [new NotFoundError('workspace', 'x'), status.NOT_FOUND],
    [new ValidationError('bad'), status.INVALID_ARGUMENT],
    [new ConflictError('taken', { field: 'name' }, 'exists'), status.ALREADY_EXISTS],
    [new ConflictError('running'), status.FAILED_PRECONDITION],
    [new KloudakError('conflict', 'quota exceeded', { conflict: 'quota' }), status.RESOURCE_EXHAUSTED],
    [new RateLimitedError(30), status.RESOURCE_EXHAUSTED],
  ];
  for (const [e, s] of cases) assert.equal(grpcStatusOf(e), s, e.message);
  // HTTP keeps one 409 and one code for every conflict.
  assert.equal(new ConflictError('taken', undefined, 'exists').code, 'conflict');
  assert.equal(new ForbiddenError().conflict, undefined);
});

test('anything else is INTERNAL and reveals nothing', () => {
  const g = toGrpcError(new Error('password=hunter2 at /srv/secret'));
  assert.equal(g.code, status.INTERNAL);
  assert.equal(g.details, 'internal error');
  assert.ok(Buffer.isBuffer(g.metadata.get(STATUS_DETAILS_KEY)[0]));
});

test('field paths: REST pointers become the request fields', () => {
  assert.equal(fieldPath('/ramMb'), 'ram_mb');
  assert.equal(fieldPath('/networks/1'), 'networks[1]');
  assert.equal(fieldPath('/permissions/vm_can_add'), 'permissions.vm_can_add');
  assert.equal(fieldPath('/ws'), 'workspace');
  assert.equal(fieldPath('/limits.ram_mb'), 'limits.ram_mb');
  assert.deepEqual(fieldViolations(new ValidationError('invalid body', { problems: [{ path: '/sshKeys/0', message: 'must match' }] })), [{ field: 'ssh_keys[0]', description: 'must match' }]);
  assert.deepEqual(fieldViolations(new ValidationError("no template named 'x'", { field: 'template' })), [{ field: 'template', description: "no template named 'x'" }]);
  assert.deepEqual(fieldViolations(new NotFoundError('vm')), []);
});
