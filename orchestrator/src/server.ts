import { createServer, type Server } from 'node:http';
import { createServer as createTlsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import type { Logger } from '@kloudak/common';
import { openDatabase, SessionLock, type Database } from '@kloudak/prisma';
import { bootstrapAdmin } from './admin.js';
import { loadOrCreateKeys, TokenService } from './auth/tokens.js';
import type { Clock } from './clock.js';
import type { OrchestratorConfig } from './config.js';
import { createServices, placementPolicyOf, type Services } from './app/services.js';
import { createApi, type Api } from './http/app.js';
import { eventStreams } from './http/events.js';
import { CertificateAuthority } from './agent-api/ca.js';
import type { AgentChannel } from './agent-api/channel.js';
import { AgentLink } from './agent-api/link.js';
import { CommandRouter } from './agent-api/routing.js';
import type { NatsConnection } from '@nats-io/transport-node';
import { EventHub } from './events/hub.js';
import { closeNats, connectionState, connectNats } from './events/nats.js';
import { OutboxRelay, RELAY_LOCK } from './events/relay.js';
import { OUTBOX_CHANNEL } from './store/outbox.js';
import { HostRevocationListener } from './events/host-revocations.js';
import { HostDeletionListener } from './events/host-deletions.js';
import { RevocationListener } from './events/revocations.js';
import { TaskEngine } from './tasks/engine.js';
import { networkTaskDefinitions } from './tasks/network.js';
import { vmTaskDefinitions } from './tasks/vm.js';
import { drainTaskDefinitions } from './tasks/drain.js';
import { GrpcApi } from './grpc/server.js';
import { InstanceRegistration } from './ha/instance.js';
import { Leader } from './ha/leader.js';
import { LeaderSweeps } from './ha/sweeps.js';
import { failoverHooks, startFailoverSweeps, type FailoverDeps } from './ha/failover.js';
import { SharedPoolLeaseEvidence } from './ha/pool-lease-evidence.js';
import { SessionAnnouncer } from './agent-api/session-announcer.js';
import { loadClientTls, warnIfPlainText } from './client-tls.js';

/** A running orchestrator. */
export interface Orchestrator {
  url: string;
  api: Api;
  db: Database;
  /** `host:port` agents dial (the agent link, gRPC over TLS). */
  agentUrl: string;
  agentPort: number;
  /** Send commands to hosts (routed to the instance that holds each host's session). */
  agents: AgentChannel;
  /** The command router behind {@link agents} (tests). */
  router: CommandRouter;
  /** The agent link itself (sessions, liveness, usage), for tests and tools. */
  agentLink: AgentLink;
  /** The agent CA (its fingerprint goes into join tokens). */
  ca: CertificateAuthority;
  /** The orchestrator's NATS connection (events). */
  nats: NatsConnection;
  /** Publishes the event outbox to JetStream. */
  relay: OutboxRelay;
  /** This orchestrator's event streams (WebSocket, SSE, gRPC WatchEvents read them). */
  events: EventHub;
  /** The task worker (VM and network tasks). */
  tasks: TaskEngine;
  /** This process's registration among the deployment's orchestrators. */
  instance: InstanceRegistration;
  /** Leadership: exactly one instance runs the single-instance sweeps (failover hooks on it too). */
  leader: Leader;
  /** The leader's sweeps (hosts whose owner vanished). */
  sweeps: LeaderSweeps;
  /** The application layer's dependencies: what REST (and later gRPC, the CLI) call use cases with. */
  services: Services;
  /** `host:port` of the public gRPC API (kloudak.api.v1), and its port. */
  grpcUrl: string;
  grpcPort: number;
  /** Whether REST and gRPC are served over TLS (KLOUDAK_TLS_CERT_FILE / KLOUDAK_TLS_KEY_FILE). */
  tls: boolean;
  /** Stop accepting, finish in-flight requests (up to the grace period), end agent sessions, close NATS and the database. */
  close(): Promise<void>;
}

/** Test hooks of {@link startOrchestrator}. */
export interface StartOptions {
  /** Shorter Hello timeout (tests). */
  helloTimeoutMs?: number;
  /** How often liveness is evaluated (tests). */
  livenessTickMs?: number;
  /** How often the gRPC health service re-evaluates readiness (tests; default 1 s). */
  grpcHealthCheckMs?: number;
  /** How often the leader sweeps, and the session directory is read (tests; defaults 1 s and 2 s). */
  sweepMs?: number;
  directoryRefreshMs?: number;
}

/** Open the database, migrate, bootstrap the admin, and serve the API and the agent link. */
export async function startOrchestrator(config: OrchestratorConfig, log: Logger, clock: Clock, opts: StartOptions = {}): Promise<Orchestrator> {
  // Before anything opens: a bad certificate or key stops the start at once.
  const clientTls = loadClientTls(config);
  const db = await openDatabase({ url: config.databaseUrl || undefined, dataDir: config.dataDir });
  let nc: NatsConnection | undefined;
  let relay: OutboxRelay | undefined;
  let hub: EventHub | undefined;
  let unlisten: (() => Promise<void>) | undefined;
  let link: AgentLink | undefined;
  let router: CommandRouter | undefined;
  let announcer: SessionAnnouncer | undefined;
  let engine: TaskEngine | undefined;
  let grpcApi: GrpcApi | undefined;
  let revocations: RevocationListener | undefined;
  let hostRevocations: HostRevocationListener | undefined;
  let hostDeletions: HostDeletionListener | undefined;
  let instance: InstanceRegistration | undefined;
  let election: Leader | undefined;
  let sweeps: LeaderSweeps | undefined;
  try {
    const m = await db.migrate();
    log.info({ database: db.kind, applied: m.applied, already_applied: m.alreadyApplied }, 'database migrated');
    await bootstrapAdmin(db.client, config, log);
    const keys = await loadOrCreateKeys({
      privateKeyFile: config.jwtPrivateKeyFile,
      publicKeyFile: config.jwtPublicKeyFile,
      dataDir: config.dataDir,
    });
    const tokens = new TokenService(keys, clock, {
      issuer: config.jwtIssuer,
      audience: config.jwtAudience,
      ttlSeconds: config.tokenTtlSeconds,
    });
    const ca = await CertificateAuthority.open({
      dataDir: config.dataDir,
      extraNames: config.agentTlsNames.split(',').map((n) => n.trim()).filter((n) => n !== ''),
      clock,
      log,
      clientLifetimeMs: config.agentCertLifetimeSeconds * 1000,
    });
    const nats = await connectNats(config.natsUrl, log);
    nc = nats;
    // Events: written to the outbox in each change's transaction, published by the relay (woken
    // by the commit's NOTIFY, and a poll), read back by the hub for the event streams.
    // With PostgreSQL several orchestrators may share the outbox: the relay that holds the advisory
    // lock publishes, the others stand by. PGlite is one process: its relay always publishes.
    const relayLock = db.kind === 'postgres' ? new SessionLock(config.databaseUrl, RELAY_LOCK) : undefined;
    const outbox = await OutboxRelay.start({ db: db.client, nc: nats, log, clock, leader: relayLock }, { maxAgeMs: config.eventMaxAgeSeconds * 1000, pollMs: config.eventPollMs });
    relay = outbox;
    unlisten = await db.listen(OUTBOX_CHANNEL, () => outbox.kick());
    const events = new EventHub({ db: db.client, nc: nats, log }, { pollMs: config.eventPollMs });
    hub = events;
    events.start();
    const registration = new InstanceRegistration({ db: db.client, log }, { ttlMs: config.instanceTtlMs });
    await registration.start();
    instance = registration;
    const agentLink = await AgentLink.start(
      { db, ca, clock, log, instance: registration },
      {
        host: config.agentHost,
        port: config.agentPort,
        heartbeatIntervalMs: config.heartbeatIntervalMs,
        leaseMs: config.agentLeaseMs,
        downMarginMs: config.agentDownMarginMs,
        limits: {
          messagesPerSecond: config.agentMaxMessagesPerSecond,
          burst: config.agentMessageBurst,
          maxMessageBytes: config.agentMaxMessageBytes,
          maxBufferedWrites: config.agentMaxBufferedWrites,
        },
        certRenewGraceMs: config.agentCertRenewGraceSeconds * 1000,
        ...(opts.helloTimeoutMs !== undefined ? { helloTimeoutMs: opts.helloTimeoutMs } : {}),
        ...(opts.livenessTickMs !== undefined ? { tickMs: opts.livenessTickMs } : {}),
        ...(opts.directoryRefreshMs !== undefined ? { directoryRefreshMs: opts.directoryRefreshMs } : {}),
      },
    );
    link = agentLink;
    // The other instances learn at once where this one's sessions open and close (agent-api/session-announcer.ts).
    const sessionAnnouncer = new SessionAnnouncer({ nc: nats, directory: agentLink.directory, instanceId: registration.id, log });
    sessionAnnouncer.start();
    announcer = sessionAnnouncer;
    // Commands for a host whose session another instance holds go there over NATS (agent-api/routing.ts).
    const commands = new CommandRouter({ local: agentLink.channel, directory: agentLink.directory, instance: registration, nc: nats, clock, log });
    await commands.start();
    router = commands;
    const leadership = new Leader({ db: db.client, log }, registration.id, { ttlMs: config.leaderTtlMs });
    election = leadership;
    const leaderSweeps = new LeaderSweeps(
      { db: db.client, clock, log, leader: leadership, target: agentLink },
      { leaseMs: config.agentLeaseMs, downMarginMs: config.agentDownMarginMs, ...(opts.sweepMs !== undefined ? { sweepMs: opts.sweepMs } : {}) },
    );
    sweeps = leaderSweeps;
    leaderSweeps.start();
    leadership.start();
    const tasks = new TaskEngine(
      { db: db.client, clock, log },
      [
        ...vmTaskDefinitions({ agents: commands, stopTimeoutMs: 60_000, pollMs: 500 }),
        ...networkTaskDefinitions({ agents: commands, connected: (id) => agentLink.status(id).connected }),
        ...drainTaskDefinitions({
          agents: commands,
          connected: (id) => agentLink.status(id).connected,
          placement: placementPolicyOf(config),
          pollMs: 500,
          stopTimeoutMs: 60_000,
          migrationTimeoutMs: 300_000,
          // Every VM of the host, a few at a time: far longer than one step of a VM's task.
          moveStepTimeoutMs: Math.max(config.taskStepTimeoutMs, 3_600_000),
          concurrency: config.drainConcurrency,
        }),
      ],
      {
        owner: `orchestrator-${registration.id}`,
        leaseMs: config.taskLeaseMs,
        pollMs: 1000,
        concurrency: config.taskConcurrency,
        stepTimeoutMs: config.taskStepTimeoutMs,
        maxAttempts: config.taskMaxAttempts,
        backoffMs: config.taskBackoffMs,
        backoffMaxMs: config.taskBackoffMaxMs,
      },
    );
    engine = tasks;
    const services = createServices({
      db,
      tokens,
      clock,
      config,
      log,
      agents: {
        caFingerprint: ca.fingerprint,
        status: (id) => agentLink.status(id),
        hostDeleted: (id) => agentLink.hostDeleted(id),
        hostRevoked: (id) => agentLink.hostRevoked(id),
        sendCommand: (id, command, o) => commands.sendCommand(id, command, o),
      },
      tasks: { kick: () => tasks.kick() },
      events,
      bus: connectionState(nats),
    });
    // Failover: host-down episodes are evacuated, returning hosts cleaned before any command.
    // Set before the first await after the link started, so no Hello is handled without it.
    // Before a restart, the down host's pool lease files as its peers read them, from every instance.
    const poolLeaseEvidence = new SharedPoolLeaseEvidence({ nc: nats, view: agentLink.poolLeases, instanceId: registration.id, log });
    poolLeaseEvidence.start();
    const failover: FailoverDeps = {
      db: db.client,
      clock,
      log,
      connected: (id) => agentLink.status(id).connected,
      placement: services.placement,
      kickTasks: () => tasks.kick(),
      taskMaxAttempts: config.taskMaxAttempts,
      recoverTimeoutMs: config.taskTimeoutMs,
      commandTimeoutMs: Math.min(60_000, config.taskStepTimeoutMs),
      leaseMs: config.agentLeaseMs,
      // Reports from the last lease only: an older reading says nothing of the host now.
      poolLeaseEvidence: (hostId, peers) => poolLeaseEvidence.gather(hostId, peers, config.agentLeaseMs),
    };
    agentLink.setHooks(failoverHooks(failover));
    const stopSweeps = startFailoverSweeps(failover, () => leadership.isLeader());
    // Tokens refused on other orchestrators leave this one's principal cache too.
    const revocationListener = await RevocationListener.start(nats, services.principals, log);
    revocations = revocationListener;
    const hostRevocationListener = await HostRevocationListener.start(nats, { hostRevoked: (id, why, serials) => agentLink.hostRevoked(id, why, serials) }, log);
    hostRevocations = hostRevocationListener;
    // A host deleted through another instance: its session may be held here.
    const hostDeletionListener = await HostDeletionListener.start(nats, { hostDeleted: (id) => agentLink.hostDeleted(id) }, log);
    hostDeletions = hostDeletionListener;
    const api = createApi(services);
    // WebSocket and SSE event streams share the server; every other request goes to Koa.
    const streams = eventStreams(services);
    const handler = streams.wrap(api.app.callback());
    const server: Server = clientTls ? createTlsServer({ cert: clientTls.cert, key: clientTls.key }, handler) : createServer(handler);
    streams.attach(server);
    server.keepAliveTimeout = 65_000;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(config.port, config.host, () => resolve());
    });
    const addr = server.address() as AddressInfo;
    const host = addr.family === 'IPv6' ? `[${addr.address}]` : addr.address;
    const url = `${clientTls ? 'https' : 'http'}://${host}:${addr.port}`;
    const grpcServer = await GrpcApi.start(services, api.routes, { host: config.host, port: config.grpcPort, tls: clientTls, ...(opts.grpcHealthCheckMs !== undefined ? { healthCheckMs: opts.grpcHealthCheckMs } : {}) }, log, api.metrics);
    grpcApi = grpcServer;
    const grpcUrl = `${host}:${grpcServer.port}`;
    warnIfPlainText(log, config.host, clientTls);
    const agentHost = config.agentHost === '0.0.0.0' || config.agentHost === '::' ? '127.0.0.1' : config.agentHost;
    const agentUrl = `${agentHost.includes(':') ? `[${agentHost}]` : agentHost}:${agentLink.port}`;
    log.info({ url, grpc_url: grpcUrl, tls: clientTls !== null, agent_url: agentUrl, database: db.kind }, 'orchestrator listening');
    tasks.start();
    let closing: Promise<void> | undefined;
    return {
      url,
      grpcUrl,
      grpcPort: grpcServer.port,
      tls: clientTls !== null,
      api,
      db,
      agentUrl,
      agentPort: agentLink.port,
      agents: commands,
      router: commands,
      agentLink,
      ca,
      nats,
      relay: outbox,
      events,
      tasks,
      instance: registration,
      leader: leadership,
      sweeps: leaderSweeps,
      services,
      close: () =>
        (closing ??= (async () => {
          const done = new Promise<void>((resolve) => server.close(() => resolve()));
          server.closeIdleConnections();
          const timer = setTimeout(() => server.closeAllConnections(), config.shutdownGraceMs);
          const grpcDone = grpcServer.close(config.shutdownGraceMs);
          stopSweeps();
          // Tasks stop where they wait and release their leases: the next start resumes them at once.
          await tasks.close();
          // Leadership goes to another instance at once.
          await leaderSweeps.close();
          await leadership.close();
          // Commands routed here go back to their senders ("moved"), before the local channel closes.
          await commands.close();
          // Agent sessions end with UNAVAILABLE (agents reconnect); usage and state writes are flushed.
          await agentLink.close(config.shutdownGraceMs);
          // After the last grant: the leader's clocks for this instance's hosts start now.
          await registration.close();
          streams.close();
          events.close();
          await done;
          await grpcDone;
          clearTimeout(timer);
          await unlisten?.();
          await outbox.close();
          revocationListener.close();
          hostRevocationListener.close();
          hostDeletionListener.close();
          poolLeaseEvidence.stop();
          sessionAnnouncer.stop();
          await closeNats(nats);
          await db.close();
        })()),
    };
  } catch (err) {
    await grpcApi?.close(0);
    await engine?.close();
    await sweeps?.close();
    await election?.close();
    announcer?.stop();
    await router?.close();
    await link?.close(0);
    await instance?.close();
    hub?.close();
    await unlisten?.();
    await relay?.close();
    revocations?.close();
    hostRevocations?.close();
    hostDeletions?.close();
    if (nc) await closeNats(nc);
    await db.close();
    throw err;
  }
}
