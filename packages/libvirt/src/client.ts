/**
 * A connection to libvirtd over its unix socket, speaking libvirt's RPC protocol.
 *
 * One socket carries many calls at once: each call gets a serial number and the reply with the
 * same serial settles it, in whatever order replies come. Besides replies the daemon sends
 * events (type MESSAGE), stream data (type STREAM) and keepalive pings, all on the same socket.
 *
 * The connection owns its life cycle: when libvirtd goes away it fails what was in flight,
 * reconnects with exponential backoff, replays the open handshake and the registered
 * {@link ReconnectHook}s (event registrations), then is `ready` again. Callers see the state in
 * {@link LibvirtConnection.state} and the `state` event; a call made while not ready fails at once
 * with a {@link DisconnectedError} rather than waiting for an unknown time.
 */
import { EventEmitter } from 'node:events';
import net from 'node:net';
import { Readable } from 'node:stream';
import { CallTimeoutError, DisconnectedError, LibvirtError, ProtocolError, libvirtErrorFrom } from './errors.js';
import type { DisconnectedState } from './errors.js';
import {
  AuthType,
  DriverFeature,
  FRAME_LENGTH_BYTES,
  HEADER_BYTES,
  KEEPALIVE_PROGRAM,
  KEEPALIVE_VERSION,
  KeepaliveProc,
  MESSAGE_MAX,
  MessageStatus,
  MessageType,
  Proc,
  REMOTE_PROGRAM,
  REMOTE_PROTOCOL_VERSION,
  STREAM_CHUNK_MAX,
  decodeHeader,
  encodeFrame,
  procName,
  readRemoteError,
} from './protocol.js';
import type { MessageHeader } from './protocol.js';
import { XdrReader, XdrWriter } from './xdr.js';

/** Default path of libvirtd's read-write socket. */
export const DEFAULT_SOCKET_PATH = '/run/libvirt/libvirt-sock';

/** Life cycle of a connection. `closed` is final. */
export type ConnectionState = 'connecting' | 'ready' | 'reconnecting' | 'closed';

/** Backoff between reconnection attempts: `initialDelayMs * factor^n`, capped, with ±20 % jitter. */
export interface ReconnectOptions {
  /** Delay before the first attempt (default 100 ms). */
  initialDelayMs?: number;
  /** Cap on the delay (default 5000 ms). */
  maxDelayMs?: number;
  /** Growth factor (default 2). */
  factor?: number;
  /** Give up (state `closed`) after this many failed attempts in a row (default: never). */
  maxAttempts?: number;
}

/**
 * Keepalive. When enabled the client asks libvirtd to keep the connection alive: the daemon then
 * pings every few seconds and drops a client that does not answer (after ~30 s by default). The
 * client answers those pings, pings the daemon itself when the socket has been quiet for
 * `intervalMs`, and treats `count` quiet intervals as a dead daemon (hung, or a network path
 * that lost the socket without a reset), which triggers a reconnect.
 */
export interface KeepaliveOptions {
  /** Quiet time before the client pings (default 5000 ms). */
  intervalMs?: number;
  /** Quiet intervals before the connection is declared dead (default 6). */
  count?: number;
}

/** Options of {@link LibvirtConnection}. */
export interface ConnectionOptions {
  /** Hypervisor URI to open, e.g. `qemu:///system` or `test:///default`. */
  uri: string;
  /** libvirtd's socket (default {@link DEFAULT_SOCKET_PATH}). */
  socketPath?: string;
  /** Open read-only (`VIR_CONNECT_RO`); the read-write socket still has to be used. */
  readOnly?: boolean;
  /** Default per-call timeout (default 30 000 ms; 0 = none). */
  callTimeoutMs?: number;
  /** Time allowed for connecting the socket and each handshake call (default 10 000 ms). */
  connectTimeoutMs?: number;
  /** Reconnect after losing libvirtd (default on, with the default backoff); `false` to close instead. */
  reconnect?: boolean | ReconnectOptions;
  /** Keepalive (default off; `true` for the defaults). */
  keepalive?: boolean | KeepaliveOptions;
}

/** Options of one call. */
export interface CallOptions {
  /** Overrides the connection's default timeout (0 = none). */
  timeoutMs?: number;
}

/** Sends a call and resolves with the raw reply body (XDR of the procedure's `_ret` struct). */
export type Caller = (proc: number, args?: Uint8Array, options?: CallOptions) => Promise<Buffer>;

