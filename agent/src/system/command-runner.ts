/**
 * The agent's one way to run host commands ({@link CommandRunner}, see ports.ts): an argv array
 * handed to the kernel's execve — never a shell — with a time limit, optional stdin, bounded
 * output capture, and a typed {@link CommandError} for every way a run can fail.
 *
 * Secrets (a password, a key) travel through `input` (stdin), never through argv: argv is visible
 * to every user in `ps` and is written into error messages and debug logs; `input` never is.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { constants as osConstants } from 'node:os';
import type { CommandResult, CommandRunner, RunOptions } from '../ports.js';

/** Why a run failed. */
export type CommandFailure =
  /** The process exited with a non-zero code (and `allowFailure` was not set). */
  | 'exit'
  /** The process was killed by a signal it did not get from us. */
  | 'signal'
  /** The time limit passed; we killed it (SIGKILL). */
  | 'timeout'
  /** The process could not be started (ENOENT: not installed, EACCES, bad argv). */
  | 'spawn'
  /** It wrote more to stdout than the runner keeps; we killed it. */
  | 'output_limit'
  /** It "succeeded" but what it printed shows it did not do the job (raised by callers). */
  | 'unexpected_output';

/** The fields of a {@link CommandError}. */
export interface CommandErrorInit {
  argv: readonly string[];
  reason: CommandFailure;
  /** Exit code, when the process exited by itself. */
  code?: number | null;
  signal?: NodeJS.Signals | null;
  /** Everything (or the end of what) the process wrote to stderr. Only its tail is kept. */
  stderr?: string;
  /** Replaces the generated description of what went wrong (argv and stderr are still added). */
  detail?: string;
  cause?: unknown;
}

/** Longest stderr tail an error keeps. */
const STDERR_TAIL_CHARS = 4096;
/** Longest rendering of argv in a message. */
const ARGV_MESSAGE_CHARS = 400;
/** Longest stderr excerpt in a message. */
const STDERR_MESSAGE_CHARS = 600;

/**
 * A host command failed. Carries the argv (program and arguments — never the stdin input), the
 * exit code, the end of stderr and whether we killed it for taking too long.
 *
 * Not a KloudakError: it is a host failure, not a user-facing error code; whoever reports a host
 * operation's outcome decides what it means (usually `internal` or `unavailable`).
 */
export class CommandError extends Error {
  readonly argv: readonly string[];
  readonly reason: CommandFailure;
  /** Exit code; null when the process did not exit by itself (signal, timeout, never started). */
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  /** Whether the run hit its time limit and was killed. */
  readonly timedOut: boolean;
  /** The last {@link STDERR_TAIL_CHARS} characters of stderr, trimmed. */
  readonly stderrTail: string;

  constructor(init: CommandErrorInit) {
    const stderrTail = tail(init.stderr ?? '', STDERR_TAIL_CHARS).trim();
    const what = init.detail ?? describeFailure(init);
    const excerpt = stderrTail === '' ? '' : `: ${tail(stderrTail, STDERR_MESSAGE_CHARS).replace(/\s*\n\s*/g, ' | ')}`;
    super(`${formatArgv(init.argv)} ${what}${excerpt}`, init.cause === undefined ? undefined : { cause: init.cause });
    this.name = 'CommandError';
    this.argv = Object.freeze([...init.argv]);
    this.reason = init.reason;
    this.code = init.code ?? null;
    this.signal = init.signal ?? null;
    this.timedOut = init.reason === 'timeout';
    this.stderrTail = stderrTail;
  }

  /** The program that was run (argv[0]). */
  get program(): string {
    return this.argv[0] ?? '';
  }

  /** The same failure, its message prefixed with what the caller was trying to do. */
  withContext(context: string): CommandError {
    const e = new CommandError({
      argv: this.argv,
      reason: this.reason,
      code: this.code,
      signal: this.signal,
      stderr: this.stderrTail,
      cause: this,
    });
    e.message = `${context}: ${this.message}`;
    return e;
  }
}

function describeFailure(init: CommandErrorInit): string {
  switch (init.reason) {
    case 'exit':
      return `exited with code ${init.code ?? '?'}`;
    case 'signal':
      return `was killed by ${init.signal ?? 'a signal'}`;
    case 'timeout':
      return 'timed out and was killed';
    case 'spawn': {
      const errno = (init.cause as NodeJS.ErrnoException | undefined)?.code;
      if (errno === 'ENOENT') return 'could not be started: program not found (not installed, or not in PATH)';
      if (errno === 'EACCES') return 'could not be started: permission denied';
      return `could not be started${init.cause instanceof Error ? ` (${init.cause.message})` : ''}`;
    }
    case 'output_limit':
      return 'wrote too much output and was killed';
    case 'unexpected_output':
      return 'returned unexpected output';
  }
}

