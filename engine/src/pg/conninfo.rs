//! Where a database is and how to log in. Stored in the catalog for each
//! db; built from a DSN for the control database. The password is kept for
//! connecting and never shown: `Debug` and `describe` leave it out.
//!
//! libpq's layering applies when connecting: what the DSN (or `ibex add db`)
//! gives wins, then the `service=` entry, then the PG* environment, then
//! the defaults; `~/.pgpass` supplies a missing password per host.
//!
//! Long on purpose: libpq's keys, their layering and their checks are one
//! set of rules, kept together (with their tests) so they cannot drift.
//!
//! Long on purpose: libpq's layering of DSN, service file, environment
//! and defaults is one piece of logic, with its tests.

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::CONNECT_TIMEOUT;
use super::dsn::{parse_key_values, parse_uri, redact_dsn};
use crate::error::{Error, Result};

/// libpq's sslmode, with libpq's meaning (see `pg::tls`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    Disable,
    Allow,
    #[default]
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

impl FromStr for SslMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "disable" => Ok(SslMode::Disable),
            "allow" => Ok(SslMode::Allow),
            "prefer" => Ok(SslMode::Prefer),
            "require" => Ok(SslMode::Require),
            "verify-ca" => Ok(SslMode::VerifyCa),
            "verify-full" => Ok(SslMode::VerifyFull),
            other => Err(Error::usage(format!(
                "bad sslmode \"{other}\": use disable, allow, prefer, require, verify-ca or verify-full"
            ))),
        }
    }
}

/// libpq's channel_binding: whether SCRAM authentication binds itself to
/// the TLS session (`SCRAM-SHA-256-PLUS` with `tls-server-end-point`), so
/// that a man in the middle holding another certificate cannot relay it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ChannelBinding {
    /// Never bind.
    Disable,
    /// Bind when the connection has TLS and the server offers it.
    #[default]
    Prefer,
    /// Connect only by SCRAM bound to the TLS session.
    Require,
}

impl ChannelBinding {
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelBinding::Disable => "disable",
            ChannelBinding::Prefer => "prefer",
            ChannelBinding::Require => "require",
        }
    }
}

impl FromStr for ChannelBinding {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "disable" => Ok(ChannelBinding::Disable),
            "prefer" => Ok(ChannelBinding::Prefer),
            "require" => Ok(ChannelBinding::Require),
            other => Err(Error::usage(format!("bad channel_binding \"{other}\": use disable, prefer or require"))),
        }
    }
}

/// Keys `set` accepts, for messages and `ibex add db`.
pub const KEYS: &[&str] = &[
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "sslcrl",
    "channel_binding",
    "service",
    "passfile",
    "application_name",
    "options",
    "connect_timeout",
    "target_session_attrs",
];

#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnInfo {
    /// Host names, IP addresses or socket directories, comma-separated;
    /// None: service, PGHOST, the local socket directory, then localhost.
    pub host: Option<String>,
    /// The port, or the first of `ports`.
    pub port: Option<u16>,
    /// One port per host when several were given (`port=5432,5433`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
    /// Empty: from the service, PGDATABASE, else "ibex".
    pub dbname: String,
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// None: libpq's default, prefer.
    pub sslmode: Option<SslMode>,
    /// A file, or `system` for the system's trusted roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sslrootcert: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sslcert: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sslkey: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sslcrl: Option<String>,
    /// None: libpq's default, prefer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel_binding: Option<ChannelBinding>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passfile: Option<String>,
    /// The user's name for the session; ibex's own name is the fallback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub application_name: Option<String>,
    /// Extra server options; ibex's pinned settings come after them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<String>,
    /// Seconds per host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<u64>,
    /// `any` or `read-write`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_session_attrs: Option<String>,
}

impl fmt::Debug for ConnInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

/// One host to try.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub host: String,
    pub port: u16,
}

impl Target {
    pub fn is_socket(&self) -> bool {
        self.host.starts_with('/')
    }
}

