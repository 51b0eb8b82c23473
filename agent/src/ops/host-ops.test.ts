// Host operations against real libvirt (qemu driver, TCG), real Open vSwitch (netdev datapath),
// network-namespace clients and the tiny test guest built by scripts/build-test-guest.sh.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { chmodSync, copyFileSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { DisconnectedError, Flags, Libvirt, type StoragePoolRef } from '@kloudak/libvirt';
import { ensureLibvirtd, stopLibvirtd } from '@kloudak/libvirt/testing';
import { IsoSeedBuilder } from '../cloudinit/seed.js';
import { LibvirtHypervisor } from '../hypervisor/libvirt-hypervisor.js';
import { domainName, rootVolumeName, seedVolumeName, tapName } from '../names.js';
import { OvsNetworkDriver } from '../network/ovs.js';
import type { DomainState, Hypervisor, NetworkDriver, SeedBuilder, Storage } from '../ports.js';
import { DEFAULT_HOST_SETTINGS, type HostSettings } from '../settings.js';
import type { VmSpec } from '../spec.js';
import { LibvirtStorage } from '../storage/libvirt-storage.js';
import { ProcessRunner } from '../system/command-runner.js';
import type { CrashJob } from '../testing/crash-child.js';
import { createTestNet, type TestNet } from '../testing/netns.js';
import { ensureOvs } from '../testing/ovs-service.js';
import { HostOperations } from './host-ops.js';

const REPO = fileURLToPath(new URL('../../../', import.meta.url));
const GUEST = process.env['KLOUDAK_TEST_GUEST_DIR'] ?? join(REPO, '.cache', 'test-guest');
const RUN = `kh${randomBytes(3).toString('hex')}`;

const CRASH_CHILD = fileURLToPath(new URL('../testing/crash-child.js', import.meta.url));

/** How a crash child ended after it was told to stop at a step. */
interface Killed {
  /** The step it announced last (`port.method`). */
  step: string;
  /** How it ended: SIGKILL when the kill happened; an exit code means it ended by itself. */
  signal: NodeJS.Signals | null;
  code: number | null;
  /** Everything it wrote to stdout (STEP lines). */
  stdout: string;
}

/**
 * Runs a host operation in a child process and SIGKILLs it right after its `stopAfter`-th step.
 * Resolves with the step it was killed after and how the child ended, or null when the operation
 * finished first. The callers check that the kill really happened (signal SIGKILL, no later step).
 */
async function killAfterStep(job: CrashJob, dir: string): Promise<Killed | null> {
  const file = join(dir, `job-${job.op}-${job.stopAfter}.json`);
  writeFileSync(file, JSON.stringify(job));
  const child = spawn(process.execPath, [CRASH_CHILD, file], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stderr.on('data', (d: Buffer) => (err += d.toString()));
  // 'close', not 'exit': stdout is fully read by then, so `out` holds everything the child wrote.
  const closed = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.on('close', (code, signal) => resolve({ code, signal })));
  return new Promise<Killed | null>((resolve, reject) => {
    let step: string | null = null;
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`crash child made no progress in 60 s; stdout: ${out} stderr: ${err}`));
    }, 60_000);
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      if (step !== null) return;
      const m = new RegExp(`^STEP ${job.stopAfter} (\\S+)$`, 'm').exec(out);
      if (m) {
        step = m[1] ?? '';
        child.kill('SIGKILL'); // no chance to clean up: the point of the test
      }
    });
    void closed.then(({ code, signal }) => {
      clearTimeout(timer);
      if (step !== null) resolve({ step, signal, code, stdout: out });
      else if (code === 0 && /^DONE /m.test(out)) resolve(null);
      else reject(new Error(`crash child failed (exit ${code ?? signal}): ${err}`));
    });
  });
}

/** Asserts that the child was killed at the step it announced, and ran nothing after it. */
function assertKilledAt(killed: Killed, k: number): void {
  assert.equal(killed.signal, 'SIGKILL', `the child was killed after ${killed.step} (it ended with code ${killed.code} instead)`);
  assert.doesNotMatch(killed.stdout, new RegExp(`^(STEP ${k + 1} |DONE )`, 'm'), `nothing ran after ${killed.step}:\n${killed.stdout}`);
}

