/**
 * XDR (RFC 4506) encoding and decoding, written by hand for libvirt's RPC protocol.
 *
 * Everything is big-endian and padded to 4-byte units. 64-bit integers (`hyper`, `unsigned
 * hyper`) are `bigint` on both sides: libvirt's counters (bytes, nanoseconds of CPU time) pass
 * 2^53 and must not be rounded through `number`.
 */

/** A malformed or truncated XDR message, or a value that cannot be encoded. */
export class XdrError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'XdrError';
  }
}

const INT32_MIN = -0x8000_0000;
const INT32_MAX = 0x7fff_ffff;
const UINT32_MAX = 0xffff_ffff;
const INT64_MIN = -(1n << 63n);
const INT64_MAX = (1n << 63n) - 1n;
const UINT64_MAX = (1n << 64n) - 1n;

/** Bytes of zero padding after `len` bytes of opaque data or string. */
function padding(len: number): number {
  return (4 - (len % 4)) % 4;
}

/** Appends XDR values to a growing buffer. Methods return `this` so they can be chained. */
export class XdrWriter {
  private buf: Buffer;
  private pos: number;

  constructor(initialSize = 256) {
    this.buf = Buffer.allocUnsafe(Math.max(16, initialSize));
    this.pos = 0;
  }

  /** Number of bytes written so far. */
  get length(): number {
    return this.pos;
  }

  private reserve(n: number): void {
    if (this.pos + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.pos + n) size *= 2;
    const next = Buffer.allocUnsafe(size);
    this.buf.copy(next, 0, 0, this.pos);
    this.buf = next;
  }

  /** Signed 32-bit integer. */
  int(v: number): this {
    if (!Number.isInteger(v) || v < INT32_MIN || v > INT32_MAX) throw new XdrError(`int out of range: ${v}`);
    this.reserve(4);
    this.buf.writeInt32BE(v, this.pos);
    this.pos += 4;
    return this;
  }

  /** Unsigned 32-bit integer (libvirt's `flags` arguments are all `unsigned int`). */
  uint(v: number): this {
    if (!Number.isInteger(v) || v < 0 || v > UINT32_MAX) throw new XdrError(`unsigned int out of range: ${v}`);
    this.reserve(4);
    this.buf.writeUInt32BE(v, this.pos);
    this.pos += 4;
    return this;
  }

  /** Signed 64-bit integer (`hyper`). */
  hyper(v: bigint): this {
    if (v < INT64_MIN || v > INT64_MAX) throw new XdrError(`hyper out of range: ${v}`);
    this.reserve(8);
    this.buf.writeBigInt64BE(v, this.pos);
    this.pos += 8;
    return this;
  }

  /** Unsigned 64-bit integer (`unsigned hyper`). */
  uhyper(v: bigint): this {
    if (v < 0n || v > UINT64_MAX) throw new XdrError(`unsigned hyper out of range: ${v}`);
    this.reserve(8);
    this.buf.writeBigUInt64BE(v, this.pos);
    this.pos += 8;
    return this;
  }

  /** Boolean: a 4-byte 0 or 1. */
  bool(v: boolean): this {
    return this.int(v ? 1 : 0);
  }

  /** IEEE 754 double precision. */
  double(v: number): this {
    this.reserve(8);
    this.buf.writeDoubleBE(v, this.pos);
    this.pos += 8;
    return this;
  }

  /** Fixed-length opaque data: exactly `size` bytes, no length prefix, then padding. */
  fixedOpaque(data: Uint8Array, size: number): this {
    if (data.length !== size) throw new XdrError(`fixed opaque needs ${size} bytes, got ${data.length}`);
    return this.rawPadded(data);
  }

  /** Variable-length opaque data: a uint length, the bytes, then padding. */
  opaque(data: Uint8Array, max = UINT32_MAX): this {
    if (data.length > max) throw new XdrError(`opaque longer than its limit ${max}: ${data.length}`);
    this.uint(data.length);
    return this.rawPadded(data);
  }

  /** A string: UTF-8 bytes encoded as variable-length opaque data. */
  string(s: string, max = UINT32_MAX): this {
    return this.opaque(Buffer.from(s, 'utf8'), max);
  }

  /** An optional value (XDR pointer, `type *name`): a bool "present" then the value if present. */
  optional<T>(v: T | null | undefined, write: (w: this, v: T) => void): this {
    if (v === null || v === undefined) return this.bool(false);
    this.bool(true);
    write(this, v);
    return this;
  }

  /** A variable-length array: a uint count, then each element. */
  array<T>(items: readonly T[], write: (w: this, v: T) => void, max = UINT32_MAX): this {
    if (items.length > max) throw new XdrError(`array longer than its limit ${max}: ${items.length}`);
    this.uint(items.length);
    for (const item of items) write(this, item);
    return this;
  }

  /** A fixed-length array: exactly `size` elements, no count. */
  fixedArray<T>(items: readonly T[], size: number, write: (w: this, v: T) => void): this {
    if (items.length !== size) throw new XdrError(`fixed array needs ${size} elements, got ${items.length}`);
    for (const item of items) write(this, item);
    return this;
  }

