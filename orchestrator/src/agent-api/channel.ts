import { randomUUID } from 'node:crypto';
import type { Logger } from '@kloudak/common';
import type * as pb from '@kloudak/proto/agent';
import type { Clock } from '../clock.js';
import type { AgentCommand, CommandResult } from '../domain/agent.js';
import { commandToProto } from './convert.js';

/** Options of {@link AgentChannel.sendCommand}. */
export interface SendOptions {
  /** After this instant the command must not start; the promise then gives DEADLINE_EXCEEDED. */
  deadline: Date | number;
  /**
   * The command's id. A task step passes its own (derived from the step and attempt), so the same
   * attempt sent again — after a reconnect, or by a restarted orchestrator — carries the same id
   * and the agent answers it from memory or joins the run in progress. Default: a random UUID.
   */
  commandId?: string;
}

/**
 * The orchestrator's port to its agents: send a command to a host and await its one result.
 * The promise never rejects for a command failure: a failed, refused or timed-out command is a
 * CommandResult with `ok: false` and an error code (`deadline_exceeded` when the deadline passes
 * first, `unavailable` when the orchestrator shuts down).
 */
export interface AgentChannel {
  sendCommand(hostId: string, command: AgentCommand, opts: SendOptions): Promise<CommandResult>;
}

/** Writes a command on a host's current session; false when the stream could not take it. */
export type CommandWriter = (command: pb.Command) => boolean;

interface Pending {
  id: string;
  hostId: string;
  /** Serialisation key: the VM id, or null for commands not about a VM. */
  key: string | null;
  proto: pb.Command;
  deadline: number;
  resolve: (r: CommandResult) => void;
  /** Callers that sent the same id again while it was pending: they get the same result. */
  joined: ((r: CommandResult) => void)[];
  timer: NodeJS.Timeout;
  /** True once it is the command in flight for its key (it may be on the wire). */
  inFlight: boolean;
  /** True once written on a session: only then may the agent have acted on it. */
  written: boolean;
}

interface HostQueue {
  /** Commands in flight, in the order they were released (resent in that order). */
  inFlight: Map<string, Pending>;
  /** VM id → commands waiting for the one in flight on that VM. */
  waiting: Map<string, Pending[]>;
  /** VM ids with a command in flight. */
  busy: Set<string>;
}

/**
 * The agent link's implementation of {@link AgentChannel} (AGENT-LINK.md, "Commands").
 *
 * - A command gets a UUID and stays pending in memory until its result or its deadline.
 * - At most one command per VM id is in flight; the next waits for the first one's result (or
 *   deadline), so the agent never sees two commands for one VM from this orchestrator at once.
 * - A command in flight is written on the host's session when there is one, and again on every
 *   new session (after Hello): a result lost with a cut stream is recovered because the agent
 *   answers a repeated command id from memory or joins the run in progress.
 * - With no session, a command simply waits (until its deadline) for one.
 */
export class CommandChannel implements AgentChannel {
  private readonly hosts = new Map<string, HostQueue>();
  private readonly writers = new Map<string, CommandWriter>();
  /** Commands written on one session before it is attached (see {@link sendOnSession}), by id. */
  private readonly direct = new Map<string, { hostId: string; resolve: (r: CommandResult) => void; timer: NodeJS.Timeout }>();
  private closed = false;

  constructor(
    private readonly clock: Clock,
    private readonly log: Logger,
  ) {}

  sendCommand(hostId: string, command: AgentCommand, opts: SendOptions): Promise<CommandResult> {
    const id = opts.commandId ?? randomUUID();
    const deadline = typeof opts.deadline === 'number' ? opts.deadline : opts.deadline.getTime();
    if (this.closed) return Promise.resolve(failure(id, 'unavailable', 'the orchestrator is shutting down', this.clock.now()));
    // The same id while it is pending (a command routed here again, after its sender lost track of
    // it): one entry, one result for both; two entries under one id would settle each other.
    const same = this.find(hostId, id);
    if (same) return new Promise<CommandResult>((resolve) => same.joined.push(resolve));
    return new Promise<CommandResult>((resolve) => {
      const key = command.vmId ? command.vmId.toLowerCase() : null;
      const p: Pending = {
        id,
        hostId,
        key,
        proto: commandToProto(id, new Date(deadline), command),
        deadline,
        resolve,
        joined: [],
        // Timers run on real time; the delay is computed from the injected clock.
        timer: setTimeout(() => this.expire(p), Math.max(0, deadline - this.clock.now())),
        inFlight: false,
        written: false,
      };
      const q = this.queue(hostId);
      if (key !== null && q.busy.has(key)) {
        const list = q.waiting.get(key) ?? [];
        list.push(p);
        q.waiting.set(key, list);
        this.log.debug({ component: 'agent-link', host_id: hostId, vm_id: key, command_id: id }, 'command waits for the one in flight on its VM');
        return;
      }
      this.release(q, p);
    });
  }

