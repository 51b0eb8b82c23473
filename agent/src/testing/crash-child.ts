/**
 * A child process for crash tests: runs one host operation (CreateVm or DeleteVm) with the real
 * drivers, announces on stdout each step it completes (`STEP <n> <port>.<method>`), and after step
 * `stopAfter` stops making progress so the parent can kill it (SIGKILL) at exactly that point.
 *
 * Usage: node crash-child.js <job.json>, where the file holds a {@link CrashJob}.
 */
import { readFileSync } from 'node:fs';
import { Libvirt } from '@kloudak/libvirt';
import { IsoSeedBuilder } from '../cloudinit/seed.js';
import { LibvirtHypervisor } from '../hypervisor/libvirt-hypervisor.js';
import { OvsNetworkDriver } from '../network/ovs.js';
import { HostOperations } from '../ops/host-ops.js';
import type { HostSettings } from '../settings.js';
import type { VmSpec } from '../spec.js';
import { LibvirtStorage } from '../storage/libvirt-storage.js';
import { ProcessRunner } from '../system/command-runner.js';

/** What the child runs. */
export interface CrashJob {
  op: 'create' | 'delete';
  spec: VmSpec;
  settings: HostSettings;
  /** Stop after this many completed steps (1-based). */
  stopAfter: number;
}

/** The port methods that change the host: a step each. Reads (state, list, get) are not steps. */
const STEPS: Record<string, readonly string[]> = {
  network: ['ensureBridge', 'ensureVlan', 'deletePort'],
  storage: ['cloneOverlay', 'putRaw', 'delete'],
  seeds: ['build'],
  hypervisor: ['define', 'start', 'destroy', 'undefine'],
};

async function main(): Promise<void> {
  const file = process.argv[2];
  if (!file) throw new Error('usage: crash-child <job.json>');
  const job = JSON.parse(readFileSync(file, 'utf8')) as CrashJob;
  const lv = await Libvirt.connect({ uri: job.settings.libvirtUri });
  const runner = new ProcessRunner();
  let done = 0;
  const hang = new Promise<never>(() => undefined);

  /** Wraps a port: after each completed step, report it; after the last allowed one, hang. */
  function stepping<T extends object>(portName: string, port: T): T {
    const steps = STEPS[portName] ?? [];
    return new Proxy(port, {
      get(target, prop, receiver) {
        const v = Reflect.get(target, prop, receiver) as unknown;
        if (typeof v !== 'function') return v;
        const fn = (v as (...a: unknown[]) => unknown).bind(target);
        if (!steps.includes(String(prop))) return fn;
        return async (...args: unknown[]) => {
          if (done >= job.stopAfter) return hang;
          const result = await fn(...args);
          done += 1;
          process.stdout.write(`STEP ${done} ${portName}.${String(prop)}\n`);
          if (done >= job.stopAfter) return hang;
          return result;
        };
      },
    });
  }

  const ops = new HostOperations({
    hypervisor: stepping('hypervisor', new LibvirtHypervisor(lv)),
    storage: stepping('storage', new LibvirtStorage(lv)),
    network: stepping('network', new OvsNetworkDriver(runner, { datapathType: job.settings.ovsDatapath })),
    seeds: stepping('seeds', new IsoSeedBuilder(runner)),
    settings: job.settings,
  });
  if (job.op === 'create') await ops.createVm(job.spec);
  else await ops.deleteVm({ vmId: job.spec.vmId, pool: job.spec.pool }, [job.settings.bridge]);
  // Fewer steps than stopAfter: the operation finished.
  process.stdout.write(`DONE ${done}\n`);
  await lv.close();
}

main().catch((err: unknown) => {
  process.stderr.write(`crash-child: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});
