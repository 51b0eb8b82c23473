// The lease with a fake monotonic clock, and self-fencing of REAL domains on a simulated host:
// the HA one is destroyed, the other kept, the record written after (and a record that cannot be
// written, on a read-only data dir, stops nothing); the lease gate of domain starts and the second
// fencing pass, with a createVm in flight when the lease runs out.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Libvirt } from '@kloudak/libvirt';
import { ensureLibvirtd } from '@kloudak/libvirt/testing';
import { pino } from 'pino';
import { IsoSeedBuilder } from '../cloudinit/seed.js';
import { LibvirtHypervisor } from '../hypervisor/libvirt-hypervisor.js';
import { domainName } from '../names.js';
import { OvsNetworkDriver } from '../network/ovs.js';
import { HostOperations } from '../ops/host-ops.js';
import type { Hypervisor } from '../ports.js';
import { CommandDispatcher } from '../runner/commands.js';
import { DEFAULT_HOST_SETTINGS, type HostSettings } from '../settings.js';
import type { VmSpec } from '../spec.js';
import { LibvirtStorage } from '../storage/libvirt-storage.js';
import { ProcessRunner } from '../system/command-runner.js';
import { createSimHost, type SimHost } from '../testing/sim-host.js';
import { domainXml } from '../xml/domain.js';
import { Fencer } from './fencer.js';
import { Lease, type LeaseClock, type LeaseExpiry } from './lease.js';
import { FenceStore } from './records.js';
import { QemuPidfiles } from './qemu-pidfiles.js';
import { isHaDomainXml, selfFence } from './self-fence.js';
import { LeaseExpiredError, StartGate } from './start-gate.js';

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

  it('the first grant replaces a provisional lease, even a longer one: the orchestrator counts from its grants only', () => {
    const { clock, expiries, lease } = setup(15_000);
    const ends: number[] = [];
    const tracked = new Lease({ maxMs: 15_000, clock, onExpire: (e) => expiries.push(e), onChange: (end) => ends.push(end) });
    const t0 = clock.now();
    tracked.startProvisional(); // a fresh agent: 15 s, no earlier lease recorded
    assert.equal(tracked.isProvisional, true);
    clock.advance(1000);
    tracked.newSession();
    tracked.noteSent(0n); // Hello 1 s after the start, granted 4 s
    clock.advance(50);
    tracked.grant(0n, 4000);
    assert.equal(tracked.isProvisional, false);
    assert.equal(tracked.expiresAt, t0 + 5000, 'Hello send time + the grant, not the provisional 15 s');
    assert.deepEqual(ends, [t0 + 15_000, t0 + 5000], 'the fence guard and lease.json follow it down');
    clock.advance(3949);
    assert.equal(expiries.length, 0);
    clock.advance(1);
    assert.equal(expiries.length, 1, 'cut off after the first grant: fenced at that grant\'s end');
    // From then on a grant never shortens the lease.
    tracked.noteSent(1n);
    tracked.grant(1n, 4000);
    tracked.noteSent(2n);
    tracked.grant(2n, 1000);
    assert.equal(tracked.expiresAt, t0 + 9000);
    tracked.stop();
    lease.stop();
  });

  it('a first grant that is already over when it arrives fences at once, and only once', () => {
    const { clock, expiries, lease } = setup(15_000);
    const t0 = clock.now();
    lease.startProvisional(); // 15 s
    lease.newSession();
    lease.noteSent(0n);
    clock.advance(3000); // the grant of 2 s takes 3 s to arrive
    lease.grant(0n, 2000);
    clock.advance(0);
    assert.equal(expiries.length, 1);
    assert.equal(expiries[0]!.expiredAtMono, t0 + 2000);
    clock.advance(20_000);
    assert.equal(expiries.length, 1, 'the provisional lease\'s timer is gone');
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

  it('destroys running HA domains only, then writes one finished record', async () => {
    const store = new FenceStore(join(dir, 'data'));
    // Nothing is written before the destroys: they must never wait on (or fail with) the disk.
    const seenAtDestroy: string[] = [];
    const watching: Hypervisor = Object.create(hv) as Hypervisor;
    watching.destroy = async (name: string) => {
      seenAtDestroy.push(...(existsSync(store.dir) ? readdirSync(store.dir) : []));
      return hv.destroy(name);
    };
    const expired = new Date('2026-11-25T10:00:00.000Z');
    const { file, record } = await selfFence({ hypervisor: watching, store, log }, expired, 'lease expired');
    assert.equal(file, '2026-11-25T10:00:00.000Z.json');
    assert.deepEqual(seenAtDestroy, [], 'no record on disk while destroying');
    assert.deepEqual(readdirSync(store.dir), [file], 'one file, written once');
    assert.ok(JSON.parse(readFileSync(join(store.dir, file!), 'utf8')).fencedAt, 'finished when written');

    assert.equal(await hv.state(domainName(ha)), 'shutoff');
    assert.equal(await hv.state(domainName(plain)), 'running', 'non-HA keeps running');
    assert.deepEqual(record.domains, [{ domainName: domainName(ha), vmId: ha, method: 'libvirt' }]);
    const onDisk = (await store.list())[0]!.record;
    assert.deepEqual(onDisk.domains, record.domains);
    assert.equal(onDisk.leaseExpiredAt, expired.toISOString());
    assert.ok(onDisk.fencedAt);

    await store.delete(file!);
    assert.equal(await store.count(), 0);
  });

  it('a destroy libvirt confirms too late still counts: the pid files show no QEMU left, the record names the domain', async () => {
    await hv.start(domainName(ha));
    const store = new FenceStore(join(dir, 'late-data'));
    // Fault injection: libvirt destroys the domain but answers after the fence's 100 ms limit
    // (a loaded host). No QEMU of it is left in the (empty) run dir, as after a real destroy.
    const slow: Hypervisor = Object.create(hv) as Hypervisor;
    slow.destroy = async (name: string) => {
      await hv.destroy(name);
      await new Promise((r) => setTimeout(r, 400));
    };
    const runDir = mkdtempSync(join(tmpdir(), 'kfence-run-'));
    try {
      const { record } = await selfFence(
        { hypervisor: slow, store, log, libvirtTimeoutMs: 100, pidfiles: new QemuPidfiles({ runDir }) },
        new Date(),
        'lease expired',
      );
      assert.equal(await hv.state(domainName(ha)), 'shutoff');
      assert.deepEqual(record.domains, [{ domainName: domainName(ha), vmId: ha, method: 'libvirt' }]);
      assert.equal(record.failures, undefined);
    } finally {
      rmSync(runDir, { recursive: true, force: true });
    }
  });

  it('on a read-only data dir it still destroys the HA domains, and logs that the record failed', async () => {
    await hv.start(domainName(ha));
    assert.equal(await hv.state(domainName(ha)), 'running');
    // A real read-only file system: a bind mount remounted read-only (as root, chmod stops nothing).
    const data = join(dir, 'ro-data');
    mkdirSync(data);
    execFileSync('mount', ['--bind', data, data]);
    try {
      execFileSync('mount', ['-o', 'remount,bind,ro', data]);
      assert.throws(() => writeFileSync(join(data, 'probe'), 'x'), /EROFS/, 'the data dir really is read-only');
      const lines: string[] = [];
      const recording = pino({ level: 'error' }, { write: (l: string) => void lines.push(l) });
      const store = new FenceStore(data);
      const { file, record } = await selfFence({ hypervisor: hv, store, log: recording }, new Date(), 'lease expired');
      assert.equal(await hv.state(domainName(ha)), 'shutoff', 'the HA domain was destroyed anyway');
      assert.equal(await hv.state(domainName(plain)), 'running');
      assert.deepEqual(record.domains, [{ domainName: domainName(ha), vmId: ha, method: 'libvirt' }]);
      assert.equal(file, null, 'no record');
      assert.ok(
        // (node's recursive mkdir reports a read-only parent as ENOENT; the error is logged as it comes)
        lines.some((l) => /record cannot be written/.test(l) && /"code":"E[A-Z]+"/.test(l) && l.includes(data)),
        `the failure is logged: ${lines.join('')}`,
      );
    } finally {
      execFileSync('umount', [data]);
    }
  });
});

