#!/usr/bin/env bash
# Neon's own CLI against the local emulator, as a new user would try it.
#
#   cargo run -- emulator --tenants 2      # prints NEON_API_URL=… NEON_API_KEY=…; export them
#   scripts/check-neonctl.sh [--install]  # --install: npm-install neonctl 5.0.1 under target/neonctl
#
# Prints one `ok` / `FAIL` line per command and exits 1 when any failed. `connection-string`
# builds its URI from the endpoint's `host` (`ep-….localhost:PORT`) with
# `sslmode=require&channel_binding=require`; psql connects with it over TLS, the proxy reading
# the endpoint from SNI. Where `*.localhost` does not resolve (glibc without nss-myhostname or
# systemd-resolved), psql gets `PGHOSTADDR=127.0.0.1` and the script says so.
set -uo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
prefix="$here/target/neonctl"
neonctl="$prefix/node_modules/.bin/neonctl"
if [[ "${1:-}" == "--install" ]]; then
    mkdir -p "$prefix"
    npm install --silent --no-audit --no-fund --prefix "$prefix" neonctl@5.0.1 >&2 || exit 2
fi
if [[ ! -x "$neonctl" ]]; then
    neonctl="$(command -v neonctl || true)"
fi
if [[ -z "$neonctl" ]]; then
    echo "neonctl is not installed: run $0 --install (needs npm)" >&2
    exit 2
fi
: "${NEON_API_URL:?export NEON_API_URL from schemafleet emulator's output}"
: "${NEON_API_KEY:?export NEON_API_KEY from schemafleet emulator's output}"

failures=0
last_output=""
run() {
    local name="$1"
    shift
    if last_output="$("$neonctl" --api-host "$NEON_API_URL" --api-key "$NEON_API_KEY" --no-analytics "$@" 2>&1)"; then
        echo "ok    $name"
    else
        echo "FAIL  $name: $(printf '%s' "$last_output" | tail -n 3)"
        failures=$((failures + 1))
        return 1
    fi
}
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }

run "projects list" projects list --output json
if run "projects create" projects create --name neonctl-check --output json; then
    project_id="$(printf '%s' "$last_output" | json 'd["project"]["id"]')"
else
    exit 1
fi
run "projects get" projects get "$project_id" --output json
run "branches list" branches list --project-id "$project_id" --output json
run "branches create" branches create --project-id "$project_id" --name dev --output json
run "branches restore" branches restore dev main --project-id "$project_id" --output json
run "operations list" operations list --project-id "$project_id" --output json
psql_with() {
    local label="$1" uri="$2" host
    host="$(printf '%s' "$uri" | sed -E 's#^[^@]*@([^:/]+).*#\1#')"
    local hostaddr=()
    if ! getent hosts "$host" >/dev/null 2>&1; then
        hostaddr=(env PGHOSTADDR=127.0.0.1)
        label="$label (PGHOSTADDR=127.0.0.1: $host does not resolve here)"
    fi
    if output="$("${hostaddr[@]}" psql "$uri" -XAtc 'SELECT 1' 2>&1)"; then
        echo "ok    $label"
    else
        echo "FAIL  $label: $output"
        failures=$((failures + 1))
    fi
}
for flags in "" "--pooled"; do
    # shellcheck disable=SC2086 # $flags is empty or one flag
    if run "connection-string $flags" connection-string main --project-id "$project_id" $flags; then
        uri="$(printf '%s' "$last_output" | tail -n 1)"
        echo "      $uri" | sed -E 's#(://[^:]+:)[^@]*@#\1***@#'
        psql_with "psql with neonctl's connection string $flags" "$uri"
    fi
done
run "branches delete" branches delete dev --project-id "$project_id" --output json
run "projects delete" projects delete "$project_id" --output json
exit $((failures > 0))
