/**
 * The agent's side of the Connect stream (AGENT-LINK.md, "The session"): one mTLS stream at a
 * time, Hello first, heartbeats at the granted interval, lease grants fed to the {@link Lease},
 * commands handed to the dispatcher and their results sent back, domain events, and fence
 * reports of finished records after Hello and after each fence, each record once per session
 * (deleted once a grant answers a later heartbeat). Failures of the fence store (an unreadable
 * data dir) are logged, never thrown: the link and the lease must outlive a broken disk. A lost
 * stream is opened again after a jittered exponential backoff (reset after a healthy session).
 * With a data dir, the client certificate is renewed before it expires (renew.ts); the link then
 * ends its session and opens the next at once with the new certificate: the lease, which lives
 * across sessions, never notices.
 */
import { X509Certificate } from 'node:crypto';
import { credentials, type ClientDuplexStream } from '@grpc/grpc-js';
import { AgentLinkClient, type AgentMessage, type OrchestratorMessage } from '@kloudak/proto/agent';
import type { Logger } from 'pino';
import type { Lease } from '../fence/lease.js';
import type { FenceStore } from '../fence/records.js';
import type { PoolLeaseKeeper } from '../storage/pool-lease.js';
import type { CommandDispatcher } from '../runner/commands.js';
import type { HeartbeatSample, HostTelemetry } from '../telemetry/inventory.js';
import { AGENT_VERSION } from '../version.js';
import { commandFromProto, fenceReportToProto, goodbyeToProto, heartbeatToProto, helloToProto, resultMessage } from './convert.js';
import { channelOptions } from './enroll.js';
import type { Identity } from './identity.js';
import { DEFAULT_RENEW_FRACTION, RenewalScheduler, renewIdentity } from './renew.js';

/** Backoff between sessions: `initialMs * 2^n`, capped at `maxMs`, with full ±50 % jitter. */
export interface BackoffOptions {
  initialMs: number;
  maxMs: number;
}

/** The delay before reconnection attempt `attempt` (0-based). `random` in [0, 1). */
export function backoffDelay(attempt: number, o: BackoffOptions, random: number = Math.random()): number {
  const base = Math.min(o.maxMs, o.initialMs * 2 ** Math.min(attempt, 30));
  return Math.round(base * (0.5 + random));
}

/** Dependencies of {@link AgentLink}. */
export interface LinkDeps {
  identity: Identity;
  /** `host:port` of the orchestrator (default: the one enrolled with). */
  orchestrator: string;
  tlsServerName?: string;
  /** Heartbeat period until HelloAck grants one. */
  heartbeatMs: number;
  telemetry: Pick<HostTelemetry, 'capacity' | 'bridges' | 'inventory' | 'heartbeat' | 'libvirtConnected'>;
  /** Pools for Hello (the heartbeat sample carries them afterwards). */
  pools: () => Promise<Awaited<ReturnType<HostTelemetry['heartbeat']>>['pools']>;
  dispatcher: Pick<CommandDispatcher, 'dispatch'>;
  lease: Lease;
  fenceStore: FenceStore;
  log: Logger;
  startedAt: Date;
  backoff?: BackoffOptions;
  /** What the pool lease files of the other hosts said when last read, sent with each heartbeat. */
  poolLeases?: Pick<PoolLeaseKeeper, 'peerLeases'>;
  /** Waits for libvirt before gathering Hello (an empty inventory would read as "nothing exists"). */
  waitForLibvirt: () => Promise<void>;
  /** Where the identity lives: set, the certificate is renewed before it expires. */
  dataDir?: string;
  /** Renew once less than this fraction of the certificate's validity is left (default a third). */
  renewFraction?: number;
}

/** What a test or the daemon can observe of the link. */
export interface LinkStatus {
  connected: boolean;
  sessions: number;
  hostId: string;
  heartbeatIntervalMs: number;
  lastSequence: bigint;
  /** Certificate renewals done by this process. */
  renewals: number;
  /** PEM of the client certificate in use. */
  certificatePem: string;
}

