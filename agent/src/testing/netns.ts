/**
 * Test helper: small virtual networks of Linux network namespaces ("hosts") plugged into real OVS
 * bridges through veth pairs, to test what VLAN tags and ports really do to traffic.
 *
 *   const net = await createTestNet();      // names: kt-<5 hex>-…, unique per net
 *   t.after(() => net.cleanup());
 *   const br = await net.addBridge('br');   // datapath_type=netdev (userspace)
 *   const a = await net.addNamespaceHost({ name: 'a', bridge: br, vlan: 100, address: '10.241.0.1/24' });
 *   await net.exec(a.ns, ['ping', '-c', '1', '10.241.0.2']);
 *
 * Safety: only loopback and these namespaces may ever be reached. A namespace has only its own
 * connected subnet (no default route), and the first host of each 10.NN.0.0/16 adds a root
 * namespace BLACKHOLE route for that /16 (with a metric unique to this net, so concurrent nets
 * each own and remove exactly their own route) and checks that the kernel would really drop
 * traffic to the host's address: without it, a test address would leave the machine through the
 * default route. Addresses must be in 10.0.0.0/8.
 *
 * Everything is tracked: cleanup() removes it newest first (processes, OVS ports, veths,
 * namespaces, bridges, routes), continues past failures, and throws if any step failed;
 * leftovers() lists whatever of this net still exists on the machine.
 *
 * With the netdev datapath, checksum offload breaks TCP (packets leave with partial checksums),
 * so both ends of every veth get `ethtool -K IF tx off`.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes, randomInt } from 'node:crypto';
import type { CommandResult, CommandRunner, RunOptions } from '../ports.js';
import { ProcessRunner } from '../system/command-runner.js';

/** Linux interface names have at most 15 characters. */
const IFNAMSIZ_MAX = 15;
const OVS_TIMEOUT = '--timeout=10';

/** A namespace "host" on an OVS bridge. */
export interface NamespaceHost {
  /** Network namespace name (use with {@link TestNet.exec}). */
  ns: string;
  /** Address without prefix length, e.g. `10.241.0.1`. */
  ip: string;
  /** Address with prefix length, as given. */
  address: string;
  /** Root-namespace end of the veth pair: the OVS port. */
  port: string;
  /** Namespace end of the veth pair. */
  iface: string;
  bridge: string;
  vlan: number | null;
}

/** Options of {@link TestNet.addNamespaceHost}. */
export interface NamespaceHostOptions {
  /** Short name (letters, digits), made unique with the net's prefix. */
  name: string;
  /** One of this net's OVS bridges: from {@link TestNet.addBridge}, or named with {@link TestNet.name}. */
  bridge: string;
  /** Access VLAN tag of the OVS port; null/absent for an untagged port. */
  vlan?: number | null;
  /** `10.NN.x.y/len` with len 16-30. */
  address: string;
  /** external_ids set on the OVS port. */
  externalIds?: Record<string, string>;
}

/** A process running in a namespace, killed at cleanup. */
export interface BackgroundProcess {
  readonly child: ChildProcess;
  /** Everything written to stdout and stderr so far. */
  output(): string;
  /** Resolves once the output contains `text`; rejects if the process exits first or on time-out. */
  waitForOutput(text: string, timeoutMs?: number): Promise<void>;
  /** SIGKILL and wait for the exit. */
  kill(): Promise<void>;
}

export interface TestNet {
  /** `<prefix><5 hex>`: every name this net creates starts with it. */
  readonly id: string;
  /** `<id>-<suffix>`, checked to fit an interface name. */
  name(suffix: string): string;
  /** Creates OVS bridge `<id>-<suffix>` with datapath_type=netdev; returns its name. */
  addBridge(suffix: string): Promise<string>;
  /** A namespace with one veth into `bridge` (see the module comment). */
  addNamespaceHost(opts: NamespaceHostOptions): Promise<NamespaceHost>;
  /** Runs a command inside one of this net's namespaces (`ip netns exec NS ...argv`). */
  exec(ns: string, argv: readonly string[], opts?: RunOptions): Promise<CommandResult>;
  /** Starts a long-running command inside one of this net's namespaces. */
  spawn(ns: string, argv: readonly string[]): BackgroundProcess;
  /** Registers an extra cleanup step (for objects a test made itself), run in order with the rest. */
  defer(what: string, undo: () => Promise<void>): void;
  /** Removes everything, newest first. Throws an AggregateError if any step failed. */
  cleanup(): Promise<void>;
  /** The root-namespace blackhole routes this net added (each /16 once). */
  blackholes(): { dst: string; metric: number }[];
  /** Names (and routes) of this net that still exist on the machine: bridges, ports, links, namespaces. */
  leftovers(): Promise<string[]>;
}

