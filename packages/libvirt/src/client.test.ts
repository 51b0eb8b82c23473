/**
 * Unit tests of the connection against a scripted fake daemon: the paths a real libvirtd cannot
 * be made to take on demand (replies out of order, events ahead of replies, silence, garbage).
 */
import test, { afterEach, beforeEach, describe } from 'node:test';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { setTimeout as sleep } from 'node:timers/promises';
import { Libvirt, MigrateFlags } from './api.js';
import { LibvirtConnection } from './client.js';
import type { ConnectionOptions, ConnectionState } from './client.js';
import {
  CallTimeoutError,
  DisconnectedError,
  InvalidError,
  LibvirtError,
  NotFoundError,
  OperationFailedError,
} from './errors.js';
import {
  KEEPALIVE_PROGRAM,
  KeepaliveProc,
  MessageStatus,
  MessageType,
  Proc,
  STREAM_CHUNK_MAX,
  encodeFrame,
  readDomain,
  readTypedParam,
  uuidFromString,
  writeDomain,
  writeTypedParam,
} from './protocol.js';
import type { DomainRef } from './protocol.js';
import { FakeDaemon } from './testing/fake-daemon.js';
import { XdrReader, XdrWriter } from './xdr.js';

const DOM: DomainRef = { name: 'vm1', uuid: uuidFromString('11111111-2222-3333-4444-555555555555'), id: 3 };
const str = (s: string): Buffer => new XdrWriter().string(s).finish();
const int = (n: number): Buffer => new XdrWriter().int(n).finish();

/** Waits until `pred` holds, polling. */
async function until(pred: () => boolean, timeoutMs = 3000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!pred()) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await sleep(5);
  }
}

