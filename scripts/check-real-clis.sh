#!/usr/bin/env bash
# refinery_cli and sqlx-cli, the real tools, migrate tenants of the local emulator; then
# `baseline`, `apply` and `drift` must see what the issue says (issue 21):
#
#   scripts/check-real-clis.sh     # installs the CLIs under target/clis when missing
#
# Three tenants are migrated to V2: one by `refinery migrate`, one by `sqlx migrate run`, one by
# psql (no history table). `baseline` must name the tool, find the refinery tenant needing
# nothing and adopt the other two by their fingerprint; `apply` then runs only V3 everywhere,
# `drift` and `drift --schema` find nothing, and each CLI, run again, still reads its own
# bookkeeping (refinery_cli reads our rows as its own: nothing left to run).
#
# Installing both CLIs is a long compile (about 3.5 min each with -j 2 on 2 cores), which is why
# `cargo test` drives the libraries these CLIs call instead (tests/it/baseline.rs) and this
# script is run by hand. SCHEMAFLEET_CLI_ROOT overrides the install root, SCHEMAFLEET_BIN the
# schemafleet binary (default target/debug/schemafleet, built when missing).
#
# refinery_cli keeps only `sslmode` of a URL's parameters, so it cannot name an endpoint to the
# proxy (`options=endpoint%3D…`; on Neon it would route by TLS SNI instead): it connects
# straight to the emulator's PostgreSQL with the tenant's own role and database.
#
# Prints one `ok` / `FAIL` line per check and exits 1 when any failed, 2 when it could not set up.
set -uo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
cli_root="${SCHEMAFLEET_CLI_ROOT:-$here/target/clis}"
refinery="$cli_root/bin/refinery"
sqlx="$cli_root/bin/sqlx"
jobs="${CARGO_BUILD_JOBS:-2}"

install() {
    local binary="$1"
    shift
    [[ -x "$binary" ]] && return 0
    echo "installing $* under $cli_root (a long compile)" >&2
    cargo install --locked -j "$jobs" --root "$cli_root" "$@" >&2 || exit 2
}
install "$refinery" refinery_cli --version 0.10.0 --no-default-features --features postgresql
install "$sqlx" sqlx-cli --version 0.9.0 --no-default-features --features postgres,rustls

schemafleet="${SCHEMAFLEET_BIN:-$here/target/debug/schemafleet}"
if [[ ! -x "$schemafleet" ]]; then
    (cd "$here" && cargo build -j "$jobs" >&2) || exit 2
fi
command -v psql >/dev/null 2>&1 || { echo "psql is missing" >&2; exit 2; }

work="$(mktemp -d)"
emulator_pid=""
cleanup() {
    if [[ -n "$emulator_pid" ]]; then
        kill -TERM "$emulator_pid" 2>/dev/null
        wait "$emulator_pid" 2>/dev/null
    fi
    rm -rf "$work"
}
trap cleanup EXIT

"$schemafleet" emulator --tenants 3 --output json \
    >"$work/emulator.json" 2>"$work/emulator.log" &
emulator_pid=$!
for _ in $(seq 1 240); do
    [[ -s "$work/emulator.json" ]] && break
    kill -0 "$emulator_pid" 2>/dev/null || break
    sleep 0.5
done
if [[ ! -s "$work/emulator.json" ]]; then
    echo "the emulator did not start:" >&2
    cat "$work/emulator.log" >&2
    exit 2
fi
py() { python3 -c "$1" "${@:2}"; }
env_of() { py 'import json,sys; print(json.load(open(sys.argv[1]))["env"][sys.argv[2]])' "$work/emulator.json" "$1"; }
NEON_API_URL="$(env_of NEON_API_URL)"
NEON_API_KEY="$(env_of NEON_API_KEY)"
DATABASE_URL="$(env_of DATABASE_URL)"
export NEON_API_URL NEON_API_KEY
export SCHEMAFLEET_REFERENCE_URL="$DATABASE_URL"
export SCHEMAFLEET_REFERENCE_CACHE="$work/cache"
export SCHEMAFLEET_OPERATION_POLL_MS=20