/**
 * Run after every successful reconnection, before the state turns `ready`, with a caller that
 * works during that window. Used to re-establish server-side state such as event registrations.
 * A hook that fails with a {@link LibvirtError} is reported (`hookError`) and skipped; any other
 * failure (the socket dropped again) fails the attempt, which is then retried.
 */
export type ReconnectHook = (call: Caller) => Promise<void>;

/** Handler of an event (a MESSAGE of the remote program): receives the raw `_msg` body. */
export type EventHandler = (body: Buffer, header: MessageHeader) => void;

/** Events emitted by {@link LibvirtConnection}. */
export interface ConnectionEvents {
  /** The state changed. */
  state: [state: ConnectionState, previous: ConnectionState];
  /** The socket to libvirtd was lost while ready; in-flight calls failed with this cause. */
  disconnect: [cause: Error];
  /** A reconnection attempt failed; the next one comes after `nextDelayMs` (-1: giving up). */
  reconnectFailed: [cause: Error, attempt: number, nextDelayMs: number];
  /** A reconnect hook failed with a libvirt error and was skipped. */
  hookError: [cause: LibvirtError];
  /** An event handler or state listener threw; the connection carried on. */
  listenerError: [cause: unknown];
}

interface PendingCall {
  proc: number;
  resolve: (body: Buffer) => void;
  reject: (err: Error) => void;
  timer: NodeJS.Timeout | undefined;
}

/** Splits the byte stream into frames (each without its length word). */
class FrameReader {
  private chunks: Buffer[] = [];
  private buffered = 0;

  /** Adds received bytes and returns every complete frame. Throws ProtocolError on a bad length. */
  push(chunk: Buffer): Buffer[] {
    this.chunks.push(chunk);
    this.buffered += chunk.length;
    const frames: Buffer[] = [];
    while (this.buffered >= FRAME_LENGTH_BYTES) {
      let head = this.chunks[0] as Buffer;
      if (head.length < FRAME_LENGTH_BYTES) {
        head = Buffer.concat(this.chunks);
        this.chunks = [head];
      }
      const len = head.readUInt32BE(0);
      if (len < FRAME_LENGTH_BYTES + HEADER_BYTES || len > FRAME_LENGTH_BYTES + MESSAGE_MAX) {
        throw new ProtocolError(`bad frame length ${len}`);
      }
      if (this.buffered < len) break;
      // Join the chunks once the frame is complete, so a large frame is copied once, not once
      // per chunk received.
      const all = this.chunks.length === 1 ? head : Buffer.concat(this.chunks);
      let off = 0;
      while (all.length - off >= FRAME_LENGTH_BYTES) {
        const n = all.readUInt32BE(off);
        if (n < FRAME_LENGTH_BYTES + HEADER_BYTES || n > FRAME_LENGTH_BYTES + MESSAGE_MAX) {
          throw new ProtocolError(`bad frame length ${n}`);
        }
        if (all.length - off < n) break;
        frames.push(all.subarray(off + FRAME_LENGTH_BYTES, off + n));
        off += n;
      }
      const rest = all.subarray(off);
      this.chunks = rest.length > 0 ? [rest] : [];
      this.buffered = rest.length;
    }
    return frames;
  }
}

/**
 * The data side of a stream procedure (volume upload or download), keyed by the serial of the
 * call that opened it. Outgoing data goes through {@link write} and {@link finish}; incoming data
 * is readable from {@link incoming}.
 */
export class StreamChannel {
  /**
   * Data the daemon sends (downloads). It ends only after the daemon's end-of-data has been
   * acknowledged (our finish sent and confirmed), so a consumer that saw `end` knows the transfer
   * is complete on both sides; a failure destroys it with the daemon's error.
   */
  readonly incoming: Readable;
  private failure: Error | null = null;
  private done = false;
  private eof = false;
  private finishPromise: Promise<void> | null = null;
  private finishing: { resolve: () => void; reject: (e: Error) => void; timer: NodeJS.Timeout } | null = null;