describe('LibvirtConnection against a fake daemon', () => {
  let fake: FakeDaemon;
  const conns: LibvirtConnection[] = [];

  const connect = async (opts: Partial<ConnectionOptions> = {}): Promise<LibvirtConnection> => {
    const c = await LibvirtConnection.connect({ uri: 'test:///default', socketPath: fake.socketPath, ...opts });
    conns.push(c);
    return c;
  };

  beforeEach(async () => {
    fake = new FakeDaemon();
    await fake.start();
  });
  afterEach(async () => {
    for (const c of conns.splice(0)) await c.close();
    await fake.dispose();
  });

  test('opens with AUTH_LIST then CONNECT_OPEN(uri, flags) and becomes ready', async () => {
    const seen: number[] = [];
    let opened: { uri: string | null; flags: number } | undefined;
    fake.on(Proc.AUTH_LIST, (c) => {
      seen.push(c.header.proc);
      return { body: new XdrWriter().array([0], (w, v) => w.int(v)).finish() };
    });
    fake.on(Proc.CONNECT_OPEN, (c) => {
      seen.push(c.header.proc);
      const r = new XdrReader(c.args);
      opened = { uri: r.optional((x) => x.string()), flags: r.uint() };
      return {};
    });
    const states: ConnectionState[] = [];
    const c = new LibvirtConnection({ uri: 'test:///default', socketPath: fake.socketPath, readOnly: true });
    conns.push(c);
    c.on('state', (s) => states.push(s));
    assert.equal(c.state, 'connecting');
    await c.connect();
    assert.deepEqual(seen, [Proc.AUTH_LIST, Proc.CONNECT_OPEN]);
    assert.deepEqual(opened, { uri: 'test:///default', flags: 1 });
    assert.deepEqual(states, ['ready']);
    await assert.rejects(c.connect(), /only once/);
  });

  test('many calls in flight on one socket are matched to replies by serial, in any order', async () => {
    const held: { serial: number; name: string; reply: () => void }[] = [];
    fake.on(Proc.DOMAIN_LOOKUP_BY_NAME, (call) => {
      const name = new XdrReader(call.args).string();
      return new Promise((resolve) => {
        held.push({ serial: call.header.serial, name, reply: () => resolve({ body: str(`reply-to-${name}`) }) });
      });
    });
    const c = await connect();
    const names = Array.from({ length: 50 }, (_, i) => `d${i}`);
    const calls = names.map((n) => c.call(Proc.DOMAIN_LOOKUP_BY_NAME, str(n)));
    await until(() => held.length === 50);
    assert.equal(c.inFlight, 50);
    assert.equal(new Set(held.map((h) => h.serial)).size, 50, 'serials are unique');
    for (const h of [...held].reverse()) h.reply(); // answer last call first
    const replies = await Promise.all(calls);
    assert.deepEqual(
      replies.map((b) => new XdrReader(b).string()),
      names.map((n) => `reply-to-${n}`),
    );
    assert.equal(c.inFlight, 0);
  });

  test('an event sent before the reply of the call that caused it reaches subscribers first', async () => {
    const order: string[] = [];
    fake.on(Proc.DOMAIN_CREATE_WITH_FLAGS, (call) => {
      call.socket.write(FakeDaemon.eventFrame(999, int(7)));
      return { body: int(1) };
    });
    const c = await connect();
    c.onEvent(999, (body) => order.push(`event ${new XdrReader(body).int()}`));
    await c.call(Proc.DOMAIN_CREATE_WITH_FLAGS);
    order.push('reply');
    assert.deepEqual(order, ['event 7', 'reply']);
  });

  test('error replies become typed errors carrying code, domain, message and procedure', async () => {
    const codes: Record<string, number> = { a: 42, b: 8, c: 27, d: 9, e: 55, f: 1, g: 50 };
    fake.on(Proc.DOMAIN_LOOKUP_BY_NAME, (call) => {
      const k = new XdrReader(call.args).string();
      return { error: { code: codes[k] ?? 1, domain: 12, message: k === 'f' ? null : `error ${k}` } };
    });
    const c = await connect();
    const fail = (k: string): Promise<unknown> => c.call(Proc.DOMAIN_LOOKUP_BY_NAME, str(k));
    await assert.rejects(fail('a'), (e: unknown) => {
      assert.ok(e instanceof NotFoundError);
      assert.ok(e instanceof LibvirtError);
      assert.equal(e.code, 42);
      assert.equal(e.domain, 12);
      assert.equal(e.message, 'error a');
      assert.equal(e.procedure, 'DOMAIN_LOOKUP_BY_NAME');
      assert.equal(e.name, 'NotFoundError');
      return true;
    });
    await assert.rejects(fail('g'), NotFoundError);
    await assert.rejects(fail('b'), InvalidError);
    await assert.rejects(fail('c'), InvalidError);
    await assert.rejects(fail('d'), OperationFailedError);
    await assert.rejects(fail('e'), OperationFailedError);
    await assert.rejects(fail('f'), (e: unknown) => {
      assert.ok(e instanceof LibvirtError);
      assert.equal(e.constructor, LibvirtError);
      assert.equal(e.message, 'libvirt error code 1');
      return true;
    });
  });

  test('a call without reply times out alone; its late reply is dropped and the socket stays usable', async () => {
    let release: (() => void) | undefined;
    fake.on(Proc.CONNECT_GET_HOSTNAME, () => new Promise((resolve) => (release = () => resolve({ body: str('late') }))));
    fake.on(Proc.CONNECT_GET_TYPE, () => ({ body: str('TEST') }));
    const c = await connect();
    await assert.rejects(c.call(Proc.CONNECT_GET_HOSTNAME, undefined, { timeoutMs: 50 }), (e: unknown) => {
      assert.ok(e instanceof CallTimeoutError);
      assert.equal(e.procedure, 'CONNECT_GET_HOSTNAME');
      return true;
    });
    release?.();
    assert.equal(new XdrReader(await c.call(Proc.CONNECT_GET_TYPE)).string(), 'TEST');
    assert.equal(c.state, 'ready');
    assert.equal(c.inFlight, 0);
  });

  test('frames split into single bytes or packed together are all decoded', async () => {
    const c = await connect();
    const got: number[] = [];
    c.onEvent(500, (b) => got.push(new XdrReader(b).int()));
    const frames = Buffer.concat([1, 2, 3].map((n) => FakeDaemon.eventFrame(500, int(n))));
    fake.broadcastRaw(frames); // three frames in one write
    const split = FakeDaemon.eventFrame(500, int(4));
    for (const byte of split) {
      fake.broadcastRaw(Uint8Array.of(byte)); // one frame in 32 writes
      await sleep(1);
    }
    await until(() => got.length === 4);
    assert.deepEqual(got, [1, 2, 3, 4]);
  });

  test('keepalive: daemon PINGs are answered with PONG', async () => {
    const c = await connect();
    fake.broadcastRaw(
      encodeFrame({ prog: KEEPALIVE_PROGRAM, vers: 1, proc: KeepaliveProc.PING, type: MessageType.MESSAGE, serial: 0, status: 0 }),
    );
    await until(() => fake.received.some((m) => m.header.prog === KEEPALIVE_PROGRAM));
    const pong = fake.received.find((m) => m.header.prog === KEEPALIVE_PROGRAM);
    assert.equal(pong?.header.proc, KeepaliveProc.PONG);
    assert.equal(pong?.header.type, MessageType.MESSAGE);
    assert.equal(c.state, 'ready');
  });

  test('keepalive opt-in: asks the daemon, pings when quiet, reconnects when the daemon stays silent', async () => {
    let asked = 0;
    fake.on(Proc.CONNECT_SUPPORTS_FEATURE, (call) => {
      if (new XdrReader(call.args).int() === 10) asked++;
      return { body: int(1) };
    });
    const c = await connect({ keepalive: { intervalMs: 40, count: 4 }, reconnect: { initialDelayMs: 10 } });
    assert.equal(asked, 1);
    const states: ConnectionState[] = [];
    c.on('state', (s) => states.push(s));
    // The fake never answers pings: after 4 quiet intervals the client declares it dead.
    await until(() => states.includes('reconnecting') && c.state === 'ready', 5000);
    const pings = fake.received.filter((m) => m.header.prog === KEEPALIVE_PROGRAM && m.header.proc === KeepaliveProc.PING);
    assert.ok(pings.length >= 2, `expected pings, got ${pings.length}`);
    assert.equal(asked, 2, 'keepalive is asked for again on the new connection');
  });

  test('losing the daemon fails calls in flight, fails new calls fast, runs hooks, then is ready again', async () => {
    fake.on(Proc.CONNECT_GET_HOSTNAME, () => 'none'); // never answered
    fake.on(Proc.CONNECT_GET_TYPE, () => ({ body: str('TEST') }));
    const c = await connect({ reconnect: { initialDelayMs: 20, maxDelayMs: 50 } });
    const states: ConnectionState[] = [];
    c.on('state', (s) => states.push(s));
    const hookCalls: string[] = [];
    c.addReconnectHook(async (call) => {
      // Calls made by hooks go through even though the state is not ready yet.
      hookCalls.push(`${c.state}:${new XdrReader(await call(Proc.CONNECT_GET_TYPE)).string()}`);
    });
    const inFlight = c.call(Proc.CONNECT_GET_HOSTNAME);
    await until(() => c.inFlight === 1);
    await fake.stop();
    await assert.rejects(inFlight, (e: unknown) => e instanceof DisconnectedError && e.sent);
    assert.equal(c.state, 'reconnecting');
    await assert.rejects(c.call(Proc.CONNECT_GET_TYPE), (e: unknown) => {
      assert.ok(e instanceof DisconnectedError);
      assert.equal(e.sent, false);
      assert.equal(e.state, 'reconnecting');
      return true;
    });
    const failures: number[] = [];
    c.on('reconnectFailed', (_e, attempt) => failures.push(attempt));
    await until(() => failures.length >= 2); // the socket is gone: attempts fail and back off
    await fake.start();
    await c.whenReady(5000);
    assert.deepEqual(states, ['reconnecting', 'ready']);
    assert.deepEqual(hookCalls, ['reconnecting:TEST']);
    assert.equal(new XdrReader(await c.call(Proc.CONNECT_GET_TYPE)).string(), 'TEST');
  });

  test('a garbage frame length drops the socket and the client reconnects', async () => {
    fake.on(Proc.CONNECT_GET_TYPE, () => ({ body: str('TEST') }));
    const c = await connect({ reconnect: { initialDelayMs: 10 } });
    const lost = once(c, 'disconnect');
    fake.broadcastRaw(Uint8Array.of(0, 0, 0, 3)); // a frame cannot be 3 bytes long
    const [cause] = await lost;
    assert.match(String(cause), /bad frame length 3/);
    await c.whenReady(5000);
    assert.equal(new XdrReader(await c.call(Proc.CONNECT_GET_TYPE)).string(), 'TEST');
    assert.equal(fake.connections, 2);
  });

  test('without reconnect, a lost daemon closes the connection', async () => {
    const c = await connect({ reconnect: false });
    const closed = once(c, 'state');
    fake.dropClients();
    assert.deepEqual(await closed, ['closed', 'ready']);
    await assert.rejects(c.call(Proc.CONNECT_GET_TYPE), (e: unknown) => e instanceof DisconnectedError && e.state === 'closed');
  });

  test('a first connection that fails rejects and leaves the connection closed', async () => {
    await fake.stop();
    const c = new LibvirtConnection({ uri: 'test:///default', socketPath: fake.socketPath });
    await assert.rejects(c.connect(), (e: unknown) => e instanceof DisconnectedError && e.sent === false);
    assert.equal(c.state, 'closed');
  });

  test('close() sends CONNECT_CLOSE, fails later calls and is idempotent', async () => {
    let closedByClient = 0;
    fake.on(Proc.CONNECT_CLOSE, () => (closedByClient++, {}));
    const c = await connect();
    await c.close();
    await c.close();
    assert.equal(closedByClient, 1);
    assert.equal(c.state, 'closed');
    await assert.rejects(c.call(Proc.CONNECT_GET_TYPE), DisconnectedError);
  });

  test('upload stream: data goes in packets of at most 256 KiB, then finish waits for the confirmation', async () => {
    fake.on(Proc.STORAGE_VOL_UPLOAD, () => ({}));
    let finished = false;
    fake.onStreamPacket = (h, _body, socket) => {
      if (h.status === MessageStatus.OK) {
        finished = true;
        socket.write(FakeDaemon.streamFrame(h, MessageStatus.OK));
      }
    };
    const c = await connect();
    const lv = new Libvirt(c);
    const data = Buffer.alloc(STREAM_CHUNK_MAX * 2 + 10, 7);
    await lv.uploadVolume({ pool: 'p', name: 'v', key: '/p/v' }, data);
    assert.ok(finished);
    const packets = fake.received.filter((m) => m.header.type === MessageType.STREAM);
    assert.deepEqual(
      packets.map((p) => [p.header.status, p.body.length]),
      [
        [MessageStatus.CONTINUE, STREAM_CHUNK_MAX],
        [MessageStatus.CONTINUE, STREAM_CHUNK_MAX],
        [MessageStatus.CONTINUE, 10],
        [MessageStatus.OK, 0],
      ],
    );
  });

  test('upload stream: an error from the daemon fails the upload with a typed error', async () => {
    fake.on(Proc.STORAGE_VOL_UPLOAD, () => ({}));
    fake.onStreamPacket = (h, _b, socket) => {
      if (h.status === MessageStatus.OK) {
        const w = new XdrWriter();
        w.int(38).int(18).optional('disk full', (x, v) => x.string(v)).int(2).bool(false);
        w.bool(false).bool(false).bool(false).int(0).int(0).bool(false);
        socket.write(FakeDaemon.streamFrame(h, MessageStatus.ERROR, w.finish()));
      }
    };
    const lv = new Libvirt(await connect());
    await assert.rejects(lv.uploadVolume({ pool: 'p', name: 'v', key: 'k' }, Buffer.from('abc')), (e: unknown) => {
      assert.ok(e instanceof LibvirtError);
      assert.equal(e.code, 38);
      assert.equal(e.message, 'disk full');
      return true;
    });
  });

  test('download stream: data then end-of-data; the client finishes and the stream ends after confirmation', async () => {
    const payload = Buffer.from('hello, volume');
    fake.on(Proc.STORAGE_VOL_DOWNLOAD, (call) => {
      setImmediate(() => {
        call.socket.write(FakeDaemon.streamFrame(call.header, MessageStatus.CONTINUE, payload.subarray(0, 5)));
        call.socket.write(FakeDaemon.streamFrame(call.header, MessageStatus.CONTINUE, payload.subarray(5)));
        call.socket.write(FakeDaemon.streamFrame(call.header, MessageStatus.CONTINUE)); // end of data
      });
      return {};
    });
    fake.onStreamPacket = (h, _b, socket) => {
      if (h.status === MessageStatus.OK) socket.write(FakeDaemon.streamFrame(h, MessageStatus.OK));
    };
    const lv = new Libvirt(await connect());
    const stream = await lv.downloadVolume({ pool: 'p', name: 'v', key: 'k' });
    const chunks: Buffer[] = [];
    for await (const chunk of stream) chunks.push(chunk as Buffer);
    assert.equal(Buffer.concat(chunks).toString(), 'hello, volume');
    assert.ok(fake.received.some((m) => m.header.type === MessageType.STREAM && m.header.status === MessageStatus.OK));
  });
});

