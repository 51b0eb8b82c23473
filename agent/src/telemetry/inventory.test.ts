/**
 * HostTelemetry against the real libvirtd (qemu:///system), wired as agent/src/daemon.ts wires it:
 * a host with an inactive storage pool (defined, never started, its directory missing) still
 * reports its inventory and heartbeat figures. The inactive pool is reported with `active: false`
 * and its volumes are not listed; the volumes of the active pools are.
 *
 * Needs libvirt-daemon-system. The pools and the directory it creates are removed at the end, on
 * failure too. Open vSwitch need not run: the inventory then has no ports.
 */
import test, { after, before } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Libvirt } from '@kloudak/libvirt';
import { ensureLibvirtd } from '@kloudak/libvirt/testing';
import { Cleanup } from '@kloudak/testkit';
import { IsoSeedBuilder } from '../cloudinit/seed.js';
import { LibvirtHypervisor } from '../hypervisor/libvirt-hypervisor.js';
import { seedVolumeName } from '../names.js';
import { OvsNetworkDriver } from '../network/ovs.js';
import { HostOperations } from '../ops/host-ops.js';
import { DEFAULT_HOST_SETTINGS } from '../settings.js';
import { LibvirtStorage } from '../storage/libvirt-storage.js';
import { ProcessRunner } from '../system/command-runner.js';
import { HostTelemetry } from './inventory.js';
import { collectPools } from './libvirt-stats.js';
import { ProcSampler } from './proc.js';

/** Unique per run, so leftovers of a crashed run never collide with this one. */
const RUN = `kloudak-inv${process.pid}-${Date.now().toString(36)}`;

const cleanup = new Cleanup();
let lv: Libvirt;
let telemetry: HostTelemetry;
const activePool = `${RUN}-active`;
const inactivePool = `${RUN}-inactive`;
const vmId = randomUUID();

before(async () => {
  await ensureLibvirtd();
  lv = await Libvirt.connect({ uri: 'qemu:///system' });
  cleanup.add(() => lv.close());

  // An active dir pool holding one Kloudak volume.
  const dir = mkdtempSync(join(tmpdir(), `${RUN}-pool-`));
  cleanup.add(() => rmSync(dir, { recursive: true, force: true }));
  const active = await lv.defineStoragePool(`<pool type='dir'><name>${activePool}</name><target><path>${dir}</path></target></pool>`);
  cleanup.add(() => lv.undefineStoragePool(active));
  await lv.createStoragePool(active);
  cleanup.add(() => lv.destroyStoragePool(active));
  writeFileSync(join(dir, seedVolumeName(vmId)), Buffer.alloc(4096));
  await lv.refreshStoragePool(active);

  // A stray pool: defined, not started, its directory gone (listing its volumes fails in libvirt).
  const missing = join(tmpdir(), `${RUN}-missing`);
  const inactive = await lv.defineStoragePool(`<pool type='dir'><name>${inactivePool}</name><target><path>${missing}</path></target></pool>`);
  cleanup.add(() => lv.undefineStoragePool(inactive));

  const runner = new ProcessRunner();
  const storage = new LibvirtStorage(lv);
  const settings = { ...DEFAULT_HOST_SETTINGS, domainType: 'qemu' as const, bridge: `kinv${process.pid % 100000}` };
  const ops = new HostOperations({
    hypervisor: new LibvirtHypervisor(lv),
    storage,
    network: new OvsNetworkDriver(runner, { datapathType: 'netdev' }),
    seeds: new IsoSeedBuilder(runner),
    settings,
  });
  telemetry = new HostTelemetry({ lv, ops, storage, runner, proc: new ProcSampler(), bridge: settings.bridge, dataDir: tmpdir(), simulated: false });
});

after(() => cleanup.run());

test('an inactive pool is reported inactive and does not keep the inventory from listing the other pools', async () => {
  // What Hello sends as pools (daemon.ts: `pools: () => collectPools(lv)`).
  const pools = await collectPools(lv);
  const stray = pools.find((p) => p.name === inactivePool);
  assert.ok(stray, 'the inactive pool is reported');
  assert.equal(stray.active, false);
  assert.equal(pools.find((p) => p.name === activePool)?.active, true);

  const inv = await telemetry.inventory();
  assert.equal(inv.volumes.some((v) => v.pool === inactivePool), false, 'no volumes of the inactive pool');
  const vol = inv.volumes.find((v) => v.pool === activePool && v.name === seedVolumeName(vmId));
  assert.ok(vol, `the active pool's volume is listed: ${JSON.stringify(inv.volumes.map((v) => `${v.pool}/${v.name}`))}`);
  assert.equal(vol.vmId, vmId);
  assert.equal(vol.capacityBytes, 4096n);
  assert.match(vol.path, new RegExp(`${seedVolumeName(vmId)}$`));

  const hb = await telemetry.heartbeat();
  assert.equal(hb.libvirtConnected, true);
  assert.equal(hb.pools.find((p) => p.name === inactivePool)?.active, false);
  assert.equal(hb.pools.find((p) => p.name === activePool)?.active, true);
});
