/**
 * Runs the orchestrator's commands on this host (AGENT-LINK.md, "Commands"):
 * - commands for different VMs run at once; commands for one VM (key `vm:<id>`) or one network
 *   (key `net:<bridge>:<vlan>`) run one after the other, in arrival order; Fence and GetInventory
 *   run at once;
 * - a command whose deadline has passed when its turn comes is answered DEADLINE_EXCEEDED;
 * - command ids are remembered with their outcome (the last 1,000, and anything younger than
 *   10 minutes): a command received again is answered from memory or joins the run in progress,
 *   so one agent process never runs a command id twice;
 * - failures are mapped to the contract's error codes, with messages scrubbed of secrets.
 */
import type { Logger } from 'pino';
import {
  AlreadyExistsError,
  CallTimeoutError,
  DisconnectedError,
  InvalidError,
  NotFoundError as LibvirtNotFoundError,
  NotSupportedError,
  OperationFailedError,
} from '@kloudak/libvirt';
import { LeaseExpiredError } from '../fence/start-gate.js';
import { RootVolumeMissingError, VmNotFoundError, type HostOperations, type MigrationTarget } from '../ops/host-ops.js';
import { VolumeNotFoundError } from '../storage/libvirt-storage.js';
import { SpecError, type NicSpec, type VmSpec } from '../spec.js';
import { CommandError } from '../system/command-runner.js';
import type { InventoryReport } from '../telemetry/inventory.js';

/** The contract's error codes (proto ErrorCode without the prefix). */
export type CommandErrorCode =
  | 'INVALID_ARGUMENT'
  | 'NOT_FOUND'
  | 'ALREADY_EXISTS'
  | 'DEADLINE_EXCEEDED'
  | 'RESOURCE_EXHAUSTED'
  | 'FAILED_PRECONDITION'
  | 'UNIMPLEMENTED'
  | 'UNAVAILABLE'
  | 'INTERNAL';

/** What a command asks for, in the agent's own types (see link/convert.ts for the proto side). */
export type AgentAction =
  | { kind: 'createVm'; spec: VmSpec }
  | { kind: 'deleteVm'; vmId: string; pool: string; bridges: string[] }
  /** Remove the VM from this host, keeping its volumes (it runs elsewhere now). */
  | { kind: 'evictVm'; vmId: string; bridges: string[] }
  | { kind: 'startVm'; vmId: string }
  | { kind: 'stopVm'; vmId: string; timeoutMs?: number; force: boolean }
  | { kind: 'rebootVm'; vmId: string }
  | { kind: 'attachInterface'; vmId: string; index: number; nic: NicSpec }
  | { kind: 'detachInterface'; vmId: string; index: number; nic: NicSpec }
  | { kind: 'ensureNetwork'; networkId: string; vlan: number; bridge?: string }
  | { kind: 'deleteNetwork'; networkId: string; vlan: number; bridge?: string }
  | { kind: 'fence'; vmIds: string[]; reason: string }
  | { kind: 'readConsole'; vmId: string; maxBytes: number }
  | { kind: 'getInventory' }
  /** Live migration, destination side: get ready to receive the VM; answers a migration target. */
  | { kind: 'prepareMigration'; spec: VmSpec }
  /** Live migration, source side: move the running VM to the destination a prepareMigration answered. */
  | { kind: 'migrateVm'; vmId: string; target: MigrationTarget; sharedStorage: boolean; timeoutMs?: number }
  /** A command that could not be understood; answered INVALID_ARGUMENT with `message`. */
  | { kind: 'invalid'; message: string };

/** A command as the runner receives it. */
export interface AgentCommand {
  commandId: string;
  /** Not started after this instant (wall clock). */
  deadline?: Date;
  action: AgentAction;
}

/** Data returned by the commands that return data. */
export type CommandPayload =
  | { kind: 'inventory'; inventory: InventoryReport }
  | { kind: 'console'; data: Buffer; truncated: boolean }
  | { kind: 'migrationTarget'; target: MigrationTarget };

/** The outcome of a command: exactly one per command id. */
export interface CommandOutcome {
  commandId: string;
  ok: boolean;
  error?: { code: CommandErrorCode; message: string };
  completedAt: Date;
  payload?: CommandPayload;
}