/// Everything needed to connect, after layering service, environment and
/// defaults over the stored settings.
pub(crate) struct Resolved {
    pub targets: Vec<Target>,
    pub dbname: String,
    pub user: String,
    pub password: Option<String>,
    pub passfile: Option<String>,
    pub sslmode: SslMode,
    pub sslrootcert: Option<String>,
    pub sslcert: Option<String>,
    pub sslkey: Option<String>,
    pub sslcrl: Option<String>,
    pub channel_binding: ChannelBinding,
    pub application_name: Option<String>,
    pub options: Option<String>,
    pub connect_timeout: Duration,
    pub read_write: bool,
}

/// The environment variables libpq reads, and the key each stands for.
const ENV_KEYS: &[(&str, &str)] = &[
    ("PGHOST", "host"),
    ("PGHOSTADDR", "hostaddr"),
    ("PGPORT", "port"),
    ("PGDATABASE", "dbname"),
    ("PGUSER", "user"),
    ("PGPASSWORD", "password"),
    ("PGPASSFILE", "passfile"),
    ("PGSSLMODE", "sslmode"),
    ("PGSSLROOTCERT", "sslrootcert"),
    ("PGSSLCERT", "sslcert"),
    ("PGSSLKEY", "sslkey"),
    ("PGSSLCRL", "sslcrl"),
    ("PGCHANNELBINDING", "channel_binding"),
    ("PGAPPNAME", "application_name"),
    ("PGOPTIONS", "options"),
    ("PGCONNECT_TIMEOUT", "connect_timeout"),
    ("PGTARGETSESSIONATTRS", "target_session_attrs"),
];

fn non_empty(v: String) -> Option<String> {
    (!v.is_empty()).then_some(v)
}

fn parse_ports(value: &str) -> Result<Vec<u16>> {
    value
        .split(',')
        .map(|p| {
            p.trim().parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| {
                Error::usage(format!(
                    "bad port {:?}: use a number from 1 to 65535 (or one per host, comma-separated)",
                    p
                ))
            })
        })
        .collect()
}

impl ConnInfo {
    /// Sets one libpq key; an empty value unsets it.
    pub fn set(&mut self, key: &str, value: &str) -> Result<()> {
        let v = value.to_string();
        match key {
            "host" | "hostaddr" => self.host = non_empty(v),
            "port" => {
                let ports = if v.is_empty() { Vec::new() } else { parse_ports(&v)? };
                self.port = ports.first().copied();
                self.ports = if ports.len() > 1 { ports } else { Vec::new() };
            }
            "dbname" => self.dbname = v,
            "user" => self.user = non_empty(v),
            "password" => self.password = non_empty(v),
            "sslmode" => self.sslmode = if v.is_empty() { None } else { Some(v.parse()?) },
            // URI form: ?ssl=true means require, as in libpq.
            "ssl" => {
                if v == "true" {
                    self.sslmode = Some(SslMode::Require);
                }
            }
            "sslrootcert" => self.sslrootcert = non_empty(v),
            "sslcert" => self.sslcert = non_empty(v),
            "sslkey" => self.sslkey = non_empty(v),
            "sslcrl" => self.sslcrl = non_empty(v),
            "channel_binding" => self.channel_binding = if v.is_empty() { None } else { Some(v.parse()?) },
            "service" => self.service = non_empty(v),
            "passfile" => self.passfile = non_empty(v),
            "application_name" => self.application_name = non_empty(v),
            "options" => self.options = non_empty(v),
            "connect_timeout" => {
                self.connect_timeout = match v.trim() {
                    "" => None,
                    t => Some(t.parse::<u64>().map_err(|_| {
                        Error::usage(format!("bad connect_timeout {t:?}: use a whole number of seconds"))
                    })?),
                }
            }
            "target_session_attrs" => {
                self.target_session_attrs = match v.as_str() {
                    "" => None,
                    "any" | "read-write" => Some(v),
                    other => {
                        return Err(Error::usage(format!(
                            "bad target_session_attrs {other:?}: ibex supports any and read-write"
                        )));
                    }
                }
            }
            // Accepted and ignored, as libpq options ibex has no use for.
            "fallback_application_name" | "client_encoding" | "keepalives" | "sslcompression" | "gssencmode" => {}
            other => {
                return Err(Error::Config(format!("unknown connection key {other:?}: use one of {}", KEYS.join(", "))));
            }
        }
        Ok(())
    }

    fn from_pairs(pairs: Vec<(String, String)>) -> Result<Self> {
        let mut info = ConnInfo::default();
        for (k, v) in pairs {
            info.set(&k, &v)?;
        }
        Ok(info)
    }

