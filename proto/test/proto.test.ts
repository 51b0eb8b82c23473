// Tests of the generated code: wire round-trips, and a real grpc-js server and client talking
// AgentLink over a loopback socket. Compiled to dist/test/proto.test.js; run with
// `node --test dist/test/`.
import test from 'node:test';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { BinaryWriter } from '@bufbuild/protobuf/wire';
import {
  Server,
  ServerCredentials,
  credentials,
  status as GrpcStatus,
  type ServerDuplexStream,
  type ServerUnaryCall,
  type sendUnaryData,
} from '@grpc/grpc-js';
import {
  AgentLinkClient,
  AgentLinkService,
  AgentMessage,
  BridgeKind,
  DomainState,
  EnrollResponse,
  OrchestratorMessage,
  VmStats,
  type AgentLinkServer,
  type EnrollRequest,
  type LeaseGrant,
} from '../gen/kloudak/agent/v1/agent.js';
import { GetHostResponse, GetTaskResponse } from '../gen/kloudak/api/v1/api.js';

// Timestamps survive a round trip exactly only to the millisecond (useDate=true maps to Date).
const T0 = new Date('2025-11-25T09:30:00.123Z');

function roundTrip<T>(codec: { encode(m: T): { finish(): Uint8Array }; decode(b: Uint8Array): T }, m: T): T {
  return codec.decode(codec.encode(m).finish());
}

test('AgentMessage Hello round-trips', () => {
  const hello = AgentMessage.fromPartial({
    body: {
      $case: 'hello',
      hello: {
        hostName: 'kvm-01',
        hostId: '6f1c2a9e-0b7d-4a57-9d0e-2a4f3c1b8e11',
        agentVersion: '0.1.0',
        agentStartedAt: T0,
        capacity: { cpuCount: 64, memoryBytes: 512n * 2n ** 30n, diskBytes: 8n * 2n ** 40n },
        bridges: [{ name: 'br-vm', kind: BridgeKind.BRIDGE_KIND_OVS, mtu: 9000, up: true }],
        pools: [
          {
            name: 'shared',
            path: '/var/lib/kloudak/pools/shared',
            capacityBytes: 20n * 2n ** 40n,
            allocationBytes: 3n * 2n ** 40n,
            availableBytes: 17n * 2n ** 40n,
            active: true,
          },
        ],
        inventory: {
          domains: [
            {
              name: 'kl-web-1',
              uuid: '0d9d3f44-5d0b-4c1e-9a57-7f1d8b1b0c2a',
              vmId: 'a3f0c9e2-1111-4222-8333-944455556666',
              state: DomainState.DOMAIN_STATE_RUNNING,
              vcpus: 4,
              memoryBytes: 8n * 2n ** 30n,
            },
          ],
          volumes: [{ pool: 'shared', name: 'kl-web-1.qcow2', path: '/x/kl-web-1.qcow2', capacityBytes: 40n * 2n ** 30n }],
          ovsPorts: [{ name: 'vnet0', bridge: 'br-vm', vlan: 101, mac: '52:54:00:12:34:56' }],
        },
      },
    },
  });
  const decoded = roundTrip(AgentMessage, hello);
  assert.deepEqual(decoded, hello);
  assert.equal(decoded.body?.$case, 'hello');
  if (decoded.body?.$case === 'hello') {
    assert.equal(decoded.body.hello.capacity?.diskBytes, 8n * 2n ** 40n);
    assert.ok(decoded.body.hello.agentStartedAt instanceof Date);
  }
});

test('Heartbeat round-trips 64-bit counters beyond 2^53 exactly (forceLong=bigint)', () => {
  const big = 2n ** 64n - 1n; // the largest uint64: a CPU-time counter of a host running for centuries
  const hb = AgentMessage.fromPartial({
    body: {
      $case: 'heartbeat',
      heartbeat: {
        sequence: 4_294_967_297n, // 2^32 + 1
        sentAt: T0,
        usage: { cpuPercent: 37.5, memoryUsedBytes: 300n * 2n ** 30n, memoryTotalBytes: 512n * 2n ** 30n },
        pools: [{ name: 'shared', capacityBytes: 20n * 2n ** 40n, allocationBytes: 3n * 2n ** 40n }],
        vms: [
          {
            vmId: 'a3f0c9e2-1111-4222-8333-944455556666',
            domainName: 'kl-web-1',
            cpuTimeNs: big,
            memoryBytes: 8n * 2n ** 30n,
            diskReadBytes: 2n ** 60n + 7n,
            diskWriteBytes: 2n ** 44n + 3n,
            netRxBytes: 2n ** 53n + 1n,
            netTxBytes: 0n,
          },
        ],
      },
    },
  });
  const decoded = roundTrip(AgentMessage, hb);
  assert.deepEqual(decoded, hb);
  assert.equal(decoded.body?.$case === 'heartbeat' ? decoded.body.heartbeat.vms[0]?.cpuTimeNs : undefined, big);
});

test('a uint64 above 2^53 written by another encoder decodes exactly', () => {
  // VmStats.cpu_time_ns is field 3 (varint); write 2^60 + 1 straight onto the wire.
  const bytes = new BinaryWriter().uint32((3 << 3) | 0).uint64(2n ** 60n + 1n).finish();
  assert.equal(VmStats.decode(bytes).cpuTimeNs, 2n ** 60n + 1n);
});

