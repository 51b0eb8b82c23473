// The agent's RPM, built by agent/packaging/build-rpm.sh into a temp dir and checked from the
// outside with rpm's own tools: file list and modes, metadata, dependencies, scriptlets, rpmlint
// (with only the filters of kloudak-agent.rpmlintrc), and the extracted payload — the bundled
// agent runs, its journald addon loads from the payload, the unit passes systemd-analyze, the
// default config is valid for the agent's config loader and documents every setting.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { fork, spawnSync, type SpawnSyncOptions } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { Cleanup } from '@kloudak/testkit';

const ROOT = fileURLToPath(new URL('../../../', import.meta.url));
const PACKAGING = join(ROOT, 'agent', 'packaging');
const BUILD_RPM = join(PACKAGING, 'build-rpm.sh');
const RPMLINTRC = join(PACKAGING, 'kloudak-agent.rpmlintrc');
const AGENT_VERSION = (JSON.parse(readFileSync(join(ROOT, 'agent', 'package.json'), 'utf8')) as { version: string }).version;
/** rpm cannot hold '-' in a version: build-rpm.sh maps a semver pre-release to '~'. */
const RPM_VERSION = AGENT_VERSION.replace(/-/g, '~');
const BUNDLE = '/usr/lib/kloudak-agent/kloudak-agent.mjs';

/** Runs a command to completion; fails the test with its output when it exits non-zero. */
function run(cmd: string, args: readonly string[], opts: SpawnSyncOptions = {}): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: 120_000, maxBuffer: 64 * 1024 * 1024, ...opts });
  if (r.error) throw r.error;
  const out = String(r.stdout ?? '');
  assert.equal(r.status, 0, `${cmd} ${args.join(' ')} exited ${r.status ?? r.signal}:\n${out}\n${String(r.stderr ?? '')}`);
  return out;
}

function has(cmd: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' }).status === 0;
}

/** The agent's config module, built by `tsc -b agent` (agent/src/config.ts). */
interface AgentConfigModule {
  AgentConfigSchema: { properties: Record<string, unknown> };
  /** Settings only the environment may set (a file that holds them is refused). */
  ENV_ONLY_SETTINGS: ReadonlySet<string>;
  loadAgentConfig(inputs: { argv?: readonly string[]; env?: NodeJS.ProcessEnv }): Record<string, unknown>;
}

