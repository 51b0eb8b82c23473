// Agent certificates end to end (issue 11, "Certificate renewal"): a real orchestrator in this
// process (PostgreSQL, NATS, gRPC over mutual TLS) issuing 12-second client certificates, and a
// real agent process (`agent/dist/main.js`) on a simulated host (libvirt's test driver through
// libvirtd) that renews its certificate over the link, again and again, without losing its
// session's lease or fencing its HA VM; then an admin re-keys the host (its session ends, its
// certificate is refused) and the agent, restarted with a join token made for its host, enrolls
// again under the same id, with its VMs.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes, randomUUID, X509Certificate } from 'node:crypto';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as pb from '@kloudak/proto/agent';
import { ensureLibvirtd } from '@kloudak/libvirt/testing';
import { createSimHost, ensureOvs, type SimHost } from '@kloudak/agent/testing';
import type { CommandAction, Orchestrator } from '@kloudak/orchestrator';
import { Cleanup, waitFor } from '@kloudak/testkit';
import { spawnAgentProcess, type AgentProcess } from './agent-process.js';
import { ApiClient } from './api-client.js';
import { startInProcessOrchestrator } from './vm-harness.js';

const RUN = `kc${randomBytes(3).toString('hex')}`;
const ADMIN = { username: 'root-admin', password: 'e2e-Certs-Pass-2026!' };
const LIFETIME_S = 12;
const LEASE_MS = 3_000;

const serialOf = (pem: string) => new X509Certificate(pem).serialNumber.toLowerCase().replace(/^0+(?=.)/, '');

