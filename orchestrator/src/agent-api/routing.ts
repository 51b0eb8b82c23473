// Command routing between orchestrator instances (issue 11, "Commands for a host reach the
// instance that holds its stream, through NATS request/reply"). Every sender of commands (the
// task engine, failover's tasks, the API's console reads) uses a CommandRouter: it sends through
// the local CommandChannel when this instance holds the host's session (or nobody is known to),
// and otherwise asks the holder over NATS, which runs the command through its own CommandChannel
// under the same command id. The agent answers a repeated id from memory or joins the run in
// progress, which is what makes re-sending a command to wherever the session went safe.
import type { Logger } from '@kloudak/common';
import type { Msg, NatsConnection, Subscription } from '@nats-io/transport-node';
import { Type, type Static } from '@sinclair/typebox';
import { TypeCompiler } from '@sinclair/typebox/compiler';
import { randomUUID } from 'node:crypto';
import type { Clock } from '../clock.js';
import type { AgentCommand, CommandErrorCode, CommandResult, HostInventory } from '../domain/agent.js';
import type { AgentChannel, CommandChannel, SendOptions } from './channel.js';
import type { SessionDirectory, SessionHolder } from './directory.js';

/** Version of the routed request and reply bodies (JSON). */
const WIRE_VERSION = 1;

/** How long past a command's deadline the sender waits for the holder's own verdict. */
const REPLY_GRACE_MS = 1000;

/** Re-routing after a holder said "not here": the first wait, doubled up to the last. */
const RETRY_MIN_MS = 50;
const RETRY_MAX_MS = 1000;

/** How often every routed command's route is checked against the directory (besides its changes). */
const SWEEP_MS = 1000;

// ---------- the wire (JSON over core NATS: no proto type leaves agent-api/convert.ts) ----------

const Str = (max = 1024) => Type.String({ maxLength: max });
const Nic = Type.Object({
  networkId: Str(64),
  mac: Str(32),
  bridge: Str(64),
  vlan: Type.Integer({ minimum: 0, maximum: 4094 }),
  address: Str(64),
  gateway: Str(64),
  dnsServers: Type.Array(Str(64), { maxItems: 16 }),
});
const Bridges = Type.Array(Str(64), { maxItems: 64 });
const VmFields = {
  hostname: Str(255),
  cpu: Type.Integer({ minimum: 0 }),
  ramMb: Type.Integer({ minimum: 0 }),
  diskGb: Type.Integer({ minimum: 0 }),
  pool: Str(255),
  templateVolume: Str(1024),
  nics: Type.Array(Nic, { maxItems: 64 }),
  sshAuthorizedKeys: Type.Array(Str(16_384), { maxItems: 256 }),
  passwordHash: Str(1024),
  ha: Type.Boolean(),
  boot: Type.Optional(Type.Object({ kernel: Str(4096), initrd: Str(4096), cmdline: Str(4096) })),
  userData: Type.Optional(Str(1024 * 1024)),
};
const MigrationTarget = Type.Object({ libvirtUri: Str(1024), migrateUri: Str(1024), domainXml: Str(1024 * 1024) });
const Action = Type.Union([
  Type.Object({ kind: Type.Literal('prepareMigration'), vm: Type.Object(VmFields) }),
  Type.Object({ kind: Type.Literal('migrateVm'), target: MigrationTarget, sharedStorage: Type.Boolean(), timeoutMs: Type.Integer({ minimum: 0 }) }),
  Type.Object({
    kind: Type.Literal('createVm'),
    hostname: Str(255),
    cpu: Type.Integer({ minimum: 0 }),
    ramMb: Type.Integer({ minimum: 0 }),
    diskGb: Type.Integer({ minimum: 0 }),
    pool: Str(255),
    templateVolume: Str(1024),
    nics: Type.Array(Nic, { maxItems: 64 }),
    sshAuthorizedKeys: Type.Array(Str(16_384), { maxItems: 256 }),
    passwordHash: Str(1024),
    ha: Type.Boolean(),
    boot: Type.Optional(Type.Object({ kernel: Str(4096), initrd: Str(4096), cmdline: Str(4096) })),
    userData: Type.Optional(Str(1024 * 1024)),
    recover: Type.Optional(Type.Object({ start: Type.Boolean() })),
  }),
  Type.Object({ kind: Type.Literal('deleteVm'), pool: Str(255), bridges: Bridges }),
  Type.Object({ kind: Type.Literal('evictVm'), bridges: Bridges }),
  Type.Object({ kind: Type.Literal('startVm') }),
  Type.Object({ kind: Type.Literal('stopVm'), timeoutMs: Type.Integer({ minimum: 0 }), force: Type.Boolean() }),
  Type.Object({ kind: Type.Literal('rebootVm') }),
  Type.Object({ kind: Type.Literal('attachInterface'), index: Type.Integer({ minimum: 0 }), nic: Nic }),
  Type.Object({ kind: Type.Literal('detachInterface'), index: Type.Integer({ minimum: 0 }), nic: Nic }),
  Type.Object({ kind: Type.Literal('ensureNetwork'), networkId: Str(64), vlan: Type.Integer({ minimum: 0, maximum: 4094 }), bridge: Str(64) }),
  Type.Object({ kind: Type.Literal('deleteNetwork'), networkId: Str(64), vlan: Type.Integer({ minimum: 0, maximum: 4094 }), bridge: Str(64) }),
  Type.Object({ kind: Type.Literal('fence'), vmIds: Type.Array(Str(64), { maxItems: 10_000 }), reason: Str(1024) }),
  Type.Object({ kind: Type.Literal('readConsole'), maxBytes: Type.Integer({ minimum: 0 }) }),
  Type.Object({ kind: Type.Literal('getInventory') }),
]);
const UUID = Type.String({ pattern: '^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$' });

