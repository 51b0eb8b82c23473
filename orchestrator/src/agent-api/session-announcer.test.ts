// Session announcements from other instances are checked before they touch the directory (a
// malformed one is ignored). The announcements themselves, between real instances over NATS:
// ha/multi.test.ts.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { parseAnnouncement } from './session-announcer.js';

describe('session announcements', () => {
  const ok = { hostId: 'h1', instanceId: 'i1', epoch: '42', open: true, subject: 'kloudak.cmd.i1' };
  it('takes a well-formed opening or closing', () => {
    assert.deepEqual(parseAnnouncement(ok), ok);
    assert.deepEqual(parseAnnouncement({ hostId: 'h1', instanceId: 'i1', epoch: '7', open: false }), { hostId: 'h1', instanceId: 'i1', epoch: '7', open: false });
  });
  it('refuses anything else', () => {
    for (const bad of [
      null,
      'x',
      [],
      { ...ok, hostId: '' },
      { ...ok, hostId: 'h'.repeat(65) },
      { ...ok, epoch: 42 },
      { ...ok, epoch: '-1' },
      { ...ok, epoch: '1e3' },
      { ...ok, epoch: '9'.repeat(21) },
      { ...ok, open: 'yes' },
      { ...ok, subject: undefined },
      { ...ok, instanceId: 7 },
    ]) {
      assert.equal(parseAnnouncement(bad), null, JSON.stringify(bad));
    }
  });
});