type Call = ClientDuplexStream<AgentMessage, OrchestratorMessage>;

interface Session {
  call: Call;
  /** Hello written: other messages may follow. */
  open: boolean;
  acked: boolean;
  granted: boolean;
  seq: bigint;
  intervalMs: number;
  timer: NodeJS.Timeout | null;
  heartbeatBusy: boolean;
  /** Fence records reported in this session, deleted once a grant answers heartbeat ≥ `afterSeq`. */
  reported: Array<{ file: string; afterSeq: bigint }>;
  /** Every record file reported in this session: none is reported twice on one session. */
  reportedFiles: Set<string>;
  /** Called when the orchestrator acknowledges this session's Goodbye. */
  onGoodbyeAck: (() => void) | null;
  ended: boolean;
}

/** See the module comment. */
export class AgentLink {
  private client: AgentLinkClient;
  private identity: Identity;
  private readonly renewal: RenewalScheduler | null;
  private renewals = 0;
  /** The next session opens without the backoff (the certificate was just renewed). */
  private reconnectNow = false;
  private readonly backoff: BackoffOptions;
  private session: Session | null = null;
  private stopped = false;
  private loop: Promise<void> | null = null;
  private wake: (() => void) | null = null;
  private sessions = 0;
  private pendingFence = 0;
  /** The usage sample in progress, if any, and the host usage of the last one that finished. */
  private sampling: Promise<HeartbeatSample> | undefined;
  private lastUsage: HeartbeatSample['usage'] | undefined;
  private readonly log: Logger;

  constructor(private readonly d: LinkDeps) {
    this.backoff = d.backoff ?? { initialMs: 500, maxMs: 30_000 };
    this.log = d.log.child({ component: 'link', host_id: d.identity.hostId });
    this.identity = d.identity;
    this.client = this.clientFor(d.identity);
    const dataDir = d.dataDir;
    this.renewal =
      dataDir === undefined
        ? null
        : new RenewalScheduler({
            fraction: d.renewFraction ?? DEFAULT_RENEW_FRACTION,
            certPem: () => this.identity.clientCertPem,
            renew: () => this.renewCertificate(dataDir),
            log: this.log.child({ component: 'renewal' }),
          });
  }

  private clientFor(id: Identity): AgentLinkClient {
    const creds = credentials.createSsl(Buffer.from(id.caCertPem), Buffer.from(id.clientKeyPem), Buffer.from(id.clientCertPem));
    return new AgentLinkClient(this.d.orchestrator, creds, channelOptions(this.d.tlsServerName));
  }

  /** The identity in use (it changes when the certificate is renewed). */
  currentIdentity(): Identity {
    return this.identity;
  }

  /**
   * Renews the client certificate now (the scheduler calls this when it is due): new key, RPC,
   * checks, key pair replaced on disk; then the session is ended and the next one opens at once
   * with the new certificate. Throws when the renewal failed (the old identity stays in use).
   */
  async renewCertificate(dataDir: string): Promise<void> {
    const next = await renewIdentity(this.client, this.identity, dataDir);
    this.identity = next;
    this.client = this.clientFor(next);
    this.renewals++;
    this.log.info({ not_after: new Date(new X509Certificate(next.clientCertPem).validTo).toISOString() }, 'client certificate renewed; reconnecting with it');
    const s = this.session;
    if (s && !s.ended) {
      this.reconnectNow = true;
      s.call.cancel();
    }
  }

  /** The link's state now. */
  status(): LinkStatus {
    const s = this.session;
    return {
      connected: s !== null && s.acked && !s.ended,
      sessions: this.sessions,
      hostId: this.d.identity.hostId,
      heartbeatIntervalMs: s?.intervalMs ?? this.d.heartbeatMs,
      lastSequence: s?.seq ?? 0n,
      renewals: this.renewals,
      certificatePem: this.identity.clientCertPem,
    };
  }

