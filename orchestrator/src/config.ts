import { Type, type Static } from '@sinclair/typebox';
import { envLayer, fileLayer, flagLayer, loadConfig } from '@kloudak/common';

/** The orchestrator's settings, validated once at start-up and frozen. */
export const OrchestratorConfigSchema = Type.Object(
  {
    port: Type.Integer({ minimum: 0, maximum: 65535, default: 8080 }),
    host: Type.String({ minLength: 1, default: '127.0.0.1' }),
    /** Port of the public gRPC API (kloudak.api.v1), on `host` like REST; 0 picks a free port (tests). */
    grpcPort: Type.Integer({ minimum: 0, maximum: 65535, default: 9090 }),
    /**
     * PEM certificate chain and key clients see: with both, REST (and its WebSocket) and gRPC are
     * served over TLS; with neither, in plain text (a warning at start unless `host` is loopback).
     */
    tlsCertFile: Type.String({ default: '' }),
    tlsKeyFile: Type.String({ default: '' }),
    dataDir: Type.String({ minLength: 1, default: './data' }),
    /** PostgreSQL URL; the embedded PGlite database is used when empty. */
    databaseUrl: Type.String({ default: '' }),
    /** NATS server the orchestrator publishes its events on. */
    natsUrl: Type.String({ minLength: 1, default: 'nats://127.0.0.1:4222' }),
    /** How long the event stream (KLOUDAK_EVENTS) and the outbox keep an event: how far back a client can resume. */
    eventMaxAgeSeconds: Type.Integer({ minimum: 60, maximum: 90 * 86400, default: 86400 }),
    /** The outbox relay and the event streams look for new events at least this often (commits wake them at once). */
    eventPollMs: Type.Integer({ minimum: 50, maximum: 60_000, default: 1000 }),
    /** Port of the agent link (gRPC over TLS); 0 picks a free port (tests). */
    agentPort: Type.Integer({ minimum: 0, maximum: 65535, default: 8443 }),
    /** Address the agent link listens on. */
    agentHost: Type.String({ minLength: 1, default: '0.0.0.0' }),
    /** Extra DNS names or IPs for the agent link's server certificate, comma-separated. */
    agentTlsNames: Type.String({ default: '' }),
    /** How often agents send a heartbeat (told in HelloAck). */
    heartbeatIntervalMs: Type.Integer({ minimum: 50, maximum: 600_000, default: 1000 }),
    /** Length of the lease granted for each heartbeat. */
    agentLeaseMs: Type.Integer({ minimum: 100, maximum: 3_600_000, default: 15000 }),
    /** Safety margin after a lease surely ended before a host counts as down. */
    agentDownMarginMs: Type.Integer({ minimum: 0, maximum: 3_600_000, default: 5000 }),
    /**
     * Several orchestrators (ha/README.md): how long one renewal of this instance's registration
     * lasts (renewed every sixth of it). An instance that cannot renew stops granting leases when
     * it ends, so it bounds the database stall survived without fencing (default 45 s: three
     * default leases) and how late the leader marks down the hosts of a dead instance whose agents
     * did not reconnect elsewhere (TTL + lease + margin).
     */
    instanceTtlMs: Type.Integer({ minimum: 100, maximum: 3_600_000, default: 45_000 }),
    /** How long one renewal of leadership lasts: a dead leader is replaced within about this. */
    leaderTtlMs: Type.Integer({ minimum: 100, maximum: 600_000, default: 5000 }),
    /**
     * What one agent may send: messages per second on its stream (sustained) and in a burst, and
     * the size of one message. Past either, its session ends with RESOURCE_EXHAUSTED (the agent
     * reconnects after a backoff); other hosts see nothing of it.
     */
    agentMaxMessagesPerSecond: Type.Integer({ minimum: 1, maximum: 1_000_000, default: 200 }),
    agentMessageBurst: Type.Integer({ minimum: 1, maximum: 1_000_000, default: 2000 }),
    agentMaxMessageBytes: Type.Integer({ minimum: 65_536, maximum: 256 * 1024 * 1024, default: 8 * 1024 * 1024 }),
    /** Messages written to an agent that it has not read yet; past it, its session ends (it does not read). */
    agentMaxBufferedWrites: Type.Integer({ minimum: 8, maximum: 1_000_000, default: 1024 }),
    /**
     * Validity of the client certificates the agent CA signs (enrollment, renewal). Agents renew
     * theirs over the link well before it ends; seconds in tests, a year by default.
     */
    agentCertLifetimeSeconds: Type.Integer({ minimum: 10, maximum: 10 * 365 * 86_400, default: 365 * 86_400 }),
    /**
     * How long the certificate a renewal replaced stays accepted, at most: until the agent
     * connects with its new one, or this long (a crash between the renewal and saving the new
     * identity must not lock the host out).
     */
    agentCertRenewGraceSeconds: Type.Integer({ minimum: 1, maximum: 30 * 86_400, default: 3600 }),
    adminUser: Type.String({ default: '' }),
    adminEmail: Type.String({ default: '' }),
    adminPassword: Type.String({ default: '' }),
    /** PEM files of the token signing key pair; generated under dataDir when empty. */
    jwtPrivateKeyFile: Type.String({ default: '' }),
    jwtPublicKeyFile: Type.String({ default: '' }),
    jwtIssuer: Type.String({ minLength: 1, default: 'kloudak' }),
    jwtAudience: Type.String({ minLength: 1, default: 'kloudak-api' }),
    tokenTtlSeconds: Type.Integer({ minimum: 60, maximum: 86400 * 30, default: 3600 }),
    /**
     * How long an authenticated token's user is remembered (ms; 0: looked up on every request).
     * Revocations reach every orchestrator over NATS at once; this bounds what they cannot reach.
     */
    principalCacheMs: Type.Integer({ minimum: 0, maximum: 60_000, default: 5000 }),
    allowSignup: Type.Boolean({ default: true }),
    /** log2 of scrypt's N; 15 costs about 50-100 ms a hash on a small host. */
    passwordHashCost: Type.Integer({ minimum: 10, maximum: 20, default: 15 }),
    loginMaxPerUser: Type.Integer({ minimum: 1, default: 10 }),
    loginMaxPerAddress: Type.Integer({ minimum: 1, default: 50 }),
    loginWindowSeconds: Type.Integer({ minimum: 1, default: 300 }),
    /** Sign-ups and password changes per client address and login window: each costs a 32 MiB scrypt. */
    signupMaxPerAddress: Type.Integer({ minimum: 1, default: 20 }),
    passwordChangeMaxPerAddress: Type.Integer({ minimum: 1, default: 20 }),
    /** Trust X-Forwarded-For (only behind a proxy you run). */
    trustProxy: Type.Boolean({ default: false }),
    logLevel: Type.Union(
      ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'].map((l) => Type.Literal(l)),
      { default: 'info' },
    ),
    shutdownGraceMs: Type.Integer({ minimum: 0, default: 10000 }),
    /** Attempts of each task step before rollback (the seed's default: 1 + 2 retries). */
    taskMaxAttempts: Type.Integer({ minimum: 1, maximum: 20, default: 3 }),
    /** Backoff before the first retry of a step; doubled each retry, at most taskBackoffMaxMs. */
    taskBackoffMs: Type.Integer({ minimum: 0, maximum: 600_000, default: 2000 }),
    taskBackoffMaxMs: Type.Integer({ minimum: 0, maximum: 3_600_000, default: 30_000 }),
    /** Per-attempt timeout of a step, and the deadline of a whole task (then it rolls back). */
    taskStepTimeoutMs: Type.Integer({ minimum: 100, maximum: 3_600_000, default: 180_000 }),
    taskTimeoutMs: Type.Integer({ minimum: 1000, maximum: 86_400_000, default: 900_000 }),
    /** A worker's claim on a task lasts this long unless renewed (a crashed worker's tasks resume after it). */
    taskLeaseMs: Type.Integer({ minimum: 100, maximum: 600_000, default: 15_000 }),
    /** Tasks one orchestrator runs at the same time. */
    taskConcurrency: Type.Integer({ minimum: 1, maximum: 1000, default: 32 }),
    /**
     * How many VMs one host drain moves at once (live migrations, or stops and restarts). Each
     * holds its vCPU and RAM on its destination while it moves; the source's network carries that
     * many migrations together.
     */
    drainConcurrency: Type.Integer({ minimum: 1, maximum: 64, default: 2 }),
    /** Placement: spread (default) or pack, and the overcommit ratios. */
    placementStrategy: Type.Union([Type.Literal('spread'), Type.Literal('pack')], { default: 'spread' }),
    cpuOvercommit: Type.Number({ exclusiveMinimum: 0, maximum: 64, default: 4 }),
    ramOvercommit: Type.Number({ exclusiveMinimum: 0, maximum: 4, default: 1 }),
    diskOvercommit: Type.Number({ exclusiveMinimum: 0, maximum: 64, default: 1 }),
    /**
     * Read end of a pipe whose write end only the starting process holds (scripts/up.sh): at its
     * end-of-file, that process is gone and `serve` stops as on SIGTERM. Unset: no lifeline.
     */
    lifelineFd: Type.Optional(Type.Integer({ minimum: 0 })),
  },
  { additionalProperties: false },
);