  /** @internal created by {@link LibvirtConnection.openStream}. */
  constructor(
    private readonly conn: LibvirtConnection,
    /** Serial of the call that opened the stream; every stream packet carries it. */
    readonly serial: number,
    /** Procedure that opened the stream. */
    readonly proc: number,
  ) {
    this.incoming = new Readable({
      // The consumer wants more: let the socket flow again (see handlePacket's pause).
      read: () => this.conn.resumeFor(this),
    });
    // A consumer that never attaches an error listener must not crash the process; the error
    // also surfaces through write()/finish() and to async iterators and pipelines.
    this.incoming.on('error', () => undefined);
    // A consumer that destroys the stream early must not leave the socket paused or the daemon
    // streaming into the void: abort the transfer.
    this.incoming.on('close', () => {
      if (!this.done) this.abort(new Error('stream destroyed by its consumer'));
    });
  }

  /** Whether the daemon has signalled the end of its data. */
  get ended(): boolean {
    return this.eof;
  }

  /** @internal a STREAM packet for this serial arrived. */
  handlePacket(status: number, body: Buffer): void {
    if (this.done) return;
    if (status === MessageStatus.CONTINUE && body.length > 0) {
      // Backpressure: a consumer slower than the daemon pauses the whole socket (libvirt's
      // protocol has no per-stream flow control). Other calls on this connection wait meanwhile.
      if (!this.incoming.push(body)) this.conn.pauseFor(this);
      return;
    }
    if (status === MessageStatus.CONTINUE || status === MessageStatus.OK) {
      if (this.finishing) {
        // The daemon confirms our finish: the stream is complete on both sides.
        this.settle(null);
      } else {
        // End of the daemon's data (it sends an empty CONTINUE). The daemon keeps the stream
        // open until we finish it too, so do that now; `incoming` ends once it is confirmed.
        this.eof = true;
        this.finish().catch(() => undefined); // a failure reaches `incoming` through settle()
      }
      return;
    }
    let err: Error;
    try {
      err = libvirtErrorFrom(readRemoteError(new XdrReader(body)), procName(this.proc));
    } catch (e) {
      err = new ProtocolError('undecodable stream error', { cause: e });
    }
    this.settle(err);
  }

  /** Sends data (split into packets the daemon accepts), waiting when the socket is full. */
  async write(data: Uint8Array): Promise<void> {
    for (let off = 0; off < data.length; off += STREAM_CHUNK_MAX) {
      this.throwIfFailed();
      const chunk = data.subarray(off, Math.min(off + STREAM_CHUNK_MAX, data.length));
      if (!this.conn.sendStreamPacket(this, MessageStatus.CONTINUE, chunk)) await this.conn.waitDrain();
    }
    this.throwIfFailed();
  }

  /**
   * Ends the stream from our side and waits for the daemon's confirmation. For an upload it
   * resolves once the daemon has written everything; downloads call it by themselves at the
   * daemon's end of data. Rejects with the daemon's error if the stream failed.
   */
  finish(timeoutMs = 30_000): Promise<void> {
    if (this.finishPromise) return this.finishPromise;
    if (this.done) return this.failure ? Promise.reject(this.failure) : Promise.resolve();
    this.finishPromise = new Promise<void>((resolve, reject) => {
      const timer = setTimeout(
        () => this.settle(new CallTimeoutError(`${procName(this.proc)} (stream finish)`, timeoutMs)),
        timeoutMs,
      );
      this.finishing = { resolve, reject, timer };
      this.conn.sendStreamPacket(this, MessageStatus.OK, undefined);
    });
    return this.finishPromise;
  }

  /** Aborts the stream: tells the daemon (best effort) and fails local readers and writers. */
  abort(reason: Error = new Error('stream aborted')): void {
    if (this.done) return;
    this.conn.sendStreamPacket(this, MessageStatus.ERROR, undefined);
    this.settle(reason);
  }

  /** @internal fails the stream without telling the daemon (connection lost, call failed). */
  fail(err: Error): void {
    this.settle(err);
  }

  private throwIfFailed(): void {
    if (this.failure) throw this.failure;
  }

  private settle(err: Error | null): void {
    if (this.done) return;
    this.done = true;
    this.failure = err;
    this.conn.releaseStream(this);
    if (this.finishing) {
      clearTimeout(this.finishing.timer);
      if (err) this.finishing.reject(err);
      else this.finishing.resolve();
      this.finishing = null;
    }
    if (err) this.incoming.destroy(err);
    else this.incoming.push(null);
  }
}

const DEFAULT_RECONNECT: Required<ReconnectOptions> = {
  initialDelayMs: 100,
  maxDelayMs: 5000,
  factor: 2,
  maxAttempts: Number.POSITIVE_INFINITY,
};
const DEFAULT_KEEPALIVE: Required<KeepaliveOptions> = { intervalMs: 5000, count: 6 };
const VIR_CONNECT_RO = 1;