/** A routed command, as the holder's responder receives it. */
const RoutedRequestSchema = Type.Object({
  v: Type.Literal(WIRE_VERSION),
  hostId: UUID,
  commandId: Type.String({ minLength: 1, maxLength: 128 }),
  /** Milliseconds since the epoch: the command's deadline, the same on both instances. */
  deadline: Type.Number(),
  command: Type.Object({ vmId: Type.Optional(Str(64)), action: Action }),
  /** The sending instance (logs). */
  from: Type.Optional(Str(64)),
});
type RoutedRequest = Static<typeof RoutedRequestSchema>;
const requestCheck = TypeCompiler.Compile(RoutedRequestSchema);

// The schema must describe the domain's command: a change there breaks the build here.
const _schemaCoversCommand: (c: RoutedRequest['command']) => AgentCommand = (c) => c;
void _schemaCoversCommand;

/** A CommandResult as JSON (dates as ISO strings, console bytes in base64). */
interface WireResult {
  commandId: string;
  ok: boolean;
  error?: { code: CommandErrorCode; message: string };
  completedAt: string;
  inventory?: HostInventory;
  console?: { data: string; truncated: boolean };
  migrationTarget?: { libvirtUri: string; migrateUri: string; domainXml: string };
  notSent?: boolean;
}

/**
 * The holder's reply: the command's result; "moved" when this instance does not (or no longer)
 * hold the host's session — `written` tells whether the command reached the agent from here, so
 * the sender knows whether it may have acted; "error" for a request it could not read.
 */
export type RoutedReply =
  | { v: typeof WIRE_VERSION; kind: 'result'; result: WireResult }
  | { v: typeof WIRE_VERSION; kind: 'moved'; written: boolean }
  | { v: typeof WIRE_VERSION; kind: 'error'; message: string };

