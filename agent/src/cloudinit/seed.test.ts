/**
 * The NoCloud seed, checked by the real consumers:
 * - YAML: parsed back by PyYAML (python3-yaml, which cloud-init depends on; the parser cloud-init
 *   itself uses);
 * - user-data: `cloud-init schema --config-file` (Debian 12's cloud-init 22.4);
 * - network-config: rendered by `cloud-init devel net-convert` into networkd, ENI, sysconfig and
 *   netplan output (22.4's schema command has no network-config validation; rendering parses
 *   it for real, and fails on what it cannot use);
 * - the ISO: built with xorrisofs (package xorriso) and with the genisoimage fallback, inspected
 *   with isoinfo (package genisoimage); which program the builder finds is steered through the
 *   PATH of its runner (a directory of links to the real programs).
 */
import test, { after, before, describe } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { CommandResult, CommandRunner, RunOptions } from '../ports.js';
import type { NicSpec } from '../spec.js';
import { IsoSeedBuilder, metaData, networkConfig, SEED_LABEL, SeedToolMissingError, seedFiles, userData, yamlString } from './seed.js';
import { ProcessRunner } from '../system/command-runner.js';

const VM = '0c9e7b1a-3f4d-4e5a-9b6c-7d8e9f0a1b2c';
const NET = 'a1b2c3d4-0000-4000-8000-000000000001';
const KEY = 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGq8 user@laptop';
const HASH = '$6$rounds=4096$saltsaltsalt$3MEaFIbEBzG0bmRvYNSk4OZr3cq4jIeGmMBPKPdK9lz5V6eQpJ1SyRvrOGw9VkM2k9M4T9LzL1kK4xD8dQ1V8.';

/** The agent's ProcessRunner, recording what it ran. */
class TestRunner implements CommandRunner {
  readonly ran: string[][] = [];
  constructor(private readonly real: CommandRunner = new ProcessRunner()) {}
  run(argv: readonly string[], opts: RunOptions = {}): Promise<CommandResult> {
    this.ran.push([...argv]);
    return this.real.run(argv, opts);
  }
}

function run(cmd: string, args: string[], pkg: string): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  if (r.error) throw new Error(`cannot run ${cmd} (apt-get install ${pkg}): ${r.error.message}`);
  return r;
}

/** Parses YAML with PyYAML's safe loader (as cloud-init does) and returns it as JSON data. */
function parseYaml(doc: string): unknown {
  const r = spawnSync('python3', ['-c', 'import sys, json, yaml; print(json.dumps(yaml.safe_load(sys.stdin.read())))'], { input: doc, encoding: 'utf8' });
  if (r.error) throw r.error;
  assert.equal(r.status, 0, `PyYAML failed (apt-get install python3-yaml):\n${r.stderr}\n${doc}`);
  return JSON.parse(r.stdout) as unknown;
}

let dir: string;
before(() => {
  dir = mkdtempSync(join(tmpdir(), 'kloudak-seedtest-'));
});
after(() => rmSync(dir, { recursive: true, force: true }));
let n = 0;
function writeTemp(content: string): string {
  const f = join(dir, `f${n++}`);
  writeFileSync(f, content);
  return f;
}

describe('yamlString', () => {
  test('every string comes back exactly, including those YAML would read as something else', () => {
    const samples = [
      '52:54:00:12:34:56', // base-60 integer in YAML 1.1 when unquoted
      'yes', 'no', 'on', 'off', 'true', 'null', '~', '', '1e3', '0x1F', '010', '.inf', '-', '? x', '- x', '*alias', '&anchor', '!tag',
      '# not a comment', 'key: value', '{a: 1}', '[1, 2]', '"quoted"', "it's", 'back\\slash', '%TAG', '@x', '`x`', '|', '>',
      'tab\there', 'line\nbreak', 'cr\r', 'nul\u0000', 'del\u007f', 'nel\u0085', 'nbsp\u00a0', 'é日本', '😀 astral', '\ufeffbom', '\u2028ls',
    ];
    const doc = samples.map((s, i) => `k${i}: ${yamlString(s)}`).join('\n');
    assert.match(doc, /^[\x20-\x7e\n]*$/, 'ASCII only');
    const parsed = parseYaml(doc) as Record<string, unknown>;
    samples.forEach((s, i) => assert.equal(parsed[`k${i}`], s, JSON.stringify(s)));
  });

  test('a lone surrogate is refused', () => {
    assert.throws(() => yamlString('x\ud800'), /lone surrogate/);
  });
});

