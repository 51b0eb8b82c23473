import test from 'node:test';
import assert from 'node:assert/strict';
import { XdrError, XdrReader, XdrWriter } from './xdr.js';
import {
  decodeHeader,
  encodeFrame,
  readDomain,
  readRemoteError,
  readTypedParam,
  uuidFromString,
  uuidToString,
  writeDomain,
  writeRemoteError,
  writeTypedParam,
} from './protocol.js';
import type { TypedParam } from './protocol.js';

const hex = (b: Uint8Array): string => Buffer.from(b).toString('hex');

test('integers are big-endian 4-byte units; hyper and unsigned hyper are 8 bytes as bigint', () => {
  const w = new XdrWriter(4).int(-2).uint(0xfffffffe).hyper(-3n).uhyper(0xfffffffffffffffen).bool(true).bool(false);
  const bytes = w.finish();
  assert.equal(hex(bytes), 'fffffffe' + 'fffffffe' + 'fffffffffffffffd' + 'fffffffffffffffe' + '00000001' + '00000000');
  const r = new XdrReader(bytes);
  assert.equal(r.int(), -2);
  assert.equal(r.uint(), 0xfffffffe);
  assert.equal(r.hyper(), -3n);
  assert.equal(r.uhyper(), 0xfffffffffffffffen); // above 2^53: exact only as bigint
  assert.equal(r.bool(), true);
  assert.equal(r.bool(), false);
  r.end();
});

test('double is IEEE 754 big-endian', () => {
  const bytes = new XdrWriter().double(1.5).double(-0.1).finish();
  assert.equal(hex(bytes.subarray(0, 8)), '3ff8000000000000');
  const r = new XdrReader(bytes);
  assert.equal(r.double(), 1.5);
  assert.equal(r.double(), -0.1);
});

test('out-of-range integers are refused when encoding', () => {
  assert.throws(() => new XdrWriter().int(2 ** 31), XdrError);
  assert.throws(() => new XdrWriter().int(1.5), XdrError);
  assert.throws(() => new XdrWriter().uint(-1), XdrError);
  assert.throws(() => new XdrWriter().uint(2 ** 32), XdrError);
  assert.throws(() => new XdrWriter().hyper(1n << 63n), XdrError);
  assert.throws(() => new XdrWriter().uhyper(-1n), XdrError);
  assert.throws(() => new XdrWriter().uhyper(1n << 64n), XdrError);
});

test('strings and variable opaque data carry a length and are zero-padded to 4 bytes', () => {
  const bytes = new XdrWriter().string('abcde').opaque(Uint8Array.of(1, 2)).string('').string('héé').finish();
  assert.equal(hex(bytes), '00000005' + '6162636465000000' + '00000002' + '01020000' + '00000000' + '00000005' + '68c3a9c3a9000000');
  const r = new XdrReader(bytes);
  assert.equal(r.string(), 'abcde');
  assert.deepEqual([...r.opaque()], [1, 2]);
  assert.equal(r.string(), '');
  assert.equal(r.string(), 'héé');
  r.end();
});

test('fixed opaque data has no length, is padded and must have the exact size', () => {
  const bytes = new XdrWriter().fixedOpaque(Uint8Array.of(9, 8, 7), 3).finish();
  assert.equal(hex(bytes), '09080700');
  assert.deepEqual([...new XdrReader(bytes).fixedOpaque(3)], [9, 8, 7]);
  assert.throws(() => new XdrWriter().fixedOpaque(Uint8Array.of(1), 2), XdrError);
});

test('optional values are a presence bool followed by the value', () => {
  const bytes = new XdrWriter()
    .optional('x', (w, v) => w.string(v))
    .optional(null, (w, v: string) => w.string(v))
    .finish();
  assert.equal(hex(bytes), '00000001' + '00000001' + '78000000' + '00000000');
  const r = new XdrReader(bytes);
  assert.equal(
    r.optional((x) => x.string()),
    'x',
  );
  assert.equal(
    r.optional((x) => x.string()),
    null,
  );
});

test('variable arrays carry a count; fixed arrays do not', () => {
  const bytes = new XdrWriter()
    .array([1, 2, 3], (w, v) => w.int(v))
    .fixedArray([7, 8], 2, (w, v) => w.uint(v))
    .finish();
  assert.equal(hex(bytes), '00000003' + '00000001' + '00000002' + '00000003' + '00000007' + '00000008');
  const r = new XdrReader(bytes);
  assert.deepEqual(
    r.array((x) => x.int()),
    [1, 2, 3],
  );
  assert.deepEqual(
    r.fixedArray(2, (x) => x.uint()),
    [7, 8],
  );
  assert.throws(() => new XdrWriter().array([1, 2], (w, v) => w.int(v), 1), XdrError);
  assert.throws(() => new XdrWriter().fixedArray([1], 2, (w, v) => w.int(v)), XdrError);
});

