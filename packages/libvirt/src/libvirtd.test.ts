/**
 * Integration tests against the real libvirtd of this machine (started by the test when it is
 * not running). KVM is not available here, so domains use libvirt's test driver, plus a qemu
 * domain under TCG emulation for real counters; storage transfers use a `dir` pool in a temp
 * directory on qemu:///system. Every object gets a unique name and is removed by its test.
 *
 * The reconnection test stops and restarts libvirtd, so it runs last, and this file must not
 * run in parallel with other files that use libvirtd (scripts/test.sh runs files one by one).
 */
import test, { after, before, describe } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { DomainEventType, DomainState, DomainStatsGroup, Flags, Libvirt, StoragePoolState } from './api.js';
import type { DomainLifecycleEvent } from './api.js';
import type { ConnectionState } from './client.js';
import { DisconnectedError, InvalidError, NotFoundError, OperationFailedError } from './errors.js';
import { uuidToString } from './protocol.js';
import type { DomainRef, StoragePoolRef, StorageVolRef } from './protocol.js';
import { ensureLibvirtd, stopLibvirtd } from './testing/libvirtd.js';
import { Cleanup } from '@kloudak/testkit';

/** Unique per run, so leftovers of a crashed run never collide with this one. */
const RUN = `kloudak-t${process.pid}-${Date.now().toString(36)}`;

const testDomainXml = (name: string): string =>
  `<domain type='test'><name>${name}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu><os><type>hvm</type></os></domain>`;

/** Waits until `pred` holds, polling. */
async function until(pred: () => boolean, what: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!pred()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}


before(async () => {
  await ensureLibvirtd();
});

