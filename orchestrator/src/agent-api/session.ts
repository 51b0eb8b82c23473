// One Connect stream of an agent: what it said in Hello, how to write to it, how to end it.
import { randomUUID } from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import type { AgentMessage, OrchestratorMessage } from '@kloudak/proto/agent';
import type { AgentHello } from '../domain/agent.js';
import type { CommandWriter } from './channel.js';

/** The server side of a Connect call. */
export type Call = grpc.ServerDuplexStream<AgentMessage, OrchestratorMessage>;

/** What one agent's stream may cost the orchestrator (AgentLinkOptions.limits). */
export interface SessionLimits {
  /** Sustained messages per second the agent may send, and how many in a burst. */
  messagesPerSecond: number;
  burst: number;
  /** Largest message the agent may send, in bytes (enforced by the gRPC server). */
  maxMessageBytes: number;
  /** Messages written to the agent and not yet taken by it; past it, the session ends. */
  maxBufferedWrites: number;
}

/** One Connect stream. */
export class Session {
  readonly id = randomUUID();
  /** Serial of the client certificate the stream was opened with (a revocation ends only those). */
  serial = '';
  ended = false;
  hello: AgentHello | null = null;
  /** The session's epoch, from its claim of the host in the database (set at Hello). */
  epoch: bigint | null = null;
  /** Fence reports received and not yet stored: heartbeats wait behind them (AgentLink.connect). */
  fenceReportsInFlight = 0;
  readonly writer: CommandWriter;
  /** Token bucket of the agent's messages (starts full). */
  private tokens: number;
  private refilledAt: number;

  constructor(
    readonly hostId: string,
    private readonly call: Call,
    private readonly limits: SessionLimits,
    now: number,
  ) {
    this.writer = (command) => this.send({ body: { $case: 'command', command } });
    this.tokens = limits.burst;
    this.refilledAt = now;
  }

  /**
   * Take one message of the agent's allowance; false when it sent more than its rate allows (the
   * caller ends the session). Every message costs the orchestrator a decode and often a database
   * write, so a flooding agent is cut off before it can slow the link for the others.
   */
  admit(now: number): boolean {
    const elapsed = Math.max(0, now - this.refilledAt);
    this.refilledAt = now;
    this.tokens = Math.min(this.limits.burst, this.tokens + (elapsed * this.limits.messagesPerSecond) / 1000);
    if (this.tokens < 1) return false;
    this.tokens -= 1;
    return true;
  }

  /**
   * Write a message, or end the session when the agent has left more than its allowance unread:
   * an agent that never reads must not make the orchestrator buffer without limit (grpc-js keeps
   * every message written to a stream the peer does not drain). False when nothing was written.
   */
  send(msg: OrchestratorMessage): boolean {
    if (this.ended || this.call.destroyed || this.call.writableEnded) return false;
    if (this.call.writableLength >= this.limits.maxBufferedWrites) {
      this.end(grpc.status.RESOURCE_EXHAUSTED, `the agent left ${this.call.writableLength} messages unread`);
      return false;
    }
    this.call.write(msg);
    return true;
  }

  /** End the stream with a status (the agent sees it as the call's error). */
  end(code: grpc.status, details: string): void {
    if (this.ended) return;
    this.ended = true;
    if (this.call.destroyed || this.call.writableEnded) return;
    if (code === grpc.status.OK) this.call.end();
    else this.call.emit('error', { code, details, metadata: new grpc.Metadata() });
  }
}
