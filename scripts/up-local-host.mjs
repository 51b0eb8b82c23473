// Part of `npm start` (scripts/up.sh): prepares the orchestrator's inventory for the local host
// and, when the local agent is not enrolled yet, creates its one-time join token.
//
// Talks to the running orchestrator over its REST API only (the embedded database belongs to the
// orchestrator process). Idempotent: what exists is reused, so every `npm start` runs it.
//
//   node scripts/up-local-host.mjs
//
// Environment (set by up.sh):
//   UP_URL                 the orchestrator's base URL, e.g. http://127.0.0.1:8080
//   KLOUDAK_ADMIN_USER, KLOUDAK_ADMIN_PASSWORD   the admin to sign in as (environment, never argv)
//   UP_HOST_NAME           the local agent's host name
//   UP_AGENT_ENROLLED      "1" when the agent's data dir already holds an identity
//   UP_POOL_NAME, UP_POOL_PATH, UP_TEMPLATE_IMAGE   the local pool and the test guest's volume
//   UP_AREA_SUBNET         the area "local"'s subnet (default 10.250.0.0/24)
//   UP_WAIT_ONLY=1         only wait until the orchestrator is ready (no local host: prints nothing)
//   UP_LIFELINE_FD         up.sh's lifeline (see up.sh): when up.sh dies, so does this script, at
//                          once, instead of waiting out its timeouts
//
// Stdout: one line, the decision — `enrolled` (nothing to do), `token <join token>` (enroll with
// it), or `reenroll <join token>` (the agent's identity names a host the orchestrator no longer
// has: move it aside and enroll again). Everything else goes to stderr. Exit 1 with a reason.

import { readFileSync } from 'node:fs';

import { watchLifeline } from '@kloudak/common';

const env = process.env;
if (env.UP_LIFELINE_FD) watchLifeline(Number(env.UP_LIFELINE_FD), () => process.exit(1));
const base = (env.UP_URL ?? '').replace(/\/+$/, '');
const hostName = env.UP_HOST_NAME ?? '';
const enrolled = env.UP_AGENT_ENROLLED === '1';
const poolName = env.UP_POOL_NAME ?? 'local';
const poolPath = env.UP_POOL_PATH ?? '';
const image = env.UP_TEMPLATE_IMAGE ?? '';
const subnet = env.UP_AREA_SUBNET ?? '10.250.0.0/24';
// Where the test guest's kernel, initrd and command line are on this host (qemu host only).
const bootDir = env.UP_BOOT_DIR ?? '';
const AREA = 'local';
const TEMPLATE = 'test-guest';

function log(msg) {
  process.stderr.write(`[${new Date().toISOString().slice(11, 19)}] ${msg}\n`);
}

class Fail extends Error {}

let token = '';

/** One REST call; the body is parsed JSON (or undefined for an empty body). */
async function api(method, path, body) {
  const res = await fetch(`${base}/api/v1${path}`, {
    method,
    headers: { 'content-type': 'application/json', ...(token ? { authorization: `Bearer ${token}` } : {}) },
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
    signal: AbortSignal.timeout(30_000),
  });
  const text = await res.text();
  let json;
  try {
    json = text ? JSON.parse(text) : undefined;
  } catch {
    json = { error: { message: text.slice(0, 200) } };
  }
  return { status: res.status, body: json };
}

function explain(what, r) {
  return new Fail(`${what}: HTTP ${r.status} ${r.body?.error?.message ?? ''}`.trim());
}