describe('test:///default (one test hypervisor shared by all connections)', () => {
  let lv: Libvirt;
  before(async () => {
    lv = await Libvirt.connect({ uri: 'test:///default' });
  });
  after(async () => {
    await lv.close();
  });

  test('connection and host information', async () => {
    assert.equal(lv.state, 'ready');
    assert.equal(await lv.getType(), 'TEST');
    assert.ok((await lv.getLibVersion()) >= 9_000_000);
    assert.ok((await lv.getVersion()) > 0);
    assert.ok((await lv.getHostname()).length > 0);
    const node = await lv.getNodeInfo();
    assert.equal(node.model, 'i686');
    assert.equal(node.memoryKiB, 3_145_728n);
    assert.equal(node.cpus, 16);
    assert.match(await lv.getCapabilities(), /<capabilities>/);
  });

  test("lists the driver's default 'test' domain and looks it up by name and UUID", async () => {
    const doms = await lv.listAllDomains();
    const t = doms.find((d) => d.name === 'test');
    assert.ok(t, `domains: ${doms.map((d) => d.name).join(',')}`);
    assert.equal(t.uuid.length, 16);
    assert.ok(t.id > 0, 'it runs');
    const byName = await lv.lookupDomainByName('test');
    assert.deepEqual(byName, t);
    assert.deepEqual(await lv.lookupDomainByUuid(uuidToString(t.uuid)), t);
    assert.deepEqual(await lv.listAllDomains(Flags.LIST_DOMAINS_SHUTOFF | Flags.LIST_DOMAINS_PERSISTENT), doms.filter((d) => d.id < 0));
  });

  test('define, start, state, info, bulk stats, lifecycle events, destroy, undefine', async (t) => {
    const name = `${RUN}-life`;
    const cleanup = new Cleanup();
    const events: DomainLifecycleEvent[] = [];
    // Subscribe before acting: the daemon may send an event before the reply of its cause.
    const sub = await lv.onDomainLifecycle((e) => {
      if (e.name === name) events.push(e);
    });
    cleanup.add(() => sub.unsubscribe());
    try {
      const defined = await lv.defineDomain(testDomainXml(name));
      cleanup.add(() => lv.undefineDomain(defined).catch((e) => (e instanceof NotFoundError ? undefined : Promise.reject(e))));
      assert.equal(defined.name, name);
      assert.equal(defined.id, -1);
      assert.deepEqual((await lv.getDomainState(defined)).state, DomainState.SHUTOFF);
      assert.match(await lv.getDomainXml(defined), new RegExp(`<name>${name}</name>`));

      const running = await lv.createDomain(defined);
      cleanup.add(() => lv.destroyDomain(running).catch((e) => (e instanceof OperationFailedError || e instanceof NotFoundError ? undefined : Promise.reject(e))));
      assert.ok(running.id > 0);
      assert.deepEqual(running.uuid, defined.uuid);
      assert.deepEqual(await lv.getDomainState(running), { state: DomainState.RUNNING, reason: 1 });
      const info = await lv.getDomainInfo(running);
      assert.equal(info.state, DomainState.RUNNING);
      assert.equal(info.maxMemoryKiB, 65_536n);
      assert.equal(typeof info.cpuTimeNs, 'bigint');
      assert.equal(info.vcpus, 1);

      const [rec] = await lv.getAllDomainStats({ domains: [running], stats: DomainStatsGroup.STATE });
      assert.ok(rec);
      assert.equal(rec.domain.name, name);
      assert.equal(rec.values.get('state.state'), DomainState.RUNNING);
      const all = await lv.getAllDomainStats();
      assert.ok(all.some((r) => r.domain.name === 'test') && all.some((r) => r.domain.name === name));

      await lv.destroyDomain(running);
      assert.equal((await lv.getDomainState(running)).state, DomainState.SHUTOFF);
      await lv.undefineDomain(running);
      await assert.rejects(lv.lookupDomainByName(name), NotFoundError);

      await until(() => events.length >= 4, 'four lifecycle events');
      assert.deepEqual(
        events.map((e) => [e.event, e.detail]),
        [
          [DomainEventType.DEFINED, 0], // ADDED
          [DomainEventType.STARTED, 0], // BOOTED
          [DomainEventType.STOPPED, 1], // DESTROYED
          [DomainEventType.UNDEFINED, 0], // REMOVED
        ],
      );
      assert.equal(events[0]?.uuid, uuidToString(defined.uuid));
      t.diagnostic(`lifecycle events: ${events.map((e) => `${e.event}/${e.detail}`).join(' ')}`);
    } finally {
      await cleanup.run();
    }
  });

  test('daemon errors are typed: NotFound, Invalid (bad XML), OperationFailed (not running)', async () => {
    await assert.rejects(lv.lookupDomainByName(`${RUN}-missing`), (e: unknown) => {
      assert.ok(e instanceof NotFoundError);
      assert.equal(e.code, 42); // VIR_ERR_NO_DOMAIN
      assert.equal(e.procedure, 'DOMAIN_LOOKUP_BY_NAME');
      return true;
    });
    await assert.rejects(lv.lookupStoragePoolByName(`${RUN}-missing`), (e: unknown) => e instanceof NotFoundError && e.code === 49);
    await assert.rejects(lv.defineDomain('<domain'), InvalidError);
    const name = `${RUN}-err`;
    const d = await lv.defineDomain(testDomainXml(name));
    try {
      await assert.rejects(lv.destroyDomain(d), (e: unknown) => e instanceof OperationFailedError && e.code === 55);
    } finally {
      await lv.undefineDomain(d);
    }
    assert.equal(lv.state, 'ready', 'errors do not hurt the connection');
  });

  test('500 concurrent calls on one socket each get their own answer', async (t) => {
    const started = performance.now();
    const calls = Array.from({ length: 500 }, (_, i) => {
      switch (i % 4) {
        case 0:
          return lv.lookupDomainByName('test').then((d) => d.name);
        case 1:
          return lv.getNodeInfo().then((n) => `cpus=${n.cpus}`);
        case 2:
          return lv.lookupDomainByName(`${RUN}-none-${i}`).then(
            () => 'unexpected',
            (e: unknown) => (e instanceof NotFoundError ? 'not found' : `wrong error ${String(e)}`),
          );
        default:
          return lv.getType();
      }
    });
    const results = await Promise.all(calls);
    const ms = performance.now() - started;
    results.forEach((r, i) => assert.equal(r, ['test', 'cpus=16', 'not found', 'TEST'][i % 4], `call ${i}`));
    assert.equal(lv.connection.inFlight, 0);
    t.diagnostic(`500 concurrent calls in ${ms.toFixed(1)} ms (${((ms * 1000) / 500).toFixed(0)} µs per call)`);
  });

  test("storage on the test driver: default pool, volumes, clone, refresh", async () => {
    const pool = await lv.lookupStoragePoolByName('default-pool');
    assert.deepEqual(await lv.lookupStoragePoolByUuid(pool.uuid), pool);
    assert.ok((await lv.listAllStoragePools()).some((p) => p.name === 'default-pool'));
    const info = await lv.getStoragePoolInfo(pool);
    assert.equal(info.state, StoragePoolState.RUNNING);
    assert.equal(typeof info.capacity, 'bigint');
    const cleanup = new Cleanup();
    try {
      const vol = await lv.createVolume(pool, `<volume><name>${RUN}-v</name><capacity>1048576</capacity></volume>`);
      cleanup.add(() => lv.deleteVolume(vol));
      assert.equal(vol.pool, 'default-pool');
      assert.deepEqual(await lv.lookupVolumeByName(pool, vol.name), vol);
      assert.equal((await lv.getVolumeInfo(vol)).capacity, 1_048_576n);
      assert.equal(await lv.getVolumePath(vol), `/default-pool/${RUN}-v`);
      const clone = await lv.cloneVolume(pool, `<volume><name>${RUN}-c</name><capacity>1048576</capacity></volume>`, vol);
      cleanup.add(() => lv.deleteVolume(clone));
      await lv.refreshStoragePool(pool);
      const names = (await lv.listAllVolumes(pool)).map((v) => v.name);
      assert.ok(names.includes(vol.name) && names.includes(clone.name), names.join(','));
    } finally {
      await cleanup.run();
    }
    assert.ok(!(await lv.listAllVolumes(pool)).some((v) => v.name.startsWith(RUN)));
  });
});