describe('Libvirt API decoding against a fake daemon', () => {
  let fake: FakeDaemon;
  let lv: Libvirt;

  beforeEach(async () => {
    fake = new FakeDaemon();
    await fake.start();
  });
  afterEach(async () => {
    await lv.close();
    await fake.dispose();
  });

  test('bulk stats decode every typed parameter type; counters are bigint', async () => {
    fake.on(Proc.CONNECT_GET_ALL_DOMAIN_STATS, (call) => {
      const r = new XdrReader(call.args);
      assert.equal(r.array((x) => x.string()).length, 0); // no domains: all of them
      assert.equal(r.uint(), 3);
      assert.equal(r.uint(), 0);
      const w = new XdrWriter().uint(1);
      writeDomain(w, DOM);
      w.uint(7);
      writeTypedParam(w, { field: 'state.state', type: 'int', value: 1 });
      writeTypedParam(w, { field: 'vcpu.current', type: 'uint', value: 2 });
      writeTypedParam(w, { field: 'x.llong', type: 'llong', value: -5n });
      writeTypedParam(w, { field: 'cpu.time', type: 'ullong', value: 18_446_744_073_709_551_000n });
      writeTypedParam(w, { field: 'x.double', type: 'double', value: 1.25 });
      writeTypedParam(w, { field: 'x.bool', type: 'boolean', value: true });
      writeTypedParam(w, { field: 'dirtyrate.calc_mode', type: 'string', value: 'page-sampling' });
      return { body: w.finish() };
    });
    lv = await Libvirt.connect({ uri: 'test:///default', socketPath: fake.socketPath });
    const [rec] = await lv.getAllDomainStats({ stats: 3 });
    assert.ok(rec);
    assert.equal(rec.domain.name, 'vm1');
    assert.equal(rec.values.get('cpu.time'), 18_446_744_073_709_551_000n);
    assert.equal(typeof rec.values.get('cpu.time'), 'bigint');
    assert.equal(rec.values.get('x.llong'), -5n);
    assert.equal(rec.values.get('vcpu.current'), 2);
    assert.equal(rec.values.get('x.double'), 1.25);
    assert.equal(rec.values.get('x.bool'), true);
    assert.equal(rec.values.get('dirtyrate.calc_mode'), 'page-sampling');
    assert.deepEqual(
      rec.params.map((p) => p.type),
      ['int', 'uint', 'llong', 'ullong', 'double', 'boolean', 'string'],
    );
  });

  test('peer-to-peer migration: domain, destination URI, typed string parameters, empty cookie, flags', async () => {
    fake.on(Proc.DOMAIN_MIGRATE_PERFORM3_PARAMS, (call) => {
      const r = new XdrReader(call.args);
      assert.equal(readDomain(r).name, 'vm1');
      assert.equal(
        r.optional((x) => x.string()),
        'qemu+unix:///system?socket=/run/b/libvirt-sock',
      );
      assert.deepEqual(r.array(readTypedParam), [
        { field: 'migrate_uri', type: 'string', value: 'tcp:127.0.0.1' },
        { field: 'destination_xml', type: 'string', value: '<domain/>' },
        { field: 'persistent_xml', type: 'string', value: '<domain/>' },
      ]);
      assert.equal(r.opaque().length, 0, 'no cookie in peer-to-peer mode');
      assert.equal(r.uint(), MigrateFlags.LIVE | MigrateFlags.PEER2PEER | MigrateFlags.UNSAFE);
      // remote_domain_migrate_perform3_params_ret: the (empty) cookie.
      return { body: new XdrWriter().opaque(new Uint8Array(0)).finish() };
    });
    lv = await Libvirt.connect({ uri: 'test:///default', socketPath: fake.socketPath });
    await lv.migrateDomainPeerToPeer(
      DOM,
      'qemu+unix:///system?socket=/run/b/libvirt-sock',
      { migrateUri: 'tcp:127.0.0.1', destinationXml: '<domain/>', persistentXml: '<domain/>' },
      MigrateFlags.LIVE | MigrateFlags.PEER2PEER | MigrateFlags.UNSAFE,
    );
  });

  test('lifecycle events that overtake the registration reply are held and delivered in order', async () => {
    let nextId = 10;
    const lifecycle = (callbackId: number, event: number, detail: number): Buffer => {
      const w = new XdrWriter().int(callbackId);
      writeDomain(w, DOM);
      return w.int(event).int(detail).finish();
    };
    fake.on(Proc.CONNECT_DOMAIN_EVENT_CALLBACK_REGISTER_ANY, (call) => {
      const r = new XdrReader(call.args);
      assert.equal(r.int(), 0); // VIR_DOMAIN_EVENT_ID_LIFECYCLE
      assert.equal(
        r.optional((x) => x.string()),
        null,
      ); // all domains
      const id = nextId++;
      call.socket.write(FakeDaemon.eventFrame(Proc.DOMAIN_EVENT_CALLBACK_LIFECYCLE, lifecycle(id, 2, 0)));
      call.socket.write(FakeDaemon.eventFrame(Proc.DOMAIN_EVENT_CALLBACK_LIFECYCLE, lifecycle(99, 5, 1))); // not ours
      return { body: int(id) };
    });
    let deregistered: number | undefined;
    fake.on(Proc.CONNECT_DOMAIN_EVENT_CALLBACK_DEREGISTER_ANY, (call) => {
      deregistered = new XdrReader(call.args).int();
      return {};
    });
    lv = await Libvirt.connect({ uri: 'test:///default', socketPath: fake.socketPath, reconnect: { initialDelayMs: 10 } });
    const events: string[] = [];
    const sub = await lv.onDomainLifecycle((e) => events.push(`${e.name} ${e.uuid} ${e.event}/${e.detail}`));
    assert.deepEqual(events, ['vm1 11111111-2222-3333-4444-555555555555 2/0']);
    fake.broadcastEvent(Proc.DOMAIN_EVENT_CALLBACK_LIFECYCLE, lifecycle(10, 5, 1));
    await until(() => events.length === 2);
    // After a reconnection the subscription is registered again, under a new callback id.
    fake.dropClients();
    await until(() => lv.state === 'reconnecting');
    await lv.connection.whenReady(5000);
    assert.equal(events.length, 3, 'the early event of the new registration was delivered');
    fake.broadcastEvent(Proc.DOMAIN_EVENT_CALLBACK_LIFECYCLE, lifecycle(10, 6, 0)); // the stale id: dropped
    fake.broadcastEvent(Proc.DOMAIN_EVENT_CALLBACK_LIFECYCLE, lifecycle(11, 4, 0));
    await until(() => events.length === 4);
    assert.equal(events[3], 'vm1 11111111-2222-3333-4444-555555555555 4/0');
    await sub.unsubscribe();
    assert.equal(deregistered, 11);
  });
});