/** Wrap a port so that calling `method` throws (fault injection), everything else passes through. */
function failing<T extends object>(port: T, method: string | null): T {
  return new Proxy(port, {
    get(target, prop, receiver) {
      const v = Reflect.get(target, prop, receiver) as unknown;
      if (typeof v !== 'function') return v;
      if (prop === method) return async () => Promise.reject(new Error(`injected fault in ${String(prop)}`));
      return (v as (...a: unknown[]) => unknown).bind(target);
    },
  });
}

describe('host operations on qemu:///system with Open vSwitch and the test guest', { timeout: 300_000 }, () => {
  let lv: Libvirt;
  let net: TestNet;
  let poolDir: string;
  let consoleDir: string;
  let pool: StoragePoolRef;
  let settings: HostSettings;
  let hv: Hypervisor;
  let storage: Storage;
  let network: NetworkDriver;
  let seeds: SeedBuilder;
  let ops: HostOperations;
  const made: string[] = [];

  function spec(vlan: number, ip: string, hostname = 'guest'): VmSpec {
    const vmId = randomUUID();
    made.push(vmId);
    const n = made.length;
    return {
      vmId,
      hostname,
      cpu: 1,
      ramMb: 128,
      diskGb: 1,
      pool: RUN,
      templateVolume: 'testguest.qcow2',
      boot: { kernel: join(GUEST, 'vmlinux'), initrd: join(GUEST, 'initrd.img'), cmdline: 'console=ttyS0 panic=-1 root=/dev/vda quiet' },
      nics: [{ networkId: randomUUID(), mac: `52:54:00:4b:00:${n.toString(16).padStart(2, '0')}`, vlan, ip: { address: `${ip}/24` } }],
      sshKeys: ['ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA test@kloudak'],
      ha: true,
    };
  }

  /** What really exists for a VM, asked of libvirt and ovs-vsctl, not of our own records. */
  async function leftovers(vmId: string): Promise<string[]> {
    const found: string[] = [];
    if ((await hv.state(domainName(vmId))) !== null) found.push('domain');
    for (const v of await storage.list(RUN)) if (v.name.includes(vmId)) found.push(`volume ${v.name}`);
    const ports = execFileSync('ovs-vsctl', ['--timeout=10', 'list-ports', settings.bridge], { encoding: 'utf8' });
    if (ports.split('\n').includes(tapName(vmId, 0))) found.push(`port ${tapName(vmId, 0)}`);
    return found;
  }

  /** A VM's domain state, volumes and NIC port as libvirt and ovs-vsctl see them. */
  async function observed(vmId: string): Promise<{ domain: DomainState | null; volumes: string[]; port: number | null | undefined }> {
    const volumes = (await storage.list(RUN)).filter((v) => v.name.includes(vmId)).map((v) => v.name).sort();
    const port = (await network.listPorts(settings.bridge)).find((p) => p.name === tapName(vmId, 0));
    return { domain: await hv.state(domainName(vmId)), volumes, port: port === undefined ? undefined : port.tag };
  }

  async function waitReady(vmId: string, timeoutMs = 90_000): Promise<string> {
    const until = Date.now() + timeoutMs;
    for (;;) {
      const log = await ops.readConsole(vmId);
      const line = log.split('\n').find((l) => l.startsWith('KLOUDAK-READY'));
      if (line) return line.trim();
      if (Date.now() > until) throw new Error(`no ready line after ${timeoutMs} ms:\n${log.slice(-2000)}`);
      await new Promise((r) => setTimeout(r, 250));
    }
  }

  before(async () => {
    if (!existsSync(join(GUEST, 'template.qcow2'))) execFileSync('bash', [join(REPO, 'scripts/build-test-guest.sh')], { stdio: 'inherit' });
    await ensureLibvirtd();
    await ensureOvs();
    lv = await Libvirt.connect({ uri: 'qemu:///system' });
    net = await createTestNet('kh-');
    poolDir = mkdtempSync(join(tmpdir(), `${RUN}-pool-`));
    rmSync(poolDir, { recursive: true });
    pool = await lv.defineStoragePool(`<pool type='dir'><name>${RUN}</name><target><path>${poolDir}</path></target></pool>`);
    await lv.createStoragePool(pool, Flags.POOL_CREATE_WITH_BUILD);
    copyFileSync(join(GUEST, 'template.qcow2'), join(poolDir, 'testguest.qcow2'));
    consoleDir = mkdtempSync(join(tmpdir(), `${RUN}-console-`));
    chmodSync(consoleDir, 0o755);
    const bridge = await net.addBridge('br');
    settings = { ...DEFAULT_HOST_SETTINGS, domainType: 'qemu', ovsDatapath: 'netdev', nicOffload: false, bridge, consoleDir, shutdownTimeoutMs: 20_000 };
    const runner = new ProcessRunner();
    hv = new LibvirtHypervisor(lv);
    storage = new LibvirtStorage(lv);
    network = new OvsNetworkDriver(runner, { datapathType: 'netdev' });
    seeds = new IsoSeedBuilder(runner);
    ops = new HostOperations({ hypervisor: hv, storage, network, seeds, settings });
  });

  after(async () => {
    for (const vmId of made) await ops?.deleteVm({ vmId, pool: RUN }).catch(() => undefined);
    await storage?.delete(RUN, 'testguest.qcow2').catch(() => undefined);
    if (pool) {
      await lv.destroyStoragePool(pool).catch(() => undefined);
      await lv.undefineStoragePool(pool).catch(() => undefined);
    }
    if (poolDir) rmSync(poolDir, { recursive: true, force: true });
    if (consoleDir) rmSync(consoleDir, { recursive: true, force: true });
    await net?.cleanup();
    await lv?.close();
  });

  it('CreateVm boots the guest with the address and VLAN it was given; only its VLAN reaches it; DeleteVm leaves nothing', async () => {
    const s = spec(100, '10.243.0.10', 'web-1');
    const same = await net.addNamespaceHost({ name: 'same', bridge: settings.bridge, vlan: 100, address: '10.243.0.20/24' });
    const other = await net.addNamespaceHost({ name: 'other', bridge: settings.bridge, vlan: 200, address: '10.243.0.30/24' });
    const started = Date.now();
    await ops.createVm(s);
    const ready = await waitReady(s.vmId);
    const bootMs = Date.now() - started;
    assert.match(ready, new RegExp(`instance-id=${s.vmId} hostname=web-1 ip=10\\.243\\.0\\.10`));
    const fetchIn = (ns: string) =>
      net.exec(ns, [process.execPath, '-e', `fetch('http://10.243.0.10/',{signal:AbortSignal.timeout(4000)}).then(r=>r.text()).then(t=>process.stdout.write(t),()=>process.exit(3))`], { allowFailure: true, timeoutMs: 15_000 });
    const got = await fetchIn(same.ns);
    assert.equal(got.code, 0, got.stderr);
    assert.equal(got.stdout.trim(), s.vmId, 'the guest serves its instance-id on the VLAN it was given');
    const blocked = await fetchIn(other.ns);
    assert.notEqual(blocked.code, 0, 'a client on another VLAN cannot reach the VM');
    // libvirtd restarted under a running VM: the guest keeps running (same QEMU process) and
    // serving, the client reconnects by itself, and operations work again afterwards.
    const qemuPid = () => readFileSync(`/run/libvirt/qemu/${domainName(s.vmId)}.pid`, 'utf8').trim();
    const pidBefore = qemuPid();
    await stopLibvirtd();
    const whileDown = await fetchIn(same.ns);
    assert.equal(whileDown.stdout.trim(), s.vmId, 'the guest serves while libvirtd is down');
    // Calls fail at once with the client's typed error while libvirtd is down (the client is
    // reconnecting, not closed); they do not hang until a timeout.
    const downStarted = Date.now();
    await assert.rejects(hv.state(domainName(s.vmId)), (err: unknown) => {
      assert.ok(err instanceof DisconnectedError, `a DisconnectedError while libvirtd is down, not ${String(err)}`);
      assert.notEqual(err.state, 'closed', 'the client keeps reconnecting');
      return true;
    });
    const downMs = Date.now() - downStarted;
    assert.ok(downMs < 2000, `the call failed at once (${downMs} ms), it did not wait for a timeout`);
    await ensureLibvirtd();
    for (const until = Date.now() + 30_000; lv.state !== 'ready'; ) {
      assert.ok(Date.now() < until, `client reconnected (state ${lv.state})`);
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.equal(await hv.state(domainName(s.vmId)), 'running');
    assert.equal(qemuPid(), pidBefore, 'the same QEMU process: the VM was never restarted');
    // Running CreateVm again changes nothing.
    await ops.createVm(s);
    assert.equal(await hv.state(domainName(s.vmId)), 'running');
    const inv = await ops.inventory([RUN]);
    assert.ok(inv.domains.some((d) => d.vmId === s.vmId && d.state === 'running'));
    assert.deepEqual(inv.volumes.filter((v) => v.vmId === s.vmId).map((v) => v.name).sort(), [rootVolumeName(s.vmId), seedVolumeName(s.vmId)]);
    assert.ok(inv.ports.some((p) => p.name === tapName(s.vmId, 0) && p.tag === 100));
    console.log(`# boot to ready line: ${bootMs} ms`);
    // Live NIC hot-plug on another VLAN, then unplug; both idempotent.
    const nic = { networkId: randomUUID(), mac: '52:54:00:4b:01:01', vlan: 300 };
    await ops.attachInterface(s.vmId, 1, nic);
    await ops.attachInterface(s.vmId, 1, nic);
    const withNic = await network.listPorts(settings.bridge);
    assert.equal(withNic.find((p) => p.name === tapName(s.vmId, 1))?.tag, 300);
    await ops.detachInterface(s.vmId, 1, nic);
    await ops.detachInterface(s.vmId, 1, nic);
    assert.ok(!(await network.listPorts(settings.bridge)).some((p) => p.name === tapName(s.vmId, 1)), 'NIC port gone after detach');
    // Graceful stop (the guest powers off on ACPI), start again, then delete twice.
    assert.equal(await ops.stopVm(s.vmId), 'graceful');
    assert.equal(await ops.stopVm(s.vmId), 'already-off');
    await ops.startVm(s.vmId);
    assert.equal(await hv.state(domainName(s.vmId)), 'running');
    await ops.deleteVm({ vmId: s.vmId, pool: RUN });
    await ops.deleteVm({ vmId: s.vmId, pool: RUN });
    assert.deepEqual(await leftovers(s.vmId), []);
    assert.equal(await ops.readConsole(s.vmId), '', 'console log removed');
  });

  for (const [port, method] of [
    ['storage', 'cloneOverlay'],
    ['seeds', 'build'],
    ['storage', 'putRaw'],
    ['hypervisor', 'define'],
    ['hypervisor', 'start'],
  ] as const) {
    it(`CreateVm failing at ${port}.${method} undoes every step before it`, async () => {
      const s = spec(100, '10.243.0.11');
      const deps = { hypervisor: hv, storage, network, seeds, settings };
      const faulty = new HostOperations({ ...deps, [port]: failing(deps[port], method) });
      await assert.rejects(faulty.createVm(s), new RegExp(`injected fault in ${method}`));
      assert.deepEqual(await leftovers(s.vmId), [], 'checked through libvirt and ovs-vsctl');
    });
  }

  it('CreateVm with ovs-vsctl failing gives a clear error and leaves nothing behind', async () => {
    const s = spec(100, '10.243.0.13');
    const real = new ProcessRunner();
    // Every ovs-vsctl call fails the way it does when ovsdb-server is down.
    const broken = {
      run: (argv: readonly string[], opts?: Parameters<ProcessRunner['run']>[1]) =>
        argv[0] === 'ovs-vsctl' ? real.run(['sh', '-c', 'echo "ovs-vsctl: unix:/run/openvswitch/db.sock: database connection failed (No such file or directory)" >&2; exit 1'], opts) : real.run(argv, opts),
    };
    const faulty = new HostOperations({ hypervisor: hv, storage, network: new OvsNetworkDriver(broken, { datapathType: 'netdev' }), seeds, settings });
    await assert.rejects(faulty.createVm(s), /database connection failed/);
    assert.deepEqual(await leftovers(s.vmId), []);
  });

  it('CreateVm killed after each step, then run again: the VM ends up right and nothing is orphaned', async () => {
    const killedAfter: string[] = [];
    for (let k = 1; ; k++) {
      const s = spec(100, '10.243.0.14');
      const killed = await killAfterStep({ op: 'create', spec: s, settings, stopAfter: k }, consoleDir);
      if (killed === null) break;
      const step = killed.step;
      assertKilledAt(killed, k);
      killedAfter.push(step);
      // The host holds exactly what the steps up to the kill made: proof that the process died there.
      const root = rootVolumeName(s.vmId);
      const seed = seedVolumeName(s.vmId);
      const expected: Record<string, Awaited<ReturnType<typeof observed>>> = {
        'network.ensureBridge': { domain: null, volumes: [], port: undefined },
        'network.ensureVlan': { domain: null, volumes: [], port: undefined },
        'storage.cloneOverlay': { domain: null, volumes: [root], port: undefined },
        'seeds.build': { domain: null, volumes: [root], port: undefined },
        'storage.putRaw': { domain: null, volumes: [root, seed].sort(), port: undefined },
        'hypervisor.define': { domain: 'shutoff', volumes: [root, seed].sort(), port: undefined },
        'hypervisor.start': { domain: 'running', volumes: [root, seed].sort(), port: 100 },
      };
      assert.deepEqual(await observed(s.vmId), expected[step], `what the host holds after a kill after ${step}`);
      // The orchestrator retries the command: the same CreateVm again, in another process.
      await ops.createVm(s);
      assert.equal(await hv.state(domainName(s.vmId)), 'running', `running after a kill after ${step}`);
      const inv = await ops.inventory([RUN]);
      assert.deepEqual(inv.volumes.filter((v) => v.vmId === s.vmId).map((v) => v.name).sort(), [rootVolumeName(s.vmId), seedVolumeName(s.vmId)]);
      assert.deepEqual(inv.ports.filter((p) => p.name.startsWith(tapName(s.vmId, 0))).map((p) => [p.name, p.tag]), [[tapName(s.vmId, 0), 100]]);
      await ops.deleteVm({ vmId: s.vmId, pool: RUN });
      assert.deepEqual(await leftovers(s.vmId), [], `nothing left after a kill after ${step}, a retry and a delete`);
    }
    assert.deepEqual(killedAfter, [
      'network.ensureBridge',
      'network.ensureVlan',
      'storage.cloneOverlay',
      'seeds.build',
      'storage.putRaw',
      'hypervisor.define',
      'hypervisor.start',
    ]);
  });

  it('CreateVm killed after each step, then deleted instead: nothing is orphaned', async () => {
    for (let k = 1; ; k++) {
      const s = spec(100, '10.243.0.15');
      const killed = await killAfterStep({ op: 'create', spec: s, settings, stopAfter: k }, consoleDir);
      if (killed === null) break;
      assertKilledAt(killed, k);
      const step = killed.step;
      // The orchestrator gives up on the VM (rollback): DeleteVm must clean whatever the dead process made.
      await ops.deleteVm({ vmId: s.vmId, pool: RUN });
      assert.deepEqual(await leftovers(s.vmId), [], `nothing left after a kill after ${step} and a delete`);
    }
  });

  it('DeleteVm killed after each step, then run again: nothing is orphaned', async () => {
    const killedAfter: string[] = [];
    for (let k = 1; ; k++) {
      const s = spec(100, '10.243.0.16');
      await ops.createVm(s);
      const killed = await killAfterStep({ op: 'delete', spec: s, settings, stopAfter: k }, consoleDir);
      if (killed === null) {
        assert.deepEqual(await leftovers(s.vmId), []);
        break;
      }
      assertKilledAt(killed, k);
      const step = killed.step;
      killedAfter.push(step);
      // What is left shows where the process died: after destroy the domain is off, after
      // undefine it is gone, and each storage.delete removes one of the two volumes.
      const left = await observed(s.vmId);
      const expectedDomain = k === 1 ? 'shutoff' : null;
      assert.equal(left.domain, expectedDomain, `domain after a kill after step ${k} (${step})`);
      assert.equal(left.volumes.length, k <= 2 ? 2 : 4 - k, `volumes after a kill after step ${k} (${step}): ${left.volumes.join(', ')}`);
      await ops.deleteVm({ vmId: s.vmId, pool: RUN });
      assert.deepEqual(await leftovers(s.vmId), [], `nothing left after a kill after ${step} and a retry`);
    }
    // libvirt removes the OVS port itself on destroy, so deletePort is not a step here.
    assert.deepEqual(killedAfter, ['hypervisor.destroy', 'hypervisor.undefine', 'storage.delete', 'storage.delete']);
  });

  it('Fence powers off the listed VMs at once and reports them', async () => {
    const s = spec(100, '10.243.0.12');
    await ops.createVm(s);
    const r = await ops.fence([s.vmId, randomUUID()]);
    assert.deepEqual(r.stopped, [s.vmId]);
    assert.deepEqual(r.failed, []);
    assert.equal(await hv.state(domainName(s.vmId)), 'shutoff');
    await ops.deleteVm({ vmId: s.vmId, pool: RUN });
    assert.deepEqual(await leftovers(s.vmId), []);
  });
});