describe('storage transfers: a dir pool in a temp directory on qemu:///system', () => {
  let lv: Libvirt;
  let dir: string;
  let pool: StoragePoolRef;
  before(async () => {
    lv = await Libvirt.connect({ uri: 'qemu:///system' });
    dir = mkdtempSync(join(tmpdir(), `${RUN}-pool-`));
    rmSync(dir, { recursive: true }); // the pool's build step creates it
    pool = await lv.defineStoragePool(`<pool type='dir'><name>${RUN}</name><target><path>${dir}</path></target></pool>`);
    await lv.createStoragePool(pool, Flags.POOL_CREATE_WITH_BUILD);
  });
  after(async () => {
    // Stop, delete the directory and forget the pool, then make sure nothing is left behind.
    await lv.destroyStoragePool(pool);
    await lv.deleteStoragePool(pool);
    await lv.undefineStoragePool(pool);
    await assert.rejects(lv.lookupStoragePoolByName(pool.name), NotFoundError);
    await lv.close();
    rmSync(dir, { recursive: true, force: true });
  });

  test('pool lookup, info and refresh', async () => {
    assert.deepEqual(await lv.lookupStoragePoolByName(RUN), pool);
    await lv.refreshStoragePool(pool);
    const info = await lv.getStoragePoolInfo(pool);
    assert.equal(info.state, StoragePoolState.RUNNING);
    assert.ok(info.capacity > 0n && info.available > 0n);
    assert.match(await lv.getStoragePoolXml(pool), new RegExp(`<path>${dir}</path>`));
  });

  test('create a volume, upload bytes through a stream, download them back identical, clone, delete', async (t) => {
    const cleanup = new Cleanup();
    try {
      const vol: StorageVolRef = await lv.createVolume(
        pool,
        `<volume><name>disk.raw</name><capacity unit='MiB'>2</capacity><target><format type='raw'/></target></volume>`,
      );
      cleanup.add(() => lv.deleteVolume(vol));
      assert.equal(await lv.getVolumePath(vol), join(dir, 'disk.raw'));
      assert.equal((await lv.getVolumeInfo(vol)).capacity, 2n * 1024n * 1024n);
      assert.match(await lv.getVolumeXml(vol), /<format type='raw'\/>/);

      // More than two stream packets' worth, not a multiple of anything.
      const data = randomBytes(1024 * 1024 + 12_345);
      const t0 = performance.now();
      await lv.uploadVolume(vol, data);
      const up = performance.now() - t0;

      const t1 = performance.now();
      const chunks: Buffer[] = [];
      for await (const c of await lv.downloadVolume(vol, { length: BigInt(data.length) })) chunks.push(c as Buffer);
      const down = performance.now() - t1;
      assert.ok(Buffer.concat(chunks).equals(data), 'downloaded bytes equal uploaded bytes');
      t.diagnostic(`upload ${data.length} B in ${up.toFixed(1)} ms, download in ${down.toFixed(1)} ms`);

      // An upload from an async iterable, at an offset; then a ranged download of it.
      async function* parts(): AsyncGenerator<Uint8Array> {
        yield Buffer.from('hello ');
        yield Buffer.from('world');
      }
      await lv.uploadVolume(vol, parts(), { offset: 100n, length: 11n });
      const ranged: Buffer[] = [];
      for await (const c of await lv.downloadVolume(vol, { offset: 100n, length: 11n })) ranged.push(c as Buffer);
      assert.equal(Buffer.concat(ranged).toString(), 'hello world');

      // Clone: a new volume created from the existing one's content.
      const clone = await lv.cloneVolume(
        pool,
        `<volume><name>clone.raw</name><capacity unit='MiB'>2</capacity><target><format type='raw'/></target></volume>`,
        vol,
      );
      cleanup.add(() => lv.deleteVolume(clone));
      const cloned: Buffer[] = [];
      for await (const c of await lv.downloadVolume(clone, { offset: 100n, length: 11n })) cloned.push(c as Buffer);
      assert.equal(Buffer.concat(cloned).toString(), 'hello world');
      assert.deepEqual((await lv.listAllVolumes(pool)).map((v) => v.name).sort(), ['clone.raw', 'disk.raw']);
    } finally {
      await cleanup.run();
    }
    assert.deepEqual(await lv.listAllVolumes(pool), []);
  });

  test('transfers abandoned halfway are aborted and leave the connection usable', async () => {
    const vol = await lv.createVolume(pool, `<volume><name>abort.raw</name><capacity unit='MiB'>4</capacity></volume>`);
    try {
      // Upload whose source fails after the first chunk: the stream is aborted, the error rethrown.
      async function* failing(): AsyncGenerator<Uint8Array> {
        yield Buffer.alloc(300_000, 1);
        throw new Error('source broke');
      }
      await assert.rejects(lv.uploadVolume(vol, failing()), /source broke/);
      assert.equal(await lv.getType(), 'QEMU');

      // Download whose consumer stops after the first chunk and destroys the stream: the socket,
      // paused for backpressure, must flow again.
      const stream = await lv.downloadVolume(vol);
      for await (const chunk of stream) {
        assert.ok((chunk as Buffer).length > 0);
        break; // leaving the loop destroys the stream
      }
      assert.equal(await lv.getType(), 'QEMU');
      assert.equal((await lv.getVolumeInfo(vol)).capacity, 4n * 1024n * 1024n);
    } finally {
      await lv.deleteVolume(vol);
    }
  });

  test('a missing volume is NotFound; the connection still works afterwards', async () => {
    await assert.rejects(lv.lookupVolumeByName(pool, 'nope.raw'), (e: unknown) => e instanceof NotFoundError && e.code === 50);
    assert.equal(await lv.getType(), 'QEMU');
  });
});

