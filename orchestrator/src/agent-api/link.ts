// The orchestrator's side of the agent link (proto/AGENT-LINK.md): the AgentLink gRPC service
// over TLS, Connect (Hello, leases, one session per host), liveness, usage and the command channel.
// Beside it: tls.ts (credentials), enrollment.ts (Enroll), session.ts (one stream),
// heartbeat-writer.ts (batched lastHeartbeatAt writes).
import * as grpc from '@grpc/grpc-js';
import { KloudakError, UnauthenticatedError, UnavailableError, ValidationError, type Logger } from '@kloudak/common';
import type { Database } from '@kloudak/prisma';
import {
  AgentLinkService,
  type AgentMessage,
  type EnrollRequest,
  type EnrollResponse,
  type Heartbeat,
  type RenewCertificateRequest,
  type RenewCertificateResponse,
} from '@kloudak/proto/agent';
import { monotonicNow, type Clock } from '../clock.js';
import type { AgentCommand, CommandResult, DomainLifecycleEvent, HostInventory } from '../domain/agent.js';
import { serialStanding, type HostCertificates } from '../domain/certificates.js';
import { appendEventsNow } from '../store/outbox.js';
import { retirePreviousCertificate } from '../store/host-certs.js';
import { forgetGoodbye, hostIdentity, reconcileHello, recordGoodbye, storeFenceReport, vmsFencedOnHost, vmsOnHost, writeHostState, type HostStateGuard } from '../store/agent-hosts.js';
import { claimSession, releaseSession } from '../store/instances.js';
import { InstanceRegistration } from '../ha/instance.js';
import { SessionDirectory } from './directory.js';
import type { CertificateAuthority } from './ca.js';
import { CommandChannel } from './channel.js';
import {
  commandResultFromProto,
  domainEventFromProto,
  fenceReportFromProto,
  heartbeatFromProto,
  helloFromProto,
  leaseGrantToProto,
} from './convert.js';
import { enroll, enrollmentError } from './enrollment.js';
import { toGrpcError } from '../grpc/status.js';
import { HeartbeatWriter, LAST_HEARTBEAT_WRITE_MS } from './heartbeat-writer.js';
import { Liveness, type LiveState, type Transition } from './liveness.js';
import { CertificateRenewal } from './renewal.js';
import { PoolLeaseView } from './pool-lease-view.js';
import { Session, type Call, type SessionLimits } from './session.js';
import { OptionalClientCertCredentials } from './tls.js';
import { UsageRecorder, type CurrentUsage } from './usage.js';

/** How long an agent has to send Hello after opening Connect. */
export const HELLO_TIMEOUT_MS = 10_000;

/** After a failed host state write, how long until it is written again (by the liveness tick). */
export const STATE_RETRY_MS = 1000;
export { LAST_HEARTBEAT_WRITE_MS };

/** Settings of the agent link. */
export interface AgentLinkOptions {
  host: string;
  /** 0 picks a free port. */
  port: number;
  heartbeatIntervalMs: number;
  leaseMs: number;
  downMarginMs: number;
  /** Defaults to {@link HELLO_TIMEOUT_MS}; shorter in tests. */
  helloTimeoutMs?: number;
  /** How often liveness is evaluated; defaults to a quarter heartbeat interval (50 ms – 1 s). */
  tickMs?: number;
  /** What one agent may send and leave unread; defaults to {@link DEFAULT_SESSION_LIMITS}. */
  limits?: SessionLimits;
  /** How long a certificate replaced by a renewal stays accepted at most; default {@link CERT_RENEW_GRACE_MS}. */
  certRenewGraceMs?: number;
  /** How long a registration of the link's own instance lasts when the deps give none (default 45 s). */
  instanceTtlMs?: number;
  /** How often the session directory is read from the database (default 2 s). */
  directoryRefreshMs?: number;
}

/** Default of {@link AgentLinkOptions.certRenewGraceMs}: one hour. */
export const CERT_RENEW_GRACE_MS = 3_600_000;

/** The limits of a session when the options give none (the config's defaults). */
export const DEFAULT_SESSION_LIMITS: SessionLimits = { messagesPerSecond: 200, burst: 2000, maxMessageBytes: 8 * 1024 * 1024, maxBufferedWrites: 1024 };

/** Dependencies of the agent link. */
export interface AgentLinkDeps {
  db: Database;
  ca: CertificateAuthority;
  clock: Clock;
  log: Logger;
  /**
   * This process's registration (several orchestrators: ha/README.md). Absent, the link registers
   * an instance of its own and ends it when it closes.
   */
  instance?: InstanceRegistration;
}

