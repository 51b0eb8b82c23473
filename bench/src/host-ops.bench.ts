// host-ops.bench — CreateVm and DeleteVm through the agent's drivers (HostOperations over
// LibvirtHypervisor, LibvirtStorage, OvsNetworkDriver and IsoSeedBuilder) on
// qemu:///system (QEMU TCG) and Open vSwitch (netdev datapath), with the tiny test guest.
//
// Baseline, measured in the same run on the same pool, bridge and template: the same host work
// done directly — the libvirt RPCs through one @kloudak/libvirt connection (overlay volume from
// XML with a backingStore, seed volume + upload of an ISO built with the same xorrisofs argv,
// define with the same domain XML and the same validate flag, start; destroy, undefine, delete
// both volumes) and the same ovs-vsctl/ovs-appctl commands HostOperations issues (ensure bridge;
// list ports and delete the VM's leftovers), spawned with node:child_process execFile. So the ratio
// is what the agent's layers cost on top of the unavoidable host work: idempotency lookups (a
// volume lookup that misses refreshes the pool and looks again), volume status reads, the per-volume
// queues, the revert stack and the command runner.
//
// Not measured: the domain XML and the seed file contents are generated with @kloudak/agent's
// domainXml/seedFiles for both paths; the baseline generates them before its clock starts (XML
// generation is not what is compared, and costs microseconds). Nor the guest's boot: an
// operation ends when libvirt has started the domain, and the VM is deleted right after.
//
// Iterations interleave the two paths (K,B then B,K, …) so drift on the machine hits both. Each
// iteration creates one VM and deletes it; only one VM exists at a time.
//
// Environment:
//   BENCH_ITERATIONS        measured create+delete pairs per path (default 10)
//   BENCH_WARMUP            unmeasured pairs per path first (default 1)
//   BENCH_POOL_VOLUMES      extra qcow2 overlays put in the pool first, standing for the disks of
//                           other VMs (default 0). The agent refreshes the pool when a volume
//                           lookup misses — twice per CreateVm — and a refresh reads every
//                           volume of the pool, so its cost grows with the pool.
//   KLOUDAK_TEST_GUEST_DIR  test guest (default <repo>/.cache/test-guest; built when missing)
//
// Needs libvirtd, virtlogd and Open vSwitch running (scripts/bench.sh starts them); it never
// starts or restarts them itself.
import { randomBytes, randomUUID } from 'node:crypto';
import { join } from 'node:path';
import {
  DEFAULT_HOST_SETTINGS,
  IsoSeedBuilder,
  HostOperations,
  LibvirtHypervisor,
  LibvirtStorage,
  OvsNetworkDriver,
  ProcessRunner,
  domainName,
  domainXml,
  rootVolumeName,
  seedFiles,
  seedVolumeName,
  tapName,
  type HostSettings,
  type VmSpec,
} from '@kloudak/agent';
import { GUEST, QEMU_URI as URI } from '@kloudak/e2e/paths';
import { setUpQemuHost, testGuestImage } from '@kloudak/e2e/qemu-host';
import { DomainState, Libvirt, NotFoundError } from '@kloudak/libvirt';
import { DirectHostWork, run } from './direct-host.js';
import { benchCleanup, ensureTestGuest, envNumber, machine, machineBusyPct, onCleanup, progress, quantile, runBench, runCleanups, table, writeResults } from './harness.js';

/** Every name this run creates starts with it (pool, temp dirs; the test net has its own `kb-<hex>`). */
const RUN = `kb${randomBytes(4).toString('hex')}`;
const TEMPLATE = 'testguest.qcow2';
const VLAN = 100;
const ITERATIONS = Math.round(envNumber('BENCH_ITERATIONS', 10));
const WARMUP = Math.round(envNumber('BENCH_WARMUP', 1));
const POOL_VOLUMES = Math.round(envNumber('BENCH_POOL_VOLUMES', 0));

type Op = 'create' | 'delete';
type Path = 'kloudak' | 'baseline';

/** Steps both paths are broken into, so a difference can be located. */
const STEPS: Record<Op, readonly string[]> = {
  create: ['ovs bridge', 'root overlay', 'seed build', 'seed volume', 'define', 'start'],
  delete: ['destroy', 'undefine', 'ovs ports', 'volumes'],
};

