// Faults in the life of a VM, against real components: the orchestrator runs as its own process
// (PostgreSQL, NATS) and is SIGKILLed in the middle of a create and of a delete, then started
// again on the same database and data dir; the agent process is SIGKILLed inside a createVm and
// started again on its identity; a real agent process drives qemu:///system with a real
// `dir` pool and Open vSwitch. What the host holds is read straight from libvirt, the pool's
// directory and ovs-vsctl, and what the agent ran from its own log (it logs every command id).
//
// To land a kill while a step's command is in flight, the agent is SIGSTOPped as soon as the
// orchestrator logs the step before it (so the command waits, unanswered, in the agent's socket),
// then the orchestrator is SIGKILLed and the agent continued: it runs the command with no one to
// answer, and the restarted orchestrator must resume that step with the same command id — the
// agent then answers from memory instead of running it again.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Libvirt } from '@kloudak/libvirt';
import { ensureLibvirtd } from '@kloudak/libvirt/testing';
import { domainName, tapName } from '@kloudak/agent';
import { ensureOvs } from '@kloudak/agent/testing';
import { Cleanup, freePort, freshDatabase, TEST_NATS_URL } from '@kloudak/testkit';
import { spawnAgentProcess, startAgentProcess, type AgentProcess } from './agent-process.js';
import { agentTestEnv, ApiClient, jsonLines, type Json } from './api-client.js';
import { startOrchestratorProcess, type OrchestratorProcess } from './orchestrator-process.js';
import { QEMU_URI, removeDomains, setUpQemuHost } from './qemu-host.js';

const RUN = `kf${randomBytes(3).toString('hex')}`;
const ADMIN = { username: 'root-admin', password: 'e2e-Vm-Faults-Pass-2026!' };
const WS = `${RUN}-ws`;
const VIR_DOMAIN_RUNNING = 1;

