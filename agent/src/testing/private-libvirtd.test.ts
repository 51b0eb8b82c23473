/**
 * Two private libvirtds (two QEMU "hosts") on one shared `dir` pool: a volume made through one is
 * seen by the other, and virtlockd makes libvirt itself refuse to start a disk that a domain of
 * the other host holds, until that domain is destroyed. The domains boot nothing (no kernel, an
 * empty disk): the lock is taken before QEMU runs a single instruction.
 */
import test, { after, before, describe } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import type { Libvirt, StoragePoolRef } from '@kloudak/libvirt';
import { escapeXml } from '../xml/escape.js';
import { createSharedDir, defineDirPool, processAlive, startPrivateLibvirtd, type PrivateLibvirtd, type SharedDir } from './private-libvirtd.js';

const MIB = 1024 * 1024;

/** Holds an exclusive fcntl lock on byte 0 of argv[1] (as virtlockd does) until stdin closes. */
const LOCK_HOLDER = [
  'import fcntl, os, sys',
  'fd = os.open(sys.argv[1], os.O_RDWR)',
  'fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 0)',
  'print("locked", flush=True)',
  'sys.stdin.read()',
].join('\n');

/** Pids holding a POSIX (fcntl) write lock on the file, from /proc/locks. */
function posixWriteLocks(path: string): number[] {
  const ino = statSync(path).ino;
  return readFileSync('/proc/locks', 'utf8')
    .split('\n')
    .map((l) => l.replace(/^\d+:\s*(->\s*)?/, '').split(/\s+/))
    .filter((f) => f[0] === 'POSIX' && f[2] === 'WRITE' && Number(f[4]?.split(':')[2]) === ino)
    .map((f) => Number(f[3]));
}

const LOCK_REFUSAL = /Lockspace resource '.*' is locked|Failed to get "write" lock/;

/**
 * Asserts that libvirt refused to start domain `name` on `host` over a lock on its disk. On one
 * kernel QEMU's own image lock (OFD locks) may answer before virtlockd's; on separate hosts either
 * refuses. Both are libvirt refusing the start. When QEMU exits on its lock before libvirt has
 * reached its monitor, libvirt reports only the lost monitor: the domain's QEMU log then holds
 * the lock error, and nothing else counts.
 */
async function assertLockRefusal(start: Promise<unknown>, host: PrivateLibvirtd, name: string): Promise<void> {
  await assert.rejects(start, (err: Error) => {
    if (LOCK_REFUSAL.test(err.message)) return true;
    assert.match(err.message, /monitor/, err.message);
    const qemuLog = join(host.dir, 'log', 'qemu', `${name}.log`);
    const text = existsSync(qemuLog) ? readFileSync(qemuLog, 'utf8') : '';
    assert.match(text, LOCK_REFUSAL, `libvirt said "${err.message}", and ${qemuLog} shows no lock refusal:\n${text}`);
    return true;
  });
}

/** A domain that boots nothing from one volume of the pool `pool`. */
function domainXml(name: string, pool: string, volume: string): string {
  return `<domain type='qemu'><name>${escapeXml(name)}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os><features><acpi/><apic/></features>
  <devices><disk type='volume' device='disk'><driver name='qemu' type='qcow2'/><source pool='${escapeXml(pool)}' volume='${escapeXml(volume)}'/><target dev='vda' bus='virtio'/></disk>
  <video><model type='none'/></video><memballoon model='none'/></devices></domain>`;
}