api() {
    py '
import json, sys, urllib.request
request = urllib.request.Request(sys.argv[1] + sys.argv[2], headers={"Authorization": "Bearer " + sys.argv[3]})
print(json.dumps(json.load(urllib.request.urlopen(request))))' "$NEON_API_URL" "$1" "$NEON_API_KEY"
}
# tenant-0001 .. tenant-0003, as "id name" lines.
mapfile -t projects < <(api /projects | py '
import json, sys
for project in sorted(json.load(sys.stdin)["projects"], key=lambda p: p["name"]):
    print(project["id"], project["name"])')
if [[ ${#projects[@]} -ne 3 ]]; then
    echo "expected 3 tenants, the API lists ${#projects[@]}" >&2
    exit 2
fi
uri_of() {
    api "/projects/$1/connection_uri?database_name=neondb&role_name=neondb_owner" |
        py 'import json, sys; print(json.load(sys.stdin)["uri"])'
}
# The tenant's role and database on the emulator's PostgreSQL itself (see the header).
direct_uri_of() {
    py '
import sys, urllib.parse
tenant, server = urllib.parse.urlsplit(sys.argv[1]), urllib.parse.urlsplit(sys.argv[2])
print(urllib.parse.urlunsplit(("postgresql", f"{tenant.username}:{tenant.password}@{server.hostname}:{server.port}", tenant.path, "sslmode=disable", "")))' "$1" "$DATABASE_URL"
}
read -r refinery_id refinery_name <<<"${projects[0]}"
read -r sqlx_id sqlx_name <<<"${projects[1]}"
read -r psql_id psql_name <<<"${projects[2]}"
refinery_uri="$(uri_of "$refinery_id")"
sqlx_uri="$(uri_of "$sqlx_id")"
psql_uri="$(uri_of "$psql_id")"

failures=0
check() {
    local label="$1" found="$2" expected="$3"
    if [[ "$found" == "$expected" ]]; then
        echo "ok    $label: $found"
    else
        echo "FAIL  $label: found $found, expected $expected"
        failures=$((failures + 1))
    fi
}
# Runs a command; its output is in $last_output, its exit code in $last_code.
last_output=""
last_code=0
run() {
    last_output="$("$@" 2>"$work/stderr")"
    last_code=$?
}

# The same three migrations in each tool's file names.
mkdir -p "$work/plan/migrations" "$work/sqlx-migrations"
accounts="CREATE TABLE accounts (id int PRIMARY KEY, name text NOT NULL DEFAULT '');"
orders="CREATE TABLE orders (id int PRIMARY KEY, account_id int REFERENCES accounts);"
index="-- squawk-ignore require-concurrent-index-creation -- a few rows
CREATE INDEX orders_account ON orders (account_id);"
printf '%s\n' "$accounts" >"$work/plan/migrations/V1__accounts.sql"
printf '%s\n' "$orders" >"$work/plan/migrations/V2__orders.sql"
printf '%s\n' "$index" >"$work/plan/migrations/V3__index_orders.sql"
printf '%s\n' "$accounts" >"$work/sqlx-migrations/1_accounts.sql"
printf '%s\n' "$orders" >"$work/sqlx-migrations/2_orders.sql"

echo "-- the tools migrate to V2: $refinery_name by refinery_cli, $sqlx_name by sqlx-cli, $psql_name by psql"
run env REFINERY_DB_URL="$(direct_uri_of "$refinery_uri")" \
    "$refinery" migrate -e REFINERY_DB_URL -p "$work/plan/migrations" -t 2
check "refinery migrate -t 2 exits" "$last_code" 0
run "$sqlx" migrate run --no-dotenv --source "$work/sqlx-migrations" --database-url "$sqlx_uri"
check "sqlx migrate run exits" "$last_code" 0
[[ $last_code -eq 0 ]] || cat "$work/stderr"
run psql "$psql_uri" -X -q -v ON_ERROR_STOP=1 -c "$accounts" -c "$orders"
check "psql exits" "$last_code" 0

sql() { psql "$1" -XAtq -v ON_ERROR_STOP=1 -c "$2" 2>&1; }
check "$refinery_name's refinery_schema_history, as refinery_cli wrote it" \
    "$(sql "$refinery_uri" "SELECT string_agg(version || ' ' || name, ', ' ORDER BY version) FROM refinery_schema_history")" \
    "1 accounts, 2 orders"
check "$sqlx_name's _sqlx_migrations, as sqlx-cli wrote it" \
    "$(sql "$sqlx_uri" "SELECT string_agg(version || ' ' || description || ' ' || success, ', ' ORDER BY version) FROM _sqlx_migrations")" \
    "1 accounts true, 2 orders true"

cat >"$work/plan/tenants.csv" <<EOF
id,name
$refinery_id,$refinery_name
$sqlx_id,$sqlx_name
$psql_id,$psql_name
EOF
cat >"$work/plan/policy.yaml" <<'EOF'
fleet:
  source: file
  file: tenants.csv
database: neondb
role: neondb_owner
salt: real-clis
validation: none
restore_point: backup_branch
waves:
  - name: all
    percent: 100
    concurrency: 4
    max_failures: 0
EOF
plan="$work/plan/fleet.plan.yaml"
run "$schemafleet" plan --policy "$work/plan/policy.yaml" --migrations "$work/plan/migrations" --out "$plan"
check "schemafleet plan exits" "$last_code" 0
[[ $last_code -eq 0 ]] || { cat "$work/stderr"; exit 1; }

# One line per tenant: state, version, tools.
summary() {
    py '
import json, sys
for tenant in json.load(sys.stdin)["tenants"]:
    tools = ",".join("%s:%d" % (tool["tool"], tool["migrations"]) for tool in tenant["tools"])
    print(tenant["tenant"], tenant["state"], "V%s" % tenant["version"], tools or "none")'
}
state_of() { printf '%s\n' "$1" | awk -v id="$2" '$1 == id { print $2, $3, $4 }'; }

echo "-- schemafleet baseline (a dry run), then --yes"
run "$schemafleet" baseline "$plan" --output json
check "baseline (dry run) exits" "$last_code" 0
dry="$(printf '%s' "$last_output" | summary)"
check "$refinery_name (refinery_cli)" "$(state_of "$dry" "$refinery_id")" "has_history V2 refinery:2"
check "$sqlx_name (sqlx-cli)" "$(state_of "$dry" "$sqlx_id")" "matched V2 sqlx:2"
check "$psql_name (psql)" "$(state_of "$dry" "$psql_id")" "matched V2 none"
run "$schemafleet" baseline "$plan" --yes
check "baseline --yes exits" "$last_code" 0
printf '%s\n' "$last_output" | sed 's/^/      /'
run "$schemafleet" baseline "$plan" --output json
again="$(printf '%s' "$last_output" | summary)"
check "$sqlx_name after --yes" "$(state_of "$again" "$sqlx_id")" "has_history V2 sqlx:2,refinery:2"

echo "-- schemafleet apply, drift, drift --schema"
run "$schemafleet" apply "$plan" --no-progress
check "apply exits" "$last_code" 0
[[ $last_code -eq 0 ]] || { printf '%s\n' "$last_output"; cat "$work/stderr"; }
history_query="SELECT string_agg(version || ' ' || name || ' ' || checksum, ', ' ORDER BY version) FROM refinery_schema_history"
reference_history="$(sql "$refinery_uri" "$history_query")"
check "$refinery_name's history after apply has V1..V3" \
    "$(sql "$refinery_uri" "SELECT string_agg(version::text, ',' ORDER BY version) FROM refinery_schema_history")" "1,2,3"
check "$sqlx_name's history equals refinery_cli's rows" "$(sql "$sqlx_uri" "$history_query")" "$reference_history"
check "$psql_name's history equals refinery_cli's rows" "$(sql "$psql_uri" "$history_query")" "$reference_history"
run "$schemafleet" drift --plan "$plan"
check "drift exits" "$last_code" 0
run "$schemafleet" drift --plan "$plan" --schema
check "drift --schema exits" "$last_code" 0
[[ $last_code -eq 0 ]] || printf '%s\n' "$last_output"

echo "-- each CLI again, on its own bookkeeping"
for tenant in "$refinery_uri" "$psql_uri"; do
    run env REFINERY_DB_URL="$(direct_uri_of "$tenant")" \
        "$refinery" migrate -e REFINERY_DB_URL -p "$work/plan/migrations"
    name="$refinery_name"
    [[ "$tenant" == "$psql_uri" ]] && name="$psql_name"
    check "refinery migrate on $name (our rows read as its own) exits" "$last_code" 0
    check "  and left $name's history as it was" \
        "$(sql "$tenant" "$history_query")" "$reference_history"
done
run "$sqlx" migrate info --no-dotenv --source "$work/sqlx-migrations" --database-url "$sqlx_uri"
check "sqlx migrate info on $sqlx_name exits" "$last_code" 0
check "  and finds both its migrations installed" \
    "$(printf '%s\n' "$last_output" | grep -c 'installed')" 2

if [[ $failures -gt 0 ]]; then
    echo "$failures check(s) failed"
    exit 1
fi
echo "all checks passed"
