/**
 * The agent's configuration: defaults → /etc/kloudak/agent.yaml → environment → flags, validated
 * once with a TypeBox schema and frozen. This is the only module of the agent that reads
 * `process.env` (callers may pass their own `env` instead, as the tests do).
 */
import { readFileSync } from 'node:fs';
import { hostname as osHostname } from 'node:os';
import { isAbsolute, join } from 'node:path';
import { Type, type Static } from '@sinclair/typebox';
import { ConfigError, envLayer, flagLayer, loadConfig } from '@kloudak/common';
import { parse as parseYaml } from 'yaml';
import type { HostSettings } from './settings.js';

/** Default path of the configuration file. */
export const DEFAULT_CONFIG_PATH = '/etc/kloudak/agent.yaml';

/** The machine's libvirtd socket. */
export const DEFAULT_LIBVIRT_SOCKET = '/run/libvirt/libvirt-sock';

/** libvirt's QEMU run directory for qemu:///system. */
export const DEFAULT_QEMU_RUN_DIR = '/run/libvirt/qemu';

/** The schema of the agent's configuration (keys are camelCase; the file may use snake_case). */
export const AgentConfigSchema = Type.Object(
  {
    /** `host:port` of the orchestrator's agent port. */
    orchestrator: Type.Optional(Type.String({ pattern: '^(\\[[0-9a-fA-F:.]+\\]|[A-Za-z0-9.-]+):[0-9]{1,5}$' })),
    /** One-time join token (`kjt1.…`); ignored once an identity exists in the data dir. */
    joinToken: Type.Optional(Type.String({ minLength: 1 })),
    /** Identity, certificates and fence records. */
    dataDir: Type.String({ minLength: 1, default: '/var/lib/kloudak-agent' }),
    /** The host's name in the cluster (default: the machine's hostname). */
    hostname: Type.String({ minLength: 1, maxLength: 253, pattern: '^[A-Za-z0-9][A-Za-z0-9.-]*$' }),
    /** TLS server name to check the orchestrator's certificate against (default: the host part of `orchestrator`). */
    tlsServerName: Type.Optional(Type.String({ minLength: 1 })),
    libvirtUri: Type.String({ minLength: 1, default: 'qemu:///system' }),
    /** libvirtd's socket. */
    libvirtSocket: Type.String({ minLength: 1, default: DEFAULT_LIBVIRT_SOCKET }),
    domainType: Type.Union([Type.Literal('kvm'), Type.Literal('qemu')], { default: 'kvm' }),
    ovsDatapath: Type.Union([Type.Literal('system'), Type.Literal('netdev')], { default: 'system' }),
    /** Uplink (trunk) port of the bridges, whose allowed VLANs follow the networks; unset: none. */
    ovsUplink: Type.Optional(Type.String({ pattern: '^[A-Za-z0-9_.-]{1,15}$' })),
    nicOffload: Type.Boolean({ default: true }),
    bridge: Type.String({ pattern: '^[A-Za-z0-9_.-]{1,15}$', default: 'br-vm' }),
    consoleDir: Type.String({ minLength: 1, default: '/var/log/kloudak/console' }),
    /** Local directory of cloud-init seeds; default unset (seeds are pool volumes), `<dataDir>/seeds` on test:/// hosts. */
    seedDir: Type.Optional(Type.String({ minLength: 1 })),
    machine: Type.Optional(Type.String({ minLength: 1 })),
    /** First two letters of VM tap names (default "kl"); test hosts sharing one network stack need different ones. */
    tapPrefix: Type.Optional(Type.String({ pattern: '^[a-z]{2}$' })),
    /** This host's libvirtd as other hosts' libvirtds reach it for live migration (default `qemu+tls://<hostname>/system`). */
    migrationUri: Type.Optional(Type.String({ minLength: 1, maxLength: 1024, pattern: '^[a-z0-9+]+:' })),
    /** Address other hosts' QEMU streams a migrating VM's memory to (default: the hostname). */
    migrationAddress: Type.Optional(Type.String({ minLength: 1, maxLength: 253, pattern: '^[A-Za-z0-9.:\\[\\]-]+$' })),
    /** How long a live migration from this host may take. */
    migrationTimeoutMs: Type.Integer({ minimum: 1000, maximum: 3_600_000, default: 300_000 }),
    shutdownTimeoutMs: Type.Integer({ minimum: 0, default: 60_000 }),
    /** Heartbeat period until the orchestrator grants one in HelloAck. */
    heartbeatMs: Type.Integer({ minimum: 50, maximum: 600_000, default: 1000 }),
    /**
     * Write a lease file on each active dir/fs/netfs pool at every heartbeat, and report the other
     * hosts' files there (storage/pool-lease.ts).
     */
    poolLeases: Type.Boolean({ default: true }),
    /** Upper bound of the lease, whatever the orchestrator grants. */
    fenceLeaseMs: Type.Integer({ minimum: 100, maximum: 3_600_000, default: 15_000 }),
    /** How long fencing waits for one libvirt call before it kills QEMU processes from their pid files. */
    fenceLibvirtTimeoutMs: Type.Integer({ minimum: 50, maximum: 60_000, default: 2000 }),
    /**
     * libvirt's QEMU run directory (`<domain>.pid`, `<domain>.xml`), used to fence when libvirt does
     * not answer. Default: /run/libvirt/qemu for qemu:///system on the default socket; unset
     * otherwise (no pid-file fencing: a test:/// host has no QEMU, and must never kill the real
     * host's; a libvirtd on another socket keeps its pid files elsewhere).
     */
    qemuRunDir: Type.Optional(Type.String({ minLength: 1 })),
    /**
     * Run the fence guard (fence/guard.ts) where there is a qemuRunDir: a process beside the agent
     * that kills the HA QEMUs when the lease is over and the agent (hung, stopped) has not.
     */
    fenceGuard: Type.Boolean({ default: true }),
    /** How long after the lease's end the guard leaves the agent's own fence to finish first. */
    fenceGuardGraceMs: Type.Integer({ minimum: 0, maximum: 60_000, default: 1000 }),
    /** Renew the client certificate once less than this fraction of its validity is left. */
    certRenewFraction: Type.Number({ minimum: 0.01, maximum: 0.9, default: 1 / 3 }),
    /** How long SIGTERM waits for running commands. */
    drainTimeoutMs: Type.Integer({ minimum: 0, default: 30_000 }),
    logLevel: Type.Union(
      [Type.Literal('fatal'), Type.Literal('error'), Type.Literal('warn'), Type.Literal('info'), Type.Literal('debug'), Type.Literal('trace'), Type.Literal('silent')],
      { default: 'info' },
    ),
    /** `auto`: journald when started by systemd, stdout otherwise. */
    logTarget: Type.Union([Type.Literal('auto'), Type.Literal('journald'), Type.Literal('stdout')], { default: 'auto' }),
    /** Set from the environment only (INVOCATION_ID / JOURNAL_STREAM): started by systemd. */
    underSystemd: Type.Boolean({ default: false }),
    /** Set from the environment only (NOTIFY_SOCKET): sd_notify is wanted. */
    notifySocket: Type.Optional(Type.String({ minLength: 1 })),
    /**
     * Set from the environment only (KLOUDAK_AGENT_LIFELINE_FD): the read end of a pipe whose write
     * end only the starting process holds (scripts/up.sh); at its end-of-file the agent stops as on SIGTERM.
     */
    lifelineFd: Type.Optional(Type.Integer({ minimum: 0 })),
  },
  { additionalProperties: false },
);