/**
 * What failover (ha/failover.ts) hooks into the link: a host's down episode began (its state and
 * evacuation row are committed), and a host said Hello (its domains are known; commands for it
 * are held until `hostReturned` ends, so it can clean the host first with `send`, which writes
 * on that session only).
 */
export interface HostLifecycleHooks {
  hostDown(hostId: string, evacuation: { id: string; episode: number }): void;
  hostReturned(
    hostId: string,
    inventory: HostInventory,
    send: (command: AgentCommand, deadline: Date) => Promise<CommandResult>,
  ): Promise<void>;
  /**
   * A domain of a VM placed on this host changed outside of what a task asked (its lifecycle
   * event, already checked to be about a VM of this host): its state follows (ha/failover.ts).
   */
  domainChanged(hostId: string, event: DomainLifecycleEvent): Promise<void>;
}

/** What the REST API shows of a host's link. */
export interface HostLinkStatus {
  /** A session is open on this orchestrator or, as far as it knows, on another live instance. */
  connected: boolean;
  /** Liveness as this orchestrator sees it. */
  state: LiveState;
  lastHeartbeatAt: Date | null;
  usage: CurrentUsage | null;
}

/** The running agent link: the gRPC server, its sessions, liveness, usage and the command channel. */
export class AgentLink {
  /** Send commands to hosts. */
  readonly channel: CommandChannel;
  readonly liveness: Liveness;
  readonly usage: UsageRecorder;
  /** This process's registration: owner of the sessions it holds. */
  readonly instance: InstanceRegistration;
  /** Sessions open on every live instance. */
  readonly directory: SessionDirectory;
  private readonly ownInstance: boolean;
  /** What agents read of each other's pool lease files (the second signal of a host's death). */
  readonly poolLeases: PoolLeaseView;
  private readonly sessions = new Map<string, Session>();
  private readonly inventories = new Map<string, HostInventory>();
  private readonly heartbeats: HeartbeatWriter;
  /** Per-host chain of database writes, so state changes are written in the order they happened. */
  private readonly writes = new Map<string, Promise<void>>();
  /**
   * Hosts whose last state write failed (a database error or timeout), and when to write their
   * state again. The liveness in memory has moved on (a heartbeat does not make a second `up`
   * transition), so without this a failed `suspect → up` write would leave the row `suspect`
   * while the host heartbeats, until its next real change.
   */
  private readonly unsynced = new Map<string, number>();
  private readonly log: Logger;
  private timers: NodeJS.Timeout[] = [];
  private readonly unsubscribes: (() => void)[] = [];
  private closing: Promise<void> | undefined;

  /** What one agent may send and leave unread (the options', or the defaults). */
  private readonly limits: SessionLimits;
  /** RenewCertificate. */
  private readonly renewal: CertificateRenewal;
  private hooks: HostLifecycleHooks | undefined;

  private constructor(
    private readonly deps: AgentLinkDeps,
    private readonly opts: AgentLinkOptions,
    private readonly server: grpc.Server,
    private readonly creds: OptionalClientCertCredentials,
    /** The port actually bound. */
    readonly port: number,
  ) {
    this.log = deps.log.child({ component: 'agent-link' });
    this.limits = opts.limits ?? DEFAULT_SESSION_LIMITS;
    this.channel = new CommandChannel(deps.clock, this.log);
    this.liveness = new Liveness(deps.clock, { heartbeatIntervalMs: opts.heartbeatIntervalMs, downMarginMs: opts.downMarginMs });
    this.usage = new UsageRecorder(deps.db.client, deps.clock, this.log);
    this.poolLeases = new PoolLeaseView(deps.clock);
    this.heartbeats = new HeartbeatWriter(deps.db.client, this.log);
    this.renewal = new CertificateRenewal({ ...deps, log: this.log, graceMs: opts.certRenewGraceMs ?? CERT_RENEW_GRACE_MS });
    this.ownInstance = deps.instance === undefined;
    this.instance = deps.instance ?? new InstanceRegistration({ db: deps.db.client, log: deps.log }, { ttlMs: opts.instanceTtlMs ?? 45_000 });
    this.directory = new SessionDirectory({ db: deps.db.client, log: this.log });
  }

