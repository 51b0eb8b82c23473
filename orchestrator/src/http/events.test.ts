// The event streams over real HTTP and WebSocket (the `ws` client), on PostgreSQL and PGlite with
// the shared NATS: the three ways of presenting a token, 404 for non-members, 403 for the admin
// stream, resuming with ?since= / Last-Event-ID while changes keep coming (no gap, no duplicate),
// SSE, and a stream that ends within a second of a removal from the workspace or a logout.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket from 'ws';
import { waitFor } from '@kloudak/testkit';
import { ENGINES, startHarness, type Harness, type TestUser } from '../testing/harness.js';
import { uniq } from '../testing/fixtures.js';
import type { KloudakEvent } from '../events/event.js';

/** A WebSocket client that keeps what it receives and how it ended. */
class WsClient {
  readonly events: KloudakEvent[] = [];
  readonly ws: WebSocket;
  readonly opened: Promise<void>;
  readonly ended: Promise<{ code: number; reason: string; at: number }>;
  /** The HTTP status of a refused upgrade. */
  refused: Promise<number>;

  constructor(url: string, opts: { headers?: Record<string, string>; firstMessage?: string } = {}) {
    this.ws = new WebSocket(url, { headers: opts.headers ?? {} });
    let refuse!: (s: number) => void;
    this.refused = new Promise((r) => (refuse = r));
    this.ws.on('unexpected-response', (_req, res) => {
      refuse(res.statusCode ?? 0);
      this.ws.terminate();
    });
    this.ws.on('error', () => undefined);
    this.opened = new Promise((resolve) => this.ws.once('open', () => resolve()));
    if (opts.firstMessage !== undefined) void this.opened.then(() => this.ws.send(opts.firstMessage!));
    this.ws.on('message', (d: Buffer) => this.events.push(JSON.parse(d.toString('utf8')) as KloudakEvent));
    this.ended = new Promise((resolve) => this.ws.once('close', (code: number, reason: Buffer) => resolve({ code, reason: reason.toString('utf8'), at: Date.now() })));
  }

  close(): void {
    this.ws.close();
  }
}

/** Read an SSE response until `until` holds of what was received (or the stream ends). */
async function readSse(res: Response, until: (events: { id: string; event: KloudakEvent }[]) => boolean): Promise<{ id: string; event: KloudakEvent }[]> {
  const out: { id: string; event: KloudakEvent }[] = [];
  const reader = res.body!.getReader();
  const dec = new TextDecoder();
  let buf = '';
  while (!until(out)) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += dec.decode(value, { stream: true });
    let i: number;
    while ((i = buf.indexOf('\n\n')) >= 0) {
      const frame = buf.slice(0, i);
      buf = buf.slice(i + 2);
      const id = /^id: (.*)$/m.exec(frame)?.[1];
      const data = /^data: (.*)$/m.exec(frame)?.[1];
      if (id !== undefined && data !== undefined && !/^event: /m.test(frame)) out.push({ id, event: JSON.parse(data) as KloudakEvent });
    }
  }
  await reader.cancel().catch(() => undefined);
  return out;
}