/** The agent's validated, frozen configuration. */
export type AgentConfig = Readonly<Static<typeof AgentConfigSchema>>;

/** Environment variables → keys. */
const ENV_NAMES: Record<string, string> = {
  KLOUDAK_AGENT_ORCHESTRATOR: 'orchestrator',
  KLOUDAK_AGENT_JOIN_TOKEN: 'joinToken',
  KLOUDAK_AGENT_DATA_DIR: 'dataDir',
  KLOUDAK_AGENT_HOSTNAME: 'hostname',
  KLOUDAK_AGENT_TLS_SERVER_NAME: 'tlsServerName',
  KLOUDAK_AGENT_LIBVIRT_URI: 'libvirtUri',
  KLOUDAK_AGENT_LIBVIRT_SOCKET: 'libvirtSocket',
  KLOUDAK_AGENT_DOMAIN_TYPE: 'domainType',
  KLOUDAK_AGENT_OVS_DATAPATH: 'ovsDatapath',
  KLOUDAK_AGENT_OVS_UPLINK: 'ovsUplink',
  KLOUDAK_AGENT_NIC_OFFLOAD: 'nicOffload',
  KLOUDAK_AGENT_BRIDGE: 'bridge',
  KLOUDAK_AGENT_CONSOLE_DIR: 'consoleDir',
  KLOUDAK_AGENT_SEED_DIR: 'seedDir',
  KLOUDAK_AGENT_MACHINE: 'machine',
  KLOUDAK_AGENT_TAP_PREFIX: 'tapPrefix',
  KLOUDAK_AGENT_MIGRATION_URI: 'migrationUri',
  KLOUDAK_AGENT_MIGRATION_ADDRESS: 'migrationAddress',
  KLOUDAK_AGENT_MIGRATION_TIMEOUT_MS: 'migrationTimeoutMs',
  KLOUDAK_AGENT_SHUTDOWN_TIMEOUT_MS: 'shutdownTimeoutMs',
  KLOUDAK_AGENT_HEARTBEAT_MS: 'heartbeatMs',
  KLOUDAK_AGENT_FENCE_LEASE_MS: 'fenceLeaseMs',
  KLOUDAK_AGENT_FENCE_LIBVIRT_TIMEOUT_MS: 'fenceLibvirtTimeoutMs',
  KLOUDAK_AGENT_QEMU_RUN_DIR: 'qemuRunDir',
  KLOUDAK_AGENT_FENCE_GUARD: 'fenceGuard',
  KLOUDAK_AGENT_FENCE_GUARD_GRACE_MS: 'fenceGuardGraceMs',
  KLOUDAK_AGENT_CERT_RENEW_FRACTION: 'certRenewFraction',
  KLOUDAK_AGENT_POOL_LEASES: 'poolLeases',
  KLOUDAK_AGENT_DRAIN_TIMEOUT_MS: 'drainTimeoutMs',
  KLOUDAK_AGENT_LOG_LEVEL: 'logLevel',
  KLOUDAK_AGENT_LOG_TARGET: 'logTarget',
};