  /** Bind the agent port and serve. */
  static async start(deps: AgentLinkDeps, opts: AgentLinkOptions): Promise<AgentLink> {
    if (opts.leaseMs <= opts.heartbeatIntervalMs) {
      throw new KloudakError('validation_failed', `agent lease (${opts.leaseMs} ms) must be longer than the heartbeat interval (${opts.heartbeatIntervalMs} ms)`);
    }
    const server = new grpc.Server({
      // Agents may ping to keep NAT state; do not answer a ping every 10 s with GOAWAY.
      'grpc.http2.min_ping_interval_without_data_ms': 10_000,
      // HTTP/2 pings tell a stream whose agent stopped answering (a frozen process, a host that
      // lost power without a FIN, a path that drops everything) from a quiet one. One ping per
      // lease, answered within the down margin: such a stream ends about when its host is
      // declared down (lease + margin after its last grant), so the host stops showing
      // `connected` with it, rather than up to 40 s later.
      'grpc.keepalive_time_ms': Math.max(1000, opts.leaseMs),
      'grpc.keepalive_timeout_ms': Math.max(1000, opts.downMarginMs),
      // One agent's message may not be larger than this (the Hello's inventory is the largest).
      'grpc.max_receive_message_length': (opts.limits ?? DEFAULT_SESSION_LIMITS).maxMessageBytes,
    });
    const creds = new OptionalClientCertCredentials(deps.ca.caCertPem, deps.ca.serverKeyPair());
    const address = opts.host.includes(':') ? `[${opts.host}]:${opts.port}` : `${opts.host}:${opts.port}`;
    const port = await new Promise<number>((resolve, reject) =>
      server.bindAsync(address, creds, (err, p) => (err ? reject(new KloudakError('unavailable', `cannot listen on ${address} for agents: ${err.message}`, { cause: err })) : resolve(p))),
    );
    const link = new AgentLink(deps, opts, server, creds, port);
    if (link.ownInstance) await link.instance.start();
    // An instance that could not renew its registration may not grant leases any more: its
    // agents are sent away, to reconnect to an instance that can (or here once it can again).
    link.unsubscribes.push(link.instance.onLapse(() => link.endAllSessions(grpc.status.UNAVAILABLE, 'this orchestrator lost its database; reconnect')));
    server.addService(AgentLinkService, {
      enroll: (call: grpc.ServerUnaryCall<EnrollRequest, EnrollResponse>, cb: grpc.sendUnaryData<EnrollResponse>) => {
        const onReenrolled = (hostId: string) => link.hostRevoked(hostId, 'the host enrolled again');
        enroll({ db: deps.db, ca: deps.ca, clock: deps.clock, log: link.log, onReenrolled }, call.request).then(
          (r) => cb(null, r),
          (err: unknown) => cb(enrollmentError(link.log, err, call.request)),
        );
      },
      connect: (call: Call) => link.connect(call),
      renewCertificate: (call: grpc.ServerUnaryCall<RenewCertificateRequest, RenewCertificateResponse>, cb: grpc.sendUnaryData<RenewCertificateResponse>) =>
        link.renewal.handle(call, cb),
    });
    // Hosts a previous run (another instance id) left up are its orphans: the leader marks them
    // down once the leases that run could have granted surely ended (ha/orphans.ts).
    await link.directory.refresh();
    link.timers.push(setInterval(() => void link.directory.refresh().then(() => link.endStaleSessions()), opts.directoryRefreshMs ?? 2000));
    const tick = opts.tickMs ?? Math.min(1000, Math.max(50, Math.floor(opts.heartbeatIntervalMs / 4)));
    link.timers.push(setInterval(() => link.tick(), tick));
    link.timers.push(setInterval(() => void link.usage.flushDue(), 10_000));
    link.timers.push(setInterval(() => void link.heartbeats.flush(), 1000));
    link.timers.push(setInterval(() => void link.renewServerCertificate(), 12 * 3600_000));
    for (const t of link.timers) t.unref();
    link.log.info({ port, host: opts.host, ca_fingerprint: deps.ca.fingerprint }, 'agent link listening');
    return link;
  }

  /** Failover's hooks (set once by the composition root, right after start). */
  setHooks(hooks: HostLifecycleHooks): void {
    this.hooks = hooks;
  }

  /** Evaluate liveness now (also called by the timer). */
  tick(): Transition[] {
    const ts = this.liveness.tick();
    for (const t of ts) this.applyTransition(t);
    this.resync(ts);
    return ts;
  }

  /** Write again the current state of hosts whose last state write failed (none just written). */
  private resync(written: readonly Transition[]): void {
    if (this.unsynced.size === 0) return;
    const now = monotonicNow(this.deps.clock);
    for (const [hostId, due] of this.unsynced) {
      if (due > now || this.writes.has(hostId)) continue;
      this.unsynced.delete(hostId);
      const state = this.liveness.state(hostId);
      // A host forgotten meanwhile (deleted, or its session moved) is the new owner's to write.
      if (state === 'unknown' || written.some((t) => t.hostId === hostId)) continue;
      this.log.info({ host_id: hostId, state }, 'host state written again after a failed write');
      this.applyTransition({ hostId, from: state, to: state, at: this.deps.clock.now() });
    }
  }