  /**
   * Send a command on one session's `writer` only, before that session is attached (the clean-up
   * of a returning host, which must end before any other command reaches it). Not queued, not
   * resent on another session: a session that ends first leaves it to its deadline.
   */
  sendOnSession(hostId: string, writer: CommandWriter, command: AgentCommand, opts: SendOptions): Promise<CommandResult> {
    const id = opts.commandId ?? randomUUID();
    const deadline = typeof opts.deadline === 'number' ? opts.deadline : opts.deadline.getTime();
    if (this.closed) return Promise.resolve(failure(id, 'unavailable', 'the orchestrator is shutting down', this.clock.now()));
    return new Promise<CommandResult>((resolve) => {
      const timer = setTimeout(() => {
        this.direct.delete(id);
        resolve(failure(id, 'deadline_exceeded', 'no result before the deadline', this.clock.now()));
      }, Math.max(0, deadline - this.clock.now()));
      this.direct.set(id, { hostId, resolve, timer });
      if (!writer(commandToProto(id, new Date(deadline), command))) {
        clearTimeout(timer);
        this.direct.delete(id);
        resolve({ ...failure(id, 'unavailable', 'the session could not take the command', this.clock.now()), notSent: true });
      }
    });
  }

  /** Commands pending (in flight or waiting) for a host. */
  pendingCount(hostId: string): number {
    const q = this.hosts.get(hostId);
    if (!q) return 0;
    let n = q.inFlight.size;
    for (const l of q.waiting.values()) n += l.length;
    return n;
  }

  /** A session of `hostId` said Hello: from now on commands go to `writer`; in-flight ones are resent. */
  attach(hostId: string, writer: CommandWriter): void {
    this.writers.set(hostId, writer);
    const q = this.hosts.get(hostId);
    if (!q) return;
    for (const p of q.inFlight.values()) {
      this.log.info({ component: 'agent-link', host_id: hostId, vm_id: p.key ?? undefined, command_id: p.id }, 'command sent again on the new session');
      if (writer(p.proto)) p.written = true;
    }
  }

  /** The session that owned `writer` ended; a newer session's writer is left alone. */
  detach(hostId: string, writer: CommandWriter): void {
    if (this.writers.get(hostId) === writer) this.writers.delete(hostId);
  }

  /** A result arrived from `hostId`. Unknown ids (a late answer after the deadline) are ignored. */
  deliver(hostId: string, result: CommandResult): void {
    const d = this.direct.get(result.commandId);
    if (d && d.hostId === hostId) {
      this.direct.delete(result.commandId);
      clearTimeout(d.timer);
      d.resolve(result);
      return;
    }
    const q = this.hosts.get(hostId);
    const p = q?.inFlight.get(result.commandId);
    if (!q || !p) {
      this.log.debug({ component: 'agent-link', host_id: hostId, command_id: result.commandId }, 'result of a command no longer pending');
      return;
    }
    // written: false is a result of a command this process never sent: an earlier process (or
    // session) sent it under the same id, and the agent answered on the session open now.
    this.log.debug({ component: 'agent-link', host_id: hostId, command_id: p.id, written: p.written, ok: result.ok }, 'command result');
    this.finish(q, p, result);
  }

  /**
   * Take pending commands of `hostId` back without waiting for their results (command routing: the
   * host's session is on another instance now, and the caller sends them there under the same
   * ids). Each one's promise resolves with `unavailable` (notSent when it was never written); the
   * next command waiting on its VM is released. Waiting commands are taken first, so a command
   * withdrawn with the one in flight before it is never released in between. Returns, for each id
   * that was still pending, whether it was written on a session (the agent may have acted on it);
   * an id missing from the answer had its result already (or was never pending here).
   */
  withdraw(hostId: string, ids: Iterable<string>): Map<string, { written: boolean }> {
    const out = new Map<string, { written: boolean }>();
    const q = this.hosts.get(hostId);
    if (!q) return out;
    const want = new Set(ids);
    const why = 'the host\'s session moved to another orchestrator instance';
    for (const [key, list] of [...q.waiting]) {
      for (const p of [...list]) {
        if (!want.has(p.id)) continue;
        list.splice(list.indexOf(p), 1);
        out.set(p.id, { written: false });
        this.settle(p, { ...failure(p.id, 'unavailable', why, this.clock.now()), notSent: true });
      }
      if (list.length === 0) q.waiting.delete(key);
    }
    for (const p of [...q.inFlight.values()]) {
      if (!want.has(p.id)) continue;
      out.set(p.id, { written: p.written });
      this.finish(q, p, p.written ? failure(p.id, 'unavailable', why, this.clock.now()) : { ...failure(p.id, 'unavailable', why, this.clock.now()), notSent: true });
    }
    if (out.size > 0) this.log.info({ component: 'agent-link', host_id: hostId, withdrawn: out.size }, 'commands withdrawn: the host\'s session is elsewhere');
    this.cleanup(hostId, q);
    return out;
  }

