/**
 * Test helper: makes sure Open vSwitch (ovsdb-server and ovs-vswitchd) runs on this machine. There
 * is no systemd here, so the daemons are started with OVS's own `ovs-ctl` script, the way
 * scripts/lib.sh's ensure_ovs does before the test run. A missing installation is an error, never a
 * skipped test.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import type { CommandRunner } from '../ports.js';
import { CommandError, ProcessRunner } from '../system/command-runner.js';

/** Where Debian (and RHEL) install the OVS control script. */
export const OVS_CTL = '/usr/share/openvswitch/scripts/ovs-ctl';

/** Whether both daemons answer: the database (ovs-vsctl) and the switch (ovs-appctl). */
export async function ovsReady(runner: CommandRunner = new ProcessRunner()): Promise<boolean> {
  try {
    const db = await runner.run(['ovs-vsctl', '--timeout=5', 'show'], { allowFailure: true, timeoutMs: 10_000 });
    if (db.code !== 0) return false;
    // ovs-vsctl only talks to the database; changes would hang without ovs-vswitchd.
    const sw = await runner.run(['ovs-appctl', '--timeout=5', '-t', 'ovs-vswitchd', 'version'], { allowFailure: true, timeoutMs: 10_000 });
    return sw.code === 0;
  } catch (err) {
    if (err instanceof CommandError && err.reason === 'spawn') {
      throw new Error('Open vSwitch is not installed (ovs-vsctl/ovs-appctl not found): apt-get install openvswitch-switch', {
        cause: err,
      });
    }
    throw err;
  }
}

/**
 * Starts ovsdb-server and ovs-vswitchd with `ovs-ctl start` unless both already answer, then
 * waits until they do. `ovs-ctl` warns that it cannot raise the file limit in a container and that
 * the kernel module cannot be loaded; both are harmless for the `netdev` datapath the tests use.
 */
export async function ensureOvs(opts: { timeoutMs?: number; runner?: CommandRunner } = {}): Promise<void> {
  const runner = opts.runner ?? new ProcessRunner();
  const timeoutMs = opts.timeoutMs ?? 30_000;
  if (await ovsReady(runner)) return;
  // ovs-ctl skips a daemon that already runs. Judge by readiness, not by its exit code.
  const start = await runner.run([OVS_CTL, 'start', '--system-id=random'], { allowFailure: true, timeoutMs });
  const deadline = Date.now() + timeoutMs;
  while (!(await ovsReady(runner))) {
    if (Date.now() > deadline) {
      throw new Error(
        `Open vSwitch did not come up within ${timeoutMs} ms (ovs-ctl exited ${start.code}: ${start.stderr.trim().slice(-500)}); see /var/log/openvswitch/`,
      );
    }
    await sleep(200);
  }
}
