import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir, hostname } from 'node:os';
import { join } from 'node:path';
import { ConfigError } from '@kloudak/common';
import { hostSettingsOf, loadAgentConfig } from './config.js';

describe('agent config', () => {
  let dir: string;
  let file: string;
  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'kcfg-'));
    file = join(dir, 'agent.yaml');
    writeFileSync(file, ['orchestrator: orch.example:8443', 'heartbeat_ms: 2000', 'bridge: br-file', 'nic_offload: off', 'dataDir: /srv/agent', 'log-level: debug', ''].join('\n'));
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('has defaults', () => {
    writeFileSync(join(dir, 'empty.yaml'), '');
    const c = loadAgentConfig({ env: { KLOUDAK_AGENT_CONFIG: join(dir, 'empty.yaml') }, argv: [] });
    assert.equal(c.dataDir, '/var/lib/kloudak-agent');
    assert.equal(c.hostname, hostname());
    assert.equal(c.heartbeatMs, 1000);
    assert.equal(c.fenceLeaseMs, 15_000);
    assert.equal(c.poolLeases, true);
    assert.equal(c.libvirtUri, 'qemu:///system');
    assert.equal(c.seedDir, undefined);
    assert.equal(c.underSystemd, false);
    assert.ok(Object.isFrozen(c));
  });

  it('applies file < env < flags, snake_case keys in the file, on/off booleans', () => {
    const c = loadAgentConfig({
      env: { KLOUDAK_AGENT_CONFIG: file, KLOUDAK_AGENT_HEARTBEAT_MS: '3000', KLOUDAK_AGENT_BRIDGE: 'br-env', KLOUDAK_AGENT_JOIN_TOKEN: 'kjt1.x', KLOUDAK_AGENT_POOL_LEASES: 'off' },
      argv: ['--bridge', 'br-flag', '--fence-lease-ms=9000'],
    });
    assert.equal(c.orchestrator, 'orch.example:8443', 'file');
    assert.equal(c.dataDir, '/srv/agent', 'file (camelCase)');
    assert.equal(c.logLevel, 'debug', 'file (kebab-case)');
    assert.equal(c.nicOffload, false, 'off → false');
    assert.equal(c.heartbeatMs, 3000, 'env over file');
    assert.equal(c.bridge, 'br-flag', 'flag over env');
    assert.equal(c.fenceLeaseMs, 9000);
    assert.equal(c.joinToken, 'kjt1.x');
    assert.equal(c.poolLeases, false, 'KLOUDAK_AGENT_POOL_LEASES=off');
    assert.equal(hostSettingsOf(c).bridge, 'br-flag');
  });

  it('live migration: this host as peers reach it (default libvirt over TLS to the hostname), and the tap prefix', () => {
    const d = hostSettingsOf(loadAgentConfig({ env: { KLOUDAK_AGENT_CONFIG: file, KLOUDAK_AGENT_HOSTNAME: 'kvm-7' } }));
    assert.deepEqual(d.migration, { peerUri: 'qemu+tls://kvm-7/system', address: 'kvm-7', timeoutMs: 300_000 });
    assert.equal(d.tapPrefix, undefined);
    const s = hostSettingsOf(
      loadAgentConfig({
        env: {
          KLOUDAK_AGENT_CONFIG: file,
          KLOUDAK_AGENT_MIGRATION_URI: 'qemu+unix:///system?socket=/tmp/b/libvirt-sock',
          KLOUDAK_AGENT_MIGRATION_ADDRESS: '10.0.0.12',
          KLOUDAK_AGENT_MIGRATION_TIMEOUT_MS: '60000',
          KLOUDAK_AGENT_TAP_PREFIX: 'kb',
        },
      }),
    );
    assert.deepEqual(s.migration, { peerUri: 'qemu+unix:///system?socket=/tmp/b/libvirt-sock', address: '10.0.0.12', timeoutMs: 60_000 });
    assert.equal(s.tapPrefix, 'kb');
    assert.throws(() => loadAgentConfig({ env: { KLOUDAK_AGENT_CONFIG: file, KLOUDAK_AGENT_TAP_PREFIX: 'KL-' } }), ConfigError);
    assert.throws(() => loadAgentConfig({ env: { KLOUDAK_AGENT_CONFIG: file, KLOUDAK_AGENT_MIGRATION_ADDRESS: '10.0.0.1; rm -rf /' } }), ConfigError);
  });

  it('takes the config path from --config over KLOUDAK_AGENT_CONFIG, and refuses a named file that is missing', () => {
    const c = loadAgentConfig({ env: { KLOUDAK_AGENT_CONFIG: join(dir, 'nope.yaml') }, argv: [`--config=${file}`] });
    assert.equal(c.bridge, 'br-file');
    assert.throws(() => loadAgentConfig({ env: { KLOUDAK_AGENT_CONFIG: join(dir, 'nope.yaml') } }), ConfigError);
  });

  it('a test:/// URI is a simulated host: seeds default to <dataDir>/seeds', () => {
    const c = loadAgentConfig({ env: { KLOUDAK_AGENT_CONFIG: file, KLOUDAK_AGENT_LIBVIRT_URI: 'test:///tmp/h.xml' } });
    assert.equal(c.seedDir, '/srv/agent/seeds');
    assert.equal(hostSettingsOf(c).seedDir, '/srv/agent/seeds');
  });

  it('reads QEMU pid files from /run/libvirt/qemu on the machine\'s qemu:///system, from nowhere else unless told', () => {
    assert.equal(loadAgentConfig({ env: { KLOUDAK_AGENT_CONFIG: file } }).qemuRunDir, '/run/libvirt/qemu');
    assert.equal(loadAgentConfig({ env: { KLOUDAK_AGENT_CONFIG: file } }).fenceLibvirtTimeoutMs, 2000);
    assert.equal(loadAgentConfig({ env: { KLOUDAK_AGENT_CONFIG: file, KLOUDAK_AGENT_LIBVIRT_URI: 'test:///tmp/h.xml' } }).qemuRunDir, undefined, 'a simulated host must never kill the real host\'s QEMU');
    assert.equal(loadAgentConfig({ env: { KLOUDAK_AGENT_CONFIG: file, KLOUDAK_AGENT_LIBVIRT_URI: 'qemu:///session' } }).qemuRunDir, undefined);
    assert.equal(loadAgentConfig({ env: { KLOUDAK_AGENT_CONFIG: file, KLOUDAK_AGENT_LIBVIRT_SOCKET: '/tmp/private/libvirt-sock' } }).qemuRunDir, undefined, 'another libvirtd keeps its pid files elsewhere');
    const c = loadAgentConfig({ env: { KLOUDAK_AGENT_CONFIG: file, KLOUDAK_AGENT_LIBVIRT_URI: 'test:///tmp/h.xml' }, argv: ['--qemu-run-dir=/tmp/run', '--fence-libvirt-timeout-ms=300'] });
    assert.equal(c.qemuRunDir, '/tmp/run');
    assert.equal(c.fenceLibvirtTimeoutMs, 300);
    assert.ok(Object.isFrozen(c));
    assert.throws(() => loadAgentConfig({ env: { KLOUDAK_AGENT_CONFIG: file, KLOUDAK_AGENT_QEMU_RUN_DIR: 'run/qemu' } }), /qemuRunDir: must be an absolute path/);
  });

  it('knows when systemd started it', () => {
    const c = loadAgentConfig({ env: { KLOUDAK_AGENT_CONFIG: file, INVOCATION_ID: 'abc', NOTIFY_SOCKET: '/run/systemd/notify' } });
    assert.equal(c.underSystemd, true);
    assert.equal(c.notifySocket, '/run/systemd/notify');
  });

  it('refuses bad values, unknown keys and env-only keys in the file, with the path in the message', () => {
    const bad = (env: NodeJS.ProcessEnv, re: RegExp) => assert.throws(() => loadAgentConfig({ env: { KLOUDAK_AGENT_CONFIG: file, ...env } }), (e: unknown) => e instanceof ConfigError && re.test((e as Error).message));
    bad({ KLOUDAK_AGENT_DOMAIN_TYPE: 'xen' }, /domainType/);
    bad({ KLOUDAK_AGENT_HEARTBEAT_MS: 'soon' }, /heartbeatMs/);
    bad({ KLOUDAK_AGENT_ORCHESTRATOR: 'no-port' }, /orchestrator/);
    bad({ KLOUDAK_AGENT_DATA_DIR: 'relative/dir' }, /dataDir/);
    const typo = join(dir, 'typo.yaml');
    writeFileSync(typo, 'hearbeat_ms: 5\n');
    assert.throws(() => loadAgentConfig({ env: { KLOUDAK_AGENT_CONFIG: typo } }), ConfigError);
    const envOnly = join(dir, 'envonly.yaml');
    writeFileSync(envOnly, 'under_systemd: true\n');
    assert.throws(() => loadAgentConfig({ env: { KLOUDAK_AGENT_CONFIG: envOnly } }), /cannot be set here/);
    const notYaml = join(dir, 'bad.yaml');
    writeFileSync(notYaml, 'a: [1, 2\n');
    assert.throws(() => loadAgentConfig({ env: { KLOUDAK_AGENT_CONFIG: notYaml } }), /not valid YAML/);
  });
});