test('OrchestratorMessage Command CreateVm round-trips', () => {
  const cmd = OrchestratorMessage.fromPartial({
    body: {
      $case: 'command',
      command: {
        commandId: '7b4e2d90-7c35-4f0e-8f7e-0c2b8e6a1d33',
        deadline: T0,
        vmId: 'a3f0c9e2-1111-4222-8333-944455556666',
        action: {
          $case: 'createVm',
          createVm: {
            hostname: 'web-1',
            cpu: 4,
            ramMb: 8192,
            diskGb: 40,
            pool: 'shared',
            templateVolume: 'debian-12.qcow2',
            sshAuthorizedKeys: ['ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample user@example'],
            passwordHash: '$6$salt$hash',
            ha: true,
            nics: [
              {
                mac: '52:54:00:12:34:56',
                bridge: 'br-vm',
                vlan: 101,
                address: '10.20.1.10/24',
                gateway: '10.20.1.1',
                dnsServers: ['10.20.0.2', '10.20.0.3'],
                networkId: 'c0ffee00-0000-4000-8000-000000000001',
              },
            ],
          },
        },
      },
    },
  });
  const decoded = roundTrip(OrchestratorMessage, cmd);
  assert.deepEqual(decoded, cmd);
  assert.equal(decoded.body?.$case === 'command' ? decoded.body.command.action?.$case : undefined, 'createVm');
});

test('api GetHostResponse round-trips with Timestamps and 64-bit sizes', () => {
  const res = GetHostResponse.fromPartial({
    host: {
      id: 'h1',
      name: 'kvm-01',
      area: 'lab',
      state: 'up',
      adminState: 'active',
      capacity: { cpus: 64, ramMb: 524288, diskGb: 8192, memoryBytes: 549_755_813_888n, diskBytes: 8_796_093_022_208n },
      lastHeartbeatAt: T0,
    },
  });
  assert.deepEqual(roundTrip(GetHostResponse, res), res);
});

test('api GetTaskResponse carries JSON values (rollback log, placement) and unset optionals', () => {
  const res = GetTaskResponse.fromPartial({
    task: {
      id: 't1',
      kind: 'vm.create',
      object: { type: 'vm', id: 'v1' },
      state: 'rolled_back',
      rollbackLog: [{ step: 'define', ok: true }],
      placement: { host: 'kvm-01', score: 0.5 },
      createdAt: T0,
    },
  });
  const back = roundTrip(GetTaskResponse, res);
  assert.deepEqual(back, res);
  assert.equal(back.task?.error, undefined);
  assert.equal(back.task?.object?.name, undefined);
});

test('AgentLink over a real grpc-js socket: 3 heartbeats -> 3 lease grants', { timeout: 15_000 }, async () => {
  const impl: AgentLinkServer = {
    enroll(call: ServerUnaryCall<EnrollRequest, EnrollResponse>, callback: sendUnaryData<EnrollResponse>) {
      callback(null, EnrollResponse.fromPartial({ hostId: `host-of-${call.request.hostName}` }));
    },
    connect(call: ServerDuplexStream<AgentMessage, OrchestratorMessage>) {
      call.on('data', (msg: AgentMessage) => {
        if (msg.body?.$case === 'heartbeat') {
          call.write(
            OrchestratorMessage.fromPartial({
              body: {
                $case: 'leaseGrant',
                leaseGrant: { heartbeatSequence: msg.body.heartbeat.sequence, durationMs: 15_000, grantedAt: new Date() },
              },
            }),
          );
        }
      });
      call.on('end', () => call.end());
    },
    renewCertificate(_call, callback) {
      callback(null, { clientCertificatePem: '', caCertificatePem: '', certificateExpiresAt: undefined });
    },
  };

  const server = new Server();
  server.addService(AgentLinkService, impl);
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync('127.0.0.1:0', ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))),
  );
  assert.ok(port > 0);

  const client = new AgentLinkClient(`127.0.0.1:${port}`, credentials.createInsecure());
  try {
    // Unary Enroll through the generated client.
    const enrolled = await new Promise<EnrollResponse>((resolve, reject) =>
      client.enroll({ joinToken: 't', hostName: 'kvm-01', publicKeyPem: '', agentVersion: '0.1.0', hostId: '' }, (err, res) =>
        err ? reject(err) : resolve(res),
      ),
    );
    assert.equal(enrolled.hostId, 'host-of-kvm-01');

    // Bidirectional Connect.
    const call = client.connect();
    const grants: LeaseGrant[] = [];
    const done = new Promise<void>((resolve, reject) => {
      call.on('data', (msg: OrchestratorMessage) => {
        if (msg.body?.$case === 'leaseGrant') grants.push(msg.body.leaseGrant);
        if (grants.length === 3) call.end(); // half-close; the server ends its side in turn
      });
      call.on('error', reject);
      call.on('end', resolve);
    });
    const status = once(call, 'status');

    for (const sequence of [1n, 2n, 3n]) {
      call.write(
        AgentMessage.fromPartial({
          body: { $case: 'heartbeat', heartbeat: { sequence, sentAt: new Date(), vms: [{ cpuTimeNs: 2n ** 60n + sequence }] } },
        }),
      );
    }
    await done;
    const [st] = (await status) as [{ code: GrpcStatus }];
    assert.equal(st.code, GrpcStatus.OK);

    assert.deepEqual(
      grants.map((g) => g.heartbeatSequence),
      [1n, 2n, 3n],
    );
    for (const g of grants) {
      assert.equal(g.durationMs, 15_000);
      assert.ok(g.grantedAt instanceof Date);
    }
  } finally {
    client.close();
    await new Promise<void>((resolve) => server.tryShutdown(() => resolve()));
  }
});
