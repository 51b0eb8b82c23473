import test from 'node:test';
import assert from 'node:assert/strict';
import { ConflictError, ForbiddenError } from '@kloudak/common';
import {
  ALL_PERMISSIONS,
  effectivePermissions,
  NO_PERMISSIONS,
  requireFlags,
  requireGrantable,
  toColumns,
  type MembershipFlags,
  type Permissions,
} from './permissions.js';
import { requireAManager, requireEmptyWorkspace } from './workspaces.js';

const only = (...flags: (keyof Permissions)[]): Permissions => ({ ...NO_PERMISSIONS, ...Object.fromEntries(flags.map((f) => [f, true])) });

test('effectivePermissions: a member acts with their own flags, an admin with all, anyone else not at all', () => {
  const row = toColumns(only('vm_can_add')) as MembershipFlags; // every flag given: a whole row
  assert.deepEqual(effectivePermissions(row, false), only('vm_can_add'));
  assert.deepEqual(effectivePermissions(row, true), ALL_PERMISSIONS);
  assert.deepEqual(effectivePermissions(null, true), ALL_PERMISSIONS);
  assert.equal(effectivePermissions(null, false), null);
});

test('requireFlags names every missing flag (403)', () => {
  assert.doesNotThrow(() => requireFlags(only('user_can_add', 'user_can_edit'), 'user_can_add', 'user_can_edit'));
  assert.throws(
    () => requireFlags(only('user_can_add'), 'user_can_add', 'user_can_edit', 'user_can_delete'),
    (e: unknown) => e instanceof ForbiddenError && /user_can_edit and user_can_delete/.test(e.message),
  );
});

test('requireGrantable refuses granting a flag one does not hold, never taking one away', () => {
  const editor = only('user_can_edit', 'vm_can_add');
  assert.doesNotThrow(() => requireGrantable(editor, { vm_can_add: true, vm_can_delete: false, network_can_add: false }));
  assert.doesNotThrow(() => requireGrantable(editor, undefined));
  assert.throws(
    () => requireGrantable(editor, { vm_can_delete: true, network_can_add: true, vm_can_add: true }),
    (e: unknown) => e instanceof ForbiddenError && /cannot grant vm_can_delete, network_can_add,/.test(e.message),
  );
  assert.doesNotThrow(() => requireGrantable(ALL_PERMISSIONS, only(...(Object.keys(ALL_PERMISSIONS) as (keyof Permissions)[]))));
});

test('a workspace keeps a manager, and is deleted only when it holds nothing', () => {
  assert.doesNotThrow(() => requireAManager(1));
  assert.throws(() => requireAManager(0), ConflictError);
  assert.doesNotThrow(() => requireEmptyWorkspace({ vms: 0, networks: 0 }));
  assert.throws(
    () => requireEmptyWorkspace({ vms: 2, networks: 1 }),
    (e: unknown) => e instanceof ConflictError && e.details?.['vms'] === 2 && e.details?.['networks'] === 1,
  );
});
