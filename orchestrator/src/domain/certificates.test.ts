import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { serialStanding } from './certificates.js';

describe('certificate serials a host may present', () => {
  const now = Date.parse('2026-12-05T06:00:00Z');
  const h = { certSerial: 'b2', prevCertSerial: 'a1', prevCertValidUntil: new Date(now + 1000) };

  it('accepts the current serial, and the replaced one only inside its grace', () => {
    assert.equal(serialStanding(h, 'b2', now), 'current');
    assert.equal(serialStanding(h, 'a1', now), 'previous');
    assert.equal(serialStanding(h, 'a1', now + 1000), 'refused');
    assert.equal(serialStanding({ ...h, prevCertValidUntil: null }, 'a1', now), 'refused');
  });

  it('refuses any other serial, and every serial of a re-keyed host', () => {
    assert.equal(serialStanding(h, 'c3', now), 'refused');
    assert.equal(serialStanding({ certSerial: null, prevCertSerial: null, prevCertValidUntil: null }, 'b2', now), 'refused');
  });

});