describe('the lease gate of domain starts, and the second fencing pass (simulated host)', { timeout: 60_000 }, () => {
  let dir: string;
  let sim: SimHost;
  let lv: Libvirt;
  let hv: LibvirtHypervisor;
  let lease: Lease;
  let gate: StartGate;
  let fencer: Fencer;
  let store: FenceStore;
  let settings: HostSettings;
  const log = pino({ level: 'silent' });
  const inFlight = randomUUID();

  const spec = (vmId: string, ha = true): VmSpec => ({ vmId, hostname: 'g', cpu: 1, ramMb: 128, diskGb: 1, pool: sim.poolName, templateVolume: sim.templateVolume, nics: [], sshKeys: [], ha });
  const opsWith = (hypervisor: Hypervisor): HostOperations =>
    new HostOperations({
      hypervisor,
      storage: new LibvirtStorage(lv),
      network: new OvsNetworkDriver(new ProcessRunner(), { datapathType: 'netdev' }),
      seeds: new IsoSeedBuilder(new ProcessRunner()),
      settings,
      gate,
    });

  before(async () => {
    await ensureLibvirtd();
    dir = mkdtempSync(join(tmpdir(), 'kgate-'));
    sim = createSimHost({ dir });
    lv = await Libvirt.connect({ uri: sim.uri });
    hv = new LibvirtHypervisor(lv);
    settings = { ...DEFAULT_HOST_SETTINGS, domainType: 'qemu', ovsDatapath: 'netdev', nicOffload: false, consoleDir: dir, seedDir: dir };
    store = new FenceStore(join(dir, 'data'));
    gate = new StartGate(() => lease.valid);
    fencer = new Fencer({ hypervisor: hv, store, gate, log, retryDelayMs: 50 });
    // The real clock: a lease of 3 s from now, then nothing (no orchestrator grants it).
    lease = new Lease({ maxMs: 3000, onExpire: (e) => fencer.onExpire(e) });
  });

  after(async () => {
    lease?.stop();
    await fencer?.idle();
    await lv?.close(); // the simulated host, and every domain and volume on it, goes with the connection
    rmSync(dir, { recursive: true, force: true });
  });

  it('a createVm in flight when the lease runs out leaves no running HA domain', async () => {
    // Fault injection: this VM's define is slow. It passes the gate while the lease is held, and
    // goes on only once the lease has run out and the first fencing pass has listed the domains.
    let entered!: () => void;
    const defineEntered = new Promise<void>((r) => (entered = r));
    const slow = Object.create(hv) as Hypervisor;
    slow.define = async (xml: string) => {
      entered();
      while (lease.valid || (await store.count()) === 0) await new Promise((r) => setTimeout(r, 20));
      return hv.define(xml);
    };
    const fenced = fencer.fenced();
    lease.startProvisional();
    const create = opsWith(slow).createVm(spec(inFlight));
    await defineEntered;
    await create; // it started on the old lease
    assert.equal(await fenced, true, 'both passes destroyed every HA domain'); // both passes
    assert.equal(await hv.state(domainName(inFlight)), 'shutoff', 'the HA domain started by the command in flight was destroyed');
    const records = await store.finished();
    assert.deepEqual(
      records.map((r) => r.record.domains.map((d) => d.vmId)),
      [[], [inFlight]],
      'pass 1 found nothing running; pass 2 destroyed what the in-flight command started',
    );
  });

  it('a fence that could not destroy every HA domain says so (no "fenced" is announced for it)', async () => {
    // Fault injection: libvirt never connects and there are no pid files to fall back on.
    const blind = new Fencer({ hypervisor: () => null, store, gate, log, retryDelayMs: 10, maxAttempts: 2 });
    const done = blind.fenced();
    blind.onExpire({ expiredAt: new Date(), expiredAtMono: performance.now() });
    assert.equal(await done, false);
    const last = (await store.finished()).at(-1)!.record;
    assert.ok(last.failures && last.failures.length > 0, 'its record lists what was left');
  });

  it('without a lease, createVm and startVm are refused (UNAVAILABLE) and leave nothing behind', async () => {
    assert.equal(lease.valid, false);
    const ops = opsWith(hv);
    const dispatcher = new CommandDispatcher({ ops, inventory: () => Promise.reject(new Error('unused')), defaultBridge: settings.bridge, log });
    const fresh = randomUUID();
    const volumesBefore = (await new LibvirtStorage(lv).list(sim.poolName)).map((v) => v.name).sort();
    for (const action of [{ kind: 'createVm', spec: spec(fresh) }, { kind: 'createVm', spec: spec(randomUUID(), false) }, { kind: 'startVm', vmId: inFlight }] as const) {
      const out = await dispatcher.dispatch({ commandId: randomUUID(), action });
      assert.equal(out.ok, false, action.kind);
      assert.equal(out.error?.code, 'UNAVAILABLE', `${action.kind}: ${out.error?.message}`);
      assert.match(out.error?.message ?? '', /lease has run out/);
    }
    assert.equal(await hv.state(domainName(fresh)), null, 'no domain defined');
    assert.equal(await hv.state(domainName(inFlight)), 'shutoff', 'not started');
    assert.deepEqual((await new LibvirtStorage(lv).list(sim.poolName)).map((v) => v.name).sort(), volumesBefore, 'no volume left');
    await assert.rejects(ops.createVm(spec(randomUUID())), LeaseExpiredError);

    // Control: with a lease again, the same start goes through.
    lease.newSession();
    lease.noteSent(0n);
    assert.ok(lease.grant(0n, 3000));
    const again = await dispatcher.dispatch({ commandId: randomUUID(), action: { kind: 'startVm', vmId: inFlight } });
    assert.equal(again.ok, true, JSON.stringify(again.error));
    assert.equal(await hv.state(domainName(inFlight)), 'running');
    lease.stop();
    await hv.destroy(domainName(inFlight));
  });
});
