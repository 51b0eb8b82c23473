// The VM and network API's request rules over real HTTP, on PostgreSQL and PGlite: idempotency
// keys, quotas, the "why not" of a full area, and the claims of concurrent creates. The host is a
// simulated agent speaking the real protocol (every command succeeds); what runs on real hosts is
// tested end to end in test/e2e (vms.e2e).
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { ENGINES, connectSimHost, startHarness, type Harness } from '../testing/harness.js';
import { createWorld, freshNetwork, freshVm, uniq, type World } from '../testing/fixtures.js';
import { deriveMac } from '../domain/mac.js';
import type { SimAgent } from '../agent-api/testing/sim-agent.js';

for (const engine of ENGINES) {
  describe(`VM and network requests on ${engine}`, () => {
    let h: Harness;
    let w: World;
    let sim: SimAgent;
    let simHostId: string;
    const ws = () => `/api/v1/workspaces/${w.workspace.name}`;

    before(async () => {
      h = await startHarness(engine);
      w = await createWorld(h.orch.db.client);
      // The admin acts in the fixture workspace (admins hold every flag everywhere).
      ({ agent: sim, hostId: simHostId } = await connectSimHost(h, w.area.id, w.pool.name));
    });
    after(async () => {
      await sim?.stop();
      await h?.close();
    });

    it('answers a repeated POST with the same Idempotency-Key with the first answer, and creates nothing twice', async () => {
      const key = uniq('idem');
      const body = { name: uniq('vm'), template: w.template.name, networks: [w.network.name], cpu: 1, ramMb: 256 };
      const first = await h.admin.client.req('POST', `${ws()}/vms`, body, { 'idempotency-key': key });
      assert.equal(first.status, 202, JSON.stringify(first.body));
      const again = await h.admin.client.req('POST', `${ws()}/vms`, body, { 'idempotency-key': key });
      assert.equal(again.status, 202);
      assert.equal(again.headers.get('idempotent-replayed'), 'true');
      assert.deepEqual(again.body, first.body);
      assert.equal(await h.orch.db.client.vm.count({ where: { name: body.name } }), 1);
      assert.equal(await h.orch.db.client.task.count({ where: { targetId: first.body.vm.id } }), 1);
      // The same key with another body: 422, and still nothing new.
      const other = await h.admin.client.req('POST', `${ws()}/vms`, { ...body, name: uniq('vm') }, { 'idempotency-key': key });
      assert.equal(other.status, 422, JSON.stringify(other.body));
      assert.equal(other.body.error.code, 'unprocessable');
      // Another user's identical key is theirs alone (their request is judged on its own: 404 here).
      const u = await h.user('idem');
      const theirs = await u.client.req('POST', `${ws()}/vms`, body, { 'idempotency-key': key });
      assert.equal(theirs.status, 404);
      // A bad key is a 400 naming the header.
      const bad = await h.admin.client.req('POST', `${ws()}/vms`, body, { 'idempotency-key': 'with space' });
      assert.equal(bad.status, 400);
    });

    it('keeps 100 concurrent creates within the host, the addresses and the quota', async () => {
      // One host of 64 vCPU (×4 overcommit = 256) and 256 GiB: 100 VMs of 4 vCPU cannot all fit.
      const quotaWs = w.workspace.name;
      assert.equal((await h.admin.client.req('PUT', `/api/v1/workspaces/${quotaWs}/quota`, { vms: 60 })).status, 200);
      const names = Array.from({ length: 100 }, () => uniq('burst'));
      const answers = await Promise.all(
        names.map((name) => h.admin.client.post(`${ws()}/vms`, { name, template: w.template.name, networks: [w.network.name], cpu: 4, ramMb: 512 })),
      );
      const ok = answers.filter((a) => a.status === 202);
      const refused = answers.filter((a) => a.status === 409);
      assert.equal(ok.length + refused.length, 100, JSON.stringify(answers.filter((a) => a.status !== 202 && a.status !== 409).map((a) => a.body)));
      for (const r of refused) assert.match(r.body.error.message, /quota exceeded|vCPU|no host/i);
      const db = h.orch.db.client;
      const vms = await db.vm.count({ where: { workspaceId: w.workspace.id } });
      assert.ok(vms <= 60, `quota held: ${vms} VMs`);
      const hosts = await db.vm.groupBy({ by: ['hostId'], where: { hostId: { not: null } }, _sum: { cpu: true, ramMb: true } });
      for (const s of hosts) {
        const host = await db.host.findUniqueOrThrow({ where: { id: s.hostId! } });
        assert.ok((s._sum.cpu ?? 0) <= host.cpuCount * 4, `host ${host.name} over-committed: ${s._sum.cpu} vCPU`);
        assert.ok((s._sum.ramMb ?? 0) <= host.ramMb, `host ${host.name} over-committed: ${s._sum.ramMb} MB`);
      }
      const ips = await db.ipAllocation.findMany({ select: { scope: true, address: true } });
      assert.equal(new Set(ips.map((i) => `${i.scope}/${i.address}`)).size, ips.length, 'no address twice');
      assert.equal((await h.admin.client.req('PUT', `/api/v1/workspaces/${quotaWs}/quota`, {})).status, 200);
    });

    it('gives a NIC the next salted MAC when another NIC holds the one derived from its VM id', async () => {
      const db = h.orch.db.client;
      const vm = await freshVm(db, w, simHostId);
      const blocker = await freshNetwork(db, w);
      const attach = await freshNetwork(db, w);
      // Another VM's NIC holds the MAC this VM's first NIC would derive (a 40-bit hash collision).
      await db.vmInterface.create({ data: { vmId: w.vm.id, networkId: blocker.id, mac: deriveMac(vm.id, 0) } });
      const r = await h.admin.client.req('PATCH', `${ws()}/vms/${vm.name}`, { networks: [attach.name] });
      assert.equal(r.status, 200, JSON.stringify(r.body));
      const nic = await db.vmInterface.findFirstOrThrow({ where: { vmId: vm.id } });
      assert.equal(nic.mac, deriveMac(vm.id, 0, 1));
      assert.deepEqual(r.body.vm.interfaces.map((i: { mac: string }) => i.mac), [nic.mac]);
    });

    it('counts a host-local pool per host: a disk claims room only on its own host', async () => {
      // A new area whose only pool is host-local, on two hosts that each report 10 GiB of it.
      const local = await createWorld(h.orch.db.client);
      await h.orch.db.client.storagePool.update({ where: { id: local.pool.id }, data: { shared: false } });
      const a = await connectSimHost(h, local.area.id, local.pool.name, undefined, { poolCapacityGb: 10 });
      const b = await connectSimHost(h, local.area.id, local.pool.name, undefined, { poolCapacityGb: 10 });
      try {
        const lws = `/api/v1/workspaces/${local.workspace.name}`;
        const create = (diskGb: number) => h.admin.client.post(`${lws}/vms`, { name: uniq('local'), template: local.template.name, networks: [local.network.name], cpu: 1, ramMb: 256, diskGb });
        // 6 GB each: one per host (a shared pool of 10 GB would refuse the second).
        const first = await create(6);
        const second = await create(6);
        assert.equal(first.status, 202, JSON.stringify(first.body));
        assert.equal(second.status, 202, JSON.stringify(second.body));
        const hostsUsed = new Set([first.body.vm.host, second.body.vm.host]);
        assert.equal(hostsUsed.size, 2, `the two 6 GB disks went to different hosts: ${[...hostsUsed].join(', ')}`);
        // 4 GB are left on each host: a third 6 GB disk fits nowhere, and the 409 says which pool.
        const third = await create(6);
        assert.equal(third.status, 409, JSON.stringify(third.body));
        assert.match(JSON.stringify(third.body.error), /pool/i);
        // 4 GB still fit on either host.
        const fourth = await create(4);
        assert.equal(fourth.status, 202, JSON.stringify(fourth.body));
      } finally {
        await a.agent.stop();
        await b.agent.stop();
      }
    });
  });
}