  /** Starts the connect loop. */
  start(): void {
    if (this.loop) return;
    this.loop = this.run();
    this.renewal?.start();
  }

  /** Sends a message on the open session (after Hello); dropped when there is none. Returns whether it was sent. */
  send(msg: AgentMessage): boolean {
    const s = this.session;
    if (!s || !s.open || s.ended) return false;
    s.call.write(msg);
    return true;
  }

  /** Ends the current session (it is opened again after the backoff), e.g. when the lease ran out on a stuck stream. */
  dropSession(reason: string): void {
    const s = this.session;
    if (!s || s.ended) return;
    this.log.warn({ reason }, 'ending the session');
    s.call.cancel();
  }

  /**
   * A clean stop leaves VMs running: say so on the accepted session (proto Goodbye), stop its
   * heartbeats, and wait up to `timeoutMs` (the caller gives what is left of the lease) for the
   * orchestrator to record it. True once acknowledged: the orchestrator will not restart this
   * host's VMs elsewhere when its lease runs out. False without a session, on timeout, or when the
   * session ends first: the orchestrator may then evacuate the host, and the caller must fence.
   * Heartbeats stop so that the lease does end: an orchestrator that never answers a Goodbye
   * (older, or stuck) must not keep the agent waiting.
   */
  async goodbye(runningVmIds: readonly string[], reason: string, timeoutMs: number): Promise<boolean> {
    const s = this.session;
    if (!s || !s.acked || s.ended) return false;
    if (s.timer) clearInterval(s.timer);
    s.timer = null;
    let timer: NodeJS.Timeout | undefined;
    const acked = await Promise.race([
      new Promise<boolean>((resolve) => {
        s.onGoodbyeAck = () => resolve(true);
        s.call.write(goodbyeToProto(runningVmIds, reason));
      }),
      new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(false), timeoutMs))),
      this.sessionEnded(s).then(() => false),
    ]);
    clearTimeout(timer);
    s.onGoodbyeAck = null;
    this.log.info({ running_vms: runningVmIds.length, acknowledged: acked }, 'Goodbye sent');
    return acked;
  }

  /** Ends the session and the loop; closes the channel. */
  async stop(): Promise<void> {
    this.stopped = true;
    await this.renewal?.stop();
    const s = this.session;
    if (s && !s.ended) {
      // A half-close says "no more messages"; cancel follows in case the server does not end its side.
      s.call.end();
      await Promise.race([new Promise((r) => setTimeout(r, 1000)), this.sessionEnded(s)]);
      if (!s.ended) s.call.cancel();
    }
    this.wake?.();
    await this.loop;
    this.client.close();
  }

  private sessionEnded(s: Session): Promise<void> {
    return new Promise((resolve) => {
      const t = setInterval(() => {
        if (s.ended) {
          clearInterval(t);
          resolve();
        }
      }, 20);
    });
  }

  private async run(): Promise<void> {
    let attempt = 0;
    while (!this.stopped) {
      let healthy = false;
      try {
        healthy = await this.runSession();
      } catch (err) {
        this.log.warn({ err }, 'session failed');
      }
      if (this.stopped) break;
      if (this.reconnectNow) {
        // A renewed certificate: straight to the next session, no pause.
        this.reconnectNow = false;
        attempt = 0;
        continue;
      }
      if (healthy) attempt = 0;
      const delay = backoffDelay(attempt++, this.backoff);
      this.log.info({ delay_ms: delay, attempt }, 'reconnecting after a pause');
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, delay);
        this.wake = () => {
          clearTimeout(t);
          resolve();
        };
      });
      this.wake = null;
    }
  }

  /** One session, from Connect to the end of the stream. True when it was healthy (accepted and granted). */
  private async runSession(): Promise<boolean> {
    await this.d.waitForLibvirt();
    if (this.stopped) return false;
    // Facts first: Hello must follow Connect within 10 s, and inventory can take a while.
    const [capacity, bridges, pools, inventory] = await Promise.all([
      this.d.telemetry.capacity(),
      this.d.telemetry.bridges(),
      this.d.pools(),
      this.d.telemetry.inventory(),
    ]);
    if (this.stopped) return false;
    const client = this.client;
    const call = client.connect();
    const s: Session = {
      call,
      open: false,
      acked: false,
      granted: false,
      seq: 0n,
      intervalMs: this.d.heartbeatMs,
      timer: null,
      heartbeatBusy: false,
      reported: [],
      reportedFiles: new Set(),
      onGoodbyeAck: null,
      ended: false,
    };
    this.session = s;
    this.sessions++;
    this.d.lease.newSession();
    return new Promise<boolean>((resolve) => {
      const finish = (why: string, err?: Error): void => {
        if (s.ended) return;
        s.ended = true;
        if (s.timer) clearInterval(s.timer);
        if (err) this.log.warn({ reason: why, err: { message: err.message, code: (err as { code?: number }).code } }, 'session ended');
        else this.log.info({ reason: why }, 'session ended');
        // The channel of a certificate since renewed serves nothing more.
        if (client !== this.client) client.close();
        resolve(s.acked && s.granted);
      };
      call.on('data', (m: OrchestratorMessage) => this.onMessage(s, m));
      call.on('error', (err: Error) => finish('error', err));
      call.on('end', () => finish('end'));
      call.on('close', () => finish('close'));
      call.write(
        helloToProto({
          hostId: this.d.identity.hostId,
          hostName: this.d.identity.hostName,
          agentVersion: AGENT_VERSION,
          agentStartedAt: this.d.startedAt,
          capacity,
          bridges,
          pools,
          inventory,
        }),
      );
      this.d.lease.noteSent(0n);
      s.open = true;
      this.log.info({ domains: inventory.domains.length, pools: pools.length, bridges: bridges.length }, 'Hello sent');
    });
  }

  private onMessage(s: Session, m: OrchestratorMessage): void {
    if (s.ended || !m.body) return;
    switch (m.body.$case) {
      case 'helloAck': {
        const ack = m.body.helloAck;
        if (ack.hostId !== this.d.identity.hostId) {
          this.log.error({ acked_host_id: ack.hostId }, 'HelloAck names another host; ending the session');
          s.call.cancel();
          return;
        }
        s.acked = true;
        if (ack.heartbeatIntervalMs > 0) s.intervalMs = ack.heartbeatIntervalMs;
        if (ack.lease) this.d.lease.grant(0n, ack.lease.durationMs);
        this.log.info({ heartbeat_interval_ms: s.intervalMs, lease_ms: ack.lease?.durationMs }, 'session accepted');
        void this.reportFences(s);
        s.timer = setInterval(() => void this.heartbeat(s), s.intervalMs);
        void this.heartbeat(s);
        return;
      }
      case 'leaseGrant': {
        const g = m.body.leaseGrant;
        if (this.d.lease.grant(g.heartbeatSequence, g.durationMs)) s.granted = true;
        else this.log.warn({ heartbeat_sequence: g.heartbeatSequence.toString() }, 'grant for a heartbeat this session never sent; ignored');
        void this.acknowledgeFences(s, g.heartbeatSequence);
        return;
      }
      case 'goodbyeAck':
        s.onGoodbyeAck?.();
        return;
      case 'command': {
        const cmd = commandFromProto(m.body.command);
        void this.d.dispatcher.dispatch(cmd).then((outcome) => {
          // The result goes on the session that is open now; if this one ended, the orchestrator
          // sends the command again on the next and gets the remembered result.
          if (!this.send(resultMessage(outcome))) this.log.info({ command_id: outcome.commandId }, 'result not sent: no session; kept for a re-sent command');
        });
        return;
      }
    }
  }

  private async heartbeat(s: Session): Promise<void> {
    if (s.ended || s.heartbeatBusy) return;
    s.heartbeatBusy = true;
    try {
      // The heartbeat holds the lease; its figures are best effort. A libvirtd that does not answer
      // (hung, restarting slowly) must never delay it past the lease, or the host fences VMs for
      // nothing: after half an interval it goes without them, and VMs read as "unknown".
      const budgetMs = Math.max(20, Math.floor(s.intervalMs / 2));
      let timer: NodeJS.Timeout | undefined;
      const late = new Promise<undefined>((resolve) => (timer = setTimeout(() => resolve(undefined), budgetMs)));
      let sample: HeartbeatSample | undefined;
      try {
        sample = await Promise.race([this.sampleOnce(), late]);
        if (!sample) this.log.debug({ budget_ms: budgetMs }, 'usage sample late; heartbeat sent without it');
      } catch (err) {
        this.log.warn({ err }, 'usage sample failed');
      } finally {
        clearTimeout(timer);
      }
      sample ??= { usage: this.lastUsage ?? { cpuPercent: 0, memoryUsedBytes: 0n, memoryTotalBytes: 0n }, pools: [], vms: [], libvirtConnected: false };
      if (s.ended) return;
      s.seq += 1n;
      this.d.lease.noteSent(s.seq);
      s.call.write(heartbeatToProto(s.seq, new Date(), sample, this.pendingFence, this.d.poolLeases?.peerLeases() ?? []));
    } finally {
      s.heartbeatBusy = false;
    }
  }

  /** One sample at a time: heartbeats that went on without a slow one share it, never pile up calls. */
  private sampleOnce(): Promise<HeartbeatSample> {
    this.sampling ??= this.d.telemetry
      .heartbeat()
      .then((sample) => {
        this.lastUsage = sample.usage;
        return sample;
      })
      .finally(() => {
        this.sampling = undefined;
      });
    return this.sampling;
  }

  /** Sends the finished fence records this session has not reported yet. Never throws. */
  private async reportFences(s: Session): Promise<void> {
    let records;
    try {
      records = await this.d.fenceStore.finished();
    } catch (err) {
      this.log.error({ err, store: this.d.fenceStore.dir }, 'cannot read the fence records; not reported in this session');
      return;
    }
    this.pendingFence = records.length;
    // No await below: concurrent calls (Hello's and a fence's) each see the other's files in the set.
    for (const r of records) {
      if (s.ended) return;
      if (s.reportedFiles.has(r.file)) continue;
      s.reportedFiles.add(r.file);
      s.call.write(fenceReportToProto(r.record));
      // The next heartbeat is sent after this report; a grant for it proves the report was processed.
      s.reported.push({ file: r.file, afterSeq: s.seq + 1n });
      this.log.info({ record: r.file, domains: r.record.domains.length }, 'fence report sent');
    }
  }

  /** Deletes the records whose report a grant has acknowledged. Never throws. */
  private async acknowledgeFences(s: Session, seq: bigint): Promise<void> {
    const done = s.reported.filter((r) => seq >= r.afterSeq);
    if (done.length === 0) return;
    s.reported = s.reported.filter((r) => seq < r.afterSeq);
    for (const r of done) {
      try {
        await this.d.fenceStore.delete(r.file);
        this.log.info({ record: r.file }, 'fence report acknowledged; record deleted');
      } catch (err) {
        // Kept: it is reported again on the next session (never twice on this one).
        this.log.error({ err, record: r.file }, 'fence report acknowledged, but its record cannot be deleted');
      }
    }
    await this.refreshPendingFences();
  }

  /** Refreshes the count of fence records reported in heartbeats. Never throws. */
  async refreshPendingFences(): Promise<void> {
    try {
      this.pendingFence = await this.d.fenceStore.count();
    } catch (err) {
      this.log.error({ err, store: this.d.fenceStore.dir }, 'cannot count the fence records');
    }
  }

  /**
   * A fence wrote a record: count it, and report it now if a session is open and accepted (the
   * lease may have come back while the fence was finishing); otherwise the next Hello reports it.
   */
  async fenceRecorded(): Promise<void> {
    await this.refreshPendingFences();
    const s = this.session;
    if (s && s.acked && !s.ended) await this.reportFences(s);
  }
}