/** argv for a message: plain words as they are, anything else JSON-quoted; long argv cut. */
export function formatArgv(argv: readonly string[]): string {
  const s = argv.map((a) => (/^[\w@%+=:,./-]+$/.test(a) ? a : JSON.stringify(a))).join(' ');
  return s.length > ARGV_MESSAGE_CHARS ? `${s.slice(0, ARGV_MESSAGE_CHARS)}…` : s;
}

function tail(s: string, max: number): string {
  return s.length > max ? s.slice(s.length - max) : s;
}

/** One debug event of a run: written when it starts and when it ends. Never holds the input. */
export type CommandEvent =
  | { event: 'start'; argv: readonly string[]; timeoutMs: number; inputBytes: number }
  | {
      event: 'end';
      argv: readonly string[];
      durationMs: number;
      code: number | null;
      signal: NodeJS.Signals | null;
      timedOut: boolean;
      stdoutBytes: number;
      stderrBytes: number;
      /** Set when the run failed to start or was killed by us. */
      failure?: CommandFailure;
    };

/** Options of a {@link ProcessRunner}. */
export interface ProcessRunnerOptions {
  /** Time limit of runs that give none. Default 30 s. */
  defaultTimeoutMs?: number;
  /**
   * Most bytes kept of each of stdout and stderr. A process that writes more to stdout is killed
   * and the run fails (`output_limit`): a cut-off listing must never be parsed as a whole one.
   * Stderr beyond the limit is dropped from the front (the end of stderr is what explains an
   * error). Default 1 MiB.
   */
  maxOutputBytes?: number;
  /** Environment of the processes. Default: the agent's own. */
  env?: NodeJS.ProcessEnv;
  /**
   * Structured debug hook, e.g. `(e) => log.debug(e, 'command')`. Called synchronously; its
   * exceptions are ignored.
   */
  onEvent?: (event: CommandEvent) => void;
}

/**
 * How long to wait for stdout/stderr to close after the process exited. A grandchild that
 * inherited them (a daemon that did not close its standard streams) can keep them open forever.
 */
const CLOSE_GRACE_MS = 500;
/** How long a SIGKILLed process may take to be reaped before the run gives up on it. */
const KILL_GRACE_MS = 5_000;

/**
 * {@link CommandRunner} over child_process.spawn.
 *
 * - argv only, `shell: false`: no value is ever interpreted by a shell.
 * - Each process runs in its own process group; a time-out SIGKILLs the whole group, so helpers
 *   it started die with it (daemons that detach into their own session are not affected).
 * - Without `input`, stdin is /dev/null, so a command that unexpectedly prompts fails at once.
 * - A process killed by a signal counts as failed; with `allowFailure` it resolves with the shell
 *   convention code 128 + signal number. Time-outs, spawn failures and output overflow always
 *   throw, `allowFailure` or not.
 */
export class ProcessRunner implements CommandRunner {
  private readonly defaultTimeoutMs: number;
  private readonly maxOutputBytes: number;
  private readonly env: NodeJS.ProcessEnv | undefined;
  private readonly onEvent: ((event: CommandEvent) => void) | undefined;

  constructor(opts: ProcessRunnerOptions = {}) {
    this.defaultTimeoutMs = opts.defaultTimeoutMs ?? 30_000;
    this.maxOutputBytes = opts.maxOutputBytes ?? 1024 * 1024;
    this.env = opts.env;
    this.onEvent = opts.onEvent;
  }

  async run(argv: readonly string[], opts: RunOptions = {}): Promise<CommandResult> {
    if (!Array.isArray(argv) || argv.length === 0 || argv.some((a) => typeof a !== 'string')) {
      throw new TypeError('argv must be a non-empty array of strings');
    }
    const args = [...argv];
    const timeoutMs = opts.timeoutMs ?? this.defaultTimeoutMs;
    const input = opts.input === undefined ? undefined : typeof opts.input === 'string' ? Buffer.from(opts.input, 'utf8') : opts.input;
    this.emit({ event: 'start', argv: args, timeoutMs, inputBytes: input?.byteLength ?? 0 });
    const started = performance.now();

    const outcome = await this.spawnAndWait(args, timeoutMs, input);
    const { code, signal, failure, stdout, stderr } = outcome;
    this.emit({
      event: 'end',
      argv: args,
      durationMs: Math.round(performance.now() - started),
      code,
      signal,
      timedOut: failure === 'timeout',
      stdoutBytes: stdout.byteLength,
      stderrBytes: outcome.stderrBytes,
      ...(failure === undefined ? {} : { failure }),
    });

    const stderrText = stderr.toString('utf8');
    if (failure !== undefined) {
      throw new CommandError({ argv: args, reason: failure, code, signal, stderr: stderrText, cause: outcome.error });
    }
    const exitCode = code ?? 128 + (signal === null ? 0 : (osConstants.signals[signal] ?? 0));
    if (exitCode !== 0 && !opts.allowFailure) {
      throw new CommandError({ argv: args, reason: code === null ? 'signal' : 'exit', code, signal, stderr: stderrText });
    }
    return { code: exitCode, stdout: stdout.toString('utf8'), stderr: stderrText };
  }