describe('a private test hypervisor per connection (test:///abs/path.xml)', () => {
  let dir: string;
  before(() => {
    dir = mkdtempSync(join(tmpdir(), `${RUN}-host-`));
    writeFileSync(
      join(dir, 'host.xml'),
      `<node>
  <cpu><nodes>1</nodes><sockets>1</sockets><cores>2</cores><threads>1</threads><active>2</active><mhz>2000</mhz><model>x86_64</model></cpu>
  <memory>2097152</memory>
  ${testDomainXml('fixture')}
</node>`,
    );
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  test('two connections to the same file each get their own hypervisor', async () => {
    const uri = `test://${join(dir, 'host.xml')}`;
    const a = await Libvirt.connect({ uri });
    const b = await Libvirt.connect({ uri });
    try {
      const node = await a.getNodeInfo();
      assert.deepEqual([node.model, node.memoryKiB, node.cpus, node.mhz], ['x86_64', 2_097_152n, 2, 2000]);
      assert.deepEqual((await a.listAllDomains()).map((d) => d.name), ['fixture']);
      await a.defineDomain(testDomainXml('only-in-a'));
      assert.deepEqual((await a.listAllDomains()).map((d) => d.name).sort(), ['fixture', 'only-in-a']);
      assert.deepEqual((await b.listAllDomains()).map((d) => d.name), ['fixture'], 'b does not see what a did');
      await assert.rejects(b.lookupDomainByName('only-in-a'), NotFoundError);
    } finally {
      await a.close();
      await b.close();
    }
  });
});

describe('qemu:///system with a TCG-emulated domain (no KVM needed)', () => {
  test('device attach/detach on the config, bulk stats with real 64-bit counters', async (t) => {
    const lv = await Libvirt.connect({ uri: 'qemu:///system' });
    const dir = mkdtempSync(join(tmpdir(), `${RUN}-qemu-`));
    const cleanup = new Cleanup();
    cleanup.add(async () => rmSync(dir, { recursive: true, force: true }));
    cleanup.add(() => lv.close());
    try {
      const name = `${RUN}-tcg`;
      let dom: DomainRef = await lv.defineDomain(
        `<domain type='qemu'><name>${name}</name><memory unit='MiB'>32</memory><vcpu>1</vcpu>
          <os><type arch='x86_64' machine='pc'>hvm</type></os>
          <devices><emulator>/usr/bin/qemu-system-x86_64</emulator><video><model type='none'/></video></devices>
        </domain>`,
      );
      cleanup.add(() => lv.undefineDomain(dom));

      const diskPath = join(dir, 'extra.raw');
      writeFileSync(diskPath, Buffer.alloc(1024 * 1024));
      const disk = `<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='${diskPath}'/><target dev='vdb' bus='virtio'/></disk>`;
      await lv.attachDevice(dom, disk, Flags.AFFECT_CONFIG);
      assert.match(await lv.getDomainXml(dom, Flags.XML_INACTIVE), /<target dev='vdb' bus='virtio'\/>/);
      await lv.detachDevice(dom, disk, Flags.AFFECT_CONFIG);
      assert.doesNotMatch(await lv.getDomainXml(dom, Flags.XML_INACTIVE), /dev='vdb'/);

      dom = await lv.createDomain(dom);
      cleanup.add(() => lv.destroyDomain(dom));
      assert.equal((await lv.getDomainState(dom)).state, DomainState.RUNNING);
      await sleep(200); // let the guest accumulate some CPU time
      const [rec] = await lv.getAllDomainStats({
        domains: [dom],
        stats: DomainStatsGroup.STATE | DomainStatsGroup.CPU_TOTAL | DomainStatsGroup.BALLOON | DomainStatsGroup.VCPU,
      });
      assert.ok(rec);
      const cpuTime = rec.values.get('cpu.time');
      assert.equal(typeof cpuTime, 'bigint');
      assert.ok((cpuTime as bigint) > 0n);
      assert.equal(rec.params.find((p) => p.field === 'cpu.time')?.type, 'ullong');
      assert.equal(rec.values.get('balloon.maximum'), 32_768n);
      assert.equal(rec.values.get('vcpu.current'), 1);
      t.diagnostic(`cpu.time=${String(cpuTime)} ns, ${rec.params.length} parameters`);
    } finally {
      await cleanup.run();
    }
  });
});

describe('reconnection when libvirtd restarts', () => {
  test('reconnecting → ready; calls fail fast meanwhile; event registrations come back', async (t) => {
    const lv = await Libvirt.connect({ uri: 'test:///default', reconnect: { initialDelayMs: 50, maxDelayMs: 500 } });
    const states: ConnectionState[] = [];
    lv.connection.on('state', (s) => states.push(s));
    const names: string[] = [];
    const name = `${RUN}-after-restart`;
    const sub = await lv.onDomainLifecycle((e) => {
      if (e.name === name) names.push(`${e.event}/${e.detail}`);
    });
    try {
      const t0 = performance.now();
      await stopLibvirtd();
      await until(() => lv.state === 'reconnecting', 'state reconnecting');
      await assert.rejects(lv.getType(), (e: unknown) => e instanceof DisconnectedError && !e.sent && e.state === 'reconnecting');
      await ensureLibvirtd();
      await lv.connection.whenReady(30_000);
      t.diagnostic(`back to ready ${(performance.now() - t0).toFixed(0)} ms after stopping libvirtd`);
      assert.deepEqual(states, ['reconnecting', 'ready']);
      assert.equal(await lv.getType(), 'TEST');

      // The lifecycle registration was made again on the new daemon.
      const d = await lv.defineDomain(testDomainXml(name));
      await lv.undefineDomain(d);
      await until(() => names.length >= 2, 'events after the restart');
      assert.deepEqual(names, ['0/0', '1/0']);
    } finally {
      await sub.unsubscribe();
      await lv.close();
    }
    assert.equal(lv.state, 'closed');
  });

  test('keepalive enabled: the daemon answers our pings, the idle connection stays up', async () => {
    const lv = await Libvirt.connect({ uri: 'test:///default', keepalive: { intervalMs: 100, count: 5 } });
    try {
      let lost = false;
      lv.connection.on('disconnect', () => (lost = true));
      await sleep(1200); // 12 intervals: without PONGs the client would have dropped it after 5
      assert.equal(lost, false);
      assert.equal(lv.state, 'ready');
      assert.equal(await lv.getType(), 'TEST');
    } finally {
      await lv.close();
    }
  });
});