describe('meta-data and user-data', () => {
  test('meta-data holds the instance id and hostname', () => {
    const doc = metaData({ instanceId: VM, hostname: 'web-1' });
    assert.deepEqual(parseYaml(doc), { 'instance-id': VM, 'local-hostname': 'web-1' });
  });

  test('user-data with keys and a password hash passes cloud-init schema and says what we mean', () => {
    const doc = userData({ hostname: 'web-1', sshKeys: [KEY, 'ssh-rsa AAAAB3Nza second'], passwordHash: HASH });
    assert.ok(doc.startsWith('#cloud-config\n'));
    const r = run('cloud-init', ['schema', '--config-file', writeTemp(doc)], 'cloud-init');
    assert.equal(r.status, 0, `${r.stdout}${r.stderr}\n${doc}`);
    assert.match(r.stdout, /Valid cloud-config/);
    const cfg = parseYaml(doc) as Record<string, unknown>;
    assert.equal(cfg.hostname, 'web-1');
    assert.equal(cfg.ssh_pwauth, false);
    const [user] = cfg.users as Record<string, unknown>[];
    assert.equal(user!.name, 'kloudak');
    assert.equal(user!.hashed_passwd, HASH);
    assert.equal(user!.lock_passwd, false);
    assert.deepEqual(user!.ssh_authorized_keys, [KEY, 'ssh-rsa AAAAB3Nza second']);
    assert.equal(user!.passwd, undefined, 'the plain `passwd` key is never used');
    assert.doesNotMatch(doc, /^\s*(passwd|password|plain_text_passwd):/m);
  });

  test('without a password the account is locked; without keys there is no key list', () => {
    for (const sshKeys of [[KEY], []]) {
      const doc = userData({ hostname: 'h', sshKeys });
      const r = run('cloud-init', ['schema', '--config-file', writeTemp(doc)], 'cloud-init');
      assert.equal(r.status, 0, `${r.stdout}${r.stderr}\n${doc}`);
      const [user] = (parseYaml(doc) as { users: Record<string, unknown>[] }).users;
      assert.equal(user!.lock_passwd, true);
      assert.equal(user!.hashed_passwd, undefined);
      assert.deepEqual(user!.ssh_authorized_keys, sshKeys.length ? sshKeys : undefined);
    }
  });

  test('hostile values stay inside their strings', () => {
    const hostname = `web"\n  - evil: true\n#`.replace(/\n/g, ' '); // control characters are refused outright
    const key = `ssh-ed25519 AAAA x" , "injected`;
    const doc = userData({ hostname, sshKeys: [key] });
    const cfg = parseYaml(doc) as { hostname: string; users: { ssh_authorized_keys: string[] }[] };
    assert.equal(cfg.hostname, hostname);
    assert.deepEqual(cfg.users[0]!.ssh_authorized_keys, [key]);
    assert.equal(run('cloud-init', ['schema', '--config-file', writeTemp(doc)], 'cloud-init').status, 0);
    assert.deepEqual(parseYaml(metaData({ instanceId: VM, hostname })), { 'instance-id': VM, 'local-hostname': hostname });
  });

  test('clear-text passwords, control characters and bad user names are refused', () => {
    for (const passwordHash of ['hunter2', 'correct horse battery staple', '$6', '$6$salt$has space', '']) {
      assert.throws(() => userData({ hostname: 'h', sshKeys: [], passwordHash }), /crypt\(3\) hash/, passwordHash);
    }
    assert.throws(() => userData({ hostname: 'h', sshKeys: [`${KEY}\nssh-rsa INJECTED`] }), /control characters/);
    assert.throws(() => userData({ hostname: 'a\u0000', sshKeys: [] }), /control characters/);
    assert.throws(() => userData({ hostname: 'h', sshKeys: [], user: 'Root Admin' }), /user name/);
    assert.throws(() => metaData({ instanceId: VM, hostname: 'x\ny' }), /control characters/);
  });
});

