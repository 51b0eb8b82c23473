#!/usr/bin/env bash
# Builds the kloudak-agent RPM (x86_64) from this checkout, offline.
#
#   agent/packaging/build-rpm.sh [--out DIR] [--no-tsc]
#
#   --out DIR   where the .rpm goes (default: .cache/rpm/ at the repository root)
#   --no-tsc    skip `tsc -b agent` (the caller has just built it)
#
# Steps: tsc -b agent → esbuild bundles agent/dist/main.js and everything it imports into ONE
# ESM file, kloudak-agent.mjs, except the native systemd-journald binding, which is copied beside
# it as node_modules/systemd-journald (JS + the built journal_send.node) → both are checked to run
# → a source tarball → rpmbuild -bb with a private _topdir. Prints the .rpm's path on stdout;
# progress goes to stderr. Needs node, rpmbuild and tar; no network.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="$root/.cache/rpm"
run_tsc=1

log() { printf 'build-rpm: %s\n' "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

while [ $# -gt 0 ]; do
  case "$1" in
    --out)
      [ $# -ge 2 ] || die "--out needs a directory"
      out="$2"
      shift 2
      ;;
    --out=*)
      out="${1#--out=}"
      shift
      ;;
    --no-tsc)
      run_tsc=0
      shift
      ;;
    -h | --help)
      sed -n '2,13p' "$0"
      exit 0
      ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done

for tool in node rpmbuild tar; do
  command -v "$tool" >/dev/null || die "$tool not found (Debian: apt-get install nodejs rpm tar)"
done
esbuild="$root/node_modules/.bin/esbuild"
[ -x "$esbuild" ] || die "esbuild not found at $esbuild (a root devDependency: npm ci)"
# The native module is built for the machine's architecture; the RPM says x86_64.
[ "$(node -p process.arch)" = x64 ] || die "the RPM is x86_64 (native systemd-journald): build on x86_64"

# --- version: agent/src/version.ts and agent/package.json must agree ---------------------------
ts_version="$(sed -n "s/^export const AGENT_VERSION = '\([^']*\)';.*/\1/p" "$root/agent/src/version.ts")"
pkg_version="$(node -e 'process.stdout.write(JSON.parse(require("fs").readFileSync(process.argv[1], "utf8")).version)' "$root/agent/package.json")"
[ -n "$ts_version" ] || die "no AGENT_VERSION = '…' in agent/src/version.ts"
[ "$ts_version" = "$pkg_version" ] ||
  die "versions differ: agent/src/version.ts says $ts_version, agent/package.json says $pkg_version"
[[ "$ts_version" =~ ^[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.]+)?$ ]] || die "not a semver version: $ts_version"
# RPM versions cannot hold '-'; '~' sorts a pre-release before its release (0.2.0~rc.1 < 0.2.0).
rpm_version="${ts_version//-/\~}"
log "version $ts_version (rpm $rpm_version)"

if [ "$run_tsc" -eq 1 ]; then
  log "tsc -b agent"
  (cd "$root" && npx --no -- tsc -b agent) >&2
fi
[ -f "$root/agent/dist/main.js" ] || die "agent/dist/main.js missing: build the agent (npx tsc -b agent)"

work="$(mktemp -d "${TMPDIR:-/tmp}/kloudak-rpm.XXXXXX")"
trap 'rm -rf "$work"' EXIT
name="kloudak-agent-$rpm_version"
stage="$work/$name"
mkdir -p "$stage/node_modules" "$work/rpmbuild/SOURCES" "$work/rpmbuild/SPECS" "$work/tmp"

# --- the bundle ----------------------------------------------------------------------------------
# ESM, because main.ts uses top-level await (CommonJS output cannot). Bundled CommonJS code
# (grpc-js, pino, …) calls require() for node built-ins: esbuild's __require shim forwards to a
# `require` in scope, which the banner creates. __dirname/__filename do not exist in ESM: they are
# defined to the bundle's own path (only lazy, unused paths read them: grpc-js channelz protos,
# pino worker transports). esbuild renames any bundled module's own `require`/`__dirname`, so
# the banner's names cannot collide.
banner="import { createRequire as __kloudakCreateRequire } from 'node:module';"
banner+=" import { fileURLToPath as __kloudakFileURLToPath } from 'node:url';"
banner+=" import { dirname as __kloudakDirname } from 'node:path';"
banner+=" const require = __kloudakCreateRequire(import.meta.url);"
banner+=" const __kloudak_filename = __kloudakFileURLToPath(import.meta.url);"
banner+=" const __kloudak_dirname = __kloudakDirname(__kloudak_filename);"
log "esbuild agent/dist/main.js → kloudak-agent.mjs"
(
  cd "$root"
  "$esbuild" agent/dist/main.js --bundle --platform=node --target=node22 --format=esm \
    --external:systemd-journald \
    --banner:js="$banner" \
    --define:__dirname=__kloudak_dirname --define:__filename=__kloudak_filename \
    --metafile="$work/meta.json" --log-level=warning \
    --outfile="$stage/kloudak-agent.mjs"
) >&2
# main.ts's `#!/usr/bin/env node` would make the (non-executable) file a script to rpmlint and an
# env-interpreter to EL's shebang check; /usr/bin/kloudak-agent runs it with /usr/bin/node.
sed -i '1{/^#!/d}' "$stage/kloudak-agent.mjs"

