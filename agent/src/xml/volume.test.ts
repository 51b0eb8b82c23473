/** Volume XML, checked against libvirt's schema with `virt-xml-validate … storagevol`. */
import test, { after, before } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { overlayVolumeXml, rawVolumeXml } from './volume.js';

let dir: string;
before(() => {
  dir = mkdtempSync(join(tmpdir(), 'kloudak-volxml-'));
});
after(() => rmSync(dir, { recursive: true, force: true }));

let n = 0;
function file(doc: string): string {
  const f = join(dir, `${n++}.xml`);
  writeFileSync(f, doc);
  return f;
}

function assertValid(doc: string): void {
  const r = spawnSync('virt-xml-validate', [file(doc), 'storagevol'], { encoding: 'utf8' });
  if (r.error) throw new Error(`cannot run virt-xml-validate (apt-get install libvirt-clients libxml2-utils): ${r.error.message}`);
  assert.equal(r.status, 0, `rejected:\n${doc}\n${r.stdout}${r.stderr}`);
}

function xpath(doc: string, expr: string): string {
  const r = spawnSync('xmllint', ['--xpath', expr, file(doc)], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  return r.stdout.replace(/\n$/, ''); // xmllint ends its output with a newline
}

test('qcow2 overlay: exact byte capacity, qcow2 target, backing store path and format', () => {
  const capacity = 20n * 1024n ** 3n + 1n;
  for (const backingFormat of ['qcow2', 'raw'] as const) {
    const doc = overlayVolumeXml({ name: 'kloudak-x-root.qcow2', capacityBytes: capacity, backingPath: '/var/lib/kloudak/pools/a/debian-12.qcow2', backingFormat });
    assertValid(doc);
    assert.equal(xpath(doc, 'string(/volume/name)'), 'kloudak-x-root.qcow2');
    assert.equal(xpath(doc, 'string(/volume/capacity)'), capacity.toString());
    assert.equal(xpath(doc, 'string(/volume/capacity/@unit)'), 'bytes');
    assert.equal(xpath(doc, 'string(/volume/target/format/@type)'), 'qcow2');
    assert.equal(xpath(doc, 'string(/volume/backingStore/path)'), '/var/lib/kloudak/pools/a/debian-12.qcow2');
    assert.equal(xpath(doc, 'string(/volume/backingStore/format/@type)'), backingFormat);
  }
});

test('raw volume: exact byte capacity, raw format, no backing store', () => {
  const doc = rawVolumeXml({ name: 'kloudak-x-seed.iso', capacityBytes: 374_784n });
  assertValid(doc);
  assert.equal(xpath(doc, 'string(/volume/capacity)'), '374784');
  assert.equal(xpath(doc, 'string(/volume/target/format/@type)'), 'raw');
  assert.equal(xpath(doc, 'count(/volume/backingStore)'), '0');
});

test('odd values are escaped; names that would leave the pool directory are refused', () => {
  const odd = `/pools/it's & <that>/"t".qcow2`;
  const doc = overlayVolumeXml({ name: `a&b'c.qcow2`, capacityBytes: 1n, backingPath: odd, backingFormat: 'qcow2' });
  assertValid(doc);
  assert.equal(xpath(doc, 'string(/volume/backingStore/path)'), odd);
  assert.equal(xpath(doc, 'string(/volume/name)'), `a&b'c.qcow2`);
  for (const name of ['', '.', '..', '../x', 'a/b']) assert.throws(() => rawVolumeXml({ name, capacityBytes: 1n }), RangeError, name);
  assert.throws(() => rawVolumeXml({ name: 'x', capacityBytes: -1n }), RangeError);
  assert.throws(() => rawVolumeXml({ name: 'x\n', capacityBytes: 1n }), /not allowed/);
});
