//! PostgreSQL plumbing that knows nothing about syncs: connection info,
//! connecting with a deadline (TLS, libpq's files and environment, pinned
//! session settings), identifier quoting.

pub mod activity;
mod conninfo;
pub mod copy;
mod dsn;
mod ident;
pub mod introspect;
pub mod keyarray;
pub mod listen;
mod pgpass;
pub mod pipeline;
pub mod prepared;
pub mod replication;
mod service;
pub mod session;
mod tls;
pub mod version;

pub use conninfo::{ChannelBinding, ConnInfo, KEYS as CONN_KEYS, SslMode};
pub use dsn::redact_dsn;
pub use ident::{QualifiedName, quote_ident, quote_literal};

use std::time::Duration;

use tokio_postgres::Socket;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::error::{Error, Result, describe_pg};
use conninfo::{Resolved, Target};

/// How long a connection attempt may take before it is reported as failed
/// (per host; `connect_timeout` / PGCONNECT_TIMEOUT change it).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a login was refused when a server offered SCRAM-SHA-256-PLUS on a
/// plaintext connection: PostgreSQL offers it only over TLS.
const TLS_TAKEN_AWAY: &str = "the server offered SCRAM-SHA-256-PLUS over a connection without TLS, which only happens when something between ibex and the server took TLS away: use sslmode=require (or verify-full)";

/// Why a login with channel_binding=require failed when the server let the
/// client in some other way, and what the server needs.
const UNBOUND_LOGIN: &str = "channel_binding=require, but the server did not authenticate by SCRAM bound to the TLS session (SCRAM-SHA-256-PLUS): that needs PostgreSQL 11 or later reached over TCP with TLS (a Unix socket has none) and nothing in between that ends TLS (a pooler), a pg_hba.conf line with scram-sha-256 for this connection, and the role's password stored as SCRAM (password_encryption = scram-sha-256); or drop channel_binding=require";

/// Why a SCRAM login was refused when the server's iteration count passed
/// postgres-protocol's cap (`MAX_ITERATION_COUNT` there), and the fix.
/// The count comes from the server before it has proven anything, so a
/// hostile one could otherwise make ibex hash for minutes (the cap is
/// pgjdbc's too). PostgreSQL 16+ hashes a password set in plain text
/// with the `scram_iterations` in force; a stored verifier keeps its own.
const SCRAM_ITERATIONS_CAPPED: &str = "the server asks for more than 100000 SCRAM iterations (the role's password was set under a higher scram_iterations, PostgreSQL 16+, or stored as a verifier made with more, or a pooler in between uses more); ibex refuses more, as pgjdbc does, since the count comes from the server before it has proven anything and a hostile one could make ibex hash for minutes: set the role's password again with fewer, e.g. in psql SET scram_iterations = 4096; (16+) then \\password ROLE, which hashes it on the client (or lower the pooler's)";

/// What ibex says of a SCRAM error of postgres-protocol that it explains
/// (the iteration cap); both logins, tokio-postgres's and the WAL
/// stream's, ask it.
pub(crate) fn scram_refusal(text: &str) -> Option<&'static str> {
    text.contains("SCRAM iteration count exceeds").then_some(SCRAM_ITERATIONS_CAPPED)
}

pub type Client = tokio_postgres::Client;

/// A connection whose stream may or may not be encrypted.
pub type Connection = tokio_postgres::Connection<Socket, <MakeRustlsConnect as MakeTlsConnect<Socket>>::Stream>;

/// Connects and spawns the connection's driver task. The error names the
/// host, port, database and user that failed and the server's reason.
pub async fn connect(info: &ConnInfo, application_name: &str) -> Result<Client> {
    let (client, connection) = open(info, application_name).await?;
    let target = info.describe();
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::debug!(%target, error = %describe_pg(&err), "connection closed");
        }
    });
    Ok(client)
}

