/**
 * {@link NetworkDriver} over Open vSwitch's command-line client, `ovs-vsctl`.
 *
 * Every operation is idempotent (`--may-exist`, `--if-exists`, set add/remove), so a retried or
 * replayed host operation converges instead of failing. Names are checked before anything runs;
 * every ovs-vsctl call has a server-side time limit (`--timeout`) and a runner time limit a little
 * above it as a backstop.
 *
 * OVS details worth knowing:
 * - ovs-vsctl waits until ovs-vswitchd has applied a change, but a bridge the datapath cannot
 *   provide (`system` without the kernel module) is still committed to the database; it only
 *   prints "Error detected while setting up". {@link OvsNetworkDriver.ensureBridge} therefore
 *   asks ovs-vswitchd (`ovs-appctl ofproto/list`) whether the bridge really exists.
 * - A port's `trunks` set, when EMPTY, means "carry every VLAN" (and a port with neither `tag` nor
 *   `trunks` is such a trunk). The uplink's set must therefore never become empty while the uplink
 *   is on the bridge: removing a VLAN adds {@link PARKED_VLAN} in the same transaction, adding one
 *   removes it, and {@link OvsNetworkDriver.ensureBridge} parks an uplink it finds unrestricted.
 *   Each ovs-vsctl invocation is one OVSDB transaction (verified and retried by ovs-vsctl on a
 *   concurrent change), and each one that removes a value also adds one, so no interleaving of
 *   concurrent network commands can leave the set empty.
 */
import type { CommandResult, CommandRunner, NetworkDriver, OvsPort } from '../ports.js';
import { SpecError, VLAN_MAX, VLAN_MIN } from '../spec.js';
import { CommandError } from '../system/command-runner.js';

/** Settings of the driver. */
export interface OvsConfig {
  /** Datapath of bridges the driver creates: `system` (kernel module) or `netdev` (userspace). */
  datapathType: 'system' | 'netdev';
  /**
   * Name of the trunk port that connects the bridge to the physical network. VLANs are added to
   * and removed from its `trunks` set; without one, ensureVlan/removeVlan do nothing.
   */
  uplink?: string;
  /** Time limit of one ovs-vsctl call (rounded up to whole seconds). Default 10 s. */
  timeoutMs?: number;
}

/** Linux interface names: at most 15 bytes (IFNAMSIZ - 1); OVS port names become interfaces. */
const NAME = /^[A-Za-z0-9_.-]{1,15}$/;

/**
 * Throws unless `name` is usable as an OVS bridge or port name: `^[A-Za-z0-9_.-]{1,15}$`, and
 * neither `.`/`..` (refused by the kernel) nor starting with `-` (would read as an option).
 */
export function checkOvsName(kind: 'bridge' | 'port' | 'uplink', name: string): string {
  if (typeof name !== 'string' || !NAME.test(name) || name.startsWith('-') || name === '.' || name === '..') {
    throw new Error(`invalid OVS ${kind} name ${JSON.stringify(name)}: want 1-15 of [A-Za-z0-9_.-], not starting with "-"`);
  }
  return name;
}

/**
 * Throws a SpecError unless `vlan` is a tenant VLAN id (2-4094): 0 would be untagged, 1 is the
 * default VLAN of most switches, 4095 is reserved (and is {@link PARKED_VLAN}).
 */
export function checkVlan(vlan: number): number {
  if (!Number.isInteger(vlan) || vlan < VLAN_MIN || vlan > VLAN_MAX) throw new SpecError(`invalid VLAN id ${String(vlan)}: want an integer ${VLAN_MIN}-${VLAN_MAX}`);
  return vlan;
}

/**
 * The value that keeps the uplink's `trunks` set from ever being empty (empty = every VLAN). 802.1Q
 * reserves VLAN 4095 (no frame may carry it) and no tenant network or NIC can use it, so an uplink
 * trunking only 4095 carries nothing: tagged frames of other VLANs and untagged frames (VLAN 0) are
 * dropped on the way in, and no frame of the bridge is sent out through it.
 */
export const PARKED_VLAN = 4095;

/** Exit code of `ovs-vsctl br-exists` for a missing bridge. */
const BR_EXISTS_MISSING = 2;

export class OvsNetworkDriver implements NetworkDriver {
  private readonly datapathType: 'system' | 'netdev';
  private readonly uplink: string | undefined;
  /** `--timeout` of ovs-vsctl/ovs-appctl, in seconds. */
  private readonly timeoutS: number;

