// grpc.health.v1 follows readiness: with the orchestrator's NATS server (a private one) stopped,
// /readyz answers 503 and the health service NOT_SERVING, for the server and each service; once
// NATS is back, 200 and SERVING again.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { protoPath as healthProtoPath } from 'grpc-health-check';
import { waitFor } from '@kloudak/testkit';
import { startHarness, type Harness } from '../testing/harness.js';
import { TestNatsServer } from '../testing/nats-server.js';

type HealthClient = grpc.Client & { Check(req: { service: string }, cb: (err: grpc.ServiceError | null, res?: { status: string }) => void): void };

describe('gRPC health follows readiness', () => {
  let nats: TestNatsServer;
  let h: Harness;
  let client: HealthClient;
  const check = (service: string) =>
    new Promise<string>((resolve, reject) => client.Check({ service }, (err, res) => (err ? reject(err) : resolve(res!.status))));
  const both = async () => [await check(''), await check('kloudak.api.v1.VmService'), await check('kloudak.api.v1.EventService')];

  before(async () => {
    nats = await TestNatsServer.start();
    h = await startHarness('postgres', { natsUrl: nats.url }, undefined, { grpcHealthCheckMs: 100 });
    const pkg = grpc.loadPackageDefinition(protoLoader.loadSync(healthProtoPath, { keepCase: true, enums: String })) as unknown as {
      grpc: { health: { v1: { Health: new (a: string, c: grpc.ChannelCredentials) => grpc.Client } } };
    };
    client = new pkg.grpc.health.v1.Health(`127.0.0.1:${h.orch.grpcPort}`, grpc.credentials.createInsecure()) as HealthClient;
  });
  after(async () => {
    client?.close();
    await h?.close();
    await nats?.close();
  });

  it('reports NOT_SERVING while NATS is down and SERVING once it is back, as /readyz does', async () => {
    assert.deepEqual(await both(), ['SERVING', 'SERVING', 'SERVING']);
    const ready = await h.anon.get('/readyz');
    assert.equal(ready.status, 200);
    assert.equal(ready.body.nats, 'connected');

    await nats.stop();
    await waitFor(async () => (await check('')) === 'NOT_SERVING', 5000, 'NOT_SERVING after NATS stopped');
    assert.deepEqual(await both(), ['NOT_SERVING', 'NOT_SERVING', 'NOT_SERVING']);
    const down = await h.anon.get('/readyz');
    assert.equal(down.status, 503);
    assert.deepEqual([down.body.status, down.body.nats], ['NATS unreachable', 'disconnected']);

    await nats.start();
    await waitFor(async () => (await check('')) === 'SERVING', 10_000, 'SERVING after NATS restarted');
    assert.deepEqual(await both(), ['SERVING', 'SERVING', 'SERVING']);
    assert.equal((await h.anon.get('/readyz')).status, 200);
  });
});
