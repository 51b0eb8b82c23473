// An orchestrator in this process on a fresh PostgreSQL database (the e2e tests' and the
// benchmarks'), the short timings of the VM e2e tests, the area, pool, template, workspaces and
// networks the tests on simulated hosts make through the REST API, and what the tests read from
// the hosts through the orchestrator (an agent's own inventory).
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createTestNet } from '@kloudak/agent/testing';
import { createLogger } from '@kloudak/common';
import { configWith, startOrchestrator, systemClock, type OrchestratorConfig, type Orchestrator, type StartOptions } from '@kloudak/orchestrator';
import { freePort, freshDatabase, TEST_NATS_URL, type CleanupStack } from '@kloudak/testkit';
import { must, type ApiClient, type Json } from './api-client.js';

/** The sign-in of the orchestrator's one admin. */
export interface Admin {
  username: string;
  password: string;
}

/**
 * Start an orchestrator in this process on a fresh database named after `dbPrefix` (or on
 * `config.databaseUrl` when given), with a data
 * dir of its own, both ports on loopback (the agent port a free one) and the admin `admin`;
 * `config` and `options` go on top of the defaults. `cleanup` closes it and drops both.
 */
export async function startInProcessOrchestrator(
  cleanup: CleanupStack,
  dbPrefix: string,
  admin: Admin,
  config: Partial<OrchestratorConfig> = {},
  options: StartOptions = {},
): Promise<Orchestrator> {
  // A database of the caller's own (a private server, say) is used as it is; else a fresh one.
  let databaseUrl = config.databaseUrl;
  if (!databaseUrl) {
    const db = await freshDatabase(dbPrefix);
    cleanup.add(() => db.drop(), `drop the database ${db.name}`);
    databaseUrl = db.url;
  }
  const dataDir = mkdtempSync(join(tmpdir(), `${dbPrefix}-orch-`));
  cleanup.add(() => rmSync(dataDir, { recursive: true, force: true }), `remove ${dataDir}`);
  const resolved = configWith({
    grpcPort: 0,
    port: 0,
    host: '127.0.0.1',
    agentPort: await freePort(),
    agentHost: '127.0.0.1',
    dataDir,
    natsUrl: TEST_NATS_URL,
    adminUser: admin.username,
    adminPassword: admin.password,
    passwordHashCost: 12,
    logLevel: 'warn',
    ...config,
    databaseUrl,
  });
  // The log goes to stdout at `config.logLevel` (default warn): a benchmark keeps its figures' stdout clean with 'error'.
  const orch = await startOrchestrator(resolved, createLogger({ component: 'orchestrator', level: resolved.logLevel }), systemClock, options);
  cleanup.add(() => orch.close(), 'close the orchestrator');
  return orch;
}

/** The short timings of the VM e2e tests: heartbeats, leases, task retries and timeouts. */
export const VM_TEST_TIMINGS: Partial<OrchestratorConfig> = {
  heartbeatIntervalMs: 250,
  agentLeaseMs: 5_000,
  agentDownMarginMs: 2_000,
  taskBackoffMs: 200,
  taskBackoffMaxMs: 1_000,
  taskStepTimeoutMs: 8_000,
  taskTimeoutMs: 30_000,
};

/** {@link startInProcessOrchestrator} with {@link VM_TEST_TIMINGS} (then `overrides`) and liveness evaluated every 100 ms. */
export function startTestOrchestrator(cleanup: CleanupStack, dbPrefix: string, admin: Admin, overrides: Partial<OrchestratorConfig> = {}): Promise<Orchestrator> {
  return startInProcessOrchestrator(cleanup, dbPrefix, admin, { ...VM_TEST_TIMINGS, ...overrides }, { livenessTickMs: 100 });
}

/** What a host's agent reports it holds (domains, volumes, OVS ports), asked through the orchestrator. */
export async function hostInventory(orch: Orchestrator, hostId: string) {
  const r = await orch.agents.sendCommand(hostId, { action: { kind: 'getInventory' } }, { deadline: Date.now() + 10_000 });
  assert.equal(r.ok, true, JSON.stringify(r.error));
  return r.inventory!;
}

/** The area of a test on simulated hosts (libvirt's test driver): what {@link setUpSimArea} makes. */
export interface SimAreaSpec {
  /** The area's name, also its pool's; the template is `<name>-tpl`. */
  name: string;
  /** The area's /24 by its first three octets (`10.246.0`); the gateway is `.1`. Handed out to VMs, never configured on this machine. */
  subnetBase: string;
  /** The area's VLANs, `first-last`. */
  vlanRange: string;
  /** The workspaces to create. */
  workspaces: readonly string[];
  /** Prefix of the OVS test network that holds the agents' VM bridge (createTestNet). */
  netPrefix: string;
  /** The pool's path; default /srv/pool (a test-driver pool lives in its host's node file: nothing is made there). */
  poolPath?: string;
  /** The template's RAM, disk and image; defaults 256 MiB, 1 GiB, template.qcow2 (the test driver boots nothing). */
  template?: { ramMb?: number; diskGb?: number; image?: string };
}

/** What {@link setUpSimArea} made that a test uses. */
export interface SimArea {
  /** The OVS bridge the agents attach VMs to (their KLOUDAK_AGENT_BRIDGE, see agentTestEnv). */
  bridge: string;
  /** The template's name. */
  template: string;
}

/**
 * The set-up every VM test on simulated hosts starts with: an OVS test network with one bridge
 * (removed by `cleanup`), then through `client` (signed in as an admin) the area, its `dir` pool,
 * a template and the workspaces. Each call must answer 201.
 */
export async function setUpSimArea(cleanup: CleanupStack, client: ApiClient, spec: SimAreaSpec): Promise<SimArea> {
  const net = await createTestNet(spec.netPrefix);
  cleanup.add(() => net.cleanup(), `remove the test network ${spec.netPrefix}`);
  const bridge = await net.addBridge('br');
  const post = (path: string, body: unknown) => client.call('POST', path, body);
  const { name, subnetBase } = spec;
  await must('area', 201, post('/areas', { name, subnet: `${subnetBase}.0/24`, gateway: `${subnetBase}.1`, vlanRange: spec.vlanRange }));
  await must('pool', 201, post('/pools', { name, area: name, path: spec.poolPath ?? '/srv/pool', type: 'dir' }));
  const template = `${name}-tpl`;
  const t = spec.template ?? {};
  await must('template', 201, post('/templates', { name: template, os: 'test', cpu: 1, ramMb: t.ramMb ?? 256, diskGb: t.diskGb ?? 1, image: t.image ?? 'template.qcow2' }));
  for (const ws of spec.workspaces) await must(`workspace ${ws}`, 201, post('/workspaces', { name: ws }));
  return { bridge, template };
}

/** Create the network `name` in `area` in the client's workspace and wait for its task to succeed; returns the network as the create answered it. */
export async function createNetwork(client: ApiClient, name: string, area: string): Promise<Json> {
  const body = await must(`network ${name}`, 202, client.call('POST', `/workspaces/${client.workspace}/networks`, { name, area }));
  await client.succeeded(body['task']['id']);
  return body['network'];
}

/** A join token (valid 10 minutes) for a new host of `area`. */
export async function joinToken(client: ApiClient, area: string): Promise<string> {
  return (await must('join token', 201, client.call('POST', '/hosts/join-tokens', { area, expiresIn: 600 })))['token'];
}
