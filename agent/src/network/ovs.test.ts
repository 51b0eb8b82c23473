/**
 * OvsNetworkDriver: argv and parsing against a fake runner, then behaviour against the real
 * Open vSwitch of this machine (started when it is not running) with the userspace datapath, and
 * VLAN isolation between network namespaces plugged into a test bridge.
 *
 * Every bridge, port, namespace and route is named after one test net (kt-<random>) and removed
 * by its cleanup, which the last test checks.
 */
import test, { after, before, describe } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import type { CommandResult, CommandRunner, RunOptions } from '../ports.js';
import { CommandError, ProcessRunner } from '../system/command-runner.js';
import { createTestNet, type NamespaceHost, type TestNet } from '../testing/netns.js';
import { ensureOvs } from '../testing/ovs-service.js';
import { OvsNetworkDriver, checkOvsName, parsePortTable } from './ovs.js';

/** Records calls and answers from a script. */
class FakeRunner implements CommandRunner {
  readonly calls: { argv: string[]; opts: RunOptions | undefined }[] = [];
  constructor(private readonly answer: (argv: readonly string[]) => Partial<CommandResult> = () => ({})) {}
  async run(argv: readonly string[], opts?: RunOptions): Promise<CommandResult> {
    this.calls.push({ argv: [...argv], opts });
    const r = { code: 0, stdout: '', stderr: '', ...this.answer(argv) };
    if (r.code !== 0 && !opts?.allowFailure) throw new CommandError({ argv, reason: 'exit', code: r.code, stderr: r.stderr });
    return r;
  }
}

