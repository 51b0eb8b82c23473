/**
 * The cloud-init NoCloud seed of a VM: the three files (meta-data, user-data, network-config) as
 * pure generators, and {@link IsoSeedBuilder}, which packs them into an ISO 9660 image labelled
 * `cidata` (with xorrisofs, or genisoimage where only that exists) that the VM sees as a read-only
 * disk.
 *
 * Every string value is written as a double-quoted YAML scalar by {@link yamlString} (ASCII only,
 * everything else escaped), so no user-chosen value can change the document's structure, and
 * values that YAML 1.1 would otherwise read as numbers or booleans (a MAC address is base-60 to
 * PyYAML!) stay strings. Values are also refused when they hold control characters: a newline
 * in an SSH key, say, would become a second line of authorized_keys.
 *
 * Passwords: only a crypt(3) hash ever reaches user-data (`hashed_passwd`); without one the
 * account's password is locked and SSH password authentication is off.
 */
import { createHash } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { checkId } from '../names.js';
import type { CommandRunner, SeedBuilder, SeedFiles } from '../ports.js';
import { CommandError } from '../system/command-runner.js';
import { checkNic, checkPasswordHash, checkText, checkUserData, normalizeMac, parseCidr, SpecError } from '../spec.js';
import type { NicSpec, VmSpec } from '../spec.js';

/** Login user created in every VM (the one the SSH keys and the password hash belong to). */
export const DEFAULT_LOGIN_USER = 'kloudak';

/** Volume label NoCloud looks for. */
export const SEED_LABEL = 'cidata';

function hex(cp: number, digits: number): string {
  return cp.toString(16).padStart(digits, '0');
}

/**
 * A YAML double-quoted scalar holding exactly `s`, in printable ASCII: `"` and `\` escaped, every
 * other character outside 0x20–0x7e as `\xXX`, `\uXXXX` or `\UXXXXXXXX` (valid in YAML 1.1 and
 * 1.2). Throws on a lone UTF-16 surrogate, which no YAML document can hold.
 */
export function yamlString(s: string): string {
  let out = '"';
  for (const ch of s) {
    const cp = ch.codePointAt(0)!;
    if (ch === '"' || ch === '\\') out += `\\${ch}`;
    else if (cp >= 0x20 && cp <= 0x7e) out += ch;
    else if (cp >= 0xd800 && cp <= 0xdfff) throw new SpecError(`lone surrogate U+${hex(cp, 4)} cannot be written to YAML`);
    else if (cp <= 0xff) out += `\\x${hex(cp, 2)}`;
    else if (cp <= 0xffff) out += `\\u${hex(cp, 4)}`;
    else out += `\\U${hex(cp, 8)}`;
  }
  return `${out}"`;
}

/** A block sequence of quoted strings at `indent`, or `[]` inline when empty (caller adds the key). */
function yamlList(items: readonly string[], indent: string): string {
  if (items.length === 0) return ' []';
  return items.map((i) => `\n${indent}- ${yamlString(i)}`).join('');
}

/** `meta-data`: the instance id (cloud-init runs per-instance modules once per id) and hostname. */
export function metaData(opts: { instanceId: string; hostname: string }): string {
  checkText('instanceId', opts.instanceId, 255);
  checkText('hostname', opts.hostname, 253);
  return `instance-id: ${yamlString(opts.instanceId)}\nlocal-hostname: ${yamlString(opts.hostname)}\n`;
}

/** `user-data` (#cloud-config): hostname and one login user with the keys and password hash. */
export function userData(opts: { hostname: string; sshKeys: readonly string[]; passwordHash?: string; user?: string }): string {
  checkText('hostname', opts.hostname, 253);
  const user = opts.user ?? DEFAULT_LOGIN_USER;
  if (!/^[a-z_][a-z0-9_-]{0,31}$/.test(user)) throw new SpecError(`not a valid user name: ${JSON.stringify(user)}`);
  for (const k of opts.sshKeys) checkText('ssh key', k, 16384);
  if (opts.passwordHash !== undefined) checkPasswordHash(opts.passwordHash);

  const lines = [
    '#cloud-config',
    `hostname: ${yamlString(opts.hostname)}`,
    'preserve_hostname: false',
    'manage_etc_hosts: true',
    // Keys only over SSH; a password (if any) is for the console.
    'ssh_pwauth: false',
    'disable_root: true',
    'users:',
    `  - name: ${yamlString(user)}`,
    `    gecos: ${yamlString('Kloudak login user')}`,
    `    shell: ${yamlString('/bin/bash')}`,
    `    sudo: ${yamlString('ALL=(ALL) NOPASSWD:ALL')}`,
    `    lock_passwd: ${opts.passwordHash === undefined ? 'true' : 'false'}`,
  ];
  if (opts.passwordHash !== undefined) lines.push(`    hashed_passwd: ${yamlString(opts.passwordHash)}`);
  if (opts.sshKeys.length > 0) lines.push(`    ssh_authorized_keys:${yamlList(opts.sshKeys, '      ')}`);
  return `${lines.join('\n')}\n`;
}