/// Opens a connection without driving it: each host in turn, each with the
/// plaintext/TLS order its sslmode asks for.
pub(crate) async fn open(info: &ConnInfo, application_name: &str) -> Result<(Client, Connection)> {
    let fail = |reason: String| Error::Connect { target: info.describe(), reason };
    let resolved = info.resolve().map_err(|err| fail(err.to_string()))?;
    let tls = tls::setup(&resolved).map_err(|err| fail(err.to_string()))?;
    let mut failures = Vec::new();
    for target in &resolved.targets {
        match open_target(&resolved, &tls, target, application_name).await {
            Ok(pair) => return Ok(pair),
            Err(reason) => failures.push(format!("{}:{}: {reason}", target.host, target.port)),
        }
    }
    let reason = if failures.len() == 1 {
        // One host: the target already names it.
        failures.remove(0).split_once(": ").map_or_else(String::new, |(_, r)| r.to_string())
    } else {
        failures.join("; ")
    };
    Err(fail(reason))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Attempt {
    Plain,
    /// TLS if the server has it, plaintext if not (tokio-postgres' prefer).
    TlsIfOffered,
    Tls,
}

async fn open_target(
    r: &Resolved,
    tls: &tls::Tls,
    target: &Target,
    application_name: &str,
) -> std::result::Result<(Client, Connection), String> {
    let plan = attempts(r, target);
    let (password, password_note) = password_for(r, target);
    let mut last = String::new();
    for (i, attempt) in plan.iter().enumerate() {
        let config = config_for(r, target, password.as_deref(), *attempt, application_name);
        let outcome =
            tokio::time::timeout(r.connect_timeout + Duration::from_secs(1), config.connect(tls.connector())).await;
        let err = match outcome {
            Ok(Ok(pair)) => return Ok(pair),
            Ok(Err(err)) => err,
            Err(_) => return Err(format!("no answer within {} s", r.connect_timeout.as_secs())),
        };
        // allow: the server refused plaintext, try TLS; prefer: TLS failed
        // or was refused, try plaintext.
        let retry = i + 1 < plan.len() && (err.as_db_error().is_some() || tls::is_tls_failure(&err));
        last = reason(&err, r, tls, target, password_note.as_deref());
        if !retry {
            break;
        }
        tracing::debug!(host = %target.host, port = target.port, error = %last, "retrying with the other encryption");
    }
    Err(last)
}

/// The password for `target`: the given one, else the password file's;
/// with why the file was ignored, if it was.
fn password_for(r: &Resolved, target: &Target) -> (Option<String>, Option<String>) {
    if let Some(password) = &r.password {
        return (Some(password.clone()), None);
    }
    match pgpass::lookup(r.passfile.as_deref(), &target.host, target.port, &r.dbname, &r.user) {
        pgpass::Lookup::Found(p) => (Some(p), None),
        pgpass::Lookup::None => (None, None),
        pgpass::Lookup::Ignored(why) => (None, Some(why)),
    }
}

/// The encryption attempts for `target`, in order (see `Attempt`).
fn attempts(r: &Resolved, target: &Target) -> &'static [Attempt] {
    // libpq: no TLS over Unix sockets, whatever sslmode says.
    if target.is_socket() {
        return &[Attempt::Plain];
    }
    match r.sslmode {
        SslMode::Disable => &[Attempt::Plain],
        SslMode::Allow => &[Attempt::Plain, Attempt::Tls],
        SslMode::Prefer => &[Attempt::TlsIfOffered, Attempt::Plain],
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => &[Attempt::Tls],
    }
}

fn config_for(
    r: &Resolved,
    target: &Target,
    password: Option<&str>,
    attempt: Attempt,
    application_name: &str,
) -> tokio_postgres::Config {
    use tokio_postgres::config::{ChannelBinding as PgBinding, SslMode as PgSsl, TargetSessionAttrs};
    let mut config = tokio_postgres::Config::new();
    if target.is_socket() {
        config.host_path(&target.host);
    } else {
        config.host(&target.host);
    }
    config.port(target.port);
    config.dbname(&r.dbname);
    config.user(&r.user);
    if let Some(p) = password {
        config.password(p);
    }
    config.ssl_mode(match attempt {
        Attempt::Plain => PgSsl::Disable,
        Attempt::TlsIfOffered => PgSsl::Prefer,
        Attempt::Tls => PgSsl::Require,
    });
    config.channel_binding(match r.channel_binding {
        ChannelBinding::Disable => PgBinding::Disable,
        ChannelBinding::Prefer => PgBinding::Prefer,
        ChannelBinding::Require => PgBinding::Require,
    });
    // The user's application_name wins; ibex's is libpq's fallback_application_name.
    config.application_name(r.application_name.as_deref().unwrap_or(application_name));
    config.options(session::startup_options(r.options.as_deref()));
    if r.read_write {
        config.target_session_attrs(TargetSessionAttrs::ReadWrite);
    }
    config.connect_timeout(r.connect_timeout);
    config.keepalives(true);
    config.keepalives_idle(Duration::from_secs(30));
    config
}