    /// Parses a libpq key=value string or a postgres:// URI. A database
    /// left out comes from the service, PGDATABASE, else "ibex".
    pub fn from_dsn(dsn: &str) -> Result<Self> {
        let bad = |why: String| {
            Error::Config(format!(
                "bad connection string {:?}: {why}; write it as \"host=H port=P dbname=D user=U\" or postgresql://U@H:P/D",
                redact_dsn(dsn)
            ))
        };
        let pairs = if dsn.starts_with("postgresql://") || dsn.starts_with("postgres://") {
            parse_uri(dsn).map_err(bad)?
        } else {
            parse_key_values(dsn).map_err(bad)?
        };
        let mut info = Self::from_pairs(pairs).map_err(|err| bad(err.to_string()))?;
        if info.dbname.is_empty() {
            let layered = info.layered()?;
            info.dbname = if layered.dbname.is_empty() { "ibex".to_string() } else { layered.dbname };
        }
        Ok(info)
    }

    /// Fills what `self` leaves out from `other`.
    fn fill_from(&mut self, other: ConnInfo) {
        if self.host.is_none() {
            self.host = other.host;
        }
        if self.port.is_none() {
            self.port = other.port;
            self.ports = other.ports;
        }
        if self.dbname.is_empty() {
            self.dbname = other.dbname;
        }
        macro_rules! fill {
            ($($f:ident),*) => { $( if self.$f.is_none() { self.$f = other.$f; } )* };
        }
        fill!(
            user,
            password,
            sslmode,
            sslrootcert,
            sslcert,
            sslkey,
            sslcrl,
            channel_binding,
            passfile,
            application_name,
            options,
            connect_timeout,
            target_session_attrs
        );
    }

    fn from_env() -> Result<Self> {
        let mut info = ConnInfo::default();
        for (var, key) in ENV_KEYS {
            if let Ok(value) = std::env::var(var) {
                info.set(key, &value).map_err(|err| Error::Config(format!("environment variable {var}: {err}")))?;
            }
        }
        Ok(info)
    }

    /// Self, then the service's entry, then the environment.
    fn layered(&self) -> Result<ConnInfo> {
        let mut out = self.clone();
        let service = self.service.clone().or_else(|| std::env::var("PGSERVICE").ok().and_then(non_empty));
        if let Some(name) = service {
            let pairs = super::service::lookup(&name)?;
            let entry = Self::from_pairs(pairs).map_err(|err| {
                Error::Config(format!("service \"{name}\": {err}; fix its entry in the service file"))
            })?;
            out.fill_from(entry);
        }
        out.fill_from(Self::from_env()?);
        Ok(out)
    }

    /// The settings to connect with, or a `Config` error naming what is wrong.
    pub(crate) fn resolve(&self) -> Result<Resolved> {
        let l = self.layered()?;
        let port = l.port.unwrap_or(5432);
        let hosts: Vec<String> = match &l.host {
            Some(h) => h.split(',').map(|h| h.trim().to_string()).collect(),
            None => default_hosts(port),
        };
        let ports: Vec<u16> = if l.ports.is_empty() { vec![port; hosts.len()] } else { l.ports.clone() };
        if ports.len() != hosts.len() {
            return Err(Error::Config(format!(
                "{} hosts but {} ports: give one port, or one per host in the same order",
                hosts.len(),
                ports.len()
            )));
        }
        let targets = hosts
            .into_iter()
            .zip(ports)
            .map(|(host, port)| Target { host: if host.is_empty() { "localhost".into() } else { host }, port })
            .collect();
        let user = l.user.clone().unwrap_or_else(os_user);
        let dbname = if l.dbname.is_empty() { "ibex".to_string() } else { l.dbname.clone() };
        // libpq: the system roots are only trusted with host name checks.
        let sslmode = match (&l.sslrootcert, l.sslmode) {
            (Some(root), None) if root == "system" => SslMode::VerifyFull,
            (Some(root), Some(mode)) if root == "system" && mode != SslMode::VerifyFull => {
                return Err(Error::Config(format!(
                    "sslmode={} may not be used with sslrootcert=system: use sslmode=verify-full",
                    mode.as_str()
                )));
            }
            (_, mode) => mode.unwrap_or_default(),
        };
        let channel_binding = l.channel_binding.unwrap_or_default();
        if channel_binding == ChannelBinding::Require && matches!(sslmode, SslMode::Disable | SslMode::Allow) {
            return Err(Error::Config(format!(
                "channel_binding=require binds the login to TLS, but sslmode={} {}: use sslmode=require (verify-full to check the server's name too)",
                sslmode.as_str(),
                if sslmode == SslMode::Disable { "turns TLS off" } else { "tries plaintext first" }
            )));
        }
        Ok(Resolved {
            targets,
            dbname,
            user,
            password: l.password,
            passfile: l.passfile,
            sslmode,
            sslrootcert: l.sslrootcert,
            sslcert: l.sslcert,
            sslkey: l.sslkey,
            sslcrl: l.sslcrl,
            channel_binding,
            application_name: l.application_name,
            options: l.options,
            // libpq: values below 2 s mean 2 s, 0 means none (we keep a cap).
            connect_timeout: match l.connect_timeout {
                None | Some(0) => CONNECT_TIMEOUT,
                Some(s) => Duration::from_secs(s.max(2)),
            },
            read_write: l.target_session_attrs.as_deref() == Some("read-write"),
        })
    }

