#!/usr/bin/env bash
# The one way to produce proto/gen/: TypeScript from the .proto files, via buf and ts-proto.
# Run it with `npm run gen` (in proto/) or `bash proto/gen.sh` from anywhere. Offline.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"

# buf and ts-proto are npm dev dependencies, hoisted to the repository root by npm workspaces.
BUF="../node_modules/.bin/buf"
PLUGIN="../node_modules/ts-proto/protoc-gen-ts_proto"
for f in "$BUF" "$PLUGIN"; do
  if [[ ! -e "$f" ]]; then
    echo "gen.sh: $f is missing; run 'npm ci' at the repository root" >&2
    exit 1
  fi
done

# buf keeps a cache (by default in ~/.cache/buf), which may be unwritable in CI or sandboxes.
# Nothing in it is worth keeping (no remote modules or plugins), so use a throw-away one
# unless the caller chose a directory.
if [[ -z "${BUF_CACHE_DIR:-}" ]]; then
  BUF_CACHE_DIR="$(mktemp -d "${TMPDIR:-/tmp}/kloudak-buf-cache.XXXXXX")"
  export BUF_CACHE_DIR
  trap 'rm -rf "$BUF_CACHE_DIR"' EXIT
fi

rm -rf gen
"$BUF" lint
"$BUF" generate
echo "gen.sh: generated $(find gen -name '*.ts' | wc -l | tr -d ' ') files in proto/gen"