/** One timed operation: total wall time and the time of each step (ms). */
interface Sample {
  iteration: number;
  ms: number;
  steps: Record<string, number>;
}

/** Where the steps of the operation in progress are added up (one operation runs at a time). */
let currentSteps: Record<string, number> = {};

function addStep(step: string, ms: number): void {
  currentSteps[step] = (currentSteps[step] ?? 0) + ms;
}

async function step<T>(name: string, fn: () => Promise<T>): Promise<T> {
  const t0 = performance.now();
  try {
    return await fn();
  } finally {
    addStep(name, performance.now() - t0);
  }
}

/**
 * Wraps one of the agent's ports so the time spent in the listed methods is added to a step. The
 * wrapper adds a closure call and a performance.now() pair per port call: microseconds against
 * operations of hundreds of milliseconds.
 */
function timedPort<T extends object>(port: T, steps: Record<string, string>): T {
  return new Proxy(port, {
    get(target, prop, receiver) {
      const v = Reflect.get(target, prop, receiver) as unknown;
      if (typeof v !== 'function') return v;
      const fn = (v as (...a: unknown[]) => unknown).bind(target);
      const name = typeof prop === 'string' ? steps[prop] : undefined;
      if (name === undefined) return fn;
      return (...a: unknown[]) => step(name, () => fn(...a) as Promise<unknown>);
    },
  });
}

async function timeOp(fn: () => Promise<void>, iteration: number): Promise<Sample> {
  currentSteps = {};
  const t0 = performance.now();
  await fn();
  const ms = performance.now() - t0;
  const steps = currentSteps;
  // Port calls made outside a timed operation (checks, cleanup) must not add to this sample.
  currentSteps = {};
  return { iteration, ms, steps };
}

function fmt(n: number, d = 1): string {
  return Number.isFinite(n) ? n.toFixed(d) : '-';
}

interface Summary {
  n: number;
  p50: number;
  p95: number;
  mean: number;
  min: number;
  max: number;
  stepsMean: Record<string, number>;
}

/** Percentiles and means of the samples; with `without`, of each sample's time minus that step. */
function summarize(samples: readonly Sample[], without?: string): Summary {
  const times = samples.map((s) => s.ms - (without === undefined ? 0 : (s.steps[without] ?? 0)));
  const sorted = Float64Array.from(times).sort();
  const stepsMean: Record<string, number> = {};
  for (const s of samples) for (const [k, v] of Object.entries(s.steps)) stepsMean[k] = (stepsMean[k] ?? 0) + v / samples.length;
  return {
    n: samples.length,
    p50: quantile(sorted, 0.5),
    p95: quantile(sorted, 0.95),
    mean: times.reduce((a, b) => a + b, 0) / Math.max(1, times.length),
    min: sorted[0] ?? NaN,
    max: sorted[sorted.length - 1] ?? NaN,
    stepsMean,
  };
}

