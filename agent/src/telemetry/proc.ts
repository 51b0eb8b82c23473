/**
 * Host usage from /proc: CPU busy % from the deltas of /proc/stat's aggregate `cpu` line, memory
 * in use as MemTotal − MemAvailable from /proc/meminfo. Parsers are pure; the sampler reads files
 * through an injectable reader so tests can feed it any text.
 */
import { readFile } from 'node:fs/promises';

/** Cumulative CPU time (in USER_HZ ticks) of all CPUs: busy and total. */
export interface CpuTimes {
  busy: bigint;
  total: bigint;
}

/**
 * Parses the aggregate `cpu` line of /proc/stat. Idle time is `idle + iowait`; busy is the rest of
 * user, nice, system, idle, iowait, irq, softirq, steal (guest time is already inside user/nice).
 */
export function parseProcStat(text: string): CpuTimes {
  const line = text.split('\n').find((l) => /^cpu\s/.test(l));
  if (!line) throw new Error('/proc/stat has no aggregate cpu line');
  const f = line.trim().split(/\s+/).slice(1, 9).map((v) => BigInt(v));
  if (f.length < 4) throw new Error(`/proc/stat cpu line is too short: ${line}`);
  while (f.length < 8) f.push(0n);
  const total = f.reduce((a, b) => a + b, 0n);
  const idle = f[3]! + f[4]!;
  return { busy: total - idle, total };
}

/** CPU busy % between two samples, 0..100 (0 when no time passed). */
export function cpuPercentBetween(prev: CpuTimes, cur: CpuTimes): number {
  const dTotal = cur.total - prev.total;
  const dBusy = cur.busy - prev.busy;
  if (dTotal <= 0n || dBusy < 0n) return 0;
  const pct = (Number(dBusy) / Number(dTotal)) * 100;
  return Math.min(100, Math.max(0, pct));
}

/** Memory figures of /proc/meminfo, in bytes. */
export interface MemInfo {
  totalBytes: bigint;
  availableBytes: bigint;
  usedBytes: bigint;
}

/** Parses /proc/meminfo (values in kB). Kernels older than 3.14 lack MemAvailable: MemFree + Buffers + Cached then. */
export function parseMeminfo(text: string): MemInfo {
  const kb = new Map<string, bigint>();
  for (const line of text.split('\n')) {
    const m = /^(\w+(?:\(\w+\))?):\s+(\d+)(?:\s+kB)?$/.exec(line.trim());
    if (m) kb.set(m[1]!, BigInt(m[2]!) * 1024n);
  }
  const total = kb.get('MemTotal');
  if (total === undefined) throw new Error('/proc/meminfo has no MemTotal');
  const available = kb.get('MemAvailable') ?? (kb.get('MemFree') ?? 0n) + (kb.get('Buffers') ?? 0n) + (kb.get('Cached') ?? 0n);
  const used = total > available ? total - available : 0n;
  return { totalBytes: total, availableBytes: available, usedBytes: used };
}

/** Reads a file as text. */
export type TextReader = (path: string) => Promise<string>;

/** Host-wide usage. */
export interface HostUsageSample {
  cpuPercent: number;
  memoryUsedBytes: bigint;
  memoryTotalBytes: bigint;
}

/** Samples /proc: each call reports CPU % since the previous call (the first, since boot). */
export class ProcSampler {
  private prev: CpuTimes | null = null;

  constructor(
    private readonly read: TextReader = (p) => readFile(p, 'utf8'),
    private readonly root = '/proc',
  ) {}

  async sample(): Promise<HostUsageSample> {
    const [stat, meminfo] = await Promise.all([this.read(`${this.root}/stat`), this.read(`${this.root}/meminfo`)]);
    const cur = parseProcStat(stat);
    const cpuPercent = cpuPercentBetween(this.prev ?? { busy: 0n, total: 0n }, cur);
    this.prev = cur;
    const mem = parseMeminfo(meminfo);
    return { cpuPercent, memoryUsedBytes: mem.usedBytes, memoryTotalBytes: mem.totalBytes };
  }

  /** MemTotal, in bytes. */
  async memoryTotal(): Promise<bigint> {
    return parseMeminfo(await this.read(`${this.root}/meminfo`)).totalBytes;
  }
}
