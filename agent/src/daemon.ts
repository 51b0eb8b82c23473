/**
 * The agent daemon, wired from its configuration: identity (enrolling on first start), one libvirt
 * connection for everything (on a test:/// URI each connection is its own simulated host, so there
 * must be exactly one), host operations, the command dispatcher, the lease and self-fencing,
 * telemetry, lifecycle events and the link. {@link startAgent} is what tests drive;
 * {@link runDaemon} adds signals, sd_notify and the exit code for main.ts.
 */
import { mkdir } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { Libvirt } from '@kloudak/libvirt';
import { ConfigError, watchLifeline, type Lifeline } from '@kloudak/common';
import type { Logger } from 'pino';
import { IsoSeedBuilder } from './cloudinit/seed.js';
import { hostSettingsOf, isSimulatedHost, loadAgentConfig, type AgentConfig } from './config.js';
import { Lease, systemLeaseClock, type LeaseClock, type LeaseExpiry } from './fence/lease.js';
import { Fencer } from './fence/fencer.js';
import { GuardHandle } from './fence/guard-process.js';
import { bootId, hostMonoMs, LeaseStateFile, provisionalLeaseMs } from './fence/lease-state.js';
import { QemuPidfiles } from './fence/qemu-pidfiles.js';
import { FenceStore } from './fence/records.js';
import { StartGate } from './fence/start-gate.js';
import { LibvirtHypervisor } from './hypervisor/libvirt-hypervisor.js';
import { domainEventToProto } from './link/convert.js';
import { EnrollmentError, enroll, isRetryableEnrollError } from './link/enroll.js';
import { loadIdentity, parseJoinToken, saveIdentityRecord, type Identity } from './link/identity.js';
import { AgentLink, backoffDelay, type BackoffOptions, type LinkStatus } from './link/session.js';
import { createAgentLogger } from './log/logger.js';
import { OvsNetworkDriver } from './network/ovs.js';
import { HostOperations } from './ops/host-ops.js';
import type { CommandRunner, NetworkDriver, SeedBuilder } from './ports.js';
import { CommandDispatcher } from './runner/commands.js';
import { LibvirtStorage } from './storage/libvirt-storage.js';
import { fileBasedPools, PoolLeaseKeeper, type LeasePool } from './storage/pool-lease.js';
import { ProcessRunner } from './system/command-runner.js';
import { SdNotifier } from './system/sd-notify.js';
import { collectPools } from './telemetry/libvirt-stats.js';
import { HostTelemetry } from './telemetry/inventory.js';
import { ProcSampler } from './telemetry/proc.js';
import { AGENT_VERSION } from './version.js';

/**
 * The provisional lease of an agent whose previous process's lease is already over: time to reach
 * the orchestrator, whose returning-host clean-up then decides (fence/lease-state.ts).
 */
const OVERDUE_LEASE_MS = 5000;

/** Replaceable parts of the daemon (tests; everything has a real default). */
export interface AgentDeps {
  log?: Logger;
  runner?: CommandRunner;
  /** Open vSwitch driver (default: ovs-vsctl through `runner`). */
  network?: NetworkDriver;
  seeds?: SeedBuilder;
  /** The lease's clock and timers. */
  clock?: LeaseClock;
  /** Reconnection backoff of the link. */
  backoff?: BackoffOptions;
  /** Reads /proc files (default: the real /proc). */
  proc?: ProcSampler;
  /** Pause between fencing attempts when libvirt refuses (default 1 s). */
  fenceRetryMs?: number;
  /** Aborts a start that is still waiting (for enrollment or libvirt). */
  signal?: AbortSignal;
  /**
   * The agent's main module, forked as `fence-guard` (default: dist/main.js beside this file;
   * runDaemon passes its own, which is the bundle in the RPM).
   */
  guardEntry?: string;
  /** The fence guard's sweep period (default 250 ms). */
  guardPollMs?: number;
}