/** Validated, frozen orchestrator settings. */
export type OrchestratorConfig = Readonly<Static<typeof OrchestratorConfigSchema>>;

const ENV_NAMES: Record<string, string> = {
  KLOUDAK_PORT: 'port',
  KLOUDAK_HOST: 'host',
  KLOUDAK_GRPC_PORT: 'grpcPort',
  KLOUDAK_TLS_CERT_FILE: 'tlsCertFile',
  KLOUDAK_TLS_KEY_FILE: 'tlsKeyFile',
  KLOUDAK_DATA_DIR: 'dataDir',
  DATABASE_URL: 'databaseUrl',
  NATS_URL: 'natsUrl',
  KLOUDAK_EVENT_MAX_AGE_SECONDS: 'eventMaxAgeSeconds',
  KLOUDAK_EVENT_POLL_MS: 'eventPollMs',
  KLOUDAK_AGENT_PORT: 'agentPort',
  KLOUDAK_AGENT_HOST: 'agentHost',
  KLOUDAK_AGENT_TLS_NAMES: 'agentTlsNames',
  KLOUDAK_HEARTBEAT_INTERVAL_MS: 'heartbeatIntervalMs',
  KLOUDAK_AGENT_LEASE_MS: 'agentLeaseMs',
  KLOUDAK_AGENT_DOWN_MARGIN_MS: 'agentDownMarginMs',
  KLOUDAK_INSTANCE_TTL_MS: 'instanceTtlMs',
  KLOUDAK_LEADER_TTL_MS: 'leaderTtlMs',
  KLOUDAK_AGENT_MAX_MESSAGES_PER_SECOND: 'agentMaxMessagesPerSecond',
  KLOUDAK_AGENT_MESSAGE_BURST: 'agentMessageBurst',
  KLOUDAK_AGENT_MAX_MESSAGE_BYTES: 'agentMaxMessageBytes',
  KLOUDAK_AGENT_MAX_BUFFERED_WRITES: 'agentMaxBufferedWrites',
  KLOUDAK_AGENT_CERT_LIFETIME_SECONDS: 'agentCertLifetimeSeconds',
  KLOUDAK_AGENT_CERT_RENEW_GRACE_SECONDS: 'agentCertRenewGraceSeconds',
  KLOUDAK_ADMIN_USER: 'adminUser',
  KLOUDAK_ADMIN_EMAIL: 'adminEmail',
  KLOUDAK_ADMIN_PASSWORD: 'adminPassword',
  KLOUDAK_JWT_PRIVATE_KEY_FILE: 'jwtPrivateKeyFile',
  KLOUDAK_JWT_PUBLIC_KEY_FILE: 'jwtPublicKeyFile',
  KLOUDAK_TOKEN_TTL_SECONDS: 'tokenTtlSeconds',
  KLOUDAK_PRINCIPAL_CACHE_MS: 'principalCacheMs',
  KLOUDAK_ALLOW_SIGNUP: 'allowSignup',
  KLOUDAK_PASSWORD_HASH_COST: 'passwordHashCost',
  KLOUDAK_LOGIN_MAX_PER_USER: 'loginMaxPerUser',
  KLOUDAK_LOGIN_MAX_PER_ADDRESS: 'loginMaxPerAddress',
  KLOUDAK_LOGIN_WINDOW_SECONDS: 'loginWindowSeconds',
  KLOUDAK_SIGNUP_MAX_PER_ADDRESS: 'signupMaxPerAddress',
  KLOUDAK_PASSWORD_CHANGE_MAX_PER_ADDRESS: 'passwordChangeMaxPerAddress',
  KLOUDAK_TRUST_PROXY: 'trustProxy',
  KLOUDAK_LOG_LEVEL: 'logLevel',
  KLOUDAK_TASK_MAX_ATTEMPTS: 'taskMaxAttempts',
  KLOUDAK_TASK_BACKOFF_MS: 'taskBackoffMs',
  KLOUDAK_TASK_BACKOFF_MAX_MS: 'taskBackoffMaxMs',
  KLOUDAK_TASK_STEP_TIMEOUT_MS: 'taskStepTimeoutMs',
  KLOUDAK_TASK_TIMEOUT_MS: 'taskTimeoutMs',
  KLOUDAK_TASK_LEASE_MS: 'taskLeaseMs',
  KLOUDAK_DRAIN_CONCURRENCY: 'drainConcurrency',
  KLOUDAK_PLACEMENT_STRATEGY: 'placementStrategy',
  KLOUDAK_CPU_OVERCOMMIT: 'cpuOvercommit',
  KLOUDAK_RAM_OVERCOMMIT: 'ramOvercommit',
  KLOUDAK_LIFELINE_FD: 'lifelineFd',
};

