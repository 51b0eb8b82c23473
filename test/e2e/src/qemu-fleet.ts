// Real QEMU hosts of one area for whole-system HA tests (partition, drain): an orchestrator in this
// process, and per host a network namespace (ns-hosts.ts) running its own agent on a private
// libvirtd of its own (agent/testing private-libvirtd.ts: its own QEMU processes and virtlockd),
// every host mounting one shared dir pool that holds the test guest's template and the VMs' disks.
// The area, pool, template, workspace and one network `n` exist; everything is undone by `cleanup`.
import assert from 'node:assert/strict';
import { chmodSync, copyFileSync, existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createSharedDir, createTestNet, defineDirPool, ensureOvs, startPrivateLibvirtd, type PrivateLibvirtd } from '@kloudak/agent/testing';
import type { Libvirt } from '@kloudak/libvirt';
import type { Orchestrator, OrchestratorConfig } from '@kloudak/orchestrator';
import type { CleanupStack } from '@kloudak/testkit';
import { spawnAgentProcess, type AgentProcess } from './agent-process.js';
import { agentHostEnv, ApiClient } from './api-client.js';
import { createNamespaceFleet, type NamespaceFleet } from './ns-hosts.js';
import { GUEST } from './paths.js';
import { startTestOrchestrator } from './vm-harness.js';

/** One host of the fleet. */
export interface FleetHost {
  name: string;
  plv: PrivateLibvirtd;
  /** A connection to its private libvirtd (what the test reads to see what really runs). */
  lv: Libvirt;
  agent: AgentProcess;
  id: string;
}

/** How {@link startQemuFleet} names and sets up the fleet. */
export interface QemuFleetOptions {
  /** Prefix of every name (area, pool, hosts `<run>-<name>`, workspace `<run>-ws`); ≤ 8 characters. */
  run: string;
  /** Host names (suffixes). */
  names: readonly string[];
  /** ns-hosts.ts prefix and the second octet of the hosts' 10.x.0.0/24. */
  nsPrefix: string;
  octet: number;
  /** The fresh database's prefix. */
  dbPrefix: string;
  /** The area's subnet, gateway and VLAN range. */
  area: { subnet: string; gateway: string; vlanRange: string };
  admin: { username: string; password: string };
  /** On top of the e2e timings (startTestOrchestrator). */
  orchestrator?: Partial<OrchestratorConfig>;
  /** Extra agent settings of host `i` (environment). */
  agentEnv?: (i: number, h: { plv: PrivateLibvirtd; ip: string }) => Record<string, string>;
}

/** What {@link startQemuFleet} made. */
export interface QemuFleet {
  orch: Orchestrator;
  client: ApiClient;
  fleet: NamespaceFleet;
  hosts: FleetHost[];
  /** The shared pool's directory. */
  sharedDir: string;
  /** The template's name. */
  template: string;
}

/** Start the fleet (see the module comment). The test guest must have been built (scripts/build-test-guest.sh). */
export async function startQemuFleet(cleanup: CleanupStack, o: QemuFleetOptions): Promise<QemuFleet> {
  if (!existsSync(join(GUEST, 'template.qcow2'))) throw new Error(`test guest missing in ${GUEST}: run scripts/build-test-guest.sh`);
  const { run } = o;
  await ensureOvs();
  const fleet = await createNamespaceFleet(cleanup, o.nsPrefix, o.octet, o.names.length);
  const vmNet = await createTestNet('hv-');
  cleanup.add(() => vmNet.cleanup());
  const bridge = await vmNet.addBridge('br');
  const shared = createSharedDir(run);
  cleanup.add(() => shared.cleanup());
  copyFileSync(join(GUEST, 'template.qcow2'), join(shared.dir, 'testguest.qcow2'));
  chmodSync(join(shared.dir, 'testguest.qcow2'), 0o644);
  const orch = await startTestOrchestrator(cleanup, o.dbPrefix, o.admin, { agentHost: fleet.orchestratorIp, agentTlsNames: fleet.orchestratorIp, ...o.orchestrator });
  const client = new ApiClient(() => orch.url, `${run}-ws`);
  const api = (method: string, path: string, body?: unknown) => client.call(method, path, body);
  await client.login(o.admin);
  assert.equal((await api('POST', '/areas', { name: run, ...o.area })).status, 201);
  const pool = await api('POST', '/pools', { name: run, area: run, path: shared.dir, type: 'dir', shared: true });
  assert.equal(pool.status, 201, JSON.stringify(pool.body));
  const cmdline = readFileSync(join(GUEST, 'cmdline'), 'utf8').trim();
  const template = `${run}-guest`;
  const tpl = await api('POST', '/templates', {
    name: template,
    os: 'kloudak-test-guest',
    cpu: 1,
    ramMb: 128,
    diskGb: 1,
    image: 'testguest.qcow2',
    boot: { kernel: join(GUEST, 'vmlinuz'), initrd: join(GUEST, 'initrd.img'), cmdline },
  });
  assert.equal(tpl.status, 201, JSON.stringify(tpl.body));
  assert.equal((await api('POST', '/workspaces', { name: client.workspace })).status, 201);

  const hosts: FleetHost[] = [];
  for (const [i, n] of o.names.entries()) {
    const name = `${run}-${n}`;
    const plv = await startPrivateLibvirtd({ name });
    cleanup.add(() => plv.stop());
    const lv = await plv.connect();
    cleanup.add(() => lv.close());
    await defineDirPool(lv, run, shared.dir);
    const consoleDir = mkdtempSync(join(tmpdir(), `${run}-console-`));
    chmodSync(consoleDir, 0o755);
    cleanup.add(() => rmSync(consoleDir, { recursive: true, force: true }));
    const dataDir = mkdtempSync(join(tmpdir(), `${run}-agent-`));
    cleanup.add(() => rmSync(dataDir, { recursive: true, force: true }));
    const jt = await api('POST', '/hosts/join-tokens', { area: run, expiresIn: 600 });
    assert.equal(jt.status, 201, JSON.stringify(jt.body));
    const net = fleet.hosts[i]!;
    const agent = spawnAgentProcess(
      name,
      `${fleet.orchestratorIp}:${orch.agentPort}`,
      dataDir,
      {
        ...agentHostEnv(bridge),
        KLOUDAK_AGENT_JOIN_TOKEN: jt.body['token'],
        KLOUDAK_AGENT_LIBVIRT_URI: 'qemu:///system',
        KLOUDAK_AGENT_LIBVIRT_SOCKET: plv.socketPath,
        KLOUDAK_AGENT_QEMU_RUN_DIR: plv.qemuRunDir,
        KLOUDAK_AGENT_CONSOLE_DIR: consoleDir,
        KLOUDAK_AGENT_HEARTBEAT_MS: '250',
        ...o.agentEnv?.(i, { plv, ip: net.ip }),
      },
      net.ns,
    );
    cleanup.add(() => agent.kill());
    const id = await client.waitHostUp(name, () => agent.output());
    hosts.push({ name, plv, lv, agent, id });
  }
  const net = await api('POST', `/workspaces/${client.workspace}/networks`, { name: 'n', area: run });
  assert.equal(net.status, 202, JSON.stringify(net.body));
  await client.succeeded(net.body['task']['id']);
  return { orch, client, fleet, hosts, sharedDir: shared.dir, template };
}