    /// The same server, another database (e.g. `postgres` to create `ibex`).
    pub fn with_dbname(&self, dbname: &str) -> Self {
        ConnInfo { dbname: dbname.to_string(), ..self.clone() }
    }

    pub fn effective_user(&self) -> String {
        self.layered().ok().and_then(|l| l.user).unwrap_or_else(os_user)
    }

    pub fn effective_port(&self) -> u16 {
        self.layered().ok().and_then(|l| l.port).unwrap_or(5432)
    }

    /// `host:port/dbname as user`, for messages. Never the password.
    pub fn describe(&self) -> String {
        match self.resolve() {
            Ok(r) => {
                let same_port = r.targets.iter().all(|t| t.port == r.targets[0].port);
                let hosts = if same_port {
                    let names: Vec<&str> = r.targets.iter().map(|t| t.host.as_str()).collect();
                    format!("{}:{}", names.join(","), r.targets.first().map_or(5432, |t| t.port))
                } else {
                    r.targets.iter().map(|t| format!("{}:{}", t.host, t.port)).collect::<Vec<_>>().join(",")
                };
                format!("{hosts}/{} as {}", r.dbname, r.user)
            }
            // Unresolvable (bad service, bad PG* variable): what we have.
            Err(_) => format!(
                "{}:{}/{} as {}",
                self.host.as_deref().unwrap_or("localhost"),
                self.port.unwrap_or(5432),
                self.dbname,
                self.user.clone().unwrap_or_else(os_user)
            ),
        }
    }
}

fn os_user() -> String {
    std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).unwrap_or_else(|_| "postgres".to_string())
}