/**
 * `network-config` (version 2): one `nicN` per NIC matched by MAC and renamed `ethN`; static
 * address, default route and DNS servers, or DHCPv4 when the NIC has no address. The default
 * route is written `to: 0.0.0.0/0` (`::/0`): cloud-init before 23.1 cannot parse `to: default`
 * when it renders ENI, networkd or sysconfig, and `gateway4` is deprecated.
 */
export function networkConfig(nics: readonly NicSpec[]): string {
  nics.forEach((n, i) => checkNic(n, i));
  const lines = ['version: 2'];
  if (nics.length === 0) {
    lines.push('ethernets: {}');
    return `${lines.join('\n')}\n`;
  }
  lines.push('ethernets:');
  nics.forEach((nic, i) => {
    lines.push(`  nic${i}:`, '    match:', `      macaddress: ${yamlString(normalizeMac(nic.mac))}`, `    set-name: ${yamlString(`eth${i}`)}`);
    if (!nic.ip) {
      lines.push('    dhcp4: true');
      return;
    }
    const { family } = parseCidr(nic.ip.address);
    lines.push('    dhcp4: false', '    dhcp6: false', `    addresses:${yamlList([nic.ip.address], '      ')}`);
    if (nic.ip.gateway !== undefined) {
      lines.push('    routes:', `      - to: ${yamlString(family === 4 ? '0.0.0.0/0' : '::/0')}`, `        via: ${yamlString(nic.ip.gateway)}`);
    }
    if (nic.ip.dns && nic.ip.dns.length > 0) lines.push('    nameservers:', `      addresses:${yamlList(nic.ip.dns, '        ')}`);
  });
  return `${lines.join('\n')}\n`;
}

/**
 * Kloudak's user-data and the user's own as one MIME multipart user-data, which cloud-init splits
 * into its parts: both cloud-configs are merged (the user's, last, wins where they set the same
 * key), and a `#!` script runs once at first boot. The boundary is derived from the content and
 * checked not to occur in it.
 */
export function multipartUserData(kloudak: string, user: string): string {
  checkUserData(user);
  const type = user.startsWith('#cloud-config') ? 'text/cloud-config' : 'text/x-shellscript';
  let boundary = `kloudak-${createHash('sha256').update(kloudak).update(user).digest('hex').slice(0, 32)}`;
  while (kloudak.includes(boundary) || user.includes(boundary)) boundary += 'x';
  const part = (contentType: string, filename: string, body: string) =>
    [`--${boundary}`, `Content-Type: ${contentType}; charset="utf-8"`, 'MIME-Version: 1.0', 'Content-Transfer-Encoding: 8bit', `Content-Disposition: attachment; filename="${filename}"`, '', body.endsWith('\n') ? body.slice(0, -1) : body].join('\n');
  return [
    `Content-Type: multipart/mixed; boundary="${boundary}"`,
    'MIME-Version: 1.0',
    '',
    part('text/cloud-config', 'kloudak.cfg', kloudak),
    part(type, type === 'text/cloud-config' ? 'user.cfg' : 'user.sh', user),
    `--${boundary}--`,
    '',
  ].join('\n');
}

/** The three seed files of a VM. */
export function seedFiles(spec: Pick<VmSpec, 'vmId' | 'hostname' | 'sshKeys' | 'passwordHash' | 'nics' | 'userData'>): SeedFiles {
  checkId(spec.vmId);
  const user: Parameters<typeof userData>[0] = { hostname: spec.hostname, sshKeys: spec.sshKeys };
  if (spec.passwordHash !== undefined) user.passwordHash = spec.passwordHash;
  const ours = userData(user);
  return {
    metaData: metaData({ instanceId: spec.vmId, hostname: spec.hostname }),
    userData: spec.userData !== undefined ? multipartUserData(ours, spec.userData) : ours,
    networkConfig: networkConfig(spec.nics),
  };
}

/** Escapes a path for a graft point (`name=path`): `\` and `=` are special there (xorrisofs and genisoimage alike). */
function graftPath(path: string): string {
  return path.replace(/[\\=]/g, (c) => `\\${c}`);
}

/**
 * The programs that can build the seed, in order of preference. `xorrisofs` (package `xorriso`:
 * EL9/EL10 AppStream, Debian, Ubuntu) is the one EL ships since cdrkit was dropped; `genisoimage`
 * (cdrkit; Debian, EL8) is the fallback where only it exists. Both take the same mkisofs argv
 * ({@link seedIsoArgv}).
 */
export const SEED_ISO_PROGRAMS: readonly string[] = ['xorrisofs', 'genisoimage'];

/**
 * The argv that packs `entries` (name in the image, absolute path of the file) into `output`: an
 * ISO 9660 volume labelled {@link SEED_LABEL} with Joliet and Rock Ridge names, through graft
 * points so the build needs no working directory. The same for xorrisofs and genisoimage.
 */