  /** Answer every pending command with `unavailable` (shutdown). */
  close(): void {
    this.closed = true;
    for (const q of this.hosts.values()) {
      const all = [...q.inFlight.values(), ...[...q.waiting.values()].flat()];
      for (const p of all) {
        this.settle(p, failure(p.id, 'unavailable', 'the orchestrator is shutting down', this.clock.now()));
      }
    }
    this.hosts.clear();
    this.writers.clear();
    for (const [id, d] of this.direct) {
      clearTimeout(d.timer);
      d.resolve(failure(id, 'unavailable', 'the orchestrator is shutting down', this.clock.now()));
    }
    this.direct.clear();
  }

  private queue(hostId: string): HostQueue {
    let q = this.hosts.get(hostId);
    if (!q) {
      q = { inFlight: new Map(), waiting: new Map(), busy: new Set() };
      this.hosts.set(hostId, q);
    }
    return q;
  }

  private release(q: HostQueue, p: Pending): void {
    p.inFlight = true;
    q.inFlight.set(p.id, p);
    if (p.key !== null) q.busy.add(p.key);
    const w = this.writers.get(p.hostId);
    if (w) {
      if (w(p.proto)) {
        p.written = true;
        this.log.debug({ component: 'agent-link', host_id: p.hostId, vm_id: p.key ?? undefined, command_id: p.id }, 'command sent');
      }
    }
    else this.log.debug({ component: 'agent-link', host_id: p.hostId, command_id: p.id }, 'no session; command waits for one');
  }

  private expire(p: Pending): void {
    const q = this.hosts.get(p.hostId);
    if (!q) return;
    if (!p.inFlight && p.key !== null) {
      const list = q.waiting.get(p.key);
      const i = list?.indexOf(p) ?? -1;
      if (list && i >= 0) list.splice(i, 1);
      if (list?.length === 0) q.waiting.delete(p.key);
      this.settle(p, { ...failure(p.id, 'deadline_exceeded', 'the deadline passed before the command was sent', this.clock.now()), notSent: true });
      this.cleanup(p.hostId, q);
      return;
    }
    this.log.warn({ component: 'agent-link', host_id: p.hostId, vm_id: p.key ?? undefined, command_id: p.id }, 'command deadline passed without a result');
    const r = p.written
      ? failure(p.id, 'deadline_exceeded', 'no result before the deadline', this.clock.now())
      : { ...failure(p.id, 'deadline_exceeded', 'the host had no session before the deadline: the command was never sent', this.clock.now()), notSent: true };
    this.finish(q, p, r);
  }

  private finish(q: HostQueue, p: Pending, result: CommandResult): void {
    q.inFlight.delete(p.id);
    this.settle(p, result);
    if (p.key !== null) {
      q.busy.delete(p.key);
      const list = q.waiting.get(p.key);
      const next = list?.shift();
      if (list?.length === 0) q.waiting.delete(p.key);
      if (next) this.release(q, next);
    }
    this.cleanup(p.hostId, q);
  }

  private settle(p: Pending, result: CommandResult): void {
    clearTimeout(p.timer);
    p.resolve(result);
    for (const j of p.joined) j(result);
  }

  private find(hostId: string, id: string): Pending | undefined {
    const q = this.hosts.get(hostId);
    if (!q) return undefined;
    const p = q.inFlight.get(id);
    if (p) return p;
    for (const list of q.waiting.values()) {
      const w = list.find((x) => x.id === id);
      if (w) return w;
    }
    return undefined;
  }

  private cleanup(hostId: string, q: HostQueue): void {
    if (q.inFlight.size === 0 && q.waiting.size === 0) this.hosts.delete(hostId);
  }
}

function failure(commandId: string, code: 'deadline_exceeded' | 'unavailable', message: string, now: number): CommandResult {
  return { commandId, ok: false, error: { code, message }, completedAt: new Date(now) };
}
