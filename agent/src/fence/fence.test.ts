// The lease with a fake monotonic clock, and self-fencing of REAL domains on a simulated host:
// the HA one is destroyed, the other kept, and the record is on disk before and after.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Libvirt } from '@kloudak/libvirt';
import { ensureLibvirtd } from '@kloudak/libvirt/testing';
import { pino } from 'pino';
import { LibvirtHypervisor } from '../hypervisor/libvirt-hypervisor.js';
import { domainName } from '../names.js';
import type { Hypervisor } from '../ports.js';
import { DEFAULT_HOST_SETTINGS } from '../settings.js';
import { createSimHost } from '../testing/sim-host.js';
import { domainXml } from '../xml/domain.js';
import { Lease, type LeaseClock, type LeaseExpiry } from './lease.js';
import { FenceStore } from './records.js';
import { isHaDomainXml, selfFence } from './self-fence.js';

/** A manual clock: time moves only when the test says so; timers fire as it passes them. */
class FakeClock implements LeaseClock {
  t = 1000;
  private timers: Array<{ at: number; fn: () => void; id: number }> = [];
  private next = 1;
  now(): number {
    return this.t;
  }
  wallNow(): number {
    return 1_700_000_000_000 + this.t;
  }
  setTimer(fn: () => void, ms: number): unknown {
    const id = this.next++;
    this.timers.push({ at: this.t + ms, fn, id });
    return id;
  }
  clearTimer(h: unknown): void {
    this.timers = this.timers.filter((x) => x.id !== h);
  }
  advance(ms: number): void {
    const end = this.t + ms;
    for (;;) {
      const due = this.timers.filter((x) => x.at <= end).sort((a, b) => a.at - b.at)[0];
      if (!due) break;
      this.timers = this.timers.filter((x) => x !== due);
      this.t = Math.max(this.t, due.at);
      due.fn();
    }
    this.t = end;
  }
}

describe('lease', () => {
  function setup(maxMs = 15_000) {
    const clock = new FakeClock();
    const expiries: LeaseExpiry[] = [];
    const lease = new Lease({ maxMs, clock, onExpire: (e) => expiries.push(e) });
    return { clock, expiries, lease };
  }

  it('runs from the SEND time of the acknowledged heartbeat, capped by the agent\'s maximum', () => {
    const { clock, expiries, lease } = setup(10_000);
    lease.noteSent(1n); // sent at 1000
    clock.advance(3000); // the grant arrives 3 s later
    assert.equal(lease.grant(1n, 5000), true);
    assert.equal(lease.expiresAt, 6000, 'send time + duration, not arrival + duration');
    clock.advance(1999);
    assert.equal(expiries.length, 0);
    clock.advance(1);
    assert.equal(expiries.length, 1);
    assert.equal(expiries[0]!.expiredAtMono, 6000);
    assert.equal(expiries[0]!.expiredAt.getTime(), 1_700_000_000_000 + 6000);

    lease.noteSent(2n);
    lease.grant(2n, 60_000);
    assert.equal(lease.expiresAt, clock.now() + 10_000, 'capped at KLOUDAK_AGENT_FENCE_LEASE_MS');
  });

  it('ignores grants for heartbeats it never sent and never lets an old grant shorten the lease', () => {
    const { clock, expiries, lease } = setup();
    assert.equal(lease.grant(7n, 5000), false);
    assert.equal(lease.expiresAt, null);
    lease.noteSent(1n);
    clock.advance(100);
    lease.noteSent(2n);
    lease.grant(2n, 5000);
    const until = lease.expiresAt;
    assert.equal(lease.grant(1n, 5000), false, 'older sequences are dropped once a newer one is granted');
    assert.equal(lease.expiresAt, until);
    clock.advance(4999);
    assert.equal(expiries.length, 0);
    assert.equal(lease.valid, true);
  });

  it('expires once, and a later grant re-arms it', () => {
    const { clock, expiries, lease } = setup();
    lease.startProvisional();
    clock.advance(15_000);
    assert.equal(expiries.length, 1, 'a fresh agent without any grant fences after one maximum lease');
    clock.advance(60_000);
    assert.equal(expiries.length, 1, 'only once');
    lease.newSession();
    lease.noteSent(0n);
    lease.grant(0n, 2000);
    assert.equal(lease.valid, true);
    clock.advance(2000);
    assert.equal(expiries.length, 2);
    lease.stop();
  });
});

describe('self-fencing of real domains on a simulated host', { timeout: 60_000 }, () => {
  let dir: string;
  let lv: Libvirt;
  let hv: Hypervisor;
  const ha = randomUUID();
  const plain = randomUUID();
  const off = randomUUID();
  const log = pino({ level: 'silent' });

  before(async () => {
    await ensureLibvirtd();
    dir = mkdtempSync(join(tmpdir(), 'kfence-'));
    const sim = createSimHost({ dir });
    lv = await Libvirt.connect({ uri: sim.uri });
    hv = new LibvirtHypervisor(lv);
    const settings = { ...DEFAULT_HOST_SETTINGS, domainType: 'qemu' as const, consoleDir: dir, seedDir: dir };
    for (const [vmId, isHa, start] of [
      [ha, true, true],
      [plain, false, true],
      [off, true, false],
    ] as const) {
      const spec = { vmId, hostname: 'g', cpu: 1, ramMb: 128, diskGb: 1, pool: sim.poolName, templateVolume: sim.templateVolume, nics: [], sshKeys: [], ha: isHa };
      await hv.define(domainXml(spec, settings));
      if (start) await hv.start(domainName(vmId));
    }
  });

  after(async () => {
    await lv?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('reads the HA flag from the domain XML libvirt returns', async () => {
    assert.equal(isHaDomainXml(await hv.xml(domainName(ha))), true);
    assert.equal(isHaDomainXml(await hv.xml(domainName(plain))), false);
    assert.equal(isHaDomainXml('<domain><metadata><x:vm xmlns:x="urn:other"><x:ha>true</x:ha></x:vm></metadata></domain>'), false);
  });

  it('writes the record first, destroys running HA domains only, and rewrites the record', async () => {
    const store = new FenceStore(join(dir, 'data'));
    // The record must exist (and list nothing yet) when the first destroy happens.
    const seenAtDestroy: string[] = [];
    const watching: Hypervisor = Object.create(hv) as Hypervisor;
    watching.destroy = async (name: string) => {
      const files = readdirSync(store.dir);
      seenAtDestroy.push(...files.map((f) => readFileSync(join(store.dir, f), 'utf8')));
      return hv.destroy(name);
    };
    const expired = new Date('2026-11-25T10:00:00.000Z');
    const { file, record } = await selfFence({ hypervisor: watching, store, log }, expired, 'lease expired');
    assert.equal(file, '2026-11-25T10:00:00.000Z.json');
    assert.equal(seenAtDestroy.length, 1);
    assert.deepEqual(JSON.parse(seenAtDestroy[0]!).domains, [], 'on disk before the destroy, without domains yet');

    assert.equal(await hv.state(domainName(ha)), 'shutoff');
    assert.equal(await hv.state(domainName(plain)), 'running', 'non-HA keeps running');
    assert.deepEqual(record.domains, [{ domainName: domainName(ha), vmId: ha }]);
    const onDisk = (await store.list())[0]!.record;
    assert.deepEqual(onDisk.domains, record.domains);
    assert.equal(onDisk.leaseExpiredAt, expired.toISOString());
    assert.ok(onDisk.fencedAt);

    await store.delete(file);
    assert.equal(await store.count(), 0);
  });
});
