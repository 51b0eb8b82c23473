#!/usr/bin/env bash
# Benchmarks (`npm run bench`).
#
#   scripts/bench.sh                  every bench/dist/*.bench.js
#   scripts/bench.sh api-login ...    bench/dist/<name>.js (also accepts <name>.bench,
#                                     <name>.bench.js or a path under bench/dist/)
#
# Runs every requested benchmark even if one fails, then exits non-zero if any failed.
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$KLOUDAK_ROOT"

export TURBO_TELEMETRY_DISABLED=1 TURBO_NO_UPDATE_NOTIFIER=1
ensure_node

ensure_postgres
ensure_nats
# host-ops, libvirt-calls and vm-create: libvirtd with the QEMU driver (and xorriso for seeds), Open
# vSwitch, and the tiny test guest host-ops and vm-create boot (cached: a second run takes well under
# a second). vm-create and vm-claims also use PostgreSQL and NATS (vm-create: and the built agent).
ensure_libvirt
ensure_ovs
bash "$KLOUDAK_ROOT/scripts/build-test-guest.sh" >&2
ensure_node_deps
log "building (turbo run gen build)"
npx --no -- turbo run gen build --log-order=grouped

# resolve NAME — print the compiled file for a bench name, or fail.
resolve() {
  local name="${1#./}"
  name="${name#bench/dist/}"
  name="${name%.js}"
  local candidate
  for candidate in "bench/dist/$name.js" "bench/dist/$name.bench.js"; do
    if [ -f "$candidate" ]; then
      printf '%s\n' "$candidate"
      return 0
    fi
  done
  return 1
}

benches=()
if [ "$#" -gt 0 ]; then
  for arg in "$@"; do
    f="$(resolve "$arg")" || die "no benchmark '$arg' (looked for bench/dist/$arg.js and .bench.js)"
    benches+=("$f")
  done
else
  shopt -s nullglob
  benches=(bench/dist/*.bench.js)
  shopt -u nullglob
  [ "${#benches[@]}" -gt 0 ] || die "no bench/dist/*.bench.js found — did the bench workspace build?"
fi

failed=()
for f in "${benches[@]}"; do
  printf '\n=== [%4ds] %s\n' "$SECONDS" "$f"
  started=$SECONDS
  # Keep going after a failure so one broken benchmark doesn't hide the others' figures.
  if node "$f"; then
    printf '=== %s done in %ds\n' "$f" "$((SECONDS - started))"
  else
    rc=$?
    printf '=== %s FAILED (exit %d) after %ds\n' "$f" "$rc" "$((SECONDS - started))"
    failed+=("$f")
  fi
done

if [ "${#failed[@]}" -gt 0 ]; then
  die "${#failed[@]} of ${#benches[@]} benchmark(s) failed: ${failed[*]}"
fi
printf '\n=== %d benchmark(s) done in %ds\n' "${#benches[@]}" "$SECONDS"
