//! The text of a connection string: libpq's `key=value` form (with its
//! quoting rules) and `postgres(ql)://` URIs (percent-encoding, several
//! hosts, query parameters), turned into key/value pairs, and the same
//! text with its password hidden for messages.

/// libpq's key=value syntax: values may be single-quoted; a backslash
/// escapes the next character (quotes, backslashes, spaces).
pub(super) fn parse_key_values(dsn: &str) -> std::result::Result<Vec<(String, String)>, String> {
    let mut pairs = Vec::new();
    let mut chars = dsn.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            return Ok(pairs);
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') {
            return Err(format!("missing \"=\" after \"{key}\""));
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'\'') {
            chars.next();
            loop {
                match chars.next() {
                    None => return Err(format!("unterminated quoted value for \"{key}\"")),
                    Some('\\') => match chars.next() {
                        Some(c) => value.push(c),
                        None => return Err(format!("unterminated quoted value for \"{key}\"")),
                    },
                    Some('\'') => break,
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                chars.next();
                if c == '\\' {
                    if let Some(next) = chars.next() {
                        value.push(next);
                    }
                } else {
                    value.push(c);
                }
            }
        }
        pairs.push((key, value));
    }
}

fn percent_decode(s: &str) -> std::result::Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3).ok_or_else(|| format!("bad percent-escape in {s:?}"))?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| format!("bad percent-escape %{hex} in {s:?}"))?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("percent-escapes in {s:?} are not UTF-8"))
}

/// `postgresql://[user[:password]@][host[:port][,...]][/dbname][?key=value&...]`
pub(super) fn parse_uri(dsn: &str) -> std::result::Result<Vec<(String, String)>, String> {
    let rest = dsn.split_once("://").map_or(dsn, |(_, r)| r);
    let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut pairs = Vec::new();
    let hostspec = match authority.rsplit_once('@') {
        Some((userinfo, hostspec)) => {
            let (user, password) = match userinfo.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (userinfo, None),
            };
            if !user.is_empty() {
                pairs.push(("user".to_string(), percent_decode(user)?));
            }
            if let Some(p) = password {
                pairs.push(("password".to_string(), percent_decode(p)?));
            }
            hostspec
        }
        None => authority,
    };
    let mut hosts = Vec::new();
    let mut ports = Vec::new();
    for part in hostspec.split(',').filter(|p| !p.is_empty()) {
        let (host, port) = if let Some(inner) = part.strip_prefix('[') {
            let (h, after) = inner.split_once(']').ok_or_else(|| format!("unclosed [ in host {part:?}"))?;
            (h.to_string(), after.strip_prefix(':').map(str::to_string))
        } else {
            match part.rsplit_once(':') {
                Some((h, p)) => (percent_decode(h)?, Some(p.to_string())),
                None => (percent_decode(part)?, None),
            }
        };
        hosts.push(host);
        ports.push(port);
    }
    if !hosts.is_empty() {
        pairs.push(("host".to_string(), hosts.join(",")));
    }
    if ports.iter().any(Option::is_some) {
        // libpq: a host without a port uses the default.
        let ports: Vec<String> = ports.into_iter().map(|p| p.unwrap_or_else(|| "5432".into())).collect();
        pairs.push(("port".to_string(), ports.join(",")));
    }
    if !path.is_empty() {
        pairs.push(("dbname".to_string(), percent_decode(path)?));
    }
    for param in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = param.split_once('=').ok_or_else(|| format!("query parameter {param:?} has no \"=\""))?;
        pairs.push((percent_decode(k)?, percent_decode(v)?));
    }
    Ok(pairs)
}

/// A DSN with its password replaced, for error messages.
pub fn redact_dsn(dsn: &str) -> String {
    let mut out = Vec::new();
    let mut in_password = false;
    for part in dsn.split_whitespace() {
        if in_password {
            // A quoted password with spaces: drop the rest of it.
            if part.ends_with('\'') && !part.ends_with("\\'") {
                in_password = false;
            }
            continue;
        }
        if let Some(value) = part.strip_prefix("password=") {
            out.push("password=***".to_string());
            in_password = value.starts_with('\'') && (value.len() == 1 || !value.ends_with('\''));
        } else {
            out.push(part.to_string());
        }
    }
    let joined = out.join(" ");
    // postgres://user:secret@host -> postgres://user:***@host
    let mut joined = if let Some(scheme_end) = joined.find("://") {
        let rest = &joined[scheme_end + 3..];
        match rest.rfind('@') {
            Some(at) => match rest[..at].find(':') {
                Some(colon) => format!("{}{}:***{}", &joined[..scheme_end + 3], &rest[..colon], &rest[at..]),
                None => joined.clone(),
            },
            None => joined.clone(),
        }
    } else {
        joined
    };
    // ...?password=secret&... -> ?password=***&...
    if let Some(pos) = joined.find("password=").filter(|_| joined.contains("://")) {
        let start = pos + "password=".len();
        let end = joined[start..].find('&').map_or(joined.len(), |e| start + e);
        if &joined[start..end] != "***" {
            joined.replace_range(start..end, "***");
        }
    }
    joined
}