  constructor(
    private readonly runner: CommandRunner,
    config: OvsConfig,
  ) {
    if (config.datapathType !== 'system' && config.datapathType !== 'netdev') {
      throw new Error(`invalid OVS datapath type ${JSON.stringify(config.datapathType)}: want system or netdev`);
    }
    this.datapathType = config.datapathType;
    this.uplink = config.uplink === undefined ? undefined : checkOvsName('uplink', config.uplink);
    const timeoutMs = config.timeoutMs ?? 10_000;
    if (!Number.isFinite(timeoutMs) || timeoutMs <= 0) throw new Error(`invalid OVS timeout ${timeoutMs} ms`);
    this.timeoutS = Math.ceil(timeoutMs / 1000);
  }

  async ensureBridge(bridge: string): Promise<void> {
    checkOvsName('bridge', bridge);
    const context = `cannot create OVS bridge ${bridge}`;
    const argv = this.vsctlArgv(['--', '--may-exist', 'add-br', bridge, '--', 'set', 'bridge', bridge, `datapath_type=${this.datapathType}`]);
    const r = await this.exec(argv, context);
    await this.checkBridgeRuns(bridge, argv, r, context);
    await this.restrictUplink(bridge, context);
  }

  /** Throws unless ovs-vswitchd really runs `bridge` (see the module comment). */
  private async checkBridgeRuns(bridge: string, argv: string[], r: CommandResult, context: string): Promise<void> {
    // The transaction is committed even when ovs-vswitchd cannot build the bridge (it only warns
    // "Error detected while setting up"), so ask ovs-vswitchd itself which bridges it runs.
    const list = await this.exec(['ovs-appctl', `--timeout=${this.timeoutS}`, 'ofproto/list'], context);
    if (!list.stdout.split('\n').some((line) => line.trim() === bridge)) {
      throw new CommandError({
        argv,
        reason: 'unexpected_output',
        code: r.code,
        stderr: r.stderr,
        detail:
          `left the bridge unusable: ovs-vswitchd does not run it (datapath_type=${this.datapathType}` +
          `${this.datapathType === 'system' ? ': is the openvswitch kernel module loaded?' : ''}; see the ovs-vswitchd log)`,
      }).withContext(context);
    }
  }

  async ensureVlan(bridge: string, vlan: number): Promise<void> {
    checkOvsName('bridge', bridge);
    checkVlan(vlan);
    if (this.uplink === undefined) return;
    const context = `cannot allow VLAN ${vlan} on uplink ${this.uplink} of OVS bridge ${bridge}`;
    const ports = await this.portNames(bridge, context);
    if (ports === null || !ports.includes(this.uplink)) {
      throw new CommandError({
        argv: ['ovs-vsctl', 'list-ports', bridge],
        reason: 'unexpected_output',
        detail: ports === null ? `found no bridge ${bridge}` : `found no port ${this.uplink} on bridge ${bridge}`,
      }).withContext(context);
    }
    // Set semantics: adding a value already present changes nothing. One transaction: the set is
    // never empty in between (the parked value goes only once the VLAN is in).
    await this.vsctl(['--', 'add', 'port', this.uplink, 'trunks', String(vlan), '--', 'remove', 'port', this.uplink, 'trunks', String(PARKED_VLAN)], context);
  }

  async removeVlan(bridge: string, vlan: number): Promise<void> {
    checkOvsName('bridge', bridge);
    checkVlan(vlan);
    if (this.uplink === undefined) return;
    const context = `cannot remove VLAN ${vlan} from uplink ${this.uplink} of OVS bridge ${bridge}`;
    // No bridge, or no uplink on it: nothing of this bridge carries the VLAN.
    const ports = await this.portNames(bridge, context);
    if (ports === null || !ports.includes(this.uplink)) return;
    // Removing a value that is not in the set changes nothing. The parked value goes in by the same
    // transaction: removing the last VLAN must not leave an empty set, which would carry them all.
    await this.vsctl(['--', 'add', 'port', this.uplink, 'trunks', String(PARKED_VLAN), '--', 'remove', 'port', this.uplink, 'trunks', String(vlan)], context);
    await this.revalidated(context);
  }