/** One RPC connection to libvirtd, with reconnection. See the module comment. */
export class LibvirtConnection extends EventEmitter<ConnectionEvents> {
  /** The hypervisor URI this connection opens. */
  readonly uri: string;
  /** The daemon socket path. */
  readonly socketPath: string;

  private currentState: ConnectionState = 'connecting';
  private started = false;
  private closing = false;
  private socket: net.Socket | null = null;
  /** Incremented for every socket; callbacks of an older socket check it and do nothing. */
  private generation = 0;
  private nextSerial = 1;
  private readonly pending = new Map<number, PendingCall>();
  private readonly streams = new Map<number, StreamChannel>();
  private readonly pausedBy = new Set<StreamChannel>();
  private readonly eventHandlers = new Map<number, Set<EventHandler>>();
  private readonly hooks = new Set<ReconnectHook>();
  private readonly callTimeoutMs: number;
  private readonly connectTimeoutMs: number;
  private readonly openFlags: number;
  private readonly reconnectOpts: Required<ReconnectOptions> | null;
  private readonly keepaliveOpts: Required<KeepaliveOptions> | null;
  private reconnectTimer: NodeJS.Timeout | undefined;
  private reconnectAttempt = 0;
  private keepaliveTimer: NodeJS.Timeout | undefined;
  private lastReceivedAt = 0;

  constructor(options: ConnectionOptions) {
    super();
    this.uri = options.uri;
    this.socketPath = options.socketPath ?? DEFAULT_SOCKET_PATH;
    this.openFlags = options.readOnly ? VIR_CONNECT_RO : 0;
    this.callTimeoutMs = options.callTimeoutMs ?? 30_000;
    this.connectTimeoutMs = options.connectTimeoutMs ?? 10_000;
    const rc = options.reconnect ?? true;
    this.reconnectOpts = rc === false ? null : { ...DEFAULT_RECONNECT, ...(rc === true ? {} : rc) };
    const ka = options.keepalive ?? false;
    this.keepaliveOpts = ka === false ? null : { ...DEFAULT_KEEPALIVE, ...(ka === true ? {} : ka) };
  }

  /** Creates a connection and waits until it is ready. */
  static async connect(options: ConnectionOptions): Promise<LibvirtConnection> {
    const conn = new LibvirtConnection(options);
    await conn.connect();
    return conn;
  }

  /** Current state. */
  get state(): ConnectionState {
    return this.currentState;
  }

  /** Number of calls waiting for their reply. */
  get inFlight(): number {
    return this.pending.size;
  }

  /**
   * Connects and opens the URI (AUTH_LIST, then CONNECT_OPEN). Only the first connection is made
   * here: if it fails, the promise rejects and the connection is `closed` (a wrong socket path or
   * URI should not be retried forever). Once ready, losses are handled by reconnection.
   */
  async connect(): Promise<void> {
    if (this.started) throw new Error('connect() can be called only once per LibvirtConnection');
    this.started = true;
    try {
      await this.establish();
    } catch (e) {
      this.closing = true;
      this.setState('closed');
      throw e;
    }
  }

  /**
   * Resolves when the connection is ready (immediately if it is); rejects when it becomes
   * `closed` or after `timeoutMs`.
   */
  whenReady(timeoutMs = 30_000): Promise<void> {
    if (this.currentState === 'ready') return Promise.resolve();
    if (this.currentState === 'closed') return Promise.reject(new DisconnectedError('connection is closed', 'closed', false));
    return new Promise<void>((resolve, reject) => {
      const onState = (s: ConnectionState): void => {
        if (s === 'ready') done(null);
        else if (s === 'closed') done(new DisconnectedError('connection closed while waiting for it', 'closed', false));
      };
      const timer = setTimeout(
        () => done(new DisconnectedError(`not ready within ${timeoutMs} ms`, this.disconnectedState(), false)),
        timeoutMs,
      );
      const done = (err: Error | null): void => {
        clearTimeout(timer);
        this.off('state', onState);
        if (err) reject(err);
        else resolve();
      };
      this.on('state', onState);
    });
  }