/** A running agent. */
export interface AgentHandle {
  readonly config: AgentConfig;
  /** The identity in use (renewal replaces its key and certificate). */
  readonly identity: Identity;
  readonly lease: Lease;
  readonly dispatcher: CommandDispatcher;
  readonly fenceStore: FenceStore;
  readonly libvirt: Libvirt;
  /** Pool lease files (null when `poolLeases` is off). */
  readonly poolLeases: PoolLeaseKeeper | null;
  /** The link's state. */
  status(): LinkStatus;
  /** Resolves after the next self-fencing finishes: whether it destroyed every HA domain (tests wait on it). */
  fencing(): Promise<boolean>;
  /**
   * Stops taking commands, lets running ones finish (up to `drainTimeoutMs`), says Goodbye with
   * the VMs it leaves running, closes the stream and libvirt. Idempotent. `reason` goes with the
   * Goodbye (the signal, for instance).
   */
  stop(reason?: string): Promise<void>;
}

async function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  await new Promise<void>((resolve) => {
    const t = setTimeout(resolve, ms);
    signal?.addEventListener('abort', () => {
      clearTimeout(t);
      resolve();
    });
  });
}

/**
 * With an identity and a configured join token it has not met yet (another id than the one it
 * came from or was refused with): one attempt to enroll again with it, as the same host (a
 * re-enrollment token, after a re-key). Any failure keeps the identity: a refusal is remembered
 * (that token is not tried again), an unreachable orchestrator is tried again at the next start.
 */
async function reenrollIfNewToken(cfg: AgentConfig, existing: Identity, log: Logger): Promise<Identity> {
  if (!cfg.joinToken) return existing;
  let tokenId: string;
  try {
    tokenId = parseJoinToken(cfg.joinToken).id;
  } catch {
    log.warn({ host_id: existing.hostId }, 'the configured join token is malformed; identity kept');
    return existing;
  }
  if (tokenId === existing.joinTokenId) {
    log.info({ host_id: existing.hostId }, 'identity found; join token already used');
    return existing;
  }
  const orchestrator = cfg.orchestrator ?? existing.orchestrator;
  try {
    const opts = { orchestrator, joinToken: cfg.joinToken, hostName: existing.hostName, dataDir: cfg.dataDir, hostId: existing.hostId };
    const id = await enroll(cfg.tlsServerName ? { ...opts, tlsServerName: cfg.tlsServerName } : opts);
    log.warn({ host_id: id.hostId, previous_host_id: existing.hostId, join_token_id: tokenId }, 'enrolled again with a new join token: new certificate');
    return id;
  } catch (err) {
    if (isRetryableEnrollError(err)) {
      log.warn({ host_id: existing.hostId, err: { message: (err as Error).message } }, 'orchestrator unreachable to enroll again with the new join token; identity kept, tried again at the next start');
      return existing;
    }
    log.warn({ host_id: existing.hostId, join_token_id: tokenId, err: { message: (err as Error).message } }, 'the new join token did not enroll this host again; identity kept');
    const kept = { ...existing, joinTokenId: tokenId };
    await saveIdentityRecord(cfg.dataDir, kept);
    return kept;
  }
}

/** The identity in the data dir, or a new one from enrollment (retried while the orchestrator is unreachable). */
async function obtainIdentity(cfg: AgentConfig, log: Logger, signal: AbortSignal): Promise<Identity> {
  const existing = await loadIdentity(cfg.dataDir);
  if (existing) return reenrollIfNewToken(cfg, existing, log);
  if (!cfg.orchestrator) throw new ConfigError('not enrolled yet: KLOUDAK_AGENT_ORCHESTRATOR (orchestrator) is required');
  if (!cfg.joinToken) throw new ConfigError('not enrolled yet: KLOUDAK_AGENT_JOIN_TOKEN (joinToken) is required for the first start');
  for (let attempt = 0; ; attempt++) {
    try {
      const opts = { orchestrator: cfg.orchestrator, joinToken: cfg.joinToken, hostName: cfg.hostname, dataDir: cfg.dataDir };
      const id = await enroll(cfg.tlsServerName ? { ...opts, tlsServerName: cfg.tlsServerName } : opts);
      log.info({ host_id: id.hostId, host_name: id.hostName }, 'enrolled');
      return id;
    } catch (err) {
      if (!isRetryableEnrollError(err) || signal.aborted) throw err;
      const delay = backoffDelay(attempt, { initialMs: 500, maxMs: 30_000 });
      log.warn({ err: { message: (err as Error).message }, delay_ms: delay }, 'orchestrator unreachable for enrollment; retrying');
      await sleep(delay, signal);
      if (signal.aborted) throw new EnrollmentError('stopped before enrollment finished');
    }
  }
}