  /** Wait until every queued database write of the link is done (tests, shutdown). */
  async settled(): Promise<void> {
    await this.heartbeats.flush();
    while (this.writes.size > 0) await Promise.all([...this.writes.values()]);
  }

  /** The link's view of a host for the REST API. */
  status(hostId: string): HostLinkStatus {
    const at = this.liveness.lastHeartbeatAt(hostId);
    const s = this.sessions.get(hostId);
    const elsewhere = this.directory.holder(hostId);
    return {
      connected: (s !== undefined && s.hello !== null) || (elsewhere !== undefined && elsewhere.instanceId !== this.instance.id),
      state: this.liveness.state(hostId),
      lastHeartbeatAt: at === undefined ? null : new Date(at),
      usage: this.usage.latest(hostId) ?? null,
    };
  }

  /** The inventory the host reported in its last Hello. */
  inventory(hostId: string): HostInventory | undefined {
    return this.inventories.get(hostId);
  }

  /** Number of open sessions that said Hello. */
  sessionCount(): number {
    return [...this.sessions.values()].filter((s) => s.hello !== null).length;
  }

  /**
   * The leader's verdict on a host whose owner vanished (ha/orphans.ts): write it down, through
   * the same path as the owner's own liveness changes, only if it is still orphaned and up or suspect.
   */
  markOrphanDown(hostId: string, ownerInstanceId: string | null): void {
    this.applyTransition({ hostId, from: 'up', to: 'down', at: this.deps.clock.now() }, { orphanOf: ownerInstanceId });
  }

  /** A host was deleted: end its session with PERMISSION_DENIED and forget it. */
  hostDeleted(hostId: string): void {
    this.sessions.get(hostId)?.end(grpc.status.PERMISSION_DENIED, 'the host was deleted');
    this.sessions.delete(hostId);
    this.liveness.forget(hostId);
    this.poolLeases.forget(hostId);
    this.usage.forget(hostId);
    this.inventories.delete(hostId);
    this.directory.forget(hostId);
    this.renewal.forget(hostId);
  }

  /**
   * A host's certificates were revoked (re-key) or replaced (re-enrollment): its session ends at
   * once with UNAUTHENTICATED. The host is not forgotten: it goes suspect and down like any host
   * whose agent stopped, until an agent with a valid certificate says Hello. With `serials`, only
   * a session opened with one of them ends (another instance's event may arrive after the host
   * reconnected here with its new certificate).
   */
  hostRevoked(hostId: string, why = 'the host\'s certificate was revoked', serials?: readonly string[]): void {
    const s = this.sessions.get(hostId);
    if (s && (serials === undefined || serials.includes(s.serial))) {
      this.log.warn({ host_id: hostId, session_id: s.id, why }, 'session ended: certificate revoked');
      s.end(grpc.status.UNAUTHENTICATED, `${why}; the host must re-enroll`);
      this.sessions.delete(hostId);
      this.channel.detach(hostId, s.writer);
    }
    this.renewal.forget(hostId);
  }

  /** End every session, stop the server, flush usage. Idempotent. */
  close(graceMs = 5000): Promise<void> {
    return (this.closing ??= (async () => {
      for (const t of this.timers) clearInterval(t);
      for (const u of this.unsubscribes) u();
      this.channel.close();
      // Long-lived streams never end by themselves: end them so tryShutdown can finish; the
      // agents reconnect (to this orchestrator after a restart, or to another instance).
      this.endAllSessions(grpc.status.UNAVAILABLE, 'the orchestrator is shutting down');
      await new Promise<void>((resolve) => {
        const force = setTimeout(() => {
          this.server.forceShutdown();
          resolve();
        }, graceMs);
        this.server.tryShutdown(() => {
          clearTimeout(force);
          resolve();
        });
      });
      await this.usage.flushDue(true);
      await this.settled();
      // No lease is granted any more: expiring the registration starts the leader's clocks now.
      if (this.ownInstance) await this.instance.close();
      this.log.info({}, 'agent link stopped');
    })());
  }

  // ---------- Connect ----------