  /**
   * Calls a procedure of the remote program and resolves with the raw reply body. Fails at once
   * with {@link DisconnectedError} when not ready, with a {@link LibvirtError} subclass when the
   * daemon reports an error, and with {@link CallTimeoutError} when no reply comes in time.
   */
  call(proc: number, args?: Uint8Array, options?: CallOptions): Promise<Buffer> {
    if (this.currentState !== 'ready') {
      return Promise.reject(
        new DisconnectedError(`libvirt connection is ${this.currentState}: ${procName(proc)} not sent`, this.disconnectedState(), false),
      );
    }
    return this.send(proc, args, options);
  }

  /**
   * Calls a stream procedure (e.g. STORAGE_VOL_UPLOAD). The stream is registered before the call
   * is sent, so data the daemon sends right after its reply is not lost.
   */
  async openStream(proc: number, args?: Uint8Array, options?: CallOptions): Promise<StreamChannel> {
    if (this.currentState !== 'ready') {
      throw new DisconnectedError(`libvirt connection is ${this.currentState}: ${procName(proc)} not sent`, this.disconnectedState(), false);
    }
    const serial = this.allocSerial();
    const channel = new StreamChannel(this, serial, proc);
    this.streams.set(serial, channel);
    try {
      await this.send(proc, args, options, serial);
    } catch (e) {
      channel.fail(e as Error);
      throw e;
    }
    return channel;
  }

  /** Subscribes to events (MESSAGE) with the given procedure number. Returns the unsubscriber. */
  onEvent(proc: number, handler: EventHandler): () => void {
    let set = this.eventHandlers.get(proc);
    if (!set) {
      set = new Set();
      this.eventHandlers.set(proc, set);
    }
    set.add(handler);
    return () => {
      set.delete(handler);
      // Only drop the map entry if it is still this set (a later subscriber may have made a new one).
      if (set.size === 0 && this.eventHandlers.get(proc) === set) this.eventHandlers.delete(proc);
    };
  }

  /** Registers a hook run after every reconnection (see {@link ReconnectHook}). Returns the remover. */
  addReconnectHook(hook: ReconnectHook): () => void {
    this.hooks.add(hook);
    return () => this.hooks.delete(hook);
  }

  /**
   * Closes the connection for good: sends CONNECT_CLOSE when ready (best effort), then closes the
   * socket. Calls still in flight fail with {@link DisconnectedError}.
   */
  async close(): Promise<void> {
    if (this.currentState === 'closed') return;
    this.closing = true;
    clearTimeout(this.reconnectTimer);
    if (this.currentState === 'ready' && this.socket) {
      try {
        await this.send(Proc.CONNECT_CLOSE, undefined, { timeoutMs: 2000 });
      } catch {
        // Closing anyway: the daemon frees the connection when the socket goes.
      }
    }
    this.dropSocket(new DisconnectedError('connection closed by the client', 'closed', true));
    this.setState('closed');
  }

  // -------------------------------------------------------------------------------------------
  // Connection establishment and loss

  private async establish(): Promise<void> {
    const isReconnect = this.currentState === 'reconnecting';
    const socket = await this.openSocket();
    if (this.closing) {
      // close() was called while the socket was connecting: do not bring it to life.
      socket.destroy();
      throw new DisconnectedError('connection closed by the client', 'closed', false);
    }
    const gen = ++this.generation;
    this.attachSocket(socket, gen);
    const hs: CallOptions = { timeoutMs: this.connectTimeoutMs };
    try {
      // The daemon refuses CONNECT_OPEN from a client that has not asked for the auth list.
      const types = new XdrReader(await this.send(Proc.AUTH_LIST, undefined, hs)).array((r) => r.int());
      if (types.length > 0 && !types.includes(AuthType.NONE)) {
        if (!types.includes(AuthType.POLKIT)) {
          throw new Error(`libvirtd requires an authentication this client does not implement (types ${types.join(',')})`);
        }
        await this.send(Proc.AUTH_POLKIT, undefined, hs);
      }
      const open = new XdrWriter(64)
        .optional(this.uri, (w, v) => w.string(v))
        .uint(this.openFlags)
        .finish();
      await this.send(Proc.CONNECT_OPEN, open, hs);
      if (this.keepaliveOpts) {
        // Asking whether the daemon supports the keepalive program is what switches it on.
        const w = new XdrWriter(4).int(DriverFeature.PROGRAM_KEEPALIVE).finish();
        const supported = new XdrReader(await this.send(Proc.CONNECT_SUPPORTS_FEATURE, w, hs)).int();
        if (supported) this.startKeepalive(gen);
      }
      if (isReconnect) {
        const caller: Caller = (proc, args, options) => this.send(proc, args, options);
        for (const hook of [...this.hooks]) {
          try {
            await hook(caller);
          } catch (e) {
            if (!(e instanceof LibvirtError)) throw e;
            this.notify('hookError', e);
          }
        }
      }
      if (gen !== this.generation || this.closing) {
        throw new DisconnectedError('connection lost during the handshake', this.disconnectedState(), true);
      }
      this.reconnectAttempt = 0;
      this.setState('ready');
    } catch (e) {
      if (gen === this.generation) this.dropSocket(e as Error);
      throw e;
    }
  }

