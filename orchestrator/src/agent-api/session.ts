// One Connect stream of an agent: what it said in Hello, how to write to it, how to end it.
import { randomUUID } from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import type { AgentMessage, OrchestratorMessage } from '@kloudak/proto/agent';
import type { AgentHello } from '../domain/agent.js';
import type { CommandWriter } from './channel.js';

/** The server side of a Connect call. */
export type Call = grpc.ServerDuplexStream<AgentMessage, OrchestratorMessage>;

/** One Connect stream. */
export class Session {
  readonly id = randomUUID();
  ended = false;
  hello: AgentHello | null = null;
  readonly writer: CommandWriter;

  constructor(
    readonly hostId: string,
    private readonly call: Call,
  ) {
    this.writer = (command) => this.send({ body: { $case: 'command', command } });
  }

  send(msg: OrchestratorMessage): boolean {
    if (this.ended || this.call.destroyed || this.call.writableEnded) return false;
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
