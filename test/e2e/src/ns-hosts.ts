// Hosts as network namespaces for whole-system HA tests and the failover bench: each host's agent
// runs in a namespace of its own and reaches the orchestrator only through a veth into one Linux
// bridge, whose address in the root namespace is where the orchestrator's agent link listens.
// Cutting a host's veth (link down) partitions exactly that host from the orchestrator, while its
// agent keeps its local libvirt (a unix socket, which no network namespace cuts) — what a real
// network partition does.
//
// A kernel bridge, not OVS: this is the hosts' management network, not a VM network.
//
// Addresses: 10.<octet>.0.0/24, the orchestrator .1, host i .(10+i). A root-namespace blackhole
// route for 10.<octet>.0.0/16 exists before any address does, so no test packet can leave the
// machine. Everything is removed by the cleanup stack, newest first.
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import type { CleanupStack } from '@kloudak/testkit';

/** One host's place in the fleet's network. */
export interface NamespaceHostNet {
  /** Network namespace to run the host's agent in. */
  ns: string;
  /** The host's address. */
  ip: string;
  /** Root-namespace end of its veth (a bridge port): down = partitioned. */
  port: string;
}

/** A set of namespace hosts around one orchestrator address. */
export interface NamespaceFleet {
  /** Where the orchestrator's agent link must listen (config agentHost, and agentTlsNames). */
  orchestratorIp: string;
  hosts: NamespaceHostNet[];
  /** Cut the host off from the orchestrator (and from every other host). */
  partition(h: NamespaceHostNet): Promise<void>;
  /** Reconnect it. */
  heal(h: NamespaceHostNet): Promise<void>;
}

/** `count` namespace hosts in 10.`octet`.0.0/24 around a bridge `<prefix><hex>-br`; removed by `cleanup`. */
export async function createNamespaceFleet(cleanup: CleanupStack, prefix: string, octet: number, count: number): Promise<NamespaceFleet> {
  if (!/^[a-z]{1,3}$/.test(prefix) || !Number.isInteger(octet) || octet < 1 || octet > 254 || count > 50) throw new Error('bad namespace fleet settings');
  const id = `${prefix}${randomBytes(2).toString('hex')}`;
  const bridge = `${id}-br`;
  const blackhole = `10.${octet}.0.0/16`;
  // A metric of our own: concurrent fleets on other /16s never remove each other's routes.
  const metric = String(4000 + (randomBytes(2).readUInt16BE() % 50_000));
  cleanup.add(() => run(['ip', 'route', 'del', 'blackhole', blackhole, 'metric', metric]).catch(() => undefined), `blackhole ${blackhole}`);
  await run(['ip', 'route', 'add', 'blackhole', blackhole, 'metric', metric]);
  cleanup.add(() => run(['ip', 'link', 'del', bridge]).catch(() => undefined), `bridge ${bridge}`);
  await run(['ip', 'link', 'add', bridge, 'type', 'bridge']);
  const orchestratorIp = `10.${octet}.0.1`;
  await run(['ip', 'addr', 'add', `${orchestratorIp}/24`, 'dev', bridge]);
  await run(['ip', 'link', 'set', bridge, 'up']);
  const hosts: NamespaceHostNet[] = [];
  for (let i = 0; i < count; i++) {
    const ns = `${id}-h${i}`;
    const port = `${id}-h${i}r`;
    const ip = `10.${octet}.0.${10 + i}`;
    cleanup.add(() => run(['ip', 'netns', 'del', ns]).catch(() => undefined), `namespace ${ns}`);
    await run(['ip', 'netns', 'add', ns]);
    // Deleting the namespace deletes its end of the veth, and so the pair; this is for a half-made one.
    cleanup.add(() => run(['ip', 'link', 'del', port]).catch(() => undefined), `veth ${port}`);
    await run(['ip', 'link', 'add', port, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns]);
    await run(['ip', 'link', 'set', port, 'master', bridge, 'up']);
    await run(['ip', 'netns', 'exec', ns, 'ip', 'link', 'set', 'lo', 'up']);
    await run(['ip', 'netns', 'exec', ns, 'ip', 'addr', 'add', `${ip}/24`, 'dev', 'eth0']);
    await run(['ip', 'netns', 'exec', ns, 'ip', 'link', 'set', 'eth0', 'up']);
    hosts.push({ ns, ip, port });
  }
  return {
    orchestratorIp,
    hosts,
    partition: (h) => run(['ip', 'link', 'set', h.port, 'down']),
    heal: (h) => run(['ip', 'link', 'set', h.port, 'up']),
  };
}

function run(argv: string[]): Promise<void> {
  return new Promise<void>((resolve, reject) =>
    execFile(argv[0] as string, argv.slice(1), { timeout: 30_000 }, (err, _out, stderr) => (err ? reject(new Error(`${argv.join(' ')}: ${stderr || err.message}`)) : resolve())),
  );
}
