//! `service=NAME`: connection settings from a pg_service.conf section,
//! found as libpq finds it: PGSERVICEFILE or ~/.pg_service.conf first,
//! then PGSYSCONFDIR/pg_service.conf.

use std::path::PathBuf;

use crate::error::{Error, Result};

/// Debian's libpq is built with this sysconfdir.
const SYSCONFDIR: &str = "/etc/postgresql-common";

fn files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    if let Some(f) = std::env::var_os("PGSERVICEFILE").filter(|f| !f.is_empty()) {
        files.push(PathBuf::from(f));
    } else if let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        files.push(PathBuf::from(home).join(".pg_service.conf"));
    }
    let sysconf = std::env::var_os("PGSYSCONFDIR").map_or_else(|| PathBuf::from(SYSCONFDIR), PathBuf::from);
    files.push(sysconf.join("pg_service.conf"));
    files
}

/// The key=value pairs of service `name`; a `Config` error if no file has it.
pub(crate) fn lookup(name: &str) -> Result<Vec<(String, String)>> {
    let files = files();
    for file in &files {
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
            Err(err) => {
                return Err(Error::Config(format!(
                    "cannot read service file \"{}\": {err}; fix its permissions or set PGSERVICEFILE",
                    file.display()
                )));
            }
        };
        if let Some(pairs) = section(&text, name)
            .map_err(|why| Error::Config(format!("service file \"{}\": {why}; fix the file", file.display())))?
        {
            return Ok(pairs);
        }
    }
    let searched = files.iter().map(|f| format!("\"{}\"", f.display())).collect::<Vec<_>>().join(", ");
    Err(Error::Config(format!(
        "service \"{name}\" is not defined in {searched}; add a [{name}] section or point PGSERVICEFILE at the file that has it"
    )))
}

/// The pairs of `[name]` in an INI-style service file, if it has one.
fn section(text: &str, name: &str) -> std::result::Result<Option<Vec<(String, String)>>, String> {
    let mut current: Option<String> = None;
    let mut found: Option<Vec<(String, String)>> = None;
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(header) = line.strip_prefix('[') {
            let header = header.strip_suffix(']').ok_or_else(|| format!("line {}: unclosed [", n + 1))?;
            if found.is_some() {
                break;
            }
            current = Some(header.trim().to_string());
            if header.trim() == name {
                found = Some(Vec::new());
            }
            continue;
        }
        if current.as_deref() != Some(name) {
            continue;
        }
        let (key, value) = line.split_once('=').ok_or_else(|| format!("line {}: expected key=value", n + 1))?;
        let key = key.trim();
        if key == "service" {
            return Err(format!("line {}: a service may not name another service", n + 1));
        }
        if let Some(pairs) = found.as_mut() {
            pairs.push((key.to_string(), value.trim().to_string()));
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_one_section() {
        let text = "# x\n[a]\nhost=h1\n\n[svc]\nhost = h2\nport=5433\ndbname=d\n[c]\nhost=h3\n";
        let pairs = section(text, "svc").unwrap().unwrap();
        assert_eq!(
            pairs,
            vec![("host".into(), "h2".into()), ("port".into(), "5433".into()), ("dbname".into(), "d".into())]
        );
        assert_eq!(section(text, "zz").unwrap(), None);
        assert!(section("[s]\nservice=t\n", "s").is_err());
    }
}
