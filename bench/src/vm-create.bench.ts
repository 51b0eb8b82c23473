// vm-create.bench — POST /workspaces/{ws}/vms to "running" through the whole of Kloudak (REST,
// claims transaction, task engine, agent link, a real agent process, libvirt on qemu:///system
// with QEMU TCG and Open vSwitch), against the same host work done directly through libvirt.
//
// Kloudak: the clock starts before the POST and stops when a GET of the VM's create task (polled
// every BENCH_POLL_MS) says `succeeded` — the VM is `running` in the API. Baseline, in the same run
// on the same pool, bridge and template: DirectHostWork (./direct-host.ts, the baseline of
// host-ops.bench) makes the same root overlay, seed ISO and volume, defines the same domain XML
// (the agent's domainXml for the same sizes, boot files, NIC VLAN and host settings) and starts
// it, then asks libvirt for the domain's state until it is running (the same poll interval). So
// the ratio is what the orchestrator, its task engine and the agent cost on top of the host work.
//
// Iterations interleave the paths (K,B then B,K, …); each creates one VM and deletes it
// (Kloudak's through the API, the baseline's directly), untimed, before the next; only one VM
// exists at a time. After each create the domain must run (checked through libvirt); after each
// delete no domain or volume of it may remain.
//
// Environment:
//   BENCH_ITERATIONS        measured creates per path (default 20)
//   BENCH_WARMUP            unmeasured creates per path first (default 2)
//   BENCH_POLL_MS           how often both paths look whether the VM runs (default 10)
//   KLOUDAK_TEST_PG_URL     PostgreSQL for the fresh database (@kloudak/testkit's default)
//   KLOUDAK_TEST_GUEST_DIR  test guest (default <repo>/.cache/test-guest; built when missing)
//
// Needs PostgreSQL, NATS, libvirtd and Open vSwitch running (scripts/bench.sh starts them) and a
// built agent (agent/dist/main.js).
import { randomBytes, randomUUID } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { DEFAULT_HOST_SETTINGS, IsoSeedBuilder, ProcessRunner, domainName, domainXml, rootVolumeName, seedFiles, seedVolumeName, type HostSettings, type VmSpec } from '@kloudak/agent';
import { AGENT_MAIN, startAgentProcess } from '@kloudak/e2e/agent-process';
import { agentHostEnv, ApiClient, must, type Json } from '@kloudak/e2e/api-client';
import { GUEST, QEMU_URI as URI } from '@kloudak/e2e/paths';
import { removeDomains, setUpQemuHost, testGuestImage } from '@kloudak/e2e/qemu-host';
import { startInProcessOrchestrator } from '@kloudak/e2e/vm-harness';
import { DomainState, NotFoundError } from '@kloudak/libvirt';
import { DirectHostWork } from './direct-host.js';
import { benchCleanup, ensureTestGuest, envNumber, machine, machineBusyPct, onCleanup, progress, quantile, runBench, runCleanups, table, writeResults } from './harness.js';

const RUN = `kc${randomBytes(4).toString('hex')}`;
const TEMPLATE = 'testguest.qcow2';
const SUBNET = '10.246.0';
const ITERATIONS = Math.round(envNumber('BENCH_ITERATIONS', 20));
const WARMUP = Math.round(envNumber('BENCH_WARMUP', 2));
const POLL_MS = envNumber('BENCH_POLL_MS', 10);
const ADMIN = { username: 'root-admin', password: 'Bench-Vm-Create-Pass-2026!' };
const WS = `${RUN}-ws`;

type Path = 'kloudak' | 'baseline';