/**
 * A new, empty test network. `prefix` (1-3 characters, default `kt-`) starts every name; a random
 * part makes names unique across concurrent tests and runs (checked: nothing with the id exists).
 */
export async function createTestNet(prefix = 'kt-', runner: CommandRunner = new ProcessRunner()): Promise<TestNet> {
  if (!/^[a-z][a-z0-9-]{0,2}$/.test(prefix)) throw new Error(`test net prefix ${JSON.stringify(prefix)}: want 1-3 of [a-z0-9-]`);
  const net = new Net(`${prefix}${randomBytes(3).toString('hex').slice(0, 5)}`, runner);
  // Nothing named after this net may exist yet. Every undo can then be registered before its
  // object is made (so a half-made object is removed too) without any risk of removing
  // something that is not ours.
  const found = await net.leftovers();
  if (found.length > 0) throw new Error(`test net id ${net.id} is taken (${found.join(', ')}): run again`);
  return net;
}

class Net implements TestNet {
  private readonly undos: { what: string; undo: () => Promise<void> }[] = [];
  private readonly namespaces = new Set<string>();
  /** Our blackhole routes: /16 prefix → metric. */
  private readonly routes = new Map<string, number>();

  constructor(
    readonly id: string,
    private readonly runner: CommandRunner,
  ) {}

  name(suffix: string): string {
    if (!/^[A-Za-z0-9]+$/.test(suffix)) throw new Error(`name suffix ${JSON.stringify(suffix)}: letters and digits only`);
    const n = `${this.id}-${suffix}`;
    if (n.length > IFNAMSIZ_MAX) throw new Error(`name ${n} is longer than ${IFNAMSIZ_MAX} characters: shorten "${suffix}"`);
    return n;
  }

  defer(what: string, undo: () => Promise<void>): void {
    this.undos.push({ what, undo });
  }

  async addBridge(suffix: string): Promise<string> {
    const br = this.name(suffix);
    // Registered before the attempt: a half-made object is removed too (every undo is idempotent).
    this.defer(`bridge ${br}`, () => this.run(['ovs-vsctl', OVS_TIMEOUT, '--if-exists', 'del-br', br]).then(() => {}));
    await this.run(['ovs-vsctl', OVS_TIMEOUT, 'add-br', br, '--', 'set', 'bridge', br, 'datapath_type=netdev']);
    return br;
  }

