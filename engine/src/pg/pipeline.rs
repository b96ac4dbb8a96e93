//! Joining requests pipelined on one connection. When a statement fails
//! inside a transaction, every statement queued behind it fails with
//! "current transaction is aborted" (SQLSTATE 25P02), which names nothing.
//! Both answers reach the client in order, but a join polls its futures one
//! after the other while the connection task delivers on another thread: the
//! second future can see its answer in a poll where the first saw nothing
//! yet. So a 25P02 is only reported when the other future has nothing better.

use std::future::Future;
use std::pin::pin;

use futures_util::future::{Either, select};
use tokio_postgres::error::SqlState;

use crate::error::{Error, Result};

/// Whether `err` only says an earlier statement of the transaction failed.
fn behind_a_failure(err: &Error) -> bool {
    err.sqlstate() == Some(&SqlState::IN_FAILED_SQL_TRANSACTION)
}

/// Both results, like `futures_util::future::try_join`: the first error
/// other than 25P02 is returned as soon as it is there; a 25P02 waits for
/// the other future, whose own error (the cause) is returned instead.
pub async fn try_join<A, B>(a: impl Future<Output = Result<A>>, b: impl Future<Output = Result<B>>) -> Result<(A, B)> {
    match select(pin!(a), pin!(b)).await {
        Either::Left((a, b)) => settle(a, b).await,
        Either::Right((b, a)) => settle(b, a).await.map(|(b, a)| (a, b)),
    }
}

/// One future's result and the other, still running.
async fn settle<T, U>(done: Result<T>, running: impl Future<Output = Result<U>>) -> Result<(T, U)> {
    match done {
        Ok(value) => Ok((value, running.await?)),
        Err(err) if !behind_a_failure(&err) => Err(err),
        Err(err) => Err(match running.await {
            Err(cause) if !behind_a_failure(&cause) => cause,
            _ => err,
        }),
    }
}
