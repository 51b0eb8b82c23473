import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { DestinationStream } from 'pino';
import { createLogger } from '@kloudak/common';
import { freshDatabase, TEST_NATS_URL, type FreshDatabase } from '@kloudak/testkit';
import { systemClock, type Clock } from '../clock.js';
import { configWith, type OrchestratorConfig } from '../config.js';
import { startOrchestrator, type Orchestrator, type StartOptions } from '../server.js';
import type * as pb from '@kloudak/proto/agent';
import { enrollSimAgent, SimAgent, type SimAgentOptions, type SimIdentity } from '../agent-api/testing/sim-agent.js';

/** The two database engines every API test runs against. */
export const ENGINES = ['postgres', 'pglite'] as const;
export type Engine = (typeof ENGINES)[number];

/** A response as tests see it. */
export interface Res {
  status: number;
  body: any; // eslint-disable-line @typescript-eslint/no-explicit-any -- JSON of any route
  headers: Headers;
}

/** A tiny HTTP client over real sockets (fetch), optionally carrying a token. */
export class Client {
  constructor(
    readonly baseUrl: string,
    readonly token?: string,
  ) {}

  async req(method: string, path: string, body?: unknown, headers: Record<string, string> = {}): Promise<Res> {
    const h: Record<string, string> = { ...headers };
    if (this.token && !('authorization' in h) && !('token' in h)) h['authorization'] = `Bearer ${this.token}`;
    let payload: string | undefined;
    if (body !== undefined) {
      payload = typeof body === 'string' ? body : JSON.stringify(body);
      h['content-type'] ??= 'application/json';
    }
    const res = await fetch(this.baseUrl + path, { method, headers: h, body: payload });
    const text = await res.text();
    let parsed: unknown = text;
    try {
      parsed = text ? JSON.parse(text) : undefined;
    } catch {
      // not JSON: keep the text so the assertion shows it
    }
    return { status: res.status, body: parsed, headers: res.headers };
  }
  get(path: string) {
    return this.req('GET', path);
  }
  post(path: string, body?: unknown) {
    return this.req('POST', path, body ?? {});
  }
  patch(path: string, body: unknown) {
    return this.req('PATCH', path, body);
  }
  del(path: string) {
    return this.req('DELETE', path);
  }
}

/** A signed-up, logged-in user. */
export interface TestUser {
  username: string;
  password: string;
  token: string;
  client: Client;
}

/** A running orchestrator on a fresh database, with an admin and helpers to make users. */
export interface Harness {
  engine: Engine;
  orch: Orchestrator;
  url: string;
  anon: Client;
  admin: TestUser;
  config: OrchestratorConfig;
  /** Sign up and log in a new user. */
  user(prefix?: string): Promise<TestUser>;
  login(username: string, password: string): Promise<string>;
  close(): Promise<void>;
}

let seq = 0;
/** A password that passes the strength rules. */
export const PASSWORD = 'Str0ng-Test-Passphrase';

/**
 * Start a real orchestrator (real HTTP and a real agent link on free ports, real NATS) on a fresh
 * PostgreSQL database or a fresh embedded PGlite directory. scrypt runs at a lower cost (2^12) to keep the suite fast.
 */