  private connect(call: Call): void {
    const peer = call.getAuthContext()?.sslPeerCertificate;
    let hostId: string;
    let serial: string;
    try {
      if (!peer?.raw) throw new UnauthenticatedError('a client certificate signed by this orchestrator is required');
      ({ hostId, serial } = this.deps.ca.verifyClient(peer.raw));
    } catch (err) {
      const reason = err instanceof KloudakError ? err.message : 'bad client certificate';
      this.log.warn({ peer: call.getPeer(), reason }, 'connection refused');
      call.emit('error', { code: grpc.status.UNAUTHENTICATED, details: reason, metadata: new grpc.Metadata() });
      return;
    }
    const session = new Session(hostId, call, this.limits, this.deps.clock.now());
    session.serial = serial;
    const log = this.log.child({ host_id: hostId, session_id: session.id });
    let chain: Promise<void> = Promise.resolve();
    const helloTimer = setTimeout(() => {
      if (session.hello === null) {
        log.warn({}, 'no Hello in time');
        session.end(grpc.status.INVALID_ARGUMENT, `Hello must be the first message, within ${this.opts.helloTimeoutMs ?? HELLO_TIMEOUT_MS} ms`);
      }
    }, this.opts.helloTimeoutMs ?? HELLO_TIMEOUT_MS);
    const identity = hostIdentity(this.deps.db.client, hostId);
    // Awaited by the Hello; if none comes, a failed lookup must not become an unhandled rejection.
    identity.catch(() => undefined);
    // Messages are handled one after the other, in stream order: a FenceReport is stored before
    // the grant of any later heartbeat is sent, which is what lets the agent delete its record.
    call.on('data', (msg: AgentMessage) => {
      // Counted as it arrives, before it queues behind the messages being handled: a flood is
      // cut off at once rather than piling up in the chain.
      if (!session.ended && !session.admit(this.deps.clock.now())) {
        log.warn({ limit_per_second: this.limits.messagesPerSecond }, 'agent sends too many messages: session ended');
        session.end(grpc.status.RESOURCE_EXHAUSTED, 'too many messages on this stream; reconnect later');
        return;
      }
      // A heartbeat is answered at once, ahead of messages still waiting for the database (a
      // domain event's write during a PostgreSQL stall must not starve the host of its lease and
      // make it fence healthy VMs). Not while a fence report is being stored: the agent deletes
      // its fence record once a later heartbeat is granted, so that grant must follow the store.
      if (msg.body?.$case === 'heartbeat' && session.hello !== null && session.fenceReportsInFlight === 0) {
        if (!session.ended) this.heartbeat(session, msg.body.heartbeat);
        return;
      }
      const fence = msg.body?.$case === 'fenceReport';
      if (fence) session.fenceReportsInFlight += 1;
      chain = chain.then(async () => {
        if (session.ended) return;
        try {
          await this.handle(session, msg, identity, serial, log);
        } catch (err) {
          const e = err instanceof KloudakError ? err : new KloudakError('internal', 'internal error', { cause: err });
          if (e.code === 'internal') log.error({ err }, 'session failed');
          const g = toGrpcError(e);
          session.end(g.code, g.details);
        } finally {
          if (fence) session.fenceReportsInFlight -= 1;
        }
      });
    });
    const finished = (why: string) => {
      clearTimeout(helloTimer);
      session.ended = true;
      if (this.sessions.get(hostId) === session) {
        this.sessions.delete(hostId);
        log.info({ why }, 'session closed');
        const epoch = session.epoch;
        if (epoch !== null) {
          this.directory.ownClosed(hostId, epoch);
          this.queueWrite(hostId, () => releaseSession(this.deps.db.client, hostId, this.instance.id, epoch));
        }
      }
      this.channel.detach(hostId, session.writer);
    };
    call.on('end', () => {
      finished('agent ended the stream');
      session.end(grpc.status.OK, 'bye');
    });
    call.on('cancelled', () => finished('cancelled'));
    call.on('error', () => finished('stream error'));
    call.on('close', () => finished('closed'));
  }