  /** Raw bytes with no length and no padding (used for the RPC header framing and stream data). */
  raw(data: Uint8Array): this {
    this.reserve(data.length);
    this.buf.set(data, this.pos);
    this.pos += data.length;
    return this;
  }

  private rawPadded(data: Uint8Array): this {
    const pad = padding(data.length);
    this.reserve(data.length + pad);
    this.buf.set(data, this.pos);
    this.pos += data.length;
    this.buf.fill(0, this.pos, this.pos + pad);
    this.pos += pad;
    return this;
  }

  /** Overwrites a uint already written at `offset` (used to patch the frame length). */
  patchUint(offset: number, v: number): void {
    if (offset < 0 || offset + 4 > this.pos) throw new XdrError(`patch offset out of range: ${offset}`);
    this.buf.writeUInt32BE(v, offset);
  }

  /** The bytes written so far (a view, not a copy: do not keep writing after taking it). */
  finish(): Buffer {
    return this.buf.subarray(0, this.pos);
  }
}

/** Reads XDR values from a buffer, in order, checking bounds on every read. */
export class XdrReader {
  private readonly buf: Buffer;
  private pos: number;

  constructor(data: Uint8Array, offset = 0) {
    this.buf = Buffer.isBuffer(data) ? data : Buffer.from(data.buffer, data.byteOffset, data.byteLength);
    this.pos = offset;
  }

  /** Current read position. */
  get offset(): number {
    return this.pos;
  }

  /** Bytes not read yet. */
  get remaining(): number {
    return this.buf.length - this.pos;
  }

  private need(n: number, what: string): void {
    if (this.pos + n > this.buf.length) {
      throw new XdrError(`truncated XDR: ${what} needs ${n} bytes at offset ${this.pos}, ${this.remaining} left`);
    }
  }

  int(): number {
    this.need(4, 'int');
    const v = this.buf.readInt32BE(this.pos);
    this.pos += 4;
    return v;
  }

  uint(): number {
    this.need(4, 'unsigned int');
    const v = this.buf.readUInt32BE(this.pos);
    this.pos += 4;
    return v;
  }

  hyper(): bigint {
    this.need(8, 'hyper');
    const v = this.buf.readBigInt64BE(this.pos);
    this.pos += 8;
    return v;
  }

  uhyper(): bigint {
    this.need(8, 'unsigned hyper');
    const v = this.buf.readBigUInt64BE(this.pos);
    this.pos += 8;
    return v;
  }

  /** A boolean; anything but 0 or 1 is a protocol error (RFC 4506 §4.4). */
  bool(): boolean {
    const v = this.int();
    if (v !== 0 && v !== 1) throw new XdrError(`bad boolean value ${v}`);
    return v === 1;
  }

  double(): number {
    this.need(8, 'double');
    const v = this.buf.readDoubleBE(this.pos);
    this.pos += 8;
    return v;
  }

  /** Fixed-length opaque data (a copy, so it may outlive the message buffer). */
  fixedOpaque(size: number): Buffer {
    this.need(size + padding(size), 'fixed opaque');
    const out = Buffer.from(this.buf.subarray(this.pos, this.pos + size));
    this.pos += size + padding(size);
    return out;
  }

  /** Variable-length opaque data (a copy). */
  opaque(max = UINT32_MAX): Buffer {
    const len = this.uint();
    if (len > max) throw new XdrError(`opaque longer than its limit ${max}: ${len}`);
    return this.fixedOpaque(len);
  }

  /** A UTF-8 string. */
  string(max = UINT32_MAX): string {
    const len = this.uint();
    if (len > max) throw new XdrError(`string longer than its limit ${max}: ${len}`);
    this.need(len + padding(len), 'string');
    const s = this.buf.toString('utf8', this.pos, this.pos + len);
    this.pos += len + padding(len);
    return s;
  }

  /** An optional value (XDR pointer): `null` when absent. */
  optional<T>(read: (r: this) => T): T | null {
    return this.bool() ? read(this) : null;
  }

  /** A variable-length array. The count is checked against the bytes left before allocating. */
  array<T>(read: (r: this) => T, max = UINT32_MAX): T[] {
    const n = this.uint();
    if (n > max) throw new XdrError(`array longer than its limit ${max}: ${n}`);
    // Every XDR element takes at least 4 bytes; a count the message cannot hold is corrupt data,
    // and refusing it here avoids allocating a huge array for it.
    if (n * 4 > this.remaining) throw new XdrError(`array count ${n} exceeds the ${this.remaining} bytes left`);
    const out: T[] = [];
    for (let i = 0; i < n; i++) out.push(read(this));
    return out;
  }

  /** A fixed-length array of `size` elements. */
  fixedArray<T>(size: number, read: (r: this) => T): T[] {
    const out: T[] = [];
    for (let i = 0; i < size; i++) out.push(read(this));
    return out;
  }

  /** All bytes not read yet, as a view (stream data is raw, not XDR-encoded). */
  rest(): Buffer {
    const out = this.buf.subarray(this.pos);
    this.pos = this.buf.length;
    return out;
  }

  /** Throws unless every byte was consumed: trailing bytes mean a decoder and the peer disagree. */
  end(): void {
    if (this.pos !== this.buf.length) throw new XdrError(`${this.remaining} unread bytes after decoding`);
  }
}