  private openSocket(): Promise<net.Socket> {
    return new Promise((resolve, reject) => {
      const s = net.createConnection(this.socketPath);
      const timer = setTimeout(() => {
        s.destroy();
        reject(new DisconnectedError(`connecting to ${this.socketPath} timed out`, this.disconnectedState(), false));
      }, this.connectTimeoutMs);
      const onError = (e: Error): void => {
        clearTimeout(timer);
        reject(new DisconnectedError(`cannot connect to ${this.socketPath}: ${e.message}`, this.disconnectedState(), false, { cause: e }));
      };
      s.once('error', onError);
      s.once('connect', () => {
        clearTimeout(timer);
        s.off('error', onError);
        resolve(s);
      });
    });
  }

  private attachSocket(socket: net.Socket, gen: number): void {
    this.socket = socket;
    this.lastReceivedAt = Date.now();
    socket.setNoDelay(true);
    const frames = new FrameReader();
    let lastError: Error | undefined;
    socket.on('data', (chunk: Buffer) => {
      if (gen !== this.generation) return;
      this.lastReceivedAt = Date.now();
      let list: Buffer[];
      try {
        list = frames.push(chunk);
      } catch (e) {
        // Framing is lost: nothing after this point can be trusted.
        socket.destroy(e as Error);
        return;
      }
      for (const f of list) {
        if (gen !== this.generation) return;
        this.handleFrame(f);
      }
    });
    socket.on('error', (e) => {
      lastError = e;
    });
    socket.on('close', () => this.onSocketClosed(gen, lastError ?? new Error('libvirtd closed the connection')));
  }

  private onSocketClosed(gen: number, cause: Error): void {
    if (gen !== this.generation) return;
    const wasReady = this.currentState === 'ready';
    this.dropSocket(
      new DisconnectedError(`lost the connection to libvirtd: ${cause.message}`, this.closing ? 'closed' : 'reconnecting', true, { cause }),
    );
    if (!wasReady || this.closing) return; // establish() is in charge, or we are closing
    this.notify('disconnect', cause);
    if (this.reconnectOpts) {
      this.setState('reconnecting');
      this.scheduleReconnect();
    } else {
      this.closing = true;
      this.setState('closed');
    }
  }

  /** Forgets the current socket: fails what is in flight on it and destroys it. */
  private dropSocket(err: Error): void {
    this.generation++;
    this.stopKeepalive();
    const socket = this.socket;
    this.socket = null;
    this.pausedBy.clear();
    socket?.destroy();
    const disconnected =
      err instanceof DisconnectedError
        ? err
        : new DisconnectedError(`libvirt connection failed: ${err.message}`, this.disconnectedState(), true, { cause: err });
    // Calls in flight may or may not have been carried out by the daemon: `sent` says so.
    for (const [serial, p] of this.pending) {
      this.pending.delete(serial);
      clearTimeout(p.timer);
      p.reject(disconnected);
    }
    for (const ch of [...this.streams.values()]) ch.fail(disconnected);
    this.streams.clear();
  }

  private scheduleReconnect(): void {
    const o = this.reconnectOpts;
    if (!o || this.closing) return;
    const attempt = ++this.reconnectAttempt;
    const base = Math.min(o.maxDelayMs, o.initialDelayMs * o.factor ** (attempt - 1));
    const delay = Math.round(base * (0.8 + Math.random() * 0.4));
    this.reconnectTimer = setTimeout(() => {
      this.establish().catch((e: Error) => {
        if (this.closing) return;
        if (attempt >= o.maxAttempts) {
          this.notify('reconnectFailed', e, attempt, -1);
          this.closing = true;
          this.setState('closed');
          return;
        }
        const next = Math.min(o.maxDelayMs, o.initialDelayMs * o.factor ** attempt);
        this.notify('reconnectFailed', e, attempt, next);
        this.scheduleReconnect();
      });
    }, delay);
  }

