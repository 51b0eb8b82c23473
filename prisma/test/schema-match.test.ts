// Proves that a database built only from the committed migrations matches schema.prisma: every
// model is created, read, updated and deleted through the generated client, with every scalar
// field set to a non-default value and read back, on PostgreSQL and on PGlite.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { freshDatabase, type FreshDatabase } from '@kloudak/testkit';
import { PGlite } from '@electric-sql/pglite';
import { openDatabase, loadMigrations, migrate, pgliteSession, Prisma, type Database } from '../src/index.js';

type Delegate = {
  create(a: { data: Record<string, unknown> }): Promise<Record<string, unknown>>;
  findUniqueOrThrow(a: { where: Record<string, unknown> }): Promise<Record<string, unknown>>;
  update(a: { where: Record<string, unknown>; data: Record<string, unknown> }): Promise<Record<string, unknown>>;
  delete(a: { where: Record<string, unknown> }): Promise<unknown>;
  count(a?: { where: Record<string, unknown> }): Promise<number>;
};

const AUTO = new Set(['createdAt', 'updatedAt']);
const t = (s: string) => new Date(`2026-01-02T03:04:05.${s}Z`);

/** One row per model, in foreign-key order, with every scalar field given a non-default value. */
function fixtures(): Array<{ model: Prisma.ModelName; key: string; data: Record<string, unknown>; change: Record<string, unknown> }> {
  const id = () => randomUUID();
  const user = id(), ws = id(), area = id(), host = id(), pool = id(), tpl = id(), net = id(), vm = id(), task = id();
  return [
    { model: 'User', key: 'id', data: { id: user, username: 'u1', email: 'u1@x.test', passwordHash: 'h', isAdmin: true, tokenVersion: 7 }, change: { tokenVersion: 8 } },
    { model: 'RevokedToken', key: 'jti', data: { jti: 'jti-1', userId: user, expiresAt: t('001') }, change: { expiresAt: t('002') } },
    { model: 'Workspace', key: 'id', data: { id: ws, name: 'ws', description: 'd' }, change: { description: 'e' } },
    {
      model: 'Membership', key: 'id',
      data: { id: id(), userId: user, workspaceId: ws, userCanAdd: true, userCanEdit: true, userCanDelete: true, vmCanAdd: true, vmCanEdit: true, vmCanDelete: true, networkCanAdd: true, networkCanEdit: true, networkCanDelete: true },
      change: { vmCanAdd: false },
    },
    { model: 'Area', key: 'id', data: { id: area, name: 'a', subnet: '10.9.0.0/16', gateway: '10.9.0.1', vlanFirst: 100, vlanLast: 199 }, change: { vlanLast: 150 } },
    {
      model: 'Host', key: 'id',
      data: {
        id: host, name: 'h1', areaId: area, state: 'up', adminState: 'maintenance', cpuCount: 8, ramMb: 16384, diskGb: 500, agentVersion: '1.0', lastHeartbeatAt: t('003'),
        memoryBytes: 68_719_476_736n, diskBytes: 9_007_199_254_740_993n, bridges: [{ name: 'br-vm', kind: 'ovs', mtu: 1500, up: true }], pools: [{ name: 'p1', active: true }],
        certSerial: '0a1b2c', certExpiresAt: t('008'), agentStartedAt: t('009'), lastHelloAt: t('010'), downEpisode: 3,
        prevCertSerial: '0d0e0f', prevCertValidUntil: t('022'),
        ownerInstanceId: id(), sessionOpen: true, sessionEpoch: 9_007_199_254_740_997n,
        agentStoppedAt: t('029'), agentStoppedVmIds: [vm],
      },
      change: { state: 'fenced', memoryBytes: 1n },
    },
    {
      model: 'JoinToken', key: 'id',
      data: { id: id(), areaId: area, secretHash: 'ab'.repeat(32), expiresAt: t('011'), createdById: user, usedAt: t('012'), usedByHostId: host, revokedAt: t('013'), forHostId: host },
      change: { usedAt: t('014') },
    },
    {
      model: 'FenceReport', key: 'id',
      data: { id: id(), hostId: host, fencedAt: t('015'), leaseExpiredAt: t('016'), reason: 'lease expired', domains: [{ domainName: 'kloudak-x', vmId: 'x' }], receivedAt: t('017') },
      change: { reason: 'Fence command' },
    },
    {
      model: 'Evacuation', key: 'id',
      data: { id: id(), hostId: host, episode: 3, state: 'planned', evidence: { leaseMs: 15000 }, plan: { moves: [] }, createdAt: t('024'), plannedAt: t('025') },
      change: { state: 'cancelled' },
    },
    { model: 'StoragePool', key: 'id', data: { id: pool, name: 'p1', areaId: area, path: '/var/lib/p1', shared: false, type: 'netfs', sizeGb: 100, freeGb: 50 }, change: { freeGb: 40 } },
    { model: 'Template', key: 'id', data: { id: tpl, name: 't1', os: 'debian', description: 'x', cpu: 2, ramMb: 2048, diskGb: 20, image: 'deb.qcow2', bootKernel: '/k', bootInitrd: '/i', bootCmdline: 'console=ttyS0' }, change: { cpu: 4 } },
    { model: 'Network', key: 'id', data: { id: net, workspaceId: ws, areaId: area, name: 'n1', description: 'x', state: 'active', subnet: '192.168.7.0/24', gateway: '192.168.7.1', lastTaskId: task }, change: { state: 'deleting' } },
    {
      model: 'Vm', key: 'id',
      data: { id: vm, workspaceId: ws, name: 'vm1', description: 'x', areaId: area, templateId: tpl, hostId: host, poolId: pool, cpu: 2, ramMb: 1024, diskGb: 10, haEnabled: false, state: 'lost', stateReason: 'not HA', lostFrom: 'running', sshKeys: ['ssh-ed25519 AAAA x'], userData: '#cloud-config\n', lastTaskId: task, migratingToHostId: host },
      change: { state: 'migrating' },
    },
    { model: 'VmInterface', key: 'id', data: { id: id(), vmId: vm, networkId: net, mac: '52:54:00:00:00:01', ip: '10.9.0.5', position: 2 }, change: { ip: '10.9.0.6' } },
    { model: 'IpAllocation', key: 'id', data: { id: id(), areaId: area, scope: `network:${net}`, address: '10.9.0.5', networkId: net, vmId: vm }, change: { address: '10.9.0.7' } },
    { model: 'VlanAllocation', key: 'id', data: { id: id(), areaId: area, vlan: 101, networkId: net }, change: { vlan: 102 } },
    {
      model: 'Task', key: 'id',
      data: { id: task, seq: 77n, workspaceId: ws, createdById: user, kind: 'vm.create', targetType: 'vm', targetId: vm, state: 'rolling_back', attempts: 2, maxAttempts: 5, deadline: t('004'), input: { cpu: 2, nested: { a: [1, 2] } }, error: 'boom',
        leaseOwner: 'orch-1', leaseExpiresAt: t('018'), runAfter: t('019'), startedAt: t('020'), finishedAt: t('021'), placement: { host: 'h1' }, rollbackLog: [{ step: 'x', ok: true }] },
      change: { state: 'rolled_back' },
    },
    {
      model: 'TaskStep', key: 'id',
      data: { id: id(), taskId: task, seq: 1, name: 'define', hostId: host, state: 'reverted', command: { op: 'define' }, result: { ok: true }, error: 'e', startedAt: t('005'), finishedAt: t('006'), attempts: 3, deadline: t('022') },
      change: { state: 'failed' },
    },
    {
      model: 'IdempotencyKey', key: 'id',
      data: { id: id(), userId: user, key: 'k-1', method: 'POST', path: '/api/v1/x', requestHash: 'cd'.repeat(32), status: 202, response: { a: 1 }, expiresAt: t('023') },
      change: { status: 409 },
    },
    { model: 'WorkspaceQuota', key: 'workspaceId', data: { workspaceId: ws, vms: 1, cpu: 2, ramMb: 3, diskGb: 4, networks: 5, addresses: 6 }, change: { vms: 7 } },
    {
      model: 'HostUsageSample', key: 'id',
      data: { id: 9_007_199_254_740_993n, hostId: host, at: t('007'), resolution: 60, cpuPct: 12.5, memUsedMb: 1000, memTotalMb: 2000, diskUsedGb: 1.5, diskTotalGb: 3.25, samples: 4 },
      change: { samples: 5 },
    },
    { model: 'OrchestratorInstance', key: 'id', data: { id: id(), subject: 'kloudak.internal.agent.x', startedAt: t('024'), expiresAt: t('025') }, change: { expiresAt: t('026') } },
    { model: 'LeaderLease', key: 'name', data: { name: 'orchestrator', instanceId: id(), term: 9_007_199_254_740_999n, since: t('027'), expiresAt: t('028') }, change: { term: 2n } },
    {
      model: 'OutboxEvent', key: 'seq',
      data: {
        seq: 9_007_199_254_740_995n, id: id(), time: t('018'), workspaceId: ws, subject: `kloudak.ws.${ws}.vm.state`, entity: 'vm', entityId: vm,
        event: 'state', state: 'running', taskId: task, payload: { name: 'vm1' }, publishedAt: t('019'),
      },
      change: { publishedAt: t('020') },
    },
  ];
}