const FLAG_NAMES: Record<string, string> = {
  port: 'port',
  host: 'host',
  'grpc-port': 'grpcPort',
  'data-dir': 'dataDir',
  'database-url': 'databaseUrl',
  'nats-url': 'natsUrl',
  'agent-port': 'agentPort',
  'agent-host': 'agentHost',
  'log-level': 'logLevel',
};

/**
 * Build the configuration: defaults → file (KLOUDAK_CONFIG or --config, JSON) → environment →
 * flags. This module is the only one of the orchestrator that reads `process.env`.
 */
export function readConfig(argv: readonly string[], env: NodeJS.ProcessEnv = process.env): OrchestratorConfig {
  const configPath = flagLayer(argv, { config: 'path' })['path'] ?? env['KLOUDAK_CONFIG'];
  return loadConfig(OrchestratorConfigSchema, {
    file: fileLayer(typeof configPath === 'string' ? configPath : undefined, true),
    env: envLayer(env, ENV_NAMES),
    flags: flagLayer(argv, FLAG_NAMES),
  });
}

/** Defaults with overrides, for tests and tools that build a config in code. */
export function configWith(overrides: Partial<Static<typeof OrchestratorConfigSchema>>): OrchestratorConfig {
  return loadConfig(OrchestratorConfigSchema, { flags: overrides });
}