  private startKeepalive(gen: number): void {
    const o = this.keepaliveOpts;
    if (!o) return;
    this.stopKeepalive();
    let lastPingAt = 0;
    this.keepaliveTimer = setInterval(() => {
      if (gen !== this.generation || !this.socket) return;
      // While a slow download consumer holds the socket paused, silence proves nothing.
      if (this.pausedBy.size > 0) return;
      const now = Date.now();
      const quiet = now - this.lastReceivedAt;
      if (quiet >= o.intervalMs * o.count) {
        this.socket.destroy(new Error(`keepalive: nothing from libvirtd for ${quiet} ms`));
      } else if (quiet >= o.intervalMs && now - lastPingAt >= o.intervalMs) {
        lastPingAt = now;
        this.writeFrame(
          { prog: KEEPALIVE_PROGRAM, vers: KEEPALIVE_VERSION, proc: KeepaliveProc.PING, type: MessageType.MESSAGE, serial: 0, status: MessageStatus.OK },
          undefined,
        );
      }
    }, Math.max(10, Math.floor(o.intervalMs / 4)));
    this.keepaliveTimer.unref();
  }

  private stopKeepalive(): void {
    clearInterval(this.keepaliveTimer);
    this.keepaliveTimer = undefined;
  }

  // -------------------------------------------------------------------------------------------
  // Sending and receiving

  private allocSerial(): number {
    // Serials are uint32 and wrap; skip 0 (used by events) and any still in use.
    do {
      this.nextSerial = (this.nextSerial + 1) >>> 0;
    } while (this.nextSerial === 0 || this.pending.has(this.nextSerial) || this.streams.has(this.nextSerial));
    return this.nextSerial;
  }

  /** Sends a call on the current socket, whatever the state (the handshake needs that). */
  private send(proc: number, args: Uint8Array | undefined, options: CallOptions | undefined, serial = this.allocSerial()): Promise<Buffer> {
    const socket = this.socket;
    if (!socket || socket.destroyed) {
      return Promise.reject(new DisconnectedError(`no connection to libvirtd: ${procName(proc)} not sent`, this.disconnectedState(), false));
    }
    if (args !== undefined && args.length > MESSAGE_MAX - HEADER_BYTES) {
      // The daemon would drop the whole connection for an oversized message; fail this call only.
      return Promise.reject(new RangeError(`${procName(proc)} arguments are ${args.length} bytes, over libvirt's message limit`));
    }
    return new Promise<Buffer>((resolve, reject) => {
      const timeoutMs = options?.timeoutMs ?? this.callTimeoutMs;
      const entry: PendingCall = { proc, resolve, reject, timer: undefined };
      if (timeoutMs > 0) {
        entry.timer = setTimeout(() => {
          // A reply arriving later finds no entry and is dropped.
          this.pending.delete(serial);
          const err = new CallTimeoutError(procName(proc), timeoutMs);
          this.streams.get(serial)?.fail(err);
          reject(err);
        }, timeoutMs);
      }
      this.pending.set(serial, entry);
      this.writeFrame(
        { prog: REMOTE_PROGRAM, vers: REMOTE_PROTOCOL_VERSION, proc, type: MessageType.CALL, serial, status: MessageStatus.OK },
        args,
      );
    });
  }

  private writeFrame(h: MessageHeader, body: Uint8Array | undefined): boolean {
    const socket = this.socket;
    if (!socket || socket.destroyed) return true;
    return socket.write(encodeFrame(h, body));
  }

  private handleFrame(frame: Buffer): void {
    let header: MessageHeader;
    try {
      header = decodeHeader(new XdrReader(frame));
    } catch (e) {
      this.socket?.destroy(new ProtocolError('undecodable message header', { cause: e }));
      return;
    }
    const body = frame.subarray(HEADER_BYTES);
    if (header.prog === KEEPALIVE_PROGRAM) {
      if (header.type === MessageType.MESSAGE && header.proc === KeepaliveProc.PING) {
        this.writeFrame({ ...header, proc: KeepaliveProc.PONG, serial: 0, status: MessageStatus.OK }, undefined);
      }
      return; // PONG: receiving it already refreshed lastReceivedAt
    }
    if (header.prog !== REMOTE_PROGRAM) return; // another program (qemu, lxc): not ours
    switch (header.type) {
      case MessageType.REPLY:
      case MessageType.REPLY_WITH_FDS:
        this.handleReply(header, body);
        return;
      case MessageType.MESSAGE:
        this.dispatchEvent(header, body);
        return;
      case MessageType.STREAM:
        this.streams.get(header.serial)?.handlePacket(header.status, body);
        return;
      default:
        return; // STREAM_HOLE and others: only sent to clients that ask for sparse streams
    }
  }