describe('VM tasks through faults: the orchestrator or the agent killed mid-task, steps that fail', { timeout: 300_000 }, () => {
  const cleanup = new Cleanup();
  let orch: OrchestratorProcess;
  let orchEnv: Record<string, string>;
  let agent: AgentProcess;
  let lv: Libvirt;
  let poolDir = '';
  let bridge = '';
  const vmIds = new Set<string>();
  const client = new ApiClient(() => orch.url, WS);
  const api = (method: string, path: string, body?: unknown) => client.call(method, path, body);

  /** Start (or start again) the orchestrator process; the agent link keeps its port so the agent finds it again. */
  async function startOrch(): Promise<void> {
    orch = await startOrchestratorProcess(orchEnv);
    const o = orch;
    cleanup.add(() => o.kill());
  }

  /** The agent's log entries of commands that ran (succeeded or failed), from `from` in its output on. */
  function agentRuns(from = 0): Json[] {
    return jsonLines(agent.output().slice(from)).filter((l) => l['msg'] === 'command succeeded' || l['msg'] === 'command failed');
  }

  /** Command ids the agent answered from memory (received again), from `from` in its output on. */
  function answeredFromMemory(from = 0): string[] {
    return jsonLines(agent.output().slice(from))
      .filter((l) => l['msg'] === 'command received again: answered from memory')
      .map((l) => l['command_id'] as string);
  }

  /**
   * Whether the restarted orchestrator resumed command `id` under the same id: the agent answered
   * it from memory (re-sent on the new session), or the agent's result reached the restarted
   * orchestrator before its re-send (the agent answers on the session open when a command ends)
   * and was taken for the command the resumed step had pending, never written by this process.
   */
  function resumedSameId(mark: number, id: string): boolean {
    return answeredFromMemory(mark).includes(id)
      || jsonLines(orch.output()).some((l) => l['msg'] === 'command result' && l['command_id'] === id && l['written'] === false);
  }

  /**
   * Resolves at the orchestrator's first log line (from now on) that `match` accepts; fails after
   * 30 s. `match` sees the lines one by one, in order, as they arrive: a match that sends a signal
   * does it before the orchestrator's next command is sent.
   */
  function waitForOrchLog(match: (l: Json) => boolean): Promise<void> {
    const stdout = orch.child.stdout!;
    let rest = '';
    let onData: (d: Buffer) => void = () => undefined;
    const seen = new Promise<void>((resolve) => {
      onData = (d: Buffer) => {
        const lines = (rest + d.toString()).split('\n');
        rest = lines.pop() ?? '';
        if (jsonLines(lines.join('\n')).some(match)) {
          stdout.off('data', onData);
          resolve();
        }
      };
      stdout.on('data', onData);
    });
    let timer: NodeJS.Timeout | undefined;
    return Promise.race([
      seen,
      new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`no such log line:\n${orch.output().slice(-3000)}`)), 30_000))),
    ]).finally(() => {
      clearTimeout(timer);
      stdout.off('data', onData);
    });
  }

  /**
   * Arm a kill: when the orchestrator logs `msg` for `step` of a task of `kind`, SIGSTOP the agent
   * at once (the next command then waits in its socket); once the orchestrator logs that it wrote
   * the next command on the session, give the bytes `flushMs` to leave, SIGKILL the orchestrator,
   * continue the agent, and start the orchestrator again. (A fixed wait after the step's line was
   * not enough under load: the step reads the database before it sends.) Armed before the request
   * that queues the task (its first step may start before the 202 arrives); resolves the offset of
   * the agent's output at the stop.
   */
  function armKill(kind: string, step: string, msg: 'step started' | 'step succeeded', flushMs = 200): Promise<number> {
    let mark = -1;
    const sent = waitForOrchLog((l) => {
      if (mark < 0) {
        if (l['kind'] === kind && l['step'] === step && l['msg'] === msg) {
          agent.child.kill('SIGSTOP');
          mark = agent.output().length;
        }
        return false;
      }
      return l['msg'] === 'command sent' && typeof l['vm_id'] === 'string';
    });
    return (async () => {
      await sent;
      await new Promise((r) => setTimeout(r, flushMs));
      await orch.kill();
      agent.child.kill('SIGCONT');
      await startOrch();
      return mark;
    })();
  }

  /** The domain of a VM on the host: its state, or null when libvirt has no such domain. */
  async function domainState(vmId: string): Promise<number | null> {
    const dom = await lv.lookupDomainByName(domainName(vmId)).catch(() => null);
    return dom ? (await lv.getDomainState(dom)).state : null;
  }

  /** What the host holds of a VM: its domain, files in the pool, OVS ports. */
  async function onHost(vmId: string): Promise<{ domain: number | null; files: string[]; ports: string[] }> {
    const files = readdirSync(poolDir).filter((f) => f.includes(vmId));
    const ports = execFileSync('ovs-vsctl', ['list-ports', bridge], { encoding: 'utf8' })
      .split('\n')
      .filter((p) => p === tapName(vmId, 0) || p === tapName(vmId, 1));
    return { domain: await domainState(vmId), files, ports };
  }

  async function createVm(name: string, template: string): Promise<{ vmId: string; taskId: string }> {
    const r = await api('POST', `/workspaces/${WS}/vms`, { name, template, networks: ['front'], ha: false });
    assert.equal(r.status, 202, JSON.stringify(r.body));
    vmIds.add(r.body['vm']['id']);
    return { vmId: r.body['vm']['id'], taskId: r.body['task']['id'] };
  }

  before(async () => {
    await ensureLibvirtd();
    await ensureOvs();
    const db = await freshDatabase('kloudak_e2e_faults');
    cleanup.add(() => db.drop());
    const dataDir = mkdtempSync(join(tmpdir(), `${RUN}-orch-`));
    cleanup.add(async () => rmSync(dataDir, { recursive: true, force: true }));
    orchEnv = {
      DATABASE_URL: db.url,
      NATS_URL: TEST_NATS_URL,
      KLOUDAK_DATA_DIR: dataDir,
      KLOUDAK_AGENT_PORT: String(await freePort()),
      KLOUDAK_AGENT_HOST: '127.0.0.1',
      KLOUDAK_ADMIN_USER: ADMIN.username,
      KLOUDAK_ADMIN_PASSWORD: ADMIN.password,
      // debug: armKill waits for the 'command sent' line.
      KLOUDAK_LOG_LEVEL: 'debug',
      KLOUDAK_HEARTBEAT_INTERVAL_MS: '250',
      // A killed orchestrator's task leases lapse after 1 s, so the next start resumes at once.
      KLOUDAK_TASK_LEASE_MS: '1000',
      // Long enough to put a missing volume in place between two attempts.
      KLOUDAK_TASK_BACKOFF_MS: '1500',
      KLOUDAK_TASK_BACKOFF_MAX_MS: '1500',
      KLOUDAK_TASK_STEP_TIMEOUT_MS: '20000',
      KLOUDAK_TASK_TIMEOUT_MS: '90000',
    };
    await startOrch();
    await client.login(ADMIN);

    // An empty disk is enough: the VM only has to run (it sits in its firmware), not boot.
    const host = await setUpQemuHost(cleanup, {
      name: RUN,
      netPrefix: 'kf-',
      fill: (dir) => execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', join(dir, 'base.qcow2'), '64M']),
    });
    ({ lv, poolDir, bridge } = host);

    assert.equal((await api('POST', '/areas', { name: RUN, subnet: '10.248.0.0/24', gateway: '10.248.0.1', vlanRange: '420-421' })).status, 201);
    assert.equal((await api('POST', '/pools', { name: RUN, area: RUN, path: poolDir, type: 'dir' })).status, 201);
    for (const [name, image] of [['base', 'base.qcow2'], ['late', 'late.qcow2'], ['never', 'never.qcow2']]) {
      const t = await api('POST', '/templates', { name: `${RUN}-${name}`, os: 'test', cpu: 1, ramMb: 128, diskGb: 1, image });
      assert.equal(t.status, 201, JSON.stringify(t.body));
    }
    assert.equal((await api('POST', '/workspaces', { name: WS })).status, 201);
    const jt = await api('POST', '/hosts/join-tokens', { area: RUN, expiresIn: 600 });
    agent = startAgentProcess(cleanup, `${RUN}-qemu`, `127.0.0.1:${orchEnv['KLOUDAK_AGENT_PORT']}`, {
      ...agentTestEnv(bridge),
      KLOUDAK_AGENT_JOIN_TOKEN: jt.body['token'],
      KLOUDAK_AGENT_LIBVIRT_URI: QEMU_URI,
      KLOUDAK_AGENT_CONSOLE_DIR: host.consoleDir,
    }, { dirPrefix: RUN });
    // Should a test fail before its VMs' deletes.
    cleanup.add(() => removeDomains(lv, vmIds));
    await client.waitHostUp(`${RUN}-qemu`, () => agent.output());
    const front = await api('POST', `/workspaces/${WS}/networks`, { name: 'front', area: RUN });
    assert.equal(front.status, 202, JSON.stringify(front.body));
    await client.succeeded(front.body['task']['id']);
  });

  after(async () => {
    await cleanup.run();
  });

  it('finishes a create whose orchestrator was SIGKILLed right after the 202', async () => {
    const { vmId, taskId } = await createVm('after-202', `${RUN}-base`);
    await orch.kill();
    await startOrch();
    const t = await client.succeeded(taskId);
    assert.deepEqual(t['steps'].map((s: Json) => [s['name'], s['state']]), [['claim', 'succeeded'], ['networks', 'succeeded'], ['create', 'succeeded'], ['running', 'succeeded']]);
    assert.equal((await api('GET', `/workspaces/${WS}/vms/after-202`)).body['state'], 'running');
    assert.equal(await domainState(vmId), VIR_DOMAIN_RUNNING);
    assert.equal(agentRuns().filter((l) => l['action'] === 'createVm' && l['vm_id'] === vmId).length, 1, 'the agent created it once');
  });

  // The create step is the one that sends a command (the networks step only checks the VLANs:
  // createVm ensures them on the host itself).
  for (const [step, after] of [['create', 'networks']] as const) {
    it(`resumes the ${step} step in flight when the orchestrator was SIGKILLed: same command id, run once by the agent`, async () => {
      const action = 'createVm';
      const killed = armKill('vm.create', after, 'step succeeded');
      const { vmId, taskId } = await createVm(`mid-${step}`, `${RUN}-base`);
      const mark = await killed;
      const t = await client.succeeded(taskId);
      const s = t['steps'].find((x: Json) => x['name'] === step);
      assert.equal(s['attempts'], 1, `the interrupted attempt was resumed, not retried: ${JSON.stringify(t)}`);
      // The command the killed orchestrator sent ran once, and the restarted one resumed its id.
      const runs = agentRuns(mark).filter((l) => l['action'] === action && l['vm_id'] === vmId);
      assert.equal(runs.length, 1, `one ${action} since the kill: ${JSON.stringify(runs)}`);
      assert.equal(runs[0]!['msg'], 'command succeeded');
      assert.ok(resumedSameId(mark, runs[0]!['command_id']), `the resumed step kept command id ${runs[0]!['command_id']}\n${agent.output().slice(mark).slice(-3000)}`);
      assert.equal(agentRuns().filter((l) => l['action'] === 'createVm' && l['vm_id'] === vmId).length, 1, 'created once in all');
      assert.equal((await api('GET', `/workspaces/${WS}/vms/mid-${step}`)).body['state'], 'running');
      assert.equal(await domainState(vmId), VIR_DOMAIN_RUNNING);
    });
  }

  it('retries a create whose template volume is missing, and succeeds once it is in the pool', async () => {
    const { vmId, taskId } = await createVm('late', `${RUN}-late`);
    // The first attempt fails (the agent answers not_found); during the backoff an operator copies
    // the template into the pool's directory (libvirt is not told: the agent must find it).
    let t: Json = {};
    await (async () => {
      for (const until = Date.now() + 30_000; Date.now() < until; await new Promise((r) => setTimeout(r, 50))) {
        t = await client.task(taskId);
        const s = (t['steps'] as Json[]).find((x) => x['name'] === 'create');
        if (s?.['state'] === 'failed') return;
        assert.ok(!['succeeded', 'rolled_back', 'failed'].includes(t['state']), JSON.stringify(t));
      }
      throw new Error(`the create step never failed: ${JSON.stringify(t)}`);
    })();
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', join(poolDir, 'late.qcow2'), '64M']);
    t = await client.succeeded(taskId);
    const s = t['steps'].find((x: Json) => x['name'] === 'create');
    assert.equal(s['attempts'], 2, JSON.stringify(t));
    const runs = agentRuns().filter((l) => l['action'] === 'createVm' && l['vm_id'] === vmId);
    assert.deepEqual(runs.map((l) => [l['msg'], l['code'] ?? null]), [['command failed', 'NOT_FOUND'], ['command succeeded', null]]);
    assert.notEqual(runs[0]!['command_id'], runs[1]!['command_id'], 'a retry is a new command');
    assert.equal(await domainState(vmId), VIR_DOMAIN_RUNNING);
  });

  it('rolls back a create whose step always fails: VM in error with its claims released, nothing on the host', async () => {
    const { vmId, taskId } = await createVm('never', `${RUN}-never`);
    const t = await client.taskEnd(taskId);
    assert.equal(t['state'], 'rolled_back', JSON.stringify(t));
    assert.equal(t['steps'].find((x: Json) => x['name'] === 'create')['attempts'], 3);
    // The create step reached the host, so its undo (a delete) ran; the claim's undo released the claims.
    assert.deepEqual(
      (t['rollbackLog'] as Json[]).map((e) => [e['step'], e['ok']]),
      [['create', true], ['networks', true], ['claim', true]],
      JSON.stringify(t['rollbackLog']),
    );
    const vm = (await api('GET', `/workspaces/${WS}/vms/never`)).body;
    assert.equal(vm['state'], 'error');
    assert.equal(vm['host'], null);
    assert.deepEqual(vm['interfaces'].map((i: Json) => i['ip']), [null]);
    assert.deepEqual(await onHost(vmId), { domain: null, files: [], ports: [] });
    const del = await api('DELETE', `/workspaces/${WS}/vms/never`);
    assert.equal(del.status, 202, JSON.stringify(del.body));
    await client.succeeded(del.body['task']['id']);
    assert.equal((await api('GET', `/workspaces/${WS}/vms/never`)).status, 404);
  });

  // The agent dies at some moment inside createVm (volumes made, seed uploaded, domain defined or
  // started: wherever the kill lands), and a new agent process starts on the same identity. The
  // step's command is lost with it; the retry runs createVm again, which finds what the dead one
  // made and finishes it. Two moments, so at least one kill lands mid-way on a fast or slow host.
  for (const afterMs of [60, 250]) {
    it(`finishes a create whose agent was SIGKILLed ${afterMs} ms into createVm: one domain, its two volumes, one port`, async () => {
      const name = `agent-kill-${afterMs}`;
      const started = waitForOrchLog((l) => l['kind'] === 'vm.create' && l['step'] === 'create' && l['msg'] === 'step started');
      const { vmId, taskId } = await createVm(name, `${RUN}-base`);
      await started;
      await new Promise((r) => setTimeout(r, afterMs));
      const dead = agent;
      await dead.kill();
      agent = spawnAgentProcess(dead.name, `127.0.0.1:${orchEnv['KLOUDAK_AGENT_PORT']}`, dead.dataDir, dead.env);
      const restarted = agent;
      cleanup.add(() => restarted.kill());
      const t = await client.succeeded(taskId);
      assert.equal((await api('GET', `/workspaces/${WS}/vms/${name}`)).body['state'], 'running', JSON.stringify(t));
      const host = await onHost(vmId);
      assert.equal(host.domain, VIR_DOMAIN_RUNNING);
      assert.deepEqual(host.files.sort(), [`kloudak-${vmId}-root.qcow2`, `kloudak-${vmId}-seed.iso`], 'its two volumes, nothing else');
      assert.deepEqual(host.ports, [tapName(vmId, 0)]);
      // The kill landed inside createVm: the dead agent never finished it, the new one did.
      const finished = (out: string) => jsonLines(out).filter((l) => l['action'] === 'createVm' && l['vm_id'] === vmId && l['msg'] === 'command succeeded');
      assert.deepEqual(finished(dead.output()), [], 'the killed agent had not finished createVm');
      assert.equal(finished(restarted.output()).length, 1, restarted.output().slice(-3000));
    });
  }

  it('finishes a delete whose orchestrator was SIGKILLed while the host deleted, then nothing of any VM is left', async () => {
    const victim = (await api('GET', `/workspaces/${WS}/vms/mid-create`)).body;
    const killed = armKill('vm.delete', 'delete', 'step started');
    const del = await api('DELETE', `/workspaces/${WS}/vms/mid-create`);
    assert.equal(del.status, 202, JSON.stringify(del.body));
    const mark = await killed;
    const t = await client.succeeded(del.body['task']['id']);
    assert.equal(t['steps'][0]['attempts'], 1, JSON.stringify(t));
    const runs = agentRuns(mark).filter((l) => l['action'] === 'deleteVm' && l['vm_id'] === victim['id']);
    assert.equal(runs.length, 1, `one deleteVm since the kill: ${JSON.stringify(runs)}`);
    assert.ok(resumedSameId(mark, runs[0]!['command_id']), `the resumed delete kept command id ${runs[0]!['command_id']}\n${agent.output().slice(mark).slice(-3000)}`);
    assert.equal((await api('GET', `/workspaces/${WS}/vms/mid-create`)).status, 404);
    // Delete the rest the ordinary way; the host keeps nothing of any of them.
    const names = ((await api('GET', `/workspaces/${WS}/vms`)).body['items'] as Json[]).map((v) => v['name'] as string);
    for (const name of names) {
      const r = await api('DELETE', `/workspaces/${WS}/vms/${name}`);
      assert.equal(r.status, 202, JSON.stringify(r.body));
      await client.succeeded(r.body['task']['id']);
    }
    assert.deepEqual((await api('GET', `/workspaces/${WS}/vms`)).body['items'], []);
    for (const id of vmIds) assert.deepEqual(await onHost(id), { domain: null, files: [], ports: [] }, id);
    // `.kloudak` holds the agents' pool lease files (agent/src/storage/pool-lease.ts), not a VM's.
    assert.deepEqual(readdirSync(poolDir).filter((f) => f !== '.kloudak').sort(), ['base.qcow2', 'late.qcow2'], 'only the templates stay in the pool');
    const tasks = (await api('GET', `/workspaces/${WS}/tasks?limit=100`)).body['items'] as Json[];
    assert.deepEqual(tasks.filter((x) => !['succeeded', 'rolled_back'].includes(x['state'])), [], 'no task left unfinished');
  });
});
