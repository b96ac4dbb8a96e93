//! Statements a connection keeps prepared from one run to the next. A
//! KID keeps its connections between runs; a COPY started from a kept
//! statement skips the Parse round trip, and a run that applies a few
//! rows to several tables is mostly such round trips.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use tokio_postgres::{Client, Statement};

/// Statements kept per connection at most; past it they are all closed
/// and prepared again as needed (only fixed texts are kept, so this is
/// only reached by a sync with very many tables).
const KEPT: usize = 512;

/// The statements of one connection, by their text. Each belongs to the
/// connection it was prepared on: whoever holds this must drop it with
/// that connection.
#[derive(Debug, Default)]
pub struct Prepared {
    statements: Mutex<HashMap<String, Statement>>,
}

impl Prepared {
    /// `sql` prepared on `client` (the connection this belongs to): the
    /// first call prepares it (one round trip), later ones do not wait.
    pub async fn statement(&self, client: &Client, sql: &str) -> Result<Statement, tokio_postgres::Error> {
        if let Some(statement) = self.kept().get(sql) {
            return Ok(statement.clone());
        }
        let statement = client.prepare(sql).await?;
        let mut kept = self.kept();
        if kept.len() >= KEPT {
            kept.clear();
        }
        kept.insert(sql.to_string(), statement.clone());
        Ok(statement)
    }

    fn kept(&self) -> MutexGuard<'_, HashMap<String, Statement>> {
        // A panic while the map was held leaves it whole: keep using it.
        self.statements.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
