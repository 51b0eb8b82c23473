// Pid-file fencing, pure parts: QEMU's -name in a /proc cmdline, libvirt's pid files, the choice
// of what to kill in a fixture run directory with a fixture /proc (the kill is recorded, not sent),
// and selfFence turning to the pid files when an injected libvirt hangs or is not connected. The same code against real QEMU processes: daemon-no-libvirt.test.ts.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { domainName } from '../names.js';
import { statusXml } from '../testing/qemu-run-dir.js';
import { pino } from 'pino';
import type { DomainStatus, Hypervisor } from '../ports.js';
import { parsePidfile, qemuGuestName, QemuPidfiles } from './qemu-pidfiles.js';
import { FenceStore } from './records.js';
import { selfFence } from './self-fence.js';

/** A NUL-separated cmdline as in /proc/<pid>/cmdline. */
function cmdline(...argv: string[]): string {
  return `${argv.join('\0')}\0`;
}

describe('QEMU pid files', () => {
  it('reads the guest name from a QEMU command line', () => {
    const name = domainName(randomUUID());
    assert.equal(qemuGuestName(cmdline('/usr/bin/qemu-system-x86_64', '-name', `guest=${name},debug-threads=on`, '-S')), name);
    assert.equal(qemuGuestName(cmdline('qemu-system-x86_64', '-name', `debug-threads=on,guest=${name}`)), name, 'guest= anywhere in the options');
    assert.equal(qemuGuestName(cmdline('qemu-system-x86_64', '-name', name)), name, 'the implied key');
    assert.equal(qemuGuestName(cmdline('qemu-system-x86_64', '-name', 'guest=a,,b,process=x')), 'a,b', 'a doubled comma is a comma');
    assert.equal(qemuGuestName(Buffer.from(cmdline('qemu', '-name', `guest=${name}`))), name, 'raw bytes');
    assert.equal(qemuGuestName(cmdline('sleep', '60')), null);
    assert.equal(qemuGuestName(cmdline('qemu', '-name')), null, '-name without a value');
    assert.equal(qemuGuestName(cmdline('qemu', '-name', 'process=x')), null, 'no guest name');
    assert.equal(qemuGuestName(''), null, 'a zombie has an empty cmdline');
    assert.equal(qemuGuestName(cmdline('/usr/libexec/qemu-kvm', '-name', `guest=${name}`)), name, "EL's qemu-kvm");
    assert.equal(qemuGuestName(cmdline('timeout', '5', 'qemu-system-x86_64', '-name', `guest=${name}`)), null, 'a wrapper is not the QEMU');
    assert.equal(qemuGuestName(cmdline('pgrep', '-f', '-name', `guest=${name}`)), null, 'nor is any program with those arguments');
  });

  it('parses pid files', () => {
    assert.equal(parsePidfile('1234'), 1234);
    assert.equal(parsePidfile('1234\n'), 1234);
    for (const bad of ['', '\n', 'abc', '-5', '0', '1', '12 34', '99999999999', '0x10']) assert.equal(parsePidfile(bad), null, JSON.stringify(bad));
  });

  describe('in a fixture run dir', () => {
    let dir: string;
    let runDir: string;
    let procDir: string;
    const ha = randomUUID();
    const plain = randomUUID();
    const stale = randomUUID();
    const noPid = randomUUID();
    const haPid = 4242;
    const plainPid = 4343;
    const reusedPid = 4444;

    function proc(pid: number, argv: string[], state = 'S'): void {
      mkdirSync(join(procDir, String(pid)), { recursive: true });
      writeFileSync(join(procDir, String(pid), 'cmdline'), cmdline(...argv));
      writeFileSync(join(procDir, String(pid), 'stat'), `${pid} (qemu-system-x86) ${state} 1 ${pid} ${pid} 0 -1\n`);
    }

    before(() => {
      dir = mkdtempSync(join(tmpdir(), 'kpidf-'));
      runDir = join(dir, 'run');
      procDir = join(dir, 'proc');
      mkdirSync(runDir);
      mkdirSync(procDir);
      // libvirt's own pid file: no status XML next to it.
      writeFileSync(join(runDir, 'driver.pid'), '77');
      proc(77, ['libvirtd', '-d']);
      for (const [vmId, isHa, pid] of [
        [ha, true, haPid],
        [plain, false, plainPid],
        [stale, true, reusedPid],
      ] as const) {
        writeFileSync(join(runDir, `${domainName(vmId)}.pid`), String(pid));
        writeFileSync(join(runDir, `${domainName(vmId)}.xml`), statusXml(vmId, isHa, pid));
      }
      proc(haPid, ['/usr/bin/qemu-system-x86_64', '-name', `guest=${domainName(ha)},debug-threads=on`, '-S']);
      proc(plainPid, ['/usr/bin/qemu-system-x86_64', '-name', `guest=${domainName(plain)},debug-threads=on`, '-S']);
      // The stale domain's QEMU is gone and its pid now belongs to another program.
      proc(reusedPid, ['/usr/bin/python3', 'server.py']);
      // An HA domain whose pid file is empty (QEMU starting, or a damaged file).
      writeFileSync(join(runDir, `${domainName(noPid)}.pid`), '');
      writeFileSync(join(runDir, `${domainName(noPid)}.xml`), statusXml(noPid, true, 0));
      // A status XML without a pid file: not a running domain.
      writeFileSync(join(runDir, `${domainName(randomUUID())}.xml`), statusXml(randomUUID(), true, 1));
    });

    after(() => rmSync(dir, { recursive: true, force: true }));

    it('lists the domains with a pid file and a status XML, and tells HA ones from the others', async () => {
      const p = new QemuPidfiles({ runDir, procDir });
      const entries = await p.list();
      const byName = new Map(entries.map((e) => [e.domainName, e]));
      assert.equal(entries.length, 4, JSON.stringify(entries));
      assert.deepEqual(byName.get(domainName(ha)), { domainName: domainName(ha), pid: haPid, ha: true });
      assert.deepEqual(byName.get(domainName(plain)), { domainName: domainName(plain), pid: plainPid, ha: false });
      assert.deepEqual(byName.get(domainName(noPid)), { domainName: domainName(noPid), pid: null, ha: true });
      assert.equal(byName.has('driver'), false, "libvirt's driver.pid is not a domain");
      assert.equal(await p.guestOf(haPid), domainName(ha));
      assert.equal(await p.guestOf(reusedPid), null);
      assert.equal(await p.guestOf(99999), null, 'no such process');
      assert.deepEqual(await new QemuPidfiles({ runDir: join(dir, 'missing'), procDir }).list(), [], 'no run dir: no domains');
    });

    it('kills only the HA QEMU whose pid is really its QEMU, with SIGKILL, and waits for it to be gone', async () => {
      const sent: Array<[number, string]> = [];
      const p = new QemuPidfiles({
        runDir,
        procDir,
        kill: (pid, sig) => {
          sent.push([pid, sig]);
          // The kernel's part: the process becomes a zombie.
          proc(pid, [], 'Z');
        },
      });
      const r = await p.killHa();
      assert.deepEqual(sent, [[haPid, 'SIGKILL']], 'the non-HA QEMU and the reused pid are not touched');
      assert.deepEqual(r.killed, [{ domainName: domainName(ha), pid: haPid }]);
      assert.deepEqual(r.notRunning.sort(), [domainName(stale), domainName(noPid)].sort());
      assert.deepEqual(r.failures, []);
      const again = await p.killHa();
      assert.deepEqual(again.killed, [], 'a second pass finds it dead');
      assert.equal(sent.length, 1);
    });

    it('honours `only`, and reports a QEMU that will not die or cannot be signalled', async () => {
      const name = domainName(ha);
      proc(haPid, ['/usr/bin/qemu-system-x86_64', '-name', `guest=${name}`]);
      const none = await new QemuPidfiles({ runDir, procDir, kill: () => assert.fail('not in `only`') }).killHa(new Set([domainName(plain)]));
      assert.deepEqual(none, { killed: [], notRunning: [], failures: [] }, 'the non-HA one stays out even when named');
      const stuck = await new QemuPidfiles({ runDir, procDir, exitTimeoutMs: 100, kill: () => undefined }).killHa(new Set([name]));
      assert.equal(stuck.killed.length, 0);
      assert.match(stuck.failures[0]?.error ?? '', /still runs 100 ms after SIGKILL/);
      const denied = await new QemuPidfiles({
        runDir,
        procDir,
        kill: () => {
          throw Object.assign(new Error('kill EPERM'), { code: 'EPERM' });
        },
      }).killHa(new Set([name]));
      assert.match(denied.failures[0]?.error ?? '', /cannot kill QEMU pid 4242: kill EPERM/);
    });
  });

  describe('selfFence turning to the pid files (libvirt faults injected)', () => {
    let dir: string;
    let runDir: string;
    let procDir: string;
    const a = randomUUID();
    const b = randomUUID();
    const log = pino({ level: 'silent' });
    const never = new Promise<never>(() => undefined);

    function proc(pid: number, argv: string[], state = 'S'): void {
      mkdirSync(join(procDir, String(pid)), { recursive: true });
      writeFileSync(join(procDir, String(pid), 'cmdline'), cmdline(...argv));
      writeFileSync(join(procDir, String(pid), 'stat'), `${pid} (qemu) ${state} 1\n`);
    }

    before(() => {
      dir = mkdtempSync(join(tmpdir(), 'kpidf-sf-'));
      runDir = join(dir, 'run');
      procDir = join(dir, 'proc');
      mkdirSync(runDir);
      for (const [vmId, pid] of [
        [a, 5001],
        [b, 5002],
      ] as const) {
        writeFileSync(join(runDir, `${domainName(vmId)}.pid`), String(pid));
        writeFileSync(join(runDir, `${domainName(vmId)}.xml`), statusXml(vmId, true, pid));
        proc(pid, ['qemu-system-x86_64', '-name', `guest=${domainName(vmId)},debug-threads=on`]);
      }
    });

    after(() => rmSync(dir, { recursive: true, force: true }));

    function pidfiles(sent: number[]): QemuPidfiles {
      return new QemuPidfiles({ runDir, procDir, kill: (pid) => (sent.push(pid), proc(pid, [], 'Z')) });
    }

    it('libvirt destroys one domain and hangs on the other: only that one is killed by pid, and the record says how each went', async () => {
      const destroyed: string[] = [];
      const hv = {
        list: async (): Promise<DomainStatus[]> => [a, b].map((id) => ({ name: domainName(id), uuid: id, state: 'running' })),
        xml: async (name: string) => readFileSync(join(runDir, `${name}.xml`), 'utf8'),
        destroy: async (name: string) => (name === domainName(b) ? never : void destroyed.push(name)),
      } as unknown as Hypervisor;
      const sent: number[] = [];
      const store = new FenceStore(join(dir, 'data1'));
      const t0 = Date.now();
      const { record } = await selfFence({ hypervisor: hv, pidfiles: pidfiles(sent), libvirtTimeoutMs: 200, store, log }, new Date(), 'lease expired');
      assert.ok(Date.now() - t0 < 2000, 'one libvirt timeout, not a retry loop');
      assert.deepEqual(destroyed, [domainName(a)]);
      assert.deepEqual(sent, [5002]);
      assert.deepEqual(
        [...record.domains].sort((x, y) => x.domainName.localeCompare(y.domainName)),
        [
          { domainName: domainName(a), vmId: a, method: 'libvirt' },
          { domainName: domainName(b), vmId: b, method: 'pidfile' },
        ].sort((x, y) => x.domainName.localeCompare(y.domainName)),
      );
      assert.equal(record.failures, undefined);
    });

    it('no libvirt connection (a getter answering null): every HA QEMU is killed by pid; without pid files the failure is recorded', async () => {
      for (const [vmId, pid] of [
        [a, 5001],
        [b, 5002],
      ] as const)
        proc(pid, ['qemu-system-x86_64', '-name', `guest=${domainName(vmId)}`]);
      const sent: number[] = [];
      const { record } = await selfFence({ hypervisor: () => null, pidfiles: pidfiles(sent), store: new FenceStore(join(dir, 'data2')), log }, new Date(), 'lease expired');
      assert.deepEqual(sent.sort(), [5001, 5002]);
      assert.deepEqual(record.domains.map((d) => d.method), ['pidfile', 'pidfile']);

      const hung = { list: () => never } as unknown as Hypervisor;
      const none = await selfFence({ hypervisor: hung, libvirtTimeoutMs: 50, maxAttempts: 2, retryDelayMs: 10, store: new FenceStore(join(dir, 'data3')), log }, new Date(), 'lease expired');
      assert.deepEqual(none.record.domains, []);
      assert.match(none.record.failures?.[0]?.error ?? '', /cannot list domains: libvirt did not answer within 50 ms/);
    });
  });
});
