import type { PrismaClient } from '@kloudak/prisma';
import type { AgentChannel } from '../agent-api/channel.js';
import type { Clock } from '../clock.js';
import type { PlacementPolicy } from '../domain/placement.js';

/** Who acts in a compute use case: the signed-in principal's id and admin flag (any Principal fits). */
export interface Actor {
  userId: string;
  isAdmin: boolean;
}

/** What the VM, network, task and quota use cases need. */
export interface ComputeDeps {
  db: PrismaClient;
  clock: Clock;
  agents: AgentChannel;
  /** Whether a host's agent holds a session now. */
  connected(hostId: string): boolean;
  /** A task was committed: let the worker look now rather than at its next poll. */
  kick(): void;
  placement: PlacementPolicy;
  /** Attempts of each step before rollback, and how long a whole task may take. */
  taskMaxAttempts: number;
  taskTimeoutMs: number;
}
