/**
 * LibvirtStorage on qemu:///system with a `dir` pool in a temp directory (created, and at the end
 * emptied, stopped, deleted and undefined by this file, on failure too). Templates are made with
 * qemu-img behind libvirt's back, as an operator would copy one in. Needs libvirt-daemon-system
 * and qemu-utils.
 */
import test, { after, before, describe } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Flags, Libvirt, NotFoundError } from '@kloudak/libvirt';
import type { StoragePoolRef } from '@kloudak/libvirt';
import { ensureLibvirtd } from '@kloudak/libvirt/testing';
import { errorCodeOf } from '../runner/commands.js';
import { backingPath, LibvirtStorage, VolumeNotFoundError, volumeFormat } from './libvirt-storage.js';

const RUN = `kloudak-st${process.pid}-${Date.now().toString(36)}`;
const MIB = 1024n * 1024n;
const GIB = 1024n * MIB;

function sh(cmd: string, ...args: string[]): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  if (r.error) throw new Error(`cannot run ${cmd} (apt-get install qemu-utils): ${r.error.message}`);
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${r.status}: ${r.stderr}`);
  return r.stdout;
}

interface QemuImgInfo {
  format: string;
  'virtual-size': number;
  'backing-filename'?: string;
  'backing-filename-format'?: string;
}
function qemuImgInfo(path: string): QemuImgInfo {
  return JSON.parse(sh('qemu-img', 'info', '--output=json', '-U', path)) as QemuImgInfo;
}

test('volume XML parsing helpers', () => {
  const xml = `<volume type='file'><name>a</name><target><path>/p/a</path><format type='qcow2'/></target>
    <backingStore><path>/p/it&apos;s &amp; t</path><format type="raw"/></backingStore></volume>`;
  assert.equal(volumeFormat(xml), 'qcow2', 'the target format, not the backing one');
  assert.equal(backingPath(xml), "/p/it's & t");
  assert.equal(backingPath(`<volume><target><format type='raw'/></target></volume>`), null);
  assert.equal(volumeFormat('<volume/>'), null);
});

describe('a dir pool on qemu:///system', () => {
  let lv: Libvirt;
  let storage: LibvirtStorage;
  let pool: StoragePoolRef;
  let dir: string;

  before(async () => {
    await ensureLibvirtd();
    lv = await Libvirt.connect({ uri: 'qemu:///system' });
    storage = new LibvirtStorage(lv);
    dir = mkdtempSync(join(tmpdir(), `${RUN}-`));
    rmSync(dir, { recursive: true }); // the pool's build step creates it (mode 0711)
    pool = await lv.defineStoragePool(`<pool type='dir'><name>${RUN}</name><target><path>${dir}</path></target></pool>`);
    await lv.createStoragePool(pool, Flags.POOL_CREATE_WITH_BUILD);
  });

  after(async () => {
    // Every step is tried; the first failure is reported after all of them ran.
    const errors: unknown[] = [];
    const attempt = async (step: () => Promise<unknown>): Promise<void> => {
      try {
        await step();
      } catch (e) {
        errors.push(e);
      }
    };
    if (pool) {
      await attempt(async () => {
        await lv.refreshStoragePool(pool);
        for (const v of await lv.listAllVolumes(pool)) await lv.deleteVolume(v);
      });
      await attempt(() => lv.destroyStoragePool(pool));
      await attempt(() => lv.deleteStoragePool(pool));
      await attempt(() => lv.undefineStoragePool(pool));
    }
    if (dir) rmSync(dir, { recursive: true, force: true });
    if (lv) await attempt(() => lv.close());
    if (errors.length > 0) throw errors[0];
  });

  async function download(name: string): Promise<Buffer> {
    const stream = await lv.downloadVolume(await lv.lookupVolumeByName(pool, name));
    const chunks: Buffer[] = [];
    for await (const c of stream) chunks.push(c as Buffer);
    return Buffer.concat(chunks);
  }

  test('a template copied into the directory behind libvirt\'s back is found (the pool is refreshed on a miss)', async () => {
    sh('qemu-img', 'create', '-q', '-f', 'qcow2', join(dir, 'tmpl.qcow2'), '64M');
    const got = await storage.get(RUN, 'tmpl.qcow2');
    assert.ok(got);
    assert.deepEqual([got.name, got.path, got.capacityBytes], ['tmpl.qcow2', join(dir, 'tmpl.qcow2'), 64n * MIB]);
    assert.equal(typeof got.allocationBytes, 'bigint');
    assert.equal(await storage.get(RUN, 'nope.qcow2'), null);
  });

  test('cloneOverlay: qcow2 backed by the template, grown to the wanted size, a no-op when it exists', async () => {
    const root = await storage.cloneOverlay(RUN, 'tmpl.qcow2', 'vm1-root.qcow2', 2);
    assert.equal(root.path, join(dir, 'vm1-root.qcow2'));
    assert.equal(root.capacityBytes, 2n * GIB);
    const xml = await lv.getVolumeXml(await lv.lookupVolumeByName(pool, 'vm1-root.qcow2'));
    assert.equal(volumeFormat(xml), 'qcow2');
    assert.equal(backingPath(xml), join(dir, 'tmpl.qcow2'));
    const info = qemuImgInfo(root.path);
    assert.equal(info.format, 'qcow2');
    assert.equal(info['virtual-size'], 2 * 1024 ** 3);
    assert.equal(info['backing-filename'], join(dir, 'tmpl.qcow2'));
    assert.equal(info['backing-filename-format'], 'qcow2');

    const again = await storage.cloneOverlay(RUN, 'tmpl.qcow2', 'vm1-root.qcow2', 5);
    assert.deepEqual(again, root, 'existing volume returned as it is');
  });

  test('cloneOverlay never shrinks below the template, backs onto raw templates, fails for a missing one', async () => {
    const small = await storage.cloneOverlay(RUN, 'tmpl.qcow2', 'vm2-root.qcow2', 0);
    assert.equal(small.capacityBytes, 64n * MIB, 'template size when it is larger');

    sh('qemu-img', 'create', '-q', '-f', 'raw', join(dir, 'tmpl.raw'), '8M');
    const onRaw = await storage.cloneOverlay(RUN, 'tmpl.raw', 'vm3-root.qcow2', 1);
    const info = qemuImgInfo(onRaw.path);
    assert.equal(info['backing-filename'], join(dir, 'tmpl.raw'));
    assert.equal(info['backing-filename-format'], 'raw');
    assert.equal(onRaw.capacityBytes, GIB);

    await assert.rejects(storage.cloneOverlay(RUN, 'missing.qcow2', 'vm4-root.qcow2', 1), (e: unknown) => {
      // A typed error: the runner answers it NOT_FOUND (retryable), not INTERNAL.
      assert.ok(e instanceof VolumeNotFoundError, String(e));
      assert.equal(errorCodeOf(e), 'NOT_FOUND');
      assert.match(e.message, /template volume "missing.qcow2" not found/);
      return true;
    });
    assert.equal(await storage.get(RUN, 'vm4-root.qcow2'), null, 'nothing created');
    await assert.rejects(storage.cloneOverlay(RUN, 'tmpl.qcow2', 'vm4-root.qcow2', 1.5), RangeError);
  });

  test('concurrent clones of the same volume both succeed with the same volume', async () => {
    const [a, b] = await Promise.all([
      storage.cloneOverlay(RUN, 'tmpl.qcow2', 'vm5-root.qcow2', 1),
      storage.cloneOverlay(RUN, 'tmpl.qcow2', 'vm5-root.qcow2', 1),
    ]);
    assert.deepEqual(a, b);
    assert.equal(qemuImgInfo(a.path)['backing-filename'], join(dir, 'tmpl.qcow2'));
  });

  test('putRaw writes exactly the data (several stream packets), and replaces an existing volume', async () => {
    const first = randomBytes(1_000_003); // not a multiple of anything, > 3 stream packets
    const s1 = await storage.putRaw(RUN, 'vm1-seed.iso', first);
    assert.equal(s1.capacityBytes, BigInt(first.length));
    assert.equal(s1.path, join(dir, 'vm1-seed.iso'));
    assert.ok((await download('vm1-seed.iso')).equals(first));
    assert.equal(qemuImgInfo(s1.path).format, 'raw');

    const second = randomBytes(374_784);
    const s2 = await storage.putRaw(RUN, 'vm1-seed.iso', second);
    assert.equal(s2.capacityBytes, BigInt(second.length));
    assert.ok((await download('vm1-seed.iso')).equals(second), 'replaced, not overwritten in place');

    const empty = await storage.putRaw(RUN, 'empty.raw', new Uint8Array(0));
    assert.equal(empty.capacityBytes, 0n);
  });

  test('delete is idempotent; list shows every volume, sorted, including files added behind libvirt', async () => {
    await storage.delete(RUN, 'empty.raw');
    assert.equal(await storage.get(RUN, 'empty.raw'), null);
    await storage.delete(RUN, 'empty.raw');
    await storage.delete(RUN, 'never-existed.raw');

    sh('qemu-img', 'create', '-q', '-f', 'raw', join(dir, 'zz-outside.raw'), '1M');
    const names = (await storage.list(RUN)).map((v) => v.name);
    assert.deepEqual(names, ['tmpl.qcow2', 'tmpl.raw', 'vm1-root.qcow2', 'vm1-seed.iso', 'vm2-root.qcow2', 'vm3-root.qcow2', 'vm5-root.qcow2', 'zz-outside.raw']);
    for (const v of ['vm1-root.qcow2', 'vm2-root.qcow2', 'vm3-root.qcow2', 'vm5-root.qcow2', 'vm1-seed.iso', 'zz-outside.raw']) await storage.delete(RUN, v);
    assert.deepEqual((await storage.list(RUN)).map((v) => v.name), ['tmpl.qcow2', 'tmpl.raw']);
  });

  test('a missing pool is an error (NotFoundError), not an empty answer', async () => {
    await assert.rejects(storage.get(`${RUN}-nope`, 'x'), NotFoundError);
    await assert.rejects(storage.list(`${RUN}-nope`), NotFoundError);
    await assert.rejects(storage.delete(`${RUN}-nope`, 'x'), NotFoundError);
  });
});
