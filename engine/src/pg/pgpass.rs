//! `~/.pgpass` (or PGPASSFILE / passfile=): a password for a host, port,
//! database and user, with libpq's rules.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;

/// What looking in the password file found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Lookup {
    Found(String),
    /// No file, or no line for this login.
    None,
    /// The file was not used; says why (for the error if login then fails).
    Ignored(String),
}

fn home() -> Option<PathBuf> {
    std::env::var_os("HOME").filter(|h| !h.is_empty()).map(PathBuf::from)
}

/// The file to read: passfile=, else PGPASSFILE (already layered into
/// `passfile`), else ~/.pgpass.
fn file(passfile: Option<&str>) -> Option<PathBuf> {
    passfile.map(PathBuf::from).or_else(|| home().map(|h| h.join(".pgpass")))
}

pub(crate) fn lookup(passfile: Option<&str>, host: &str, port: u16, dbname: &str, user: &str) -> Lookup {
    let Some(path) = file(passfile) else {
        return Lookup::None;
    };
    let Ok(meta) = std::fs::metadata(&path) else {
        return Lookup::None;
    };
    if !meta.is_file() {
        let why = format!("password file \"{}\" is not a plain file; ignoring it", path.display());
        tracing::warn!("{why}");
        return Lookup::Ignored(why);
    }
    // libpq refuses a file others can read: the password may have leaked.
    if meta.permissions().mode() & 0o077 != 0 {
        let why = format!(
            "password file \"{}\" has group or world access (mode {:o}); permissions should be u=rw (0600) or less: run chmod 0600 on it",
            path.display(),
            meta.mode() & 0o777
        );
        tracing::warn!("{why}");
        return Lookup::Ignored(why);
    }
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(err) => {
            let why = format!("password file \"{}\" cannot be read: {err}", path.display());
            tracing::warn!("{why}");
            return Lookup::Ignored(why);
        }
    };
    // A socket directory matches "localhost", as in libpq.
    let host = if host.is_empty() || host.starts_with('/') { "localhost" } else { host };
    match find(&text, host, &port.to_string(), dbname, user) {
        Some(p) => Lookup::Found(p),
        None => Lookup::None,
    }
}

/// The first line matching all four fields (`*` matches anything).
fn find(text: &str, host: &str, port: &str, dbname: &str, user: &str) -> Option<String> {
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let fields = split(line);
        if fields.len() < 5 {
            continue;
        }
        let wanted = [host, port, dbname, user];
        if fields.iter().zip(wanted).all(|(f, w)| f == "*" || f == w) {
            return Some(fields[4].clone());
        }
    }
    None
}

/// Splits on unescaped `:` into at most five fields, undoing `\:` and `\\`.
fn split(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let (Some(n), Some(f)) = (chars.next(), fields.last_mut()) {
                    f.push(n);
                }
            }
            ':' if fields.len() < 5 => fields.push(String::new()),
            c => {
                if let Some(f) = fields.last_mut() {
                    f.push(c);
                }
            }
        }
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_and_escapes() {
        let text = "# comment\nother:5432:*:*:no\n127.0.0.1:*:d\\:b:u:p\\:w\\\\x\n*:*:*:u:fallback\n";
        assert_eq!(find(text, "127.0.0.1", "5555", "d:b", "u").as_deref(), Some("p:w\\x"));
        assert_eq!(find(text, "127.0.0.1", "5555", "db", "u").as_deref(), Some("fallback"));
        assert_eq!(find(text, "127.0.0.1", "5555", "db", "v"), None);
        assert_eq!(find("localhost:*:*:*:sock\n", "localhost", "1", "d", "u").as_deref(), Some("sock"));
    }

    #[test]
    fn group_readable_files_are_ignored() {
        let path = std::env::temp_dir().join(format!("ibex-pgpass-test-{}", std::process::id()));
        std::fs::write(&path, "*:*:*:*:secret\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let p = path.to_str().unwrap();
        assert!(matches!(lookup(Some(p), "h", 1, "d", "u"), Lookup::Ignored(why) if why.contains("0600")));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(lookup(Some(p), "/tmp", 1, "d", "u"), Lookup::Found("secret".into()));
        let _ = std::fs::remove_file(&path);
    }
}
