// failover.bench — from a host's death to all its HA VMs running on the other hosts of the area
// (issue 11: "p50 and max over 10 runs, printed beside the configured lease and margin, with 3
// hosts and 30 HA VMs; target ≤ 30 s with the default settings").
//
// The system is the one test/e2e/src/failover.e2e.test.ts drives, at the DEFAULT settings: an
// orchestrator in this process (PostgreSQL, NATS, REST, task engine, agent link; heartbeat, lease,
// margin, liveness tick and task timings all left at their defaults) and three hosts, each a
// network namespace with its own real agent process (agent/dist/main.js) on its own simulated host
// (libvirt's test driver through libvirtd), in one area. Each agent reaches the orchestrator's
// agent port only over its namespace's veth into a bridge (@kloudak/e2e/ns-hosts, 10.239.0.0/24
// behind a root-namespace blackhole route), so the partition run can cut it.
//
// THE SHARED POOL, as in failover.e2e: a test-driver host's pool is private to its agent's
// connection, so once the VMs exist on the host that will die, the two others are restarted with
// node files holding those VMs' root volumes, as a shared pool would show them. A recover never
// clones a disk (it fails with NOT_FOUND when the volume is missing), so a run that succeeds
// started every VM from "the shared disk".
//
// One run (victim V = the hosts in turn, survivors S1 and S2):
//   1. S1 and S2 in maintenance; 30 HA VMs created through the API (all land on V); S1 and S2
//      restarted with the shared volumes and taken out of maintenance (untimed).
//   2. Baseline: the restart's floor through the same agents, without failover — the 30 recover
//      commands the vm.recover tasks send (createVm from the existing root volume, started), sent
//      at once through the orchestrator's agent channel, half to each survivor, until each
//      survivor's inventory shows its 15 domains running; then evicted again (untimed).
//   3. V's agent is SIGKILLed (its test-driver domains die with its libvirt connection). The clock
//      runs from the kill until the API shows all 30 VMs `running` on S1/S2 (polled every
//      BENCH_POLL_MS) AND both survivors' own inventories (asked through their agents) show each
//      VM's domain running on the host the API names. Split: detection = kill → V's host-down
//      event (outbox row); restart = host-down → confirmed.
//   4. V restarts (a host that comes back: nothing of it remains to evict); the 30 VMs are deleted.
//
// Figures: failover p50/max over the runs beside lease and margin; detection and restart; the
// baseline; ratio = (failover − lease − margin) / baseline, i.e. what the detection's slack
// (kill → next liveness tick past lease + margin; the last grant came up to one heartbeat before
// the kill, so this may be negative) plus the restart cost, against the bare restart work; and
// the target check (p50 and max ≤ 30 s).
//
// Then one PARTITION run (BENCH_PARTITION=0 skips it): V's veth is set down instead of killing V
// (every packet between V and the orchestrator is lost; neither end sees a reset), so V's agent
// keeps running, loses its lease and fences its 30 HA domains itself. From V's log: when
// its lease ended (its own monotonic clock), when the fence started and when it finished — the
// fence duration and the slack left before the orchestrator declared V down (must be > 0: the
// margin's purpose). Then the veth is set up again; V comes back and its fenced domains are evicted.
//
// Environment:
//   BENCH_RUNS       failover runs (default 10)
//   BENCH_VMS        HA VMs on the host that dies (default 30)
//   BENCH_POLL_MS    how often the API is polled during a failover (default 100)
//   BENCH_PARTITION  0: skip the partition run (default 1)
//   BENCH_LOG_LEVEL  the orchestrator's log level, on stdout (default error)
//   KLOUDAK_TEST_PG_URL, KLOUDAK_TEST_NATS_URL  (@kloudak/testkit's defaults)
//
// Needs PostgreSQL, NATS, libvirtd and Open vSwitch running (scripts/bench.sh starts them) and a
// built agent (agent/dist/main.js). Takes about 10 minutes.
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { rootVolumeName } from '@kloudak/agent';
import { createSimHost, ensureOvs } from '@kloudak/agent/testing';
import { AGENT_MAIN, spawnAgentProcess, type AgentProcess } from '@kloudak/e2e/agent-process';
import { agentHostEnv, ApiClient, jsonLines, must, type Json } from '@kloudak/e2e/api-client';
import { createNamespaceFleet, type NamespaceFleet, type NamespaceHostNet } from '@kloudak/e2e/ns-hosts';
import { createNetwork, hostInventory, joinToken, setUpSimArea, startInProcessOrchestrator } from '@kloudak/e2e/vm-harness';
import { ensureLibvirtd } from '@kloudak/libvirt/testing';
import type { CommandAction, Orchestrator } from '@kloudak/orchestrator';
import { benchCleanup, envNumber, machine, machineBusyPct, onCleanup, progress, quantile, runBench, runCleanups, table, writeResults } from './harness.js';

