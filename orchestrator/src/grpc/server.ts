// The public gRPC server: the kloudak.api.v1 services, server reflection (grpcurl needs no .proto
// files) and the standard health service, in plain text or over TLS.
import { createRequire } from 'node:module';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { ReflectionService } from '@grpc/reflection';
import { HealthImplementation, protoPath as healthProtoPath, type ServingStatus } from 'grpc-health-check';
import { Counter, Histogram, type Registry } from 'prom-client';
import { KloudakError, type Logger } from '@kloudak/common';
import { readiness } from '../app/health.js';
import type { Services } from '../app/services.js';
import type { RouteSpec } from '../http/route.js';
import { eventService, EventServiceDefinition, LiveStreams } from './events.js';
import { apiServices } from './services.js';

/** The certificate chain and key (PEM) clients see; null: plain text. */
export type TlsKeyPair = { cert: Buffer; key: Buffer } | null;

/** Where and how the public gRPC API listens. */
export interface GrpcApiOptions {
  host: string;
  /** 0 picks a free port (tests). */
  port: number;
  tls: TlsKeyPair;
  /** How often the health service re-evaluates readiness (default 1 s). */
  healthCheckMs?: number;
}

/** Path of kloudak/api/v1/api.proto, shipped by @kloudak/proto. */
export function apiProtoPath(): string {
  return createRequire(import.meta.url).resolve('@kloudak/proto/api.proto');
}

/** Prometheus counters of the unary calls: by method and status, and their latency by method. */
function observer(registry: Registry): (method: string, code: string, seconds: number) => void {
  const calls = new Counter({
    name: 'kloudak_grpc_requests_total',
    help: 'Calls of the public gRPC API by method and status',
    labelNames: ['method', 'code'],
    registers: [registry],
  });
  const latency = new Histogram({
    name: 'kloudak_grpc_request_duration_seconds',
    help: 'Latency of the public gRPC API by method',
    labelNames: ['method'],
    buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
    registers: [registry],
  });
  return (method, code, seconds) => {
    calls.inc({ method, code });
    latency.observe({ method }, seconds);
  };
}

/** A running public gRPC server. */
export class GrpcApi {
  private healthTimer: NodeJS.Timeout | undefined;
  private closing = false;
  private serving: ServingStatus | undefined;

  private constructor(
    private readonly server: grpc.Server,
    private readonly health: HealthImplementation,
    private readonly live: LiveStreams,
    /** The bound port (the configured one, or the one picked for 0). */
    readonly port: number,
    /** The service names it serves (health reports each). */
    readonly serviceNames: readonly string[],
  ) {}

  /**
   * Serve the API of `services`, each RPC the twin of its REST operation in `routes`; its calls are
   * counted and timed in `metrics` (REST's registry, so /metrics shows both) when given.
   */
  static async start(services: Services, routes: readonly RouteSpec[], opts: GrpcApiOptions, log: Logger, metrics?: Registry): Promise<GrpcApi> {
    const server = new grpc.Server({
      // A client that stops reading cannot hold a call open forever; idle connections are closed.
      'grpc.keepalive_time_ms': 60_000,
      'grpc.max_connection_idle_ms': 300_000,
      'grpc.max_receive_message_length': 4 * 1024 * 1024,
    });
    const ctx = {
      services,
      routes: new Map(routes.map((r) => [`${r.method.toUpperCase()} ${r.path}`, r])),
      log: log.child({ component: 'grpc-api' }),
      ...(metrics ? { observe: observer(metrics) } : {}),
    };
    const names: string[] = [];
    const live = new LiveStreams();
    const all = [...apiServices(ctx), { definition: EventServiceDefinition, implementation: eventService(services, ctx.log, live) }];
    for (const { definition, implementation } of all) {
      server.addService(definition, implementation);
      const first = Object.values(definition)[0];
      if (first) names.push(first.path.split('/')[1] as string);
    }
    // Reflection describes what this file and the health service declare, from the same .proto files.
    const described = protoLoader.loadSync([apiProtoPath(), healthProtoPath], { keepCase: true, longs: String, enums: String, defaults: true, oneofs: true });
    new ReflectionService(described).addToServer(server);
    // NOT_SERVING until readiness (the one /readyz answers) says otherwise, checked at once below.
    const health = new HealthImplementation(Object.fromEntries([['', 'NOT_SERVING'], ...names.map((n) => [n, 'NOT_SERVING'])]) as Record<string, ServingStatus>);
    health.addToServer(server);
    const creds = opts.tls ? grpc.ServerCredentials.createSsl(null, [{ cert_chain: opts.tls.cert, private_key: opts.tls.key }], false) : grpc.ServerCredentials.createInsecure();
    const address = `${opts.host.includes(':') ? `[${opts.host}]` : opts.host}:${opts.port}`;
    const port = await new Promise<number>((resolve, reject) =>
      server.bindAsync(address, creds, (err, p) => (err ? reject(new KloudakError('unavailable', `cannot listen on ${address} for gRPC: ${err.message}`, { cause: err })) : resolve(p))),
    );
    const api = new GrpcApi(server, health, live, port, names);
    await api.followReadiness(services, opts.healthCheckMs ?? 1000, ctx.log);
    return api;
  }

  /**
   * Report SERVING exactly when /readyz would answer 200 (database up, migrations applied, NATS
   * connected), re-evaluated every `everyMs`: a load balancer or client that health-checks gRPC
   * sees the same instance state as one that checks REST.
   */
  private async followReadiness(services: Services, everyMs: number, log: Logger): Promise<void> {
    const check = async (): Promise<void> => {
      const r = await readiness(services);
      if (this.closing) return;
      const status: ServingStatus = r.ready ? 'SERVING' : 'NOT_SERVING';
      if (status === this.serving) return;
      if (this.serving !== undefined) log.warn({ health: status, reason: r.status }, 'gRPC health changed');
      this.setAll(status);
    };
    await check();
    let running = false;
    this.healthTimer = setInterval(() => {
      if (running) return;
      running = true;
      void check()
        .catch((err: unknown) => log.warn({ err }, 'readiness check failed'))
        .finally(() => (running = false));
    }, everyMs);
    this.healthTimer.unref();
  }

  private setAll(status: ServingStatus): void {
    this.serving = status;
    this.health.setStatus('', status);
    for (const n of this.serviceNames) this.health.setStatus(n, status);
  }

  /** Report NOT_SERVING, end the event streams (UNAVAILABLE), let calls in flight finish (up to `graceMs`), then cut what is left. */
  async close(graceMs: number): Promise<void> {
    this.closing = true;
    if (this.healthTimer) clearInterval(this.healthTimer);
    this.setAll('NOT_SERVING');
    this.live.closeAll('the server is shutting down');
    await new Promise<void>((resolve) => {
      const timer = setTimeout(() => {
        this.server.forceShutdown();
        resolve();
      }, graceMs);
      this.server.tryShutdown(() => {
        clearTimeout(timer);
        resolve();
      });
    });
  }
}
