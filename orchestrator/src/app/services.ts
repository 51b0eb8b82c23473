import type { Logger } from '@kloudak/common';
import type { Database } from '@kloudak/prisma';
import type { SendOptions } from '../agent-api/channel.js';
import type { HostLinkStatus } from '../agent-api/link.js';
import { PrincipalCache } from '../auth/principal-cache.js';
import { RateLimiter } from '../auth/rate-limit.js';
import type { TokenService } from '../auth/tokens.js';
import type { Clock } from '../clock.js';
import type { OrchestratorConfig } from '../config.js';
import type { AgentCommand, CommandResult } from '../domain/agent.js';
import { DEFAULT_PLACEMENT_POLICY, type PlacementPolicy } from '../domain/placement.js';
import type { EventHub } from '../events/hub.js';
import type { Principal } from './principal.js';

/** What the use cases need of the agent link. */
export interface AgentLinkPort {
  /** SHA-256 of the agent CA certificate (DER), hex: goes into join tokens. */
  readonly caFingerprint: string;
  /** The link's live view of a host (session, liveness, last heartbeat and usage). */
  status(hostId: string): HostLinkStatus;
  /** A host was deleted: its session is ended and it is forgotten. */
  hostDeleted(hostId: string): void;
  /** A host's certificates were revoked (re-key): its session ends at once. */
  hostRevoked(hostId: string): void;
  /** Send a command to a host and await its one result (never rejects: a failure is `ok: false`). */
  sendCommand(hostId: string, command: AgentCommand, opts: SendOptions): Promise<CommandResult>;
}

/** What the use cases need of the task worker. */
export interface TaskWorkerPort {
  /** A task was committed: look now rather than at the next poll. */
  kick(): void;
}

/** What readiness needs of the message bus (NATS): whether this process is connected to it now. */
export interface BusPort {
  connected(): boolean;
}

/** The dependencies of the application layer, built once by the composition root (or a test). */
export interface AppDeps {
  db: Database;
  tokens: TokenService;
  clock: Clock;
  config: OrchestratorConfig;
  log: Logger;
  agents: AgentLinkPort;
  /**
   * The event streams of this orchestrator (use cases write events with `record`, in their
   * transactions; this only reads them).
   */
  events: Pick<EventHub, 'subscribe' | 'watch'>;
  /** The worker that runs the tasks use cases queue. */
  tasks: TaskWorkerPort;
  /** The NATS connection's state, for readiness; absent: not checked. */
  bus?: BusPort;
}

/** The attempt counters of the public use cases, in memory per orchestrator instance. */
export interface Limits {
  loginByUser: RateLimiter;
  loginByAddress: RateLimiter;
  /** Sign-ups and password changes per client address: each hashes a password (scrypt, 32 MiB). */
  signupByAddress: RateLimiter;
  passwordChangeByAddress: RateLimiter;
}

/** Everything a use case receives besides its caller and input. Shared by every interface. */
export interface Services extends AppDeps {
  limits: Limits;
  /** How VMs are placed: the configured strategy and overcommit ratios. */
  placement: Readonly<PlacementPolicy>;
  /** Recently authenticated tokens' principals (authenticate reads it; revocations clear it). */
  principals: PrincipalCache<Principal>;
}

/** The configured placement policy: strategy and overcommit ratios over the defaults. */
export function placementPolicyOf(config: OrchestratorConfig): Readonly<PlacementPolicy> {
  return Object.freeze({
    ...DEFAULT_PLACEMENT_POLICY,
    strategy: config.placementStrategy,
    cpuOvercommit: config.cpuOvercommit,
    ramOvercommit: config.ramOvercommit,
    diskOvercommit: config.diskOvercommit,
  });
}

/** Build the services once per process: the rate limiters and the placement policy live here, not in an adapter. */
export function createServices(deps: AppDeps): Services {
  const windowMs = deps.config.loginWindowSeconds * 1000;
  const limiter = (max: number) => new RateLimiter(deps.clock, max, windowMs);
  return {
    ...deps,
    limits: {
      loginByUser: limiter(deps.config.loginMaxPerUser),
      loginByAddress: limiter(deps.config.loginMaxPerAddress),
      signupByAddress: limiter(deps.config.signupMaxPerAddress),
      passwordChangeByAddress: limiter(deps.config.passwordChangeMaxPerAddress),
    },
    principals: new PrincipalCache(deps.clock, deps.config.principalCacheMs),
    placement: placementPolicyOf(deps.config),
  };
}
