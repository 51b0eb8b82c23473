/**
 * A scripted stand-in for libvirtd, for unit tests of the client's framing, concurrency and
 * failure paths (out-of-order replies, events before replies, errors, pings, drops) that a real
 * daemon cannot be made to produce on demand. It answers AUTH_LIST and CONNECT_OPEN itself.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  FRAME_LENGTH_BYTES,
  HEADER_BYTES,
  KEEPALIVE_PROGRAM,
  MessageStatus,
  MessageType,
  Proc,
  REMOTE_PROGRAM,
  decodeHeader,
  encodeFrame,
  writeRemoteError,
} from '../protocol.js';
import type { MessageHeader } from '../protocol.js';
import type { RemoteErrorFields } from '../errors.js';
import { XdrReader, XdrWriter } from '../xdr.js';

/** What a handler wants done with a call. */
export type FakeReply = { body?: Uint8Array } | { error: Partial<RemoteErrorFields> & { code: number } } | 'none';

/** A call as the fake daemon received it. */
export interface FakeCall {
  header: MessageHeader;
  args: Buffer;
  socket: net.Socket;
}

export type FakeHandler = (call: FakeCall) => FakeReply | Promise<FakeReply>;

/** A fake libvirtd listening on a unix socket in a temporary directory. */
export class FakeDaemon {
  readonly socketPath: string;
  private readonly dir: string;
  private server: net.Server | null = null;
  private readonly sockets = new Set<net.Socket>();
  private readonly handlers = new Map<number, FakeHandler>();
  /** Every non-call message received (keepalive, stream packets), in order. */
  readonly received: { header: MessageHeader; body: Buffer }[] = [];
  /** Called for every STREAM packet a client sends. */
  onStreamPacket: ((header: MessageHeader, body: Buffer, socket: net.Socket) => void) | null = null;
  /** Connections accepted so far. */
  connections = 0;

  constructor() {
    this.dir = mkdtempSync(join(tmpdir(), 'kloudak-fake-libvirtd-'));
    this.socketPath = join(this.dir, 'sock');
    this.handlers.set(Proc.AUTH_LIST, () => ({ body: new XdrWriter().array([0], (w, v) => w.int(v)).finish() }));
    this.handlers.set(Proc.CONNECT_OPEN, () => ({}));
    this.handlers.set(Proc.CONNECT_CLOSE, () => ({}));
  }

  /** Sets the handler of a procedure. */
  on(proc: number, handler: FakeHandler): this {
    this.handlers.set(proc, handler);
    return this;
  }

  async start(): Promise<void> {
    const server = net.createServer((s) => this.accept(s));
    this.server = server;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.socketPath, () => resolve());
    });
  }

  /** Stops listening and drops every client (like a daemon that dies). */
  async stop(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    this.sockets.clear();
    const server = this.server;
    this.server = null;
    if (server) await new Promise<void>((resolve) => server.close(() => resolve()));
  }

  /** Drops every client but keeps listening (like a daemon restarting instantly). */
  dropClients(): void {
    for (const s of this.sockets) s.destroy();
    this.sockets.clear();
  }

  /** Sends raw bytes to every client. */
  broadcastRaw(data: Uint8Array): void {
    for (const s of this.sockets) s.write(data);
  }

  /** Sends an event (MESSAGE of the remote program) to every client. */
  broadcastEvent(proc: number, body: Uint8Array): void {
    for (const s of this.sockets) s.write(FakeDaemon.eventFrame(proc, body));
  }

  async dispose(): Promise<void> {
    await this.stop();
    rmSync(this.dir, { recursive: true, force: true });
  }

  /** A STREAM frame for the stream opened by the call `h`. */
  static streamFrame(h: MessageHeader, status: number, body?: Uint8Array): Buffer {
    return encodeFrame({ ...h, type: MessageType.STREAM, status }, body);
  }

  /** An event frame. */
  static eventFrame(proc: number, body: Uint8Array): Buffer {
    return encodeFrame({ prog: REMOTE_PROGRAM, vers: 1, proc, type: MessageType.MESSAGE, serial: 0, status: MessageStatus.OK }, body);
  }

  /** The frame of a reply to `h`. */
  static replyFrame(h: MessageHeader, reply: Exclude<FakeReply, 'none'>): Buffer {
    if ('error' in reply) {
      const w = new XdrWriter();
      writeRemoteError(w, {
        domain: 0,
        message: null,
        level: 2,
        str1: null,
        str2: null,
        str3: null,
        int1: 0,
        int2: 0,
        ...reply.error,
      });
      return encodeFrame({ ...h, type: MessageType.REPLY, status: MessageStatus.ERROR }, w.finish());
    }
    return encodeFrame({ ...h, type: MessageType.REPLY, status: MessageStatus.OK }, reply.body);
  }

  private accept(socket: net.Socket): void {
    this.connections++;
    this.sockets.add(socket);
    socket.on('close', () => this.sockets.delete(socket));
    socket.on('error', () => undefined);
    let buf = Buffer.alloc(0);
    socket.on('data', (chunk: Buffer) => {
      buf = Buffer.concat([buf, chunk]);
      while (buf.length >= FRAME_LENGTH_BYTES) {
        const len = buf.readUInt32BE(0);
        if (buf.length < len) break;
        const frame = buf.subarray(FRAME_LENGTH_BYTES, len);
        buf = buf.subarray(len);
        void this.handle(socket, frame);
      }
    });
  }

  private async handle(socket: net.Socket, frame: Buffer): Promise<void> {
    const header = decodeHeader(new XdrReader(frame));
    if (header.prog === KEEPALIVE_PROGRAM || header.type !== MessageType.CALL) {
      const body = Buffer.from(frame.subarray(HEADER_BYTES));
      this.received.push({ header, body });
      if (header.type === MessageType.STREAM) this.onStreamPacket?.(header, body, socket);
      return;
    }
    const handler = this.handlers.get(header.proc);
    const reply: FakeReply = handler
      ? await handler({ header, args: frame.subarray(HEADER_BYTES), socket })
      : { error: { code: 3, message: `fake daemon: no handler for procedure ${header.proc}` } };
    if (reply === 'none' || socket.destroyed) return;
    socket.write(FakeDaemon.replyFrame(header, reply));
  }
}
