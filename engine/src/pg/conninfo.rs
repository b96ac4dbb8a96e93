//! Where a database is and how to log in. Stored in the catalog for each
//! db; built from a DSN for the control database. The password is kept for
//! connecting and never shown: `Debug` and `describe` leave it out.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::CONNECT_TIMEOUT;
use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    Disable,
    #[default]
    Prefer,
    Require,
}

impl SslMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
        }
    }
}

impl FromStr for SslMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "disable" => Ok(SslMode::Disable),
            "allow" | "prefer" => Ok(SslMode::Prefer),
            "require" => Ok(SslMode::Require),
            "verify-ca" | "verify-full" => {
                Err(Error::usage(format!("sslmode={s} is not supported yet: use sslmode=disable, prefer or require")))
            }
            other => Err(Error::usage(format!("bad sslmode \"{other}\": use disable, prefer or require"))),
        }
    }
}

#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnInfo {
    /// Host name, IP address or socket directory; None: PGHOST, the local
    /// socket directory, then localhost.
    pub host: Option<String>,
    pub port: Option<u16>,
    pub dbname: String,
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    pub sslmode: Option<SslMode>,
}

impl fmt::Debug for ConnInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

impl ConnInfo {
    /// Parses a libpq key=value string or a postgres:// URL.
    pub fn from_dsn(dsn: &str) -> Result<Self> {
        let config = tokio_postgres::Config::from_str(dsn).map_err(|err| {
            Error::Config(format!(
                "bad connection string {:?}: {err}; write it as \"host=H port=P dbname=D user=U\" or postgres://U@H:P/D",
                redact_dsn(dsn)
            ))
        })?;
        let host = config
            .get_hosts()
            .iter()
            .map(|h| match h {
                tokio_postgres::config::Host::Tcp(name) => name.clone(),
                tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
            })
            .collect::<Vec<_>>();
        Ok(ConnInfo {
            host: (!host.is_empty()).then(|| host.join(",")),
            port: config.get_ports().first().copied(),
            dbname: config.get_dbname().unwrap_or("ibex").to_string(),
            user: config.get_user().map(str::to_string),
            password: config.get_password().map(|p| String::from_utf8_lossy(p).into_owned()),
            sslmode: match config.get_ssl_mode() {
                tokio_postgres::config::SslMode::Disable => Some(SslMode::Disable),
                tokio_postgres::config::SslMode::Require => Some(SslMode::Require),
                _ => None,
            },
        })
    }

    /// The same server, another database (e.g. `postgres` to create `ibex`).
    pub fn with_dbname(&self, dbname: &str) -> Self {
        ConnInfo { dbname: dbname.to_string(), ..self.clone() }
    }

    pub fn effective_user(&self) -> String {
        self.user
            .clone()
            .or_else(|| std::env::var("PGUSER").ok())
            .or_else(|| std::env::var("USER").ok())
            .or_else(|| std::env::var("LOGNAME").ok())
            .unwrap_or_else(|| "postgres".to_string())
    }

    pub fn effective_port(&self) -> u16 {
        self.port.or_else(|| std::env::var("PGPORT").ok().and_then(|p| p.parse().ok())).unwrap_or(5432)
    }

    fn effective_hosts(&self) -> Vec<String> {
        if let Some(host) = self.host.clone().or_else(|| std::env::var("PGHOST").ok()) {
            return host.split(',').map(|h| h.trim().to_string()).collect();
        }
        let mut hosts = Vec::new();
        for dir in ["/var/run/postgresql", "/tmp"] {
            let socket = format!("{dir}/.s.PGSQL.{}", self.effective_port());
            if Path::new(&socket).exists() {
                hosts.push(dir.to_string());
                break;
            }
        }
        hosts.push("localhost".to_string());
        hosts
    }

    /// `host:port/dbname as user`, for messages. Never the password.
    pub fn describe(&self) -> String {
        let hosts = self.effective_hosts().join(",");
        format!("{hosts}:{}/{} as {}", self.effective_port(), self.dbname, self.effective_user())
    }

    pub fn to_config(&self, application_name: &str) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        for host in self.effective_hosts() {
            if host.starts_with('/') {
                config.host_path(&host);
            } else {
                config.host(&host);
            }
        }
        config.port(self.effective_port());
        config.dbname(&self.dbname);
        config.user(self.effective_user());
        if let Some(password) = self.password.clone().or_else(|| std::env::var("PGPASSWORD").ok()) {
            config.password(password);
        }
        config.ssl_mode(match self.sslmode.unwrap_or_default() {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require => tokio_postgres::config::SslMode::Require,
        });
        config.application_name(application_name);
        config.connect_timeout(CONNECT_TIMEOUT);
        config.keepalives(true);
        config.keepalives_idle(std::time::Duration::from_secs(30));
        config
    }
}

/// A DSN with its password replaced, for error messages.
pub fn redact_dsn(dsn: &str) -> String {
    let mut out = Vec::new();
    for part in dsn.split_whitespace() {
        if part.starts_with("password=") {
            out.push("password=***".to_string());
        } else {
            out.push(part.to_string());
        }
    }
    let joined = out.join(" ");
    // postgres://user:secret@host -> postgres://user:***@host
    if let Some(scheme_end) = joined.find("://") {
        let rest = &joined[scheme_end + 3..];
        if let Some(at) = rest.find('@')
            && let Some(colon) = rest[..at].find(':')
        {
            return format!("{}{}:***{}", &joined[..scheme_end + 3], &rest[..colon], &rest[at..]);
        }
    }
    joined
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dsn_round_trip_keeps_parts() {
        let info = ConnInfo::from_dsn("host=127.0.0.1 port=5555 dbname=ctl user=bob password=s3cret").unwrap();
        assert_eq!(info.host.as_deref(), Some("127.0.0.1"));
        assert_eq!(info.port, Some(5555));
        assert_eq!(info.dbname, "ctl");
        assert_eq!(info.password.as_deref(), Some("s3cret"));
        assert!(!format!("{info:?}").contains("s3cret"));
        assert!(!info.describe().contains("s3cret"));
    }

    #[test]
    fn redacts_passwords_in_dsns() {
        assert_eq!(redact_dsn("host=x password=p dbname=d"), "host=x password=*** dbname=d");
        assert_eq!(redact_dsn("postgres://u:p@h:1/d"), "postgres://u:***@h:1/d");
    }
}
