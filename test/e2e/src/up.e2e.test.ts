// The README's "up" command (scripts/up.sh, `npm start`) end to end: it starts the orchestrator on
// its embedded database and a local agent that it enrolls itself, on a simulated host (libvirt's
// test driver) and on a qemu host (libvirt's QEMU driver, a pool holding the test guest's image,
// Open vSwitch); a second start reuses the agent's identity; SIGTERM stops everything it started.
// The build is skipped (KLOUDAK_UP_SKIP_BUILD=1): the test command has just built everything.
import { describe, it, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Cleanup } from '@kloudak/testkit';
import { REPO, api, assertNoSecrets, login, processesWith, qemuUpHost, simulatedUpHost, startUp as start, stopUp, waitHostUp, type Up } from './up-harness.js';

const RUN = `ku${randomBytes(3).toString('hex')}`;
const cleanup = new Cleanup();
after(() => cleanup.run());
const startUp = (dataDir: string, env: Record<string, string>): Promise<Up> => start(cleanup, dataDir, env);

/** The README's first-VM walk-through: the sh block after its `first-vm` marker. */
function firstVmBlock(): string {
  const readme = readFileSync(join(REPO, 'README.md'), 'utf8');
  const m = /<!-- first-vm:[^>]*-->\s*```sh\n([\s\S]*?)\n```/.exec(readme);
  assert.ok(m, 'README.md has the first-vm block');
  return m[1]!;
}

describe('npm start (scripts/up.sh)', { timeout: 600_000 }, () => {
  it('brings up the orchestrator with a SIMULATED local host, enrolled by itself; a second start reuses its identity; SIGTERM stops everything', async () => {
    const { dataDir, hostName, env } = simulatedUpHost(cleanup, RUN);

    const up = await startUp(dataDir, env);
    assert.match(up.output(), /local host +\S+: SIMULATED host — libvirt's test driver/);
    assert.match(up.output(), new RegExp(`API +http://127\\.0\\.0\\.1:\\d+/api/v1`));
    const token = await login(up, dataDir);
    const host = await waitHostUp(up, token, hostName);
    assert.equal(host.capacity.cpus, 8, "the simulated node's CPUs, from the agent's Hello");
    assert.equal(host.area, 'local');
    for (const [path, field, want] of [
      ['/areas/local', 'name', 'local'],
      ['/pools/kloudak-local', 'area', 'local'],
      ['/templates/test-guest', 'image', 'kloudak-test-guest.qcow2'],
    ] as const) {
      const r = await api(up.base, token, path);
      assert.equal(r.status, 200, path);
      assert.equal(r.body[field], want, path);
    }
    assert.ok(existsSync(join(dataDir, 'agent-sim', 'identity.json')), "the agent's identity is kept in the data dir");
    assertNoSecrets(up);
    await stopUp(up);
    assert.deepEqual(processesWith(dataDir), [], 'no orchestrator or agent process is left');

    // Second start: the same host, no new enrollment.
    const again = await startUp(dataDir, env);
    const token2 = await login(again, dataDir);
    const host2 = await waitHostUp(again, token2, hostName);
    assert.equal(host2.id, host.id, 'the same host record');
    const tokens = await api(again.base, token2, '/hosts/join-tokens');
    assert.equal((tokens.body['items'] as unknown[]).length, 1, 'one join token was ever made');
    assertNoSecrets(again);
    await stopUp(again);
    assert.deepEqual(processesWith(dataDir), []);
  });

  it('brings up a qemu local host: a libvirt pool holding the test guest, Open vSwitch, the agent enrolled and up', async () => {
    const { dataDir, hostDir, pool, hostName, env } = qemuUpHost(cleanup, RUN);
    const up = await startUp(dataDir, env);
    assert.match(up.output(), /local host +\S+: qemu host — libvirt (kvm|qemu) driver/);
    const vols = execFileSync('virsh', ['-q', '-c', 'qemu:///system', 'vol-list', pool], { encoding: 'utf8' });
    assert.match(vols, /kloudak-test-guest\.qcow2/, 'the pool holds the test guest image');
    for (const f of ['vmlinuz', 'initrd.img', 'cmdline']) assert.ok(existsSync(join(hostDir, 'boot', f)), `boot/${f}`);
    const token = await login(up, dataDir);
    const host = await waitHostUp(up, token, hostName);
    assert.ok(host.capacity.cpus >= 1);
    const pools = await api(up.base, token, `/pools/${pool}`);
    assert.equal(pools.status, 200);
    assert.equal(pools.body['path'], join(hostDir, 'pool'));
    // The README's first-VM walk-through, run as it is written, against this local host.
    const walk = firstVmBlock();
    const res = spawnSync('bash', ['-euo', 'pipefail', '-c', walk], {
      cwd: REPO,
      env: { ...process.env, KLOUDAK_URL: up.base, KLOUDAK_DATA_DIR: dataDir },
      encoding: 'utf8',
      timeout: 300_000,
    });
    assert.equal(res.status, 0, `the README's first-VM walk-through failed (${res.signal ?? res.status}):\n${res.stdout}\n${res.stderr}`);
    assert.match(res.stdout, /"state": "running"/);
    const ready = /KLOUDAK-READY instance-id=([0-9a-f-]{36}) hostname=web ip=10\.250\.0\.2/.exec(res.stdout);
    assert.ok(ready, res.stdout);
    const domains = execFileSync('virsh', ['-q', '-c', 'qemu:///system', 'list', '--all', '--name'], { encoding: 'utf8' });
    assert.ok(!domains.includes(ready[1]!), `the walk-through's clean-up left the VM's domain: ${domains}`);
    assertNoSecrets(up);
    await stopUp(up);
    assert.deepEqual(processesWith(dataDir), [], 'no orchestrator or agent process is left');
  });
});
