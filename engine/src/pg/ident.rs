//! Quoting of identifiers and literals. Every name ibex puts into SQL text
//! goes through `quote_ident`; values travel as bind parameters or COPY
//! data, never as text, with the one exception of server-produced values
//! such as snapshots (`quote_literal`).

use std::fmt;

use serde::{Deserialize, Serialize};

/// Always quotes, so names keep their case, spaces, quotes and unicode.
pub fn quote_ident(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 2);
    out.push('"');
    for ch in name.chars() {
        if ch == '"' {
            out.push('"');
        }
        out.push(ch);
    }
    out.push('"');
    out
}

/// A string literal for `standard_conforming_strings = on` (the default
/// since PostgreSQL 9.1; ibex sets it on every connection it writes SQL to).
pub fn quote_literal(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for ch in value.chars() {
        if ch == '\'' {
            out.push('\'');
        }
        out.push(ch);
    }
    out.push('\'');
    out
}

/// `schema.name` of a table or sequence.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct QualifiedName {
    pub schema: String,
    pub name: String,
}

impl QualifiedName {
    pub fn new(schema: impl Into<String>, name: impl Into<String>) -> Self {
        QualifiedName { schema: schema.into(), name: name.into() }
    }

    /// The quoted form for SQL text.
    pub fn quoted(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }
}

/// Shown to people: `schema.name`, quoting only the parts that need it.
impl fmt::Display for QualifiedName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |part: &str| {
            let plain = !part.is_empty()
                && part.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                && !part.starts_with(|c: char| c.is_ascii_digit());
            if plain { part.to_string() } else { quote_ident(part) }
        };
        write!(f, "{}.{}", show(&self.schema), show(&self.name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_hostile_identifiers() {
        assert_eq!(quote_ident("x\"; DROP TABLE y; --"), "\"x\"\"; DROP TABLE y; --\"");
        assert_eq!(quote_ident("Ünïcode Name"), "\"Ünïcode Name\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
    }

    #[test]
    fn displays_plain_names_bare() {
        assert_eq!(QualifiedName::new("public", "accounts").to_string(), "public.accounts");
        assert_eq!(QualifiedName::new("public", "My Table").to_string(), "public.\"My Table\"");
    }
}
