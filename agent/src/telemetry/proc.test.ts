import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { cpuPercentBetween, parseMeminfo, parseProcStat, ProcSampler } from './proc.js';

const STAT1 = `cpu  100 0 50 800 50 0 0 0 0 0
cpu0 50 0 25 400 25 0 0 0 0 0
intr 1 2 3
`;
const STAT2 = `cpu  160 0 90 860 50 0 0 0 0 0
cpu0 80 0 45 430 25 0 0 0 0 0
`;
const MEMINFO = `MemTotal:       16384000 kB
MemFree:         1000000 kB
MemAvailable:   12288000 kB
Buffers:          100000 kB
Cached:          2000000 kB
HugePages_Total:       0
`;

describe('/proc parsing', () => {
  it('reads busy and total ticks from the aggregate cpu line (iowait counts as idle)', () => {
    assert.deepEqual(parseProcStat(STAT1), { busy: 150n, total: 1000n });
  });

  it('computes CPU % from deltas', () => {
    // busy 150 → 250 (+100), total 1000 → 1160 (+160)
    assert.equal(cpuPercentBetween(parseProcStat(STAT1), parseProcStat(STAT2)), 62.5);
    assert.equal(cpuPercentBetween(parseProcStat(STAT2), parseProcStat(STAT2)), 0);
  });

  it('memory used is MemTotal − MemAvailable, in bytes', () => {
    const m = parseMeminfo(MEMINFO);
    assert.equal(m.totalBytes, 16384000n * 1024n);
    assert.equal(m.usedBytes, (16384000n - 12288000n) * 1024n);
  });

  it('falls back to MemFree + Buffers + Cached without MemAvailable', () => {
    const m = parseMeminfo(MEMINFO.replace(/MemAvailable.*\n/, ''));
    assert.equal(m.availableBytes, (1000000n + 100000n + 2000000n) * 1024n);
  });

  it('refuses text without the lines it needs', () => {
    assert.throws(() => parseProcStat('intr 1\n'));
    assert.throws(() => parseMeminfo('MemFree: 1 kB\n'));
  });

  it('the sampler reports the delta since its previous sample', async () => {
    const files = [STAT1, STAT2];
    const s = new ProcSampler(async (p) => (p.endsWith('stat') ? files.shift()! : MEMINFO));
    await s.sample();
    const second = await s.sample();
    assert.equal(second.cpuPercent, 62.5);
    assert.equal(second.memoryTotalBytes, 16384000n * 1024n);
  });

  it('reads the real /proc of this machine', async () => {
    const s = new ProcSampler();
    const u = await s.sample();
    assert.ok(u.memoryTotalBytes > 0n && u.memoryUsedBytes > 0n && u.memoryUsedBytes < u.memoryTotalBytes);
    assert.ok(u.cpuPercent >= 0 && u.cpuPercent <= 100);
  });
});
