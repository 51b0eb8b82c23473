// EventService over a real socket, with a client built from api.proto: a workspace's events to its
// members with the same JSON as the other streams, resume after a reconnect with no gap and no
// duplicate, the refusals, and the end of a stream when its caller loses the workspace.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { status, type ClientReadableStream } from '@grpc/grpc-js';
import { waitFor } from '@kloudak/testkit';
import { startHarness, type Harness, type TestUser } from '../testing/harness.js';
import { GrpcTestClient } from '../testing/grpc-client.js';

interface Ev {
  seq: string;
  entity: string;
  event: string;
  id: string;
  workspace?: string;
  state?: string;
  json: string;
  time: { seconds: string; nanos: number };
}

/** Everything a stream delivers, and how it ended. */
class Reader {
  readonly events: Ev[] = [];
  /** The messages that carried a reset instead of an event, with how many events came before each. */
  readonly resets: { reset: { since: string; oldest: string | null; seq: string }; after: number }[] = [];
  ended: { code: number; details: string } | null = null;
  private waiters: (() => void)[] = [];
  constructor(readonly stream: ClientReadableStream<{ event: Ev | null; reset?: { since: string; oldest: string | null; seq: string } | null }>) {
    stream.on('data', (m: { event: Ev | null; reset?: { since: string; oldest: string | null; seq: string } | null }) => {
      if (m.event) this.events.push(m.event);
      else if (m.reset) this.resets.push({ reset: m.reset, after: this.events.length });
      this.kick();
    });
    stream.on('error', (e: { code: number; details: string }) => {
      this.ended = { code: e.code, details: e.details };
      this.kick();
    });
    stream.on('end', () => {
      this.ended ??= { code: status.OK, details: '' };
      this.kick();
    });
  }
  private kick(): void {
    for (const w of this.waiters.splice(0)) w();
  }
  /** Wait until `pred` holds (over the events so far), or fail after `ms`. */
  async until(pred: (r: Reader) => boolean, what: string, ms = 5000): Promise<void> {
    const deadline = Date.now() + ms;
    while (!pred(this)) {
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out waiting for ${what}; got ${this.events.map((e) => `${e.seq}:${e.entity}.${e.event}`).join(', ')} ended ${JSON.stringify(this.ended)}`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  }
  updates(): Ev[] {
    return this.events.filter((e) => e.entity === 'workspace' && e.event === 'updated');
  }
}

describe('gRPC WatchEvents', () => {
  let h: Harness;
  let g: GrpcTestClient;
  let owner: TestUser;
  let ws: string;
  const open = (req: object, token: string | undefined, method = 'WatchEvents') => new Reader(g.stream('EventService', method, req, token));
  const touch = async (n: number) => {
    for (let i = 0; i < n; i++) {
      const r = await g.call('WorkspaceService', 'UpdateWorkspace', { workspace: ws, description: `change ${Date.now()}-${i}` }, owner.token);
      assert.equal(r.code, status.OK, r.message);
    }
  };

  before(async () => {
    h = await startHarness('postgres');
    g = new GrpcTestClient(`127.0.0.1:${h.orch.grpcPort}`);
    owner = await h.user('watcher');
    const created = await g.call('WorkspaceService', 'CreateWorkspace', { name: `events-${process.pid}` }, owner.token);
    assert.equal(created.code, status.OK, created.message);
    ws = created.value.workspace.name;
  });
  after(async () => {
    g?.close();
    await h?.close();
  });

  it("streams a workspace's events to its members, each with the JSON the other streams carry", async () => {
    const r = open({ workspace: ws, since: '0' }, owner.token);
    await touch(1);
    await r.until((x) => x.updates().length >= 1, 'the update');
    const e = r.updates()[0]!;
    const j = JSON.parse(e.json) as Record<string, unknown>;
    assert.equal(j['seq'], Number(e.seq));
    assert.deepEqual([j['entity'], j['event'], j['id'], j['workspace']], [e.entity, e.event, e.id, e.workspace]);
    assert.equal(new Date(j['time'] as string).getTime(), Number(e.time.seconds) * 1000 + Math.round(e.time.nanos / 1e6));
    const seqs = r.events.map((x) => Number(x.seq));
    assert.deepEqual(seqs, [...seqs].sort((a, b) => a - b), 'in order');
    r.stream.cancel();
  });

  it('resumes after a reconnect from the last sequence seen: no gap, no duplicate', async () => {
    const a = open({ workspace: ws, since: '0' }, owner.token);
    const before = (await new Promise<number>((resolve) => setTimeout(() => resolve(a.updates().length), 300))) + 3;
    await touch(3);
    await a.until((x) => x.updates().length >= before, 'three updates');
    const seenA = [...a.events];
    const last = seenA[seenA.length - 1]!.seq;
    a.stream.cancel();
    // Changes while the client is away…
    await touch(3);
    const b = open({ workspace: ws, since: last }, owner.token);
    await b.until((x) => x.updates().length >= 3, 'the three changes made while away');
    // …then live ones on the same stream.
    await touch(2);
    await b.until((x) => x.updates().length >= 5, 'two live changes');
    const end = b.events[b.events.length - 1]!.seq;
    b.stream.cancel();
    assert.ok(BigInt(b.events[0]!.seq) > BigInt(last), 'nothing before the resume point');
    // Everything retained, read in one go, is exactly what the two sessions saw together.
    const c = open({ workspace: ws, since: '0' }, owner.token);
    await c.until((x) => x.events.some((e) => e.seq === end), 'the whole history');
    c.stream.cancel();
    const joined = [...seenA, ...b.events].map((e) => e.seq);
    assert.deepEqual(joined, c.events.filter((e) => BigInt(e.seq) <= BigInt(end)).map((e) => e.seq));
    assert.equal(new Set(joined).size, joined.length, 'no duplicate');
  });

  it('refuses the anonymous (UNAUTHENTICATED), non-members (NOT_FOUND) and non-admins on the infrastructure (PERMISSION_DENIED)', async () => {
    const stranger = await h.user('stranger');
    const anon = open({ workspace: ws }, undefined);
    await anon.until((x) => x.ended !== null, 'the refusal');
    assert.equal(anon.ended?.code, status.UNAUTHENTICATED);
    const outsider = open({ workspace: ws }, stranger.token);
    await outsider.until((x) => x.ended !== null, 'the refusal');
    assert.equal(outsider.ended?.code, status.NOT_FOUND);
    const missing = open({ workspace: 'no-such-workspace' }, stranger.token);
    await missing.until((x) => x.ended !== null, 'the refusal');
    assert.equal(missing.ended?.details.replace('no-such-workspace', 'X'), outsider.ended?.details.replace(ws, 'X'), 'a non-member learns nothing');
    const bad = open({ workspace: '-bad name' }, owner.token);
    await bad.until((x) => x.ended !== null, 'the refusal');
    assert.equal(bad.ended?.code, status.INVALID_ARGUMENT);
    const infra = open({}, owner.token, 'WatchInfraEvents');
    await infra.until((x) => x.ended !== null, 'the refusal');
    assert.equal(infra.ended?.code, status.PERMISSION_DENIED);
    // An admin sees the infrastructure's events.
    const admin = open({ since: '0' }, h.admin.token, 'WatchInfraEvents');
    const area = await g.call('InventoryService', 'CreateArea', { name: `ev-area-${process.pid}`, subnet: '10.250.0.0/24', gateway: '10.250.0.1', vlanRange: '100-110' }, h.admin.token);
    assert.equal(area.code, status.OK, area.message);
    await admin.until((x) => x.events.some((e) => e.entity === 'area' && e.id === area.value.area.id), 'the area event');
    assert.equal(admin.events.find((e) => e.entity === 'area')!.workspace, undefined);
    admin.stream.cancel();
  });

  it("ends a member's stream with NOT_FOUND within a second of their removal", async () => {
    const m = await h.user('removed');
    const add = await g.call('WorkspaceService', 'AddMember', { workspace: ws, username: m.username }, owner.token);
    assert.equal(add.code, status.OK, add.message);
    const r = open({ workspace: ws }, m.token);
    // The stream is open once it delivers; a change proves it.
    await new Promise((res) => setTimeout(res, 300));
    await touch(1);
    await r.until((x) => x.updates().length >= 1, 'a live event');
    const removed = Date.now();
    assert.equal((await g.call('WorkspaceService', 'RemoveMember', { workspace: ws, username: m.username }, owner.token)).code, status.OK);
    await r.until((x) => x.ended !== null, 'the end of the stream', 3000);
    assert.ok(Date.now() - removed < 1000, `ended after ${Date.now() - removed} ms`);
    assert.ok(r.ended?.code === status.NOT_FOUND || r.ended?.code === status.UNAUTHENTICATED, JSON.stringify(r.ended));
  });

  // Last: it prunes the outbox.
  it('tells a client resuming from a pruned point with a first message carrying `reset`, then streams what follows', async () => {
    await touch(1);
    const db = h.orch.db.client;
    const since = (await db.outboxEvent.findFirstOrThrow({ orderBy: { seq: 'desc' } })).seq;
    await touch(2);
    await waitFor(async () => (await db.outboxEvent.count({ where: { publishedAt: null } })) === 0, 5000, 'everything published');
    await db.outboxEvent.updateMany({ where: { seq: { lte: since + 1n } }, data: { time: new Date(Date.now() - 2 * 86400_000) } });
    assert.ok((await h.orch.relay.prune()) >= 2);
    const oldest = (await db.outboxEvent.findFirstOrThrow({ orderBy: { seq: 'asc' } })).seq;
    const last = (await db.outboxEvent.findFirstOrThrow({ orderBy: { seq: 'desc' } })).seq;

    const r = open({ workspace: ws, since: String(since) }, owner.token);
    await r.until((x) => x.resets.length === 1, 'the reset');
    assert.deepEqual(
      r.resets.map(({ reset: x, after }) => ({ since: x.since, oldest: x.oldest, seq: x.seq, after })),
      [{ since: String(since), oldest: String(oldest), seq: String(last), after: 0 }],
    );
    await touch(1);
    await r.until((x) => x.updates().length >= 1, 'the next change');
    assert.ok(r.events.every((e) => BigInt(e.seq) > last), 'only what follows the reset');
    r.stream.cancel();

    // From a retained point: no reset.
    const ok = open({ workspace: ws, since: String(last) }, owner.token);
    await ok.until((x) => x.updates().length >= 1, 'the retained change after it');
    assert.equal(ok.resets.length, 0);
    ok.stream.cancel();
  });
});
