// cpuprofile-top — the top entries of a V8 CPU profile (`node --cpu-prof`), by self time and by
// inclusive time, grouped by function and file so that the same function reached along many call
// paths counts once. Used to read where a benchmarked server spends its CPU (bench/README.md).
//
//   node bench/dist/cpuprofile-top.js FILE.cpuprofile [N]      (N entries per table, default 25)
//
// Inclusive time counts a sample once per function even when the function is on the stack more
// than once (recursion), so it never exceeds 100 %. "(idle)" samples are left out of the
// percentages: they are the time the thread waited for work, not CPU it used.
import { readFileSync } from 'node:fs';

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}

interface Profile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
  startTime: number;
  endTime: number;
}

/** A short name for a frame: function, and the file relative to node_modules or the repository. */
function frameKey(n: ProfileNode): string {
  const f = n.callFrame;
  const name = f.functionName || '(anonymous)';
  if (!f.url) return name;
  let file = f.url.replace(/^file:\/\//, '');
  const nm = file.lastIndexOf('/node_modules/');
  if (nm !== -1) file = file.slice(nm + '/node_modules/'.length);
  else file = file.replace(/^.*?\/(orchestrator|packages|prisma|bench)\//, '$1/');
  return `${name} ${file}:${f.lineNumber + 1}`;
}

function main(): void {
  const [file, nArg] = process.argv.slice(2);
  if (!file) {
    console.error('usage: cpuprofile-top FILE.cpuprofile [N]');
    process.exit(2);
  }
  const n = Number(nArg ?? 25);
  const p = JSON.parse(readFileSync(file, 'utf8')) as Profile;
  const byId = new Map(p.nodes.map((x) => [x.id, x]));
  const parent = new Map<number, number>();
  for (const x of p.nodes) for (const c of x.children ?? []) parent.set(c, x.id);

  const self = new Map<string, number>();
  const incl = new Map<string, number>();
  let busyUs = 0;
  let idleUs = 0;
  for (let i = 0; i < p.samples.length; i++) {
    const dt = p.timeDeltas[i + 1] ?? 0; // the delta after a sample is the time it stands for
    const node = byId.get(p.samples[i] as number);
    if (!node) continue;
    if (node.callFrame.functionName === '(idle)') {
      idleUs += dt;
      continue;
    }
    busyUs += dt;
    const k = frameKey(node);
    self.set(k, (self.get(k) ?? 0) + dt);
    const seen = new Set<string>();
    for (let id: number | undefined = node.id; id !== undefined; id = parent.get(id)) {
      const f = byId.get(id);
      if (!f || f.callFrame.functionName === '(root)') continue;
      const key = frameKey(f);
      if (seen.has(key)) continue;
      seen.add(key);
      incl.set(key, (incl.get(key) ?? 0) + dt);
    }
  }
  const pct = (us: number) => ((100 * us) / busyUs).toFixed(1).padStart(5);
  const ms = (us: number) => (us / 1000).toFixed(0).padStart(7);
  console.log(`${file}: ${(busyUs / 1e6).toFixed(2)} s busy, ${(idleUs / 1e6).toFixed(2)} s idle (percentages of busy time)`);
  for (const [title, m] of [['self', self], ['inclusive', incl]] as const) {
    console.log(`\n${title}:`);
    console.log(`      ms      %  function`);
    for (const [k, us] of [...m].sort((a, b) => b[1] - a[1]).slice(0, n)) console.log(`${ms(us)}  ${pct(us)}  ${k}`);
  }
}

main();
