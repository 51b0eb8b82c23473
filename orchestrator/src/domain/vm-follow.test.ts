import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { followDomain, HA_RESTART_LIMIT, observedFromEvent, type FollowFacts } from './vm-follow.js';

const facts = (over: Partial<FollowFacts> = {}): FollowFacts => ({ vmState: 'running', ha: true, busy: false, hostUp: true, recentHaRestarts: 0, ...over });

describe('observedFromEvent', () => {
  it('reads a guest shutdown, a destroy, a crash and a failed QEMU as off, a boot as running', () => {
    assert.equal(observedFromEvent('stopped', 'shutdown')?.observed, 'off');
    assert.equal(observedFromEvent('stopped', 'destroyed')?.observed, 'off');
    assert.equal(observedFromEvent('stopped', 'failed')?.observed, 'off');
    assert.equal(observedFromEvent('crashed', 'crashed')?.observed, 'off');
    assert.equal(observedFromEvent('started', 'booted')?.observed, 'running');
  });
  it('ignores what leaves the domain alive elsewhere or changes no state: migration, save, pause, a panic that keeps the domain', () => {
    for (const [event, detail] of [
      ['stopped', 'migrated'],
      ['stopped', 'saved'],
      ['stopped', 'from-snapshot'],
      ['started', 'migrated'],
      ['started', 'restored'],
      ['crashed', 'panicked'],
      ['suspended', 'paused'],
      ['resumed', 'unpaused'],
      ['shutdown', 'finished'],
    ] as const) {
      assert.equal(observedFromEvent(event, detail), null, `${event}/${detail}`);
    }
  });
});

describe('followDomain', () => {
  it('starts an HA VM found off again, below the limit', () => {
    const a = followDomain('off', 'the guest crashed', facts({ recentHaRestarts: HA_RESTART_LIMIT - 1 }));
    assert.equal(a.kind, 'restart');
    assert.match(a.kind === 'restart' ? a.reason : '', /^the guest crashed: HA starts it again/);
  });
  it('gives up at the limit: the VM stays stopped, and the reason says why and what to do', () => {
    const a = followDomain('off', 'the guest crashed', facts({ recentHaRestarts: HA_RESTART_LIMIT }));
    assert.equal(a.kind, 'stopped');
    assert.match(a.kind === 'stopped' ? a.reason : '', /restarted it 3 times in the last 10 minutes and gives up/);
  });
  it('records a non-HA VM found off as stopped, with the cause', () => {
    assert.deepEqual(followDomain('off', 'the guest shut itself down', facts({ ha: false })), { kind: 'stopped', reason: 'the guest shut itself down' });
  });
  it('records a stopped VM found running as running', () => {
    assert.equal(followDomain('running', 'x', facts({ vmState: 'stopped' })).kind, 'running');
    assert.equal(followDomain('running', 'x', facts({ vmState: 'running' })).kind, 'none');
  });
  it('leaves the VM to a task working on it, to failover when its host is not up, and alone in any other state', () => {
    assert.equal(followDomain('off', 'x', facts({ busy: true })).kind, 'none');
    assert.equal(followDomain('running', 'x', facts({ vmState: 'stopped', busy: true })).kind, 'none');
    assert.equal(followDomain('off', 'x', facts({ hostUp: false })).kind, 'none');
    for (const vmState of ['pending', 'creating', 'stopped', 'lost', 'recovering', 'migrating', 'deleting', 'error']) {
      assert.equal(followDomain('off', 'x', facts({ vmState })).kind, 'none', vmState);
    }
  });
});
