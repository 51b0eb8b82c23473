/**
 * Fencing without libvirtd (AGENT-LINK.md, "Self-fencing"): when libvirt does not answer, the
 * agent finds the running HA domains from what libvirt's QEMU driver leaves in its run directory
 * (`/run/libvirt/qemu` for qemu:///system) and kills their QEMU processes itself:
 *
 * - `<domain>.pid` holds the QEMU's pid;
 * - `<domain>.xml` is the domain's status XML (`<domstatus><domain>…`), with Kloudak's metadata,
 *   which tells an HA domain from the others ({@link isHaDomainXml}); non-HA domains keep running.
 *
 * A pid file may be stale (the QEMU died and its pid was reused by an unrelated process), so a pid
 * is killed only when `/proc/<pid>/cmdline` shows the QEMU of that very domain: `-name guest=<domain>`
 * (libvirt's form) or `-name <domain>`. The kill is SIGKILL: another host may be about to start
 * the same VM, so there is no graceful shutdown (like libvirt's destroy). When libvirtd comes back
 * it sees the monitor close and marks the domain shut off.
 */
import { readdir, readFile } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { isHaDomainXml } from './ha-xml.js';

/** A domain found in the run directory. */
export interface QemuPidfileEntry {
  domainName: string;
  /** The pid in `<domain>.pid`, or null when the file does not hold one. */
  pid: number | null;
  /** Whether `<domain>.xml` exists and marks the domain HA. */
  ha: boolean;
}

/** Where the pid files are and how to kill (injectable for unit tests; defaults are the real ones). */
export interface QemuPidfilesOptions {
  /** libvirt's QEMU run directory (`qemuRunDir` in the agent config). */
  runDir: string;
  /** Root of the process table (default `/proc`). */
  procDir?: string;
  /** Sends a signal (default `process.kill`). */
  kill?: (pid: number, signal: NodeJS.Signals) => void;
  /** How long to wait for a killed QEMU to be gone (default 5000 ms). */
  exitTimeoutMs?: number;
}

/** What a {@link QemuPidfiles.killHa} pass did. */
export interface PidfileKillResult {
  /** Domains whose QEMU was killed (and is gone) by this pass. */
  killed: Array<{ domainName: string; pid: number }>;
  /** HA domains found with no live QEMU of theirs (a stale pid file): nothing to kill. */
  notRunning: string[];
  failures: Array<{ domainName: string; error: string }>;
}

/**
 * The guest name given to QEMU by `-name` in a NUL-separated `/proc/<pid>/cmdline`, or null (also
 * when the program is not a QEMU: a wrapper such as `timeout qemu-system-x86_64 -name …` is not
 * the QEMU). libvirt passes `-name guest=<name>,debug-threads=on`; QEMU also takes `-name <name>,…`.
 * A comma inside a value is doubled (QEMU's option syntax).
 */
export function qemuGuestName(cmdline: string | Uint8Array): string | null {
  const text = typeof cmdline === 'string' ? cmdline : Buffer.from(cmdline).toString('utf8');
  const argv = text.split('\0');
  // qemu-system-<arch>, qemu-kvm (/usr/libexec/qemu-kvm on EL), …
  if (!/qemu/i.test(basename(argv[0] ?? ''))) return null;
  for (let i = 1; i < argv.length; i++) {
    const a = argv[i]!;
    let value: string | undefined;
    if (a === '-name' || a === '--name') value = argv[i + 1];
    else if (a.startsWith('-name=') || a.startsWith('--name=')) value = a.slice(a.indexOf('=') + 1);
    if (value === undefined) continue;
    const opts = splitQemuOptions(value);
    const first = opts[0] ?? '';
    for (const o of opts) if (o.startsWith('guest=')) return o.slice('guest='.length);
    // The implied key of -name is `guest`: a first item without '=' is the name.
    return first !== '' && !first.includes('=') ? first : null;
  }
  return null;
}

/** Splits `a=b,c=d` at single commas (`,,` is a literal comma). */
function splitQemuOptions(s: string): string[] {
  const out: string[] = [];
  let cur = '';
  for (let i = 0; i < s.length; i++) {
    if (s[i] === ',') {
      if (s[i + 1] === ',') {
        cur += ',';
        i++;
        continue;
      }
      out.push(cur);
      cur = '';
    } else cur += s[i];
  }
  out.push(cur);
  return out;
}