/// libpq's default: the local socket directory if a server listens there,
/// else localhost.
fn default_hosts(port: u16) -> Vec<String> {
    let mut hosts = Vec::new();
    for dir in ["/var/run/postgresql", "/tmp"] {
        if Path::new(&format!("{dir}/.s.PGSQL.{port}")).exists() {
            hosts.push(dir.to_string());
            break;
        }
    }
    hosts.push("localhost".to_string());
    hosts
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
        assert_eq!(redact_dsn("host=x password='a b c' dbname=d"), "host=x password=*** dbname=d");
        assert_eq!(
            redact_dsn("postgresql://h/d?password=zz&sslmode=require"),
            "postgresql://h/d?password=***&sslmode=require"
        );
    }

    #[test]
    fn key_values_follow_libpq_quoting() {
        let pairs = parse_key_values("host = h  port=1").unwrap();
        assert_eq!(pairs, vec![("host".into(), "h".into()), ("port".into(), "1".into())]);
        let pairs = parse_key_values(r"user=a\ b sslrootcert='/x y/ca.crt' p='q\'r' e=''").unwrap();
        assert_eq!(pairs[0], ("user".into(), "a b".into()));
        assert_eq!(pairs[1], ("sslrootcert".into(), "/x y/ca.crt".into()));
        assert_eq!(pairs[2], ("p".into(), "q'r".into()));
        assert_eq!(pairs[3], ("e".into(), "".into()));
        assert!(parse_key_values("host").is_err());
        assert!(parse_key_values("host='x").is_err());
    }

    #[test]
    fn uris_with_hosts_ports_and_parameters() {
        let info = ConnInfo::from_dsn(
            "postgresql://bob:p%40ss@h1:5433,[::1]:5434/my%20db?sslmode=verify-full&sslrootcert=/r.crt&connect_timeout=5",
        )
        .unwrap();
        assert_eq!(info.user.as_deref(), Some("bob"));
        assert_eq!(info.password.as_deref(), Some("p@ss"));
        assert_eq!(info.host.as_deref(), Some("h1,::1"));
        assert_eq!(info.ports, vec![5433, 5434]);
        assert_eq!(info.dbname, "my db");
        assert_eq!(info.sslmode, Some(SslMode::VerifyFull));
        assert_eq!(info.sslrootcert.as_deref(), Some("/r.crt"));
        assert_eq!(info.connect_timeout, Some(5));
        assert!(!format!("{info:?}").contains("p@ss"));
    }

    #[test]
    fn unknown_keys_are_config_errors() {
        let err = ConnInfo::from_dsn("host=x password=hunter2 colour=blue").unwrap_err();
        assert!(matches!(err, Error::Config(_)));
        let text = err.to_string();
        assert!(text.contains("colour") && !text.contains("hunter2"), "{text}");
    }

    #[test]
    fn old_catalog_json_still_reads() {
        let old = r#"{"host":"h","port":5432,"dbname":"d","user":"u","password":"pw","sslmode":"require"}"#;
        let info: ConnInfo = serde_json::from_str(old).unwrap();
        assert_eq!(info.sslmode, Some(SslMode::Require));
        assert!(info.sslrootcert.is_none() && info.ports.is_empty());
        let again: ConnInfo = serde_json::from_str(&serde_json::to_string(&info).unwrap()).unwrap();
        assert_eq!(again, info);
        let new: ConnInfo =
            serde_json::from_str(r#"{"host":null,"port":null,"dbname":"d","user":null,"sslmode":"verify-full"}"#)
                .unwrap();
        assert_eq!(new.sslmode, Some(SslMode::VerifyFull));
    }

    #[test]
    fn ports_must_match_hosts() {
        let info = ConnInfo::from_dsn("host=a,b,c port=1,2 dbname=d").unwrap();
        assert!(matches!(info.resolve(), Err(Error::Config(_))));
        let info = ConnInfo::from_dsn("host=a,b port=7 dbname=d").unwrap();
        let r = info.resolve().unwrap();
        assert_eq!(r.targets.iter().map(|t| t.port).collect::<Vec<_>>(), vec![7, 7]);
    }

    #[test]
    fn system_roots_need_verify_full() {
        let info = ConnInfo::from_dsn("host=a dbname=d sslrootcert=system").unwrap();
        assert_eq!(info.resolve().unwrap().sslmode, SslMode::VerifyFull);
        let info = ConnInfo::from_dsn("host=a dbname=d sslrootcert=system sslmode=require").unwrap();
        assert!(matches!(info.resolve(), Err(Error::Config(_))));
    }

    #[test]
    fn channel_binding_reads_as_libpq_and_needs_tls_when_required() {
        // A managed service's URI, as its console hands it out.
        let info = ConnInfo::from_dsn("postgresql://u:p@h/d?sslmode=require&channel_binding=require").unwrap();
        assert_eq!(info.channel_binding, Some(ChannelBinding::Require));
        assert_eq!(info.resolve().unwrap().channel_binding, ChannelBinding::Require);
        let json = serde_json::to_string(&info).unwrap();
        assert_eq!(serde_json::from_str::<ConnInfo>(&json).unwrap(), info);
        let info = ConnInfo::from_dsn("host=h dbname=d").unwrap();
        assert_eq!(info.channel_binding, None);
        assert!(ConnInfo::from_dsn("host=h dbname=d channel_binding=on").is_err());
        for mode in ["disable", "allow"] {
            let info = ConnInfo::from_dsn(&format!("host=h dbname=d sslmode={mode} channel_binding=require")).unwrap();
            assert!(matches!(info.resolve(), Err(Error::Config(_))), "{mode}");
        }
    }
}