describe("the user's own user-data", () => {
  /**
   * Runs cloud-init's own user-data processing (cloudinit.user_data.UserDataProcessor, what a
   * booting guest runs on the seed's user-data) and returns its parts: content type and payload.
   */
  function cloudInitParts(doc: string): { type: string; filename: string | null; payload: string }[] {
    const py = [
      'import sys, json',
      'from cloudinit import user_data',
      'msg = user_data.UserDataProcessor({}).process(sys.stdin.buffer.read())',
      'out = [{"type": p.get_content_type(), "filename": p.get_filename(), "payload": p.get_payload(decode=True).decode()} for p in msg.walk() if not p.is_multipart()]',
      'print(json.dumps(out))',
    ].join('\n');
    // /usr/bin/python3: the interpreter cloud-init is installed for (another python3 may come first on PATH).
    const r = spawnSync('/usr/bin/python3', ['-c', py], { input: doc, encoding: 'utf8' });
    if (r.error) throw r.error;
    assert.equal(r.status, 0, `cloud-init's user-data processor failed:\n${r.stderr}\n${doc}`);
    return JSON.parse(r.stdout) as { type: string; filename: string | null; payload: string }[];
  }

  test("a user's cloud-config reaches cloud-init as its own part, after Kloudak's, both intact", () => {
    const mine = '#cloud-config\npackages:\n  - nginx\nruncmd:\n  - [sh, -c, "echo hello > /tmp/x"]\n';
    const files = seedFiles({ vmId: VM, hostname: 'web-1', sshKeys: [KEY], nics: [], userData: mine });
    const parts = cloudInitParts(files.userData);
    assert.deepEqual(parts.map((p) => p.type), ['text/cloud-config', 'text/cloud-config']);
    assert.equal(parts[0]!.payload.trimEnd(), userData({ hostname: 'web-1', sshKeys: [KEY] }).trimEnd(), "Kloudak's part unchanged");
    assert.equal(parts[1]!.payload.trimEnd(), mine.trimEnd(), "the user's part unchanged");
    for (const p of parts) assert.equal(run('cloud-init', ['schema', '--config-file', writeTemp(p.payload)], 'cloud-init').status, 0);
  });

  test("a user's script is a shell-script part; what looks like a boundary stays inside it", () => {
    const script = '#!/bin/sh\necho "--kloudak-not-a-boundary"\nprintf \'Content-Type: text/plain\\n\'\n';
    const files = seedFiles({ vmId: VM, hostname: 'web-1', sshKeys: [], nics: [], userData: script });
    const parts = cloudInitParts(files.userData);
    assert.deepEqual(parts.map((p) => p.type), ['text/cloud-config', 'text/x-shellscript']);
    assert.equal(parts[1]!.payload.trimEnd(), script.trimEnd());
  });

  test('without user-data the seed keeps the plain cloud-config; bad user-data is refused', () => {
    const files = seedFiles({ vmId: VM, hostname: 'web-1', sshKeys: [], nics: [] });
    assert.ok(files.userData.startsWith('#cloud-config\n'));
    for (const bad of ['', 'packages: [nginx]', 'hello\n#cloud-config', '#cloud-config\n\u0000', `#!/bin/sh\n${'x'.repeat(70_000)}`]) {
      assert.throws(() => seedFiles({ vmId: VM, hostname: 'h', sshKeys: [], nics: [], userData: bad }), /userData/, JSON.stringify(bad.slice(0, 30)));
    }
  });
});