  /**
   * Waits until the datapath's cached flows follow a change that takes traffic away from a port.
   * ovs-vsctl returns once ovs-vswitchd has reconfigured the bridge, but flows already in the
   * datapath are revalidated by background threads a little later: until then a frame can still
   * take the old way out (measured: one broadcast frame of a removed VLAN). A removal is only done
   * once nothing can follow the old path any more.
   */
  private async revalidated(context: string): Promise<void> {
    await this.exec(['ovs-appctl', `--timeout=${this.timeoutS}`, 'revalidator/wait'], context);
  }

  /**
   * Parks the uplink when it is a port of `bridge` with neither a tag nor any trunks (as an
   * operator typically adds it: `ovs-vsctl add-port br-vm eth1`), which carries every VLAN.
   * Between the read and the write another command may add a VLAN; the parked value then sits
   * beside it, which is harmless.
   */
  private async restrictUplink(bridge: string, context: string): Promise<void> {
    if (this.uplink === undefined) return;
    const ports = await this.portNames(bridge, context);
    if (ports === null || !ports.includes(this.uplink)) return;
    const r = await this.vsctl(['--format=json', '--columns=tag,trunks', 'list', 'port', this.uplink], context);
    let open: boolean;
    try {
      open = isUnrestricted(r.stdout);
    } catch (err) {
      throw new CommandError({
        argv: this.vsctlArgv(['--format=json', '--columns=tag,trunks', 'list', 'port', this.uplink]),
        reason: 'unexpected_output',
        detail: `returned output that is not a port row (${err instanceof Error ? err.message : String(err)})`,
        cause: err,
      }).withContext(context);
    }
    if (!open) return;
    await this.vsctl(['add', 'port', this.uplink, 'trunks', String(PARKED_VLAN)], context);
    await this.revalidated(context);
  }

  async listPorts(bridge: string): Promise<OvsPort[]> {
    checkOvsName('bridge', bridge);
    const context = `cannot list the ports of OVS bridge ${bridge}`;
    const names = await this.portNames(bridge, context);
    if (names === null || names.length === 0) return [];
    // All ports, filtered here: naming the ports would fail if one went away in between.
    const args = ['--format=json', '--columns=name,tag,external_ids', 'list', 'port'];
    const r = await this.vsctl(args, context);
    let rows: Map<string, OvsPort>;
    try {
      rows = parsePortTable(r.stdout, bridge);
    } catch (err) {
      throw new CommandError({
        argv: ['ovs-vsctl', ...args],
        reason: 'unexpected_output',
        detail: `returned output that is not a port table (${err instanceof Error ? err.message : String(err)})`,
        cause: err,
      }).withContext(context);
    }
    const ports: OvsPort[] = [];
    for (const name of names) {
      const port = rows.get(name);
      if (port !== undefined) ports.push(port); // absent: deleted between the two calls
    }
    return ports;
  }

  async deletePort(bridge: string, port: string): Promise<void> {
    checkOvsName('bridge', bridge);
    checkOvsName('port', port);
    // --if-exists: a missing port (or bridge) succeeds. A port of ANOTHER bridge still fails.
    await this.vsctl(['--if-exists', 'del-port', bridge, port], `cannot delete port ${port} of OVS bridge ${bridge}`);
  }

  /** Port names of a bridge (sorted, as ovs-vsctl prints them), or null when there is no such bridge. */
  private async portNames(bridge: string, context: string): Promise<string[] | null> {
    const r = await this.vsctl(['list-ports', bridge], context, true);
    if (r.code !== 0) {
      const exists = await this.vsctl(['br-exists', bridge], context, true);
      if (exists.code === BR_EXISTS_MISSING) return null;
      // The bridge exists (or br-exists failed too): report the list-ports failure.
      throw new CommandError({ argv: this.vsctlArgv(['list-ports', bridge]), reason: 'exit', code: r.code, stderr: r.stderr }).withContext(
        context,
      );
    }
    return r.stdout.split('\n').filter((line) => line !== '');
  }

  private vsctlArgv(args: readonly string[]): string[] {
    return ['ovs-vsctl', `--timeout=${this.timeoutS}`, ...args];
  }

  /**
   * Runs ovs-vsctl. Failures throw a CommandError prefixed with `context`, except that with
   * `allowFailure` a non-zero exit is returned for the caller to judge.
   */
  private async vsctl(args: readonly string[], context: string, allowFailure = false): Promise<CommandResult> {
    const r = await this.exec(this.vsctlArgv(args), context, allowFailure);
    if (r.code === 0 && /Error detected while setting up/.test(r.stderr)) {
      throw new CommandError({ argv: this.vsctlArgv(args), reason: 'unexpected_output', code: 0, stderr: r.stderr, detail: 'reported an error' }).withContext(
        context,
      );
    }
    return r;
  }

