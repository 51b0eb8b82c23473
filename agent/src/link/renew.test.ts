// The renewal schedule's arithmetic (renew.ts); the renewal itself runs against the real
// orchestrator in test/e2e (certs.e2e) and orchestrator/src/agent-api/renewal.test.ts.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { renewalDueAt, retryDelayMs } from './renew.js';

describe('certificate renewal schedule', () => {
  it('is due once less than the fraction of the validity is left', () => {
    assert.equal(renewalDueAt(0, 300, 1 / 3), 200);
    assert.equal(renewalDueAt(1000, 1000 + 365 * 86_400_000, 1 / 3), 1000 + (2 / 3) * 365 * 86_400_000);
    assert.equal(renewalDueAt(0, 300, 5), 0, 'the fraction is clamped to 1');
  });

  it('retries after a tenth of what is left (1 s to 10 min), and slowly once expired', () => {
    assert.equal(retryDelayMs(100_000, 0), 10_000);
    assert.equal(retryDelayMs(5_000, 0), 1_000);
    assert.equal(retryDelayMs(365 * 86_400_000, 0), 600_000);
    assert.equal(retryDelayMs(0, 1), 600_000);
  });
});