# --- systemd-journald, shipped beside the bundle -----------------------------------------------
jd_src="$(cd "$root/agent" && node -p 'require("path").dirname(require.resolve("systemd-journald/package.json"))')"
jd="$stage/node_modules/systemd-journald"
mkdir -p "$jd/build/Release"
shopt -s nullglob
for f in "$jd_src"/package.json "$jd_src"/*.js "$jd_src"/LICENSE* "$jd_src"/README*; do
  cp "$f" "$jd/"
done
addons=("$jd_src"/build/Release/*.node)
shopt -u nullglob
[ "${#addons[@]}" -gt 0 ] || die "$jd_src/build/Release/*.node missing: systemd-journald was not built (libsystemd-dev, npm ci)"
cp "${addons[@]}" "$jd/build/Release/"
# npm leaves some of its .js files executable (rpmlint: script without shebang): plain modes.
find "$jd" -type f -exec chmod 0644 {} +
chmod 0755 "$jd"/build/Release/*.node
# Only the dynamic symbols matter to dlopen; EL's brp-strip would do the same, Debian's does not.
if command -v strip >/dev/null; then strip --strip-unneeded "$jd"/build/Release/*.node; fi
# Its runtime dependencies would go to $stage/node_modules too. It has one dependency, nan, which
# is C++ headers for compiling the addon and is never loaded at run time. Refuse anything new,
# so an upgrade that adds a runtime dependency fails here instead of on a host.
deps="$(node -e 'const p = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8")); process.stdout.write(Object.keys(p.dependencies || {}).join(" "))' "$jd_src/package.json")"
for d in $deps; do
  case "$d" in
    nan) ;;
    *) die "systemd-journald depends on $d: ship it in node_modules/ (build-rpm.sh) or mark it build-only" ;;
  esac
done

# --- check the staged tree before packaging it ---------------------------------------------------
got="$(node "$stage/kloudak-agent.mjs" --version)" || die "the bundle does not run: node kloudak-agent.mjs --version failed"
[ "$got" = "$ts_version" ] || die "the bundle prints version '$got', expected '$ts_version'"
# Resolve it the way the bundle's import('systemd-journald') does: from the bundle's directory.
node -e 'const j = require("module").createRequire(process.argv[1])("systemd-journald"); if (typeof j.info !== "function") process.exit(1);' \
  "$stage/kloudak-agent.mjs" || die "node_modules/systemd-journald does not load from the staged tree"
# It loaded in this node, so it is built for this node's ABI (and only loads in the same major).
log "systemd-journald addon built for Node.js $(node -p 'process.versions.node + " (NODE_MODULE_VERSION " + process.versions.modules + ")"')"

# --- notices, sources, rpmbuild ------------------------------------------------------------------
bundled_licenses="$(node "$here/bundle-licenses.mjs" "$work/meta.json" "$work" "$jd_src")"
mv "$work/THIRD-PARTY-LICENSES" "$stage/"
mv "$work/bundled-provides.inc" "$work/rpmbuild/SOURCES/"
cp "$here/kloudak-agent.service" "$here/kloudak-agent.wrapper" "$here/kloudak-agent.logrotate" \
  "$here/agent.yaml" "$here/agent.env" "$here/README.md" "$stage/"
log "bundle $(du -k "$stage/kloudak-agent.mjs" | cut -f1) KiB; bundled licences: $bundled_licenses"

# A stable mtime: the last commit's time (or now, outside git).
epoch="$(git -C "$root" log -1 --format=%ct 2>/dev/null || date +%s)"
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$epoch" \
  -czf "$work/rpmbuild/SOURCES/$name.tar.gz" -C "$work" "$name"
cp "$here/kloudak-agent.spec" "$work/rpmbuild/SPECS/"

# BuildRequires (systemd-rpm-macros) are checked against the rpm database, which only an
# RPM-based builder has. Elsewhere (Debian) skip the check: the spec defines plain fallbacks.
nodeps=()
if ! rpm -q --quiet --whatprovides systemd-rpm-macros >/dev/null 2>&1; then
  log "systemd-rpm-macros not in the rpm database: rpmbuild --nodeps (the spec's fallback scriptlets apply)"
  nodeps=(--nodeps)
fi

mkdir -p "$out"
out="$(cd "$out" && pwd)"
log "rpmbuild -bb → $out"
rpmbuild -bb --target x86_64 "${nodeps[@]+"${nodeps[@]}"}" \
  --define "_topdir $work/rpmbuild" \
  --define "_tmppath $work/tmp" \
  --define "_rpmdir $out" \
  --define '_build_name_fmt %%{NAME}-%%{VERSION}-%%{RELEASE}.%%{ARCH}.rpm' \
  --define "kloudak_version $rpm_version" \
  --define "bundled_licenses $bundled_licenses" \
  "$work/rpmbuild/SPECS/kloudak-agent.spec" >&2

shopt -s nullglob
rpms=("$out/$name"-*.x86_64.rpm)
[ "${#rpms[@]}" -eq 1 ] || die "expected one $name-*.x86_64.rpm in $out, found ${#rpms[@]}"
printf '%s\n' "${rpms[0]}"