describe('OvsNetworkDriver with a fake runner', () => {
  test('invalid names and VLANs are refused before anything runs', async () => {
    const fake = new FakeRunner();
    const ovs = new OvsNetworkDriver(fake, { datapathType: 'netdev', uplink: 'up0' });
    for (const bad of ['', 'a'.repeat(16), 'br 0', 'br;rm', '-br', '--help', '.', '..', 'br/0', 'brü', 'a\nb']) {
      await assert.rejects(ovs.ensureBridge(bad), /invalid OVS bridge name/, bad);
      await assert.rejects(ovs.listPorts(bad), /invalid OVS bridge name/);
      await assert.rejects(ovs.deletePort('br0', bad), /invalid OVS port name/);
    }
    for (const vlan of [0, 1, 4095, -1, 1.5, Number.NaN]) {
      await assert.rejects(ovs.ensureVlan('br0', vlan), /invalid VLAN/);
      await assert.rejects(ovs.removeVlan('br0', vlan), /invalid VLAN/);
    }
    assert.equal(fake.calls.length, 0);
    assert.throws(() => new OvsNetworkDriver(fake, { datapathType: 'netdev', uplink: 'eth0;x' }), /invalid OVS uplink name/);
    assert.throws(() => new OvsNetworkDriver(fake, { datapathType: 'kernel' as 'system' }), /datapath type/);
    assert.equal(checkOvsName('bridge', 'br-vm.1_x'), 'br-vm.1_x');
  });

  test('without an uplink, ensureVlan and removeVlan do nothing', async () => {
    const fake = new FakeRunner();
    const ovs = new OvsNetworkDriver(fake, { datapathType: 'netdev' });
    await ovs.ensureVlan('br0', 100);
    await ovs.removeVlan('br0', 100);
    assert.equal(fake.calls.length, 0);
  });

  test('commands: --timeout, --may-exist/--if-exists, the datapath type and set edits of trunks', async () => {
    const fake = new FakeRunner((argv) => {
      if (argv[0] === 'ovs-appctl') return { stdout: 'other\nbr0\n' };
      if (argv.includes('list-ports')) return { stdout: 'p1\nup0\n' };
      if (argv.includes('--columns=tag,trunks')) return { stdout: JSON.stringify({ data: [[['set', []], ['set', []]]], headings: ['tag', 'trunks'] }) };
      return {};
    });
    const ovs = new OvsNetworkDriver(fake, { datapathType: 'system', uplink: 'up0', timeoutMs: 2500 });
    await ovs.ensureBridge('br0');
    await ovs.ensureVlan('br0', 100);
    await ovs.removeVlan('br0', 100);
    await ovs.deletePort('br0', 'p1');
    assert.deepEqual(
      fake.calls.map((c) => c.argv),
      [
        ['ovs-vsctl', '--timeout=3', '--', '--may-exist', 'add-br', 'br0', '--', 'set', 'bridge', 'br0', 'datapath_type=system'],
        ['ovs-appctl', '--timeout=3', 'ofproto/list'],
        // The uplink has neither tag nor trunks (it carries every VLAN): parked at once.
        ['ovs-vsctl', '--timeout=3', 'list-ports', 'br0'],
        ['ovs-vsctl', '--timeout=3', '--format=json', '--columns=tag,trunks', 'list', 'port', 'up0'],
        ['ovs-vsctl', '--timeout=3', 'add', 'port', 'up0', 'trunks', '4095'],
        ['ovs-appctl', '--timeout=3', 'revalidator/wait'],
        // Each transaction that removes a value adds another: the set is never empty.
        ['ovs-vsctl', '--timeout=3', 'list-ports', 'br0'],
        ['ovs-vsctl', '--timeout=3', '--', 'add', 'port', 'up0', 'trunks', '100', '--', 'remove', 'port', 'up0', 'trunks', '4095'],
        ['ovs-vsctl', '--timeout=3', 'list-ports', 'br0'],
        ['ovs-vsctl', '--timeout=3', '--', 'add', 'port', 'up0', 'trunks', '4095', '--', 'remove', 'port', 'up0', 'trunks', '100'],
        // ...and returns once the datapath's cached flows follow.
        ['ovs-appctl', '--timeout=3', 'revalidator/wait'],
        ['ovs-vsctl', '--timeout=3', '--if-exists', 'del-port', 'br0', 'p1'],
      ],
    );
    // The runner's own limit is a backstop above ovs-vsctl's.
    assert.ok(fake.calls.every((c) => (c.opts?.timeoutMs ?? 0) > 3000));
  });

  test('a bridge ovs-vswitchd does not run is an error, with the kernel module hint for system', async () => {
    const fake = new FakeRunner((argv) =>
      argv[0] === 'ovs-appctl' ? { stdout: 'other\n' } : { stderr: "ovs-vsctl: Error detected while setting up 'br0'.  See ovs-vswitchd log for details.\n" },
    );
    const err = await new OvsNetworkDriver(fake, { datapathType: 'system' }).ensureBridge('br0').catch((e: unknown) => e);
    assert.ok(err instanceof CommandError);
    assert.equal(err.reason, 'unexpected_output');
    assert.match(err.message, /^cannot create OVS bridge br0: ovs-vsctl .*kernel module.*Error detected while setting up/);
  });

  test('a failing ovs-vsctl is a CommandError saying what the driver was doing', async () => {
    const fake = new FakeRunner(() => ({ code: 1, stderr: 'ovs-vsctl: unix:/var/run/openvswitch/db.sock: database connection failed\n' }));
    const err = await new OvsNetworkDriver(fake, { datapathType: 'netdev' }).deletePort('br0', 'p1').catch((e: unknown) => e);
    assert.ok(err instanceof CommandError);
    assert.equal(err.code, 1);
    assert.match(err.message, /^cannot delete port p1 of OVS bridge br0: ovs-vsctl --timeout=10 --if-exists del-port br0 p1 exited with code 1: .*database connection failed/);
  });

  test('listPorts of a missing bridge is empty; another list-ports failure throws', async () => {
    const missing = new FakeRunner((argv) => (argv.includes('list-ports') ? { code: 1 } : argv.includes('br-exists') ? { code: 2 } : {}));
    assert.deepEqual(await new OvsNetworkDriver(missing, { datapathType: 'netdev' }).listPorts('br0'), []);
    const broken = new FakeRunner((argv) => (argv.includes('list-ports') ? { code: 1, stderr: 'boom' } : {}));
    await assert.rejects(new OvsNetworkDriver(broken, { datapathType: 'netdev' }).listPorts('br0'), /cannot list the ports of OVS bridge br0: .*boom/);
  });

  test('parsePortTable decodes OVSDB JSON sets and maps', () => {
    const stdout = JSON.stringify({
      data: [
        ['up0', ['set', []], ['map', []]],
        ['p1', 10, ['map', [['k 2', 'v="q"'], ['kloudak-vm', 'abc'], ['__proto__', 'x']]]],
        ['p2', ['set', [4094]], ['map', []]],
      ],
      headings: ['name', 'tag', 'external_ids'],
    });
    const ports = parsePortTable(stdout, 'br0');
    assert.deepEqual(ports.get('up0'), { name: 'up0', bridge: 'br0', tag: null, externalIds: {} });
    assert.equal(ports.get('p1')?.tag, 10);
    assert.deepEqual(Object.entries(ports.get('p1')?.externalIds ?? {}), [
      ['k 2', 'v="q"'],
      ['kloudak-vm', 'abc'],
      ['__proto__', 'x'],
    ]);
    assert.equal(Object.getPrototypeOf(ports.get('p1')?.externalIds), Object.prototype);
    assert.equal(ports.get('p2')?.tag, 4094);
    assert.throws(() => parsePortTable('{"headings":["name"],"data":[]}', 'b'), /no column tag/);
    assert.throws(() => parsePortTable('not json', 'b'));
    assert.throws(() => parsePortTable(JSON.stringify({ headings: ['name', 'tag', 'external_ids'], data: [['p', 'x', ['map', []]]] }), 'b'), /tag/);
  });
});

