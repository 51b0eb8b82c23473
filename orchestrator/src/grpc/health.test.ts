// grpc.health.v1 follows readiness. With the orchestrator's database (a private PostgreSQL server)
// shut down, /readyz answers 503 and the health service NOT_SERVING, for the server and each
// service; once it is back, 200 and SERVING again. With its NATS server (a private one) stopped,
// the instance stays ready and SERVING, `degraded`: requests keep working, their events wait in
// the outbox.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { protoPath as healthProtoPath } from 'grpc-health-check';
import { startPrivatePostgres, waitFor, type PrivatePostgres } from '@kloudak/testkit';
import { startHarness, type Harness } from '../testing/harness.js';
import { TestNatsServer } from '../testing/nats-server.js';

type HealthClient = grpc.Client & { Check(req: { service: string }, cb: (err: grpc.ServiceError | null, res?: { status: string }) => void): void };

describe('gRPC health follows readiness', () => {
  let nats: TestNatsServer;
  let pg: PrivatePostgres;
  let h: Harness;
  let client: HealthClient;
  const check = (service: string) =>
    new Promise<string>((resolve, reject) => client.Check({ service }, (err, res) => (err ? reject(err) : resolve(res!.status))));
  const both = async () => [await check(''), await check('kloudak.api.v1.VmService'), await check('kloudak.api.v1.EventService')];

  before(async () => {
    nats = await TestNatsServer.start();
    pg = await startPrivatePostgres();
    h = await startHarness('postgres', { natsUrl: nats.url, databaseUrl: pg.url }, undefined, { grpcHealthCheckMs: 100 });
    const pkg = grpc.loadPackageDefinition(protoLoader.loadSync(healthProtoPath, { keepCase: true, enums: String })) as unknown as {
      grpc: { health: { v1: { Health: new (a: string, c: grpc.ChannelCredentials) => grpc.Client } } };
    };
    client = new pkg.grpc.health.v1.Health(`127.0.0.1:${h.orch.grpcPort}`, grpc.credentials.createInsecure()) as HealthClient;
  });
  after(async () => {
    client?.close();
    await h?.close();
    await nats?.close();
    pg?.stop();
  });

  it('reports NOT_SERVING while the database is down and SERVING once it is back, as /readyz does', async () => {
    assert.deepEqual(await both(), ['SERVING', 'SERVING', 'SERVING']);
    const ready = await h.anon.get('/readyz');
    assert.equal(ready.status, 200);
    assert.equal(ready.body.nats, 'connected');

    pg.halt();
    await waitFor(async () => (await check('')) === 'NOT_SERVING', 15_000, 'NOT_SERVING after the database stopped');
    assert.deepEqual(await both(), ['NOT_SERVING', 'NOT_SERVING', 'NOT_SERVING']);
    const down = await h.anon.get('/readyz');
    assert.equal(down.status, 503);
    assert.equal(down.body.status, 'database unreachable');

    pg.start();
    await waitFor(async () => (await check('')) === 'SERVING', 30_000, 'SERVING after the database restarted');
    assert.deepEqual(await both(), ['SERVING', 'SERVING', 'SERVING']);
    assert.equal((await h.anon.get('/readyz')).status, 200);
  });

  it('stays SERVING and ready, degraded, while NATS is down: the events wait in the outbox', async () => {
    await nats.stop();
    await waitFor(async () => (await h.anon.get('/readyz')).body.nats === 'disconnected', 10_000, 'NATS seen disconnected');
    const r = await h.anon.get('/readyz');
    assert.equal(r.status, 200);
    assert.match(r.body.status, /^degraded: NATS unreachable/);
    assert.deepEqual(await both(), ['SERVING', 'SERVING', 'SERVING']);
    await nats.start();
    await waitFor(async () => (await h.anon.get('/readyz')).body.nats === 'connected', 15_000, 'NATS connected again');
  });
});
