// A light simulated agent for tests and benchmarks: it enrolls with a join token (pinning the
// orchestrator's CA by the token's fingerprint, as AGENT-LINK.md says), connects with mutual TLS,
// says Hello, sends heartbeats at a given rate and answers commands with a caller's handler. It
// speaks the real protocol over real sockets; only the host behind it is imaginary.
import { createHash, generateKeyPairSync, X509Certificate } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { connect as tlsConnect, type PeerCertificate, type DetailedPeerCertificate } from 'node:tls';
import * as grpc from '@grpc/grpc-js';
import * as pb from '@kloudak/proto/agent';

/** What enrollment gives an agent; a real agent keeps it in its data dir. */
export interface SimIdentity {
  hostId: string;
  hostName: string;
  /** PKCS#8 PEM of the agent's private key (generated locally, never sent). */
  keyPem: string;
  certPem: string;
  caPem: string;
  caFingerprint: string;
  certificateExpiresAt: Date;
}

/** Raised when enrollment's CA pinning fails: the server is not the one the token was made for. */
export class PinningError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'PinningError';
  }
}

function splitAddress(address: string): { host: string; port: number } {
  const m = /^\[?([^\]]+?)\]?:(\d+)$/.exec(address);
  if (!m) throw new Error(`address must be host:port, got ${address}`);
  return { host: m[1] as string, port: Number(m[2]) };
}

function toPem(der: Buffer): string {
  return `-----BEGIN CERTIFICATE-----\n${der.toString('base64').replace(/(.{64})/g, '$1\n').replace(/\n$/, '')}\n-----END CERTIFICATE-----\n`;
}

/**
 * Open one raw TLS connection without verifying anything, take the server's chain, and return the
 * CA certificate (PEM) whose DER has SHA-256 = `fingerprint` and which issued the server
 * certificate. Throws PinningError when there is none.
 */
