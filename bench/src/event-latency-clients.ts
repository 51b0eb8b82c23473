// The receiving side of event-latency.bench, in a worker thread (its own event loop, so the
// clients' parsing does not sit on the server's): N clients of a workspace's event stream —
// WebSocket, or gRPC WatchEvents (each its own HTTP/2 connection, decoding every message with the
// ts-proto code a TypeScript client would use) — and one bare NATS subscriber of the workspace's
// subjects. gRPC clients are grpc-js (`grpc`) or, to keep the load generator's cost from
// dominating at 1,000 clients, bare node:http2 sessions that speak the gRPC wire format
// (`grpc-h2`: a POST with the length-prefixed request, length-prefixed responses decoded by
// ts-proto; no channel, resolver, interceptors or per-message promise chain). Each records, per change (named by the bench), when the event arrived:
// performance.timeOrigin + performance.now(), the same clock as the bench's commit times.
import { parentPort, workerData } from 'node:worker_threads';
import WebSocket from 'ws';
import * as grpc from '@grpc/grpc-js';
import * as http2 from 'node:http2';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { EventServiceClient, WatchEventsRequest, WatchEventsResponse } from '@kloudak/proto/api';

interface Setup {
  url: string;
  natsUrl: string;
  workspace: string;
  workspaceId: string;
  token: string;
  /** host:port of the public gRPC API. */
  grpcAddress: string;
}

/** The stream clients a run opens. */
export type ClientKind = 'websocket' | 'grpc' | 'grpc-h2';

const setup = workerData as Setup;
const now = () => performance.timeOrigin + performance.now();
const port = parentPort!;
let sockets: WebSocket[] = [];
let h2Sessions: http2.ClientHttp2Session[] = [];
let grpcCalls: { client: InstanceType<typeof EventServiceClient>; call: grpc.ClientReadableStream<WatchEventsResponse> }[] = [];
/** change name → arrival times at the stream clients (WebSocket or gRPC, one kind at a time). */
let ws = new Map<string, number[]>();
/** change name → arrival time at the bare NATS subscriber. */
let nats = new Map<string, number>();
let nc: NatsConnection | undefined;

function record(name: unknown, at: number, into: 'stream' | 'nats'): void {
  if (typeof name !== 'string' || !name.startsWith('lat-')) return;
  if (into === 'nats') nats.set(name, at);
  else {
    const a = ws.get(name);
    if (a) a.push(at);
    else ws.set(name, [at]);
  }
}

async function openClients(n: number): Promise<void> {
  const url = `${setup.url.replace(/^http/, 'ws')}/api/v1/workspaces/${encodeURIComponent(setup.workspace)}/events`;
  const batch = 50;
  for (let i = 0; i < n; i += batch) {
    await Promise.all(
      Array.from({ length: Math.min(batch, n - i) }, async () => {
        const s = new WebSocket(url, { headers: { authorization: `Bearer ${setup.token}` }, perMessageDeflate: false });
        s.on('message', (d: Buffer) => {
          const at = now();
          record((JSON.parse(d.toString('utf8')) as { name?: unknown }).name, at, 'stream');
        });
        s.on('error', (err) => port.postMessage({ kind: 'error', message: String(err) }));
        await new Promise<void>((resolve, reject) => {
          s.once('open', () => resolve());
          s.once('unexpected-response', (_q, r) => reject(new Error(`upgrade refused: ${r.statusCode}`)));
        });
        sockets.push(s);
      }),
    );
  }
}

async function openGrpcClients(n: number): Promise<void> {
  const md = new grpc.Metadata();
  md.set('authorization', `Bearer ${setup.token}`);
  const batch = 50;
  for (let i = 0; i < n; i += batch) {
    await Promise.all(
      Array.from({ length: Math.min(batch, n - i) }, async () => {
        // A channel of its own (no shared subchannel): one HTTP/2 connection per client, as a WebSocket has.
        const client = new EventServiceClient(setup.grpcAddress, grpc.credentials.createInsecure(), { 'grpc.use_local_subchannel_pool': 1 });
        const call = client.watchEvents({ workspace: setup.workspace, since: undefined }, md);
        call.on('data', (r: WatchEventsResponse) => record(r.event?.name, now(), 'stream'));
        call.on('error', (err: grpc.ServiceError) => {
          if (err.code !== grpc.status.CANCELLED) port.postMessage({ kind: 'error', message: `WatchEvents: ${err.message}` });
        });
        // The stream is open once the server sent its headers (it subscribed before that).
        await new Promise<void>((resolve, reject) => {
          call.once('metadata', () => resolve());
          call.once('error', reject);
        });
        grpcCalls.push({ client, call });
      }),
    );
  }
}