test('the reader refuses truncated data, absurd counts, bad booleans, limits and leftovers', () => {
  assert.throws(() => new XdrReader(Uint8Array.of(0, 0, 1)).int(), /truncated/);
  assert.throws(() => new XdrReader(new XdrWriter().uint(10).finish()).string(), /truncated/);
  // A count of 2^30 elements in an 8-byte message is corruption; it must not allocate.
  assert.throws(() => new XdrReader(new XdrWriter().uint(2 ** 30).uint(0).finish()).array((r) => r.int()), /exceeds/);
  assert.throws(() => new XdrReader(new XdrWriter().int(2).finish()).bool(), /boolean/);
  assert.throws(() => new XdrReader(new XdrWriter().string('abc').finish()).string(2), /limit/);
  const r = new XdrReader(new XdrWriter().int(1).int(2).finish());
  r.int();
  assert.throws(() => r.end(), /unread/);
});

test('the writer grows past its initial size', () => {
  const w = new XdrWriter(16);
  const big = Buffer.alloc(100_000, 0xab);
  w.int(1).opaque(big).int(2);
  const r = new XdrReader(w.finish());
  assert.equal(r.int(), 1);
  assert.ok(r.opaque().equals(big));
  assert.equal(r.int(), 2);
  r.end();
});

test('frames: length word counts itself, then the 24-byte header, then the body', () => {
  const frame = encodeFrame({ prog: 0x20008086, vers: 1, proc: 66, type: 0, serial: 7, status: 0 }, Uint8Array.of(1, 2, 3, 4));
  assert.equal(frame.length, 32);
  assert.equal(frame.readUInt32BE(0), 32);
  assert.equal(hex(frame.subarray(4, 28)), '20008086' + '00000001' + '00000042' + '00000000' + '00000007' + '00000000');
  assert.deepEqual(decodeHeader(new XdrReader(frame.subarray(4))), { prog: 0x20008086, vers: 1, proc: 66, type: 0, serial: 7, status: 0 });
});

test('domain handles and UUIDs round-trip', () => {
  const uuid = uuidFromString('6695eb01-f6a4-8304-79aa-97f2502e193f');
  assert.equal(uuid.length, 16);
  assert.equal(uuidToString(uuid), '6695eb01-f6a4-8304-79aa-97f2502e193f');
  assert.throws(() => uuidFromString('not-a-uuid'), TypeError);
  const w = new XdrWriter();
  writeDomain(w, { name: 'vm1', uuid, id: -1 });
  const d = readDomain(new XdrReader(w.finish()));
  assert.equal(d.name, 'vm1');
  assert.equal(d.id, -1);
  assert.equal(uuidToString(d.uuid), '6695eb01-f6a4-8304-79aa-97f2502e193f');
});

test('remote_error round-trips, optional strings included', () => {
  const e = { code: 42, domain: 12, message: 'Domain not found', level: 2, str1: 'a', str2: null, str3: 'c', int1: -1, int2: 5 };
  const w = new XdrWriter();
  writeRemoteError(w, e);
  const r = new XdrReader(w.finish());
  assert.deepEqual(readRemoteError(r), e);
  r.end();
});

test('typed parameters of every type round-trip with faithful JS types', () => {
  const params: TypedParam[] = [
    { field: 'i', type: 'int', value: -7 },
    { field: 'u', type: 'uint', value: 4_000_000_000 },
    { field: 'l', type: 'llong', value: -(2n ** 62n) },
    { field: 'cpu.time', type: 'ullong', value: 2n ** 64n - 1n },
    { field: 'd', type: 'double', value: 0.25 },
    { field: 'b', type: 'boolean', value: true },
    { field: 's', type: 'string', value: 'page-sampling' },
  ];
  const w = new XdrWriter();
  for (const p of params) writeTypedParam(w, p);
  const r = new XdrReader(w.finish());
  assert.deepEqual(
    params.map(() => readTypedParam(r)),
    params,
  );
  r.end();
  const bad = new XdrWriter().string('x').int(99).finish();
  assert.throws(() => readTypedParam(new XdrReader(bad)), /unknown typed parameter type 99/);
});
