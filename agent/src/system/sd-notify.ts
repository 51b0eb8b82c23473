/**
 * sd_notify for a Type=notify unit. Node cannot send unix datagrams, so the state goes through
 * `systemd-notify`, run by the CommandRunner with NOTIFY_SOCKET inherited from the environment.
 * Because the sender is then a child process, the unit needs `NotifyAccess=all`.
 */
import type { CommandRunner } from '../ports.js';

/** Sends READY=1 / STOPPING=1 when the agent was started with NOTIFY_SOCKET set; does nothing otherwise. */
export class SdNotifier {
  constructor(
    private readonly runner: CommandRunner,
    /** NOTIFY_SOCKET, or undefined when not started by systemd as Type=notify. */
    private readonly socket: string | undefined,
  ) {}

  get enabled(): boolean {
    return this.socket !== undefined;
  }

  /** READY=1: start-up is complete. */
  async ready(): Promise<void> {
    if (this.socket) await this.runner.run(['systemd-notify', '--ready'], { timeoutMs: 5000 });
  }

  /** STOPPING=1: shutdown began. */
  async stopping(): Promise<void> {
    if (this.socket) await this.runner.run(['systemd-notify', 'STOPPING=1'], { timeoutMs: 5000 });
  }

  /** STATUS=<text>: shown by `systemctl status`. */
  async status(text: string): Promise<void> {
    if (this.socket) await this.runner.run(['systemd-notify', `STATUS=${text.replace(/\n/g, ' ')}`], { timeoutMs: 5000 });
  }
}
