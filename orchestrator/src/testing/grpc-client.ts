// A gRPC client of kloudak.api.v1 built at run time from the .proto file (@grpc/proto-loader),
// independent of the ts-proto code the server uses: what a third-party client would do. For
// tests and benchmarks.
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { apiProtoPath } from '../grpc/server.js';

/** The outcome of one call: OK with its response, or an error status with its trailers. */
export interface GrpcResult {
  code: grpc.status;
  /** The response (proto-loader's plain object: camelCase fields, 64-bit integers as strings). */
  value?: any; // eslint-disable-line @typescript-eslint/no-explicit-any -- any response message
  message?: string;
  metadata?: grpc.Metadata;
}

/** The package definition of api.proto as a client sees it. */
export function loadApi(): protoLoader.PackageDefinition {
  return protoLoader.loadSync(apiProtoPath(), { keepCase: false, longs: String, enums: String, defaults: true, oneofs: true });
}

type ClientCtor = new (address: string, creds: grpc.ChannelCredentials, options?: grpc.ChannelOptions) => grpc.Client;

/** One channel to the API; `call` reaches any RPC by service and method name. */
export class GrpcTestClient {
  private readonly clients = new Map<string, grpc.Client>();
  private readonly pkg: Record<string, unknown>;

  constructor(
    readonly address: string,
    private readonly creds: grpc.ChannelCredentials = grpc.credentials.createInsecure(),
    private readonly options: grpc.ChannelOptions = {},
  ) {
    const loaded = grpc.loadPackageDefinition(loadApi()) as unknown as { kloudak: { api: { v1: Record<string, unknown> } } };
    this.pkg = loaded.kloudak.api.v1;
  }

  private client(service: string): grpc.Client {
    let c = this.clients.get(service);
    if (!c) {
      const Ctor = this.pkg[service] as ClientCtor | undefined;
      if (!Ctor) throw new Error(`no service ${service} in api.proto`);
      c = new Ctor(this.address, this.creds, this.options);
      this.clients.set(service, c);
    }
    return c;
  }

  /** Call `service.method` (e.g. 'VmService', 'ListVms') with a bearer token, if given. */
  call(service: string, method: string, request: object, token?: string, extra: Record<string, string> = {}): Promise<GrpcResult> {
    const md = new grpc.Metadata();
    if (token !== undefined) md.set('authorization', `Bearer ${token}`);
    for (const [k, v] of Object.entries(extra)) md.set(k, v);
    const c = this.client(service) as unknown as Record<string, (req: object, md: grpc.Metadata, opts: grpc.CallOptions, cb: (err: grpc.ServiceError | null, res?: unknown) => void) => void>;
    const fn = c[method];
    if (typeof fn !== 'function') throw new Error(`no method ${service}.${method}`);
    return new Promise((resolve) => {
      fn.call(c, request, md, { deadline: Date.now() + 30_000 }, (err, res) => {
        if (err) resolve({ code: err.code, message: err.details, metadata: err.metadata });
        else resolve({ code: grpc.status.OK, value: res });
      });
    });
  }

  /** Open the server stream `service.method` (e.g. 'EventService', 'WatchEvents'). */
  stream(service: string, method: string, request: object, token?: string): grpc.ClientReadableStream<any> { // eslint-disable-line @typescript-eslint/no-explicit-any -- any message
    const md = new grpc.Metadata();
    if (token !== undefined) md.set('authorization', `Bearer ${token}`);
    const c = this.client(service) as unknown as Record<string, (req: object, md: grpc.Metadata) => grpc.ClientReadableStream<unknown>>;
    const fn = c[method];
    if (typeof fn !== 'function') throw new Error(`no method ${service}.${method}`);
    return fn.call(c, request, md);
  }

  close(): void {
    for (const c of this.clients.values()) c.close();
    this.clients.clear();
  }
}

/** Every RPC of api.proto as `Service.Method` (e.g. `VmService.ListVms`). */
export function apiMethods(): string[] {
  const out = new Set<string>();
  for (const [name, def] of Object.entries(loadApi())) {
    if (!name.startsWith('kloudak.api.v1.') || 'format' in def) continue;
    for (const m of Object.values(def as protoLoader.ServiceDefinition)) {
      const [, service = '', method = ''] = m.path.split('/');
      out.add(`${service.replace('kloudak.api.v1.', '')}.${method}`);
    }
  }
  return [...out].sort();
}