function resultToWire(r: CommandResult): WireResult {
  return {
    commandId: r.commandId,
    ok: r.ok,
    ...(r.error ? { error: r.error } : {}),
    completedAt: r.completedAt.toISOString(),
    ...(r.inventory ? { inventory: r.inventory } : {}),
    ...(r.console ? { console: { data: r.console.data.toString('base64'), truncated: r.console.truncated } } : {}),
    ...(r.migrationTarget ? { migrationTarget: r.migrationTarget } : {}),
    ...(r.notSent ? { notSent: true } : {}),
  };
}

function resultFromWire(w: WireResult): CommandResult {
  const completedAt = new Date(w.completedAt);
  return {
    commandId: w.commandId,
    ok: w.ok === true,
    ...(w.error ? { error: { code: w.error.code, message: String(w.error.message) } } : {}),
    completedAt: Number.isNaN(completedAt.getTime()) ? new Date() : completedAt,
    ...(w.inventory ? { inventory: w.inventory } : {}),
    ...(w.console ? { console: { data: Buffer.from(w.console.data, 'base64'), truncated: w.console.truncated } } : {}),
    ...(w.migrationTarget
      ? { migrationTarget: { libvirtUri: String(w.migrationTarget.libvirtUri), migrateUri: String(w.migrationTarget.migrateUri), domainXml: String(w.migrationTarget.domainXml) } }
      : {}),
    ...(w.notSent ? { notSent: true } : {}),
  };
}

/** Read a holder's reply; null when it is not one. */
function parseReply(m: Msg): RoutedReply | null {
  try {
    const r = m.json<RoutedReply>();
    if (r === null || typeof r !== 'object' || r.v !== WIRE_VERSION) return null;
    if (r.kind === 'result' && r.result && typeof r.result === 'object' && typeof r.result.ok === 'boolean' && typeof r.result.commandId === 'string') return r;
    if (r.kind === 'moved' && typeof r.written === 'boolean') return r;
    if (r.kind === 'error' && typeof r.message === 'string') return r;
    return null;
  } catch {
    return null;
  }
}

// ---------- the router ----------

/** Dependencies of a {@link CommandRouter}. */
export interface CommandRouterDeps {
  /** This instance's channel to the sessions it holds. */
  local: CommandChannel;
  /** Which instance holds each host's session. */
  directory: SessionDirectory;
  /** This instance: its id, and the subject its responder listens on. */
  instance: { id: string; subject: string };
  nc: NatsConnection;
  clock: Clock;
  log: Logger;
}

/** Where one command is being sent now. */
type Hop =
  | { kind: 'local'; moved: (written: boolean) => void }
  | { kind: 'remote'; instanceId: string; moved: (written: boolean) => void };

/** A command this instance sends (one call of {@link CommandRouter.sendCommand}). */
interface Outgoing {
  id: string;
  hostId: string;
  command: AgentCommand;
  deadline: number;
  hop: Hop | null;
  /** True once any hop may have delivered it to the agent: a final failure is then never notSent. */
  mayHaveActed: boolean;
  done: boolean;
  resolve: (r: CommandResult) => void;
}

/** A command another instance routed here, pending in the local channel. */
interface Incoming {
  hostId: string;
  commandId: string;
  /** Reply subjects of the requests that carried it (a sender that lost track of it may ask again). */
  replies: Msg[];
}

type HopOutcome = { kind: 'result'; result: CommandResult } | { kind: 'moved'; written: boolean; refresh: boolean };

/**
 * The {@link AgentChannel} of an orchestrator that runs beside others (ha/README.md, "Commands").
 *
 * Sending: a command goes to the local channel when this instance holds the host's session or
 * nobody is known to (it then waits there for a session, as with one orchestrator); when the
 * directory names another live instance, it is sent to that instance's subject as a NATS request
 * with its id and deadline. Whenever the directory changes (or a holder answers "moved"), the
 * command follows the session: a local one is withdrawn from the local channel, a remote one's
 * request is abandoned, and it is sent where the session is now — always under the same id, so
 * the agent runs it once. The caller gets exactly one result: the first hop's result that was
 * not abandoned. `notSent` is kept only when no hop may have delivered the command.
 *
 * Answering (the responder on this instance's subject): a routed command for a host whose session
 * is here goes into the local channel under its id (so it is serialised per VM with every other
 * command for that host), and the reply is its result. When the session leaves this instance
 * while the command is pending, the command is withdrawn and the reply is "moved" (with whether
 * it was written), so the sender re-routes rather than waiting for its deadline.
 *
 * NATS down: commands for hosts held elsewhere wait in the local channel (for a session here)
 * until NATS is back or the deadline passes; a warning says so.
 */
