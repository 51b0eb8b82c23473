/**
 * A libvirt-like QEMU run directory for fencing tests, without libvirtd: real QEMU processes
 * (`-machine none -S`: no guest, no CPU use) started as libvirt starts them (`-name guest=<domain>`,
 * `-pidfile <runDir>/<domain>.pid`), with the status XML libvirt keeps next to the pid file.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { domainName } from '../names.js';
import { DEFAULT_HOST_SETTINGS } from '../settings.js';
import { domainXml } from '../xml/domain.js';

/** A status XML as libvirt's QEMU driver keeps it in its run dir: the live domain XML inside `<domstatus>`. */
export function statusXml(vmId: string, ha: boolean, pid: number): string {
  const settings = { ...DEFAULT_HOST_SETTINGS, domainType: 'qemu' as const, consoleDir: '/tmp', seedDir: '/tmp' };
  const spec = { vmId, hostname: 'g', cpu: 1, ramMb: 128, diskGb: 1, pool: 'p', templateVolume: 't', nics: [], sshKeys: [], ha };
  const domain = domainXml(spec, settings).replace(/^<domain /, "<domain id='7' ");
  return `<!--\nWARNING: THIS IS AN AUTO-GENERATED FILE.\n-->\n<domstatus state='running' reason='booted' pid='${pid}'>\n  <monitor path='/var/lib/libvirt/qemu/domain-7/monitor.sock' type='unix'/>\n  ${domain}\n</domstatus>\n`;
}

/** A QEMU process started by {@link startRunDirQemu}. */
export interface RunDirQemu {
  vmId: string;
  name: string;
  pid: number;
  child: ChildProcess;
  /** Resolves with the signal that ended it (null: it exited by itself). */
  exited: Promise<NodeJS.Signals | null>;
  /** Whether it still runs. */
  running(): boolean;
}

/** Starts a QEMU for `vmId` with its pid file and status XML in `runDir`. Kill it (SIGKILL) when done. */
export async function startRunDirQemu(runDir: string, vmId: string, ha: boolean): Promise<RunDirQemu> {
  const name = domainName(vmId);
  const pidfile = join(runDir, `${name}.pid`);
  const args = ['-name', `guest=${name},debug-threads=on`, '-machine', 'none', '-nodefaults', '-display', 'none', '-monitor', 'none', '-serial', 'none', '-S', '-pidfile', pidfile];
  const child = spawn('qemu-system-x86_64', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr?.on('data', (b: Buffer) => (stderr += b.toString()));
  let alive = true;
  const exited = new Promise<NodeJS.Signals | null>((resolve) =>
    child.once('exit', (_code, signal) => {
      alive = false;
      resolve(signal);
    }),
  );
  const deadline = Date.now() + 10_000;
  while (!existsSync(pidfile) || readFileSync(pidfile, 'utf8').trim() === '') {
    if (!alive || Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`QEMU did not start: ${stderr}`);
    }
    await new Promise((r) => setTimeout(r, 20));
  }
  const pid = Number(readFileSync(pidfile, 'utf8').trim());
  if (pid !== child.pid) throw new Error(`pid file says ${pid}, QEMU is ${child.pid}`);
  writeFileSync(join(runDir, `${name}.xml`), statusXml(vmId, ha, pid));
  return { vmId, name, pid, child, exited, running: () => alive };
}
