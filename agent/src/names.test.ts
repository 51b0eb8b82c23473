import test from 'node:test';
import assert from 'node:assert/strict';
import { domainName, rootVolumeName, seedVolumeName, tapName, vmIdOfDomain } from './names.js';

const ID = '1a2b3c4d-5e6f-4a1b-8c2d-0123456789ab';

test('names derive from ids only and fit their limits', () => {
  assert.equal(domainName(ID), `kloudak-${ID}`);
  assert.equal(rootVolumeName(ID), `kloudak-${ID}-root.qcow2`);
  assert.equal(seedVolumeName(ID), `kloudak-${ID}-seed.iso`);
  assert.equal(tapName(ID, 0), 'kl1a2b3c4d5e-0');
  assert.ok(tapName(ID, 99).length <= 15);
  assert.equal(vmIdOfDomain(domainName(ID)), ID);
  assert.equal(vmIdOfDomain('web'), null);
  assert.equal(vmIdOfDomain('kloudak-web'), null);
});

test('anything but a lower-case UUID is refused before it reaches a name', () => {
  for (const bad of ['web', '../etc', `${ID} `, ID.toUpperCase(), "x'; rm -rf /", '']) {
    assert.throws(() => domainName(bad), /not a Kloudak id/);
  }
  assert.throws(() => tapName(ID, 100));
  assert.throws(() => tapName(ID, 0, 'k'), /bad tap prefix/);
  assert.throws(() => tapName(ID, 0, 'k;'), /bad tap prefix/);
});

test('a host with a tap prefix of its own names its taps with it (two simulated hosts in one network stack)', () => {
  assert.equal(tapName(ID, 1, 'kb'), 'kb1a2b3c4d5e-1');
  assert.ok(tapName(ID, 99, 'zz').length <= 15);
});
