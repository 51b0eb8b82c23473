// LibvirtHypervisor.migrate against two real private libvirtds (testing/private-libvirtd.ts) that
// share one dir pool: a peer-to-peer live migration of the tiny test guest (built by
// scripts/build-test-guest.sh), and one that runs past its timeout and is cancelled, leaving the
// guest running on its source. QEMU streams over loopback: the private daemons share the machine's
// network stack.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { chmodSync, copyFileSync, existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { CallTimeoutError, DomainState, Flags, type Libvirt } from '@kloudak/libvirt';
import { Cleanup } from '@kloudak/testkit';
import { createSharedDir, defineDirPool, startPrivateLibvirtd, type PrivateLibvirtd } from '../testing/private-libvirtd.js';
import { LibvirtHypervisor } from './libvirt-hypervisor.js';

const REPO = fileURLToPath(new URL('../../../', import.meta.url));
const GUEST = process.env['KLOUDAK_TEST_GUEST_DIR'] ?? join(REPO, '.cache', 'test-guest');
const RUN = `km${randomBytes(3).toString('hex')}`;
/** libvirt's VIR_DOMAIN_RUNNING_MIGRATED. */
const RUNNING_MIGRATED = 2;

describe('peer-to-peer live migration between two private libvirtds sharing a dir pool', { timeout: 120_000 }, () => {
  const cleanup = new Cleanup();
  let a: PrivateLibvirtd;
  let b: PrivateLibvirtd;
  let la: Libvirt;
  let lb: Libvirt;
  let dir = '';

  /** A running test guest on A, its disk an overlay on the shared pool; its XML with `log` as console. */
  async function guest(name: string): Promise<(log: string) => string> {
    const uuid = randomUUID();
    const disk = join(dir, `${name}.qcow2`);
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-F', 'qcow2', '-b', join(dir, 'tpl.qcow2'), disk]);
    chmodSync(disk, 0o666);
    const cmdline = readFileSync(join(GUEST, 'cmdline'), 'utf8').trim();
    const xml = (log: string) => `<domain type='qemu'><name>${name}</name><uuid>${uuid}</uuid><memory unit='MiB'>128</memory><vcpu>1</vcpu>
<os><type arch='x86_64'>hvm</type><kernel>${GUEST}/vmlinuz</kernel><initrd>${GUEST}/initrd.img</initrd><cmdline>${cmdline}</cmdline></os>
<features><acpi/><apic/></features>
<devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='${disk}'/><target dev='vda' bus='virtio'/></disk>
<serial type='file'><source path='${log}' append='on'/><target port='0'/></serial></devices></domain>`;
    const hv = new LibvirtHypervisor(la);
    await hv.define(xml(join(a.dir, `${name}.log`)));
    await hv.start(name);
    for (const l of [la, lb]) {
      cleanup.add(async () => {
        const h = new LibvirtHypervisor(l);
        await h.destroy(name);
        await h.undefine(name);
      });
    }
    return xml;
  }

  before(async () => {
    if (!existsSync(join(GUEST, 'template.qcow2'))) execFileSync('bash', [join(REPO, 'scripts/build-test-guest.sh')], { stdio: 'inherit' });
    const shared = createSharedDir(RUN);
    cleanup.add(() => shared.cleanup());
    dir = shared.dir;
    copyFileSync(join(GUEST, 'template.qcow2'), join(dir, 'tpl.qcow2'));
    chmodSync(join(dir, 'tpl.qcow2'), 0o644);
    a = await startPrivateLibvirtd({ name: `${RUN}-a` });
    cleanup.add(() => a.stop());
    b = await startPrivateLibvirtd({ name: `${RUN}-b` });
    cleanup.add(() => b.stop());
    la = await a.connect();
    cleanup.add(() => la.close());
    lb = await b.connect();
    cleanup.add(() => lb.close());
    await defineDirPool(la, RUN, dir);
    await defineDirPool(lb, RUN, dir);
  });
  after(() => cleanup.run());

  test('the guest runs on B (started by the migration, defined there), and is gone from A', async () => {
    const name = `${RUN}-ok`;
    const xml = await guest(name);
    const t0 = Date.now();
    await new LibvirtHypervisor(la).migrate(name, { peerUri: `qemu+unix:///system?socket=${b.socketPath}`, migrateUri: 'tcp:127.0.0.1', xml: xml(join(b.dir, `${name}.log`)), sharedStorage: true, timeoutMs: 60_000 });
    const ms = Date.now() - t0;
    const st = await lb.getDomainState(await lb.lookupDomainByName(name));
    assert.deepEqual([st.state, st.reason], [DomainState.RUNNING, RUNNING_MIGRATED]);
    assert.ok((await lb.listAllDomains(Flags.LIST_DOMAINS_PERSISTENT)).some((d) => d.name === name), 'defined on B');
    assert.deepEqual((await la.listAllDomains()).filter((d) => d.name === name), [], 'undefined on A');
    console.log(`# live migration of the 128 MiB test guest: ${ms} ms`);
  });

  test('without sharedStorage, libvirt refuses: it cannot tell the dir pool is shared (the guest stays on A)', async () => {
    const name = `${RUN}-unsafe`;
    const xml = await guest(name);
    await assert.rejects(
      new LibvirtHypervisor(la).migrate(name, { peerUri: `qemu+unix:///system?socket=${b.socketPath}`, migrateUri: 'tcp:127.0.0.1', xml: xml(join(b.dir, `${name}.log`)), sharedStorage: false, timeoutMs: 60_000 }),
      /[Uu]nsafe migration/,
    );
    assert.equal((await la.getDomainState(await la.lookupDomainByName(name))).state, DomainState.RUNNING);
    assert.deepEqual((await lb.listAllDomains()).filter((d) => d.name === name), []);
  });

  test('a migration past its timeout is cancelled: the guest keeps running on A, nothing is left on B', async () => {
    const name = `${RUN}-slow`;
    const xml = await guest(name);
    await assert.rejects(
      new LibvirtHypervisor(la).migrate(name, { peerUri: `qemu+unix:///system?socket=${b.socketPath}`, migrateUri: 'tcp:127.0.0.1', xml: xml(join(b.dir, `${name}.log`)), sharedStorage: true, timeoutMs: 300 }),
      CallTimeoutError,
    );
    // The cancelled job ends on A (libvirt resumes the guest there) and B's incoming domain goes.
    // Whether a job still runs on A: an abort answers "no job is active" once none does.
    const jobEnded = async () => {
      try {
        await la.abortDomainJob(await la.lookupDomainByName(name));
        return false; // one was still running: this test would have cancelled it, not the hypervisor
      } catch (e) {
        return /no job is active/.test((e as Error).message);
      }
    };
    assert.equal(await jobEnded(), true, 'the hypervisor cancelled the job (none left to cancel)');
    const until = Date.now() + 20_000;
    for (;;) {
      const onA = await la.getDomainState(await la.lookupDomainByName(name));
      const onB = (await lb.listAllDomains()).filter((d) => d.name === name);
      if (onA.state === DomainState.RUNNING && onB.length === 0) break;
      assert.ok(Date.now() < until, `A: state ${onA.state}, B: ${onB.length} domain(s)`);
      await new Promise((r) => setTimeout(r, 100));
    }
  });
});