  private async handle(
    s: Session,
    msg: AgentMessage,
    identity: Promise<({ name: string } & HostCertificates) | null>,
    serial: string,
    log: Logger,
  ): Promise<void> {
    const body = msg.body;
    if (s.hello === null) {
      if (body?.$case !== 'hello') throw new ValidationError('the first message must be Hello');
      const host = await identity;
      if (!host) throw new KloudakError('forbidden', 'this host is not (or no longer) enrolled');
      // Only the host's current certificate, or the one its last renewal replaced (within the
      // grace), is accepted: a re-keyed, re-enrolled or older one is refused on every Connect.
      const standing = serialStanding(host, serial, this.deps.clock.now());
      if (standing === 'refused') throw new UnauthenticatedError('this client certificate was revoked or replaced; the host must re-enroll');
      const hello = helloFromProto(body.hello);
      if (hello.hostId !== s.hostId) throw new ValidationError('Hello.host_id does not match the client certificate');
      if (hello.hostName !== host.name) throw new ValidationError(`Hello.host_name must be '${host.name}', the enrolled name`);
      const now = new Date(this.deps.clock.now());
      if (!(await reconcileHello(this.deps.db.client, hello, now))) throw new KloudakError('forbidden', 'this host is not (or no longer) enrolled');
      // The agent uses its renewed certificate: the one it replaced is accepted no longer.
      if (standing === 'current' && host.prevCertSerial !== null) await retirePreviousCertificate(this.deps.db.client, s.hostId, serial);
      if (!this.instance.valid()) throw new UnavailableError('this orchestrator cannot reach its database now; reconnect');
      // Committed before the first grant: from now on this instance judges the host's liveness,
      // and an instance that held an older session stops (its writes are guarded by ownership).
      const epoch = await claimSession(this.deps.db.client, s.hostId, this.instance.id);
      if (epoch === null) throw new KloudakError('forbidden', 'this host is not (or no longer) enrolled');
      if (s.ended) {
        this.queueWrite(s.hostId, () => releaseSession(this.deps.db.client, s.hostId, this.instance.id, epoch));
        return;
      }
      s.epoch = epoch;
      this.directory.ownOpened(s.hostId, { instanceId: this.instance.id, subject: this.instance.subject, epoch });
      s.hello = hello;
      this.inventories.set(s.hostId, hello.inventory);
      const older = this.sessions.get(s.hostId);
      this.sessions.set(s.hostId, s);
      if (older && older !== s) {
        log.info({ replaced_session: older.id }, 'newer session replaces the older one');
        older.end(grpc.status.ABORTED, 'replaced by a newer session');
        this.channel.detach(s.hostId, older.writer);
      }
      // Written even when this process already saw the host up: the row may say otherwise (another
      // instance, or the leader, marked it down meanwhile); no event when it already says up.
      const from = this.liveness.state(s.hostId);
      this.applyTransition(this.liveness.alive(s.hostId) ?? { hostId: s.hostId, from, to: 'up', at: now.getTime() });
      s.send({
        body: {
          $case: 'helloAck',
          helloAck: { hostId: s.hostId, heartbeatIntervalMs: this.opts.heartbeatIntervalMs, lease: leaseGrantToProto(0n, this.opts.leaseMs, now) },
        },
      });
      this.liveness.granted(s.hostId, this.opts.leaseMs);
      log.info({ agent_version: hello.agentVersion, domains: hello.inventory.domains.length }, 'session open');
      this.attachAfterCleanUp(s, hello.inventory, log);
      return;
    }
    switch (body?.$case) {
      case 'hello':
        throw new ValidationError('Hello was already sent on this stream');
      case 'heartbeat':
        this.heartbeat(s, body.heartbeat);
        return;
      case 'commandResult':
        this.channel.deliver(s.hostId, commandResultFromProto(body.commandResult, new Date(this.deps.clock.now())));
        return;
      case 'domainEvent': {
        const e = domainEventFromProto(body.domainEvent);
        if (!(await vmsOnHost(this.deps.db.client, s.hostId, [e.vmId])).has(e.vmId.toLowerCase())) {
          log.warn({ vm_id: e.vmId.slice(0, 64), event: e.event }, 'domain event about a VM that is not on this host: ignored');
          return;
        }
        log.debug({ vm_id: e.vmId || undefined, event: e.event }, 'domain event');
        // An infrastructure event (the VM's owners see its state changes through its tasks).
        await appendEventsNow(this.deps.db.client, [
          {
            workspaceId: null,
            entity: 'vm',
            entityId: e.vmId,
            event: 'domain',
            state: e.event,
            data: { hostId: s.hostId, domainName: e.domainName, detail: e.detail, occurredAt: e.occurredAt?.toISOString() ?? null },
          },
        ]);
        // Followed only within the lease this process granted: past it the agent has fenced, or is
        // fencing, and a domain it destroyed is no guest's doing. A restart queued for it would
        // also keep the host's evacuation from moving the VM (a VM with a task is skipped).
        if ((this.liveness.leaseLeftMs(s.hostId) ?? 0) > 0) await this.hooks?.domainChanged(s.hostId, e);
        return;
      }
      case 'fenceReport': {
        const now = new Date(this.deps.clock.now());
        const reported = fenceReportFromProto(body.fenceReport, now);
        // The report is stored (the host did fence: its lease ran out), with only the domains of
        // VMs placed on this host or moved off it by its evacuation; what it claims of other
        // hosts' VMs is dropped, never evidence.
        const own = await vmsFencedOnHost(this.deps.db.client, s.hostId, reported.domains.map((d) => d.vmId));
        const f = { ...reported, domains: reported.domains.filter((d) => own.has(d.vmId.toLowerCase())) };
        if (f.domains.length < reported.domains.length) {
          log.warn({ refused: reported.domains.length - f.domains.length }, 'fence report names VMs that are not on this host: those dropped');
        }
        const id = await storeFenceReport(this.deps.db.client, s.hostId, s.hello.hostName, f, now);
        log.warn({ fence_report_id: id, reason: f.reason, domains: f.domains.length }, 'agent fenced itself');
        return;
      }
      case 'goodbye': {
        // A clean stop that leaves VMs running (proto Goodbye). Acknowledged only once recorded:
        // without the ack the agent leaves its fence guard armed, because this host would then be
        // evacuated when its lease runs out.
        // Only within the lease this process granted, checked again once written: past it the
        // agent may have fenced already (it waits for the answer until its lease ends, then
        // fences), and a record would hold a restart of VMs that are gone.
        const g = body.goodbye;
        if (s.epoch === null) return;
        const session = { instanceId: this.instance.id, epoch: s.epoch };
        const inLease = () => (this.liveness.leaseLeftMs(s.hostId) ?? 0) > 0;
        if (!inLease()) {
          log.warn({}, 'Goodbye after the lease granted to the host ended: not recorded, not acknowledged (the agent fences)');
          return;
        }
        const reason = g.reason.slice(0, 200);
        const at = new Date(this.deps.clock.now());
        const r = await recordGoodbye(this.deps.db.client, s.hostId, session, g.runningVmIds.slice(0, 100_000), reason, at);
        if (!r) {
          log.warn({}, 'Goodbye on a session that is no longer the host\'s: not recorded, not acknowledged');
          return;
        }
        if (!inLease()) {
          await forgetGoodbye(this.deps.db.client, s.hostId, session, at);
          log.warn({}, 'Goodbye recorded after the lease granted to the host ended: taken back, not acknowledged (the agent fences)');
          return;
        }
        if (r.vmIds.length < g.runningVmIds.length) log.warn({ refused: g.runningVmIds.length - r.vmIds.length }, 'Goodbye names VMs that are not on this host: those dropped');
        if (r.vmIds.length > 0) log.warn({ running_vms: r.vmIds.length, reason }, 'agent stopping and leaving its VMs running: they are not restarted elsewhere until it is back or an admin confirms the host is off');
        else log.info({ reason }, 'agent stopping; it leaves no VM running');
        s.send({ body: { $case: 'goodbyeAck', goodbyeAck: {} } });
        return;
      }
      default:
        // An empty message or a kind from a newer agent: ignored, the stream stays up.
        log.debug({}, 'message without a known body ignored');
    }
  }