/** What the runner needs from host operations. */
export type CommandOps = Pick<
  HostOperations,
  | 'createVm'
  | 'deleteVm'
  | 'evictVm'
  | 'startVm'
  | 'stopVm'
  | 'rebootVm'
  | 'attachInterface'
  | 'detachInterface'
  | 'ensureNetwork'
  | 'deleteNetwork'
  | 'fence'
  | 'readConsole'
  | 'prepareMigration'
  | 'migrateVm'
>;

/** Dependencies of {@link CommandDispatcher}. */
export interface DispatcherDeps {
  ops: CommandOps;
  /** The host's inventory, for GetInventory. */
  inventory: () => Promise<InventoryReport>;
  /** Bridge of network commands that name none. */
  defaultBridge: string;
  log: Logger;
  /** Wall clock (deadlines are wall-clock instants). */
  now?: () => number;
  /** How many finished ids to keep at least (default 1,000). */
  rememberIds?: number;
  /** How long to keep a finished id at least (default 10 minutes). */
  rememberMs?: number;
}

const MAX_CONSOLE_BYTES = 1024 * 1024;
const DEFAULT_CONSOLE_BYTES = 64 * 1024;
/** A hard bound on the memory, whatever the rate of commands (a finished id is ~1 KB). */
const HARD_CAP_IDS = 50_000;

/** The serialisation key of an action: null for actions that run at once. */
export function keyOf(action: AgentAction, defaultBridge: string): string | null {
  switch (action.kind) {
    case 'createVm':
    case 'prepareMigration':
      return `vm:${action.spec.vmId}`;
    case 'migrateVm':
      return `vm:${action.vmId}`;
    case 'deleteVm':
    case 'evictVm':
    case 'startVm':
    case 'stopVm':
    case 'rebootVm':
    case 'attachInterface':
    case 'detachInterface':
    case 'readConsole':
      return `vm:${action.vmId}`;
    case 'ensureNetwork':
    case 'deleteNetwork':
      return `net:${action.bridge ?? defaultBridge}:${action.vlan}`;
    case 'fence':
    case 'getInventory':
    case 'invalid':
      return null;
  }
}

/** Removes anything secret-looking from a message (crypt hashes, PEM blocks, join tokens) and bounds it. */
export function scrubMessage(message: string): string {
  const s = message
    .replace(/-----BEGIN [A-Z ]+-----[\s\S]*?(-----END [A-Z ]+-----|$)/g, '[pem redacted]')
    .replace(/\$[0-9a-z]{1,3}\$[./0-9A-Za-z$=,-]+/g, '[hash redacted]')
    .replace(/kjt1\.[0-9A-Za-z._-]+/g, '[token redacted]');
  return s.length > 2000 ? `${s.slice(0, 2000)}…` : s;
}

/** Maps a failure to the contract's error code. */
export function errorCodeOf(err: unknown): CommandErrorCode {
  if (err instanceof SpecError) return 'INVALID_ARGUMENT';
  // No lease: the host is fencing. Retryable: once it reconnects and holds a lease, it may start VMs.
  if (err instanceof LeaseExpiredError) return 'UNAVAILABLE';
  if (err instanceof VmNotFoundError || err instanceof VolumeNotFoundError || err instanceof RootVolumeMissingError) return 'NOT_FOUND';
  if (err instanceof LibvirtNotFoundError) return 'NOT_FOUND';
  if (err instanceof NotSupportedError) return 'UNIMPLEMENTED';
  if (err instanceof AlreadyExistsError) return 'ALREADY_EXISTS';
  if (err instanceof InvalidError) return 'INVALID_ARGUMENT';
  // "domain is not running" and the like: the object's state does not allow the operation.
  if (err instanceof OperationFailedError) return 'FAILED_PRECONDITION';
  if (err instanceof DisconnectedError || err instanceof CallTimeoutError) return 'UNAVAILABLE';
  if (err instanceof CommandError && isOvsdbUnreachable(err)) return 'UNAVAILABLE';
  return 'INTERNAL';
}

/** ovs-vsctl could not reach ovsdb-server (stopped, restarting) or ovs-vswitchd did not answer in time. */
function isOvsdbUnreachable(err: CommandError): boolean {
  if (err.reason === 'timeout') return true;
  return /database connection failed|Connection refused|No such file or directory.*db\.sock|timed out|unix:.*\.sock/i.test(err.stderrTail);
}