/// The reason for one failed attempt, naming the fix where we know it.
fn reason(err: &tokio_postgres::Error, r: &Resolved, tls: &tls::Tls, target: &Target, note: Option<&str>) -> String {
    if let Some(text) = tls::explain(err, tls, &target.host, r.sslmode) {
        return text;
    }
    let text = describe_pg(err);
    if err.as_db_error().is_none() && text.contains("password missing") {
        let mut msg = "the server asks for a password and none is set: give pass=..., set PGPASSWORD, or add a line to ~/.pgpass (or the file PGPASSFILE names)".to_string();
        if let Some(note) = note {
            msg.push_str(&format!("; {note}"));
        }
        return msg;
    }
    if err.as_db_error().is_none() && text.contains("server did not use channel binding") {
        return UNBOUND_LOGIN.to_string();
    }
    if err.as_db_error().is_none() && text.contains("SCRAM-SHA-256-PLUS authentication over a non-TLS connection") {
        return TLS_TAKEN_AWAY.to_string();
    }
    if err.as_db_error().is_none()
        && let Some(why) = scram_refusal(&text)
    {
        return why.to_string();
    }
    if text.contains("database does not allow writes") || text.contains("read-only") && r.read_write {
        return format!("{text} (target_session_attrs=read-write wants a primary)");
    }
    // tokio-postgres reports a connect timeout as a bare "timeout": say which.
    if text.contains("timeout") && err.as_db_error().is_none() {
        return format!("no answer within {} s ({text})", r.connect_timeout.as_secs());
    }
    text
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A server that takes one connection, reads its startup packet and
    /// offers SCRAM-SHA-256-PLUS alongside SCRAM-SHA-256 on plaintext, as a
    /// man in the middle that took TLS away and relays a TLS server's
    /// offer would; then says whether the client answered anything.
    async fn stripped_tls_server() -> (u16, tokio::task::JoinHandle<usize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a port");
        let port = listener.local_addr().expect("its address").port();
        let serve = tokio::spawn(async move {
            let Ok((mut socket, _)) = listener.accept().await else { return 0 };
            let mut length = [0u8; 4];
            if socket.read_exact(&mut length).await.is_err() {
                return 0;
            }
            let mut startup = vec![0u8; (u32::from_be_bytes(length) as usize).saturating_sub(4)];
            if socket.read_exact(&mut startup).await.is_err() {
                return 0;
            }
            let mechanisms = b"SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0";
            let mut offer = vec![b'R'];
            offer.extend_from_slice(&(4 + 4 + mechanisms.len() as u32).to_be_bytes());
            offer.extend_from_slice(&10i32.to_be_bytes());
            offer.extend_from_slice(mechanisms);
            if socket.write_all(&offer).await.is_err() {
                return 0;
            }
            let mut answer = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(2), socket.read_to_end(&mut answer)).await;
            answer.len()
        });
        (port, serve)
    }

    #[tokio::test]
    async fn plus_offered_on_plaintext_is_refused_before_any_password_goes_out() {
        for replication in [false, true] {
            let (port, serve) = stripped_tls_server().await;
            let info = ConnInfo::from_dsn(&format!(
                "host=127.0.0.1 port={port} dbname=d user=u password=secret sslmode=disable connect_timeout=2"
            ))
            .expect("a DSN");
            let err = if replication {
                replication::ReplicationStream::start(&info, "ibex test", "START_REPLICATION SLOT s LOGICAL 0/0")
                    .await
                    .err()
                    .map(|e| e.to_string())
            } else {
                connect(&info, "ibex test").await.err().map(|e| e.to_string())
            };
            let err = err.expect("refused");
            assert!(err.contains("took TLS away"), "replication={replication}: {err}");
            assert!(!err.contains("secret"), "{err}");
            assert_eq!(
                serve.await.expect("the server ran"),
                0,
                "replication={replication}: the client answered the offer"
            );
        }
    }
}