/** One timed create: wall time to running, and where a Kloudak create spent it (ms). */
interface Sample {
  iteration: number;
  ms: number;
  /** Kloudak: POST answered, task queued→claimed, each step, last step→task finished, finished→seen by the poll. */
  parts: Record<string, number>;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const fmt = (n: number, d = 1) => (Number.isFinite(n) ? n.toFixed(d) : '-');

function summarize(samples: readonly Sample[]) {
  const sorted = Float64Array.from(samples.map((s) => s.ms)).sort();
  const parts: Record<string, number> = {};
  for (const s of samples) for (const [k, v] of Object.entries(s.parts)) parts[k] = (parts[k] ?? 0) + v / samples.length;
  return {
    n: samples.length,
    p50: quantile(sorted, 0.5),
    p95: quantile(sorted, 0.95),
    mean: samples.reduce((a, s) => a + s.ms, 0) / Math.max(1, samples.length),
    min: sorted[0] ?? NaN,
    max: sorted[sorted.length - 1] ?? NaN,
    partsMean: parts,
  };
}

async function main(): Promise<number> {
  const started = new Date();
  const busyBefore = await machineBusyPct();
  if (busyBefore > 25) progress(`warning: the machine is already ${busyBefore}% of a core busy before the bench starts; figures will be noisy`);
  const samples: Record<Path, Sample[]> = { kloudak: [], baseline: [] };
  const deleteMs: Record<Path, number[]> = { kloudak: [], baseline: [] };
  try {
    ensureTestGuest(['template.qcow2', 'vmlinuz']);
    if (!existsSync(AGENT_MAIN)) throw new Error(`${AGENT_MAIN} missing: build first (npx tsc -b)`);

    // ---- the orchestrator, in this process, on a fresh PostgreSQL database ----
    const orch = await startInProcessOrchestrator(benchCleanup, 'kloudak_bench_vm', ADMIN);
    const client = new ApiClient(() => orch.url, WS);
    const api = (method: string, path: string, body?: unknown) => client.call(method, path, body);
    /** Poll a task every POLL_MS until it ends; returns it and when its end was seen. */
    const taskEnd = async (id: string): Promise<{ task: Json; seenAt: number; seenWall: number }> => {
      const deadline = Date.now() + 180_000;
      for (;;) {
        const t = (await api('GET', `/workspaces/${WS}/tasks/${id}`)).body;
        const seenAt = performance.now();
        if (t['state'] === 'succeeded') return { task: t, seenAt, seenWall: Date.now() };
        if (t['state'] === 'failed' || t['state'] === 'rolled_back') throw new Error(`task ${id} ${t['state']}: ${JSON.stringify(t)}`);
        if (Date.now() > deadline) throw new Error(`task ${id} did not end: ${JSON.stringify(t)}`);
        await sleep(POLL_MS);
      }
    };
    await client.login(ADMIN);

    // ---- the host's world, as up.sh makes it ----
    const { lv, bridge, pool, poolDir, consoleDir } = await setUpQemuHost(benchCleanup, { name: RUN, netPrefix: 'kb-', fill: testGuestImage(TEMPLATE) });
    const tmplVol = await lv.lookupVolumeByName(pool, TEMPLATE);
    const template = { path: await lv.getVolumePath(tmplVol), capacity: (await lv.getVolumeInfo(tmplVol)).capacity };

    // ---- area, pool, template, workspace, network ----
    await must('area', 201, api('POST', '/areas', { name: RUN, subnet: `${SUBNET}.0/24`, gateway: `${SUBNET}.1`, vlanRange: '420-429' }));
    await must('pool', 201, api('POST', '/pools', { name: RUN, area: RUN, path: poolDir, type: 'dir' }));
    const boot = { kernel: join(GUEST, 'vmlinuz'), initrd: join(GUEST, 'initrd.img'), cmdline: readFileSync(join(GUEST, 'cmdline'), 'utf8').trim() };
    await must('template', 201, api('POST', '/templates', { name: `${RUN}-guest`, os: 'kloudak-test-guest', cpu: 1, ramMb: 128, diskGb: 1, image: TEMPLATE, boot }));
    await must('workspace', 201, api('POST', '/workspaces', { name: WS }));

    // ---- a real agent process for the host ----
    const jt = await must('join token', 201, api('POST', '/hosts/join-tokens', { area: RUN, expiresIn: 600 }));
    const agent = startAgentProcess(
      benchCleanup,
      `${RUN}-qemu`,
      `127.0.0.1:${orch.agentPort}`,
      {
        ...agentHostEnv(bridge),
        KLOUDAK_AGENT_LOG_LEVEL: 'warn',
        KLOUDAK_AGENT_JOIN_TOKEN: jt['token'] as string,
        KLOUDAK_AGENT_LIBVIRT_URI: URI,
        KLOUDAK_AGENT_CONSOLE_DIR: consoleDir,
      },
      { dirPrefix: RUN, stopGraceMs: 10_000 },
    );
    const hostId = await client.waitHostUp(`${RUN}-qemu`, () => agent.output());

    const netBody = await must('network', 202, api('POST', `/workspaces/${WS}/networks`, { name: 'front', area: RUN }));
    await taskEnd(netBody['task']['id'] as string);
    const vlan = (await must('network', 200, api('GET', `/workspaces/${WS}/networks/front`)))['vlan'] as number;
    const networkId = netBody['network']['id'] as string;

    // Kloudak's VMs go through the API (registered last: runs before the network, agent, pool…).
    const kloudakVms = new Set<string>();
    const baselineVms = new Set<string>();
    onCleanup('delete what is left of the VMs', async () => {
      for (const name of kloudakVms) {
        const r = await api('DELETE', `/workspaces/${WS}/vms/${name}`);
        if (r.status === 202) await taskEnd(r.body['task']['id'] as string).catch((e: unknown) => progress(`cleanup of ${name}: ${String(e)}`));
      }
      await removeDomains(lv, baselineVms);
      for (const vmId of baselineVms) {
        for (const v of [rootVolumeName(vmId), seedVolumeName(vmId)]) {
          const vol = await lv.lookupVolumeByName(pool, v).catch(() => null);
          if (vol) await lv.deleteVolume(vol).catch(() => undefined);
        }
      }
      await must('network delete', 202, api('DELETE', `/workspaces/${WS}/networks/front`))
        .then((b) => taskEnd(b['task']['id'] as string))
        .catch((e: unknown) => progress(`cleanup of the network: ${String(e)}`));
    });

    // ---- the baseline's side: the agent's host settings and a spec like the one the agent gets ----
    const settings: HostSettings = { ...DEFAULT_HOST_SETTINGS, domainType: 'qemu', ovsDatapath: 'netdev', nicOffload: false, bridge, consoleDir };
    const isoProgram = await new IsoSeedBuilder(new ProcessRunner()).program();
    const direct = new DirectHostWork(lv, RUN, bridge, template, settings, isoProgram, RUN);

    /** Untimed: the domain runs (present) or is gone with its volumes (absent). */
    const check = async (vmId: string, present: boolean, path: Path): Promise<void> => {
      let state: number | null = null;
      try {
        state = (await lv.getDomainState(await lv.lookupDomainByName(domainName(vmId)))).state;
      } catch (e) {
        if (!(e instanceof NotFoundError)) throw e;
      }
      const vols = (await lv.listAllVolumes(pool)).map((v) => v.name).filter((n) => n.includes(vmId));
      if (present && (state !== DomainState.RUNNING || vols.length !== 2)) throw new Error(`${path} VM ${vmId}: state ${state}, volumes ${vols.join(', ')}`);
      if (!present && (state !== null || vols.length > 0)) throw new Error(`${path} VM ${vmId} left behind: state ${state}, volumes ${vols.join(', ')}`);
    };

    const kloudakOnce = async (n: number, name: string): Promise<{ create: Sample; deleteMs: number }> => {
      kloudakVms.add(name);
      const t0 = performance.now();
      const r = await api('POST', `/workspaces/${WS}/vms`, { name, template: `${RUN}-guest`, networks: ['front'], ha: false });
      const postMs = performance.now() - t0;
      if (r.status !== 202) throw new Error(`POST /vms: ${r.status} ${JSON.stringify(r.body)}`);
      const { task, seenAt, seenWall } = await taskEnd(r.body['task']['id'] as string);
      const ms = seenAt - t0;
      // Where the time went, from the task's own timestamps (ms resolution, same clock as ours).
      const at = (s: unknown) => (typeof s === 'string' ? Date.parse(s) : NaN);
      const steps = task['steps'] as Json[];
      const parts: Record<string, number> = { 'POST answered': postMs, 'queued → claimed': at(task['startedAt']) - at(task['createdAt']) };
      for (const s of steps) parts[`step ${s['name']}`] = at(s['finishedAt']) - at(s['startedAt']);
      parts['between steps'] =
        at(steps[steps.length - 1]?.['finishedAt']) - at(steps[0]?.['startedAt']) - steps.reduce((a, s) => a + at(s['finishedAt']) - at(s['startedAt']), 0);
      parts['claimed → first step'] = at(steps[0]?.['startedAt']) - at(task['startedAt']);
      parts['last step → finished'] = at(task['finishedAt']) - at(steps[steps.length - 1]?.['finishedAt']);
      parts['finished → seen by the poll'] = seenWall - at(task['finishedAt']);
      const vmId = r.body['vm']['id'] as string;
      await check(vmId, true, 'kloudak');
      const d0 = performance.now();
      const d = await must('DELETE /vms', 202, api('DELETE', `/workspaces/${WS}/vms/${name}`));
      await taskEnd(d['task']['id'] as string);
      const del = performance.now() - d0;
      kloudakVms.delete(name);
      await check(vmId, false, 'kloudak');
      return { create: { iteration: n, ms, parts }, deleteMs: del };
    };

    const baselineOnce = async (n: number): Promise<{ create: Sample; deleteMs: number }> => {
      const vmId = randomUUID();
      baselineVms.add(vmId);
      const mac = `52:54:00:${[...randomBytes(3)].map((b) => b.toString(16).padStart(2, '0')).join(':')}`;
      const spec: VmSpec = {
        vmId,
        hostname: `b${n}`,
        cpu: 1,
        ramMb: 128,
        diskGb: 1,
        pool: RUN,
        templateVolume: TEMPLATE,
        boot,
        nics: [{ networkId, mac, vlan, ip: { address: `${SUBNET}.${200 + (Math.abs(n) % 50)}/24`, gateway: `${SUBNET}.1` } }],
        sshKeys: [],
        ha: false,
      };
      // Generated before the clock starts (as in host-ops.bench): not what is compared.
      const xml = domainXml(spec, settings);
      const files = seedFiles(spec);
      const t0 = performance.now();
      await direct.create(spec, xml, files);
      const dom = await lv.lookupDomainByName(domainName(vmId));
      for (;;) {
        const { state } = await lv.getDomainState(dom);
        if (state === DomainState.RUNNING) break;
        if (performance.now() - t0 > 180_000) throw new Error(`baseline VM ${vmId} never ran (state ${state})`);
        await sleep(POLL_MS);
      }
      const ms = performance.now() - t0;
      await check(vmId, true, 'baseline');
      const d0 = performance.now();
      await direct.delete(vmId);
      const del = performance.now() - d0;
      baselineVms.delete(vmId);
      await check(vmId, false, 'baseline');
      return { create: { iteration: n, ms, parts: {} }, deleteMs: del };
    };

    progress(`run ${RUN}: host ${hostId} (agent process), pool ${poolDir}, bridge ${bridge}, VLAN ${vlan}; ${WARMUP} warm-up + ${ITERATIONS} measured per path, poll ${POLL_MS} ms`);
    let k = 0;
    for (let i = -WARMUP; i < ITERATIONS; i++) {
      const order: Path[] = (i + WARMUP) % 2 === 0 ? ['kloudak', 'baseline'] : ['baseline', 'kloudak'];
      for (const p of order) {
        const r = p === 'kloudak' ? await kloudakOnce(i, `vm${k++}`) : await baselineOnce(i);
        progress(`${i >= 0 ? `#${i}` : 'warm-up'} ${p.padEnd(8)} to running ${fmt(r.create.ms)} ms, delete ${fmt(r.deleteMs)} ms`);
        if (i >= 0) {
          samples[p].push(r.create);
          deleteMs[p].push(r.deleteMs);
        }
      }
    }
  } finally {
    await runCleanups();
  }

  const sk = summarize(samples.kloudak);
  const sb = summarize(samples.baseline);
  const ratio = { p50: sk.p50 / sb.p50, p95: sk.p95 / sb.p95, mean: sk.mean / sb.mean };
  const rows: (string | number)[][] = [['path', 'n', 'p50 ms', 'p95 ms', 'mean ms', 'min ms', 'max ms', 'p50 ratio', 'p95 ratio']];
  for (const [p, s] of [['kloudak', sk], ['baseline', sb]] as const) {
    rows.push([p, s.n, fmt(s.p50), fmt(s.p95), fmt(s.mean), fmt(s.min), fmt(s.max), p === 'kloudak' ? `${ratio.p50.toFixed(3)}x` : '', p === 'kloudak' ? `${ratio.p95.toFixed(3)}x` : '']);
  }
  const partRows: (string | number)[][] = [['part of a Kloudak create', 'mean ms']];
  for (const [k, v] of Object.entries(sk.partsMean)) partRows.push([k, fmt(v)]);
  const target = 1.15;
  console.log(
    `\nvm-create.bench — POST /vms to running through Kloudak (REST → task → agent process → libvirt) against the same host work ` +
      `done directly, on ${URI} (TCG) with OVS (netdev), the test guest (direct kernel boot, 1 vCPU, 128 MiB, 1 NIC); ` +
      `${ITERATIONS} measured creates per path after ${WARMUP} warm-up, interleaved; both paths poll every ${POLL_MS} ms.\n` +
      `Machine: ${machine().cpus} cores (${machine().cpuModel}), ${busyBefore}% of a core busy before the start.\n`,
  );
  console.log(table(rows));
  console.log(`\ntarget ≤ ${target}x: p50 ${ratio.p50 <= target ? 'met' : 'MISSED'}, p95 ${ratio.p95 <= target ? 'met' : 'MISSED'}\n`);
  console.log(table(partRows));
  const file = writeResults('vm-create', started, {
    bench: 'vm-create',
    startedAt: started.toISOString(),
    finishedAt: new Date().toISOString(),
    machine: { ...machine(), busyPctBeforeStart: busyBefore },
    settings: { iterations: ITERATIONS, warmup: WARMUP, pollMs: POLL_MS, uri: URI, guest: GUEST },
    summary: { kloudak: sk, baseline: sb },
    ratio,
    deleteMs,
    samples,
  });
  console.log(`\nresults: ${file}`);
  return 0;
}

runBench('vm-create', main);
