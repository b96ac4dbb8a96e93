//! A MariaDB or MySQL server as a target (mysql_async). Each run is one
//! transaction on one connection; tables are made on first use from a
//! second connection, since DDL commits implicitly in MySQL. The statements
//! are the MySQL dialect of `sqltext.rs`, the same a flatfile target writes.
//! Calls block the cycle's worker thread (`block_in_place`), as the other
//! foreign targets' local writes do, so the cycle keeps one interface.

use std::future::Future;
use std::path::PathBuf;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder};
use serde::{Deserialize, Serialize};

use super::sqltext::SqlText;
use super::{Dialect, Shape, TextRow, Writer};
use crate::error::{Error, Result};

/// Where a MariaDB/MySQL target is: a unix socket, or host and port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MariadbConn {
    pub host: Option<String>,
    pub port: Option<u16>,
    pub socket: Option<PathBuf>,
    pub user: String,
    /// Kept like a PostgreSQL db's password: stored, never printed.
    pub password: Option<String>,
    pub dbname: String,
}

impl MariadbConn {
    pub fn describe(&self) -> String {
        let at = match (&self.socket, &self.host) {
            (Some(socket), _) => socket.display().to_string(),
            (None, host) => format!("{}:{}", host.as_deref().unwrap_or("localhost"), self.port.unwrap_or(3306)),
        };
        format!("mariadb {}@{at}/{}", self.user, self.dbname)
    }

    fn opts(&self) -> OptsBuilder {
        let mut opts = OptsBuilder::default()
            .user(Some(self.user.clone()))
            .pass(self.password.clone())
            .db_name(Some(self.dbname.clone()));
        if let Some(host) = &self.host {
            opts = opts.ip_or_hostname(host.clone());
        }
        if let Some(port) = self.port {
            opts = opts.tcp_port(port);
        }
        if let Some(socket) = &self.socket {
            opts = opts.socket(Some(socket.display().to_string()));
        }
        opts
    }
}

/// Runs `future` to its end from synchronous code on a runtime worker.
fn block<F: Future>(future: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(future))
}

pub struct MariadbWriter {
    db: String,
    conn: MariadbConn,
    /// The run's transaction.
    tx: Conn,
    /// For CREATE TABLE, opened when first needed.
    ddl: Option<Conn>,
    sql: SqlText,
    /// Tables made (or found) in this run.
    prepared: Vec<String>,
    in_transaction: bool,
}

fn mariadb_error(db: &str, what: &str, err: mysql_async::Error) -> Error {
    Error::Sync(format!("db {db} (mariadb): {what}: {err}"))
}

async fn connect(db: &str, conn: &MariadbConn) -> Result<Conn> {
    let mut c = Conn::new(conn.opts()).await.map_err(|e| {
        Error::Sync(format!(
            "db {db}: cannot connect to {}: {e}; check the server is up and the connection settings",
            conn.describe()
        ))
    })?;
    // Literals use backslash escapes and UTC times, whatever the server's defaults.
    c.query_drop(
        "SET NAMES utf8mb4; SET SESSION time_zone = '+00:00', sql_mode = REPLACE(@@sql_mode, 'NO_BACKSLASH_ESCAPES', '')",
    )
    .await
    .map_err(|e| mariadb_error(db, "setting up the session", e))?;
    Ok(c)
}

/// Checks the server can be reached now (`add db`).
pub fn check(db: &str, conn: &MariadbConn) -> Result<()> {
    block(async {
        let c = connect(db, conn).await?;
        c.disconnect().await.map_err(|e| mariadb_error(db, "disconnecting", e))
    })
}

impl MariadbWriter {
    /// Connects and starts the run's transaction.
    pub fn begin(db: &str, conn: &MariadbConn) -> Result<MariadbWriter> {
        let tx = block(async {
            let mut tx = connect(db, conn).await?;
            // READ COMMITTED: tables made during the run (from the other
            // connection) stay readable; REPEATABLE READ would refuse them
            // (error 1412). The run is the tables' only writer.
            tx.query_drop("SET TRANSACTION ISOLATION LEVEL READ COMMITTED; START TRANSACTION")
                .await
                .map_err(|e| mariadb_error(db, "starting a transaction", e))?;
            Ok::<_, Error>(tx)
        })?;
        Ok(MariadbWriter {
            db: db.to_string(),
            conn: conn.clone(),
            tx,
            ddl: None,
            sql: SqlText::new(db, Dialect::Mysql),
            prepared: Vec::new(),
            in_transaction: true,
        })
    }

    fn execute(&mut self, statement: &str, what: &str) -> Result<u64> {
        let db = &self.db;
        let tx = &mut self.tx;
        block(async {
            tx.query_drop(statement).await.map_err(|e| mariadb_error(db, what, e))?;
            Ok(tx.affected_rows())
        })
    }
}

impl Writer for MariadbWriter {
    fn prepare(&mut self, table: &Shape) -> Result<()> {
        let name = table.flat_name();
        if self.prepared.contains(&name) {
            return Ok(());
        }
        let statement = self.sql.create_table(table)?;
        let (db, conn, ddl) = (&self.db, &self.conn, &mut self.ddl);
        block(async {
            if ddl.is_none() {
                *ddl = Some(connect(db, conn).await?);
            }
            match ddl.as_mut() {
                Some(c) => {
                    c.query_drop(&statement).await.map_err(|e| mariadb_error(db, &format!("creating table {name}"), e))
                }
                None => Ok(()),
            }
        })?;
        self.prepared.push(table.flat_name());
        Ok(())
    }

    fn delete_keys(&mut self, table: &Shape, keys: &[TextRow]) -> Result<u64> {
        let mut deleted = 0;
        for statement in self.sql.delete_keys(table, keys)? {
            deleted += self.execute(&statement, &format!("deleting from table {}", table.flat_name()))?;
        }
        Ok(deleted)
    }

    fn delete_all(&mut self, table: &Shape) -> Result<u64> {
        let statement = self.sql.delete_all(table);
        self.execute(&statement, &format!("emptying table {}", table.flat_name()))
    }

    fn is_empty(&mut self, table: &Shape) -> Result<bool> {
        let statement = format!("SELECT NOT EXISTS (SELECT 1 FROM {})", self.sql.table_name(table));
        let db = &self.db;
        let tx = &mut self.tx;
        let empty: Option<i64> = block(async {
            tx.query_first(statement)
                .await
                .map_err(|e| mariadb_error(db, &format!("reading table {}", table.flat_name()), e))
        })?;
        Ok(empty == Some(1))
    }

    fn write_rows(&mut self, table: &Shape, rows: &[TextRow]) -> Result<u64> {
        for statement in self.sql.insert_rows(table, rows)? {
            self.execute(&statement, &format!("inserting into table {}", table.flat_name()))?;
        }
        Ok(rows.len() as u64)
    }

    fn commit(&mut self) -> Result<()> {
        self.execute("COMMIT", "committing")?;
        self.in_transaction = false;
        Ok(())
    }
}

impl Drop for MariadbWriter {
    fn drop(&mut self) {
        if self.in_transaction {
            // The server rolls the transaction back when the connection closes.
            tracing::debug!(db = %self.db, "a run on MariaDB ends without a commit");
        }
    }
}