/** The pid in a pid file's text (libvirt writes the bare number), or null. */
export function parsePidfile(text: string): number | null {
  const t = text.trim();
  if (!/^[1-9][0-9]{0,9}$/.test(t)) return null;
  const n = Number(t);
  return n > 1 && n <= 0x3fffffff ? n : null;
}

/** See the module comment. */
export class QemuPidfiles {
  private readonly procDir: string;
  private readonly kill: (pid: number, signal: NodeJS.Signals) => void;

  constructor(private readonly o: QemuPidfilesOptions) {
    this.procDir = o.procDir ?? '/proc';
    this.kill = o.kill ?? ((pid, sig) => process.kill(pid, sig));
  }

  get runDir(): string {
    return this.o.runDir;
  }

  /** The domains with a pid file in the run directory (a missing directory: none). */
  async list(): Promise<QemuPidfileEntry[]> {
    let names: string[];
    try {
      names = await readdir(this.o.runDir);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw err;
    }
    const out: QemuPidfileEntry[] = [];
    for (const file of names.filter((n) => n.endsWith('.pid')).sort()) {
      const domainName = file.slice(0, -'.pid'.length);
      // libvirt's own files there (driver.pid) have no status XML: never a domain.
      const xml = await readOptional(join(this.o.runDir, `${domainName}.xml`));
      if (xml === null) continue;
      const pidText = await readOptional(join(this.o.runDir, file));
      out.push({ domainName, pid: pidText === null ? null : parsePidfile(pidText), ha: isHaDomainXml(xml) });
    }
    return out;
  }

  /** The guest name of a live process (null: gone, a zombie, or not a QEMU with -name). */
  async guestOf(pid: number): Promise<string | null> {
    try {
      const cmdline = await readFile(join(this.procDir, String(pid), 'cmdline'));
      return qemuGuestName(cmdline);
    } catch {
      return null;
    }
  }

  /**
   * Kills (SIGKILL) the QEMU of every HA domain in the run directory (of `only` when given) and
   * waits for each to be gone. Never throws for one domain: its failure is listed.
   */
  async killHa(only?: ReadonlySet<string>): Promise<PidfileKillResult> {
    const result: PidfileKillResult = { killed: [], notRunning: [], failures: [] };
    const entries = (await this.list()).filter((e) => e.ha && (only === undefined || only.has(e.domainName)));
    await Promise.all(
      entries.map(async (e) => {
        if (e.pid === null) {
          result.notRunning.push(e.domainName);
          return;
        }
        // The pid must be that domain's QEMU now: a stale pid file's pid may belong to anyone.
        if ((await this.guestOf(e.pid)) !== e.domainName) {
          result.notRunning.push(e.domainName);
          return;
        }
        try {
          this.kill(e.pid, 'SIGKILL');
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code === 'ESRCH') {
            result.notRunning.push(e.domainName);
            return;
          }
          result.failures.push({ domainName: e.domainName, error: `cannot kill QEMU pid ${e.pid}: ${(err as Error).message}` });
          return;
        }
        if (await this.waitGone(e.pid, e.domainName)) result.killed.push({ domainName: e.domainName, pid: e.pid });
        else result.failures.push({ domainName: e.domainName, error: `QEMU pid ${e.pid} still runs ${this.o.exitTimeoutMs ?? 5000} ms after SIGKILL` });
      }),
    );
    return result;
  }

  /** Whether the process is gone (or a zombie: dead, waiting to be reaped) within the timeout. */
  private async waitGone(pid: number, domainName: string): Promise<boolean> {
    const deadline = Date.now() + (this.o.exitTimeoutMs ?? 5000);
    for (;;) {
      if (!(await this.alive(pid, domainName))) return true;
      if (Date.now() >= deadline) return false;
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  private async alive(pid: number, domainName: string): Promise<boolean> {
    let stat: string;
    try {
      stat = await readFile(join(this.procDir, String(pid), 'stat'), 'utf8');
    } catch {
      return false;
    }
    // Field 3, after the parenthesised command (which may itself hold ')').
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
    if (state === 'Z' || state === 'X' || state === 'x') return false;
    // A new process that took the pid meanwhile is not ours.
    return (await this.guestOf(pid)) === domainName;
  }
}

async function readOptional(path: string): Promise<string | null> {
  try {
    return await readFile(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw err;
  }
}
