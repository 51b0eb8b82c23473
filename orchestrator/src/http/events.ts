// The event streams of the REST API, beside Koa on the same server: a WebSocket (the `ws`
// library; no frame parsing here) or Server-Sent Events at /api/v1/workspaces/{ws}/events for a
// workspace's members, and /api/v1/events for admins (infrastructure). Both call the use cases of
// app/events.ts; what a stream carries, and when it must end, is decided there.
import { randomUUID } from 'node:crypto';
import type { IncomingMessage, RequestListener, Server, ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import { WebSocketServer, type WebSocket } from 'ws';
import { KloudakError, UnauthenticatedError } from '@kloudak/common';
import { authenticate } from '../app/auth.js';
import { eventJson, openInfraEvents, openWorkspaceEvents, parseSince, resetJson, type EventSubscription } from '../app/events.js';
import type { Caller, Principal } from '../app/principal.js';
import type { Services } from '../app/services.js';
import { errorResponse, HTTP_STATUS, toKloudakError } from './errors.js';

const WORKSPACE_EVENTS = /^\/api\/v1\/workspaces\/([^/]+)\/events\/?$/;
const INFRA_EVENTS = /^\/api\/v1\/events\/?$/;
const BEARER = /^Bearer ([A-Za-z0-9._~+/=-]{1,8192})$/;
const TOKEN = /^[A-Za-z0-9._~+/=-]{1,8192}$/;
/** How long a browser has to send its token as the first message. */
const FIRST_MESSAGE_MS = 10_000;
/** Bytes a WebSocket may have waiting to be sent before its stream is ended. */
const MAX_BUFFERED = 8 * 1024 * 1024;
/** Keep-alives: idle proxies close silent connections. */
const KEEPALIVE_MS = 25_000;


/** WebSocket close codes: 4000 + the HTTP status the same failure answers elsewhere. */
function closeCode(status: number): number {
  return 4000 + status;
}

interface Target {
  /** Workspace name, or null for the infrastructure stream. */
  ws: string | null;
  since: bigint | null;
  token: string | null;
}

function target(req: IncomingMessage): Target | null {
  const url = new URL(req.url ?? '/', 'http://x');
  const m = WORKSPACE_EVENTS.exec(url.pathname);
  if (!m && !INFRA_EVENTS.test(url.pathname)) return null;
  let ws: string | null = null;
  if (m) {
    try {
      ws = decodeURIComponent(m[1]!);
    } catch {
      ws = m[1]!;
    }
  }
  const lastEventId = req.headers['last-event-id'];
  const since = parseSince(url.searchParams.get('since') ?? (typeof lastEventId === 'string' ? lastEventId : null), url.searchParams.has('since') ? '/since' : '/Last-Event-ID');
  return { ws, since, token: presentedToken(req, url) };
}

/** The token of the Authorization header, the `token` header, or `?token=` (for EventSource and browsers' WebSocket). */
function presentedToken(req: IncomingMessage, url: URL): string | null {
  const auth = req.headers.authorization;
  if (auth) {
    const m = BEARER.exec(auth);
    if (!m) throw new UnauthenticatedError('Authorization header must be "Bearer <token>"');
    return m[1]!;
  }
  const t = req.headers['token'] ?? url.searchParams.get('token');
  if (typeof t === 'string' && t !== '') {
    if (!TOKEN.test(t)) throw new UnauthenticatedError('token is malformed');
    return t;
  }
  return null;
}

/** The event streams' handlers, to put beside the Koa app on the HTTP server. */
export interface EventStreams {
  /** Wrap the Koa callback: SSE requests of the event paths are answered here, the rest by Koa. */
  wrap(next: RequestListener): RequestListener;
  /** Take WebSocket upgrades of `server` (others are refused). */
  attach(server: Server): void;
  /** Open WebSocket and SSE streams now (tests, metrics). */
  readonly open: number;
  /** End every stream (shutdown). */
  close(): void;
}

/** Build the WebSocket and SSE endpoints over the application layer. */
export function eventStreams(s: Services): EventStreams {
  const wss = new WebSocketServer({ noServer: true, maxPayload: 16 * 1024 });
  const live = new Set<EventSubscription>();

  const caller = (principal: Principal | null, req: IncomingMessage, requestId: string): Caller => ({
    principal,
    address: req.socket.remoteAddress ?? '',
    log: s.log.child({ request_id: requestId }),
  });

  async function open(t: Target, token: string | null, req: IncomingMessage, requestId: string): Promise<EventSubscription> {
    if (token === null) throw new UnauthenticatedError();
    const c = caller(await authenticate(s, token), req, requestId);
    const sub = t.ws === null ? await openInfraEvents(s, c, t.since) : await openWorkspaceEvents(s, c, t.ws, t.since);
    live.add(sub);
    void sub.closed.then(() => live.delete(sub));
    return sub;
  }

  function answerError(res: ServerResponse, err: unknown, requestId: string): void {
    const kerr = toKloudakError(err);
    const { status, body } = errorResponse(kerr, requestId);
    if (status >= 500) s.log.error({ err, request_id: requestId }, 'event stream failed');
    res.writeHead(status, {
      'content-type': 'application/json; charset=utf-8',
      'x-request-id': requestId,
      ...(kerr.code === 'unauthenticated' ? { 'www-authenticate': 'Bearer' } : {}),
    });
    res.end(JSON.stringify(body));
  }

  async function sse(req: IncomingMessage, res: ServerResponse, t: Target, requestId: string): Promise<void> {
    let sub: EventSubscription;
    try {
      sub = await open(t, t.token, req, requestId);
    } catch (err) {
      answerError(res, err, requestId);
      return;
    }
    res.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-cache, no-transform',
      connection: 'keep-alive',
      'x-accel-buffering': 'no',
      'x-request-id': requestId,
    });
    res.write('retry: 1000\n\n');
    // A resume from a pruned point: the `reset` event (its id moves Last-Event-ID past it) before any event.
    if (sub.reset) res.write(`id: ${sub.reset.seq}\nevent: reset\ndata: ${resetJson(sub.reset)}\n\n`);
    const keepalive = setInterval(() => res.write(': keep-alive\n\n'), KEEPALIVE_MS);
    res.on('close', () => sub.close('the client went away'));
    void sub.closed.then((reason) => {
      clearInterval(keepalive);
      if (!res.writableEnded) res.end(`event: close\ndata: ${JSON.stringify({ reason })}\n\n`);
    });
    for await (const e of sub) {
      // id: is the sequence, so EventSource resumes with Last-Event-ID by itself.
      if (!res.write(`id: ${e.seq}\ndata: ${eventJson(e)}\n\n`)) await new Promise((r) => res.once('drain', r));
    }
  }

  function pipe(socket: WebSocket, sub: EventSubscription): void {
    const ping = setInterval(() => socket.ping(), KEEPALIVE_MS);
    socket.on('close', () => sub.close('the client went away'));
    void sub.closed.then((reason) => {
      clearInterval(ping);
      if (socket.readyState === socket.OPEN) socket.close(reasonCode(reason), reason.slice(0, 120));
    });
    // A resume from a pruned point: a {"type":"reset",…} message before any event.
    if (sub.reset) socket.send(resetJson(sub.reset));
    void (async () => {
      for await (const e of sub) {
        if (socket.readyState !== socket.OPEN) break;
        // A client that stops reading must not grow the server's memory without bound.
        if (socket.bufferedAmount > MAX_BUFFERED) {
          sub.close('the client reads too slowly');
          break;
        }
        socket.send(eventJson(e));
      }
    })();
  }

  /** The close code of why a stream ended: 4401 for a token gone, 4404 for a workspace lost, 1001 otherwise. */
  function reasonCode(reason: string): number {
    if (/token/.test(reason)) return closeCode(401);
    if (/member|workspace/.test(reason)) return closeCode(404);
    if (/slowly/.test(reason)) return 1008;
    return 1001;
  }

  function refuse(socket: Duplex, err: unknown, requestId: string): void {
    const kerr = toKloudakError(err);
    const { status, body } = errorResponse(kerr, requestId);
    const text = JSON.stringify(body);
    socket.end(
      `HTTP/1.1 ${status} ${status === 404 ? 'Not Found' : status === 401 ? 'Unauthorized' : status === 403 ? 'Forbidden' : 'Error'}\r\n` +
        `content-type: application/json; charset=utf-8\r\ncontent-length: ${Buffer.byteLength(text)}\r\nx-request-id: ${requestId}\r\nconnection: close\r\n\r\n${text}`,
    );
  }

  async function upgrade(req: IncomingMessage, socket: Duplex, head: Buffer): Promise<void> {
    const requestId = randomUUID();
    let t: Target | null;
    try {
      t = target(req);
      if (!t) throw new KloudakError('not_found', `no WebSocket endpoint at ${req.url ?? ''}`);
    } catch (err) {
      refuse(socket, err, requestId);
      return;
    }
    const tgt = t;
    if (tgt.token !== null) {
      // A token in the request: answered like any request (401, 404…) before the upgrade.
      let sub: EventSubscription;
      try {
        sub = await open(tgt, tgt.token, req, requestId);
      } catch (err) {
        refuse(socket, err, requestId);
        return;
      }
      wss.handleUpgrade(req, socket, head, (ws) => pipe(ws, sub));
      return;
    }
    // Browsers cannot set headers on a WebSocket: the token comes as the first message.
    wss.handleUpgrade(req, socket, head, (ws) => {
      const timer = setTimeout(() => ws.close(closeCode(401), 'send the token as the first message'), FIRST_MESSAGE_MS);
      ws.once('message', (data) => {
        clearTimeout(timer);
        const text = Buffer.isBuffer(data) ? data.toString('utf8') : Array.isArray(data) ? Buffer.concat(data).toString('utf8') : Buffer.from(data).toString('utf8');
        let token = text.trim();
        try {
          const j = JSON.parse(text) as unknown;
          if (j && typeof j === 'object' && typeof (j as { token?: unknown }).token === 'string') token = (j as { token: string }).token;
        } catch {
          // not JSON: the message is the token itself
        }
        token = token.replace(/^Bearer /, '');
        open(tgt, TOKEN.test(token) ? token : null, req, requestId).then(
          (sub) => {
            if (ws.readyState !== ws.OPEN) sub.close('the client went away');
            else pipe(ws, sub);
          },
          (err: unknown) => {
            const kerr = toKloudakError(err);
            ws.close(closeCode(HTTP_STATUS[kerr.code]), kerr.message.slice(0, 120));
          },
        );
      });
    });
  }

  return {
    wrap(next) {
      return (req, res) => {
        const path = (req.url ?? '/').split('?')[0]!;
        if (req.method !== 'GET' || (!WORKSPACE_EVENTS.test(path) && !INFRA_EVENTS.test(path))) {
          next(req, res);
          return;
        }
        const requestId = randomUUID();
        const isSse = (req.headers.accept ?? '').includes('text/event-stream');
        (async () => {
          const t = target(req)!;
          if (isSse) return sse(req, res, t, requestId);
          // Neither SSE nor an upgrade: who may see the stream is answered first (401, 404), then how to read it.
          (await open(t, t.token, req, requestId)).close('not a stream request');
          throw new KloudakError('bad_request', 'this path streams events: open a WebSocket, or send Accept: text/event-stream');
        })().catch((err: unknown) => {
          if (!res.headersSent) answerError(res, err, requestId);
          else res.destroy();
        });
      };
    },
    attach(server) {
      server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
        socket.on('error', () => undefined);
        void upgrade(req, socket, head);
      });
    },
    get open() {
      return live.size;
    },
    close() {
      for (const sub of [...live]) sub.close('the server is shutting down');
      for (const c of wss.clients) c.terminate();
      wss.close();
    },
  };
}