export class CommandRouter implements AgentChannel {
  private readonly outgoing = new Map<string, Set<Outgoing>>();
  /** Commands routed here, by host id and command id (see {@link key}). */
  private readonly incoming = new Map<string, Incoming>();
  private readonly log: Logger;
  private sub: Subscription | undefined;
  private sweep: NodeJS.Timeout | undefined;
  private unlisten: (() => void) | undefined;
  private natsUp: boolean;
  private closed = false;
  private readonly waiters = new Map<string, Set<() => void>>();

  constructor(private readonly deps: CommandRouterDeps) {
    this.log = deps.log.child({ component: 'agent-routing', instance_id: deps.instance.id });
    this.natsUp = !deps.nc.isClosed();
  }

  /** Answer routed commands on this instance's subject, and follow the directory. */
  async start(): Promise<void> {
    const { nc } = this.deps;
    this.sub = nc.subscribe(this.deps.instance.subject, {
      callback: (err, msg) => {
        if (err) {
          this.log.warn({ err }, 'routed command subscription failed');
          return;
        }
        this.answer(msg);
      },
    });
    await nc.flush();
    this.unlisten = this.deps.directory.onChange((hostId) => this.follow(hostId));
    this.sweep = setInterval(() => {
      for (const hostId of new Set([...this.outgoing.keys(), ...[...this.incoming.values()].map((i) => i.hostId)])) this.follow(hostId);
    }, SWEEP_MS);
    this.sweep.unref();
    void (async () => {
      for await (const s of nc.status()) {
        if (s.type === 'disconnect' || s.type === 'close') {
          // The connection this instance closes at shutdown is no outage.
          if (this.natsUp && !this.closed) this.log.warn({ nats: s.type }, 'NATS is down: commands for hosts held by other instances wait here for a session until it is back');
          this.natsUp = false;
        } else if (s.type === 'reconnect') {
          this.natsUp = true;
          this.log.info({}, 'NATS is back: commands are routed again');
        } else continue;
        for (const hostId of [...this.outgoing.keys()]) this.follow(hostId);
      }
    })().catch(() => undefined);
  }

  /** See {@link AgentChannel.sendCommand}. */
  sendCommand(hostId: string, command: AgentCommand, opts: SendOptions): Promise<CommandResult> {
    const id = opts.commandId ?? randomUUID();
    const deadline = typeof opts.deadline === 'number' ? opts.deadline : opts.deadline.getTime();
    if (this.closed) return Promise.resolve({ ...failure(id, 'unavailable', 'the orchestrator is shutting down', this.deps.clock.now()), notSent: true });
    return new Promise<CommandResult>((resolve) => {
      const c: Outgoing = { id, hostId, command, deadline, hop: null, mayHaveActed: false, done: false, resolve };
      let set = this.outgoing.get(hostId);
      if (!set) this.outgoing.set(hostId, (set = new Set()));
      set.add(c);
      this.run(c).then(
        (r) => this.settle(c, r),
        (err: unknown) => {
          this.log.error({ err, host_id: hostId, command_id: id }, 'routing a command failed');
          this.settle(c, failure(id, 'internal', 'routing the command failed', this.deps.clock.now(), !c.mayHaveActed));
        },
      );
    });
  }