const RUN = `kf${randomBytes(3).toString('hex')}`;
const RUNS = Math.round(envNumber('BENCH_RUNS', 10));
const VMS = Math.round(envNumber('BENCH_VMS', 30));
const POLL_MS = envNumber('BENCH_POLL_MS', 100);
const PARTITION = process.env['BENCH_PARTITION'] !== '0';
/** The orchestrator's log level (its log goes to stdout, with the figures): errors only unless asked. */
const LOG_LEVEL = (process.env['BENCH_LOG_LEVEL'] ?? 'error') as 'error' | 'warn' | 'info' | 'debug';
const TARGET_MS = 30_000;
const ADMIN = { username: 'root-admin', password: 'Bench-Failover-Pass-2026!' };
const WS = `${RUN}-ws`;
const TEMPLATE_IMAGE = 'template.qcow2';
const SUBNET = '10.247.0';
const VM_RAM_MB = 128;
const VM_DISK_GB = 1;
/** Each simulated host: room for all the VMs (cpu overcommit 4 by default). */
const HOST_SHAPE = { cpus: 16, memoryMb: 8192 };

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const fmt = (ms: number) => (Number.isFinite(ms) ? (ms / 1000).toFixed(2) : '-');
const at = (s: unknown) => (typeof s === 'string' ? Date.parse(s) : s instanceof Date ? s.getTime() : NaN);

/** One simulated host: its node-file dir, its agent's identity dir, its network namespace, its agent now. */
interface SimAgent {
  name: string;
  dir: string;
  dataDir: string;
  net: NamespaceHostNet;
  agent: AgentProcess | null;
  id: string;
}

/** One failover, in ms. */
interface Run {
  run: number;
  victim: string;
  mode: 'kill' | 'partition';
  /** Kill (or cut) → all VMs running elsewhere, confirmed by the survivors' inventories. */
  failoverMs: number;
  /** Kill → the host-down event. */
  detectionMs: number;
  /** Host-down event → confirmed. */
  restartMs: number;
  /** Kill → the API first showed all VMs running elsewhere (before the inventories were read). */
  apiRunningMs: number;
  /** The last lease grant before the kill, relative to the kill (negative: before). */
  lastGrantMs: number;
  /** Host-down event − (last grant + lease + margin): how late the liveness tick saw it. */
  downLateMs: number;
  /** Host-down → the first / last vm.recover task finished. */
  firstRecoveredMs: number;
  lastRecoveredMs: number;
  /** Host-down → the first and the last vm.recover task started. */
  tasksStartedMs: [number, number];
  /** The tasks' `recover` step (the agent's define + start through the link): p50 and max. */
  recoverStepMs: { p50: number; max: number };
  /** Attempts of vm.recover steps past the first, over the run's tasks. */
  recoverRetries: number;
  /** VMs restarted on each survivor. */
  placed: Record<string, number>;
  /** The restart's floor through the same agents (ms; the second round), none for the partition run. */
  baselineMs: number;
  /** The first round of it, on the just-restarted survivor agents (not the baseline). */
  baselineColdMs: number;
  load1: number;
  /** Partition run only: V's fence, from its log (ms, wall clock of the same machine). */
  fence?: { leaseEndMs: number; startedLateMs: number; durationMs: number; destroyed: number; slackBeforeDownMs: number };
}

