// A qemu host's world as scripts/up.sh makes it, for the e2e tests and the benchmarks that run a
// real agent (or the agent's drivers) on qemu:///system: a libvirt connection, an OVS bridge in a
// test net, a `dir` storage pool of its own, a console dir. Everything is undone by the cleanup.
import { chmodSync, copyFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { domainName } from '@kloudak/agent';
import { createTestNet, type TestNet } from '@kloudak/agent/testing';
import { Flags, Libvirt, type StoragePoolRef } from '@kloudak/libvirt';
import type { CleanupStack } from '@kloudak/testkit';
import { GUEST, QEMU_URI } from './paths.js';

export { GUEST, QEMU_URI, REPO } from './paths.js';

/** What {@link setUpQemuHost} made. */
export interface QemuHost {
  /** A connection to {@link QEMU_URI}. */
  lv: Libvirt;
  net: TestNet;
  /** An OVS bridge of `net`. */
  bridge: string;
  /** The storage pool, named as {@link QemuHostOptions.name} says. */
  pool: StoragePoolRef;
  poolDir: string;
  /** Where the agent writes the guests' consoles. */
  consoleDir: string;
}

/** How {@link setUpQemuHost} names and fills what it makes. */
export interface QemuHostOptions {
  /** The storage pool's name; the temporary directories' names start with it. */
  name: string;
  /** The test net's prefix (createTestNet). */
  netPrefix: string;
  /** Puts the volumes the test needs into the pool's directory (before the pool is refreshed). */
  fill?: (poolDir: string) => void;
}

/**
 * Connect to qemu:///system, make a test net with a bridge, a `dir` pool in a new temporary
 * directory (filled by `opts.fill`, then refreshed) and a console dir; `cleanup` undoes each.
 */
export async function setUpQemuHost(cleanup: CleanupStack, opts: QemuHostOptions): Promise<QemuHost> {
  const lv = await Libvirt.connect({ uri: QEMU_URI });
  cleanup.add(() => lv.close(), 'close the libvirt connection');
  const net = await createTestNet(opts.netPrefix);
  cleanup.add(() => net.cleanup(), `test net ${net.id}`);
  const bridge = await net.addBridge('br');
  // libvirt builds the pool's directory; QEMU runs as libvirt-qemu and must reach the images (and
  // a template behind an overlay, as its backing file) through the directories above it.
  const poolDir = join(mkdtempSync(join(tmpdir(), `${opts.name}-pool-`)), 'pool');
  chmodSync(join(poolDir, '..'), 0o755);
  cleanup.add(() => rmSync(join(poolDir, '..'), { recursive: true, force: true }), `remove ${poolDir}/..`);
  const pool = await lv.defineStoragePool(`<pool type='dir'><name>${opts.name}</name><target><path>${poolDir}</path></target></pool>`);
  cleanup.add(async () => {
    await lv.destroyStoragePool(pool).catch(() => undefined);
    await lv.undefineStoragePool(pool).catch(() => undefined);
  }, `storage pool ${opts.name}`);
  await lv.createStoragePool(pool, Flags.POOL_CREATE_WITH_BUILD);
  chmodSync(poolDir, 0o711);
  opts.fill?.(poolDir);
  await lv.refreshStoragePool(pool);
  const consoleDir = mkdtempSync(join(tmpdir(), `${opts.name}-console-`));
  chmodSync(consoleDir, 0o755);
  cleanup.add(() => rmSync(consoleDir, { recursive: true, force: true }), `remove ${consoleDir}`);
  return { lv, net, bridge, pool, poolDir, consoleDir };
}

/** A {@link QemuHostOptions.fill} that copies the test guest's image into the pool as `volume`, readable by QEMU. */
export function testGuestImage(volume: string): (poolDir: string) => void {
  return (poolDir) => {
    copyFileSync(join(GUEST, 'template.qcow2'), join(poolDir, volume));
    chmodSync(join(poolDir, volume), 0o644);
  };
}

/** Destroy and undefine the domains of these VMs straight through libvirt (a fallback cleanup: the agents may be gone). */
export async function removeDomains(lv: Libvirt, vmIds: Iterable<string>): Promise<void> {
  for (const vmId of vmIds) {
    const dom = await lv.lookupDomainByName(domainName(vmId)).catch(() => null);
    if (!dom) continue;
    await lv.destroyDomain(dom).catch(() => undefined);
    await lv.undefineDomain(dom).catch(() => undefined);
  }
}