function delegate(db: Database, model: string): Delegate {
  const name = model.charAt(0).toLowerCase() + model.slice(1);
  return (db.client as unknown as Record<string, Delegate>)[name] as Delegate;
}

function scalarFields(model: string): string[] {
  const e = (Prisma as unknown as Record<string, Record<string, string>>)[`${model}ScalarFieldEnum`];
  assert.ok(e, `no scalar field enum for ${model}`);
  return Object.values(e);
}

for (const engine of ['postgres', 'pglite'] as const) {
  describe(`migrations match schema.prisma on ${engine}`, () => {
    let db: Database;
    let fresh: FreshDatabase | undefined;
    before(async () => {
      if (engine === 'postgres') fresh = await freshDatabase();
      db = await openDatabase(engine === 'postgres' ? { url: fresh!.url } : { inMemory: true });
      const r = await db.migrate();
      assert.deepEqual(r.applied, loadMigrations().map((m) => m.name));
    });
    after(async () => {
      await db?.close();
      await fresh?.drop();
    });

    it('covers every model of the schema', () => {
      assert.deepEqual(new Set(fixtures().map((f) => f.model)), new Set(Object.values(Prisma.ModelName)));
    });

    it('creates, reads, updates and deletes every model with every scalar field', async () => {
      const rows = fixtures();
      for (const f of rows) {
        const d = delegate(db, f.model);
        const fields = scalarFields(f.model);
        const unset = fields.filter((k) => !(k in f.data) && !AUTO.has(k));
        assert.deepEqual(unset, [], `${f.model}: fixture leaves fields unset`);
        const created = await d.create({ data: f.data });
        const read = await d.findUniqueOrThrow({ where: { [f.key]: f.data[f.key] } });
        for (const k of fields) {
          assert.ok(k in read, `${f.model}.${k} missing from the database`);
          if (!AUTO.has(k)) assert.deepEqual(read[k], f.data[k], `${f.model}.${k} did not round-trip`);
        }
        assert.ok(read['createdAt'] instanceof Date || !fields.includes('createdAt'));
        assert.deepEqual(created, read);
        const updated = await d.update({ where: { [f.key]: f.data[f.key] }, data: f.change });
        for (const [k, v] of Object.entries(f.change)) assert.deepEqual(updated[k], v, `${f.model}.${k} update`);
      }
      // Unique keys are enforced as the schema says.
      await assert.rejects(
        delegate(db, 'User').create({ data: { username: 'u1', email: 'other@x.test', passwordHash: 'h' } }),
        (e: { code?: string }) => e.code === 'P2002',
      );
      for (const f of [...rows].reverse()) {
        await delegate(db, f.model).delete({ where: { [f.key]: f.data[f.key] } });
        assert.equal(await delegate(db, f.model).count({ where: { [f.key]: f.data[f.key] } }), 0);
      }
    });

    it('applies nothing the second time and refuses an edited migration', async () => {
      const again = await db.migrate();
      assert.deepEqual(again.applied, []);
      assert.equal(again.alreadyApplied, loadMigrations().length);
      assert.deepEqual(await db.pending(), []);
    });
  });
}

describe('migrate() bookkeeping', () => {
  it('refuses a migration changed after it was applied, and applies new ones in order', async () => {
    const lite = new PGlite();
    try {
      const session = pgliteSession(lite);
      const ms = [{ name: '001_a', sql: 'CREATE TABLE a (x int);', checksum: 'c1' }];
      assert.deepEqual((await migrate(session, ms)).applied, ['001_a']);
      const more = [...ms, { name: '002_b', sql: 'CREATE TABLE b (x int);', checksum: 'c2' }];
      assert.deepEqual((await migrate(session, more)).applied, ['002_b']);
      await assert.rejects(migrate(session, [{ ...ms[0]!, checksum: 'changed' }]), /changed after it was applied/);
      // A failing migration leaves no trace: neither its table nor its record.
      await assert.rejects(
        migrate(session, [...more, { name: '003_bad', sql: 'CREATE TABLE c (x int); SELECT nope;', checksum: 'c3' }]),
        /003_bad failed/,
      );
      const c = await session.query<{ t: string | null }>(`SELECT to_regclass('c')::text AS t`);
      assert.equal(c[0]?.t, null);
    } finally {
      await lite.close();
    }
  });
});
