// The VM create task against a simulated agent (the real protocol over real sockets) on
// PostgreSQL: which commands it sends, and when it asks the host whether the domain runs.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as pb from '@kloudak/proto/agent';
import { connectSimHost, startHarness, type Harness } from '../testing/harness.js';
import { createWorld, uniq, type World } from '../testing/fixtures.js';
import type { SimAgent } from '../agent-api/testing/sim-agent.js';
import { createdRunning } from './vm.js';

describe('createdRunning', () => {
  it('takes a create answer younger than one poll period as the host saying the domain runs', () => {
    assert.equal(createdRunning({ created: true, runningAt: 1000 }, 1000, 500), true);
    assert.equal(createdRunning({ created: true, runningAt: 1000 }, 1500, 500), true);
  });
  it('does not take an older one (a resumed task), one from the future, or a result without it', () => {
    assert.equal(createdRunning({ created: true, runningAt: 1000 }, 1501, 500), false);
    assert.equal(createdRunning({ created: true, runningAt: 2000 }, 1000, 500), false);
    assert.equal(createdRunning({ created: true }, 1000, 500), false);
    assert.equal(createdRunning(undefined, 1000, 500), false);
    assert.equal(createdRunning({ created: true, runningAt: '1000' }, 1000, 500), false);
  });
});

describe('the VM create task on a simulated host', () => {
  let h: Harness;
  let w: World;
  let sim: SimAgent;
  /** Action kinds the host received, in order. */
  const seen: string[] = [];
  const running = new Set<string>();

  before(async () => {
    h = await startHarness('postgres');
    w = await createWorld(h.orch.db.client);
    sim = (
      await connectSimHost(h, w.area.id, w.pool.name, undefined, {
        onCommand: (c) => {
          const kind = c.action?.$case ?? 'none';
          seen.push(kind);
          if (c.action?.$case === 'createVm') running.add(c.vmId);
          if (c.action?.$case === 'getInventory') {
            const domains = [...running].map((id) => ({ name: `kloudak-${id}`, uuid: id, vmId: id, state: pb.DomainState.DOMAIN_STATE_RUNNING, vcpus: 1, memoryBytes: 1n }));
            return { ok: true, payload: { $case: 'inventory', inventory: { domains, volumes: [], ovsPorts: [] } } };
          }
          return { ok: true };
        },
      })
    ).agent;
  });
  after(async () => {
    await sim?.stop();
    await h?.close();
  });

  it('creates a running VM with one command to the host: no ensureNetwork first (createVm ensures its NICs\' VLANs), no inventory read after', async () => {
    const r = await h.admin.client.post(`/api/v1/workspaces/${w.workspace.name}/vms`, { name: uniq('vm'), template: w.template.name, networks: [w.network.name], ha: false });
    assert.equal(r.status, 202, JSON.stringify(r.body));
    const taskId = r.body.task.id as string;
    let t: Record<string, unknown> = {};
    for (let i = 0; i < 200; i++) {
      t = (await h.admin.client.get(`/api/v1/workspaces/${w.workspace.name}/tasks/${taskId}`)).body as Record<string, unknown>;
      if (['succeeded', 'failed', 'rolled_back'].includes(String(t['state']))) break;
      await new Promise((res) => setTimeout(res, 25));
    }
    assert.equal(t['state'], 'succeeded', JSON.stringify(t));
    assert.deepEqual((t['steps'] as { name: string }[]).map((s) => s.name), ['claim', 'networks', 'create', 'running']);
    assert.deepEqual(seen, ['createVm']);
    const vm = (await h.admin.client.get(`/api/v1/workspaces/${w.workspace.name}/vms/${r.body.vm.name as string}`)).body;
    assert.equal(vm.state, 'running');
  });
});
