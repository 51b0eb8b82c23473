// `npm start` (scripts/up.sh) stopped and started again, the ways people and supervisors do it:
// - Ctrl-C, then start again, three times, on a qemu host: each start comes up. (up.sh used to
//   check its libvirt pool with `virsh pool-info | grep -q running` under pipefail; grep's early
//   exit killed virsh with SIGPIPE, so a second start tried to start the running pool and died
//   about 9 times in 10.)
// - up.sh SIGKILLed while the orchestrator is starting: nothing is left (up-local-host.mjs included).
// - up.sh SIGKILLed: the orchestrator and the agent, which run in their own sessions, notice
//   through their lifeline pipe and exit within seconds, freeing their ports; the next start on
//   the same ports comes up.
// - a supervisor's SIGTERM to the `npm start` process group, then SIGKILL: nothing is left.
// The build is skipped (KLOUDAK_UP_SKIP_BUILD=1): the test command has just built everything.
import { describe, it, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { Cleanup, freePort, waitFor } from '@kloudak/testkit';
import { assertNoSecrets, login, portFree, processesWith, qemuUpHost, simulatedUpHost, startUp, waitHostUp, type Up } from './up-harness.js';

const RUN = `kl${randomBytes(3).toString('hex')}`;
const cleanup = new Cleanup();
after(() => cleanup.run());

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Waits until no process of this data dir is left; returns how long that took (ms), or throws. */
async function allGone(dataDir: string, withinMs: number, up: Up): Promise<number> {
  const t0 = Date.now();
  for (;;) {
    const left = processesWith(dataDir);
    if (left.length === 0) return Date.now() - t0;
    if (Date.now() - t0 > withinMs) {
      assert.fail(`processes of ${dataDir} still running ${withinMs} ms later: ${left.join(', ')}\n${up.output().slice(-3000)}`);
    }
    await sleep(100);
  }
}

async function assertPortsFree(up: Up): Promise<void> {
  assert.ok(await portFree(up.httpPort), `the API port ${up.httpPort} is free`);
  assert.ok(await portFree(up.agentPort), `the agent port ${up.agentPort} is free`);
}

describe('npm start: stop and start again', { timeout: 600_000 }, () => {
  it('Ctrl-C and start again, three times, on a qemu host: each start comes up on the same ports', async () => {
    const { dataDir, hostName, env } = qemuUpHost(cleanup, RUN);
    const ports = { httpPort: await freePort(), agentPort: await freePort() };
    let hostId = '';
    for (let round = 1; round <= 3; round++) {
      // Its own process group, as in a terminal: Ctrl-C is SIGINT to the whole group.
      const up = await startUp(cleanup, dataDir, env, { ...ports, group: true }).catch((err: Error) => {
        throw new Error(`start ${round} of 3 failed: ${err.message}`);
      });
      assert.doesNotMatch(up.output(), /already active|Failed to start pool/, `start ${round}`);
      const token = await login(up, dataDir);
      const host = await waitHostUp(up, token, hostName);
      hostId ||= host.id;
      assert.equal(host.id, hostId, `start ${round}: the same host`);
      assert.ok(up.child.pid);
      process.kill(-up.child.pid, 'SIGINT');
      assert.equal(await up.exited, 130, `start ${round}: up.sh ends on Ctrl-C with 128+2:\n${up.output().slice(-2000)}`);
      assert.deepEqual(processesWith(dataDir), [], `start ${round}: no orchestrator or agent process is left`);
      await assertPortsFree(up);
      assertNoSecrets(up);
    }
  });

  it('up.sh SIGKILLed while starting, then once up: its children exit by themselves and free the ports; then a supervisor stops `npm start` with SIGTERM and SIGKILL to its group: nothing is left', async () => {
    const { dataDir, hostName, env } = simulatedUpHost(cleanup, RUN);
    const ports = { httpPort: await freePort(), agentPort: await freePort() };

    // 0. SIGKILL to up.sh while the orchestrator is still starting and up-local-host.mjs waits
    //    for it: the orchestrator stops once started, up-local-host.mjs at once (not after its 180 s).
    const early = await startUp(cleanup, dataDir, env, { ...ports, waitReady: false });
    await waitFor(async () => processesWith(dataDir).length >= 3, 60_000, 'up.sh, the orchestrator and up-local-host.mjs');
    early.child.kill('SIGKILL');
    await early.exited;
    // Bounded by the orchestrator's own start (first start: migrations, the admin), ~5 s here.
    const tookEarly = await allGone(dataDir, 20_000, early);
    await assertPortsFree(early);
    process.stderr.write(`# killed while starting: everything gone ${tookEarly} ms after up.sh was SIGKILLed\n`);

    // 1. SIGKILL to up.sh alone: nothing signals the orchestrator or the agent.
    const up = await startUp(cleanup, dataDir, env, ports);
    await waitHostUp(up, await login(up, dataDir), hostName);
    const children = processesWith(dataDir).filter((p) => p !== up.child.pid);
    assert.equal(children.length, 2, `the orchestrator and the agent run: ${children.join(', ')}`);
    up.child.kill('SIGKILL');
    await up.exited;
    const took = await allGone(dataDir, 5000, up);
    await assertPortsFree(up);
    assert.match(up.output(), /lifeline lost: the process that started the orchestrator is gone/);
    assert.match(up.output(), /lifeline lost: the process that started the agent is gone/);
    process.stderr.write(`# orchestrator and agent gone ${took} ms after up.sh was SIGKILLed\n`);

    // 2. The next start on the same ports comes up; then a supervisor stops it the hard way.
    const again = await startUp(cleanup, dataDir, env, { ...ports, group: true, npm: true });
    await waitHostUp(again, await login(again, dataDir), hostName);
    assert.ok(again.child.pid);
    const t0 = Date.now();
    process.kill(-again.child.pid, 'SIGTERM');
    // The supervisor waits 3 s, then kills whatever of the group is left.
    while (Date.now() - t0 < 3000 && processesWith(dataDir).length > 0) await sleep(50);
    const stoppedBeforeKill = processesWith(dataDir).length === 0;
    try {
      process.kill(-again.child.pid, 'SIGKILL');
    } catch {
      // the group has already ended
    }
    await allGone(dataDir, 10_000, again);
    await assertPortsFree(again);
    process.stderr.write(
      `# everything gone ${Date.now() - t0} ms after the group's SIGTERM (${stoppedBeforeKill ? 'before' : 'after'} the SIGKILL 3 s later)\n`,
    );
    assertNoSecrets(again);
  });
});