describe('network-config', () => {
  const nics: NicSpec[] = [
    { networkId: NET, mac: '52:54:00:AA:00:01', vlan: 10, ip: { address: '10.1.0.5/24', gateway: '10.1.0.1', dns: ['10.1.0.1', '1.1.1.1'] } },
    { networkId: NET, mac: '52:54:00:aa:00:02', vlan: 20 },
    { networkId: NET, mac: '52:54:00:aa:00:03', vlan: 30, ip: { address: 'fd00:1::5/64', gateway: 'fd00:1::1', dns: ['fd00:1::53'] } },
    { networkId: NET, mac: '52:54:00:aa:00:04', vlan: 40, ip: { address: '192.168.9.9/32' } },
  ];

  /** Renders with cloud-init's converter; returns every output file's content, concatenated. */
  function render(doc: string, distro: string, kind: string): string {
    const out = join(dir, `net-${n++}`);
    mkdirSync(out);
    const r = run('cloud-init', ['devel', 'net-convert', '-p', writeTemp(doc), '-k', 'yaml', '-d', out, '-D', distro, '-O', kind], 'cloud-init');
    assert.equal(r.status, 0, `net-convert ${distro}/${kind} failed:\n${r.stderr}\n${doc}`);
    const files: string[] = [];
    const walk = (d: string): void => {
      for (const e of readdirSync(d)) {
        const p = join(d, e);
        if (statSync(p).isDirectory()) walk(p);
        else files.push(readFileSync(p, 'utf8'));
      }
    };
    walk(out);
    assert.ok(files.length > 0, `net-convert ${kind} wrote nothing`);
    return files.join('\n');
  }

  test('version 2, NICs matched by MAC and renamed ethN, static or DHCP', () => {
    const doc = networkConfig(nics);
    const cfg = parseYaml(doc) as { version: number; ethernets: Record<string, Record<string, unknown>> };
    assert.equal(cfg.version, 2);
    assert.deepEqual(Object.keys(cfg.ethernets), ['nic0', 'nic1', 'nic2', 'nic3']);
    assert.deepEqual(cfg.ethernets.nic0, {
      match: { macaddress: '52:54:00:aa:00:01' },
      'set-name': 'eth0',
      dhcp4: false,
      dhcp6: false,
      addresses: ['10.1.0.5/24'],
      routes: [{ to: '0.0.0.0/0', via: '10.1.0.1' }],
      nameservers: { addresses: ['10.1.0.1', '1.1.1.1'] },
    });
    assert.deepEqual(cfg.ethernets.nic1, { match: { macaddress: '52:54:00:aa:00:02' }, 'set-name': 'eth1', dhcp4: true });
    assert.deepEqual((cfg.ethernets.nic2!.routes as unknown[])[0], { to: '::/0', via: 'fd00:1::1' });
    assert.equal(cfg.ethernets.nic3!.routes, undefined, 'no gateway, no route');
    assert.deepEqual(parseYaml(networkConfig([])), { version: 2, ethernets: {} });
  });

  test('cloud-init parses and renders it for networkd, ENI, sysconfig and netplan', () => {
    const doc = networkConfig(nics);
    const networkd = render(doc, 'debian', 'networkd');
    assert.match(networkd, /MACAddress=52:54:00:aa:00:01\nName=eth0/);
    assert.match(networkd, /Address=10\.1\.0\.5\/24/);
    assert.match(networkd, /Gateway=10\.1\.0\.1/);
    assert.match(networkd, /DNS=10\.1\.0\.1 1\.1\.1\.1/);
    assert.match(networkd, /Name=eth1\n\n\[Network\]\nDHCP=ipv4/);
    assert.match(networkd, /Address=fd00:1::5\/64/);
    assert.match(networkd, /Gateway=fd00:1::1/);

    const eni = render(doc, 'debian', 'eni');
    assert.match(eni, /iface eth0 inet static[\s\S]*address 10\.1\.0\.5\/24/);
    assert.match(eni, /iface eth1 inet dhcp/);
    assert.match(eni, /route add default gw 10\.1\.0\.1/, '0.0.0.0/0 is understood as the default route');

    const sysconfig = render(doc, 'rhel', 'sysconfig');
    assert.match(sysconfig, /DEVICE=eth0/);
    assert.match(sysconfig, /IPADDR=10\.1\.0\.5/);
    assert.match(sysconfig, /BOOTPROTO=dhcp/);

    const netplan = render(doc, 'ubuntu', 'netplan');
    assert.match(netplan, /set-name: eth3/);
  });

  test('the NIC is validated: bad MAC, CIDR or gateway never reach the file', () => {
    const nic = nics[0]!;
    assert.throws(() => networkConfig([{ ...nic, mac: 'zz:54:00:aa:00:01' }]), /MAC/);
    assert.throws(() => networkConfig([{ ...nic, ip: { address: '10.1.0.5/24\n  evil: 1' } }]), /CIDR/);
    assert.throws(() => networkConfig([{ ...nic, ip: { address: '10.1.0.5/24', gateway: '10.1.0.1 ; x' } }]), /not an IP/);
  });
});