export function seedIsoArgv(program: string, output: string, entries: ReadonlyArray<readonly [name: string, path: string]>): string[] {
  return [program, '-quiet', '-output', output, '-volid', SEED_LABEL, '-joliet', '-rock', '-graft-points', ...entries.map(([name, path]) => `${name}=${graftPath(path)}`)];
}

/** No program that can build a seed ISO could be started: neither xorrisofs nor genisoimage is installed. */
export class SeedToolMissingError extends Error {
  constructor(
    /** Each program tried, with why it could not be started. */
    readonly tried: ReadonlyArray<{ program: string; reason: string }>,
  ) {
    super(
      `cannot build the cloud-init seed: none of ${tried.map((t) => t.program).join(', ')} can be started ` +
        `(install xorriso, which provides xorrisofs: dnf install xorriso / apt-get install xorriso) — ` +
        tried.map((t) => `${t.program}: ${t.reason}`).join('; '),
    );
    this.name = 'SeedToolMissingError';
  }
}

export interface IsoSeedBuilderOptions {
  /** Parent of the temporary build directories. Default: the OS temp directory. */
  tmpDir?: string;
  /**
   * Programs to try, first that starts wins (looked up on the runner's PATH). Default
   * {@link SEED_ISO_PROGRAMS}: xorrisofs, then genisoimage.
   */
  programs?: readonly string[];
  /** Time allowed for one build. Default 30 s. */
  timeoutMs?: number;
}

/**
 * Builds the seed ISO with xorrisofs, or genisoimage where only that exists, through the agent's
 * {@link CommandRunner}: the files go into a fresh private (0700) temp directory, the image is
 * written there and read back, and the directory is removed whatever happens.
 *
 * The program is found at first use (or earlier through {@link IsoSeedBuilder.program}, which the
 * daemon calls at start to log it): the first of `programs` that starts (`-version`). The choice
 * is kept until that program fails to start; when none starts, the build fails with
 * {@link SeedToolMissingError} and the next build looks again (installing xorriso needs no restart).
 */
export class IsoSeedBuilder implements SeedBuilder {
  private readonly tmpDir: string;
  private readonly programs: readonly string[];
  private readonly timeoutMs: number;
  private chosen: Promise<string> | null = null;

  constructor(
    private readonly runner: CommandRunner,
    options: IsoSeedBuilderOptions = {},
  ) {
    this.tmpDir = options.tmpDir ?? tmpdir();
    this.programs = options.programs ?? SEED_ISO_PROGRAMS;
    this.timeoutMs = options.timeoutMs ?? 30_000;
    if (this.programs.length === 0) throw new TypeError('IsoSeedBuilder needs at least one program');
  }

  /** The program seeds are built with; throws {@link SeedToolMissingError} when none can be started. */
  program(): Promise<string> {
    if (this.chosen === null) {
      const p = this.detect();
      this.chosen = p;
      // A failed detection is not kept: the next call looks again.
      p.catch(() => {
        if (this.chosen === p) this.chosen = null;
      });
    }
    return this.chosen;
  }

  private async detect(): Promise<string> {
    const tried: Array<{ program: string; reason: string }> = [];
    for (const program of this.programs) {
      try {
        // Any exit code will do: the point is that the program exists and starts.
        await this.runner.run([program, '-version'], { timeoutMs: this.timeoutMs, allowFailure: true });
        return program;
      } catch (err) {
        if (!isNotStarted(err)) throw err;
        tried.push({ program, reason: err.message });
      }
    }
    throw new SeedToolMissingError(tried);
  }

  async build(files: SeedFiles): Promise<Uint8Array> {
    const program = await this.program();
    // mkdtemp creates the directory with mode 0700.
    const dir = await mkdtemp(join(this.tmpDir, 'kloudak-seed-'));
    try {
      const entries: [string, string][] = [
        ['user-data', files.userData],
        ['meta-data', files.metaData],
        ['network-config', files.networkConfig],
      ];
      for (const [name, content] of entries) await writeFile(join(dir, name), content, { mode: 0o600, flag: 'wx' });
      const iso = join(dir, 'seed.iso');
      // The runner has no cwd option: absolute paths, mapped to their names in the image.
      const argv = seedIsoArgv(
        program,
        iso,
        entries.map(([name]) => [name, join(dir, name)] as const),
      );
      const r = await this.runner.run(argv, { timeoutMs: this.timeoutMs }).catch((err: unknown) => {
        // Gone since it was chosen (uninstalled): look again next time.
        if (isNotStarted(err)) this.chosen = null;
        throw err;
      });
      if (r.code !== 0) throw new Error(`${program} exited ${r.code}: ${r.stderr.trim()}`);
      return new Uint8Array(await readFile(iso));
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }
}

/** The runner could not start the program at all (not installed, not executable). */
function isNotStarted(err: unknown): err is CommandError {
  return err instanceof CommandError && err.reason === 'spawn';
}

/**
 * @deprecated The old name of {@link IsoSeedBuilder} (which now prefers xorrisofs), kept only so
 * that branches written before the rename still build; use IsoSeedBuilder.
 */
export const GenisoimageSeedBuilder = IsoSeedBuilder;