/** Connects to libvirt, retrying while libvirtd is not there yet. */
async function connectLibvirt(cfg: AgentConfig, log: Logger, signal: AbortSignal): Promise<Libvirt> {
  for (let attempt = 0; ; attempt++) {
    try {
      return await Libvirt.connect({ uri: cfg.libvirtUri, socketPath: cfg.libvirtSocket, keepalive: true, reconnect: { maxDelayMs: 2000 } });
    } catch (err) {
      if (signal.aborted) throw err;
      const delay = backoffDelay(attempt, { initialMs: 200, maxMs: 5000 });
      log.warn({ err: { message: (err as Error).message }, delay_ms: delay }, 'cannot connect to libvirt; retrying');
      await sleep(delay, signal);
      if (signal.aborted) throw err;
    }
  }
}

/** Starts an agent from a configuration. Throws when it cannot start (bad token, wrong orchestrator, …). */
export async function startAgent(cfg: AgentConfig, deps: AgentDeps = {}): Promise<AgentHandle> {
  const log = deps.log ?? createAgentLogger({ level: cfg.logLevel, target: cfg.logTarget, underSystemd: cfg.underSystemd }).logger;
  const startedAt = new Date();
  const abort = new AbortController();
  deps.signal?.addEventListener('abort', () => abort.abort());
  const runner = deps.runner ?? new ProcessRunner();
  const settings = hostSettingsOf(cfg);
  await mkdir(cfg.dataDir, { recursive: true, mode: 0o700 });
  for (const dir of [settings.consoleDir, settings.seedDir]) if (dir) await mkdir(dir, { recursive: true, mode: 0o755 });

  // The lease comes first, before anything that waits (the orchestrator for enrollment, libvirt):
  // a previous agent process may have held a lease until now while its VMs kept running, so they
  // must be fenced if no grant comes within one lease, even when libvirtd is down and never comes
  // back. Until libvirt is connected, fencing kills QEMU processes from their pid files.
  const fenceStore = new FenceStore(cfg.dataDir);
  const flog = log.child({ component: 'fence' });
  let hypervisor: LibvirtHypervisor | null = null;
  // eslint-disable-next-line prefer-const -- assigned below; the gate only reads it when a command runs
  let lease: Lease;
  // No domain define/start without the lease (fence/start-gate.ts).
  const gate = new StartGate(() => lease.valid);
  // eslint-disable-next-line prefer-const -- assigned once the link exists; the lease needs the callback first
  let link: AgentLink;
  // Self-fencing runs one at a time, each fence in two passes (fence/fencer.ts).
  const fencer = new Fencer({
    hypervisor: () => hypervisor,
    ...(cfg.qemuRunDir !== undefined ? { pidfiles: new QemuPidfiles({ runDir: cfg.qemuRunDir }) } : {}),
    libvirtTimeoutMs: cfg.fenceLibvirtTimeoutMs,
    store: fenceStore,
    gate,
    log: flog,
    retryDelayMs: deps.fenceRetryMs ?? 1000,
    onRecord: () => link?.fenceRecorded(),
  });
  // Pool lease files (storage/pool-lease.ts), once the identity and libvirt are known.
  let poolLeases: PoolLeaseKeeper | null = null;
  const onExpire = (e: LeaseExpiry): void => {
    flog.error({ lease_expired_at: e.expiredAt.toISOString() }, 'lease expired without a new grant');
    // The stream may be stuck rather than closed: a new session is the way back.
    link?.dropSession('lease expired');
    // Registered before the fence is queued: resolves once it (both passes) finished; the lease
    // files then say "fenced" until a lease is held again — only when every HA domain is gone:
    // the orchestrators restart this host's VMs elsewhere on that word.
    const keeper = poolLeases;
    if (keeper) {
      void fencer.fenced().then((complete) => {
        if (complete) return keeper.markFenced(new Date());
        flog.error({}, 'fencing left HA domains it could not destroy: the pool lease files do not say fenced');
        return undefined;
      });
    }
    fencer.onExpire(e);
  };
  // The lease's end on the host's clock (fence/lease-state.ts): for the next agent process, whose
  // provisional lease ends where this one's does, and for the fence guard (fence/guard.ts), which
  // kills the HA QEMUs if this process hangs past it. Only on the real clock: a test's clock means
  // nothing to another process.
  const realClock = deps.clock === undefined;
  const leaseState = realClock ? new LeaseStateFile(cfg.dataDir, (err) => flog.warn({ err }, 'cannot record the lease end')) : null;
  const previousLease = leaseState ? await leaseState.load() : null;
  let guard: GuardHandle | null = null;
  if (realClock && cfg.fenceGuard && cfg.qemuRunDir !== undefined) {
    guard = new GuardHandle({
      entry: deps.guardEntry ?? fileURLToPath(new URL('./main.js', import.meta.url)),
      settings: {
        runDir: cfg.qemuRunDir,
        dataDir: cfg.dataDir,
        graceMs: cfg.fenceGuardGraceMs,
        ...(deps.guardPollMs !== undefined ? { pollMs: deps.guardPollMs } : {}),
        logLevel: cfg.logLevel,
        logTarget: cfg.logTarget,
        underSystemd: cfg.underSystemd,
      },
      log: flog,
    });
    guard.start();
  }
  const onLeaseChange = (endMono: number): void => {
    if (!realClock) return;
    const endHost = hostMonoMs() + (endMono - systemLeaseClock.now());
    leaseState?.save(endHost);
    guard?.lease(endHost);
  };
  lease = new Lease({ maxMs: cfg.fenceLeaseMs, clock: deps.clock ?? systemLeaseClock, onExpire, onChange: onLeaseChange });
  const provisionalMs = provisionalLeaseMs(previousLease, { bootId: bootId(), nowHostMonoMs: hostMonoMs(), maxMs: cfg.fenceLeaseMs, overdueMs: OVERDUE_LEASE_MS });
  lease.startProvisional(provisionalMs);
  flog.info(
    { lease_ms: provisionalMs, max_lease_ms: cfg.fenceLeaseMs, previous_lease: previousLease ? 'recorded' : 'none', qemu_run_dir: cfg.qemuRunDir ?? null, fence_guard: guard !== null },
    'provisional lease armed',
  );
  const releaseLease = async (): Promise<void> => {
    lease.stop();
    await guard?.release();
    await leaseState?.flush();
  };

  let identity: Identity;
  let lv: Libvirt;
  try {
    identity = await obtainIdentity(cfg, log, abort.signal);
    lv = await connectLibvirt(cfg, log.child({ host_id: identity.hostId }), abort.signal);
  } catch (err) {
    // Not started: no lease is left behind (a fence already running finishes first).
    await releaseLease();
    await fencer.idle();
    throw err;
  }
  const hlog = log.child({ host_id: identity.hostId });
  lv.connection.on('state', (state, previous) => hlog.info({ component: 'libvirt', state, previous }, 'libvirt connection state'));

  hypervisor = new LibvirtHypervisor(lv);
  const storage = new LibvirtStorage(lv);
  const network = deps.network ?? new OvsNetworkDriver(runner, cfg.ovsUplink ? { datapathType: cfg.ovsDatapath, uplink: cfg.ovsUplink } : { datapathType: cfg.ovsDatapath });
  const seeds = deps.seeds ?? new IsoSeedBuilder(runner);
  // Found now to say it in the log; a host without xorrisofs or genisoimage still runs (VMs that
  // exist keep working) and every CreateVm fails with the same clear error until one is installed.
  if (seeds instanceof IsoSeedBuilder) {
    void seeds.program().then(
      (program) => hlog.info({ component: 'seed', program }, 'cloud-init seeds are built with this program'),
      (err: unknown) => hlog.error({ component: 'seed', err }, 'cannot build cloud-init seeds'),
    );
  }
  const ops = new HostOperations({ hypervisor, storage, network, seeds, settings, gate });
  const telemetry = new HostTelemetry({
    lv,
    ops,
    storage,
    runner,
    proc: deps.proc ?? new ProcSampler(),
    bridge: cfg.bridge,
    dataDir: cfg.dataDir,
    simulated: isSimulatedHost(cfg.libvirtUri),
    log: hlog.child({ component: 'telemetry' }),
  });
  const dispatcher = new CommandDispatcher({ ops, inventory: () => telemetry.inventory(), defaultBridge: cfg.bridge, log: hlog.child({ component: 'runner' }) });
  // The second signal: a lease file on each file-based pool. The pool list of the last round that
  // could ask libvirt serves while libvirtd does not answer.
  let leasePools: LeasePool[] = [];
  if (cfg.poolLeases) {
    poolLeases = new PoolLeaseKeeper({
      hostId: identity.hostId,
      pools: async () => {
        if (lv.state !== 'ready') return leasePools;
        leasePools = await fileBasedPools(lv).catch(() => leasePools);
        return leasePools;
      },
      leaseRemainingMs: () => lease.remainingMs(),
      log: hlog.child({ component: 'pool-lease' }),
    });
  }

  link = new AgentLink({
    identity,
    orchestrator: cfg.orchestrator ?? identity.orchestrator,
    ...(cfg.tlsServerName ? { tlsServerName: cfg.tlsServerName } : {}),
    heartbeatMs: cfg.heartbeatMs,
    telemetry,
    pools: () => collectPools(lv),
    dispatcher,
    lease,
    fenceStore,
    log: hlog,
    startedAt,
    dataDir: cfg.dataDir,
    renewFraction: cfg.certRenewFraction,
    ...(poolLeases ? { poolLeases } : {}),
    ...(deps.backoff ? { backoff: deps.backoff } : {}),
    waitForLibvirt: async () => {
      while (lv.state !== 'ready') {
        if (lv.state === 'closed') throw new Error('the libvirt connection is closed');
        await lv.connection.whenReady(5000).catch(() => undefined);
      }
    },
  });
  await link.refreshPendingFences();

  const events = await lv.onDomainLifecycle((e) => {
    // Without a lease the agent has fenced, or is fencing: the domains it destroys are its own
    // doing, reported by its FenceReport, never a guest's. The orchestrator would otherwise take
    // them for HA VMs that died on a healthy host and start them again here.
    if (!lease.valid) return;
    const msg = domainEventToProto(e, new Date());
    if (msg && msg.body?.$case === 'domainEvent') {
      hlog.debug({ vm_id: msg.body.domainEvent.vmId, event: msg.body.domainEvent.event, detail: msg.body.domainEvent.detail }, 'domain event');
      link.send(msg);
    }
  });

  link.start();
  poolLeases?.start(cfg.heartbeatMs);
  hlog.info({ version: AGENT_VERSION, orchestrator: cfg.orchestrator ?? identity.orchestrator, libvirt_uri: cfg.libvirtUri }, 'agent started');

  let stopping: Promise<void> | null = null;
  return {
    config: cfg,
    get identity() {
      return link.currentIdentity();
    },
    lease,
    dispatcher,
    fenceStore,
    libvirt: lv,
    poolLeases,
    status: () => link.status(),
    fencing: () => fencer.fenced(),
    stop: (reason = 'stopped') => {
      stopping ??= (async () => {
        abort.abort();
        dispatcher.stopAccepting();
        const drained = await dispatcher.drain(cfg.drainTimeoutMs);
        if (!drained) hlog.warn({ in_flight: dispatcher.inFlight }, 'commands still running at shutdown');
        // The VMs stay up after a clean stop, with nothing to fence them: only once the
        // orchestrator has recorded that it must not restart them elsewhere (proto Goodbye; its
        // answer is awaited until the lease ends, heartbeats stopped). Without its word (no
        // session, no answer, libvirt unreadable) the HA domains are fenced when the lease ends,
        // as a running agent cut off from the orchestrator would, before the agent exits; the
        // guard stays armed meanwhile.
        // A libvirtd that does not answer must not hold the stop: then nothing is known to be
        // left running, and the stop goes on as if the orchestrator had not answered.
        let timer: NodeJS.Timeout | undefined;
        const running = await Promise.race([
          telemetry.inventory().then((inv) => inv.domains.filter((d) => d.vmId !== '' && !STOPPED_DOMAIN_STATES.has(d.state)).map((d) => d.vmId)),
          new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`libvirt did not list the domains within ${STOP_LIST_TIMEOUT_MS} ms`)), STOP_LIST_TIMEOUT_MS))),
        ]).catch((err: unknown) => {
          hlog.warn({ err }, 'cannot list the running domains to say Goodbye');
          return null;
        });
        clearTimeout(timer);
        // Registered before the lease can end during the wait for the answer.
        const fenced = running?.length === 0 ? null : fencer.fenced();
        const settled = running !== null && (await link.goodbye(running, reason, Math.max(0, lease.remainingMs() ?? 0)));
        await link.stop();
        if (!settled && fenced) {
          hlog.warn(
            { lease_ends_in_ms: Math.max(0, Math.round(lease.remainingMs() ?? 0)) },
            'the orchestrator did not acknowledge the Goodbye: the HA domains are fenced when the lease ends, before the agent exits',
          );
          if (lease.valid) await fenced;
          await fencer.idle();
        }
        await releaseLease();
        await poolLeases?.stop();
        await events.unsubscribe().catch(() => undefined);
        await fencer.idle();
        await lv.close();
        hlog.info('agent stopped');
      })();
      return stopping;
    },
  };
}

