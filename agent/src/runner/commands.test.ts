// The command runner's rules. Ordering, memory and deadlines are pure logic and use recording
// operations; the error-code mapping runs real HostOperations on a simulated host (test:///file).
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Libvirt } from '@kloudak/libvirt';
import { ensureLibvirtd } from '@kloudak/libvirt/testing';
import { pino } from 'pino';
import { IsoSeedBuilder } from '../cloudinit/seed.js';
import { LibvirtHypervisor } from '../hypervisor/libvirt-hypervisor.js';
import { OvsNetworkDriver } from '../network/ovs.js';
import { HostOperations } from '../ops/host-ops.js';
import { DEFAULT_HOST_SETTINGS } from '../settings.js';
import { LibvirtStorage } from '../storage/libvirt-storage.js';
import { ProcessRunner } from '../system/command-runner.js';
import { createTestNet, type TestNet } from '../testing/netns.js';
import { ensureOvs } from '../testing/ovs-service.js';
import { createSimHost } from '../testing/sim-host.js';
import { CommandDispatcher, keyOf, scrubMessage, type AgentAction, type CommandOps } from './commands.js';

const log = pino({ level: 'silent' });

/** Operations that record start/end of each call and wait for a release. */
function recordingOps() {
  const events: string[] = [];
  const gates = new Map<string, () => void>();
  let calls = 0;
  const step = async (name: string): Promise<void> => {
    calls++;
    events.push(`start ${name}`);
    await new Promise<void>((r) => gates.set(name, r));
    events.push(`end ${name}`);
  };
  const ops = {
    startVm: (vmId: string) => step(`start:${vmId}`),
    rebootVm: (vmId: string) => step(`reboot:${vmId}`),
    ensureNetwork: (vlan: number, bridge: string) => step(`net:${bridge}:${vlan}`),
    fence: async (ids: readonly string[]) => {
      events.push(`fence ${ids.join(',')}`);
      return { stopped: [...ids], failed: [] };
    },
  } as unknown as CommandOps;
  return {
    ops,
    events,
    calls: () => calls,
    release: (name: string) => {
      const g = gates.get(name);
      assert.ok(g, `${name} is not running`);
      gates.delete(name);
      g();
    },
    running: (name: string) => gates.has(name),
  };
}

const tick = () => new Promise((r) => setImmediate(r));

describe('command dispatcher rules', () => {
  const a = randomUUID();
  const b = randomUUID();

  it('runs one VM\'s commands in order, other VMs\' at once, and Fence immediately', async () => {
    const r = recordingOps();
    const d = new CommandDispatcher({ ops: r.ops, inventory: async () => ({ domains: [], volumes: [], ports: [] }), defaultBridge: 'br0', log });
    const p1 = d.dispatch({ commandId: '1', action: { kind: 'startVm', vmId: a } });
    const p2 = d.dispatch({ commandId: '2', action: { kind: 'rebootVm', vmId: a } });
    const p3 = d.dispatch({ commandId: '3', action: { kind: 'startVm', vmId: b } });
    const p4 = d.dispatch({ commandId: '4', action: { kind: 'fence', vmIds: [a], reason: 'test' } });
    await tick();
    assert.ok(r.running(`start:${a}`));
    assert.ok(r.running(`start:${b}`), 'another VM runs at once');
    assert.ok(!r.running(`reboot:${a}`), 'the same VM waits');
    assert.equal((await p4).ok, true, 'Fence does not wait for the VM\'s queue');
    r.release(`start:${a}`);
    await p1;
    await tick();
    assert.ok(r.running(`reboot:${a}`));
    r.release(`reboot:${a}`);
    r.release(`start:${b}`);
    assert.deepEqual((await Promise.all([p2, p3])).map((o) => o.ok), [true, true]);
    assert.equal(d.inFlight, 0);
  });

  it('serialises network commands by bridge and VLAN', () => {
    assert.equal(keyOf({ kind: 'ensureNetwork', networkId: 'n', vlan: 10 }, 'br0'), 'net:br0:10');
    assert.equal(keyOf({ kind: 'deleteNetwork', networkId: 'n', vlan: 10, bridge: 'br1' }, 'br0'), 'net:br1:10');
    assert.equal(keyOf({ kind: 'getInventory' }, 'br0'), null);
  });

  it('answers a re-sent id from memory, or joins the run in progress — never runs it twice', async () => {
    const r = recordingOps();
    const d = new CommandDispatcher({ ops: r.ops, inventory: async () => ({ domains: [], volumes: [], ports: [] }), defaultBridge: 'br0', log });
    const cmd = { commandId: 'x', action: { kind: 'startVm', vmId: a } as AgentAction };
    const first = d.dispatch(cmd);
    await tick();
    const joined = d.dispatch(cmd);
    r.release(`start:${a}`);
    const [o1, o2] = await Promise.all([first, joined]);
    assert.equal(o1, o2);
    const later = await d.dispatch(cmd);
    assert.equal(later, o1);
    assert.equal(r.calls(), 1);
  });

  it('forgets ids only beyond the last N and after the minimum age', async () => {
    let now = 1_000_000;
    const ops = { startVm: async () => undefined } as unknown as CommandOps;
    const d = new CommandDispatcher({ ops, inventory: async () => ({ domains: [], volumes: [], ports: [] }), defaultBridge: 'br0', log, now: () => now, rememberIds: 3, rememberMs: 1000 });
    const first = await d.dispatch({ commandId: 'c0', action: { kind: 'startVm', vmId: a } });
    for (let i = 1; i <= 4; i++) await d.dispatch({ commandId: `c${i}`, action: { kind: 'startVm', vmId: a } });
    await tick();
    assert.equal(await d.dispatch({ commandId: 'c0', action: { kind: 'startVm', vmId: a } }), first, 'younger than the minimum age: kept');
    now += 5000;
    await d.dispatch({ commandId: 'c5', action: { kind: 'startVm', vmId: a } });
    await tick();
    const again = await d.dispatch({ commandId: 'c0', action: { kind: 'startVm', vmId: a } });
    assert.notEqual(again, first, 'old and beyond the last 3: forgotten, so it runs again');
  });

  it('answers DEADLINE_EXCEEDED when the deadline passed before the command\'s turn', async () => {
    const r = recordingOps();
    const d = new CommandDispatcher({ ops: r.ops, inventory: async () => ({ domains: [], volumes: [], ports: [] }), defaultBridge: 'br0', log });
    const p1 = d.dispatch({ commandId: '1', action: { kind: 'startVm', vmId: a } });
    const p2 = d.dispatch({ commandId: '2', deadline: new Date(Date.now() + 50), action: { kind: 'rebootVm', vmId: a } });
    await new Promise((res) => setTimeout(res, 80));
    r.release(`start:${a}`);
    await p1;
    const o2 = await p2;
    assert.equal(o2.error?.code, 'DEADLINE_EXCEEDED');
    assert.equal(r.running(`reboot:${a}`), false);
  });

  it('refuses new commands while stopping and drains the running ones', async () => {
    const r = recordingOps();
    const d = new CommandDispatcher({ ops: r.ops, inventory: async () => ({ domains: [], volumes: [], ports: [] }), defaultBridge: 'br0', log });
    const p = d.dispatch({ commandId: '1', action: { kind: 'startVm', vmId: a } });
    await tick();
    d.stopAccepting();
    assert.equal((await d.dispatch({ commandId: '2', action: { kind: 'startVm', vmId: b } })).error?.code, 'UNAVAILABLE');
    assert.equal(await d.drain(30), false, 'still running');
    setTimeout(() => r.release(`start:${a}`), 20);
    assert.equal(await d.drain(2000), true);
    assert.equal((await p).ok, true);
  });

  it('scrubs secrets from messages', () => {
    const m = scrubMessage('bad $6$abc$defghij and kjt1.0123.abc.def and -----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----');
    assert.ok(!m.includes('$6$abc') && !m.includes('kjt1.') && !m.includes('MIIB'), m);
  });
});