export async function startHarness(
  engine: Engine,
  overrides: Partial<Parameters<typeof configWith>[0]> = {},
  clock: Clock = systemClock,
  startOptions: StartOptions & { logDestination?: DestinationStream } = {},
): Promise<Harness> {
  const dataDir = mkdtempSync(join(tmpdir(), 'kloudak-test-'));
  let fresh: FreshDatabase | undefined;
  if (engine === 'postgres') fresh = await freshDatabase();
  const config = configWith({
    port: 0,
    dataDir,
    databaseUrl: fresh?.url ?? '',
    adminUser: 'root-admin',
    adminPassword: 'Admin-Passw0rd-Test',
    passwordHashCost: 12,
    logLevel: 'silent',
    loginMaxPerAddress: 10_000,
    signupMaxPerAddress: 10_000,
    passwordChangeMaxPerAddress: 10_000,
    natsUrl: TEST_NATS_URL,
    agentHost: '127.0.0.1',
    agentPort: 0,
    grpcPort: 0,
    ...overrides,
  });
  const { logDestination, ...start } = startOptions;
  const log = createLogger({ component: 'orchestrator-test', level: config.logLevel, ...(logDestination ? { destination: logDestination } : {}) });
  const orch = await startOrchestrator(config, log, clock, start);
  const anon = new Client(orch.url);
  const login = async (username: string, password: string): Promise<string> => {
    const r = await anon.post('/api/v1/auth/login', { username, password });
    if (r.status !== 200) throw new Error(`login ${username}: ${r.status} ${JSON.stringify(r.body)}`);
    return r.body.token as string;
  };
  const adminToken = await login('root-admin', 'Admin-Passw0rd-Test');
  const h: Harness = {
    engine,
    orch,
    url: orch.url,
    anon,
    config,
    admin: { username: 'root-admin', password: 'Admin-Passw0rd-Test', token: adminToken, client: new Client(orch.url, adminToken) },
    login,
    async user(prefix = 'user') {
      const username = `${prefix}${++seq}-${process.pid % 1000}`.toLowerCase();
      const r = await anon.post('/api/v1/auth/signup', { username, email: `${username}@example.test`, password: PASSWORD });
      if (r.status !== 201) throw new Error(`signup ${username}: ${r.status} ${JSON.stringify(r.body)}`);
      const token = await login(username, PASSWORD);
      return { username, password: PASSWORD, token, client: new Client(orch.url, token) };
    },
    async close() {
      await orch.close();
      await fresh?.drop();
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
  return h;
}

/** A domain as a simulated host reports it in its inventory: `kloudak-<vmId>`, 1 vCPU, 256 MiB. */
export function simDomain(vmId: string, state: pb.DomainState): pb.InventoryDomain {
  return { name: `kloudak-${vmId}`, uuid: vmId, vmId, state, vcpus: 1, memoryBytes: 256n << 20n };
}

/**
 * An enrolled simulated host's agent back after a stop (a new process, same identity), saying Hello
 * with `inventory` and the area pool `pool`; started, and stopped by the caller. It does not
 * reconnect, and answers commands with `onCommand` (default: every one succeeds).
 */
export async function returnSimHost(
  h: Harness,
  identity: SimIdentity,
  pool: string,
  inventory: Partial<pb.Inventory>,
  onCommand?: SimAgentOptions['onCommand'],
): Promise<SimAgent> {
  const agent = new SimAgent({
    address: `127.0.0.1:${h.orch.agentPort}`,
    identity,
    heartbeatMs: 200,
    reconnect: false,
    hello: {
      pools: [{ name: pool, path: '/srv/x', capacityBytes: 4000n << 30n, allocationBytes: 0n, availableBytes: 4000n << 30n, active: true }],
      inventory: { domains: [], volumes: [], ovsPorts: [], ...inventory },
    },
    ...(onCommand ? { onCommand } : {}),
  });
  await agent.start();
  return agent;
}

/**
 * Connect an in-process simulated agent (the real protocol over real sockets; every command
 * succeeds at once) as a host of `area` that reports `pool` active, and wait until it is up. For
 * API tests whose requests need a placeable host; what runs on hosts is tested with real agents.
 */
export async function connectSimHost(
  h: Harness,
  areaId: string,
  pool: string,
  name = `sim-${++seq}`,
  opts: Partial<Pick<SimAgentOptions, 'onCommand' | 'heartbeatMs' | 'usage' | 'reconnect' | 'capacity'>> & { /** The pool's capacity as this host reports it (default 4000 GiB). */ poolCapacityGb?: number } = {},
): Promise<{ hostId: string; agent: SimAgent; identity: SimIdentity }> {
  const { poolCapacityGb = 4000, ...agentOpts } = opts;
  const poolBytes = BigInt(poolCapacityGb) << 30n;
  const t = await h.admin.client.post('/api/v1/hosts/join-tokens', { area: areaId, expiresIn: 600 });
  if (t.status !== 201) throw new Error(`join token: ${t.status} ${JSON.stringify(t.body)}`);
  const address = `127.0.0.1:${h.orch.agentPort}`;
  const identity = await enrollSimAgent({ address, joinToken: t.body.token as string, hostName: name });
  const agent = new SimAgent({
    address,
    identity,
    capacity: { cpuCount: 64, memoryBytes: 256n << 30n, diskBytes: 4000n << 30n },
    ...agentOpts,
    hello: { pools: [{ name: pool, path: `/srv/${pool}`, capacityBytes: poolBytes, allocationBytes: 0n, availableBytes: poolBytes, active: true }] },
  });
  await agent.start();
  const deadline = Date.now() + 10_000;
  for (;;) {
    const host = await h.orch.db.client.host.findUnique({ where: { id: identity.hostId } });
    if (host?.state === 'up' && h.orch.agentLink.status(identity.hostId).connected) break;
    if (Date.now() > deadline) throw new Error(`simulated host ${name} did not come up`);
    await new Promise((r) => setTimeout(r, 50));
  }
  return { hostId: identity.hostId, agent, identity };
}