  private handleReply(header: MessageHeader, body: Buffer): void {
    const p = this.pending.get(header.serial);
    if (!p) return; // its call timed out already
    this.pending.delete(header.serial);
    clearTimeout(p.timer);
    if (header.status === MessageStatus.OK) {
      p.resolve(body);
      return;
    }
    let err: Error;
    try {
      err = libvirtErrorFrom(readRemoteError(new XdrReader(body)), procName(p.proc));
    } catch (e) {
      err = new ProtocolError(`undecodable error reply to ${procName(p.proc)}`, { cause: e });
    }
    this.streams.get(header.serial)?.fail(err);
    p.reject(err);
  }

  private dispatchEvent(header: MessageHeader, body: Buffer): void {
    const set = this.eventHandlers.get(header.proc);
    if (!set) return;
    // Handlers run synchronously in arrival order. An event may therefore be delivered before
    // the reply of the call that caused it is seen by its caller: subscribe before acting.
    for (const h of [...set]) {
      try {
        h(body, header);
      } catch (e) {
        this.reportListenerError(e);
      }
    }
  }

  // -------------------------------------------------------------------------------------------
  // Stream support (used by StreamChannel)

  /** @internal */
  sendStreamPacket(ch: StreamChannel, status: number, body: Uint8Array | undefined): boolean {
    return this.writeFrame(
      { prog: REMOTE_PROGRAM, vers: REMOTE_PROTOCOL_VERSION, proc: ch.proc, type: MessageType.STREAM, serial: ch.serial, status },
      body,
    );
  }

  /** @internal resolves when the socket can take more data; rejects if it is lost first. */
  waitDrain(): Promise<void> {
    const socket = this.socket;
    if (!socket || socket.destroyed) {
      return Promise.reject(new DisconnectedError('no connection to libvirtd', this.disconnectedState(), true));
    }
    return new Promise((resolve, reject) => {
      const onDrain = (): void => {
        socket.off('close', onClose);
        resolve();
      };
      const onClose = (): void => {
        socket.off('drain', onDrain);
        reject(new DisconnectedError('lost the connection to libvirtd during a stream', this.disconnectedState(), true));
      };
      socket.once('drain', onDrain);
      socket.once('close', onClose);
    });
  }

  /** @internal */
  pauseFor(ch: StreamChannel): void {
    this.pausedBy.add(ch);
    this.socket?.pause();
  }

  /** @internal */
  resumeFor(ch: StreamChannel): void {
    if (this.pausedBy.delete(ch) && this.pausedBy.size === 0) this.socket?.resume();
  }

  /** @internal */
  releaseStream(ch: StreamChannel): void {
    if (this.streams.get(ch.serial) === ch) this.streams.delete(ch.serial);
    this.resumeFor(ch);
  }

  // -------------------------------------------------------------------------------------------

  private disconnectedState(): DisconnectedState {
    return this.currentState === 'ready' ? 'reconnecting' : this.currentState;
  }

  private setState(next: ConnectionState): void {
    const prev = this.currentState;
    if (prev === next) return;
    this.currentState = next;
    this.notify('state', next, prev);
  }

  /** Emits without letting a throwing listener break the connection's own bookkeeping. */
  private notify<K extends keyof ConnectionEvents>(event: K, ...args: ConnectionEvents[K]): void {
    try {
      (this.emit as (e: K, ...a: ConnectionEvents[K]) => boolean)(event, ...args);
    } catch (e) {
      this.reportListenerError(e);
    }
  }

  /**
   * @internal A listener threw: tell `listenerError` listeners, or warn when there are none (never
   * swallow). Used by the API layer for the handlers it calls itself.
   */
  reportListenerError(e: unknown): void {
    if (this.listenerCount('listenerError') > 0) {
      try {
        this.emit('listenerError', e);
        return;
      } catch {
        // fall through to the warning
      }
    }
    process.emitWarning(`a libvirt connection listener threw: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`);
  }
}