describe('the kloudak-agent RPM', () => {
  const cleanup = new Cleanup();
  let work = '';
  let rpm = '';
  let payload = '';
  const query = (...args: string[]) => run('rpm', ['-qp', ...args, rpm]);

  before(() => {
    work = mkdtempSync(join(tmpdir(), 'kloudak-rpm-e2e-'));
    cleanup.add(() => rmSync(work, { recursive: true, force: true }));
    // --no-tsc: the test command has built agent/dist already. TMPDIR: the script's own temp
    // dir lands under ours, so even a killed build leaves nothing behind.
    const out = run('bash', [BUILD_RPM, '--no-tsc', '--out', join(work, 'out')], { env: { ...process.env, TMPDIR: work } });
    rpm = out.trim().split('\n').at(-1) ?? '';
    assert.ok(rpm.endsWith('.x86_64.rpm') && existsSync(rpm), `build-rpm.sh printed no .rpm path: ${out}`);
    payload = join(work, 'root');
    mkdirSync(payload);
    run('sh', ['-c', 'rpm2cpio "$1" | cpio -idm --quiet --no-absolute-filenames', 'sh', rpm], { cwd: payload });
  });
  after(() => cleanup.run());

  it('holds the bundle, the journald addon, the wrapper, the unit, the config and the state dirs', () => {
    const files = new Set(query('-l').trim().split('\n'));
    const expected = [
      '/usr/bin/kloudak-agent',
      '/usr/lib/kloudak-agent',
      BUNDLE,
      '/usr/lib/kloudak-agent/node_modules/systemd-journald/package.json',
      '/usr/lib/kloudak-agent/node_modules/systemd-journald/index.js',
      '/usr/lib/kloudak-agent/node_modules/systemd-journald/log.js',
      '/usr/lib/kloudak-agent/node_modules/systemd-journald/LICENSE',
      '/usr/lib/kloudak-agent/node_modules/systemd-journald/build/Release/journal_send.node',
      '/usr/lib/systemd/system/kloudak-agent.service',
      '/etc/kloudak',
      '/etc/kloudak/agent.yaml',
      '/etc/kloudak/agent.env',
      '/etc/logrotate.d/kloudak-agent',
      '/var/lib/kloudak-agent',
      '/var/log/kloudak',
      '/var/log/kloudak/console',
      '/usr/share/doc/kloudak-agent',
      '/usr/share/doc/kloudak-agent/README.md',
      '/usr/share/licenses/kloudak-agent',
      '/usr/share/licenses/kloudak-agent/THIRD-PARTY-LICENSES',
    ];
    for (const f of expected) assert.ok(files.has(f), `${f} is not in the RPM:\n${[...files].join('\n')}`);
    for (const f of files) {
      assert.ok(expected.includes(f) || f.startsWith('/usr/lib/kloudak-agent/node_modules'), `unexpected file in the RPM: ${f}`);
    }
    // Nothing of the build leaks in: no sources, maps or test files of the addon.
    assert.ok(![...files].some((f) => /\.(ts|map|cc|gyp)$|\/(src|test|obj\.target)\//.test(f)), 'build leftovers in the RPM');

    // Modes, owners and config flags: secrets are root-only, config files are noreplace.
    const attrs = new Map(
      query('--qf', '[%{FILENAMES}\t%{FILEMODES:perms}\t%{FILEFLAGS:fflags}\t%{FILEUSERNAME}:%{FILEGROUPNAME}\n]')
        .trim()
        .split('\n')
        .map((l) => {
          const [name, perms, flags, owner] = l.split('\t');
          return [name ?? '', { perms, flags, owner }] as const;
        }),
    );
    assert.deepEqual(attrs.get('/etc/kloudak/agent.yaml'), { perms: '-rw-r-----', flags: 'cn', owner: 'root:root' });
    assert.deepEqual(attrs.get('/etc/kloudak/agent.env'), { perms: '-rw-------', flags: 'cn', owner: 'root:root' });
    assert.equal(attrs.get('/var/lib/kloudak-agent')?.perms, 'drwx------');
    assert.equal(attrs.get('/var/log/kloudak/console')?.perms, 'drwxr-x---');
    assert.equal(attrs.get('/usr/bin/kloudak-agent')?.perms, '-rwxr-xr-x');
    for (const [name, a] of attrs) assert.equal(a.owner, 'root:root', `${name} is owned by ${a.owner}`);
  });

  it('is kloudak-agent, the agent version, x86_64, with a licence', () => {
    const [name, version, arch, license] = query('--qf', '%{NAME}\n%{VERSION}\n%{ARCH}\n%{LICENSE}\n').split('\n');
    assert.equal(name, 'kloudak-agent');
    assert.equal(version, RPM_VERSION);
    assert.equal(arch, 'x86_64');
    assert.match(license ?? '', /^Proprietary AND /, 'Kloudak (no licence file: Proprietary) AND the bundled npm licences');
    assert.match(license ?? '', /\bMIT\b/);
    const info = query('-i');
    assert.match(info, /^Name\s*: kloudak-agent$/m);
    assert.match(info, new RegExp(`^Version\\s*: ${RPM_VERSION.replace(/[.~]/g, '\\$&')}$`, 'm'));
    assert.match(info, /^Architecture: x86_64$/m);
    assert.match(info, /^License\s*: Proprietary/m);
    // Bundled npm code is declared, the private addon is not offered to other packages.
    const provides = query('--provides');
    assert.match(provides, /^bundled\(npm\(@grpc\/grpc-js\)\) = /m);
    assert.match(provides, /^bundled\(npm\(systemd-journald\)\) = /m);
    assert.doesNotMatch(provides, /journal_send/);
  });

  it('requires Node.js 22 (with EL epoch), libvirt, ovs-vsctl, xorriso and libsystemd: exactly what the README lists', () => {
    const requires = query('--requires').split('\n').map((l) => l.trim()).filter((l) => l !== '');
    // What a host must provide: not rpm's own features (rpmlib(...), rtld(...)), the scriptlet
    // shell or the package's own config() marker; a library's symbol versions count as the library.
    const deps = [
      ...new Set(
        requires
          .filter((r) => !/^(rpmlib|rtld|config)\(/.test(r) && r !== '/bin/sh')
          .map((r) => r.replace(/^(lib\S+\.so\.\d+)\([^)]+\)\(64bit\)$/, '$1()(64bit)')),
      ),
    ].sort();
    // Each is in EL9's BaseOS or AppStream, or (ovs-vsctl) the NFV SIG / RDO, and README.md's
    // table says which; a new one must be checked against EL9 and added there first.
    assert.deepEqual(
      deps,
      [
        '/usr/bin/ovs-vsctl',
        '/usr/bin/systemd-notify',
        'libc.so.6()(64bit)',
        'libsystemd.so.0()(64bit)',
        'libvirt-daemon-kvm',
        'logrotate',
        'nodejs >= 1:22',
        'systemd',
        'xorriso',
      ],
      `Requires:\n${requires.join('\n')}`,
    );
    assert.ok(!requires.some((r) => r.includes('genisoimage')), 'genisoimage is not in EL9 or EL10: never a dependency');
    // The README documents each one.
    const readme = readFileSync(join(PACKAGING, 'README.md'), 'utf8');
    for (const r of deps) assert.ok(readme.includes(`| \`${r}\``), `README.md's table does not say where ${r} comes from`);
  });

  it('has the systemd scriptlets: preset on install, disable on removal, restart on upgrade', () => {
    const scripts = query('--scripts');
    // Either the EL macros (systemd-update-helper) or the spec's plain fallbacks (systemctl).
    const parts = scripts.split(/^(\w+) scriptlet.*\n/m); // [before, name, body, name, body, ...]
    const bodies = new Map<string, string>();
    for (let i = 1; i + 1 < parts.length; i += 2) bodies.set(parts[i] ?? '', parts[i + 1] ?? '');
    const section = (name: string) => {
      const body = bodies.get(name);
      assert.ok(body !== undefined, `no ${name} scriptlet:\n${scripts}`);
      return body;
    };
    assert.match(section('postinstall'), /(systemctl --no-reload preset|systemd-update-helper install-system-units) kloudak-agent\.service/);
    assert.match(section('preuninstall'), /(systemctl --no-reload disable --now|systemd-update-helper remove-system-units) kloudak-agent\.service/);
    assert.match(section('postuninstall'), /(systemctl try-restart|systemd-update-helper mark-restart-system-units) kloudak-agent\.service/);
  });

  it('passes rpmlint with only the filters of kloudak-agent.rpmlintrc', () => {
    const r = spawnSync('rpmlint', ['-r', RPMLINTRC, rpm], { encoding: 'utf8', timeout: 60_000 });
    if (r.error) throw r.error;
    const out = `${r.stdout}${r.stderr}`;
    assert.equal(r.status, 0, `rpmlint found problems:\n${out}`);
    assert.match(out, /\b0 errors, 0 warnings\b/, out);
  });

  it('the bundle forks as the fence guard (`fence-guard`, as the agent forks its own program): it starts, and exits when released', async () => {
    const bundle = join(payload, BUNDLE);
    const dir = mkdtempSync(join(tmpdir(), 'krpm-guard-'));
    cleanup.add(() => rmSync(dir, { recursive: true, force: true }));
    const settings = { runDir: join(dir, 'run'), dataDir: dir, graceMs: 1000, logLevel: 'info', logTarget: 'stdout', underSystemd: false };
    const child = fork(bundle, ['fence-guard'], { cwd: work, env: { PATH: process.env['PATH'] ?? '', KLOUDAK_AGENT_FENCE_GUARD_SETTINGS: JSON.stringify(settings) }, stdio: ['ignore', 'pipe', 'pipe', 'ipc'] });
    let out = '';
    child.stdout?.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr?.on('data', (d: Buffer) => (out += d.toString()));
    const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
    const deadline = Date.now() + 10_000;
    while (!out.includes('fence guard started')) {
      assert.ok(Date.now() < deadline && child.exitCode === null, `the guard did not start:\n${out}`);
      await new Promise((r) => setTimeout(r, 25));
    }
    child.send({ type: 'release' });
    assert.equal(await exited, 0, out);
    // Without the agent's IPC channel it refuses to run.
    const alone = spawnSync(process.execPath, [bundle, 'fence-guard'], { encoding: 'utf8', env: { KLOUDAK_AGENT_FENCE_GUARD_SETTINGS: JSON.stringify(settings) } });
    assert.equal(alone.status, 2, alone.stderr);
    assert.match(alone.stderr, /started by the agent only/);
  });

  it('runs: the extracted bundle prints the version, through the wrapper\'s own command line', () => {
    const bundle = join(payload, BUNDLE);
    assert.equal(run(process.execPath, [bundle, '--version'], { cwd: work }).trim(), AGENT_VERSION);
    const wrapper = readFileSync(join(payload, 'usr/bin/kloudak-agent'), 'utf8');
    assert.match(wrapper, /^#!\/bin\/sh\n/);
    assert.match(wrapper, new RegExp(`^exec /usr/bin/node ${BUNDLE} "\\$@"$`, 'm'));
    // The bundle is self-contained apart from node built-ins and the journald addon.
    const text = readFileSync(bundle, 'utf8');
    assert.doesNotMatch(text, /^#!/, 'the shebang is stripped (the wrapper runs the bundle)');
    const imports = [...text.matchAll(/^import\b[^;\n]*?from\s*["']([^"']+)["']/gm)].map((m) => m[1]);
    assert.ok(imports.length > 0, 'the bundle imports node built-ins (its banner at least)');
    for (const spec of imports) assert.match(spec ?? '', /^node:/, `the bundle imports ${spec}: not bundled`);
  });

  it('loads the journald addon from the extracted tree, the way the bundle resolves it', () => {
    // A child process: the addon is resolved from the bundle's directory (as the agent's
    // createRequire(import.meta.url) does), never from the repository's node_modules.
    const probe =
      'const req = require("node:module").createRequire(process.argv[1]);' +
      'const path = req.resolve("systemd-journald");' +
      'const j = req("systemd-journald");' +
      'if (typeof j.info !== "function" || typeof j.err !== "function") throw new Error("not the journald binding");' +
      'process.stdout.write(path);';
    const resolved = run(process.execPath, ['-e', probe, join(payload, BUNDLE)], { cwd: work });
    assert.equal(resolved, join(payload, 'usr/lib/kloudak-agent/node_modules/systemd-journald/index.js'));
  });

  it('ships a unit that systemd-analyze verify accepts', (t) => {
    if (!has('systemd-analyze')) {
      t.skip('systemd-analyze is not installed');
      return;
    }
    // --root: verify against the payload (so ExecStart exists), with the system's own units for
    // the targets it names.
    const units = '/usr/lib/systemd/system';
    if (!existsSync(join(units, 'multi-user.target'))) {
      t.skip(`no systemd units in ${units}`);
      return;
    }
    cpSync(units, join(payload, units), { recursive: true, force: false, errorOnExist: false, verbatimSymlinks: true });
    const r = spawnSync('systemd-analyze', ['verify', '--man=no', `--root=${payload}`, `${units}/kloudak-agent.service`], {
      encoding: 'utf8',
      timeout: 30_000,
    });
    if (r.error) throw r.error;
    assert.equal(r.status, 0, `${r.stdout}${r.stderr}`);
    assert.equal(`${r.stdout}${r.stderr}`.trim(), '', 'systemd-analyze verify printed warnings');
    const unit = readFileSync(join(payload, units, 'kloudak-agent.service'), 'utf8');
    for (const line of ['Type=notify', 'NotifyAccess=all', 'ExecStart=/usr/bin/kloudak-agent', 'EnvironmentFile=-/etc/kloudak/agent.env', 'Restart=on-failure']) {
      assert.match(unit, new RegExp(`^${line.replace(/[.*+?^${}()|[\]\\/-]/g, '\\$&')}$`, 'm'));
    }
  });

  it("ships a default config the agent's loader accepts, documenting every setting", async (t) => {
    const configJs = join(ROOT, 'agent', 'dist', 'config.js');
    if (!existsSync(configJs)) {
      t.skip('agent/dist/config.js is not built');
      return;
    }
    const { AgentConfigSchema, ENV_ONLY_SETTINGS, loadAgentConfig } = (await import(pathToFileURL(configJs).href)) as AgentConfigModule;
    const shipped = join(payload, 'etc/kloudak/agent.yaml');

    // As shipped (every setting commented out): the defaults of a production host.
    const cfg = loadAgentConfig({ argv: [], env: { KLOUDAK_AGENT_CONFIG: shipped } });
    assert.equal(cfg['libvirtUri'], 'qemu:///system');
    assert.equal(cfg['domainType'], 'kvm');
    assert.equal(cfg['ovsDatapath'], 'system');
    assert.equal(cfg['nicOffload'], true);
    assert.equal(cfg['heartbeatMs'], 1000);
    assert.equal(cfg['fenceLeaseMs'], 15000);
    assert.equal(cfg['bridge'], 'br-vm');
    assert.equal(cfg['dataDir'], '/var/lib/kloudak-agent');
    assert.equal(cfg['consoleDir'], '/var/log/kloudak/console');

    // Every commented `#key: value` is a real setting with a valid example value...
    const text = readFileSync(shipped, 'utf8');
    const documented = [...text.matchAll(/^#([A-Za-z]+): /gm)].map((m) => m[1] ?? '');
    const uncommented = join(work, 'agent.all.yaml');
    writeFileSync(uncommented, text.replace(/^#([A-Za-z]+): /gm, '$1: '));
    assert.doesNotThrow(() => loadAgentConfig({ argv: [], env: { KLOUDAK_AGENT_CONFIG: uncommented } }));
    // ...and every setting a file may hold is documented (the env-only ones cannot be set there).
    assert.ok(ENV_ONLY_SETTINGS.has('notifySocket'), 'the loader says which settings are environment-only');
    const settings = Object.keys(AgentConfigSchema.properties).filter((k) => !ENV_ONLY_SETTINGS.has(k));
    const missing = settings.filter((k) => !documented.includes(k));
    assert.deepEqual(missing, [], `settings missing from agent/packaging/agent.yaml: ${missing.join(', ')}`);
  });
});
