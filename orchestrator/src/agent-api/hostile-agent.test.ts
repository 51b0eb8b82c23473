// What one broken or hostile agent can do to the orchestrator, over the real link (TLS, PostgreSQL):
// absurd usage figures, reports about VMs of other hosts, a flood of messages, an oversized
// message, and never reading its stream. Each time a well-behaved agent on another host must see
// nothing of it: its heartbeats keep being granted and its usage keeps being stored.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as grpc from '@grpc/grpc-js';
import { waitFor } from '@kloudak/testkit';
import * as pb from '@kloudak/proto/agent';
import { connectSimHost, startHarness, type Harness } from '../testing/harness.js';
import { freshArea, freshTemplate, freshWorkspace, uniq } from '../testing/fixtures.js';
import { MAX_REPORTED_BYTES } from './convert.js';
import type { SimAgent } from './testing/sim-agent.js';

const LIMITS = { agentMaxMessagesPerSecond: 100, agentMessageBurst: 200, agentMaxMessageBytes: 65_536, agentMaxBufferedWrites: 16 };

describe('a hostile agent changes nothing for the other hosts', () => {
  let h: Harness;
  let areaId: string;
  const agents: SimAgent[] = [];
  const db = () => h.orch.db.client;

  before(async () => {
    h = await startHarness('postgres', { heartbeatIntervalMs: 100, agentLeaseMs: 400, agentDownMarginMs: 200, ...LIMITS });
    areaId = (await freshArea(db())).id;
  });
  after(async () => {
    for (const a of agents) await a.stop();
    await h?.close();
  });

  /** A simulated host of the area, its agent registered for the clean-up (heartbeats every 100 ms). */
  async function host(prefix: string, opts: Parameters<typeof connectSimHost>[4] = {}): Promise<{ id: { hostId: string }; agent: SimAgent }> {
    const { hostId, agent } = await connectSimHost(h, areaId, uniq(`${prefix}-pool`), uniq(prefix), { heartbeatMs: 100, ...opts });
    agents.push(agent);
    return { id: { hostId }, agent };
  }

  /** A VM row placed on `hostId`. */
  async function vmOn(hostId: string): Promise<string> {
    const [tpl, ws] = await Promise.all([freshTemplate(db()), freshWorkspace(db(), [])]);
    const vm = await db().vm.create({ data: { name: uniq('vm'), workspaceId: ws.id, areaId, templateId: tpl.id, hostId, cpu: 1, ramMb: 256, diskGb: 1, state: 'running' } });
    return vm.id;
  }

  /** The good host keeps being granted leases while `during` runs (and a little after). */
  async function stillGranted(good: SimAgent, during: () => Promise<void>): Promise<void> {
    const before = good.stats.leaseGrants;
    await during();
    await waitFor(async () => good.stats.leaseGrants >= before + 5, 5_000, 'the good host is still granted leases');
  }

  it('clamps absurd usage figures: every host\'s usage of the minute is stored', async () => {
    const good = await host('good', { usage: () => ({ cpuPercent: 10, memoryUsedBytes: 2n << 30n, memoryTotalBytes: 4n << 30n }) });
    let i = 0;
    const bad = await host('overflow', {
      usage: () => ({ cpuPercent: 50, memoryUsedBytes: i++ % 2 === 0 ? 2n ** 51n : 2n ** 64n - 1n, memoryTotalBytes: 2n ** 63n }),
    });
    await waitFor(async () => bad.agent.stats.leaseGrants >= 5 && good.agent.stats.leaseGrants >= 5, 10_000, 'heartbeats');
    await h.orch.agentLink.usage.flushDue(true);
    const rows = await db().hostUsageSample.findMany({ where: { hostId: { in: [good.id.hostId, bad.id.hostId] } } });
    const of = (hostId: string) => rows.filter((r) => r.hostId === hostId);
    assert.ok(of(good.id.hostId).length >= 1, 'the good host\'s usage is stored');
    assert.ok(of(good.id.hostId).every((r) => r.memUsedMb === 2048 && r.memTotalMb === 4096));
    assert.ok(of(bad.id.hostId).length >= 1, 'the hostile host\'s clamped usage is stored too');
    assert.ok(of(bad.id.hostId).every((r) => r.memUsedMb <= 2_147_483_647 && r.memTotalMb <= 2_147_483_647));
    const shown = await h.admin.client.get(`/api/v1/hosts/${bad.id.hostId}`);
    assert.equal(shown.status, 200);
    assert.ok(shown.body.usage.memoryUsedBytes <= MAX_REPORTED_BYTES);
  });

  it('ignores domain events and fence evidence about VMs that are not on the reporting host', async () => {
    const good = await host('victim');
    const bad = await host('liar');
    const victimVm = await vmOn(good.id.hostId);
    const ownVm = await vmOn(bad.id.hostId);
    const event = (vmId: string) => ({
      body: { $case: 'domainEvent' as const, domainEvent: { vmId, domainName: `kloudak-${vmId}`, event: pb.DomainEventType.DOMAIN_EVENT_TYPE_CRASHED, detail: 'crashed', occurredAt: new Date() } },
    });
    bad.agent.send(event(victimVm));
    bad.agent.send(event('not-a-uuid'));
    bad.agent.send(event(ownVm));
    const fencedAt = new Date(Date.now() - 1000);
    bad.agent.send({
      body: {
        $case: 'fenceReport',
        fenceReport: { domains: [{ domainName: `kloudak-${victimVm}`, vmId: victimVm }, { domainName: `kloudak-${ownVm}`, vmId: ownVm }], fencedAt, leaseExpiredAt: fencedAt, reason: 'lease expired' },
      },
    });
    await waitFor(async () => (await db().fenceReport.count({ where: { hostId: bad.id.hostId } })) === 1, 5_000, 'the fence report stored');
    const report = await db().fenceReport.findFirstOrThrow({ where: { hostId: bad.id.hostId } });
    assert.deepEqual(report.domains, [{ domainName: `kloudak-${ownVm}`, vmId: ownVm }], 'only its own VM is in the evidence');
    const events = await db().outboxEvent.findMany({ where: { entity: 'vm', event: 'domain' } });
    assert.deepEqual(events.map((e) => e.entityId), [ownVm], 'only the event about its own VM is recorded');
    assert.equal((await db().vm.findUniqueOrThrow({ where: { id: victimVm } })).hostId, good.id.hostId);
  });

  it('keeps, in a fence report, the VMs an evacuation of the reporting host moved elsewhere', async () => {
    // A partitioned host fences the HA VMs its down episode restarted elsewhere, and reports it
    // once it reconnects: by then their claim is on another host, yet they were its own.
    const other = await host('rescuer');
    const back = await host('returning');
    const moved = await vmOn(other.id.hostId);
    const never = await vmOn(other.id.hostId);
    await db().evacuation.create({
      data: { hostId: back.id.hostId, episode: 1, state: 'planned', plannedAt: new Date(), plan: { hostId: back.id.hostId, moves: [{ vmId: moved, toHostId: other.id.hostId }], unplaced: [], lost: [], skipped: [] } },
    });
    const fencedAt = new Date(Date.now() - 1000);
    back.agent.send({
      body: {
        $case: 'fenceReport',
        fenceReport: { domains: [{ domainName: `kloudak-${moved}`, vmId: moved }, { domainName: `kloudak-${never}`, vmId: never }], fencedAt, leaseExpiredAt: fencedAt, reason: 'lease expired' },
      },
    });
    await waitFor(async () => (await db().fenceReport.count({ where: { hostId: back.id.hostId } })) === 1, 5_000, 'the fence report stored');
    const report = await db().fenceReport.findFirstOrThrow({ where: { hostId: back.id.hostId } });
    assert.deepEqual(report.domains, [{ domainName: `kloudak-${moved}`, vmId: moved }], 'the moved VM is evidence; a VM never on this host is not');
  });

  it('ends the session of an agent that floods its stream, and of one that sends an oversized message', async () => {
    const good = await host('steady');
    const flood = await host('flood', { reconnect: false });
    await stillGranted(good.agent, async () => {
      for (let i = 0; i < 1000; i++) {
        flood.agent.send({ body: { $case: 'domainEvent', domainEvent: { vmId: 'x', domainName: 'x', event: pb.DomainEventType.DOMAIN_EVENT_TYPE_STARTED, detail: '', occurredAt: new Date() } } });
      }
      await waitFor(async () => flood.agent.lastStatus !== null, 5_000, 'the flooding session ended');
    });
    assert.equal(flood.agent.lastStatus?.code, grpc.status.RESOURCE_EXHAUSTED, JSON.stringify(flood.agent.lastStatus));

    const big = await host('big', { reconnect: false });
    await stillGranted(good.agent, async () => {
      big.agent.send({ body: { $case: 'domainEvent', domainEvent: { vmId: 'x', domainName: 'x', event: pb.DomainEventType.DOMAIN_EVENT_TYPE_STARTED, detail: 'x'.repeat(100_000), occurredAt: new Date() } } });
      await waitFor(async () => big.agent.lastStatus !== null, 5_000, 'the oversized message ended its session');
    });
    assert.equal(big.agent.lastStatus?.code, grpc.status.RESOURCE_EXHAUSTED, JSON.stringify(big.agent.lastStatus));
  });

  it('ends the session of an agent that never reads, instead of buffering for it without limit', async () => {
    const good = await host('reader');
    const deaf = await host('deaf', { reconnect: false, onCommand: () => new Promise(() => undefined) });
    deaf.agent.stopReading();
    const userData = 'x'.repeat(256 * 1024);
    const sent: Promise<unknown>[] = [];
    await stillGranted(good.agent, async () => {
      // Commands of 40 VMs (one in flight per VM), 256 KiB each: far more than the stream's windows.
      for (let i = 0; i < 40; i++) {
        const vmId = `00000000-0000-4000-8000-${String(i).padStart(12, '0')}`;
        const p = h.orch.agentLink.channel.sendCommand(
          deaf.id.hostId,
          { vmId, action: { kind: 'createVm', hostname: 'deaf', cpu: 1, ramMb: 128, diskGb: 1, pool: 'p', templateVolume: 't', nics: [], sshAuthorizedKeys: [], passwordHash: '', ha: false, userData } },
          { deadline: Date.now() + 3_000 },
        );
        sent.push(p.catch(() => undefined));
      }
      await waitFor(async () => deaf.agent.lastStatus !== null || !h.orch.agentLink.status(deaf.id.hostId).connected, 10_000, 'the deaf session ended');
    });
    await Promise.all(sent);
    assert.ok(!h.orch.agentLink.status(deaf.id.hostId).connected, 'the deaf host has no session');
  });

  it('grants leases while the database stalls behind an agent\'s message: no healthy host loses its lease', async () => {
    const a = await host('stalled');
    const vmId = await vmOn(a.id.hostId);
    const lockHeldMs = 1500; // the lease is 400 ms and the margin 200: more than twice both
    let grantsDuring = 0;
    let released = false;
    const locked = db().$transaction(
      async (tx) => {
        // Every read of the VM table now waits: the link's check of the next domain event stalls.
        await tx.$executeRaw`LOCK TABLE "Vm" IN ACCESS EXCLUSIVE MODE`;
        const before = a.agent.stats.leaseGrants;
        a.agent.send({ body: { $case: 'domainEvent', domainEvent: { vmId, domainName: `kloudak-${vmId}`, event: pb.DomainEventType.DOMAIN_EVENT_TYPE_STOPPED, detail: '', occurredAt: new Date() } } });
        await new Promise((r) => setTimeout(r, lockHeldMs));
        grantsDuring = a.agent.stats.leaseGrants - before;
        assert.equal(h.orch.agentLink.status(a.id.hostId).state, 'up', 'the host stayed up');
        released = true;
      },
      { timeout: 10_000 },
    );
    await locked;
    assert.ok(released);
    assert.ok(grantsDuring >= 8, `${grantsDuring} lease grants during ${lockHeldMs} ms of stall (heartbeat every 100 ms)`);
    // Once the table is free again the domain event goes through.
    await waitFor(async () => (await db().outboxEvent.count({ where: { entity: 'vm', entityId: vmId, event: 'domain' } })) === 1, 5_000, 'the stalled event recorded');
  });
});
