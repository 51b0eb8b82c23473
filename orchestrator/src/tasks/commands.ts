import { createHash } from 'node:crypto';
import type { AgentChannel } from '../agent-api/channel.js';
import type { AgentCommand, CommandResult } from '../domain/agent.js';
import { StepError, type StepContext } from './types.js';

/** The id of the n-th command a step's attempt sends (a step may send several: one per network). */
export function nthCommandId(commandId: string, n: number): string {
  if (n === 0) return commandId;
  const h = createHash('sha256').update(`${commandId}#${n}`).digest();
  h[6] = (h[6]! & 0x0f) | 0x50;
  h[8] = (h[8]! & 0x3f) | 0x80;
  const x = h.subarray(0, 16).toString('hex');
  return `${x.slice(0, 8)}-${x.slice(8, 12)}-${x.slice(12, 16)}-${x.slice(16, 20)}-${x.slice(20, 32)}`;
}

/** Agent error codes that retrying the same command cannot cure. */
const FINAL = new Set(['invalid_argument', 'failed_precondition', 'unimplemented', 'already_exists']);

/**
 * Send a step's command and turn a failed result into a {@link StepError}: final for codes that
 * another attempt cannot cure, `not_sent` when it never reached the host (rollback then knows the
 * agent cannot have acted on it), retryable otherwise.
 */
export async function runCommand(agents: AgentChannel, ctx: StepContext, hostId: string, command: AgentCommand, n = 0): Promise<CommandResult> {
  const r = await agents.sendCommand(hostId, command, { deadline: ctx.deadline, commandId: nthCommandId(ctx.commandId, n) });
  if (r.ok) return r;
  const code = r.error?.code ?? 'internal';
  const message = `${command.action.kind} on the host: ${r.error?.message ?? 'failed'} (${code})`;
  if (r.notSent) throw new StepError(message, 'not_sent', true);
  throw new StepError(message, code, !FINAL.has(code));
}