describe('agent certificates end to end: renewal, re-key, re-enrollment', { timeout: 180_000 }, () => {
  const cleanup = new Cleanup();
  let orch: Orchestrator;
  let areaId: string;
  let sim: SimHost;
  let agent: AgentProcess;
  let dataDir: string;
  let hostId: string;
  const haVm = randomUUID();
  const plainVm = randomUUID();
  const client = new ApiClient(() => orch.url, '');
  const api = (method: string, path: string, body?: unknown) => client.call(method, path, body);
  const name = `${RUN}-h1`;

  function spawn(token: string): AgentProcess {
    const a = spawnAgentProcess(name, `127.0.0.1:${orch.agentPort}`, dataDir, {
      KLOUDAK_AGENT_JOIN_TOKEN: token,
      KLOUDAK_AGENT_LIBVIRT_URI: sim.uri,
      KLOUDAK_AGENT_HEARTBEAT_MS: '200',
      KLOUDAK_AGENT_FENCE_LEASE_MS: String(LEASE_MS),
      KLOUDAK_AGENT_DOMAIN_TYPE: 'qemu',
      KLOUDAK_AGENT_OVS_DATAPATH: 'netdev',
      KLOUDAK_AGENT_NIC_OFFLOAD: 'off',
      KLOUDAK_AGENT_CONSOLE_DIR: join(dataDir, 'console'),
    });
    cleanup.add(() => a.kill());
    return a;
  }

  const row = () => orch.db.client.host.findUniqueOrThrow({ where: { id: hostId } });
  const onDisk = () => ({ keyPem: readFileSync(join(dataDir, 'client.key'), 'utf8'), certPem: readFileSync(join(dataDir, 'client.crt'), 'utf8') });
  const caPem = () => readFileSync(join(dataDir, 'ca.crt'), 'utf8');

  /** Hello with a key pair: OK at the HelloAck, or the status that ended the stream. */
  async function helloWith(keyPem: string, certPem: string): Promise<{ code: number; details: string }> {
    const c = new pb.AgentLinkClient(`127.0.0.1:${orch.agentPort}`, grpc.credentials.createSsl(Buffer.from(caPem()), Buffer.from(keyPem), Buffer.from(certPem)), {
      'grpc.use_local_subchannel_pool': 1,
    });
    try {
      const call = c.connect();
      const r = await new Promise<{ code: number; details: string }>((resolve) => {
        call.on('data', (m: pb.OrchestratorMessage) => {
          if (m.body?.$case === 'helloAck') resolve({ code: grpc.status.OK, details: 'helloAck' });
        });
        call.on('error', (e: grpc.ServiceError) => resolve({ code: e.code, details: e.details }));
        call.write({
          body: {
            $case: 'hello',
            hello: { hostId, hostName: name, agentVersion: 'probe', capacity: undefined, bridges: [], pools: [], inventory: { domains: [], volumes: [], ovsPorts: [] }, agentStartedAt: new Date() },
          },
        });
      });
      call.cancel();
      return r;
    } finally {
      c.close();
    }
  }

  async function renewWith(keyPem: string, certPem: string): Promise<{ code: number; details: string }> {
    const c = new pb.AgentLinkClient(`127.0.0.1:${orch.agentPort}`, grpc.credentials.createSsl(Buffer.from(caPem()), Buffer.from(keyPem), Buffer.from(certPem)), {
      'grpc.use_local_subchannel_pool': 1,
    });
    const pub = new X509Certificate(certPem).publicKey.export({ type: 'spki', format: 'pem' }).toString();
    try {
      return await new Promise((resolve) =>
        c.renewCertificate({ publicKeyPem: pub }, new grpc.Metadata(), { deadline: Date.now() + 10_000 }, (e) =>
          resolve(e ? { code: e.code, details: e.details } : { code: grpc.status.OK, details: 'renewed' }),
        ),
      );
    } finally {
      c.close();
    }
  }

  function createVm(vmId: string, ha: boolean): CommandAction {
    return { kind: 'createVm', hostname: `e2e-${vmId.slice(0, 8)}`, cpu: 1, ramMb: 128, diskGb: 1, pool: sim.poolName, templateVolume: sim.templateVolume, nics: [], sshAuthorizedKeys: [], passwordHash: '', ha };
  }

  async function domains(): Promise<Array<{ vmId: string; state: string }>> {
    const inv = await orch.agents.sendCommand(hostId, { action: { kind: 'getInventory' } }, { deadline: Date.now() + 10_000 });
    assert.equal(inv.ok, true, JSON.stringify(inv.error));
    return inv.inventory!.domains.map((d) => ({ vmId: d.vmId, state: d.state }));
  }

  /** The host's liveness changes recorded since `seq` (outbox events). */
  async function stateChanges(afterSeq: bigint): Promise<string[]> {
    const rows = await orch.db.client.outboxEvent.findMany({ where: { entityId: hostId, event: 'state', seq: { gt: afterSeq } }, orderBy: { seq: 'asc' } });
    return rows.map((r) => String(r.state));
  }

  before(async () => {
    await ensureLibvirtd();
    await ensureOvs();
    orch = await startInProcessOrchestrator(
      cleanup,
      'kloudak_e2e_certs',
      ADMIN,
      { heartbeatIntervalMs: 200, agentLeaseMs: LEASE_MS, agentDownMarginMs: 2_000, agentCertLifetimeSeconds: LIFETIME_S, agentCertRenewGraceSeconds: 60 },
      { livenessTickMs: 100 },
    );
    await client.login(ADMIN);
    const area = await api('POST', '/areas', { name: 'certs', subnet: '10.244.0.0/24', gateway: '10.244.0.1', vlanRange: '100-199' });
    assert.equal(area.status, 201, JSON.stringify(area.body));
    areaId = area.body['id'] as string;
    const dir = mkdtempSync(join(tmpdir(), `${RUN}-sim-`));
    cleanup.add(() => rmSync(dir, { recursive: true, force: true }));
    sim = createSimHost({ dir });
    dataDir = mkdtempSync(join(tmpdir(), `${RUN}-agent-`));
    cleanup.add(() => rmSync(dataDir, { recursive: true, force: true }));
  });

  after(async () => {
    await cleanup.run();
  });

  it('renews a 12-second certificate over the link before it expires, again and again, keeping the lease: no fence, no state change', async () => {
    const t = await api('POST', '/hosts/join-tokens', { area: areaId, expiresIn: 600 });
    assert.equal(t.status, 201, JSON.stringify(t.body));
    agent = spawn(t.body['token'] as string);
    await waitFor(async () => existsSync(join(dataDir, 'identity.json')), 20_000, 'enrolled');
    hostId = (JSON.parse(readFileSync(join(dataDir, 'identity.json'), 'utf8')) as { hostId: string }).hostId;
    await waitFor(async () => (await row()).state === 'up' && orch.agentLink.status(hostId).connected, 20_000, 'host up').catch((e: unknown) => {
      throw new Error(`${(e as Error).message}\n${agent.output().slice(-3000)}`);
    });
    // The VMs are recorded as placed on the host, as their create tasks would have: this test
    // drives the link directly, and a Kloudak domain of no VM is an orphan the orchestrator
    // deletes when its host says Hello again (ha/failover.ts) — which each renewal's reconnect is.
    const db = orch.db.client;
    const tpl = await db.template.create({ data: { name: `certs-tpl-${hostId.slice(0, 8)}`, os: 'test', cpu: 1, ramMb: 128, diskGb: 1, image: 'none.qcow2' } });
    const ws = await db.workspace.create({ data: { name: `certs-ws-${hostId.slice(0, 8)}`, description: '' } });
    for (const [vmId, ha] of [[haVm, true], [plainVm, false]] as const) {
      await db.vm.create({ data: { id: vmId, name: `vm-${vmId.slice(0, 8)}`, workspaceId: ws.id, areaId, templateId: tpl.id, hostId, cpu: 1, ramMb: 128, diskGb: 1, state: 'running', haEnabled: ha } });
      const r = await orch.agents.sendCommand(hostId, { vmId, action: createVm(vmId, ha) }, { deadline: Date.now() + 30_000 });
      assert.equal(r.ok, true, JSON.stringify(r.error));
    }
    const mark = (await orch.db.client.outboxEvent.aggregate({ _max: { seq: true } }))._max.seq ?? 0n;
    const first = onDisk();
    const serials = [serialOf(first.certPem)];
    assert.equal((await row()).certSerial, serials[0]);

    // The first renewal, well before expiry: a new serial for the same host, and the agent
    // reconnects with it at once (which retires the first serial).
    const renewedAndBack = async (prev: string) => {
      const r = await row();
      return r.certSerial !== prev && r.prevCertSerial === null && serialOf(onDisk().certPem) === r.certSerial && orch.agentLink.status(hostId).connected;
    };
    const failWith = (e: unknown) => {
      throw new Error(`${(e as Error).message}\n${agent.output().slice(-3000)}`);
    };
    await waitFor(() => renewedAndBack(serials[0]!), 2 * LIFETIME_S * 1000, 'the first renewal').catch(failWith);
    serials.push((await row()).certSerial!);
    // The first certificate, still inside its validity, is refused: its serial is no longer the host's.
    assert.ok(Date.parse(new X509Certificate(first.certPem).validTo) > Date.now() + 300, 'renewed before the first certificate expired');
    const probe = await helloWith(first.keyPem, first.certPem);
    assert.equal(probe.code, grpc.status.UNAUTHENTICATED, probe.details);
    assert.match(probe.details, /revoked or replaced/);
    // And again, with the renewed one.
    await waitFor(() => renewedAndBack(serials[1]!), 2 * LIFETIME_S * 1000, 'the second renewal').catch(failWith);
    serials.push((await row()).certSerial!);
    assert.equal(new Set(serials).size, 3);

    // Nothing happened to the host meanwhile: the lease held across the reconnections.
    assert.deepEqual(await stateChanges(mark), [], 'no liveness change while renewing');
    const fenceDir = join(dataDir, 'fence');
    assert.equal(existsSync(fenceDir) ? readdirSync(fenceDir).filter((f) => f.endsWith('.json')).length : 0, 0, 'no fence record');
    const ds = await domains();
    assert.deepEqual(ds.filter((d) => d.vmId === haVm).map((d) => d.state), ['running'], 'the HA VM still runs');
    assert.ok(!/lease expired/.test(agent.output()), 'the agent never lost its lease');
    assert.ok(!/BEGIN [A-Z ]*PRIVATE KEY/.test(agent.output()), 'no private key in the agent log');
    const renewals = (agent.output().match(/client certificate renewed/g) ?? []).length;
    assert.ok(renewals >= 2, `renewals in the agent log: ${renewals}`);
  });

  it('re-key: the session ends at once; the certificate is refused on Connect and on renewal', async () => {
    const held = onDisk();
    const t0 = Date.now();
    const r = await api('POST', `/hosts/${hostId}/rekey`);
    assert.equal(r.status, 200, JSON.stringify(r.body));
    await waitFor(async () => !orch.agentLink.status(hostId).connected, 2_000, 'session ended');
    assert.ok(Date.now() - t0 < 2_000);
    const probe = await helloWith(held.keyPem, held.certPem);
    assert.equal(probe.code, grpc.status.UNAUTHENTICATED);
    assert.match(probe.details, /revoked or replaced/);
    const renew = await renewWith(held.keyPem, held.certPem);
    assert.equal(renew.code, grpc.status.UNAUTHENTICATED);
    // The agent keeps trying and keeps being refused.
    await waitFor(async () => /revoked or replaced/.test(agent.output()), 10_000, 'the agent is told why');
    assert.equal(orch.agentLink.status(hostId).connected, false);
  });

  it('re-enrollment with a token made for the host: the restarted agent keeps its id and host record', async () => {
    await agent.stop(10_000);
    const created = (await api('GET', `/hosts/${hostId}`)).body['createdAt'];
    const t = await api('POST', '/hosts/join-tokens', { host: hostId, expiresIn: 600 });
    assert.equal(t.status, 201, JSON.stringify(t.body));
    assert.equal(t.body['hostId'], hostId);
    const before = onDisk();
    agent = spawn(t.body['token'] as string);
    await waitFor(async () => (await row()).state === 'up' && orch.agentLink.status(hostId).connected, 30_000, 'host up again').catch((e: unknown) => {
      throw new Error(`${(e as Error).message}\n${agent.output().slice(-3000)}`);
    });
    const id = JSON.parse(readFileSync(join(dataDir, 'identity.json'), 'utf8')) as { hostId: string; joinTokenId: string };
    assert.equal(id.hostId, hostId, 'same host id');
    assert.equal(id.joinTokenId, (t.body['id'] as string).replace(/-/g, ''));
    assert.notEqual(serialOf(onDisk().certPem), serialOf(before.certPem), 'a new certificate');
    assert.equal((await row()).certSerial, serialOf(onDisk().certPem));
    // (A test:/// host is a new hypervisor for each agent connection, so its domains do not outlive
    // the agent process; renewal.test.ts checks that the host's VM rows stay through re-enrollment.)
    const h = await api('GET', `/hosts/${hostId}`);
    assert.equal(h.body['name'], name);
    assert.equal(h.body['createdAt'], created, 'the same host row');
    assert.ok(h.body['certificateExpiresAt'], 'a valid certificate again');
    const hosts = await api('GET', '/hosts?limit=100');
    assert.equal((hosts.body['items'] as unknown[]).length, 1, 'no second host');
    // A restart with the same (used) token keeps the identity and does not enroll again.
    await agent.stop(10_000);
    const serial = serialOf(onDisk().certPem);
    agent = spawn(t.body['token'] as string);
    await waitFor(async () => orch.agentLink.status(hostId).connected, 30_000, 'host up after a plain restart');
    assert.equal(serialOf(onDisk().certPem), serial);
    assert.ok(!agent.output().includes(t.body['token'] as string), 'the join token never appears in the log');
  });
});