  private emit(event: CommandEvent): void {
    if (this.onEvent === undefined) return;
    try {
      this.onEvent(event);
    } catch {
      // A logging hook must not change the outcome of a command.
    }
  }

  private spawnAndWait(argv: string[], timeoutMs: number, input: Uint8Array | undefined): Promise<Outcome> {
    return new Promise<Outcome>((resolve) => {
      const stdout = new Capture(this.maxOutputBytes, 'head');
      const stderr = new Capture(this.maxOutputBytes, 'tail');
      let failure: CommandFailure | undefined;
      let error: unknown;
      let exit: { code: number | null; signal: NodeJS.Signals | null } | undefined;
      let settled = false;
      const timers: NodeJS.Timeout[] = [];

      const finish = (): void => {
        if (settled) return;
        settled = true;
        for (const t of timers) clearTimeout(t);
        child?.stdout?.destroy();
        child?.stderr?.destroy();
        resolve({
          code: exit?.code ?? null,
          signal: exit?.signal ?? null,
          failure,
          error,
          stdout: stdout.bytes(),
          stderr: stderr.bytes(),
          stderrBytes: stderr.total,
        });
      };

      let child: ChildProcess | undefined;
      try {
        child = spawn(argv[0]!, argv.slice(1), {
          shell: false,
          detached: true, // own process group, so a time-out can kill the whole group
          stdio: [input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
          env: this.env ?? process.env,
          windowsHide: true,
        });
      } catch (err) {
        // Synchronous spawn errors: e.g. a NUL byte in an argument.
        failure = 'spawn';
        error = err;
        finish();
        return;
      }
      const proc = child;

      const killGroup = (why: CommandFailure): void => {
        if (failure !== undefined) return;
        failure = why;
        if (exit !== undefined) return; // exited already (output still draining): nothing to kill
        try {
          if (proc.pid !== undefined) process.kill(-proc.pid, 'SIGKILL');
        } catch {
          proc.kill('SIGKILL'); // the group is gone already; make sure of the child itself
        }
        // A process stuck in uninterruptible sleep is not reaped: do not wait for it forever.
        timers.push(setTimeout(finish, KILL_GRACE_MS));
      };

      proc.on('error', (err) => {
        // Without a pid the process never started (ENOENT, EACCES...). Other 'error' events
        // (a failed kill) change nothing: exit and close still come.
        if (proc.pid !== undefined) return;
        failure ??= 'spawn';
        error = err;
        finish();
      });
      proc.on('exit', (code, signal) => {
        exit = { code, signal };
        timers.push(setTimeout(finish, CLOSE_GRACE_MS));
      });
      proc.on('close', finish);

      proc.stdout?.on('data', (chunk: Buffer) => {
        if (!stdout.push(chunk)) killGroup('output_limit');
      });
      proc.stderr?.on('data', (chunk: Buffer) => void stderr.push(chunk));

      if (input !== undefined && proc.stdin) {
        // The process may exit without reading its input (EPIPE): that is its business, and its
        // exit code tells the story.
        proc.stdin.on('error', () => {});
        proc.stdin.end(input);
      }

      if (proc.pid !== undefined) {
        timers.push(
          setTimeout(() => {
            if (exit === undefined) killGroup('timeout');
          }, timeoutMs),
        );
      }
    });
  }
}

interface Outcome {
  code: number | null;
  signal: NodeJS.Signals | null;
  failure: CommandFailure | undefined;
  error: unknown;
  stdout: Buffer;
  stderr: Buffer;
  stderrBytes: number;
}

/** Collects a stream's chunks up to a limit, keeping the head (stdout) or the tail (stderr). */
class Capture {
  private chunks: Buffer[] = [];
  private kept = 0;
  /** Bytes received in all. */
  total = 0;

  constructor(
    private readonly max: number,
    private readonly keep: 'head' | 'tail',
  ) {}

  /** Adds a chunk; false once more than `max` bytes arrived (head mode drops the excess). */
  push(chunk: Buffer): boolean {
    this.total += chunk.length;
    if (this.keep === 'head') {
      const room = this.max - this.kept;
      if (room > 0) {
        const part = chunk.length > room ? chunk.subarray(0, room) : chunk;
        this.chunks.push(part);
        this.kept += part.length;
      }
      return this.total <= this.max;
    }
    this.chunks.push(chunk);
    this.kept += chunk.length;
    while (this.kept > this.max && this.chunks.length > 0) {
      const first = this.chunks[0]!;
      const excess = this.kept - this.max;
      if (first.length <= excess) {
        this.chunks.shift();
        this.kept -= first.length;
      } else {
        this.chunks[0] = first.subarray(excess);
        this.kept -= excess;
      }
    }
    return true;
  }

  bytes(): Buffer {
    return Buffer.concat(this.chunks);
  }
}