/** Flags (`--name=value` or `--name value`) → keys. */
const FLAG_NAMES: Record<string, string> = Object.fromEntries(
  Object.values(ENV_NAMES).map((key) => [key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`), key]),
);

/** Keys only the environment may set (facts about how the process was started). */
export const ENV_ONLY_SETTINGS: ReadonlySet<string> = new Set(['underSystemd', 'notifySocket', 'lifelineFd']);

/** snake_case / kebab-case → camelCase, so `join_token:` and `joinToken:` both work in the file. */
function camel(key: string): string {
  return key.replace(/[-_]([a-z0-9])/g, (_, c: string) => c.toUpperCase());
}

/** `on`/`off`/`yes`/`no`/`true`/`false` (any case) → boolean; anything else unchanged. */
function toBool(v: unknown): unknown {
  if (typeof v !== 'string') return v;
  const s = v.trim().toLowerCase();
  if (['on', 'true', 'yes', '1'].includes(s)) return true;
  if (['off', 'false', 'no', '0'].includes(s)) return false;
  return v;
}

function normalise(layer: Record<string, unknown>, where: string): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(layer)) {
    const key = camel(k);
    if (ENV_ONLY_SETTINGS.has(key)) throw new ConfigError(`${where}: ${k} cannot be set here`);
    out[key] = key === 'nicOffload' || key === 'poolLeases' ? toBool(v) : v;
  }
  return out;
}

/** Reads the YAML file; a missing file is an empty layer unless it was named explicitly. */
function yamlLayer(path: string, required: boolean): Record<string, unknown> {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    if (!required && (err as NodeJS.ErrnoException).code === 'ENOENT') return {};
    throw new ConfigError(`cannot read config file ${path}: ${(err as Error).message}`);
  }
  let parsed: unknown;
  try {
    parsed = parseYaml(text);
  } catch (err) {
    throw new ConfigError(`config file ${path} is not valid YAML: ${(err as Error).message}`);
  }
  if (parsed === null || parsed === undefined) return {};
  if (typeof parsed !== 'object' || Array.isArray(parsed)) throw new ConfigError(`config file ${path} must hold a mapping`);
  return normalise(parsed as Record<string, unknown>, path);
}

/** Where {@link loadAgentConfig} reads from. */
export interface ConfigInputs {
  /** Command-line arguments (without node and the script). */
  argv?: readonly string[];
  /** Environment; default `process.env`. */
  env?: NodeJS.ProcessEnv;
}

/** Loads, validates and freezes the agent's configuration. Throws {@link ConfigError}. */
export function loadAgentConfig(inputs: ConfigInputs = {}): AgentConfig {
  const env = inputs.env ?? process.env;
  const argv = inputs.argv ?? [];
  const flags = normalise(flagLayer(argv, FLAG_NAMES), 'flags');
  const configFlag = flagLayer(argv, { config: 'path' })['path'] as string | undefined;
  const explicitPath = configFlag ?? env['KLOUDAK_AGENT_CONFIG'];
  const file = yamlLayer(explicitPath ?? DEFAULT_CONFIG_PATH, explicitPath !== undefined && explicitPath !== '');
  const fromEnv = normalise(envLayer(env, ENV_NAMES), 'environment');
  const started: Record<string, unknown> = {
    underSystemd: Boolean(env['INVOCATION_ID'] || env['JOURNAL_STREAM']),
    notifySocket: env['NOTIFY_SOCKET'] || undefined,
    lifelineFd: env['KLOUDAK_AGENT_LIFELINE_FD'] || undefined,
  };
  const defaults = { hostname: osHostname() };
  const merged = { ...defaults, ...file };
  const cfg = loadConfig(AgentConfigSchema, { file: merged, env: { ...fromEnv, ...started }, flags });
  for (const key of ['dataDir', 'consoleDir', 'seedDir', 'qemuRunDir'] as const) {
    const v = cfg[key];
    if (v !== undefined && !isAbsolute(v)) throw new ConfigError(`invalid configuration:\n  /${key}: must be an absolute path, got ${v}`);
  }
  const extra: { seedDir?: string; qemuRunDir?: string } = {};
  if (isSimulatedHost(cfg.libvirtUri) && cfg.seedDir === undefined) {
    // The test driver cannot upload into volumes: seeds must be local files (see settings.seedDir).
    extra.seedDir = join(cfg.dataDir, 'seeds');
  }
  // Only for the machine's own libvirtd: a libvirtd on another socket (a private one, in its own
  // mount namespace) keeps its pid files elsewhere, and this run dir would be another's domains.
  if (cfg.qemuRunDir === undefined && cfg.libvirtUri === 'qemu:///system' && cfg.libvirtSocket === DEFAULT_LIBVIRT_SOCKET) extra.qemuRunDir = DEFAULT_QEMU_RUN_DIR;
  return Object.keys(extra).length === 0 ? cfg : Object.freeze({ ...cfg, ...extra });
}

/** Whether a libvirt URI names libvirt's test driver (a simulated host). */
export function isSimulatedHost(libvirtUri: string): boolean {
  return libvirtUri.startsWith('test://');
}

/** The host-operation settings of a configuration. */
export function hostSettingsOf(cfg: AgentConfig): HostSettings {
  const s: HostSettings = {
    libvirtUri: cfg.libvirtUri,
    domainType: cfg.domainType,
    ovsDatapath: cfg.ovsDatapath,
    nicOffload: cfg.nicOffload,
    bridge: cfg.bridge,
    consoleDir: cfg.consoleDir,
    shutdownTimeoutMs: cfg.shutdownTimeoutMs,
    migration: {
      peerUri: cfg.migrationUri ?? `qemu+tls://${cfg.hostname}/system`,
      address: cfg.migrationAddress ?? cfg.hostname,
      timeoutMs: cfg.migrationTimeoutMs,
    },
  };
  if (cfg.machine !== undefined) s.machine = cfg.machine;
  if (cfg.tapPrefix !== undefined) s.tapPrefix = cfg.tapPrefix;
  if (cfg.seedDir !== undefined) s.seedDir = cfg.seedDir;
  return s;
}
