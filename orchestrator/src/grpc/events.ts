// EventService: the server-streaming twins of the REST event streams (WebSocket / SSE of
// http/events.ts). What a stream carries, from where it resumes and when it must end is decided
// by app/events.ts (openWorkspaceEvents, openInfraEvents); this only writes it out.
import { once } from 'node:events';
import { status as GrpcStatus, type handleServerStreamingCall, type ServerWritableStream } from '@grpc/grpc-js';
import { UnauthenticatedError, type Logger } from '@kloudak/common';
import type * as pb from '@kloudak/proto/api';
import { authenticate } from '../app/auth.js';
import { eventJson, openInfraEvents, openWorkspaceEvents, type EventSubscription, type KloudakEvent } from '../app/events.js';
import type { Caller, Principal } from '../app/principal.js';
import type { Services } from '../app/services.js';
import { WsParams } from '../http/schemas.js';
import { validate } from '../http/validate.js';
import { toGrpcError } from './status.js';
import { peerAddress, presentedToken } from './unary.js';

/** The open streams, so a shutdown can end them rather than wait for them. */
export class LiveStreams {
  private readonly subs = new Set<EventSubscription>();
  add(sub: EventSubscription): void {
    this.subs.add(sub);
    void sub.closed.then(() => this.subs.delete(sub));
  }
  closeAll(reason: string): void {
    for (const s of [...this.subs]) s.close(reason);
  }
}


/** An event as the Event message: its fields, and the very JSON the other streams send. */
export function eventMessage(e: KloudakEvent): pb.Event {
  return {
    seq: BigInt(e.seq),
    time: new Date(e.time),
    workspace: e.workspace ?? undefined,
    entity: e.entity,
    id: e.id,
    event: e.event,
    state: e.state ?? undefined,
    task: e.task ?? undefined,
    name: e.name,
    data: e.data,
    json: eventJson(e),
  };
}

/** The status a stream ends with, from why app/events.ts closed it (the WebSocket's close codes, in gRPC). */
export function endStatus(reason: string): { code: GrpcStatus; details: string } | null {
  if (reason === 'the client went away') return null;
  if (/token/.test(reason)) return { code: GrpcStatus.UNAUTHENTICATED, details: reason };
  if (/member|workspace/.test(reason)) return { code: GrpcStatus.NOT_FOUND, details: reason };
  if (/slowly/.test(reason)) return { code: GrpcStatus.RESOURCE_EXHAUSTED, details: reason };
  if (/shutting down/.test(reason)) return { code: GrpcStatus.UNAVAILABLE, details: reason };
  return { code: GrpcStatus.OK, details: reason };
}

async function principalOf(s: Services, call: ServerWritableStream<unknown, unknown>): Promise<Principal> {
  const token = presentedToken(call.metadata);
  if (token === null) throw new UnauthenticatedError();
  return authenticate(s, token);
}

/** Write a subscription out until it or the call ends; honours the client's flow control. */
async function pump<Res>(call: ServerWritableStream<unknown, Res>, sub: EventSubscription, wrap: (e: pb.Event) => Res, live: LiveStreams): Promise<void> {
  live.add(sub);
  call.on('cancelled', () => sub.close('the client went away'));
  call.on('error', () => sub.close('the client went away'));
  for await (const e of sub) {
    if (call.cancelled) break;
    if (!call.write(wrap(eventMessage(e)))) await Promise.race([once(call, 'drain'), sub.closed]);
  }
  const end = endStatus(await sub.closed);
  if (end === null || call.cancelled) return;
  if (end.code === GrpcStatus.OK) call.end();
  else call.emit('error', end);
}

function stream<Req>(
  s: Services,
  log: Logger,
  live: LiveStreams,
  open: (c: Caller, req: Req) => Promise<EventSubscription>,
): handleServerStreamingCall<Req, { event: pb.Event }> {
  return (call) => {
    const l = log.child({ grpc_method: call.getPath() });
    void (async () => {
      const principal = await principalOf(s, call as ServerWritableStream<unknown, unknown>);
      const sub = await open({ principal, address: peerAddress(call.getPeer()), log: l }, call.request);
      if (call.cancelled) {
        sub.close('the client went away');
        return;
      }
      await pump(call as ServerWritableStream<unknown, { event: pb.Event }>, sub, (event) => ({ event }), live);
    })().catch((err: unknown) => {
      const g = toGrpcError(err);
      if (g.code === GrpcStatus.INTERNAL) l.error({ err }, 'event stream failed');
      if (!call.cancelled) call.emit('error', g);
    });
  };
}

/** The EventService implementation. */
export function eventService(s: Services, log: Logger, live: LiveStreams): pb.EventServiceServer {
  return {
    watchEvents: stream(s, log, live, (c, r: pb.WatchEventsRequest) => {
      // The workspace name is checked like REST's path parameter.
      const { ws } = validate<{ ws: string }>(WsParams, { ws: r.workspace }, 'params', false);
      return openWorkspaceEvents(s, c, ws, r.since ?? null);
    }),
    watchInfraEvents: stream(s, log, live, (c, r: pb.WatchInfraEventsRequest) => openInfraEvents(s, c, r.since ?? null)),
  };
}
