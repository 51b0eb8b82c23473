// EventService: the server-streaming twins of the REST event streams (WebSocket / SSE of
// http/events.ts). What a stream carries, from where it resumes and when it must end is decided
// by app/events.ts (openWorkspaceEvents, openInfraEvents); this only writes it out.
import { once } from 'node:events';
import { Metadata, status as GrpcStatus, type handleServerStreamingCall, type ServerWritableStream } from '@grpc/grpc-js';
import { UnauthenticatedError, type Logger } from '@kloudak/common';
import { EventServiceService } from '@kloudak/proto/api';
import type * as pb from '@kloudak/proto/api';
import { authenticate } from '../app/auth.js';
import { eventJson, openInfraEvents, openWorkspaceEvents, type EventSubscription, type KloudakEvent } from '../app/events.js';
import type { Caller, Principal } from '../app/principal.js';
import type { Services } from '../app/services.js';
import { WsParams } from '../http/schemas.js';
import { validate } from '../http/validate.js';
import { toGrpcError } from './status.js';
import { peerAddress, presentedToken } from './unary.js';

/** A message of WatchEvents or WatchInfraEvents (the same fields): an event, or the first message's reset. */
type StreamMessage = pb.WatchEventsResponse & pb.WatchInfraEventsResponse;

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

/**
 * The response carrying an event, made once: the hub hands the same event object to every stream
 * of its scope, so every WatchEvents and WatchInfraEvents call writes the same message (their
 * responses have the same one field).
 */
const responses = new WeakMap<KloudakEvent, StreamMessage>();
function responseOf(e: KloudakEvent): StreamMessage {
  let r = responses.get(e);
  if (r === undefined) {
    r = { event: eventMessage(e), reset: undefined };
    responses.set(e, r);
  }
  return r;
}

/** Serialise a message once per object: grpc-js copies the bytes into each call's frame. */
function encodedOnce<T extends object>(encode: (v: T) => Buffer): (v: T) => Buffer {
  const done = new WeakMap<T, Buffer>();
  return (v) => {
    let b = done.get(v);
    if (b === undefined) {
      b = encode(v);
      done.set(v, b);
    }
    return b;
  };
}

/**
 * EventService as the server registers it: the generated definition, with each response encoded
 * once for all the streams it goes to. A thousand clients of a workspace cost one protobuf
 * encoding of an event, not a thousand (event-latency bench).
 */
export const EventServiceDefinition = {
  watchEvents: { ...EventServiceService.watchEvents, responseSerialize: encodedOnce(EventServiceService.watchEvents.responseSerialize) },
  watchInfraEvents: { ...EventServiceService.watchInfraEvents, responseSerialize: encodedOnce(EventServiceService.watchInfraEvents.responseSerialize) },
} as const;

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
async function pump(call: ServerWritableStream<unknown, StreamMessage>, sub: EventSubscription, live: LiveStreams): Promise<void> {
  live.add(sub);
  call.on('cancelled', () => sub.close('the client went away'));
  call.on('error', () => sub.close('the client went away'));
  // A resume from a pruned point: the first message carries the reset, no event.
  if (sub.reset) call.write({ event: undefined, reset: { since: BigInt(sub.reset.since), oldest: sub.reset.oldest === null ? undefined : BigInt(sub.reset.oldest), seq: BigInt(sub.reset.seq) } });
  for await (const e of sub) {
    if (call.cancelled) break;
    if (!call.write(responseOf(e))) await Promise.race([once(call, 'drain'), sub.closed]);
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
): handleServerStreamingCall<Req, StreamMessage> {
  return (call) => {
    const l = log.child({ grpc_method: call.getPath() });
    void (async () => {
      const principal = await principalOf(s, call as ServerWritableStream<unknown, unknown>);
      const sub = await open({ principal, address: peerAddress(call.getPeer()), log: l }, call.request);
      if (call.cancelled) {
        sub.close('the client went away');
        return;
      }
      // The response headers go out now, not with the first event: a client that sees them knows
      // its stream is registered (nothing committed from here on can be missed).
      call.sendMetadata(new Metadata());
      await pump(call as ServerWritableStream<unknown, StreamMessage>, sub, live);
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