async function main(): Promise<number> {
  const started = new Date();
  const busyBefore = await machineBusyPct();
  if (busyBefore > 25) progress(`warning: the machine is already ${busyBefore}% of a core busy before the bench starts; figures will be noisy`);

  const samples: Record<Op, Record<Path, Sample[]>> = { create: { kloudak: [], baseline: [] }, delete: { kloudak: [], baseline: [] } };
  const made: string[] = [];
  let stopping = false;
  let inFlight: Promise<void> | undefined;
  /** The ISO program both paths build seeds with (the agent's choice). */
  let isoProgram = '';
  try {
    ensureTestGuest(['template.qcow2', 'vmlinux']);

    // One connection per path, so neither queues behind the other's calls: Kloudak's is the one the
    // host's world was made with (the bridge, a dir pool of our own holding the template).
    const { lv: lvK, bridge, pool, poolDir, consoleDir } = await setUpQemuHost(benchCleanup, { name: RUN, netPrefix: 'kb-', fill: testGuestImage(TEMPLATE) });
    const lvB = await Libvirt.connect({ uri: URI });
    onCleanup('close baseline libvirt connection', () => lvB.close());
    const tmplVol = await lvB.lookupVolumeByName(await lvB.lookupStoragePoolByName(RUN), TEMPLATE);
    const template = { path: await lvB.getVolumePath(tmplVol), capacity: (await lvB.getVolumeInfo(tmplVol)).capacity };

    for (let i = 0; i < POOL_VOLUMES; i++) {
      // Removed with the pool directory.
      await lvB.createVolume(
        pool,
        `<volume type='file'><name>${RUN}-filler-${i}.qcow2</name><capacity unit='bytes'>${template.capacity}</capacity>` +
          `<target><format type='qcow2'/></target><backingStore><path>${template.path}</path><format type='qcow2'/></backingStore></volume>`,
      );
    }
    if (POOL_VOLUMES > 0) progress(`put ${POOL_VOLUMES} extra overlay volumes in the pool`);

    const settings: HostSettings = { ...DEFAULT_HOST_SETTINGS, domainType: 'qemu', ovsDatapath: 'netdev', nicOffload: false, bridge, consoleDir };
    const runner = new ProcessRunner();
    const seedBuilder = new IsoSeedBuilder(runner);
    isoProgram = await seedBuilder.program();
    const ops = new HostOperations({
      hypervisor: timedPort(new LibvirtHypervisor(lvK), { define: 'define', start: 'start', destroy: 'destroy', undefine: 'undefine' }),
      storage: timedPort(new LibvirtStorage(lvK), { cloneOverlay: 'root overlay', putRaw: 'seed volume', delete: 'volumes' }),
      network: timedPort(new OvsNetworkDriver(runner, { datapathType: 'netdev' }), { ensureBridge: 'ovs bridge', listPorts: 'ovs ports', deletePort: 'ovs ports' }),
      seeds: timedPort(seedBuilder, { build: 'seed build' }),
      settings,
    });
    // Registered last, so it runs first: every VM either path made (or half made) goes, before
    // the pool, the bridge and the connections. deleteVm is idempotent and the baseline's VMs
    // carry the same derived names.
    onCleanup('delete the VMs', async () => {
      // On Ctrl-C the harness runs the cleanups while a create or delete is still in flight: let
      // it finish first (and start no other), or it could recreate what is being removed (the
      // baseline's `add-br --may-exist` would bring the bridge back after its cleanup).
      stopping = true;
      await inFlight?.catch(() => undefined);
      for (const vmId of made) await ops.deleteVm({ vmId, pool: RUN }).catch((err: unknown) => progress(`cleanup of VM ${vmId}: ${String(err)}`));
      await lvK.deleteVolume(await lvK.lookupVolumeByName(pool, TEMPLATE)).catch(() => undefined);
    });
    const direct = new DirectHostWork(lvB, RUN, bridge, template, settings, isoProgram, RUN, step);

    const kernelBoot = { kernel: join(GUEST, 'vmlinux'), initrd: join(GUEST, 'initrd.img'), cmdline: 'console=ttyS0 panic=-1 root=/dev/vda quiet' };
    const newSpec = (n: number): VmSpec => {
      const vmId = randomUUID();
      made.push(vmId);
      const mac = `52:54:00:${[...randomBytes(3)].map((b) => b.toString(16).padStart(2, '0')).join(':')}`;
      return {
        vmId,
        hostname: `bench-${n}`,
        cpu: 1,
        ramMb: 128,
        diskGb: 1,
        pool: RUN,
        templateVolume: TEMPLATE,
        boot: kernelBoot,
        nics: [{ networkId: randomUUID(), mac, vlan: VLAN, ip: { address: `10.244.0.${10 + (n % 200)}/24` } }],
        sshKeys: ['ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA bench@kloudak'],
        ha: false,
      };
    };

    /** Untimed: what each path made is the same (domain running, both volumes, NIC port on the VLAN), and delete leaves nothing. */
    const check = async (vmId: string, present: boolean, path: Path): Promise<void> => {
      const problems: string[] = [];
      let state: number | null = null;
      try {
        state = (await lvB.getDomainState(await lvB.lookupDomainByName(domainName(vmId)))).state;
      } catch (e) {
        if (!(e instanceof NotFoundError)) throw e;
      }
      const vols = new Set((await lvB.listAllVolumes(pool)).map((v) => v.name));
      const ports = (await run('ovs-vsctl', ['--timeout=10', 'list-ports', bridge])).split('\n');
      const tag = ports.includes(tapName(vmId, 0)) ? (await run('ovs-vsctl', ['--timeout=10', 'get', 'port', tapName(vmId, 0), 'tag'])).trim() : null;
      if (present) {
        if (state !== DomainState.RUNNING) problems.push(`domain state ${String(state)}, not running`);
        for (const v of [rootVolumeName(vmId), seedVolumeName(vmId)]) if (!vols.has(v)) problems.push(`no volume ${v}`);
        if (tag !== String(VLAN)) problems.push(`NIC port tag ${String(tag)}, not ${VLAN}`);
      } else {
        if (state !== null) problems.push(`domain still there (state ${state})`);
        for (const v of vols) if (v.includes(vmId)) problems.push(`volume ${v} left`);
        if (tag !== null) problems.push(`port ${tapName(vmId, 0)} left`);
      }
      if (problems.length > 0) throw new Error(`${path} ${present ? 'create' : 'delete'} of ${vmId}: ${problems.join('; ')}`);
    };

    const pair = async (path: Path, n: number, measured: boolean): Promise<void> => {
      const spec = newSpec(n);
      let create: Sample;
      if (path === 'kloudak') {
        create = await timeOp(async () => void (await ops.createVm(spec)), n);
      } else {
        // Generated before the clock starts (see the header): not what is measured.
        const xml = domainXml(spec, settings);
        const files = seedFiles(spec);
        create = await timeOp(() => direct.create(spec, xml, files), n);
      }
      await check(spec.vmId, true, path);
      const del = await timeOp(() => (path === 'kloudak' ? ops.deleteVm({ vmId: spec.vmId, pool: RUN }) : direct.delete(spec.vmId)), n);
      await check(spec.vmId, false, path);
      progress(`${measured ? `#${n}` : 'warm-up'} ${path.padEnd(8)} create ${fmt(create.ms)} ms, delete ${fmt(del.ms)} ms`);
      if (measured) {
        samples.create[path].push(create);
        samples.delete[path].push(del);
      }
    };

    progress(`run ${RUN}: pool ${RUN} in ${poolDir}, bridge ${bridge}, ${WARMUP} warm-up + ${ITERATIONS} measured create+delete per path`);
    const schedule: [Path, number, boolean][] = [];
    for (let i = 0; i < WARMUP; i++) schedule.push(['kloudak', -1, false], ['baseline', -1, false]);
    for (let i = 0; i < ITERATIONS; i++) {
      // Alternate which path goes first, so neither always follows the other's teardown.
      const order: Path[] = i % 2 === 0 ? ['kloudak', 'baseline'] : ['baseline', 'kloudak'];
      for (const p of order) schedule.push([p, i, true]);
    }
    for (const [p, i, measured] of schedule) {
      // Interrupted: the signal handler is cleaning up and will exit the process; start nothing.
      if (stopping) await new Promise<never>(() => undefined);
      inFlight = pair(p, i, measured);
      await inFlight;
    }
  } finally {
    await runCleanups();
  }

  const sum: Record<Op, Record<Path, Summary>> = {
    create: { kloudak: summarize(samples.create.kloudak), baseline: summarize(samples.create.baseline) },
    delete: { kloudak: summarize(samples.delete.kloudak), baseline: summarize(samples.delete.baseline) },
  };
  // libvirt's start and destroy (QEMU launch; kill and reap, which libvirt polls every 200 ms) are
  // ~95 % of each operation and the same single RPC on both paths, so their noise hides the
  // agent's own cost. The same figures without that step show it.
  const LIBVIRT_STEP: Record<Op, string> = { create: 'start', delete: 'destroy' };
  const sumRest: Record<Op, Record<Path, Summary>> = {
    create: { kloudak: summarize(samples.create.kloudak, 'start'), baseline: summarize(samples.create.baseline, 'start') },
    delete: { kloudak: summarize(samples.delete.kloudak, 'destroy'), baseline: summarize(samples.delete.baseline, 'destroy') },
  };
  const ratioOf = (s: Record<Path, Summary>) => ({ p50: s.kloudak.p50 / s.baseline.p50, mean: s.kloudak.mean / s.baseline.mean });
  const ratio = (op: Op) => ratioOf(sum[op]);

  const rows: (string | number)[][] = [['op', 'path', 'n', 'p50 ms', 'p95 ms', 'mean ms', 'min ms', 'max ms', 'p50 ratio', 'mean ratio']];
  for (const [label, s] of [
    ['CreateVm', sum.create],
    ['DeleteVm', sum.delete],
    [`CreateVm w/o ${LIBVIRT_STEP.create}`, sumRest.create],
    [`DeleteVm w/o ${LIBVIRT_STEP.delete}`, sumRest.delete],
  ] as const) {
    const r = ratioOf(s);
    for (const path of ['kloudak', 'baseline'] as const) {
      const x = s[path];
      const d = label.includes('w/o') ? 2 : 1;
      rows.push([
        label,
        path,
        x.n,
        fmt(x.p50, d),
        fmt(x.p95, d),
        fmt(x.mean, d),
        fmt(x.min, d),
        fmt(x.max, d),
        path === 'kloudak' ? `${r.p50.toFixed(3)}x` : '',
        path === 'kloudak' ? `${r.mean.toFixed(3)}x` : '',
      ]);
    }
  }
  const stepRows: (string | number)[][] = [['op', 'step', 'kloudak mean ms', 'baseline mean ms', 'difference ms']];
  for (const op of ['create', 'delete'] as const) {
    const k = sum[op].kloudak;
    const b = sum[op].baseline;
    const rest = (s: Summary) => s.mean - STEPS[op].reduce((a, st) => a + (s.stepsMean[st] ?? 0), 0);
    for (const st of STEPS[op]) {
      const km = k.stepsMean[st] ?? 0;
      const bm = b.stepsMean[st] ?? 0;
      stepRows.push([op === 'create' ? 'CreateVm' : 'DeleteVm', st, fmt(km, 2), fmt(bm, 2), fmt(km - bm, 2)]);
    }
    stepRows.push([op === 'create' ? 'CreateVm' : 'DeleteVm', '(rest)', fmt(rest(k), 2), fmt(rest(b), 2), fmt(rest(k) - rest(b), 2)]);
  }

  console.log(
    `\nhost-ops.bench — CreateVm and DeleteVm on ${URI} (TCG, domain type qemu) with OVS (netdev), the test guest ` +
      `(direct kernel boot, 1 vCPU, 128 MiB, 1 NIC on VLAN ${VLAN}), ${ITERATIONS} measured pairs per path after ${WARMUP} warm-up, interleaved; ` +
      `pool holds the template${POOL_VOLUMES > 0 ? ` and ${POOL_VOLUMES} other overlays` : ''}.\n` +
      `kloudak = HostOperations over LibvirtHypervisor/LibvirtStorage/OvsNetworkDriver/IsoSeedBuilder/ProcessRunner.\n` +
      `baseline = the same libvirt RPCs (one @kloudak/libvirt connection) and ovs-vsctl/ovs-appctl/${isoProgram} argv (execFile), ` +
      `without the agent's lookups, refreshes and status reads; domain XML and seed files generated before its clock starts.\n` +
      `Not waiting for the guest to boot. ratio = kloudak / baseline (higher is slower). p95 of ${ITERATIONS} samples is nearest rank.\n` +
      `"w/o start" / "w/o destroy" = each sample minus its libvirt start / destroy call (one identical RPC on both paths, ` +
      `~95 % of the time and most of the noise), which leaves what the agent's layers add.\n` +
      `Machine: ${machine().cpus} cores (${machine().cpuModel}), ${busyBefore}% of a core busy before the start.\n`,
  );
  console.log(table(rows));
  console.log('\nmean time per step (the same steps on both paths; (rest) = total minus the steps):\n');
  console.log(table(stepRows));

  const file = writeResults('host-ops', started, {
    bench: 'host-ops',
    startedAt: started.toISOString(),
    finishedAt: new Date().toISOString(),
    machine: { ...machine(), busyPctBeforeStart: busyBefore },
    settings: { iterations: ITERATIONS, warmup: WARMUP, poolVolumes: POOL_VOLUMES, uri: URI, guest: GUEST, vlan: VLAN },
    summary: sum,
    summaryWithoutLibvirtStep: sumRest,
    ratio: { create: ratio('create'), delete: ratio('delete'), createWithoutStart: ratioOf(sumRest.create), deleteWithoutDestroy: ratioOf(sumRest.delete) },
    samples,
  });
  console.log(`\nresults: ${file}`);
  return 0;
}

runBench('host-ops', main);
