#!/usr/bin/env bash
# ibex quickstart: starts a throwaway PostgreSQL cluster, makes three
# pgbench databases, sets up a three-master sync among them, writes on all
# three at once, runs one cycle, shows the status and proves the three
# databases hold the same rows.
# Everything lives in a temporary directory that is removed at the end
# (set KEEP=1 to keep the cluster running and explore).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bash "$root/scripts/install-deps.sh"
echo "== building ibex"
cargo build --quiet --release -p ibex --manifest-path "$root/Cargo.toml"
ibex="$root/target/release/ibex"

# Tab completion for bash, and `man ibex` / `man ibex-add-db`. Root installs
# system-wide; others under ~/.local/share, where bash-completion and man look.
# (zsh and fish: `ibex completions zsh|fish`, see `ibex completions --help`.)
install_docs() {
    local completions man
    if [ "$(id -u)" -eq 0 ]; then
        completions=/etc/bash_completion.d/ibex
        man=/usr/local/share/man/man1
    else
        completions="${XDG_DATA_HOME:-$HOME/.local/share}/bash-completion/completions/ibex"
        man="${XDG_DATA_HOME:-$HOME/.local/share}/man/man1"
    fi
    # Chained with &&: set -e does not apply inside a function called with ||.
    mkdir -p "$(dirname "$completions")" "$man" &&
        "$ibex" completions bash > "$completions" &&
        "$ibex" man --all "$man" >/dev/null &&  # ibex.1 and one page per subcommand
        echo "   bash completions: $completions; man pages: $man/ibex.1 ..."
}
echo "== installing shell completions and man pages"
install_docs || echo "warning: could not install completions or man pages; continuing" >&2

pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
work=$(mktemp -d /tmp/ibex-quickstart.XXXXXX)
port=$(( 20000 + RANDOM % 20000 ))
as_pg() { if [ "$(id -u)" -eq 0 ]; then chown -R postgres "$work"; runuser -u postgres -- "$@"; else "$@"; fi; }
cleanup() {
    if [ "${KEEP:-0}" = 1 ]; then
        echo "== cluster kept: port $port, data in $work (stop: $pgbin/pg_ctl stop -D $work/data)"
        return
    fi
    as_pg "$pgbin/pg_ctl" stop -D "$work/data" -m fast >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

echo "== starting a throwaway PostgreSQL on port $port"
as_pg "$pgbin/initdb" -U postgres -A trust -N -D "$work/data" >/dev/null
as_pg "$pgbin/pg_ctl" start -w -D "$work/data" -l "$work/server.log" \
    -o "-p $port -k $work -c listen_addresses=127.0.0.1 -c fsync=off" >/dev/null
pg() { psql -X -q -h 127.0.0.1 -p "$port" -U postgres "$@"; }

echo "== three databases from pgbench -i"
pg -d postgres -c "CREATE DATABASE qs1"
pgbench -q -i -h 127.0.0.1 -p "$port" -U postgres qs1 2>/dev/null
pg -d postgres -c "CREATE DATABASE qs2 TEMPLATE qs1" -c "CREATE DATABASE qs3 TEMPLATE qs1"

export IBEX_CONTROL="host=127.0.0.1 port=$port user=postgres dbname=ibex"
run() { echo "\$ ibex $*"; "$ibex" "$@"; }
run install
for n in 1 2 3; do
    run add db "t$n" "dbname=qs$n" host=127.0.0.1 "port=$port" user=postgres
done
run add all tables db=t1 herd=therd
run add dbgroup tgroup t1:source t2:source t3:source
run add sync foobar herd=therd dbs=tgroup autokick=false
run list syncs

echo "== writing on all three masters at once: pgbench -n -t 500 on each"
for n in 1 2 3; do
    pgbench -n -t 500 -h 127.0.0.1 -p "$port" -U postgres "qs$n" >/dev/null &
done
wait
checksums() {
    for n in 1 2 3; do
        line="qs$n:"
        for t in pgbench_accounts pgbench_branches pgbench_tellers; do
            line="$line $t=$(pg -d "qs$n" -At -c "SELECT md5(string_agg(x::text, ',' ORDER BY x::text)) FROM $t x" | cut -c1-8)"
        done
        echo "$line"
    done
}
echo "== before the sync: the three databases differ"
checksums
run sync run foobar
run status
run status foobar
echo "== after one cycle:"
sums=$(checksums)
echo "$sums"
if [ "$(echo "$sums" | cut -d: -f2 | sort -u | wc -l)" -eq 1 ]; then
    echo "== all three databases are identical"
else
    echo "== the databases differ: this is a bug, please report it" >&2
    exit 1
fi