describe('command error codes with real host operations on a simulated host', { timeout: 60_000 }, () => {
  let dir: string;
  let lv: Libvirt;
  let d: CommandDispatcher;
  let net: TestNet;
  let pool: string;
  let template: string;
  const vmId = randomUUID();

  before(async () => {
    await ensureLibvirtd();
    await ensureOvs();
    dir = mkdtempSync(join(tmpdir(), 'kcmd-'));
    const sim = createSimHost({ dir });
    pool = sim.poolName;
    template = sim.templateVolume;
    net = await createTestNet('kc-');
    const bridge = await net.addBridge('b');
    lv = await Libvirt.connect({ uri: sim.uri });
    const runner = new ProcessRunner();
    const settings = { ...DEFAULT_HOST_SETTINGS, libvirtUri: sim.uri, domainType: 'qemu' as const, ovsDatapath: 'netdev' as const, nicOffload: false, bridge, consoleDir: dir, seedDir: dir, shutdownTimeoutMs: 1000 };
    const ops = new HostOperations({
      hypervisor: new LibvirtHypervisor(lv),
      storage: new LibvirtStorage(lv),
      network: new OvsNetworkDriver(runner, { datapathType: 'netdev' }),
      seeds: new IsoSeedBuilder(runner),
      settings,
    });
    d = new CommandDispatcher({ ops, inventory: async () => ({ domains: [], volumes: [], ports: [] }), defaultBridge: bridge, log });
  });

  after(async () => {
    await lv?.close();
    await net?.cleanup();
    rmSync(dir, { recursive: true, force: true });
  });

  const spec = () => ({ vmId, hostname: 'h', cpu: 1, ramMb: 128, diskGb: 1, pool, templateVolume: template, nics: [], sshKeys: [], ha: false });

  it('maps SpecError, libvirt\'s "no domain", "not supported" and a disconnected libvirt', async () => {
    const bad = await d.dispatch({ commandId: randomUUID(), action: { kind: 'createVm', spec: { ...spec(), ramMb: 0 } } });
    assert.equal(bad.error?.code, 'INVALID_ARGUMENT');
    const missing = await d.dispatch({ commandId: randomUUID(), action: { kind: 'rebootVm', vmId: randomUUID() } });
    assert.equal(missing.error?.code, 'NOT_FOUND');
    const stopMissing = await d.dispatch({ commandId: randomUUID(), action: { kind: 'stopVm', vmId: randomUUID(), force: false } });
    assert.equal(stopMissing.error?.code, 'NOT_FOUND');
    const del = await d.dispatch({ commandId: randomUUID(), action: { kind: 'deleteVm', vmId: randomUUID(), pool, bridges: [] } });
    assert.equal(del.ok, true, 'deleting what is gone succeeds');

    const created = await d.dispatch({ commandId: randomUUID(), action: { kind: 'createVm', spec: spec() } });
    assert.equal(created.ok, true, JSON.stringify(created.error));
    const nic = { networkId: randomUUID(), mac: '52:54:00:aa:bb:01', vlan: 12 };
    const attach = await d.dispatch({ commandId: randomUUID(), action: { kind: 'attachInterface', vmId, index: 0, nic } });
    assert.equal(attach.error?.code, 'UNIMPLEMENTED', JSON.stringify(attach.error));

    await lv.close();
    const down = await d.dispatch({ commandId: randomUUID(), action: { kind: 'startVm', vmId } });
    assert.equal(down.error?.code, 'UNAVAILABLE', JSON.stringify(down.error));
  });
});