describe('OvsNetworkDriver against Open vSwitch', { timeout: 120_000 }, () => {
  const runner = new ProcessRunner();
  let net: TestNet;
  let ovs: OvsNetworkDriver;
  let uplink: string;

  const vsctl = async (...args: string[]): Promise<string> => (await runner.run(['ovs-vsctl', '--timeout=10', ...args])).stdout.trim();
  /** A bridge made by the driver, removed by the net's cleanup. */
  const driverBridge = async (suffix: string, driver = ovs): Promise<string> => {
    const br = net.name(suffix);
    net.defer(`bridge ${br}`, () => vsctl('--if-exists', 'del-br', br).then(() => {}));
    await driver.ensureBridge(br);
    return br;
  };
  /** An internal port, to stand in for a physical uplink. */
  const addInternalPort = (br: string, port: string): Promise<string> => vsctl('add-port', br, port, '--', 'set', 'interface', port, 'type=internal');
  const trunks = async (port: string): Promise<string> => vsctl('get', 'port', port, 'trunks');

  before(async () => {
    await ensureOvs();
    net = await createTestNet();
    uplink = net.name('up');
    ovs = new OvsNetworkDriver(runner, { datapathType: 'netdev', uplink, timeoutMs: 10_000 });
  });
  // Also after a failed test; the last test checks that it leaves nothing behind.
  after(() => net?.cleanup());

  test('ensureBridge creates a netdev bridge and is idempotent', async () => {
    const br = await driverBridge('br1');
    assert.ok((await vsctl('list-br')).split('\n').includes(br));
    assert.equal(await vsctl('get', 'bridge', br, 'datapath_type'), 'netdev');
    await ovs.ensureBridge(br);
    await ovs.ensureBridge(br);
    assert.equal((await vsctl('list-br')).split('\n').filter((b) => b === br).length, 1);
  });

  test('ensureBridge with the system datapath fails clearly where the kernel module is missing', async (t) => {
    const system = new OvsNetworkDriver(runner, { datapathType: 'system' });
    if (existsSync('/sys/module/openvswitch')) {
      t.diagnostic('openvswitch kernel module present: the system datapath must work');
      await driverBridge('sys', system);
      return;
    }
    const err = await driverBridge('sys', system).catch((e: unknown) => e);
    assert.ok(err instanceof CommandError, String(err));
    assert.match(err.message, /cannot create OVS bridge .*-sys: .*ovs-vswitchd does not run it \(datapath_type=system: is the openvswitch kernel module loaded\?/);
  });

  test('ensureVlan and removeVlan edit the uplink trunks one value at a time, never leaving the set empty', async () => {
    const br = await driverBridge('br2');
    await addInternalPort(br, uplink);
    assert.equal(await trunks(uplink), '[]', 'as an operator adds it: every VLAN');
    await ovs.ensureBridge(br);
    assert.equal(await trunks(uplink), '[4095]', 'ensureBridge parks an unrestricted uplink');

    await ovs.ensureVlan(br, 100);
    assert.equal(await trunks(uplink), '[100]', 'the parked value goes once a VLAN is in');
    await ovs.ensureVlan(br, 100); // idempotent
    await ovs.ensureVlan(br, 200);
    assert.equal(await trunks(uplink), '[100, 200]');

    await ovs.removeVlan(br, 100);
    await ovs.removeVlan(br, 100); // idempotent
    await ovs.removeVlan(br, 300); // never there
    assert.equal(await trunks(uplink), '[200, 4095]');
    await ovs.removeVlan(br, 200);
    assert.equal(await trunks(uplink), '[4095]', 'the last VLAN removed: parked, not empty (empty = every VLAN)');
    await ovs.ensureVlan(br, 200);
    assert.equal(await trunks(uplink), '[200]');

    // A bridge without the uplink: ensureVlan refuses, removeVlan has nothing to do.
    const other = await driverBridge('br3');
    await assert.rejects(ovs.ensureVlan(other, 100), (e) => e instanceof CommandError && /found no port .*-up on bridge .*-br3/.test(e.message));
    await ovs.removeVlan(other, 200);
    assert.equal(await trunks(uplink), '[200]', 'the uplink of another bridge is left alone');
    // A missing bridge likewise.
    const missing = net.name('nobr');
    await assert.rejects(ovs.ensureVlan(missing, 100), /found no bridge/);
    await ovs.removeVlan(missing, 100);
    await vsctl('del-port', br, uplink);
  });

  test('listPorts reports the bridge ports with tags and external_ids', async () => {
    const br = await driverBridge('br4');
    const port1 = net.name('p1');
    const port2 = net.name('p2');
    await vsctl('add-port', br, port1, 'tag=100', '--', 'set', 'interface', port1, 'type=internal', '--', 'set', 'port', port1,
      'external_ids:kloudak-vm=0b7c1d62-4c36-4a55-9d0e-8f8f0a6a1b2c', 'external_ids:"kloudak net"="a=b \\"c\\""');
    await addInternalPort(br, port2);
    // A port of another bridge is not listed.
    const other = await driverBridge('br5');
    await addInternalPort(other, net.name('p3'));

    const ports = await ovs.listPorts(br);
    assert.deepEqual(ports, [
      { name: port1, bridge: br, tag: 100, externalIds: { 'kloudak-vm': '0b7c1d62-4c36-4a55-9d0e-8f8f0a6a1b2c', 'kloudak net': 'a=b "c"' } },
      { name: port2, bridge: br, tag: null, externalIds: {} },
    ]);
    assert.deepEqual(await ovs.listPorts(net.name('nobr')), [], 'a missing bridge has no ports');
  });

  test('deletePort is idempotent and never deletes a port of another bridge', async () => {
    const br = await driverBridge('br6');
    const other = await driverBridge('br7');
    const port = net.name('p4');
    const foreign = net.name('p5');
    await addInternalPort(br, port);
    await addInternalPort(other, foreign);

    await ovs.deletePort(br, port);
    assert.deepEqual(await ovs.listPorts(br), []);
    await ovs.deletePort(br, port);
    await ovs.deletePort(net.name('nobr'), port);

    await assert.rejects(ovs.deletePort(br, foreign), (e) => e instanceof CommandError && /does not have a port/.test(e.message));
    assert.deepEqual((await ovs.listPorts(other)).map((p) => p.name), [foreign]);
  });

  describe('VLAN isolation between namespaces on a netdev bridge', () => {
    let a: NamespaceHost;
    let b: NamespaceHost;
    let c: NamespaceHost;

    /** Whether `from` gets an echo reply from `to` (a few tries for the positive case). */
    const ping = async (from: NamespaceHost, to: NamespaceHost, tries = 1): Promise<boolean> => {
      for (let i = 0; i < tries; i++) {
        const r = await net.exec(from.ns, ['ping', '-n', '-c', '1', '-W', '1', to.ip], { allowFailure: true, timeoutMs: 5000 });
        if (r.code === 0) return true;
      }
      return false;
    };
    /** Connects from `from` to a TCP port of `to`; resolves with what the client printed, or rejects. */
    const tcpClient = (from: NamespaceHost, to: NamespaceHost, port: number, payloadBytes: number, timeoutMs: number): Promise<CommandResult> =>
      net.exec(
        from.ns,
        [
          process.execPath,
          '-e',
          `const s = require('node:net').connect(${port}, ${JSON.stringify(to.ip)});
           let got = '';
           s.setTimeout(${timeoutMs}, () => { console.error('timeout'); process.exit(2); });
           s.on('connect', () => s.end(Buffer.alloc(${payloadBytes}, 'k')));
           s.on('data', (d) => (got += d));
           s.on('end', () => { process.stdout.write(got); process.exit(0); });
           s.on('error', (e) => { console.error(e.message); process.exit(1); });`,
        ],
        { timeoutMs: timeoutMs + 5000 },
      );

    before(async () => {
      const br = await net.addBridge('iso');
      const subnet = '10.241.0';
      a = await net.addNamespaceHost({ name: 'a', bridge: br, vlan: 100, address: `${subnet}.1/24` });
      b = await net.addNamespaceHost({ name: 'b', bridge: br, vlan: 100, address: `${subnet}.2/24` });
      // Same subnet, other VLAN.
      c = await net.addNamespaceHost({ name: 'c', bridge: br, vlan: 200, address: `${subnet}.3/24`, externalIds: { 'kloudak-net': 'c' } });
    });

    test('the namespace ports are on the bridge with their tags', async () => {
      const ports = await ovs.listPorts(a.bridge);
      assert.deepEqual(
        ports.map((p) => [p.name, p.tag, p.externalIds]),
        [
          [a.port, 100, {}],
          [b.port, 100, {}],
          [c.port, 200, { 'kloudak-net': 'c' }],
        ],
      );
    });

    test('hosts on the same VLAN reach each other: ping and a TCP exchange of 1 MiB', async () => {
      assert.ok(await ping(a, b, 3), 'a → b ping');
      assert.ok(await ping(b, a, 3), 'b → a ping');

      // Counts what it receives and answers with the count: needs working TCP checksums.
      const server = net.spawn(a.ns, [
        process.execPath,
        '-e',
        `require('node:net').createServer((s) => {
           let n = 0;
           s.on('data', (d) => (n += d.length));
           s.on('end', () => s.end('received ' + n));
         }).listen(7000, ${JSON.stringify(a.ip)}, () => console.log('listening'));`,
      ]);
      await server.waitForOutput('listening');
      const r = await tcpClient(b, a, 7000, 1024 * 1024, 10_000);
      assert.equal(r.stdout, `received ${1024 * 1024}`);
      await server.kill();
    });

    test('a host on another VLAN in the same subnet cannot reach them', async () => {
      const server = net.spawn(a.ns, [
        process.execPath,
        '-e',
        `require('node:net').createServer((s) => s.end('hello')).listen(7001, ${JSON.stringify(a.ip)}, () => console.log('listening'));`,
      ]);
      await server.waitForOutput('listening');
      // Each failure waits out a time-out: run them side by side.
      const [cToA, cToB, aToC, tcpCToA, tcpBToA] = await Promise.all([
        ping(c, a),
        ping(c, b),
        ping(a, c),
        tcpClient(c, a, 7001, 10, 1500).then(
          () => 'connected',
          (e: unknown) => (e instanceof CommandError ? 'failed' : `unexpected ${String(e)}`),
        ),
        tcpClient(b, a, 7001, 10, 5000),
      ]);
      assert.equal(cToA, false, 'c → a ping must fail');
      assert.equal(cToB, false, 'c → b ping must fail');
      assert.equal(aToC, false, 'a → c ping must fail');
      assert.equal(tcpCToA, 'failed', 'c → a TCP must fail');
      assert.equal(tcpBToA.stdout, 'hello', 'while b → a TCP works');

      // Control: the same host on VLAN 100 does get through, so the tag was what stopped it.
      await vsctl('set', 'port', c.port, 'tag=100');
      assert.ok(await ping(c, a, 3), 'c → a once c is on VLAN 100');
      await server.kill();
    });
  });

  test('cleanup removes every bridge, port, namespace and route it made', async () => {
    const id = net.id;
    const blackholes = net.blackholes();
    assert.deepEqual(blackholes.map((r) => r.dst), ['10.241.0.0/16']);
    await net.cleanup();
    assert.deepEqual(await net.leftovers(), []);
    const [bridges, namespaces, routes, links] = await Promise.all([
      vsctl('list-br'),
      runner.run(['ip', 'netns', 'list']),
      runner.run(['ip', 'route', 'show']),
      runner.run(['ip', '-o', 'link', 'show']),
    ]);
    assert.ok(!bridges.includes(id), bridges);
    assert.ok(!namespaces.stdout.includes(id), namespaces.stdout);
    assert.ok(!links.stdout.includes(id), 'no veth or internal port left');
    for (const { dst, metric } of blackholes) {
      assert.ok(!routes.stdout.includes(`blackhole ${dst} metric ${metric}`), routes.stdout);
    }
  });
});
