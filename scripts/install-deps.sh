#!/usr/bin/env bash
# Installs what a fresh machine lacks for building and testing ibex:
# PostgreSQL server binaries (initdb, pg_ctl), psql and pgbench, and the
# Rust pieces (rustfmt, clippy, the wasm32-wasip2 target for plugins).
set -euo pipefail

have_pg_server() {
    ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1
}

if ! have_pg_server || ! command -v pgbench >/dev/null 2>&1 || ! command -v psql >/dev/null 2>&1; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "PostgreSQL is missing: install the postgresql package (as root: apt-get install -y postgresql)" >&2
        exit 1
    fi
    echo "== installing PostgreSQL from Debian's packages"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq postgresql postgresql-contrib >/dev/null
fi

if [ "$(id -u)" -eq 0 ] && ! id postgres >/dev/null 2>&1; then
    # Clusters run as this user when the tests run as root.
    useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
fi

# componentize-py builds the Python plugin the tests run (offline, from PyPI once).
if ! command -v componentize-py >/dev/null 2>&1; then
    python3 -m pip install --quiet 'componentize-py==0.25.*'
fi

if command -v rustup >/dev/null 2>&1; then
    rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
    rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
    rustup target list --installed 2>/dev/null | grep -q '^wasm32-wasip2$' || rustup target add wasm32-wasip2
fi
