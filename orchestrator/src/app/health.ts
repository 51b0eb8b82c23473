import type { Services } from './services.js';

/** Whether this orchestrator can serve: its database answers and every migration is applied. */
export async function readiness(s: Services): Promise<{ ready: boolean; status: string; database: string; pending?: string[] }> {
  try {
    await s.db.ping();
    const pending = await s.db.pending();
    return { ready: pending.length === 0, status: pending.length === 0 ? 'ready' : 'migrations pending', database: s.db.kind, pending };
  } catch {
    return { ready: false, status: 'database unreachable', database: s.db.kind };
  }
}
