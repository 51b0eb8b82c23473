#!/usr/bin/env bash
# The test command (`npm test`, and CI via .ci/run).
#
#   scripts/test.sh                 services, deps, gen+build, lint, typecheck, all tests
#   scripts/test.sh --quick         services, deps, tests only (uses the existing dist/ output)
#   scripts/test.sh auth e2e/       only test files whose path contains any of the substrings
#   scripts/test.sh --test-name-pattern=login    --test-* options are passed to node --test
#
# Environment:
#   KLOUDAK_TEST_TIMEOUT_MS   per test FILE time limit (node --test-timeout), default 300000
#
# All tests run in ONE `node --test` invocation so CI reads a single summary
# (ℹ tests N / ℹ pass N / ℹ fail N). Fails fast: any failing step stops the run non-zero.
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$KLOUDAK_ROOT"

quick=0
filters=()
node_opts=()
for arg in "$@"; do
  case "$arg" in
    --quick) quick=1 ;;
    --test-*) node_opts+=("$arg") ;;
    -h | --help)
      sed -n '2,13p' "$0"
      exit 0
      ;;
    -*) die "unknown option: $arg (see --help)" ;;
    *) filters+=("$arg") ;;
  esac
done

# step NAME CMD... — header with time since start, then the command, then how long it took.
current_step=""
step() {
  local name="$1" started=$SECONDS
  shift
  current_step="$name"
  printf '\n=== [%4ds] %s\n' "$SECONDS" "$name"
  "$@"
  printf '=== %s done in %ds\n' "$name" "$((SECONDS - started))"
  current_step=""
}
# set -e stops at the first failure; say where, so the CI log's last line names the culprit.
# shellcheck disable=SC2154 # rc is assigned inside the trap string
trap 'rc=$?; if [ "$rc" -ne 0 ] && [ -n "$current_step" ]; then
  printf "\n=== FAILED: step \"%s\" (exit %d) after %ds\n" "$current_step" "$rc" "$SECONDS" >&2; fi' EXIT

# bin TOOL ARGS... — run a tool from node_modules/.bin; --no: never download it on the fly
# (that would hide a missing devDependency and needs no prompt on a stdin-less CI).
bin() {
  npx --no -- "$@"
}

export TURBO_TELEMETRY_DISABLED=1 TURBO_NO_UPDATE_NOTIFIER=1

# Node.js >= 22 first on PATH for everything below (Node 24 into .cache/node when the system one is older).
step "node" ensure_node
step "postgres" ensure_postgres
step "nats" ensure_nats
step "libvirt" ensure_libvirt
step "validators" ensure_test_validators
step "openvswitch" ensure_ovs
step "rpm tools" ensure_rpm_tools
# The tiny bootable guest of the VM tests (cached under .cache/test-guest; a rebuild only when its inputs change).
step "test guest" bash scripts/build-test-guest.sh
step "node deps" ensure_node_deps

if [ "$quick" -eq 0 ]; then
  # gen → build in dependency order (turbo.json); grouped logs keep each package's output together.
  step "gen + build" bin turbo run gen build --log-order=grouped
  step "lint" bin eslint .
  # Root tsconfig.json references every project; after the build this is incremental and fast,
  # but still catches errors in projects turbo did not build (e.g. no build script).
  step "typecheck" bin tsc -b
fi

# Compiled test files of every workspace. Only list directories that exist, so find doesn't fail
# on a checkout that lacks one.
dirs=()
for d in packages prisma proto orchestrator agent test bench; do
  [ -d "$d" ] && dirs+=("$d")
done
[ "${#dirs[@]}" -gt 0 ] || die "no workspace directories found in $KLOUDAK_ROOT"
mapfile -t files < <(
  find "${dirs[@]}" -path '*/node_modules' -prune -o -path '*/dist/*' -name '*.test.js' -print | sort
)

if [ "${#filters[@]}" -gt 0 ]; then
  selected=()
  for f in "${files[@]}"; do
    for pat in "${filters[@]}"; do
      if [[ "$f" == *"$pat"* ]]; then
        selected+=("$f")
        break
      fi
    done
  done
  files=("${selected[@]+"${selected[@]}"}")
fi

if [ "${#files[@]}" -eq 0 ]; then
  # A test run that runs nothing is a mistake (wrong filter, build produced no dist/, ...).
  if [ "${#filters[@]}" -gt 0 ]; then
    die "no compiled test files (*/dist/**/*.test.js) match: ${filters[*]}"
  fi
  die "no compiled test files (*/dist/**/*.test.js) found — did the build run? (--quick skips it)"
fi

# --test-concurrency=1: files run one after another; they share PostgreSQL and NATS.
# --test-timeout: in Node 20 it bounds each test FILE, so a hung file is cancelled and reported
# and the run still ends with its summary (a killed runner would print none).
# spec reporter prints node's own summary lines (ℹ tests / ℹ pass / ℹ fail) that CI reads.
# run_node_tests ARGS... — node --test ARGS, its output kept aside. A file that fails as a whole
# (a crash, an uncaught error after its tests ended) is summed up by node as only "'test failed'";
# what explains it was printed just before that file's ✖ line, often far above the summary a CI
# excerpt shows. So, when the run fails, the lines before each such ✖ line are repeated at the end.
run_node_tests() {
  local out rc=0
  out="$(mktemp "${TMPDIR:-/tmp}/kloudak-tests.XXXXXX")"
  node --test "$@" 2>&1 | tee "$out" || rc=$?
  if [ "$rc" -ne 0 ]; then
    awk -v keep=30 '
      /^✖ failing tests:/ { exit }
      /^✖ .*\.test\.js \(/ {
        printf "\n=== what was printed before %s ended:\n", $2
        for (i = (n > keep ? n - keep : 0); i < n; i++) print "  " substr(buf[i % keep], 1, 500)
      }
      { buf[n % keep] = $0; n++ }' "$out"
  fi
  rm -f "$out"
  return "$rc"
}

step "tests (${#files[@]} files)" run_node_tests --test-concurrency=1 --test-reporter=spec \
  --test-timeout="${KLOUDAK_TEST_TIMEOUT_MS:-300000}" \
  "${node_opts[@]+"${node_opts[@]}"}" "${files[@]}"

printf '\n=== all steps passed in %ds\n' "$SECONDS"