  /**
   * Release commands to a session once failover has cleaned its host (domains of VMs that now run
   * elsewhere destroyed there). Not awaited by the message chain: the clean-up's own results
   * arrive on that chain. A clean-up that fails ends the session (the agent reconnects and it is
   * tried again): commands must never reach a host that may still hold a VM placed elsewhere.
   */
  private attachAfterCleanUp(s: Session, inventory: HostInventory, log: Logger): void {
    const hooks = this.hooks;
    if (!hooks) {
      this.channel.attach(s.hostId, s.writer);
      return;
    }
    const send = (command: AgentCommand, deadline: Date) => this.channel.sendOnSession(s.hostId, s.writer, command, { deadline });
    hooks.hostReturned(s.hostId, inventory, send).then(
      () => {
        if (!s.ended && this.sessions.get(s.hostId) === s) this.channel.attach(s.hostId, s.writer);
      },
      (err: unknown) => {
        log.error({ err }, 'cleaning the returning host failed: session ended');
        s.end(grpc.status.UNAVAILABLE, 'the orchestrator could not reconcile this host; reconnect');
      },
    );
  }

  /**
   * A heartbeat: liveness, usage and the lease grant, all in memory (database writes are queued,
   * never awaited), so a grant never waits behind a database call.
   */
  private heartbeat(s: Session, msg: Heartbeat): void {
    const hb = heartbeatFromProto(msg);
    const t = this.liveness.alive(s.hostId);
    if (t) this.applyTransition(t);
    this.usage.record(s.hostId, hb.usage, hb.libvirtConnected);
    this.poolLeases.record(s.hostId, hb.peerLeases);
    const now = this.deps.clock.now();
    // The agent measures its lease from the send time of the heartbeat, so a late grant only
    // shortens the lease it holds.
    // No grant past this instance's registration: once it has expired, the leader may count the
    // host's last lease as ended (ha/instance.ts).
    if (this.instance.valid() && s.send({ body: { $case: 'leaseGrant', leaseGrant: leaseGrantToProto(hb.sequence, this.opts.leaseMs, new Date(now)) } })) {
      this.liveness.granted(s.hostId, this.opts.leaseMs);
    }
    this.heartbeats.beat(s.hostId, now);
  }

