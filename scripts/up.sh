#!/usr/bin/env bash
# Bring Kloudak up (`npm start`): install deps, build, then run the orchestrator in the
# foreground. Extra arguments go to `orchestrator serve`.
#
# No PostgreSQL or NATS needed: the orchestrator defaults to an embedded database (PGlite) under
# KLOUDAK_DATA_DIR (default ./data). On first start it creates the admin user from
# KLOUDAK_ADMIN_USER / KLOUDAK_ADMIN_PASSWORD; unless you set those, this script uses user
# "admin" with a random password kept in <data dir>/admin-password (mode 600).
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# The orchestrator resolves ./data relative to its working directory: always the repo root.
cd "$KLOUDAK_ROOT"

export TURBO_TELEMETRY_DISABLED=1 TURBO_NO_UPDATE_NOTIFIER=1

ensure_node_deps
log "building (turbo run gen build)"
npx --no -- turbo run gen build --log-order=grouped

if [ -z "${KLOUDAK_ADMIN_USER:-}" ]; then
  export KLOUDAK_ADMIN_USER=admin
  if [ -z "${KLOUDAK_ADMIN_PASSWORD:-}" ]; then
    data_dir="${KLOUDAK_DATA_DIR:-./data}"
    pw_file="$data_dir/admin-password"
    if [ ! -f "$pw_file" ]; then
      # umask in a subshell: the data dir (database, keys) and the file are private from the
      # start, never briefly readable by others.
      (
        umask 077
        mkdir -p "$data_dir"
        if command -v openssl >/dev/null 2>&1; then
          openssl rand -base64 24 >"$pw_file"
        else
          node -e 'process.stdout.write(require("node:crypto").randomBytes(24).toString("base64") + "\n")' >"$pw_file"
        fi
      )
      chmod 600 "$pw_file"
      log "generated the first admin password"
    fi
    KLOUDAK_ADMIN_PASSWORD="$(head -n 1 "$pw_file")"
    [ -n "$KLOUDAK_ADMIN_PASSWORD" ] || die "$pw_file is empty; delete it to generate a new password"
    export KLOUDAK_ADMIN_PASSWORD
    # Never print the password itself: logs end up in places people share.
    log "admin credentials: user admin, password in $pw_file"
  fi
fi

exec node orchestrator/dist/main.js serve "$@"
