#!/usr/bin/env bash
# A zero-downtime major-version upgrade with ibex: PostgreSQL 12 (old) to
# 17 (new), with pgbench writing on the old server throughout.
#
#   1. both servers up; the schema copied to the new one (pg_dump -s)
#   2. a one-way sync old -> new with onetimecopy=1: the first run copies
#      every table whole, later runs apply what changed meanwhile
#   3. catch up while the application keeps writing
#   4. a short write freeze: stop the writers, one last cycle, ibex compare
#   5. switch: the application writes to the new server; a reverse sync
#      new -> old keeps the old one current as a fallback
#
# Timings and row counts are printed at each step. The servers come from
# the npm builds the tests use (target/pg-versions, fetched on first use);
# everything else lives in a temporary directory removed at the end
# (KEEP=1 keeps it). Override the versions with OLD=10 NEW=18 etc., or
# point OLD_BIN/NEW_BIN at server bin directories; IBEX at a built binary.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
old_major=${OLD:-12}
new_major=${NEW:-17}
scale=${SCALE:-5}

if [ -z "${IBEX:-}" ]; then
    cargo build --quiet -p ibex --manifest-path "$root/Cargo.toml"
    IBEX="$root/target/debug/ibex"
fi
old_bin=${OLD_BIN:-}
new_bin=${NEW_BIN:-}
if [ -z "$old_bin" ] || [ -z "$new_bin" ]; then
    bins=$(cargo run --quiet -p ibex-tests --bin fetch-pg-versions --manifest-path "$root/Cargo.toml")
    bin_of() { echo "$bins" | awk -v m="$1" -F '\t' '$1 == m { print $3 }'; }
    old_bin=$(bin_of "$old_major")
    new_bin=$(bin_of "$new_major")
fi
[ -n "$old_bin" ] && [ -n "$new_bin" ] || { echo "no PostgreSQL $old_major or $new_major binaries" >&2; exit 1; }

work=$(mktemp -d /tmp/ibex-upgrade.XXXXXX)
chmod 755 "$work"
as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
old_port=$(free_port)
new_port=$(free_port)
writer=""
cleanup() {
    [ -n "$writer" ] && kill "$writer" 2>/dev/null || true
    if [ "${KEEP:-0}" = 1 ]; then
        echo "== kept: old on port $old_port, new on port $new_port, in $work"
        return
    fi
    as_pg "$old_bin/pg_ctl" stop -D "$work/old" -m immediate >/dev/null 2>&1 || true
    as_pg "$new_bin/pg_ctl" stop -D "$work/new" -m immediate >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

started=$(date +%s.%N)
last=$started
step() {
    local now
    now=$(date +%s.%N)
    printf '== [%6.1f s, +%5.1f s] %s\n' "$(awk "BEGIN { print $now - $started }")" "$(awk "BEGIN { print $now - $last }")" "$*"
    last=$now
}
start_server() { # bin dir, data dir, port
    [ "$(id -u)" -eq 0 ] && chown postgres "$work"
    as_pg "$1/initdb" -U postgres -A trust -E UTF8 --locale=C.UTF-8 -N -D "$2" >/dev/null
    as_pg "$1/pg_ctl" start -w -D "$2" -l "$2.log" \
        -o "-p $3 -k $work -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=100" >/dev/null
}
sql() { psql -X -q -At -h 127.0.0.1 -p "$1" -U postgres -d app -c "$2"; }
rows() { sql "$1" "SELECT (SELECT count(*) FROM pgbench_accounts) || ' accounts, ' || (SELECT count(*) FROM pgbench_history) || ' history rows'"; }

step "starting PostgreSQL $old_major (old, port $old_port) and $new_major (new, port $new_port)"
start_server "$old_bin" "$work/old" "$old_port"
start_server "$new_bin" "$work/new" "$new_port"
for port in "$old_port" "$new_port"; do
    psql -X -q -h 127.0.0.1 -p "$port" -U postgres -d postgres -c "CREATE DATABASE app"
done

step "the application's data on the old server: pgbench -i -s $scale"
pgbench -q -i -s "$scale" -h 127.0.0.1 -p "$old_port" -U postgres app 2>/dev/null
# Every replicated table needs a key; pgbench_history has none.
sql "$old_port" "ALTER TABLE pgbench_history ADD COLUMN hid bigserial PRIMARY KEY"
echo "   old: $(rows "$old_port")"

step "schema copied to the new server (pg_dump -s | psql)"
pg_dump -s -h 127.0.0.1 -p "$old_port" -U postgres app | psql -X -q -h 127.0.0.1 -p "$new_port" -U postgres -d app >/dev/null

export IBEX_CONTROL="host=127.0.0.1 port=$new_port user=postgres dbname=ibex"
ibex() { "$IBEX" "$@"; }
ibex install >/dev/null
ibex add db old dbname=app host=127.0.0.1 "port=$old_port" user=postgres >/dev/null
ibex add db new dbname=app host=127.0.0.1 "port=$new_port" user=postgres >/dev/null
ibex add all tables db=old herd=app >/dev/null
ibex add all sequences db=old herd=app >/dev/null
ibex add sync up herd=app dbs=old:source,new:target onetimecopy=1 autokick=false >/dev/null
step "sync up: old -> new, onetimecopy=1 (capture installed on old; nothing copied yet)"

pgbench -n -c 2 -T 3600 -R 100 -h 127.0.0.1 -p "$old_port" -U postgres app >/dev/null 2>&1 &
writer=$!
step "application writing on the old server (pgbench, 100 tps)"

ibex sync run up >/dev/null
step "first run: every table copied whole; new: $(rows "$new_port")"
for i in 1 2 3; do
    sleep 1
    ibex sync run up >/dev/null
done
step "caught up while writes go on (3 more runs); old: $(rows "$old_port"); new: $(rows "$new_port")"

freeze=$(date +%s.%N)
kill "$writer"
wait "$writer" 2>/dev/null || true
writer=""
step "write freeze: writers stopped"
ibex sync run up >/dev/null
ibex compare up
frozen=$(awk "BEGIN { print $(date +%s.%N) - $freeze }")
step "last cycle and compare clean; writes were frozen for $(printf '%.2f' "$frozen") s; new: $(rows "$new_port")"

ibex update sync up status=inactive >/dev/null
ibex add sync back herd=app dbs=new:source,old:target autokick=false >/dev/null
step "switched: the application writes to the new server; sync back (new -> old) keeps the old one as a fallback"
pgbench -n -t 200 -h 127.0.0.1 -p "$new_port" -U postgres app >/dev/null 2>&1
ibex sync run back >/dev/null
ibex compare back
step "fallback current: old: $(rows "$old_port"); new: $(rows "$new_port")"
echo "== done: PostgreSQL $old_major -> $new_major with a write freeze of $(printf '%.2f' "$frozen") s"
