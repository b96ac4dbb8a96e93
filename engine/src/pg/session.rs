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
    // ibex qualifies its own names, but plugin SQL is prepared on ibex's
    // sessions with unqualified user tables (as the plugin functions'
    // `public, pg_temp` path expects); pg_temp last so temporary tables
    // cannot capture a name.
    ("search_path", "pg_catalog, public, pg_temp"),
];

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

/// The startup `options`: the user's own first, ibex's pinned ones after,
/// so ours win.
pub fn startup_options(user_options: Option<&str>) -> String {
    let mut parts: Vec<String> =
        user_options.filter(|o| !o.trim().is_empty()).map(str::to_string).into_iter().collect();
    for (name, value) in PINNED {
        parts.push(format!("-c {name}={}", escape(value)));
    }
    parts.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_escape_spaces() {
        let o = startup_options(Some("-c work_mem=64MB"));
        assert!(o.starts_with("-c work_mem=64MB -c DateStyle=ISO,\\ MDY "), "{o}");
        assert!(o.ends_with("-c search_path=pg_catalog,\\ public,\\ pg_temp"), "{o}");
        assert_eq!(escape(r"a b\c"), r"a\ b\\c");
    }
}