  private async exec(argv: readonly string[], context: string, allowFailure = false): Promise<CommandResult> {
    try {
      // The runner's limit is a backstop: ovs-vsctl's own --timeout should end the call first.
      return await this.runner.run(argv, { timeoutMs: this.timeoutS * 1000 + 2000, allowFailure });
    } catch (err) {
      throw err instanceof CommandError ? err.withContext(context) : err;
    }
  }
}

/**
 * Parses `ovs-vsctl --format=json --columns=name,tag,external_ids list port` into ports by name.
 *
 * The JSON format is OVSDB's: `{"headings": [...], "data": [[...], ...]}`, where a column holds
 * an atom (`"name"`, `10`), an optional value as a set (`["set", []]` empty, `["set", [10]]`, or
 * just `10`), or a map (`["map", [["key", "value"], ...]]`).
 */
export function parsePortTable(stdout: string, bridge: string): Map<string, OvsPort> {
  const table: unknown = JSON.parse(stdout);
  if (!isObject(table) || !Array.isArray(table.headings) || !Array.isArray(table.data)) {
    throw new Error('expected {"headings": [...], "data": [...]}');
  }
  const headings: unknown[] = table.headings;
  const col = (name: string): number => {
    const i = headings.indexOf(name);
    if (i < 0) throw new Error(`no column ${name}`);
    return i;
  };
  const [nameCol, tagCol, idsCol] = [col('name'), col('tag'), col('external_ids')];
  const ports = new Map<string, OvsPort>();
  for (const row of table.data as unknown[]) {
    if (!Array.isArray(row)) throw new Error('a row is not an array');
    const name: unknown = row[nameCol];
    if (typeof name !== 'string') throw new Error('a port name is not a string');
    ports.set(name, { name, bridge, tag: decodeTag(row[tagCol]), externalIds: decodeStringMap(row[idsCol]) });
  }
  return ports;
}

/** Whether `ovs-vsctl --format=json --columns=tag,trunks list port X` shows a port with no tag and no trunks. */
export function isUnrestricted(stdout: string): boolean {
  const table: unknown = JSON.parse(stdout);
  if (!isObject(table) || !Array.isArray(table.headings) || !Array.isArray(table.data) || table.data.length !== 1) {
    throw new Error('expected one row of {"headings": [...], "data": [...]}');
  }
  const row: unknown = table.data[0];
  const [tagCol, trunksCol] = [table.headings.indexOf('tag'), table.headings.indexOf('trunks')];
  if (!Array.isArray(row) || tagCol < 0 || trunksCol < 0) throw new Error('no tag or trunks column');
  const trunks: unknown = row[trunksCol];
  // A set of several values is ["set", [...]]; a set of one value is that value.
  const noTrunks = Array.isArray(trunks) && trunks[0] === 'set' && Array.isArray(trunks[1]) && trunks[1].length === 0;
  return decodeTag(row[tagCol]) === null && noTrunks;
}

function decodeTag(value: unknown): number | null {
  let v = value;
  if (Array.isArray(v) && v[0] === 'set' && Array.isArray(v[1])) {
    if (v[1].length === 0) return null;
    if (v[1].length !== 1) throw new Error('tag is a set of more than one value');
    v = v[1][0];
  }
  if (typeof v !== 'number' || !Number.isInteger(v)) throw new Error(`tag is not an integer: ${JSON.stringify(value)}`);
  return v;
}

function decodeStringMap(value: unknown): Record<string, string> {
  if (!Array.isArray(value) || value[0] !== 'map' || !Array.isArray(value[1])) {
    throw new Error(`external_ids is not a map: ${JSON.stringify(value)}`);
  }
  const entries: [string, string][] = [];
  for (const pair of value[1] as unknown[]) {
    if (!Array.isArray(pair) || pair.length !== 2 || typeof pair[0] !== 'string' || typeof pair[1] !== 'string') {
      throw new Error('external_ids holds a pair that is not two strings');
    }
    entries.push([pair[0], pair[1]]);
  }
  // fromEntries defines own properties, so a key like "__proto__" is data, not a prototype.
  return Object.fromEntries(entries);
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}
