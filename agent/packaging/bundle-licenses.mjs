#!/usr/bin/env node
// Third-party notices of the agent's RPM, from esbuild's metafile (called by build-rpm.sh).
//
//   node bundle-licenses.mjs METAFILE OUTDIR [EXTRA_PACKAGE_DIR...]
//
// Every npm package with code in the bundle (an input under node_modules/), plus each
// EXTRA_PACKAGE_DIR (packages shipped beside the bundle, such as systemd-journald), gets:
//   OUTDIR/THIRD-PARTY-LICENSES   name, version, declared license and the text of its licence files
//                                 (MIT, ISC, BSD and Apache-2.0 all require shipping the notice);
//   OUTDIR/bundled-provides.inc   `Provides: bundled(npm(NAME)) = VERSION`, included by the spec
//                                 (the Fedora convention for bundled code, so it can be audited);
// and stdout gets the SPDX expression of their licences joined with AND, for the spec's License.
// Workspace packages (@kloudak/*, resolved to packages/*/dist) are Kloudak's own code: skipped.
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';

const [metafile, outDir, ...extraDirs] = process.argv.slice(2);
if (!metafile || !outDir) {
  process.stderr.write('usage: bundle-licenses.mjs METAFILE OUTDIR [EXTRA_PACKAGE_DIR...]\n');
  process.exit(2);
}

/** The package directory of an input path: up to the last node_modules/NAME or node_modules/@SCOPE/NAME. */
function packageDirOf(input) {
  const parts = input.split('/');
  const i = parts.lastIndexOf('node_modules');
  if (i === -1) return undefined;
  const scoped = parts[i + 1]?.startsWith('@');
  return parts.slice(0, i + (scoped ? 3 : 2)).join('/');
}

const meta = JSON.parse(readFileSync(metafile, 'utf8'));
const dirs = new Set();
for (const input of Object.keys(meta.inputs)) {
  const dir = packageDirOf(input);
  if (dir !== undefined) dirs.add(resolve(dir));
}
for (const d of extraDirs) dirs.add(resolve(d));

const packages = [...dirs]
  .map((dir) => {
    const pkg = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8'));
    const license = typeof pkg.license === 'string' ? pkg.license : pkg.license?.type;
    if (!license) throw new Error(`${dir}: package.json declares no license`);
    const files = readdirSync(dir)
      .filter((f) => /^(licen[cs]e|copying|notice)/i.test(f))
      .sort();
    return { name: pkg.name, version: pkg.version, license, dir, files };
  })
  .sort((a, b) => (a.name === b.name ? a.version.localeCompare(b.version) : a.name.localeCompare(b.name)));

let text =
  'Third-party software in the kloudak-agent package\n' +
  '===================================================\n\n' +
  'The agent bundle (/usr/lib/kloudak-agent/kloudak-agent.mjs) contains code of the npm packages\n' +
  'below; node_modules/ beside it holds the native ones. Their licences follow.\n';
for (const p of packages) {
  text += `\n\n---------------------------------------------------------------------------\n`;
  text += `${p.name} ${p.version} — ${p.license}\n`;
  text += `---------------------------------------------------------------------------\n`;
  if (p.files.length === 0) text += `\n(The package ships no licence file; package.json declares "${p.license}".)\n`;
  for (const f of p.files) text += `\n${f}:\n\n${readFileSync(join(p.dir, f), 'utf8').trimEnd()}\n`;
}
writeFileSync(join(outDir, 'THIRD-PARTY-LICENSES'), text);

const seen = new Set();
const provides = packages
  .filter((p) => !seen.has(p.name) && seen.add(p.name))
  .map((p) => `Provides: bundled(npm(${p.name})) = ${p.version}\n`)
  .join('');
writeFileSync(join(outDir, 'bundled-provides.inc'), provides);

// "(A AND B)" adds A and B; an expression with OR stays one parenthesised term.
const terms = new Set();
for (const p of packages) {
  const expr = p.license.trim().replace(/^\((.*)\)$/, '$1');
  if (/\sOR\s/i.test(expr)) terms.add(`(${expr})`);
  else for (const t of expr.split(/\s+AND\s+/i)) terms.add(t.trim());
}
const spdx = [...terms].sort();
process.stdout.write(`${spdx.join(' AND ')}\n`);