/** Where a program is on this machine's PATH (the test's own lookup, not the builder's). */
function which(program: string): string {
  const r = spawnSync('sh', ['-c', 'command -v "$1"', 'sh', program], { encoding: 'utf8' });
  assert.equal(r.status, 0, `${program} is not installed (apt-get install ${program === 'xorrisofs' ? 'xorriso' : program})`);
  return r.stdout.trim();
}

/** A directory to use as the whole PATH of a runner, holding links to just `programs`. */
function pathWith(...programs: string[]): string {
  const bin = mkdtempSync(join(dir, 'bin-'));
  for (const p of programs) symlinkSync(which(p), join(bin, p));
  return bin;
}

describe('IsoSeedBuilder', () => {
  const files = seedFiles({
    vmId: VM,
    hostname: 'web-1',
    sshKeys: [KEY],
    passwordHash: HASH,
    nics: [{ networkId: NET, mac: '52:54:00:aa:00:01', vlan: 10, ip: { address: '10.1.0.5/24', gateway: '10.1.0.1' } }],
  });

  /** Checks the image with isoinfo and cloud-init: label, Joliet, Rock Ridge, exactly the three files, intact and valid. */
  function checkIso(iso: Uint8Array, program: string): void {
    assert.ok(iso.length > 0 && iso.length % 2048 === 0, `an ISO is whole 2048-byte sectors (${iso.length})`);
    const isoFile = join(dir, `seed-${n++}.iso`);
    writeFileSync(isoFile, iso);
    const d = run('isoinfo', ['-d', '-i', isoFile], 'genisoimage');
    assert.equal(d.status, 0, d.stderr);
    assert.match(d.stdout, new RegExp(`^Volume id: ${SEED_LABEL}$`, 'm'));
    assert.match(d.stdout, /Rock Ridge signatures version/);
    assert.match(d.stdout, /Joliet/);
    // Which program made it: each one signs the volume descriptor its own way.
    assert.match(d.stdout, program === 'xorrisofs' ? /^Data preparer id: XORRISO/m : /^Application id: GENISOIMAGE/m, d.stdout);
    const list = run('isoinfo', ['-f', '-R', '-i', isoFile], 'genisoimage');
    assert.deepEqual(list.stdout.trim().split('\n').sort(), ['/meta-data', '/network-config', '/user-data']);
    // Joliet names too (Windows-style readers, and cloud-init's own fallbacks).
    const joliet = run('isoinfo', ['-f', '-J', '-i', isoFile], 'genisoimage');
    assert.deepEqual(joliet.stdout.trim().split('\n').sort(), ['/meta-data', '/network-config', '/user-data']);
    const extract = (p: string): string => run('isoinfo', ['-R', '-x', p, '-i', isoFile], 'genisoimage').stdout;
    assert.equal(extract('/user-data'), files.userData);
    assert.equal(extract('/meta-data'), files.metaData);
    assert.equal(extract('/network-config'), files.networkConfig);
    // What the guest reads back is still what cloud-init accepts.
    const schema = run('cloud-init', ['schema', '--config-file', writeTemp(extract('/user-data'))], 'cloud-init');
    assert.equal(schema.status, 0, `${schema.stdout}${schema.stderr}`);
    assert.deepEqual(parseYaml(extract('/meta-data')), { 'instance-id': VM, 'local-hostname': 'web-1' });
  }

  test('xorrisofs first: builds an ISO labelled cidata holding the three files, with argv only, and cleans up', async () => {
    // A parent with '=' in its name: graft points must escape it.
    const parent = join(dir, 'tmp=parent');
    mkdirSync(parent);
    const runner = new TestRunner();
    const builder = new IsoSeedBuilder(runner, { tmpDir: parent });
    assert.equal(await builder.program(), 'xorrisofs', 'xorrisofs is preferred (apt-get install xorriso)');
    const iso = await builder.build(files);
    assert.deepEqual(readdirSync(parent), [], 'the build directory is removed');

    // One probe, then the build; a second build does not probe again.
    assert.deepEqual(runner.ran[0], ['xorrisofs', '-version']);
    assert.equal(runner.ran.length, 2);
    const argv = runner.ran[1]!;
    assert.equal(argv[0], 'xorrisofs');
    assert.ok(argv.includes('-graft-points') && argv.includes('-rock') && argv.includes('-joliet'));
    assert.equal(argv[argv.indexOf('-volid') + 1], 'cidata');
    checkIso(iso, 'xorrisofs');
    await builder.build(files);
    assert.equal(runner.ran.length, 3);
    assert.equal(runner.ran[2]![0], 'xorrisofs');
  });

  test('genisoimage where xorrisofs is not installed: the same image', async () => {
    const parent = mkdtempSync(join(dir, 'geniso-'));
    const runner = new TestRunner(new ProcessRunner({ env: { PATH: pathWith('genisoimage') } }));
    const builder = new IsoSeedBuilder(runner, { tmpDir: parent });
    const iso = await builder.build(files);
    assert.deepEqual(runner.ran.map((a) => a.slice(0, 2)).slice(0, 2), [['xorrisofs', '-version'], ['genisoimage', '-version']]);
    assert.equal(runner.ran.at(-1)![0], 'genisoimage');
    assert.equal(await builder.program(), 'genisoimage');
    checkIso(iso, 'genisoimage');
    assert.deepEqual(readdirSync(parent), []);
  });

  test('neither installed: a clear error naming what to install; once one is there, the next build works', async () => {
    const parent = mkdtempSync(join(dir, 'none-'));
    const bin = pathWith();
    const builder = new IsoSeedBuilder(new ProcessRunner({ env: { PATH: bin } }), { tmpDir: parent });
    for (const attempt of [builder.program(), builder.build(files)]) {
      await assert.rejects(attempt, (err: unknown) => {
        assert.ok(err instanceof SeedToolMissingError, String(err));
        assert.deepEqual(err.tried.map((t) => t.program), ['xorrisofs', 'genisoimage']);
        assert.match(err.message, /none of xorrisofs, genisoimage can be started/);
        assert.match(err.message, /install xorriso/);
        assert.match(err.message, /program not found/);
        return true;
      });
    }
    assert.deepEqual(readdirSync(parent), [], 'nothing written when there is no program');
    // Installed afterwards (here: linked into the runner's PATH): no restart needed.
    symlinkSync(which('xorrisofs'), join(bin, 'xorrisofs'));
    checkIso(await builder.build(files), 'xorrisofs');
    assert.deepEqual(readdirSync(parent), []);
  });

  test('a program that goes away after it was chosen is looked for again', async () => {
    const parent = mkdtempSync(join(dir, 'gone-'));
    const bin = pathWith('xorrisofs', 'genisoimage');
    const builder = new IsoSeedBuilder(new ProcessRunner({ env: { PATH: bin } }), { tmpDir: parent });
    assert.equal(await builder.program(), 'xorrisofs');
    rmSync(join(bin, 'xorrisofs'));
    await assert.rejects(builder.build(files), /program not found/);
    assert.equal(await builder.program(), 'genisoimage');
    checkIso(await builder.build(files), 'genisoimage');
    assert.deepEqual(readdirSync(parent), []);
  });

  test('a failing build is an error and still leaves nothing behind', async () => {
    const parent = mkdtempSync(join(dir, 'fail-'));
    const runner = new TestRunner();
    // `false` starts (so it is chosen) and fails every run.
    const builder = new IsoSeedBuilder(runner, { tmpDir: parent, programs: ['false'] });
    await assert.rejects(builder.build(files), /exited with code 1/);
    assert.deepEqual(readdirSync(parent), []);
    // A runner that resolves with a failure code (allowFailure-style) is caught too.
    const lenient: CommandRunner = { run: async () => ({ code: 2, stdout: '', stderr: 'boom' }) };
    await assert.rejects(new IsoSeedBuilder(lenient, { tmpDir: parent }).build(files), /xorrisofs exited 2: boom/);
    assert.deepEqual(readdirSync(parent), []);
  });

  test('the build directory is private (0700) while the ISO is built', async () => {
    const parent = mkdtempSync(join(dir, 'mode-'));
    let mode = -1;
    const real = new TestRunner();
    const spy: CommandRunner = {
      run: async (argv, opts) => {
        if (argv.includes('-output')) mode = statSync(join(argv[argv.indexOf('-output') + 1]!, '..')).mode & 0o777;
        return real.run(argv, opts);
      },
    };
    await new IsoSeedBuilder(spy, { tmpDir: parent }).build(files);
    assert.equal(mode, 0o700);
  });
});
