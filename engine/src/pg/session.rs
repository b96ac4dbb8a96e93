//! Settings pinned on every connection ibex opens, sent in the startup
//! packet (`options=-c ...`) so they cost no round trip. Row text ibex
//! compares, hashes or copies must not depend on the server's or the
//! role's defaults (a DMY DateStyle, an Asia/Kolkata TimeZone, escape
//! bytea output and 0 extra_float_digits all change it).

/// Name and value of each pinned setting.
pub const PINNED: &[(&str, &str)] = &[
    ("DateStyle", "ISO, MDY"),
    ("TimeZone", "UTC"),
    ("IntervalStyle", "postgres"),
    ("extra_float_digits", "3"),
    ("bytea_output", "hex"),
    ("client_encoding", "UTF8"),
    ("standard_conforming_strings", "on"),
    // No schema another role may create in, as PostgreSQL's own
    // replication workers run: name resolution prefers an exact-typed
    // look-alike in any schema on the path to a polymorphic built-in, so
    // with `public` here its creators would run code as ibex's role. User
    // SQL ibex runs takes its own path: `USER_SEARCH_PATH` for `ibex ddl`,
    // the plugin functions' for plugin statements. pg_temp last, so a
    // temporary table cannot capture a name.
    ("search_path", IBEX_SEARCH_PATH),
];

/// The search_path of ibex's sessions (see `PINNED`).
pub const IBEX_SEARCH_PATH: &str = "pg_catalog, pg_temp";

/// PostgreSQL's default search_path, under which SQL a user wrote for
/// ibex to run (`ibex ddl`) and a user's unqualified table names are read.
pub const USER_SEARCH_PATH: &str = "\"$user\", public";

/// The server's TCP keepalive on ibex's sessions (ignored over a Unix
/// socket): a backend whose ibex vanished behind a dead network path (no
/// FIN, no RST) holds its transaction's row locks and xmin until the
/// server notices, by default after the kernel's two hours. With these it
/// notices within about two minutes. Sent before the user's `options`, so
/// theirs win.
pub const SERVER_KEEPALIVE: &[(&str, &str)] =
    &[("tcp_keepalives_idle", "60"), ("tcp_keepalives_interval", "10"), ("tcp_keepalives_count", "6")];

/// libpq's `options` escaping: a backslash before spaces and backslashes.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if c == ' ' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// `-c name=value`, escaped.
fn setting(&(name, value): &(&str, &str)) -> String {
    format!("-c {name}={}", escape(value))
}

/// The startup `options`: ibex's keepalive defaults, then the user's own,
/// then ibex's pinned ones, so the user's win over the defaults and the
/// pinned ones over everything.
pub fn startup_options(user_options: Option<&str>) -> String {
    let mut parts: Vec<String> = SERVER_KEEPALIVE.iter().map(setting).collect();
    parts.extend(user_options.filter(|o| !o.trim().is_empty()).map(str::to_string));
    parts.extend(PINNED.iter().map(setting));
    parts.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_escape_spaces() {
        let o = startup_options(Some("-c work_mem=64MB"));
        assert!(o.starts_with("-c tcp_keepalives_idle=60 -c tcp_keepalives_interval=10 -c tcp_keepalives_count=6 -c work_mem=64MB -c DateStyle=ISO,\\ MDY "), "{o}");
        assert!(o.ends_with("-c search_path=pg_catalog,\\ pg_temp"), "{o}");
        assert_eq!(escape(r"a b\c"), r"a\ b\\c");
    }
}