interface Remembered {
  promise: Promise<CommandOutcome>;
  outcome?: CommandOutcome;
  /** Monotonic-ish wall time when it finished; for expiry. */
  doneAt?: number;
}

/** Runs commands under the contract's rules. See the module comment. */
export class CommandDispatcher {
  private readonly memory = new Map<string, Remembered>();
  private readonly tails = new Map<string, Promise<unknown>>();
  private readonly running = new Set<Promise<CommandOutcome>>();
  private readonly now: () => number;
  private readonly rememberIds: number;
  private readonly rememberMs: number;
  private accepting = true;

  constructor(private readonly d: DispatcherDeps) {
    this.now = d.now ?? Date.now;
    this.rememberIds = d.rememberIds ?? 1000;
    this.rememberMs = d.rememberMs ?? 10 * 60_000;
  }

  /** Commands started or queued and not finished. */
  get inFlight(): number {
    return this.running.size;
  }

  /**
   * Runs (or answers from memory) one command. The promise never rejects: every failure is an
   * outcome with an error code.
   */
  dispatch(cmd: AgentCommand): Promise<CommandOutcome> {
    const known = this.memory.get(cmd.commandId);
    if (known) {
      this.d.log.info({ command_id: cmd.commandId, done: known.outcome !== undefined }, 'command received again: answered from memory');
      return known.outcome ? Promise.resolve(known.outcome) : known.promise;
    }
    if (!this.accepting) {
      // Not remembered: the process is ending, and the next one may run it.
      return Promise.resolve(this.failure(cmd.commandId, 'UNAVAILABLE', 'the agent is shutting down'));
    }
    const entry: Remembered = { promise: Promise.resolve(null as unknown as CommandOutcome) };
    const key = keyOf(cmd.action, this.d.defaultBridge);
    const run = async (): Promise<CommandOutcome> => {
      const outcome = await this.execute(cmd);
      entry.outcome = outcome;
      entry.doneAt = this.now();
      return outcome;
    };
    let promise: Promise<CommandOutcome>;
    if (key === null) {
      promise = run();
    } else {
      const previous = this.tails.get(key) ?? Promise.resolve();
      promise = previous.then(run, run);
      this.tails.set(key, promise);
      void promise.finally(() => {
        if (this.tails.get(key) === promise) this.tails.delete(key);
      });
    }
    entry.promise = promise;
    this.memory.set(cmd.commandId, entry);
    this.running.add(promise);
    void promise.finally(() => {
      this.running.delete(promise);
      this.forget();
    });
    return promise;
  }

  /** Refuses new commands from now on (they are answered UNAVAILABLE). */
  stopAccepting(): void {
    this.accepting = false;
  }