describe('private libvirtds on one shared dir pool (real libvirt, QEMU, virtlockd)', { timeout: 120_000 }, () => {
  let shared: SharedDir;
  let a: PrivateLibvirtd;
  let b: PrivateLibvirtd;
  let lvA: Libvirt;
  let lvB: Libvirt;
  let poolA: StoragePoolRef;
  let poolB: StoragePoolRef;
  const cleanups: Array<() => Promise<void> | void> = [];

  before(async () => {
    shared = createSharedDir('kloudak-shared');
    cleanups.push(() => shared.cleanup());
    [a, b] = await Promise.all([startPrivateLibvirtd({ name: 'ssa' }), startPrivateLibvirtd({ name: 'ssb' })]);
    cleanups.push(() => a.stop(), () => b.stop());
    lvA = await a.connect();
    lvB = await b.connect();
    cleanups.push(() => lvA.close(), () => lvB.close());
    poolA = await defineDirPool(lvA, 'shared', shared.dir);
    poolB = await defineDirPool(lvB, 'shared', shared.dir);
  });

  after(async () => {
    const errors: unknown[] = [];
    for (const c of cleanups.reverse()) await Promise.resolve(c()).catch((e: unknown) => errors.push(e));
    if (errors.length > 0) throw new AggregateError(errors, 'cleanup failed');
  });

  test('each is a separate daemon: its own domains, its own sockets', async () => {
    assert.notEqual(a.socketPath, b.socketPath);
    assert.notEqual(a.pid, b.pid);
    await lvA.defineDomain(domainXml('ss-only-on-a', 'shared', 'none'));
    try {
      const onB = (await lvB.listAllDomains()).map((d) => d.name);
      assert.ok(!onB.includes('ss-only-on-a'), `B sees A's domain: ${onB.join(', ')}`);
    } finally {
      await lvA.undefineDomain(await lvA.lookupDomainByName('ss-only-on-a'));
    }
  });

  test('a volume made through A shows in B after a refresh', async () => {
    await lvA.createVolume(poolA, `<volume><name>disk1.qcow2</name><capacity>${16 * MIB}</capacity><target><format type='qcow2'/></target></volume>`);
    await lvB.refreshStoragePool(poolB);
    const vol = await lvB.lookupVolumeByName(poolB, 'disk1.qcow2');
    assert.equal(await lvB.getVolumePath(vol), `${shared.dir}/disk1.qcow2`);
  });

  test('B cannot start a disk that a domain on A runs from, until A destroys it; A holds virtlockd\'s lock on it', async () => {
    const domA = await lvA.defineDomain(domainXml('ss-lock-a', 'shared', 'disk1.qcow2'));
    const domB = await lvB.defineDomain(domainXml('ss-lock-b', 'shared', 'disk1.qcow2'));
    try {
      await lvA.createDomain(domA);
      assert.equal(a.qemuPids().length, 1, 'A runs one QEMU');
      // A's virtlockd (not its QEMU) holds an fcntl write lock on the disk file itself.
      const locks = posixWriteLocks(`${shared.dir}/disk1.qcow2`);
      assert.ok(locks.includes(a.virtlockdPid!), `A's virtlockd ${a.virtlockdPid} holds no lock on the disk (holders: ${locks.join(', ')})`);
      // The next test isolates virtlockd's lock.
      await assertLockRefusal(lvB.createDomain(domB), b, 'ss-lock-b');
      assert.deepEqual(b.qemuPids(), [], 'no QEMU runs on B');
      assert.equal((await lvB.getDomainState(domB)).state, 5 /* shutoff */);

      await lvA.destroyDomain(domA);
      assert.deepEqual(posixWriteLocks(`${shared.dir}/disk1.qcow2`), [], 'A released the lock');
      await lvB.createDomain(domB);
      assert.equal(b.qemuPids().length, 1, 'B runs it now');
      assert.ok(posixWriteLocks(`${shared.dir}/disk1.qcow2`).includes(b.virtlockdPid!), "B's virtlockd holds the lock now");
      await assertLockRefusal(lvA.createDomain(domA), a, 'ss-lock-a');
      await lvB.destroyDomain(domB);
    } finally {
      for (const [lv, dom] of [[lvA, domA], [lvB, domB]] as const) {
        await lv.destroyDomain(dom).catch(() => undefined);
        await lv.undefineDomain(dom).catch(() => undefined);
      }
    }
  });

  test("virtlockd alone: a lock another host's virtlockd holds on the disk makes libvirt refuse the start before the guest runs", async () => {
    await lvA.createVolume(poolA, `<volume><name>disk2.qcow2</name><capacity>${16 * MIB}</capacity><target><format type='qcow2'/></target></volume>`);
    await lvB.refreshStoragePool(poolB);
    const path = `${shared.dir}/disk2.qcow2`;
    // The lock a virtlockd elsewhere would hold (byte 0, exclusive, fcntl), without a QEMU having
    // the image open here: only virtlockd can see it.
    const holder = spawn('python3', ['-c', LOCK_HOLDER, path], { stdio: ['pipe', 'pipe', 'inherit'] });
    const domB = await lvB.defineDomain(domainXml('ss-lock2-b', 'shared', 'disk2.qcow2'));
    try {
      await new Promise<void>((resolve, reject) => {
        holder.stdout.once('data', () => resolve());
        holder.once('exit', (code) => reject(new Error(`lock holder exited ${code}`)));
      });
      await assert.rejects(lvB.createDomain(domB), /resource busy: Lockspace resource '.*disk2\.qcow2' is locked/);
      assert.deepEqual(b.qemuPids(), [], 'no QEMU runs on B');
      holder.stdin.end(); // releases the lock
      await new Promise((r) => holder.once('exit', r));
      await lvB.createDomain(domB);
      assert.equal(b.qemuPids().length, 1);
    } finally {
      if (holder.exitCode === null) holder.kill('SIGKILL');
      await lvB.destroyDomain(domB).catch(() => undefined);
      await lvB.undefineDomain(domB).catch(() => undefined);
    }
  });

  test('stop kills the daemon, its QEMUs and virtlockd and removes its directory', async () => {
    const c = await startPrivateLibvirtd({ name: 'ssc' });
    let lv: Libvirt | null = null;
    try {
      lv = await c.connect();
      const pool = await defineDirPool(lv, 'shared', shared.dir);
      await lv.createVolume(pool, `<volume><name>disk-c.qcow2</name><capacity>${16 * MIB}</capacity><target><format type='qcow2'/></target></volume>`);
      const dom = await lv.defineDomain(domainXml('ss-stop-c', 'shared', 'disk-c.qcow2'));
      await lv.createDomain(dom);
      const qemus = c.qemuPids();
      assert.equal(qemus.length, 1);
      await lv.close();
      lv = null;
      await c.stop();
      assert.ok(!processAlive(c.pid), 'libvirtd is gone');
      assert.ok(!qemus.some(processAlive), 'its QEMU is gone');
      assert.ok(!existsSync(c.dir), 'its directory is gone');
      // The lock went with its virtlockd: A can start a domain on that disk.
      await lvA.refreshStoragePool(poolA);
      const domA = await lvA.defineDomain(domainXml('ss-after-c', 'shared', 'disk-c.qcow2'));
      try {
        await lvA.createDomain(domA);
      } finally {
        await lvA.destroyDomain(domA).catch(() => undefined);
        await lvA.undefineDomain(domA).catch(() => undefined);
      }
    } finally {
      await lv?.close();
      await c.stop();
    }
  });
});