  async addNamespaceHost(opts: NamespaceHostOptions): Promise<NamespaceHost> {
    const m = /^10\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})\/(\d{1,2})$/.exec(opts.address);
    const octets = m ? [10, Number(m[1]), Number(m[2]), Number(m[3])] : [];
    const len = m ? Number(m[4]) : 0;
    if (!m || octets.some((o) => o > 255) || len < 16 || len > 30) {
      throw new Error(`address ${JSON.stringify(opts.address)}: want 10.NN.x.y/16-30 (test addresses stay in 10.0.0.0/8)`);
    }
    const ip = octets.join('.');
    const base = this.name(opts.name);
    const port = `${base}h`;
    const iface = `${base}n`;
    if (port.length > IFNAMSIZ_MAX) throw new Error(`interface name ${port} is too long: shorten "${opts.name}"`);
    const vlan = opts.vlan ?? null;
    if (vlan !== null && (!Number.isInteger(vlan) || vlan < 1 || vlan > 4094)) throw new Error(`bad VLAN ${vlan}`);
    // Test hosts only ever join this net's own bridges (made by addBridge or named with name()).
    if (!opts.bridge.startsWith(`${this.id}-`)) throw new Error(`bridge ${opts.bridge} is not one of test net ${this.id}`);

    // 1. Root-namespace blackhole for the /16 before any address exists.
    await this.ensureBlackhole(`10.${octets[1]}.0.0/16`, ip);

    // 2. Namespace.
    this.defer(`namespace ${base}`, () => this.deleteNamespace(base));
    this.namespaces.add(base);
    await this.run(['ip', 'netns', 'add', base]);

    // 3. veth pair, one end straight into the namespace. Deleting either end deletes both.
    this.defer(`veth ${port}`, async () => {
      if (await this.linkExists(port)) await this.run(['ip', 'link', 'del', port]);
    });
    await this.run(['ip', 'link', 'add', port, 'type', 'veth', 'peer', 'name', iface, 'netns', base]);

    // 4. Inside: loopback, the address, no checksum offload, up.
    await this.exec(base, ['ip', 'link', 'set', 'lo', 'up']);
    await this.exec(base, ['ip', 'addr', 'add', opts.address, 'dev', iface]);
    await this.exec(base, ['ethtool', '-K', iface, 'tx', 'off']);
    await this.exec(base, ['ip', 'link', 'set', iface, 'up']);

    // 5. Outside: no checksum offload, up, into the bridge with its tag.
    await this.run(['ethtool', '-K', port, 'tx', 'off']);
    await this.run(['ip', 'link', 'set', port, 'up']);
    this.defer(`OVS port ${port}`, () => this.run(['ovs-vsctl', OVS_TIMEOUT, '--if-exists', 'del-port', opts.bridge, port]).then(() => {}));
    const addPort = ['ovs-vsctl', OVS_TIMEOUT, 'add-port', opts.bridge, port];
    if (vlan !== null) addPort.push(`tag=${vlan}`);
    for (const [k, v] of Object.entries(opts.externalIds ?? {})) {
      // ovs-vsctl parses keys and values: quote them as OVSDB strings (JSON syntax).
      addPort.push('--', 'set', 'port', port, `external_ids:${JSON.stringify(k)}=${JSON.stringify(v)}`);
    }
    await this.run(addPort);

    return { ns: base, ip, address: opts.address, port, iface, bridge: opts.bridge, vlan };
  }

  exec(ns: string, argv: readonly string[], opts?: RunOptions): Promise<CommandResult> {
    this.checkOwnNamespace(ns);
    return this.runner.run(['ip', 'netns', 'exec', ns, ...argv], { timeoutMs: 30_000, ...opts });
  }

  spawn(ns: string, argv: readonly string[]): BackgroundProcess {
    this.checkOwnNamespace(ns);
    const child = spawn('ip', ['netns', 'exec', ns, ...argv], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let exited = false;
    const exit = new Promise<void>((resolve) => {
      child.once('close', () => {
        exited = true;
        resolve();
      });
      child.once('error', (err) => {
        out += `\n[spawn error: ${err.message}]`;
        exited = true;
        resolve();
      });
    });
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (out += d.toString()));
    const proc: BackgroundProcess = {
      child,
      output: () => out,
      waitForOutput: async (text, timeoutMs = 10_000) => {
        const deadline = Date.now() + timeoutMs;
        while (!out.includes(text)) {
          if (exited) throw new Error(`${argv.join(' ')} exited before printing ${JSON.stringify(text)}; output: ${out}`);
          if (Date.now() > deadline) throw new Error(`timed out waiting for ${JSON.stringify(text)} from ${argv.join(' ')}; output: ${out}`);
          await new Promise((r) => setTimeout(r, 20));
        }
      },
      kill: async () => {
        if (!exited) child.kill('SIGKILL');
        await exit;
      },
    };
    this.defer(`process ${argv[0] ?? ''} in ${ns}`, () => proc.kill());
    return proc;
  }

  async cleanup(): Promise<void> {
    const errors: Error[] = [];
    while (this.undos.length > 0) {
      const { what, undo } = this.undos.pop()!;
      try {
        await undo();
      } catch (err) {
        errors.push(new Error(`cleanup of ${what} failed: ${err instanceof Error ? err.message : String(err)}`, { cause: err }));
      }
    }
    if (errors.length > 0) throw new AggregateError(errors, `test net ${this.id}: ${errors.length} cleanup step(s) failed: ${errors[0]!.message}`);
  }

  blackholes(): { dst: string; metric: number }[] {
    return [...this.routes].map(([dst, metric]) => ({ dst, metric }));
  }

  async leftovers(): Promise<string[]> {
    const found: string[] = [];
    const mine = (s: string): boolean => s.startsWith(`${this.id}-`);
    const bridges = await this.run(['ovs-vsctl', OVS_TIMEOUT, 'list-br']);
    found.push(...lines(bridges.stdout).filter(mine).map((b) => `bridge ${b}`));
    const ports = await this.run(['ovs-vsctl', OVS_TIMEOUT, '--bare', '--columns=name', 'list', 'port']);
    found.push(...lines(ports.stdout).filter(mine).map((p) => `OVS port ${p}`));
    const netns = await this.run(['ip', 'netns', 'list']);
    found.push(...lines(netns.stdout).map((l) => l.split(' ')[0] ?? '').filter(mine).map((n) => `namespace ${n}`));
    const links = await this.run(['ip', '-o', 'link', 'show']);
    for (const l of lines(links.stdout)) {
      const name = l.split(':')[1]?.trim().split('@')[0];
      if (name !== undefined && mine(name)) found.push(`link ${name}`);
    }
    for (const [dst, metric] of this.routes) {
      if (await this.blackholeExists(dst, metric)) found.push(`route blackhole ${dst} metric ${metric}`);
    }
    return found;
  }

  /** Adds our blackhole route for `dst` (once per /16) and checks that `probe` is dropped. */
  private async ensureBlackhole(dst: string, probe: string): Promise<void> {
    if (!this.routes.has(dst)) {
      // A metric of our own: concurrent nets on the same /16 each add and remove their own route.
      // Registered only once added: on a (most unlikely) clash the existing route is not ours.
      const metric = randomInt(1_000_000, 2_000_000_000);
      await this.run(['ip', 'route', 'add', 'blackhole', dst, 'metric', String(metric)]);
      this.routes.set(dst, metric);
      this.defer(`route blackhole ${dst} metric ${metric}`, async () => {
        if (await this.blackholeExists(dst, metric)) await this.run(['ip', 'route', 'del', 'blackhole', dst, 'metric', String(metric)]);
      });
    }
    // The kernel must drop root-namespace traffic to the address: `ip route get` fails for a
    // blackhole ("Invalid argument") or names it. A more specific or better route means the
    // address is a real network here; refuse to use it.
    const r = await this.run(['ip', 'route', 'get', probe], true);
    if (r.code === 0 && !r.stdout.trimStart().startsWith('blackhole')) {
      throw new Error(`test address ${probe} would be routed out of this machine (${r.stdout.trim()}): pick another 10.NN.0.0/16`);
    }
  }

  private async blackholeExists(dst: string, metric: number): Promise<boolean> {
    const r = await this.run(['ip', '-j', 'route', 'show', 'exact', dst]);
    const routes = JSON.parse(r.stdout || '[]') as { type?: string; metric?: number }[];
    return routes.some((route) => route.type === 'blackhole' && (route.metric ?? 0) === metric);
  }

  private async deleteNamespace(ns: string): Promise<void> {
    const list = await this.run(['ip', 'netns', 'list']);
    if (!lines(list.stdout).some((l) => l.split(' ')[0] === ns)) return;
    // A namespace lives on while processes run in it: kill whatever is left (ours, tracked, are
    // gone already; a stray server started with exec would keep it alive).
    const pids = await this.run(['ip', 'netns', 'pids', ns]);
    for (const pid of lines(pids.stdout)) {
      try {
        process.kill(Number(pid), 'SIGKILL');
      } catch {
        // exited meanwhile
      }
    }
    await this.run(['ip', 'netns', 'del', ns]);
    this.namespaces.delete(ns);
  }

  private async linkExists(name: string): Promise<boolean> {
    return (await this.run(['ip', 'link', 'show', 'dev', name], true)).code === 0;
  }

  private checkOwnNamespace(ns: string): void {
    if (!this.namespaces.has(ns)) throw new Error(`namespace ${JSON.stringify(ns)} is not one of test net ${this.id}`);
  }

  private run(argv: readonly string[], allowFailure = false): Promise<CommandResult> {
    return this.runner.run(argv, { timeoutMs: 30_000, allowFailure });
  }
}

function lines(s: string): string[] {
  return s
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l !== '');
}