  /** Commands this instance is sending, and commands routed here that are pending (tests, metrics). */
  pending(): { outgoing: number; incoming: number } {
    let outgoing = 0;
    for (const s of this.outgoing.values()) outgoing += s.size;
    return { outgoing, incoming: this.incoming.size };
  }

  /**
   * Stop: commands routed here are withdrawn and answered "moved" (their senders re-route them, the
   * host's agent reconnects elsewhere), this instance's own commands end `unavailable`, and the
   * responder unsubscribes. Call before the local channel closes.
   */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.sweep);
    this.unlisten?.();
    const byHost = new Map<string, string[]>();
    for (const inc of this.incoming.values()) byHost.set(inc.hostId, [...(byHost.get(inc.hostId) ?? []), inc.commandId]);
    for (const [hostId, ids] of byHost) this.giveBack(hostId, ids);
    for (const set of this.outgoing.values()) {
      for (const c of set) {
        if (c.hop?.kind === 'local') {
          const w = this.deps.local.withdraw(c.hostId, [c.id]).get(c.id);
          if (w?.written) c.mayHaveActed = true;
        } else if (c.hop?.kind === 'remote') c.mayHaveActed = true;
        this.settle(c, failure(c.id, 'unavailable', 'the orchestrator is shutting down', this.deps.clock.now(), !c.mayHaveActed));
      }
    }
    for (const ws of this.waiters.values()) for (const w of ws) w();
    try {
      await this.sub?.drain();
    } catch {
      this.sub?.unsubscribe();
    }
  }

  // ---------- sending ----------

  /** Where commands for `hostId` go now: here, or the holder on another instance. */
  private target(hostId: string): 'local' | SessionHolder {
    const h = this.deps.directory.holder(hostId);
    if (!h || h.instanceId === this.deps.instance.id) return 'local';
    if (!this.natsUp || this.deps.nc.isClosed()) return 'local';
    return h;
  }

  /** Send `c` hop after hop until one gives its result (or the deadline passes). */
  private async run(c: Outgoing): Promise<CommandResult> {
    let wait = RETRY_MIN_MS;
    let last: string | undefined;
    for (;;) {
      if (c.done) return failure(c.id, 'unavailable', 'the command was settled', this.deps.clock.now());
      const left = c.deadline - this.deps.clock.now();
      if (left <= 0 && c.hop !== null) {
        return failure(c.id, 'deadline_exceeded', 'no result before the deadline', this.deps.clock.now(), !c.mayHaveActed);
      }
      const t = this.target(c.hostId);
      const where = t === 'local' ? 'local' : t.instanceId;
      if (t !== 'local' || last !== undefined) {
        this.log.debug({ host_id: c.hostId, vm_id: c.command.vmId, command_id: c.id, to: where }, 'command routed');
      }
      if (t === 'local' && this.deps.directory.holder(c.hostId) && this.deps.directory.holder(c.hostId)?.instanceId !== this.deps.instance.id) {
        this.log.warn({ host_id: c.hostId, command_id: c.id }, 'NATS is down: the command waits for a session of its host on this instance');
      }
      const out = t === 'local' ? await this.viaLocal(c) : await this.viaRemote(c, t);
      if (out.kind === 'result') {
        const r = out.result;
        return r.notSent && c.mayHaveActed ? withoutNotSent(r) : r;
      }
      if (out.written) c.mayHaveActed = true;
      if (this.closed) return failure(c.id, 'unavailable', 'the orchestrator is shutting down', this.deps.clock.now(), !c.mayHaveActed);
      if (out.refresh) {
        // The holder said "not here" (or could not be reached): read where the session is now,
        // and if that is still the same place, give it a moment to move (growing waits).
        await this.deps.directory.refresh();
        const again = this.target(c.hostId);
        if ((again === 'local' ? 'local' : again.instanceId) === where) {
          await this.changeOrTimeout(c.hostId, Math.min(wait, Math.max(0, c.deadline - this.deps.clock.now())));
          wait = Math.min(RETRY_MAX_MS, wait * 2);
        } else wait = RETRY_MIN_MS;
      }
      last = where;
      this.log.info({ host_id: c.hostId, vm_id: c.command.vmId, command_id: c.id, from: where, written: out.written }, 'the host\'s session is elsewhere: command re-routed');
    }
  }

  private viaLocal(c: Outgoing): Promise<HopOutcome> {
    return new Promise<HopOutcome>((resolve) => {
      let over = false;
      const hop: Hop = {
        kind: 'local',
        moved: (written) => {
          if (over) return;
          over = true;
          resolve({ kind: 'moved', written, refresh: false });
        },
      };
      c.hop = hop;
      void this.deps.local.sendCommand(c.hostId, c.command, { deadline: c.deadline, commandId: c.id }).then((r) => {
        if (over) return; // withdrawn: the command follows its session
        over = true;
        resolve({ kind: 'result', result: r });
      });
    });
  }

  private viaRemote(c: Outgoing, to: SessionHolder): Promise<HopOutcome> {
    return new Promise<HopOutcome>((resolve) => {
      let over = false;
      const end = (o: HopOutcome) => {
        if (over) return;
        over = true;
        resolve(o);
      };
      // Abandoned (the directory moved the session elsewhere): the holder may have written it.
      c.hop = { kind: 'remote', instanceId: to.instanceId, moved: (written) => end({ kind: 'moved', written, refresh: false }) };
      const req: RoutedRequest = { v: WIRE_VERSION, hostId: c.hostId, commandId: c.id, deadline: c.deadline, command: c.command, from: this.deps.instance.id };
      const timeout = Math.max(1, c.deadline - this.deps.clock.now()) + REPLY_GRACE_MS;
      let p: Promise<Msg>;
      try {
        p = this.deps.nc.request(to.subject, JSON.stringify(req), { timeout });
      } catch (err) {
        p = Promise.reject(err instanceof Error ? err : new Error(String(err)));
      }
      p.then(
        (m) => {
          const r = parseReply(m);
          if (r === null) {
            // Not a reply this version can read: the command may have run there; ask again.
            this.log.error({ host_id: c.hostId, command_id: c.id, instance: to.instanceId }, 'unreadable reply to a routed command');
            end({ kind: 'moved', written: true, refresh: true });
          } else if (r.kind === 'result') end({ kind: 'result', result: resultFromWire(r.result) });
          else if (r.kind === 'moved') end({ kind: 'moved', written: r.written, refresh: true });
          else {
            this.log.error({ host_id: c.hostId, command_id: c.id, instance: to.instanceId, message: r.message }, 'the holder refused a routed command');
            end({ kind: 'result', result: failure(c.id, 'internal', `the orchestrator holding the host's session refused the command: ${r.message}`, this.deps.clock.now(), true) });
          }
        },
        (err: unknown) => {
          const e = err as { name?: string; message?: string; isNoResponders?: () => boolean; cause?: { name?: string } };
          if (typeof e.isNoResponders === 'function' && e.isNoResponders()) {
            // Nobody listens on that subject: the instance is gone; nobody received the command.
            this.log.info({ host_id: c.hostId, command_id: c.id, instance: to.instanceId }, 'the instance holding the session does not answer (gone?): directory read again');
            end({ kind: 'moved', written: false, refresh: true });
          } else if (e.name === 'InvalidArgumentError') {
            // Refused before it left (larger than NATS takes): no other route would take it either.
            this.log.error({ host_id: c.hostId, command_id: c.id, err: e.message }, 'routed command refused by NATS');
            end({ kind: 'result', result: failure(c.id, 'invalid_argument', `the command cannot be routed to the orchestrator holding the host's session: ${e.message ?? 'refused'}`, this.deps.clock.now(), true) });
          } else if (e.name === 'TimeoutError' || e.cause?.name === 'TimeoutError') {
            end({ kind: 'result', result: failure(c.id, 'deadline_exceeded', 'no result from the orchestrator holding the host\'s session before the deadline', this.deps.clock.now(), false) });
          } else {
            // NATS itself failed (closed, draining, disconnected): where it went is unknown.
            this.log.warn({ host_id: c.hostId, command_id: c.id, err: e.message }, 'routing over NATS failed');
            this.natsUp = this.natsUp && !this.deps.nc.isClosed();
            end({ kind: 'moved', written: true, refresh: true });
          }
        },
      );
    });
  }

  /** Move `hostId`'s commands to where its session is now (a directory change, or the sweep). */
  private follow(hostId: string): void {
    for (const w of this.waiters.get(hostId) ?? []) w();
    const holder = this.deps.directory.holder(hostId);
    const here = holder !== undefined && holder.instanceId === this.deps.instance.id;
    const t = this.target(hostId);
    // This instance's own commands sent locally, now held elsewhere.
    const localOwn = t === 'local' ? [] : [...(this.outgoing.get(hostId) ?? [])].filter((c) => c.hop?.kind === 'local' && !c.done);
    // Commands routed here, for a host whose session is not (or no longer) here.
    const routedIn = here ? [] : [...this.incoming.values()].filter((inc) => inc.hostId === hostId).map((inc) => inc.commandId);
    if (localOwn.length > 0 || routedIn.length > 0) {
      const withdrawn = this.deps.local.withdraw(hostId, [...routedIn, ...localOwn.map((c) => c.id)]);
      for (const id of routedIn) {
        const w = withdrawn.get(id);
        if (w) this.replyIncoming(hostId, id, { v: WIRE_VERSION, kind: 'moved', written: w.written });
      }
      for (const c of localOwn) {
        const w = withdrawn.get(c.id);
        if (w && c.hop?.kind === 'local') c.hop.moved(w.written);
      }
    }
    // This instance's commands waiting on another instance that no longer holds the session.
    for (const c of this.outgoing.get(hostId) ?? []) {
      if (c.hop?.kind === 'remote' && (t === 'local' || t.instanceId !== c.hop.instanceId)) c.hop.moved(true);
    }
  }

  private changeOrTimeout(hostId: string, ms: number): Promise<void> {
    return new Promise<void>((resolve) => {
      let set = this.waiters.get(hostId);
      if (!set) this.waiters.set(hostId, (set = new Set()));
      const done = () => {
        clearTimeout(timer);
        set.delete(done);
        if (set.size === 0 && this.waiters.get(hostId) === set) this.waiters.delete(hostId);
        resolve();
      };
      const timer = setTimeout(done, ms);
      set.add(done);
    });
  }

  private settle(c: Outgoing, r: CommandResult): void {
    if (c.done) return;
    c.done = true;
    const set = this.outgoing.get(c.hostId);
    set?.delete(c);
    if (set?.size === 0) this.outgoing.delete(c.hostId);
    c.resolve(r);
  }

  // ---------- answering ----------

  /** A routed command arrived on this instance's subject. */
  private answer(msg: Msg): void {
    if (!msg.reply) {
      this.log.warn({}, 'routed command without a reply subject: ignored');
      return;
    }
    let req: unknown;
    try {
      req = msg.json();
    } catch {
      this.reply(msg, { v: WIRE_VERSION, kind: 'error', message: 'the request is not JSON' });
      this.log.warn({}, 'routed command refused: not JSON');
      return;
    }
    if (!requestCheck.Check(req)) {
      const first = requestCheck.Errors(req).First();
      const message = `invalid routed command${first ? ` at ${first.path || '/'}: ${first.message}` : ''}`;
      this.reply(msg, { v: WIRE_VERSION, kind: 'error', message });
      this.log.warn({ problem: message }, 'routed command refused');
      return;
    }
    // Host ids are lower-case everywhere (the database's uuid text): a request is read the same way.
    const r = { ...req, hostId: req.hostId.toLowerCase() };
    const log = { host_id: r.hostId, vm_id: r.command.vmId, command_id: r.commandId, from: r.from };
    const holder = this.deps.directory.holder(r.hostId);
    if (this.closed || !holder || holder.instanceId !== this.deps.instance.id) {
      this.log.info(log, 'routed command for a host whose session is not here: answered "moved"');
      this.reply(msg, { v: WIRE_VERSION, kind: 'moved', written: false });
      return;
    }
    const k = key(r.hostId, r.commandId);
    const known = this.incoming.get(k);
    if (known) {
      // Sent again (its sender re-routed it, or lost its first request): one run, every request answered.
      known.replies.push(msg);
      return;
    }
    const inc: Incoming = { hostId: r.hostId, commandId: r.commandId, replies: [msg] };
    this.incoming.set(k, inc);
    this.log.debug(log, 'routed command taken');
    void this.deps.local.sendCommand(r.hostId, r.command, { deadline: r.deadline, commandId: r.commandId }).then((result) => {
      if (this.incoming.get(k) !== inc) return; // withdrawn and answered "moved"
      this.replyIncoming(r.hostId, r.commandId, this.fitting(result));
    });
  }

  /**
   * The reply carrying `result`, within what NATS takes in one message: a console tail too large
   * is cut at its start (it is a tail: `truncated` says so); any other result too large becomes a
   * failure (the agent did act: never notSent).
   */
  private fitting(result: CommandResult): RoutedReply {
    const max = (this.deps.nc.info?.max_payload ?? 1024 * 1024) - 1024;
    const reply: RoutedReply = { v: WIRE_VERSION, kind: 'result', result: resultToWire(result) };
    const size = Buffer.byteLength(JSON.stringify(reply));
    if (size <= max) return reply;
    if (result.console) {
      const over = size - max;
      // Base64 takes 4 characters for 3 bytes: drop enough bytes from the start, in whole groups.
      const drop = Math.min(result.console.data.length, Math.ceil(over / 4) * 3 + 3);
      return { v: WIRE_VERSION, kind: 'result', result: resultToWire({ ...result, console: { data: result.console.data.subarray(drop), truncated: true } }) };
    }
    this.log.error({ command_id: result.commandId, bytes: size, max_bytes: max }, 'a command result is too large to route');
    return { v: WIRE_VERSION, kind: 'result', result: resultToWire(failure(result.commandId, 'resource_exhausted', `the result (${size} bytes) is too large to route between orchestrators`, this.deps.clock.now())) };
  }

  /** Withdraw commands routed here for `hostId` and answer them "moved" (shutdown). */
  private giveBack(hostId: string, ids: string[]): void {
    const withdrawn = this.deps.local.withdraw(hostId, ids);
    for (const id of ids) this.replyIncoming(hostId, id, { v: WIRE_VERSION, kind: 'moved', written: withdrawn.get(id)?.written ?? true });
  }

  private replyIncoming(hostId: string, commandId: string, reply: RoutedReply): void {
    const k = key(hostId, commandId);
    const inc = this.incoming.get(k);
    if (!inc) return;
    this.incoming.delete(k);
    for (const m of inc.replies) this.reply(m, reply);
  }

  private reply(m: Msg, r: RoutedReply): void {
    try {
      m.respond(JSON.stringify(r));
    } catch (err) {
      this.log.warn({ err }, 'could not answer a routed command (NATS down?): its sender re-routes or times out');
    }
  }
}

/** The key of a routed command: ids are unique per host (a task step's), not necessarily across hosts. */
function key(hostId: string, commandId: string): string {
  return `${hostId.toLowerCase()} ${commandId}`;
}

function failure(commandId: string, code: CommandErrorCode, message: string, now: number, notSent = false): CommandResult {
  return { commandId, ok: false, error: { code, message }, completedAt: new Date(now), ...(notSent ? { notSent: true } : {}) };
}

function withoutNotSent(r: CommandResult): CommandResult {
  const { notSent: _, ...rest } = r;
  return rest;
}
