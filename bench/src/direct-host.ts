// The host work of creating and deleting a VM done directly — libvirt RPCs through one
// @kloudak/libvirt connection and the agent's ovs-vsctl/ovs-appctl/xorrisofs argv through
// node:child_process — without the agent's layers: the baseline of host-ops.bench (against
// HostOperations) and of vm-create.bench (against a POST through the whole of Kloudak).
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { consoleLogPath, domainName, rootVolumeName, seedIsoArgv, seedVolumeName, tapName, type HostSettings, type SeedFiles, type VmSpec } from '@kloudak/agent';
import { Flags, type Libvirt } from '@kloudak/libvirt';

const execFileP = promisify(execFile);

/** Runs `fn` as the step `name` of the operation in progress (to time it), and returns its result. */
export type StepTimer = <T>(name: string, fn: () => Promise<T>) => Promise<T>;

/** Same limits as the agent's drivers, so neither side gives up sooner. */
export const OVS_TIMEOUT_S = 10;
export const PROCESS_TIMEOUT_MS = OVS_TIMEOUT_S * 1000 + 2000;
export const SLOW_CALL = { timeoutMs: 120_000 };
/** The undefine flags LibvirtHypervisor tries first (and that the qemu driver accepts). */
export const UNDEFINE_FLAGS = Flags.UNDEFINE_MANAGED_SAVE | Flags.UNDEFINE_SNAPSHOTS_METADATA | Flags.UNDEFINE_CHECKPOINTS_METADATA | Flags.UNDEFINE_NVRAM;


/** ovs-vsctl/ovs-appctl/xorrisofs as the baseline runs them: execFile, argv, no shell. */
export async function run(file: string, args: readonly string[]): Promise<string> {
  const r = await execFileP(file, args, { timeout: PROCESS_TIMEOUT_MS, encoding: 'utf8' });
  return r.stdout;
}

/**
 * The same host work as HostOperations.createVm/deleteVm, done with the fewest calls that achieve
 * it: no "already there?" lookups, no pool refreshes, no status reads after creating a volume.
 * It still looks up the pool once per volume operation, as anything that is not a long-lived
 * process holding references would.
 */
export class DirectHostWork {
  constructor(
    private readonly lv: Libvirt,
    private readonly poolName: string,
    private readonly bridge: string,
    private readonly template: { path: string; capacity: bigint },
    private readonly settings: HostSettings,
    /** The ISO program the agent's builder chose (xorrisofs, or genisoimage where only it exists). */
    private readonly isoProgram: string,
    /** Prefix of the temporary seed directories (the run's name, so leftovers are recognisable). */
    private readonly tmpPrefix: string,
    /** Times one step of an operation; the default runs it untimed. */
    private readonly step: StepTimer = (_name, fn) => fn(),
  ) {}

  /** Same argv as OvsNetworkDriver.ensureBridge: add-br --may-exist, then ask ovs-vswitchd. */
  private async ensureBridge(): Promise<void> {
    const br = this.bridge;
    await run('ovs-vsctl', [`--timeout=${OVS_TIMEOUT_S}`, '--', '--may-exist', 'add-br', br, '--', 'set', 'bridge', br, 'datapath_type=netdev']);
    const list = await run('ovs-appctl', [`--timeout=${OVS_TIMEOUT_S}`, 'ofproto/list']);
    if (!list.split('\n').some((l) => l.trim() === br)) throw new Error(`ovs-vswitchd does not run bridge ${br}`);
  }

  /** The seed ISO, with the argv IsoSeedBuilder uses (files in a fresh 0700 temp dir). */
  private async buildSeed(files: SeedFiles): Promise<Buffer> {
    const dir = await mkdtemp(join(tmpdir(), `${this.tmpPrefix}-seed-`));
    try {
      const entries: [string, string][] = [
        ['user-data', files.userData],
        ['meta-data', files.metaData],
        ['network-config', files.networkConfig],
      ];
      for (const [name, content] of entries) await writeFile(join(dir, name), content, { mode: 0o600, flag: 'wx' });
      const iso = join(dir, 'seed.iso');
      const [program, ...args] = seedIsoArgv(this.isoProgram, iso, entries.map(([n]) => [n, join(dir, n)] as const));
      await run(program!, args);
      return await readFile(iso);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }

  async create(spec: VmSpec, xml: string, files: SeedFiles): Promise<void> {
    await this.step('ovs bridge', () => this.ensureBridge());
    const gib = BigInt(spec.diskGb) * 1024n ** 3n;
    const capacity = gib > this.template.capacity ? gib : this.template.capacity;
    await this.step('root overlay', async () => {
      const pool = await this.lv.lookupStoragePoolByName(this.poolName);
      await this.lv.createVolume(
        pool,
        `<volume type='file'><name>${rootVolumeName(spec.vmId)}</name><capacity unit='bytes'>${capacity}</capacity>` +
          `<allocation unit='bytes'>0</allocation><target><format type='qcow2'/></target>` +
          `<backingStore><path>${this.template.path}</path><format type='qcow2'/></backingStore></volume>`,
        0,
        SLOW_CALL,
      );
    });
    const iso = await this.step('seed build', () => this.buildSeed(files));
    await this.step('seed volume', async () => {
      const pool = await this.lv.lookupStoragePoolByName(this.poolName);
      const vol = await this.lv.createVolume(
        pool,
        `<volume type='file'><name>${seedVolumeName(spec.vmId)}</name><capacity unit='bytes'>${iso.length}</capacity>` +
          `<allocation unit='bytes'>0</allocation><target><format type='raw'/></target></volume>`,
        0,
        SLOW_CALL,
      );
      await this.lv.uploadVolume(vol, iso, { finishTimeoutMs: SLOW_CALL.timeoutMs });
    });
    // The agent defines with VIR_DOMAIN_DEFINE_VALIDATE (its default); so does the baseline.
    const dom = await this.step('define', () => this.lv.defineDomain(xml, Flags.DEFINE_VALIDATE));
    await this.step('start', () => this.lv.createDomain(dom, 0, SLOW_CALL));
  }

  async delete(vmId: string): Promise<void> {
    const dom = await this.lv.lookupDomainByName(domainName(vmId));
    await this.step('destroy', () => this.lv.destroyDomain(dom, 0, SLOW_CALL));
    await this.step('undefine', () => this.lv.undefineDomain(dom, UNDEFINE_FLAGS));
    // libvirt removes the VM's OVS port on destroy; like the agent, remove one left behind.
    await this.step('ovs ports', async () => {
      const prefix = tapName(vmId, 0).slice(0, -1);
      const ports = (await run('ovs-vsctl', [`--timeout=${OVS_TIMEOUT_S}`, 'list-ports', this.bridge])).split('\n');
      for (const p of ports) {
        if (p.startsWith(prefix)) await run('ovs-vsctl', [`--timeout=${OVS_TIMEOUT_S}`, '--if-exists', 'del-port', this.bridge, p]);
      }
    });
    await this.step('volumes', async () => {
      const pool = await this.lv.lookupStoragePoolByName(this.poolName);
      for (const name of [rootVolumeName(vmId), seedVolumeName(vmId)]) {
        await this.lv.deleteVolume(await this.lv.lookupVolumeByName(pool, name), 0, SLOW_CALL);
      }
    });
    await rm(consoleLogPath(vmId, this.settings), { force: true });
  }
}