for (const engine of ENGINES) {
  describe(`event streams (WebSocket and SSE) on ${engine}`, () => {
    let h: Harness;
    let owner: TestUser;
    let member: TestUser;
    let outsider: TestUser;
    let ws: string;
    const wsUrl = (path: string) => h.url.replace(/^http/, 'ws') + path;
    const events = () => `/api/v1/workspaces/${ws}/events`;
    const change = async (u: TestUser = owner) => {
      const r = await u.client.patch(`/api/v1/workspaces/${ws}`, { description: uniq('d') });
      assert.equal(r.status, 200);
    };
    /** The sequences the outbox holds for the workspace after `since`. */
    const seqsAfter = async (since: number) => {
      const id = (await h.orch.db.client.workspace.findUniqueOrThrow({ where: { name: ws } })).id;
      const rows = await h.orch.db.client.outboxEvent.findMany({ where: { workspaceId: id, seq: { gt: BigInt(since) } }, orderBy: { seq: 'asc' } });
      return rows.map((r) => Number(r.seq));
    };

    before(async () => {
      h = await startHarness(engine, { eventPollMs: 500 });
      owner = await h.user('owner');
      member = await h.user('member');
      outsider = await h.user('outsider');
      ws = uniq('ws');
      assert.equal((await owner.client.post('/api/v1/workspaces', { name: ws })).status, 201);
      assert.equal((await owner.client.post(`/api/v1/workspaces/${ws}/members`, { username: member.username })).status, 201);
    });
    after(async () => {
      await h?.close();
    });

    for (const how of ['header', 'query', 'first message'] as const) {
      it(`streams a workspace's changes to a member who sends the token in the ${how}`, async () => {
        const c = new WsClient(
          wsUrl(events() + (how === 'query' ? `?token=${member.token}` : '')),
          how === 'header' ? { headers: { authorization: `Bearer ${member.token}` } } : how === 'first message' ? { firstMessage: JSON.stringify({ token: member.token }) } : {},
        );
        await c.opened;
        // With the token in the request the stream is subscribed before the upgrade answers; with
        // the first message, a little later: changes are made until one arrives.
        await waitFor(
          async () => {
            await change();
            return c.events.some((e) => e.entity === 'workspace' && e.event === 'updated');
          },
          5000,
          'the change',
        );
        const e = c.events.find((x) => x.event === 'updated')!;
        assert.deepEqual(Object.keys(e).sort(), ['entity', 'event', 'id', 'name', 'seq', 'state', 'task', 'time', 'workspace', 'data'].sort());
        assert.equal(e.name, ws);
        assert.equal(e.workspace, e.id);
        c.close();
        await c.ended;
      });
    }

    it('answers 404 to a non-member and 401 without a valid token, as everywhere', async () => {
      assert.equal(await new WsClient(wsUrl(events()), { headers: { authorization: `Bearer ${outsider.token}` } }).refused, 404);
      assert.equal(await new WsClient(wsUrl(`/api/v1/workspaces/${uniq('nope')}/events`), { headers: { authorization: `Bearer ${owner.token}` } }).refused, 404);
      assert.equal(await new WsClient(wsUrl(events() + '?token=not-a-token')).refused, 401);
      const first = new WsClient(wsUrl(events()), { firstMessage: outsider.token });
      assert.equal((await first.ended).code, 4404);
      const bad = new WsClient(wsUrl(events()), { firstMessage: 'garbage token' });
      assert.equal((await bad.ended).code, 4401);
      for (const [token, status] of [[outsider.token, 404], ['x.y.z', 401]] as const) {
        const r = await fetch(h.url + events(), { headers: { accept: 'text/event-stream', authorization: `Bearer ${token}` } });
        assert.equal(r.status, status);
        assert.match(r.headers.get('content-type') ?? '', /json/);
        assert.ok(((await r.json()) as { error?: unknown }).error);
      }
      const plain = await member.client.get(events());
      assert.equal(plain.status, 400, 'neither a WebSocket nor SSE');
      assert.equal((await outsider.client.get(events())).status, 404);
      assert.equal((await member.client.req('GET', events() + '?since=abc', undefined, { accept: 'text/event-stream' })).status, 400);
    });

    it('resumes after ?since= with every retained event, then the live ones, with no gap and no duplicate while changes keep coming', async () => {
      await change();
      const since = (await seqsAfter(0)).at(-1)!;
      for (let i = 0; i < 15; i++) await change();
      // Changes keep being made while the client connects and catches up.
      let writing = true;
      const writer = (async () => {
        let n = 0;
        while (writing || n < 10) {
          await change();
          n++;
        }
      })();
      const c = new WsClient(wsUrl(events() + `?since=${since}`), { headers: { authorization: `Bearer ${member.token}` } });
      await c.opened;
      await new Promise((r) => setTimeout(r, 300));
      writing = false;
      await writer;
      const want = await seqsAfter(since);
      await waitFor(async () => c.events.length >= want.length, 5000, `${want.length} events`);
      await new Promise((r) => setTimeout(r, 200));
      assert.deepEqual(c.events.map((e) => e.seq), want);
      c.close();
    });

    it('serves SSE on the same path: id is the sequence, and Last-Event-ID resumes', async () => {
      await change();
      const since = (await seqsAfter(0)).at(-1)!;
      await change();
      await change();
      const want = await seqsAfter(since);
      const res = await fetch(h.url + events(), { headers: { accept: 'text/event-stream', authorization: `Bearer ${member.token}`, 'last-event-id': String(since) } });
      assert.equal(res.status, 200);
      assert.match(res.headers.get('content-type') ?? '', /^text\/event-stream/);
      const got = await readSse(res, (e) => e.length >= want.length);
      assert.deepEqual(got.map((e) => Number(e.id)), want);
      assert.deepEqual(got.map((e) => e.event.seq), want);
      // ?token= and ?since= (EventSource cannot send headers).
      const res2 = await fetch(h.url + events() + `?token=${member.token}&since=${since}`, { headers: { accept: 'text/event-stream' } });
      assert.deepEqual((await readSse(res2, (e) => e.length >= want.length)).map((e) => e.event.seq), want);
    });

    it('ends a removed member’s stream within a second', async () => {
      const u = await h.user('leaving');
      assert.equal((await owner.client.post(`/api/v1/workspaces/${ws}/members`, { username: u.username })).status, 201);
      const c = new WsClient(wsUrl(events()), { headers: { authorization: `Bearer ${u.token}` } });
      await c.opened;
      const sse = await fetch(h.url + events(), { headers: { accept: 'text/event-stream', authorization: `Bearer ${u.token}` } });
      assert.equal(sse.status, 200);
      const sseEnded = sse.text();
      const t0 = Date.now();
      assert.equal((await owner.client.del(`/api/v1/workspaces/${ws}/members/${u.username}`)).status, 204);
      const end = await c.ended;
      assert.ok(end.at - t0 < 1000, `closed after ${end.at - t0} ms`);
      assert.ok([4401, 4404].includes(end.code), `close code ${end.code}`);
      assert.match(end.reason, /member|token/);
      assert.match(await sseEnded, /event: close\ndata: \{"reason":"[^"]*(member|token)/);
      assert.ok(Date.now() - t0 < 1000);
    });

    it('ends a stream within a second of its token being logged out', async () => {
      const token = await h.login(member.username, member.password);
      const c = new WsClient(wsUrl(events() + `?token=${token}`));
      await c.opened;
      const other = new WsClient(wsUrl(events()), { headers: { authorization: `Bearer ${member.token}` } });
      await other.opened;
      const t0 = Date.now();
      assert.equal((await h.anon.req('POST', '/api/v1/auth/logout', {}, { authorization: `Bearer ${token}` })).status, 204);
      const end = await c.ended;
      assert.ok(end.at - t0 < 1000, `closed after ${end.at - t0} ms`);
      assert.equal(end.code, 4401);
      // Another token of the same user keeps its stream.
      await change();
      await waitFor(async () => other.events.length > 0, 5000, 'the other token still streams');
      other.close();
    });

    it('streams infrastructure events to admins only', async () => {
      assert.equal(await new WsClient(wsUrl('/api/v1/events'), { headers: { authorization: `Bearer ${member.token}` } }).refused, 403);
      const c = new WsClient(wsUrl('/api/v1/events'), { headers: { authorization: `Bearer ${h.admin.token}` } });
      await c.opened;
      const name = uniq('area');
      assert.equal((await h.admin.client.post('/api/v1/areas', { name, subnet: '10.251.0.0/24', gateway: '10.251.0.1', vlanRange: '100-199' })).status, 201);
      await waitFor(async () => c.events.some((e) => e.entity === 'area' && e.name === name), 5000, 'the area event');
      assert.ok(c.events.every((e) => e.workspace === null));
      c.close();
    });

    it('tells a client resuming from a pruned point: a reset first (WebSocket message, SSE `reset` event), then the events after it', async () => {
      await change();
      const since = (await seqsAfter(0)).at(-1)!;
      await change();
      await change();
      // The retention passes over what came after `since`: the relay prunes it (published, older than the retention).
      const db = h.orch.db.client;
      await waitFor(async () => (await db.outboxEvent.count({ where: { publishedAt: null } })) === 0, 5000, 'everything published');
      await db.outboxEvent.updateMany({ where: { seq: { lte: BigInt(since) + 1n } }, data: { time: new Date(Date.now() - 2 * 86400_000) } });
      assert.ok((await h.orch.relay.prune()) >= 2);
      const oldest = Number((await db.outboxEvent.findFirstOrThrow({ orderBy: { seq: 'asc' } })).seq);
      const last = Number((await db.outboxEvent.findFirstOrThrow({ orderBy: { seq: 'desc' } })).seq);

      const c = new WsClient(wsUrl(events() + `?since=${since}`), { headers: { authorization: `Bearer ${member.token}` } });
      await c.opened;
      await waitFor(async () => c.events.length >= 1, 5000, 'the reset');
      const reset = c.events[0] as unknown as Record<string, unknown>;
      assert.equal(reset['type'], 'reset');
      assert.deepEqual([reset['since'], reset['oldest'], reset['seq']], [since, oldest, last]);
      // Then the live events, after the reset's seq.
      await change();
      await waitFor(async () => c.events.length >= 2, 5000, 'the next event');
      assert.deepEqual(c.events.slice(1).map((e) => e.seq), await seqsAfter(last));
      c.close();

      // SSE: an event named reset, whose id moves Last-Event-ID past it.
      const res = await fetch(h.url + events(), { headers: { accept: 'text/event-stream', authorization: `Bearer ${member.token}`, 'last-event-id': String(since) } });
      assert.equal(res.status, 200);
      const reader = res.body!.getReader();
      let text = '';
      while (!text.includes('event: reset')) {
        const { value, done } = await reader.read();
        if (done) break;
        text += new TextDecoder().decode(value);
      }
      await reader.cancel();
      const frame = /id: (\d+)\nevent: reset\ndata: (.*)\n/.exec(text);
      assert.ok(frame, text);
      const nowLast = Number((await db.outboxEvent.findFirstOrThrow({ orderBy: { seq: 'desc' } })).seq);
      assert.equal(Number(frame[1]), nowLast);
      assert.deepEqual((({ type, since: s0 }) => [type, s0])(JSON.parse(frame[2]!) as { type: string; since: number }), ['reset', since]);

      // A resume from a retained point gets no reset.
      const ok = new WsClient(wsUrl(events() + `?since=${nowLast}`), { headers: { authorization: `Bearer ${member.token}` } });
      await ok.opened;
      await change();
      await waitFor(async () => ok.events.length >= 1, 5000, 'an event');
      assert.equal((ok.events[0] as unknown as Record<string, unknown>)['type'], undefined);
      assert.ok(ok.events[0]!.seq > nowLast);
      ok.close();
    });
  });
}