  /**
   * Write a liveness change and publish it. By default only while this instance owns the host: a
   * host deleted meanwhile, or claimed by a newer session on another instance, is forgotten here
   * (and a session of it still open here is stale: it ends). The leader's orphan verdicts pass
   * their own guard.
   */
  private applyTransition(t: Transition, guard: HostStateGuard = { owner: this.instance.id }): void {
    const at = new Date(t.at);
    const orphan = 'orphanOf' in guard;
    const last = orphan ? undefined : this.liveness.lastHeartbeatAt(t.hostId);
    const grant = orphan ? undefined : this.liveness.lastGrant(t.hostId);
    // The host-down evidence (an orphan's verdict: the leader saw its owner vanish, no grant known here).
    const evidence =
      t.to === 'down'
        ? {
            lastHeartbeatAt: last === undefined ? null : new Date(last).toISOString(),
            lastLeaseGrantedAt: grant ? new Date(grant.at).toISOString() : null,
            leaseMs: grant?.durationMs ?? this.opts.leaseMs,
            downMarginMs: this.opts.downMarginMs,
            fencedBy: grant ? new Date(grant.at + grant.durationMs + this.opts.downMarginMs).toISOString() : null,
            // What its peers last read of its pool lease files, taken now (the views move on).
            poolLeases: this.poolLeases.evidence(t.hostId),
          }
        : undefined;
    if (!orphan) this.heartbeats.writtenWithState(t.hostId, this.deps.clock.now());
    this.queueWrite(t.hostId, async () => {
      let written: Awaited<ReturnType<typeof writeHostState>>;
      try {
        written = await writeHostState(this.deps.db.client, t.hostId, t.to, last === undefined ? undefined : new Date(last), { from: t.from, at, ...(evidence ? { evidence } : {}) }, guard);
      } catch (err) {
        // The leader's orphan sweep retries by itself; the owner's write is retried by tick().
        if (!orphan) this.unsynced.set(t.hostId, monotonicNow(this.deps.clock) + STATE_RETRY_MS);
        this.log.error({ host_id: t.hostId, to: t.to, err }, orphan ? 'host state not written' : 'host state not written; written again shortly');
        return;
      }
      if (!orphan) this.unsynced.delete(t.hostId);
      if (written === null) {
        if (orphan) return;
        this.liveness.forget(t.hostId);
        const s = this.sessions.get(t.hostId);
        if (s) {
          this.log.info({ host_id: t.hostId, session_id: s.id }, 'the host is gone or owned by a newer session elsewhere: this session ends');
          s.end(grpc.status.ABORTED, 'replaced by a newer session');
        }
        return;
      }
      this.log.info({ host_id: t.hostId, from: t.from, to: t.to, orphan, ...(written.evacuation ? { evacuation_id: written.evacuation.id } : {}) }, 'host state written');
      if (written.evacuation) this.hooks?.hostDown(t.hostId, written.evacuation);
    });
  }

  /** End every session (shutdown, or a lapsed registration). */
  private endAllSessions(code: grpc.status, why: string): void {
    for (const s of [...this.sessions.values()]) s.end(code, why);
    this.sessions.clear();
  }

  /** End sessions here that a newer session on another instance replaced (the directory says so). */
  private endStaleSessions(): void {
    for (const s of [...this.sessions.values()]) {
      const h = this.directory.holder(s.hostId);
      if (s.epoch !== null && h && h.instanceId !== this.instance.id && h.epoch > s.epoch) {
        this.log.info({ host_id: s.hostId, session_id: s.id, instance_id: h.instanceId }, 'a newer session of this host is open on another instance: this one ends');
        s.end(grpc.status.ABORTED, 'replaced by a newer session on another orchestrator');
        this.liveness.forget(s.hostId);
      }
    }
  }

  private queueWrite(hostId: string, fn: () => Promise<void>): void {
    const next = (this.writes.get(hostId) ?? Promise.resolve())
      .then(fn)
      .catch((err: unknown) => this.log.error({ host_id: hostId, err }, 'host write failed'));
    this.writes.set(hostId, next);
    void next.then(() => {
      if (this.writes.get(hostId) === next) this.writes.delete(hostId);
    });
  }

  private async renewServerCertificate(): Promise<void> {
    try {
      if (await this.deps.ca.renewServerIfDue()) this.creds.replace(this.deps.ca.caCertPem, this.deps.ca.serverKeyPair());
    } catch (err) {
      this.log.error({ err }, 'server certificate renewal failed');
    }
  }
}