/** The first admin is created at start; the orchestrator answers /readyz once migrations ran. */
async function waitReady(timeoutMs) {
  const end = Date.now() + timeoutMs;
  for (;;) {
    try {
      const res = await fetch(`${base}/readyz`, { signal: AbortSignal.timeout(2000) });
      if (res.ok) return;
    } catch {
      // not listening yet
    }
    if (Date.now() > end) throw new Fail(`the orchestrator did not become ready at ${base}/readyz within ${timeoutMs / 1000} s`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

/** GET /<kind>/<name>; creates it with `body` on 404. */
async function ensureNamed(kind, name, body) {
  const got = await api('GET', `/${kind}/${encodeURIComponent(name)}`);
  if (got.status === 200) return got.body;
  if (got.status !== 404) throw explain(`read ${kind}/${name}`, got);
  const made = await api('POST', `/${kind}`, body);
  if (made.status !== 201) throw explain(`create ${kind} ${name}`, made);
  log(`created ${kind.replace(/s$/, '')} '${name}'`);
  return made.body;
}

async function findHost(name) {
  let after = '';
  for (;;) {
    const r = await api('GET', `/hosts?limit=100${after ? `&after=${encodeURIComponent(after)}` : ''}`);
    if (r.status !== 200) throw explain('list hosts', r);
    const hit = r.body.items.find((h) => h.name === name);
    if (hit) return hit;
    if (!r.body.nextCursor) return undefined;
    after = r.body.nextCursor;
  }
}

async function main() {
  if (env.UP_WAIT_ONLY === '1') {
    if (!base) throw new Fail('UP_URL is required');
    await waitReady(180_000);
    return;
  }
  if (!base || !hostName || !poolPath || !image) throw new Fail('UP_URL, UP_HOST_NAME, UP_POOL_PATH and UP_TEMPLATE_IMAGE are required');
  await waitReady(180_000);
  const login = await api('POST', '/auth/login', { username: env.KLOUDAK_ADMIN_USER, password: env.KLOUDAK_ADMIN_PASSWORD });
  if (login.status !== 200) throw explain(`sign in as ${env.KLOUDAK_ADMIN_USER}`, login);
  token = login.body.token;

  const gateway = subnet.replace(/\.\d+\/\d+$/, '.1');
  const area = await ensureNamed('areas', AREA, { name: AREA, subnet, gateway, vlanRange: '100-199' });
  await ensureNamed('pools', poolName, { name: poolName, area: AREA, path: poolPath, type: 'dir' });
  // The test guest has no bootloader: it boots its kernel directly, with the files up.sh keeps
  // beside the pool. A template made by an older start without them gets them now.
  const boot = bootDir
    ? { kernel: `${bootDir}/vmlinuz`, initrd: `${bootDir}/initrd.img`, cmdline: readFileSync(`${bootDir}/cmdline`, 'utf8').trim() }
    : null;
  const tpl = await ensureNamed('templates', TEMPLATE, {
    name: TEMPLATE,
    os: 'kloudak-test-guest',
    description: 'the tiny test guest (busybox; reads its NoCloud seed, serves its instance-id over HTTP)',
    cpu: 1,
    ramMb: 128,
    diskGb: 1,
    image,
    boot,
  });
  if (JSON.stringify(tpl.boot ?? null) !== JSON.stringify(boot)) {
    const r = await api('PATCH', `/templates/${TEMPLATE}`, { boot });
    if (r.status !== 200) throw explain(`set the boot settings of template ${TEMPLATE}`, r);
    log(`template '${TEMPLATE}' boots ${boot ? boot.kernel : 'its disk'}`);
  }

  const host = await findHost(hostName);
  if (host && enrolled) {
    process.stdout.write('enrolled\n');
    return;
  }
  if (host && !enrolled) {
    // A host record without the identity that goes with it (the agent's data dir was removed):
    // nothing can ever connect as it, so it gives its name back.
    if (host.connected) throw new Fail(`host ${hostName} is connected from elsewhere; set KLOUDAK_AGENT_HOSTNAME to another name`);
    const del = await api('DELETE', `/hosts/${host.id}`);
    if (del.status !== 204 && del.status !== 404) throw explain(`remove the stale host record ${hostName}`, del);
    log(`removed the stale host record ${hostName} (its agent identity is gone)`);
  }
  const jt = await api('POST', '/hosts/join-tokens', { area: area.id, expiresIn: 600 });
  if (jt.status !== 201) throw explain('create a join token', jt);
  process.stdout.write(`${enrolled ? 'reenroll' : 'token'} ${jt.body.token}\n`);
}

main().catch((err) => {
  log(`ERROR: ${err instanceof Fail ? err.message : (err?.stack ?? String(err))}`);
  process.exit(1);
});
