// Baseline for agent-link.bench: the least a server can do to keep agents' leases going — a bare
// grpc-js server offering only AgentLink.Connect, over mutual TLS with the same CA, server key and
// certificate chain as the orchestrator (read from the orchestrator's data dir), that answers Hello
// with a HelloAck and every Heartbeat with a LeaseGrant. No database, no liveness, no usage, no
// logging, no metrics, no client-certificate checks beyond the TLS layer's. Runs as its own process,
// like the orchestrator, and is driven by the same simulated agents.
//
// Environment (set by agent-link.bench.js):
//   BASELINE_PORT        HTTP port on 127.0.0.1 for GET /healthz and /readyz (readiness and the
//                        event-loop probe, as the orchestrator's /healthz is used)
//   BASELINE_AGENT_PORT  gRPC port on 127.0.0.1
//   BASELINE_CA_DIR      the orchestrator's <dataDir>/ca (ca.crt, server.crt, server.key)
//   BASELINE_HEARTBEAT_MS, BASELINE_LEASE_MS  told in HelloAck and the grants (default 1000, 15000)
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { AgentLinkService, type AgentMessage, type OrchestratorMessage } from '@kloudak/proto/agent';

const httpPort = Number(process.env['BASELINE_PORT']);
const agentPort = Number(process.env['BASELINE_AGENT_PORT']);
const caDir = process.env['BASELINE_CA_DIR'] ?? '';
const heartbeatMs = Number(process.env['BASELINE_HEARTBEAT_MS'] ?? 1000);
const leaseMs = Number(process.env['BASELINE_LEASE_MS'] ?? 15000);
if (!httpPort || !agentPort || !caDir) {
  console.error('agent-link-baseline-server: BASELINE_PORT, BASELINE_AGENT_PORT and BASELINE_CA_DIR are required');
  process.exit(2);
}

const caPem = readFileSync(join(caDir, 'ca.crt'));
// The orchestrator sends the chain [server certificate, CA certificate]; so does the baseline.
const chainPem = Buffer.concat([Buffer.from(readFileSync(join(caDir, 'server.crt'), 'utf8').trimEnd() + '\n'), caPem]);
const keyPem = readFileSync(join(caDir, 'server.key'));

type Call = grpc.ServerDuplexStream<AgentMessage, OrchestratorMessage>;

function connect(call: Call): void {
  let hostId = '';
  call.on('data', (m: AgentMessage) => {
    switch (m.body?.$case) {
      case 'hello':
        hostId = m.body.hello.hostId;
        call.write({
          body: { $case: 'helloAck', helloAck: { hostId, heartbeatIntervalMs: heartbeatMs, lease: { heartbeatSequence: 0n, durationMs: leaseMs, grantedAt: new Date() } } },
        });
        return;
      case 'heartbeat':
        call.write({ body: { $case: 'leaseGrant', leaseGrant: { heartbeatSequence: m.body.heartbeat.sequence, durationMs: leaseMs, grantedAt: new Date() } } });
        return;
      default:
        return;
    }
  });
  call.on('end', () => call.end());
  call.on('error', () => undefined);
}

// The same server options as the orchestrator's agent link, so HTTP/2 keepalive behaves alike.
const server = new grpc.Server({
  'grpc.http2.min_ping_interval_without_data_ms': 10_000,
  'grpc.keepalive_time_ms': 30_000,
  'grpc.keepalive_timeout_ms': 10_000,
});
server.addService(AgentLinkService, {
  enroll: (_call: unknown, cb: grpc.sendUnaryData<never>) => cb({ code: grpc.status.UNIMPLEMENTED, details: 'the baseline does not enroll' }),
  connect,
});
// Mutual TLS: client certificates are required and verified against the CA by the TLS layer (the
// orchestrator requests them and verifies them itself; the handshake's cryptography is the same).
const creds = grpc.ServerCredentials.createSsl(caPem, [{ private_key: keyPem, cert_chain: chainPem }], true);
server.bindAsync(`127.0.0.1:${agentPort}`, creds, (err) => {
  if (err) {
    console.error(`agent-link-baseline-server: cannot listen on ${agentPort}: ${err.message}`);
    process.exit(1);
  }
  const http = createServer((req, res) => {
    const ok = req.url === '/healthz' || req.url === '/readyz';
    res.writeHead(ok ? 200 : 404, { 'content-type': 'application/json' });
    res.end(ok ? '{"status":"ok"}' : '{"error":"not found"}');
  });
  http.listen(httpPort, '127.0.0.1');
  const stop = () => {
    http.close();
    server.forceShutdown();
    process.exit(0);
  };
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
});