  /** Waits until the running and queued commands finish, or `timeoutMs` passes. True when all finished. */
  async drain(timeoutMs: number): Promise<boolean> {
    if (this.running.size === 0) return true;
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<false>((r) => (timer = setTimeout(() => r(false), timeoutMs)));
    const all = (async () => {
      while (this.running.size > 0) await Promise.allSettled([...this.running]);
      return true as const;
    })();
    try {
      return await Promise.race([all, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** Drops finished ids beyond the last `rememberIds` that are older than `rememberMs`. */
  private forget(): void {
    const excess = this.memory.size - this.rememberIds;
    if (excess <= 0) return;
    const cutoff = this.now() - this.rememberMs;
    let dropped = 0;
    // A Map iterates in insertion order: the oldest commands first.
    for (const [id, e] of this.memory) {
      if (dropped >= excess) break;
      if (e.doneAt === undefined) continue;
      if (e.doneAt > cutoff && this.memory.size <= HARD_CAP_IDS) break;
      this.memory.delete(id);
      dropped++;
    }
  }

  private failure(commandId: string, code: CommandErrorCode, message: string): CommandOutcome {
    return { commandId, ok: false, error: { code, message: scrubMessage(message) }, completedAt: new Date(this.now()) };
  }

  private async execute(cmd: AgentCommand): Promise<CommandOutcome> {
    const log = this.d.log.child({ command_id: cmd.commandId, ...vmIdField(cmd.action) });
    if (cmd.deadline && cmd.deadline.getTime() <= this.now()) {
      log.warn({ action: cmd.action.kind, deadline: cmd.deadline.toISOString() }, 'command deadline passed before it started');
      return this.failure(cmd.commandId, 'DEADLINE_EXCEEDED', `the deadline ${cmd.deadline.toISOString()} passed before the command started`);
    }
    const started = this.now();
    try {
      const payload = await this.perform(cmd.action, log);
      log.info({ action: cmd.action.kind, ms: this.now() - started }, 'command succeeded');
      const outcome: CommandOutcome = { commandId: cmd.commandId, ok: true, completedAt: new Date(this.now()) };
      if (payload) outcome.payload = payload;
      return outcome;
    } catch (err) {
      const code = errorCodeOf(err);
      const message = (err as Error)?.message ?? String(err);
      log.warn({ action: cmd.action.kind, code, ms: this.now() - started, err: { message: scrubMessage(message), name: (err as Error)?.name } }, 'command failed');
      return this.failure(cmd.commandId, code, message);
    }
  }

  private async perform(a: AgentAction, log: Logger): Promise<CommandPayload | undefined> {
    const ops = this.d.ops;
    switch (a.kind) {
      case 'createVm':
        await ops.createVm(a.spec);
        return undefined;
      case 'deleteVm':
        await ops.deleteVm({ vmId: a.vmId, pool: a.pool }, a.bridges.length > 0 ? a.bridges : [this.d.defaultBridge]);
        return undefined;
      case 'evictVm':
        await ops.evictVm(a.vmId, a.bridges.length > 0 ? a.bridges : [this.d.defaultBridge]);
        return undefined;
      case 'startVm':
        await ops.startVm(a.vmId);
        return undefined;
      case 'stopVm':
        if (a.force) await ops.stopVm(a.vmId, 0);
        else await ops.stopVm(a.vmId, a.timeoutMs);
        return undefined;
      case 'rebootVm':
        await ops.rebootVm(a.vmId);
        return undefined;
      case 'attachInterface':
        await ops.attachInterface(a.vmId, a.index, a.nic);
        return undefined;
      case 'detachInterface':
        await ops.detachInterface(a.vmId, a.index, a.nic);
        return undefined;
      case 'ensureNetwork':
        await ops.ensureNetwork(a.vlan, a.bridge ?? this.d.defaultBridge);
        return undefined;
      case 'deleteNetwork':
        await ops.deleteNetwork(a.vlan, a.bridge ?? this.d.defaultBridge);
        return undefined;
      case 'fence': {
        const r = await ops.fence(a.vmIds);
        log.warn({ reason: a.reason, stopped: r.stopped, failed: r.failed }, 'fenced VMs on command');
        if (r.failed.length > 0) {
          // One failure decides the code (a lost libvirt connection → UNAVAILABLE); every VM is named.
          throw new Error(`fence failed for ${r.failed.map((f) => `${f.vmId}: ${f.error}`).join('; ')}`);
        }
        return undefined;
      }
      case 'readConsole': {
        const max = a.maxBytes > 0 ? Math.min(a.maxBytes, MAX_CONSOLE_BYTES) : DEFAULT_CONSOLE_BYTES;
        // One byte more than asked tells whether there was more.
        const text = await ops.readConsole(a.vmId, Math.min(max + 1, MAX_CONSOLE_BYTES + 1));
        const bytes = Buffer.from(text, 'utf8');
        return bytes.length > max ? { kind: 'console', data: bytes.subarray(bytes.length - max), truncated: true } : { kind: 'console', data: bytes, truncated: false };
      }
      case 'getInventory':
        return { kind: 'inventory', inventory: await this.d.inventory() };
      case 'prepareMigration':
        return { kind: 'migrationTarget', target: await ops.prepareMigration(a.spec) };
      case 'migrateVm': {
        const r = await ops.migrateVm(a.vmId, { ...a.target, sharedStorage: a.sharedStorage, ...(a.timeoutMs !== undefined ? { timeoutMs: a.timeoutMs } : {}) });
        log.info({ ms: r.ms, shared_storage: a.sharedStorage }, 'VM live-migrated to another host');
        return undefined;
      }
      case 'invalid':
        throw new SpecError(a.message);
    }
  }
}

function vmIdField(a: AgentAction): { vm_id?: string } {
  if (a.kind === 'createVm' || a.kind === 'prepareMigration') return { vm_id: a.spec.vmId };
  if ('vmId' in a) return { vm_id: a.vmId };
  return {};
}