export async function fetchPinnedCa(address: string, fingerprint: string, timeoutMs = 10_000): Promise<string> {
  const { host, port } = splitAddress(address);
  const chain = await new Promise<DetailedPeerCertificate>((resolve, reject) => {
    const sock = tlsConnect({ host, port, rejectUnauthorized: false, ALPNProtocols: ['h2'], servername: /^[\d.:]+$/.test(host) ? undefined : host });
    const timer = setTimeout(() => sock.destroy(new Error(`TLS handshake with ${address} timed out`)), timeoutMs);
    sock.once('secureConnect', () => {
      clearTimeout(timer);
      const c = sock.getPeerCertificate(true);
      sock.end();
      resolve(c);
    });
    sock.once('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
  });
  if (!chain.raw) throw new PinningError(`${address} presented no certificate`);
  const leaf = new X509Certificate(chain.raw);
  const seen = new Set<string>();
  for (let c: PeerCertificate | undefined = chain; c?.raw; c = (c as DetailedPeerCertificate).issuerCertificate) {
    const fp = createHash('sha256').update(c.raw).digest('hex');
    if (seen.has(fp)) break; // a self-signed root points at itself
    seen.add(fp);
    if (fp !== fingerprint.toLowerCase()) continue;
    const ca = new X509Certificate(c.raw);
    if (leaf.checkIssued(ca) && leaf.verify(ca.publicKey)) return toPem(c.raw);
  }
  throw new PinningError(`${address} is not the orchestrator this join token was made for (no CA with fingerprint ${fingerprint.slice(0, 16)}… issued its certificate)`);
}

function client(address: string, creds: grpc.ChannelCredentials): pb.AgentLinkClient {
  // A subchannel of its own: a benchmark runs many agents with different certificates in one process.
  return new pb.AgentLinkClient(address, creds, { 'grpc.use_local_subchannel_pool': 1 });
}

/** Enroll like a real agent's first start: pin the CA, make a key pair, call Enroll. */
export async function enrollSimAgent(opts: { address: string; joinToken: string; hostName: string; agentVersion?: string }): Promise<SimIdentity> {
  const m = /^kjt1\.[0-9a-f]{32}\.[A-Za-z0-9_-]{43}\.([0-9a-f]{64})$/.exec(opts.joinToken);
  if (!m) throw new Error('not a join token');
  const fingerprint = m[1] as string;
  const caPem = await fetchPinnedCa(opts.address, fingerprint);
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const keyPem = privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
  const publicKeyPem = publicKey.export({ type: 'spki', format: 'pem' }).toString();
  const c = client(opts.address, grpc.credentials.createSsl(Buffer.from(caPem)));
  try {
    const res = await new Promise<pb.EnrollResponse>((resolve, reject) =>
      c.enroll(
        { joinToken: opts.joinToken, hostName: opts.hostName, publicKeyPem, agentVersion: opts.agentVersion ?? 'sim-0.1.0', hostId: '' },
        new grpc.Metadata(),
        { deadline: Date.now() + 15_000 },
        (err, r) => (err ? reject(err) : resolve(r)),
      ),
    );
    return {
      hostId: res.hostId,
      hostName: opts.hostName,
      keyPem,
      certPem: res.clientCertificatePem,
      caPem,
      caFingerprint: fingerprint,
      certificateExpiresAt: res.certificateExpiresAt ?? new Date(0),
    };
  } finally {
    c.close();
  }
}

/** What a command handler answers: a CommandResult without its id (the agent fills that in). */
export type SimCommandAnswer = Partial<Omit<pb.CommandResult, 'commandId'>>;

/** Options of {@link SimAgent}. */
export interface SimAgentOptions {
  /** `host:port` of the orchestrator's agent port. */
  address: string;
  identity: SimIdentity;
  /** Heartbeat period; by default the one HelloAck gives (1 s until then). */
  heartbeatMs?: number;
  capacity?: { cpuCount: number; memoryBytes: bigint; diskBytes: bigint };
  /** Usage to report in each heartbeat. */
  usage?: () => { cpuPercent: number; memoryUsedBytes: bigint; memoryTotalBytes: bigint };
  /** Peers' pool lease files to report in each heartbeat (default none). */
  peerLeases?: () => pb.PeerLease[];
  /** Answers commands; by default every command succeeds at once. */
  onCommand?: (command: pb.Command) => Promise<SimCommandAnswer> | SimCommandAnswer;
  /** Reconnect after the stream ends (default true), after this delay (default 200 ms). */
  reconnect?: boolean;
  reconnectDelayMs?: number;
  /** Changes to the Hello (tests of a wrong Hello). */
  hello?: Partial<pb.Hello>;
  /** Do not send Hello at all (tests of the Hello timeout). */
  skipHello?: boolean;
  /** Use these credentials instead of the identity's (tests of foreign certificates). */
  credentials?: grpc.ChannelCredentials;
}

/** Counters of a simulated agent. */
export interface SimStats {
  sessions: number;
  helloAcks: number;
  leaseGrants: number;
  commandsReceived: number;
  /** Commands actually run (a repeated id joins or reuses the first run). */
  commandsRun: number;
  heartbeatsSent: number;
}

/**
 * A simulated agent. Events: 'helloAck' (HelloAck), 'lease' (LeaseGrant), 'command' (Command),
 * 'end' (grpc.StatusObject of a session that ended).
 */
export class SimAgent extends EventEmitter {
  readonly stats: SimStats = { sessions: 0, helloAcks: 0, leaseGrants: 0, commandsReceived: 0, commandsRun: 0, heartbeatsSent: 0 };
  /** Status of the last session that ended. */
  lastStatus: grpc.StatusObject | null = null;
  private client: pb.AgentLinkClient;
  private readonly creds: grpc.ChannelCredentials;
  private call: grpc.ClientDuplexStream<pb.AgentMessage, pb.OrchestratorMessage> | null = null;
  private hbTimer: NodeJS.Timeout | null = null;
  private reconnectTimer: NodeJS.Timeout | null = null;
  private seq = 0n;
  private stopped = false;
  private readonly runs = new Map<string, Promise<SimCommandAnswer>>();
  private readonly startedAt = new Date();

  constructor(private readonly opts: SimAgentOptions) {
    super();
    const id = opts.identity;
    this.creds = opts.credentials ?? grpc.credentials.createSsl(Buffer.from(id.caPem), Buffer.from(id.keyPem), Buffer.from(id.certPem));
    this.client = client(opts.address, this.creds);
  }

  /**
   * Dial another orchestrator from now on (a session that moves between instances): the current
   * stream is cut, and the agent reconnects to `address` (if reconnecting is allowed). It stays the
   * same agent: commands it ran are still answered from memory under their ids.
   */
  moveTo(address: string): void {
    const old = this.client;
    const call = this.call;
    this.client = client(address, this.creds);
    if (call) {
      call.once('status', () => old.close());
      call.cancel();
    } else old.close();
  }

  /** Connect; resolves at the first HelloAck, rejects if the first session ends before it. */
  start(): Promise<pb.HelloAck> {
    this.stopped = false;
    return new Promise((resolve, reject) => {
      const ok = (ack: pb.HelloAck) => {
        this.off('end', ko);
        resolve(ack);
      };
      const ko = (s: grpc.StatusObject) => {
        this.off('helloAck', ok);
        reject(Object.assign(new Error(`session ended before HelloAck: ${grpc.status[s.code]} ${s.details}`), { code: s.code, details: s.details }));
      };
      this.once('helloAck', ok);
      this.once('end', ko);
      this.open();
    });
  }

  /** Cut the current stream (as a network failure would); the agent reconnects if allowed. */
  cut(): void {
    this.call?.cancel();
  }

  /** Stop heartbeats, end the stream, close the client. */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.reconnectTimer) clearTimeout(this.reconnectTimer);
    this.stopHeartbeats();
    const call = this.call;
    this.call = null;
    if (call) {
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, 2000);
        call.once('status', () => {
          clearTimeout(t);
          resolve();
        });
        call.cancel();
      });
    }
    this.client.close();
  }

  /** Send a message on the current stream (tests that send fence reports or events). */
  send(msg: pb.AgentMessage): boolean {
    if (!this.call) return false;
    return this.call.write(msg);
  }

  /** Send one heartbeat now; returns its sequence number (sequences restart at 1 in each session). */
  heartbeat(): bigint {
    const u = this.opts.usage?.() ?? { cpuPercent: 12.5, memoryUsedBytes: 2n << 30n, memoryTotalBytes: 16n << 30n };
    this.seq += 1n;
    if (
      this.send({
        body: {
          $case: 'heartbeat',
          heartbeat: { sequence: this.seq, sentAt: new Date(), usage: u, pools: [], vms: [], libvirtConnected: true, pendingFenceReports: 0, peerLeases: this.opts.peerLeases?.() ?? [] },
        },
      })
    ) {
      this.stats.heartbeatsSent += 1;
    }
    return this.seq;
  }

  /**
   * Say Goodbye (a clean stop leaving `runningVmIds` running) on the current stream; resolves true
   * at the orchestrator's GoodbyeAck, false if none comes within `timeoutMs`.
   */
  goodbye(runningVmIds: string[], reason = 'SIGTERM', timeoutMs = 5000): Promise<boolean> {
    return new Promise((resolve) => {
      const t = setTimeout(() => {
        this.off('goodbyeAck', ok);
        resolve(false);
      }, timeoutMs);
      const ok = () => {
        clearTimeout(t);
        resolve(true);
      };
      this.once('goodbyeAck', ok);
      if (!this.send({ body: { $case: 'goodbye', goodbye: { runningVmIds, reason } } })) {
        clearTimeout(t);
        this.off('goodbyeAck', ok);
        resolve(false);
      }
    });
  }

  /** Stop reading the stream (a broken agent): what the orchestrator writes piles up on its side. */
  stopReading(): void {
    this.call?.pause();
  }

  private open(): void {
    if (this.stopped) return;
    const call = this.client.connect();
    this.call = call;
    this.seq = 0n;
    this.stats.sessions += 1;
    call.on('data', (m: pb.OrchestratorMessage) => this.onMessage(call, m));
    call.on('error', () => undefined); // the status event says it all
    call.on('status', (s: grpc.StatusObject) => {
      if (this.call === call) {
        this.call = null;
        this.stopHeartbeats();
      }
      this.lastStatus = s;
      this.emit('end', s);
      if (!this.stopped && this.opts.reconnect !== false) {
        this.reconnectTimer = setTimeout(() => this.open(), this.opts.reconnectDelayMs ?? 200);
      }
    });
    if (this.opts.skipHello) return;
    const id = this.opts.identity;
    call.write({
      body: {
        $case: 'hello',
        hello: {
          hostId: id.hostId,
          hostName: id.hostName,
          agentVersion: 'sim-0.1.0',
          capacity: this.opts.capacity ?? { cpuCount: 8, memoryBytes: 32n << 30n, diskBytes: 500n << 30n },
          bridges: [{ name: 'br-vm', kind: pb.BridgeKind.BRIDGE_KIND_OVS, mtu: 1500, up: true }],
          pools: [],
          inventory: { domains: [], volumes: [], ovsPorts: [] },
          agentStartedAt: this.startedAt,
          ...this.opts.hello,
        },
      },
    });
    // Until HelloAck tells the interval, the agent's own default applies.
    this.startHeartbeats(this.opts.heartbeatMs ?? 1000);
  }

  private onMessage(call: grpc.ClientDuplexStream<pb.AgentMessage, pb.OrchestratorMessage>, m: pb.OrchestratorMessage): void {
    switch (m.body?.$case) {
      case 'helloAck':
        this.stats.helloAcks += 1;
        this.startHeartbeats(this.opts.heartbeatMs ?? m.body.helloAck.heartbeatIntervalMs);
        this.emit('helloAck', m.body.helloAck);
        return;
      case 'goodbyeAck':
        this.emit('goodbyeAck');
        return;
      case 'leaseGrant':
        this.stats.leaseGrants += 1;
        this.emit('lease', m.body.leaseGrant);
        return;
      case 'command': {
        const cmd = m.body.command;
        this.stats.commandsReceived += 1;
        this.emit('command', cmd);
        // One run per command id: a repeated command joins the run in progress or gets its result.
        let run = this.runs.get(cmd.commandId);
        if (!run) {
          this.stats.commandsRun += 1;
          run = Promise.resolve()
            .then(() => (this.opts.onCommand ? this.opts.onCommand(cmd) : { ok: true }))
            .catch((err: unknown) => ({ ok: false, error: { code: pb.ErrorCode.ERROR_CODE_INTERNAL, message: String((err as Error)?.message ?? err) } }));
          this.runs.set(cmd.commandId, run);
          if (this.runs.size > 1000) this.runs.delete(this.runs.keys().next().value as string);
        }
        void run.then((a) => {
          // Answer on the stream the command came on; if it is gone, the orchestrator resends.
          if (this.call !== call) return;
          call.write({
            body: {
              $case: 'commandResult',
              commandResult: { commandId: cmd.commandId, ok: a.ok ?? true, error: a.error, completedAt: a.completedAt ?? new Date(), payload: a.payload },
            },
          });
        });
        return;
      }
      default:
        return;
    }
  }

  private startHeartbeats(ms: number): void {
    this.stopHeartbeats();
    this.hbTimer = setInterval(() => this.heartbeat(), ms);
  }

  private stopHeartbeats(): void {
    if (this.hbTimer) clearInterval(this.hbTimer);
    this.hbTimer = null;
  }
}