/** How long a stopping agent waits for libvirt to list its domains (for its Goodbye). */
const STOP_LIST_TIMEOUT_MS = 3000;

/** Domain states without a QEMU process: what a Goodbye does not count as left running. */
const STOPPED_DOMAIN_STATES: ReadonlySet<string> = new Set(['shutoff', 'crashed', 'nostate']);

/** The daemon for main.ts: config, logger, startAgent, sd_notify, SIGTERM/SIGINT. Returns the exit code. */
export async function runDaemon(argv: string[]): Promise<number> {
  let cfg: AgentConfig;
  try {
    cfg = loadAgentConfig({ argv });
  } catch (err) {
    process.stderr.write(`kloudak-agent: ${(err as Error).message}\n`);
    return 2;
  }
  const { logger: log } = createAgentLogger({ level: cfg.logLevel, target: cfg.logTarget, underSystemd: cfg.underSystemd });
  // The lifeline (scripts/up.sh): its end-of-file means the starting process is gone, however it
  // ended; it stops the agent like SIGTERM, while starting or running.
  const lifelineLost = new AbortController();
  let lifeline: Lifeline | undefined;
  if (cfg.lifelineFd !== undefined) {
    try {
      lifeline = watchLifeline(cfg.lifelineFd, (reason) => {
        log.warn({ reason }, 'lifeline lost: the process that started the agent is gone');
        lifelineLost.abort();
      });
    } catch (err) {
      process.stderr.write(`kloudak-agent: ${(err as Error).message}\n`);
      return 2;
    }
  }
  const runner = new ProcessRunner();
  const notify = new SdNotifier(runner, cfg.notifySocket);
  let handle: AgentHandle;
  const early = new AbortController();
  const onEarlySignal = (): void => early.abort();
  process.once('SIGTERM', onEarlySignal);
  process.once('SIGINT', onEarlySignal);
  lifelineLost.signal.addEventListener('abort', onEarlySignal);
  try {
    // process.argv[1]: this very program (dist/main.js, or the RPM's bundle), forked as the fence guard.
    handle = await startAgent(cfg, { log, runner, signal: early.signal, ...(process.argv[1] ? { guardEntry: process.argv[1] } : {}) });
  } catch (err) {
    // Stopped while still waiting for the orchestrator or libvirt: a requested stop, not a failure.
    if (early.signal.aborted) {
      log.info('stopped before it was up');
      return 0;
    }
    log.fatal({ err: { message: (err as Error).message, name: (err as Error).name } }, 'agent cannot start');
    // A setting that is missing for this start (no join token yet) is a configuration error: exit 2,
    // which the unit's RestartPreventExitStatus keeps systemd from restarting in a loop.
    return err instanceof ConfigError ? 2 : 1;
  } finally {
    process.off('SIGTERM', onEarlySignal);
    process.off('SIGINT', onEarlySignal);
    lifelineLost.signal.removeEventListener('abort', onEarlySignal);
  }
  if (early.signal.aborted) {
    lifeline?.close();
    await handle.stop();
    return 0;
  }
  await notify.ready().catch((err: unknown) => log.warn({ err }, 'sd_notify READY failed'));
  let stopReason = 'stopped';
  await new Promise<void>((resolve) => {
    const onSignal = (sig: string): void => {
      log.info({ signal: sig }, 'shutting down');
      stopReason = sig;
      resolve();
    };
    process.once('SIGTERM', () => onSignal('SIGTERM'));
    process.once('SIGINT', () => onSignal('SIGINT'));
    if (lifelineLost.signal.aborted) onSignal('lifeline');
    else lifelineLost.signal.addEventListener('abort', () => onSignal('lifeline'));
  });
  lifeline?.close();
  await notify.stopping().catch((err: unknown) => log.warn({ err }, 'sd_notify STOPPING failed'));
  await handle.stop(stopReason);
  return 0;
}