async function main(): Promise<number> {
  const started = new Date();
  const busyBefore = await machineBusyPct();
  if (busyBefore > 25) progress(`warning: the machine is already ${busyBefore}% of a core busy before the bench starts; figures will be noisy`);
  if (!existsSync(AGENT_MAIN)) throw new Error(`${AGENT_MAIN} missing: build first (npx tsc -b)`);
  const runs: Run[] = [];
  try {
    await ensureLibvirtd();
    await ensureOvs();
    // The hosts' namespaces, around the address the orchestrator's agent link listens on.
    const fleet: NamespaceFleet = await createNamespaceFleet(benchCleanup, 'kfb', 239, 3);
    // The defaults: no timing is overridden (heartbeat, lease, margin, liveness tick, task engine);
    // only the log level (errors only by default: its warnings would mix with the figures on stdout)
    // and where the agent link listens (the fleet bridge's address, named by its certificate).
    const orch: Orchestrator = await startInProcessOrchestrator(benchCleanup, 'kloudak_bench_failover', ADMIN, {
      logLevel: LOG_LEVEL,
      agentHost: fleet.orchestratorIp,
      agentTlsNames: fleet.orchestratorIp,
    });
    const LEASE_MS = orch.services.config.agentLeaseMs;
    const MARGIN_MS = orch.services.config.agentDownMarginMs;
    const HEARTBEAT_MS = orch.services.config.heartbeatIntervalMs;
    const client = new ApiClient(() => orch.url, WS);
    const api = (method: string, path: string, body?: unknown) => client.call(method, path, body);
    await client.login(ADMIN);

    const { bridge } = await setUpSimArea(benchCleanup, client, {
      name: RUN,
      subnetBase: SUBNET,
      vlanRange: '440-441',
      workspaces: [WS],
      netPrefix: 'kf-',
      poolPath: '/srv/shared',
      template: { ramMb: VM_RAM_MB, diskGb: VM_DISK_GB, image: TEMPLATE_IMAGE },
    });

    // ---- the three hosts ----
    const hosts: SimAgent[] = [];
    for (const [i, n] of ['a', 'b', 'c'].entries()) {
      const dir = mkdtempSync(join(tmpdir(), `${RUN}-sim-`));
      const dataDir = mkdtempSync(join(tmpdir(), `${RUN}-agent-`));
      onCleanup(`remove ${dir} and ${dataDir}`, () => {
        rmSync(dir, { recursive: true, force: true });
        rmSync(dataDir, { recursive: true, force: true });
      });
      const h: SimAgent = { name: `${RUN}-${n}`, dir, dataDir, net: fleet.hosts[i]!, agent: null, id: '' };
      onCleanup(`stop the agent of ${h.name}`, () => h.agent?.kill());
      hosts.push(h);
    }

    /** (Re)start a host's agent on a fresh node file holding `volumes` (root volumes of these VM ids); wait until it is up. */
    const startAgent = async (h: SimAgent, vmIds: readonly string[] = []): Promise<void> => {
      await h.agent?.stop(10_000);
      const sim = createSimHost({ dir: h.dir, ...HOST_SHAPE, poolName: RUN, volumes: vmIds.map((id) => ({ name: rootVolumeName(id), capacityGb: VM_DISK_GB })) });
      const env: Record<string, string> = { ...agentHostEnv(bridge), KLOUDAK_AGENT_LIBVIRT_URI: sim.uri, KLOUDAK_AGENT_CONSOLE_DIR: h.dir, KLOUDAK_AGENT_LOG_LEVEL: 'warn' };
      if (!h.id) env['KLOUDAK_AGENT_JOIN_TOKEN'] = await joinToken(client, RUN);
      h.agent = spawnAgentProcess(h.name, `${fleet.orchestratorIp}:${orch.agentPort}`, h.dataDir, env, h.net.ns);
      const agent = h.agent;
      h.id = await client.waitHostUp(h.name, () => agent.output(), 60_000);
    };
    const maintenance = async (h: SimAgent, on: boolean) => {
      const b = await must(`maintenance ${h.name}`, 200, api('PATCH', `/hosts/${h.id}`, { maintenance: on }));
      if (b['adminState'] !== (on ? 'maintenance' : 'active')) throw new Error(`${h.name}: adminState ${b['adminState']}`);
    };
    for (const h of hosts) await startAgent(h);

    await createNetwork(client, 'front', RUN);
    const network = await must('network', 200, api('GET', `/workspaces/${WS}/networks/front`));

    const listVms = async (): Promise<Json[]> => (await must('list VMs', 200, api('GET', `/workspaces/${WS}/vms?limit=1000`)))['items'] as Json[];

    /** Every VM's domain runs on the host the API names, per that host's agent; false otherwise. */
    const confirmedOnHosts = async (vms: readonly Json[], byName: Map<string, SimAgent>): Promise<boolean> => {
      const running = new Map<string, Set<string>>();
      for (const h of new Set(vms.map((v) => byName.get(v['host'] as string)))) {
        if (!h) return false;
        running.set(h.name, new Set((await hostInventory(orch, h.id)).domains.filter((d) => d.state === 'running').map((d) => d.vmId.toLowerCase())));
      }
      return vms.every((v) => running.get(v['host'] as string)?.has((v['id'] as string).toLowerCase()));
    };

    /** The 30 HA VMs of run `r`, all on `victim` (the others in maintenance meanwhile). */
    const createVms = async (r: number, victim: SimAgent, survivors: SimAgent[]): Promise<Json[]> => {
      for (const s of survivors) await maintenance(s, true);
      const tasks: string[] = [];
      for (let i = 0; i < VMS; i++) {
        const b = await must('create VM', 202, api('POST', `/workspaces/${WS}/vms`, { name: `r${r}-vm${i}`, template: `${RUN}-tpl`, networks: ['front'], ha: true }));
        if (b['vm']['host'] !== victim.name) throw new Error(`r${r}-vm${i} placed on ${b['vm']['host']}, not ${victim.name}`);
        tasks.push(b['task']['id'] as string);
      }
      for (const t of tasks) await client.succeeded(t, 120_000);
      const vms = await listVms();
      if (vms.length !== VMS) throw new Error(`${vms.length} VMs in the workspace, expected ${VMS}`);
      if (!(await confirmedOnHosts(vms, new Map([[victim.name, victim]])))) throw new Error(`the VMs do not all run on ${victim.name}`);
      // The survivors see the shared pool: restarted with the VMs' root volumes (see the header).
      for (const s of survivors) await startAgent(s, vms.map((v) => v['id'] as string));
      for (const s of survivors) await maintenance(s, false);
      return vms;
    };

    /** The baseline: the same recover commands straight through the agent channel, half to each survivor. */
    /** Recover commands of the baseline sent again after a failure, with why. */
    const baselineRetries: string[] = [];
    const baseline = async (vms: readonly Json[], survivors: SimAgent[]): Promise<{ cold: number; warm: number }> => {
      const gateway = network['gateway'] as string;
      const command = (v: Json): CommandAction => ({
        kind: 'createVm',
        hostname: v['name'] as string,
        cpu: v['cpu'] as number,
        ramMb: v['ramMb'] as number,
        diskGb: v['diskGb'] as number,
        pool: RUN,
        templateVolume: TEMPLATE_IMAGE,
        nics: (v['interfaces'] as Json[]).map((i) => ({
          networkId: network['id'] as string,
          mac: i['mac'] as string,
          bridge: '',
          vlan: i['vlan'] as number,
          address: `${i['ip'] as string}/24`,
          gateway,
          dnsServers: [],
        })),
        sshAuthorizedKeys: [],
        passwordHash: '',
        ha: true,
        recover: { start: true },
      });
      const where = (i: number) => survivors[i % survivors.length]!;
      const byName = new Map(survivors.map((s) => [s.name, s]));
      const placed = vms.map((v, i) => ({ ...v, host: where(i).name }));
      const once = async (): Promise<number> => {
        const t0 = performance.now();
        // A failed command is sent again at once, at most twice (the recover task's step would be
        // retried too, after a backoff): under load xorriso, which builds the seed ISO, was seen
        // to die of SIGSEGV now and then.
        await Promise.all(
          vms.map(async (v, i) => {
            for (let attempt = 1; ; attempt++) {
              const r = await orch.agents.sendCommand(where(i).id, { vmId: v['id'] as string, action: command(v) }, { deadline: Date.now() + 60_000 });
              if (r.ok) return;
              if (attempt === 3) throw new Error(`baseline: the recover of ${v['name']} failed ${attempt} times: ${JSON.stringify(r.error)}`);
              baselineRetries.push(`${v['name']}: ${r.error?.message ?? r.error?.code}`.slice(0, 300));
            }
          }),
        );
        while (!(await confirmedOnHosts(placed, byName))) {
          if (performance.now() - t0 > 60_000) throw new Error('baseline: the domains never all ran');
          await sleep(POLL_MS);
        }
        const ms = performance.now() - t0;
        // Untimed: off the survivors again (volumes kept: they are the VMs' disks).
        const evicted = await Promise.all(vms.map((v, i) => orch.agents.sendCommand(where(i).id, { vmId: v['id'] as string, action: { kind: 'evictVm', bridges: [] } }, { deadline: Date.now() + 60_000 })));
        if (evicted.some((x) => !x.ok)) throw new Error(`baseline: evict failed: ${JSON.stringify(evicted.find((x) => !x.ok)?.error)}`);
        for (const s of survivors) {
          const left = (await hostInventory(orch, s.id)).domains;
          if (left.length > 0) throw new Error(`baseline: ${left.length} domains left on ${s.name}`);
        }
        return ms;
      };
      // A first round, not the baseline: the survivors' agents were just restarted, and the first
      // recovers of a fresh agent process cost more; by the failover they have done this round,
      // so the second one compares like with like. The first is kept in the results (`baselineColdMs`).
      const cold = await once();
      return { cold, warm: await once() };
    };

    /** Until all `vms` run on the survivors per the API and their inventories; the kill → API / confirmed times. */
    const waitRecovered = async (vms: readonly Json[], survivors: SimAgent[], t0: number): Promise<{ apiMs: number; confirmedMs: number; now: Json[] }> => {
      const byName = new Map(survivors.map((s) => [s.name, s]));
      const ids = new Set(vms.map((v) => v['id'] as string));
      let apiMs = NaN;
      for (;;) {
        const now = (await listVms()).filter((v) => ids.has(v['id'] as string));
        const allRunning = now.length === ids.size && now.every((v) => v['state'] === 'running' && byName.has(v['host'] as string));
        if (allRunning) {
          if (Number.isNaN(apiMs)) apiMs = performance.now() - t0;
          if (await confirmedOnHosts(now, byName)) return { apiMs, confirmedMs: performance.now() - t0, now };
        }
        if (performance.now() - t0 > 180_000) {
          const states = now.reduce<Record<string, number>>((a, v) => ({ ...a, [`${v['state']}@${v['host']}`]: (a[`${v['state']}@${v['host']}`] ?? 0) + 1 }), {});
          throw new Error(`the VMs were not all running elsewhere 180 s after the host's death: ${JSON.stringify(states)}`);
        }
        await sleep(POLL_MS);
      }
    };

    /** The host-down event of `victim` after `sinceWall`, with its evidence. */
    const downEvent = async (victim: SimAgent, sinceWall: number) => {
      const e = await orch.db.client.outboxEvent.findFirst({
        where: { entity: 'host', entityId: victim.id, event: 'state', state: 'down', time: { gte: new Date(sinceWall - 1000) } },
        orderBy: { seq: 'desc' },
      });
      if (!e) throw new Error(`no host-down event for ${victim.name}`);
      const ev = ((e.payload as Json)['evidence'] ?? {}) as Json;
      if (ev['leaseMs'] !== LEASE_MS || ev['downMarginMs'] !== MARGIN_MS) throw new Error(`host-down evidence: ${JSON.stringify(ev)}`);
      return { atWall: e.time.getTime(), lastGrantWall: at(ev['lastLeaseGrantedAt']) };
    };

    /** When the vm.recover tasks of `vms` finished (wall ms): first and last. */
    const recoverTimes = async (vms: readonly Json[]) => {
      const tasks = await orch.db.client.task.findMany({ where: { kind: 'vm.recover', targetId: { in: vms.map((v) => v['id'] as string) } }, include: { steps: true } });
      if (tasks.length !== vms.length || tasks.some((t) => t.state !== 'succeeded')) throw new Error(`vm.recover tasks: ${tasks.map((t) => t.state).join(', ')}`);
      const done = tasks.map((t) => t.finishedAt?.getTime() ?? NaN);
      // Step attempts past the first (a retried recover: its backoff is in the figure).
      const retries = tasks.reduce((a, t) => a + t.steps.reduce((b, st) => b + Math.max(0, st.attempts - 1), 0), 0);
      // Where the restart goes: when the tasks started, and how long their `recover` step (the
      // agent's define + start, through the link) took.
      const startedAt = Float64Array.from(tasks.map((t) => t.startedAt?.getTime() ?? NaN)).sort();
      const recoverStep = Float64Array.from(
        tasks.map((t) => {
          const st = t.steps.find((x) => x.name === 'recover');
          return (st?.finishedAt?.getTime() ?? NaN) - (st?.startedAt?.getTime() ?? NaN);
        }),
      ).sort();
      return {
        first: Math.min(...done),
        last: Math.max(...done),
        retries,
        firstStarted: startedAt[0] ?? NaN,
        lastStarted: startedAt[startedAt.length - 1] ?? NaN,
        recoverStepP50: quantile(recoverStep, 0.5),
        recoverStepMax: recoverStep[recoverStep.length - 1] ?? NaN,
      };
    };

    /** After a run: the victim comes back (nothing to evict when it was killed), the VMs are deleted everywhere. */
    const endRun = async (victim: SimAgent, survivors: SimAgent[], vms: readonly Json[], restart: boolean) => {
      if (restart) await startAgent(victim);
      else await client.waitHostUp(victim.name, () => victim.agent?.output() ?? '', 60_000);
      const left = (await hostInventory(orch, victim.id)).domains;
      if (left.length > 0) throw new Error(`${victim.name} came back with ${left.length} domains still defined`);
      const tasks: string[] = [];
      for (const v of vms) tasks.push((await must('delete VM', 202, api('DELETE', `/workspaces/${WS}/vms/${v['name'] as string}`)))['task']['id'] as string);
      for (const t of tasks) await client.succeeded(t, 120_000);
      for (const s of [victim, ...survivors]) {
        const d = (await hostInventory(orch, s.id)).domains;
        if (d.length > 0) throw new Error(`${d.length} domains left on ${s.name} after the deletes`);
      }
    };

    progress(
      `run ${RUN}: 3 simulated hosts (agent processes in network namespaces), ${VMS} HA VMs, ${RUNS} runs${PARTITION ? ' + 1 partition run' : ''}; ` +
        `heartbeat ${HEARTBEAT_MS} ms, lease ${LEASE_MS} ms, margin ${MARGIN_MS} ms (defaults); load ${loadavg().map((x) => x.toFixed(2)).join(' ')}`,
    );

    const total = RUNS + (PARTITION ? 1 : 0);
    for (let r = 0; r < total; r++) {
      const mode: Run['mode'] = r < RUNS ? 'kill' : 'partition';
      const victim = hosts[r % hosts.length]!;
      const survivors = hosts.filter((h) => h !== victim);
      const vms = await createVms(r, victim, survivors);
      const base = mode === 'kill' ? await baseline(vms, survivors) : { cold: NaN, warm: NaN };
      // A little past a heartbeat, like any moment: the kill lands anywhere in the heartbeat period.
      await sleep(Math.random() * HEARTBEAT_MS);
      const load1 = loadavg()[0] ?? NaN;
      const logBefore = victim.agent!.output().length;
      const killWall = Date.now();
      const t0 = performance.now();
      if (mode === 'kill') await victim.agent!.kill();
      else await fleet.partition(victim.net);
      const { apiMs, confirmedMs, now } = await waitRecovered(vms, survivors, t0);
      const down = await downEvent(victim, killWall);
      const rec = await recoverTimes(vms);
      const placed: Record<string, number> = {};
      for (const v of now) placed[v['host'] as string] = (placed[v['host'] as string] ?? 0) + 1;
      for (const v of now) {
        const before = vms.find((x) => x['id'] === v['id'])!;
        if (JSON.stringify(v['interfaces']) !== JSON.stringify(before['interfaces'])) throw new Error(`${v['name']} changed its interfaces`);
      }
      const detectionMs = down.atWall - killWall;
      const run: Run = {
        run: r,
        victim: victim.name,
        mode,
        failoverMs: confirmedMs,
        detectionMs,
        restartMs: confirmedMs - detectionMs,
        apiRunningMs: apiMs,
        lastGrantMs: down.lastGrantWall - killWall,
        downLateMs: down.atWall - (down.lastGrantWall + LEASE_MS + MARGIN_MS),
        firstRecoveredMs: rec.first - down.atWall,
        lastRecoveredMs: rec.last - down.atWall,
        recoverRetries: rec.retries,
        tasksStartedMs: [rec.firstStarted - down.atWall, rec.lastStarted - down.atWall],
        recoverStepMs: { p50: rec.recoverStepP50, max: rec.recoverStepMax },
        placed,
        baselineMs: base.warm,
        baselineColdMs: base.cold,
        load1,
      };
      if (mode === 'partition') {
        // V's own account of its fence (AGENT-LINK.md, "Self-fencing"), from its log since the cut.
        const lines = jsonLines(victim.agent!.output().slice(logBefore));
        const start = lines.find((l) => l['msg'] === 'lease expired: fencing HA domains');
        const done = lines.find((l) => l['msg'] === 'fencing done');
        if (!start || !done) throw new Error(`${victim.name} logged no complete fence:\n${victim.agent!.output().slice(logBefore).slice(-3000)}`);
        const leaseEnd = at(start['lease_expired_at']);
        run.fence = {
          leaseEndMs: leaseEnd - killWall,
          startedLateMs: at(start['time']) - leaseEnd,
          durationMs: at(done['time']) - leaseEnd,
          destroyed: Number(done['destroyed']),
          slackBeforeDownMs: down.atWall - at(done['time']),
        };
        if (run.fence.destroyed !== VMS) throw new Error(`${victim.name} fenced ${run.fence.destroyed} domains, not ${VMS}`);
        if (run.fence.slackBeforeDownMs <= 0) throw new Error(`${victim.name} finished fencing ${-run.fence.slackBeforeDownMs} ms AFTER it was declared down`);
        await fleet.heal(victim.net);
      }
      runs.push(run);
      progress(
        `${mode} ${r + 1}/${total} (${victim.name}): failover ${fmt(run.failoverMs)} s = detection ${fmt(detectionMs)} + restart ${fmt(run.restartMs)}; ` +
          `tasks started ${fmt(run.tasksStartedMs[0])}..${fmt(run.tasksStartedMs[1])} s after down, recover step p50 ${Math.round(run.recoverStepMs.p50)} ms max ${Math.round(run.recoverStepMs.max)} ms; ` +
          `baseline ${fmt(base.warm)} s (first round ${fmt(base.cold)} s); placed ${JSON.stringify(placed)}; load ${load1.toFixed(2)}` +
          (run.fence ? `; fence ${run.fence.durationMs} ms after the lease ended, ${fmt(run.fence.slackBeforeDownMs)} s before down` : ''),
      );
      await endRun(victim, survivors, vms, mode === 'kill');
    }

    // ---- figures ----
    const kills = runs.filter((r) => r.mode === 'kill');
    const sorted = (f: (r: Run) => number, of = kills) => Float64Array.from(of.map(f)).sort();
    const stat = (f: (r: Run) => number, of = kills) => {
      const s = sorted(f, of);
      return { p50: quantile(s, 0.5), max: s[s.length - 1] ?? NaN, min: s[0] ?? NaN, mean: s.reduce((a, b) => a + b, 0) / Math.max(1, s.length) };
    };
    const failover = stat((r) => r.failoverMs);
    const detection = stat((r) => r.detectionMs);
    const restart = stat((r) => r.restartMs);
    const base = stat((r) => r.baselineMs);
    const ratio = (failover.p50 - LEASE_MS - MARGIN_MS) / base.p50;
    const met = failover.max <= TARGET_MS;
    const rows: (string | number)[][] = [['run', 'mode', 'victim', 'failover s', 'detection s', 'restart s', 'API saw s', 'last grant s', 'down late ms', 'recovered s (first..last)', 'retries', 'baseline s', 'load1']];
    for (const r of runs) {
      rows.push([
        r.run + 1,
        r.mode,
        r.victim.slice(-1),
        fmt(r.failoverMs),
        fmt(r.detectionMs),
        fmt(r.restartMs),
        fmt(r.apiRunningMs),
        fmt(r.lastGrantMs),
        Math.round(r.downLateMs),
        `${fmt(r.firstRecoveredMs)}..${fmt(r.lastRecoveredMs)}`,
        r.recoverRetries,
        fmt(r.baselineMs),
        r.load1.toFixed(2),
      ]);
    }
    console.log(`\nfailover — ${VMS} HA VMs on 1 of 3 simulated hosts (real agent processes in network namespaces, libvirt test driver), default settings: heartbeat ${HEARTBEAT_MS} ms, lease ${LEASE_MS} ms, margin ${MARGIN_MS} ms\n`);
    console.log(table(rows));
    console.log('');
    console.log(
      table([
        ['over the kill runs', 'n', 'p50 s', 'max s', 'min s', 'mean s'],
        ['failover (kill → all running elsewhere, confirmed)', kills.length, fmt(failover.p50), fmt(failover.max), fmt(failover.min), fmt(failover.mean)],
        ['  detection (kill → host down)', kills.length, fmt(detection.p50), fmt(detection.max), fmt(detection.min), fmt(detection.mean)],
        ['  restart (host down → all running, confirmed)', kills.length, fmt(restart.p50), fmt(restart.max), fmt(restart.min), fmt(restart.mean)],
        ['    host down → last vm.recover task started', kills.length, ...[stat((r) => r.tasksStartedMs[1])].flatMap((x) => [fmt(x.p50), fmt(x.max), fmt(x.min), fmt(x.mean)])],
        ['    a task\'s recover step (p50 of each run)', kills.length, ...[stat((r) => r.recoverStepMs.p50)].flatMap((x) => [fmt(x.p50), fmt(x.max), fmt(x.min), fmt(x.mean)])],
        ['baseline: the same recovers straight to the agents', kills.length, fmt(base.p50), fmt(base.max), fmt(base.min), fmt(base.mean)],
        ['lease + margin (the wait before any restart)', '', fmt(LEASE_MS + MARGIN_MS), '', '', ''],
      ]),
    );
    console.log(`\nratio (failover p50 − lease − margin) / baseline p50: ${ratio.toFixed(1)}x   (${fmt(failover.p50 - LEASE_MS - MARGIN_MS)} s / ${fmt(base.p50)} s)`);
    if (baselineRetries.length > 0) console.log(`baseline: ${baselineRetries.length} recover command(s) sent again after a failure (see the results file)`);
    console.log(`target: failover ≤ ${TARGET_MS / 1000} s — p50 ${fmt(failover.p50)} s, max ${fmt(failover.max)} s: ${met ? 'MET' : 'NOT MET'}`);
    const part = runs.find((r) => r.mode === 'partition');
    if (part?.fence) {
      console.log(
        `partition run: cut → all running elsewhere ${fmt(part.failoverMs)} s (detection ${fmt(part.detectionMs)} s); the cut host's lease ended ${fmt(part.fence.leaseEndMs)} s after the cut, ` +
          `its fence started ${part.fence.startedLateMs} ms later and destroyed ${part.fence.destroyed} HA domains ${part.fence.durationMs} ms after the lease ended, ` +
          `${fmt(part.fence.slackBeforeDownMs)} s before the orchestrator declared the host down`,
      );
    }
    const file = writeResults('failover', started, {
      run: RUN,
      settings: { runs: RUNS, vms: VMS, pollMs: POLL_MS, partition: PARTITION, heartbeatMs: HEARTBEAT_MS, leaseMs: LEASE_MS, marginMs: MARGIN_MS, targetMs: TARGET_MS, hostShape: HOST_SHAPE, vmRamMb: VM_RAM_MB },
      machine: { ...machine(), busyPctBefore: busyBefore, loadavgAtEnd: loadavg() },
      summary: { failover, detection, restart, baseline: base, ratio, targetMet: met },
      baselineRetries,
      runs,
    });
    progress(`results: ${file}`);
    return 0;
  } finally {
    await runCleanups();
  }
}

runBench('failover', main);
