//! PostgreSQL plumbing that knows nothing about syncs: connection info,
//! connecting with a deadline, identifier quoting.

mod conninfo;
pub mod copy;
mod ident;
pub mod introspect;
pub mod listen;

pub use conninfo::{ConnInfo, SslMode};
pub use ident::{QualifiedName, quote_ident, quote_literal};

use std::time::Duration;

use crate::error::{Error, Result, describe_pg};

/// How long a connection attempt may take before it is reported as failed.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub type Client = tokio_postgres::Client;

/// Connects and spawns the connection's driver task. The error names the
/// host, port, database and user that failed and the server's reason.
pub async fn connect(info: &ConnInfo, application_name: &str) -> Result<Client> {
    let config = info.to_config(application_name);
    let attempt = config.connect(tokio_postgres::NoTls);
    let (client, connection) = match tokio::time::timeout(CONNECT_TIMEOUT + Duration::from_secs(1), attempt).await {
        Ok(Ok(pair)) => pair,
        Ok(Err(err)) => {
            return Err(Error::Connect { target: info.describe(), reason: connect_reason(&err) });
        }
        Err(_) => {
            return Err(Error::Connect {
                target: info.describe(),
                reason: format!("no answer within {} s", CONNECT_TIMEOUT.as_secs()),
            });
        }
    };
    let target = info.describe();
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::debug!(%target, error = %describe_pg(&err), "connection closed");
        }
    });
    Ok(client)
}

fn connect_reason(err: &tokio_postgres::Error) -> String {
    let text = describe_pg(err);
    // tokio-postgres reports a connect timeout as a bare "timeout": say which.
    if text.contains("timeout") && err.as_db_error().is_none() {
        return format!("no answer within {} s ({text})", CONNECT_TIMEOUT.as_secs());
    }
    text
}