/** One WatchEvents call on a bare HTTP/2 session: resolves once the response headers arrived. */
async function openH2Client(): Promise<void> {
  const session = http2.connect(`http://${setup.grpcAddress}`);
  session.on('error', (err) => port.postMessage({ kind: 'error', message: `http2: ${String(err)}` }));
  h2Sessions.push(session);
  const body = WatchEventsRequest.encode({ workspace: setup.workspace, since: undefined }).finish();
  const frame = Buffer.alloc(5 + body.length);
  frame.writeUInt32BE(body.length, 1);
  frame.set(body, 5);
  const req = session.request({
    ':method': 'POST',
    ':path': '/kloudak.api.v1.EventService/WatchEvents',
    'content-type': 'application/grpc+proto',
    te: 'trailers',
    authorization: `Bearer ${setup.token}`,
  });
  req.end(frame);
  let buf: Buffer = Buffer.alloc(0);
  req.on('data', (chunk: Buffer) => {
    const at = now();
    buf = buf.length === 0 ? chunk : Buffer.concat([buf, chunk]);
    // Length-prefixed messages: 1 byte compressed flag (0 here), 4 bytes length, the message.
    while (buf.length >= 5) {
      const len = buf.readUInt32BE(1);
      if (buf.length < 5 + len) break;
      record(WatchEventsResponse.decode(buf.subarray(5, 5 + len)).event?.name, at, 'stream');
      buf = buf.subarray(5 + len);
    }
  });
  req.on('error', () => undefined);
  await new Promise<void>((resolve, reject) => {
    req.once('response', (headers) => (headers[':status'] === 200 ? resolve() : reject(new Error(`WatchEvents: HTTP ${String(headers[':status'])}`))));
    req.once('error', reject);
  });
}

port.on('message', (m: { cmd: string; n?: number; clientKind?: ClientKind }) => {
  void (async () => {
    switch (m.cmd) {
      case 'connect': {
        if (!nc) {
          nc = await connect({ servers: setup.natsUrl });
          nc.subscribe(`kloudak.ws.${setup.workspaceId}.>`, {
            callback: (_err, msg) => {
              const at = now();
              record((msg.json() as { name?: unknown }).name, at, 'nats');
            },
          });
          await nc.flush();
        }
        if (m.clientKind === 'grpc') await openGrpcClients(m.n ?? 1);
        else if (m.clientKind === 'grpc-h2') {
          for (let i = 0; i < (m.n ?? 1); i += 50) await Promise.all(Array.from({ length: Math.min(50, (m.n ?? 1) - i) }, () => openH2Client()));
        }
        else await openClients(m.n ?? 1);
        port.postMessage({ kind: 'ready', clients: sockets.length + grpcCalls.length + h2Sessions.length });
        return;
      }
      case 'collect':
        port.postMessage({ kind: 'samples', ws: [...ws.entries()], nats: [...nats.entries()] });
        ws = new Map();
        nats = new Map();
        return;
      case 'disconnect': {
        const closing = sockets.map((s) => new Promise<void>((r) => (s.readyState === s.CLOSED ? r() : s.once('close', () => r()))));
        for (const s of sockets) s.close();
        await Promise.race([Promise.all(closing), new Promise((r) => setTimeout(r, 5000))]);
        for (const s of sockets) s.terminate();
        sockets = [];
        for (const { client, call } of grpcCalls) {
          call.cancel();
          client.close();
        }
        grpcCalls = [];
        for (const h of h2Sessions) h.destroy();
        h2Sessions = [];
        port.postMessage({ kind: 'disconnected' });
        return;
      }
      case 'stop':
        await nc?.close();
        port.postMessage({ kind: 'stopped' });
        return;
    }
  })().catch((err: unknown) => port.postMessage({ kind: 'error', message: String(err) }));
});
