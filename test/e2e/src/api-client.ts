// The REST API as the e2e tests and the benchmarks use it: JSON calls with a bearer token, waiting
// for a task to end, waiting for a host to be up and connected.
import assert from 'node:assert/strict';
import { waitFor } from '@kloudak/testkit';

/** An API answer's JSON body. */
export type Json = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any -- API answers

/** Task states after which nothing more happens. */
export const FINAL_TASK_STATES = ['succeeded', 'failed', 'rolled_back'];

/** The body of an answer that must have `status`; an error naming `what` with the answer otherwise. */
export async function must(what: string, status: number, answer: Promise<{ status: number; body: Json }>): Promise<Json> {
  const r = await answer;
  if (r.status !== status) throw new Error(`${what}: ${r.status} ${JSON.stringify(r.body)}`);
  return r.body;
}

/** A client of one orchestrator's REST API (its URL may change: an orchestrator restarted elsewhere). */
export class ApiClient {
  token = '';

  constructor(
    private readonly baseUrl: () => string,
    readonly workspace: string,
  ) {}

  async call(method: string, path: string, body?: unknown): Promise<{ status: number; body: Json }> {
    const res = await fetch(`${this.baseUrl()}/api/v1${path}`, {
      method,
      headers: { 'content-type': 'application/json', ...(this.token ? { authorization: `Bearer ${this.token}` } : {}) },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.text();
    return { status: res.status, body: text ? (JSON.parse(text) as Json) : {} };
  }

  async login(user: { username: string; password: string }): Promise<void> {
    const r = await this.call('POST', '/auth/login', user);
    assert.equal(r.status, 200, JSON.stringify(r.body));
    this.token = r.body['token'];
  }

  /** A task of the workspace, read once. */
  async task(id: string, ws = this.workspace): Promise<Json> {
    return (await this.call('GET', `/workspaces/${ws}/tasks/${id}`)).body;
  }

  /** Wait for a task to end; returns it (the last view is in the error otherwise). */
  async taskEnd(id: string, timeoutMs = 60_000, ws = this.workspace): Promise<Json> {
    let t: Json = {};
    await waitFor(async () => {
      t = await this.task(id, ws);
      return FINAL_TASK_STATES.includes(t['state']);
    }, timeoutMs, `task ${id}`).catch((e: unknown) => {
      throw new Error(`${(e as Error).message}: ${JSON.stringify(t)}`);
    });
    return t;
  }

  /** Wait for a task to end and require that it succeeded (the task is in the message otherwise). */
  async succeeded(id: string, timeoutMs = 60_000, ws = this.workspace): Promise<Json> {
    const t = await this.taskEnd(id, timeoutMs, ws);
    assert.equal(t['state'], 'succeeded', JSON.stringify(t));
    return t;
  }

  /** Wait until the host named `name` is up and connected; returns its id. `diag` adds to a timeout's message. */
  async waitHostUp(name: string, diag: () => string = () => '', timeoutMs = 30_000): Promise<string> {
    let id = '';
    await waitFor(async () => {
      const h = ((await this.call('GET', '/hosts?limit=500')).body['items'] as Json[]).find((x) => x['name'] === name);
      if (!h) return false;
      id = h['id'];
      const d = (await this.call('GET', `/hosts/${id}`)).body;
      return d['state'] === 'up' && d['connected'] === true;
    }, timeoutMs, `host ${name} up`).catch((e: unknown) => {
      throw new Error(`${(e as Error).message}\n${diag().slice(-2000)}`);
    });
    return id;
  }
}

/** The agent settings every agent on this machine needs: qemu domains (TCG), OVS userspace datapath, no NIC offload, `bridge`. */
export function agentHostEnv(bridge: string): Record<string, string> {
  return {
    KLOUDAK_AGENT_DOMAIN_TYPE: 'qemu',
    KLOUDAK_AGENT_OVS_DATAPATH: 'netdev',
    KLOUDAK_AGENT_NIC_OFFLOAD: 'off',
    KLOUDAK_AGENT_BRIDGE: bridge,
  };
}

/** {@link agentHostEnv} with the VM e2e tests' heartbeat (250 ms). */
export function agentTestEnv(bridge: string): Record<string, string> {
  return { KLOUDAK_AGENT_HEARTBEAT_MS: '250', ...agentHostEnv(bridge) };
}

/** The JSON log lines of a process's output (other lines skipped). */
export function jsonLines(output: string): Json[] {
  const out: Json[] = [];
  for (const line of output.split('\n')) {
    if (!line.startsWith('{')) continue;
    try {
      out.push(JSON.parse(line) as Json);
    } catch {
      // a line cut by the read: not a log entry yet
    }
  }
  return out;
}
