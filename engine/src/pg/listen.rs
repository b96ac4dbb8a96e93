//! LISTEN/NOTIFY: a connection whose notifications arrive on a channel.
//! tokio-postgres delivers them only to whoever polls the connection, so
//! this task polls it and forwards them.

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_postgres::AsyncMessage;

use super::{Client, ConnInfo, quote_ident};
use crate::error::{PgContext, Result, describe_pg};

/// One notification: its channel and payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub channel: String,
    pub payload: String,
}

/// A client whose notifications arrive on `notices`; the channel closes
/// when the connection does.
pub struct Listener {
    pub client: Client,
    pub notices: mpsc::UnboundedReceiver<Notice>,
}

impl Listener {
    pub async fn connect(info: &ConnInfo, application_name: &str) -> Result<Listener> {
        // Same path as pg::connect: TLS, pinned settings, several hosts.
        let (client, mut connection) = super::open(info, application_name).await?;
        let (tx, notices) = mpsc::unbounded_channel();
        let target = info.describe();
        tokio::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(message) = messages.next().await {
                match message {
                    Ok(AsyncMessage::Notification(n)) => {
                        let notice = Notice { channel: n.channel().to_string(), payload: n.payload().to_string() };
                        if tx.send(notice).is_err() {
                            break;
                        }
                    }
                    Ok(_) => {}
                    Err(err) => {
                        tracing::debug!(%target, error = %describe_pg(&err), "listening connection closed");
                        break;
                    }
                }
            }
        });
        Ok(Listener { client, notices })
    }

    pub async fn listen(&self, channel: &str) -> Result<()> {
        self.client.batch_execute(&format!("LISTEN {}", quote_ident(channel))).await.ctx(|| format!("LISTEN {channel}"))
    }

    pub async fn unlisten(&self, channel: &str) -> Result<()> {
        self.client
            .batch_execute(&format!("UNLISTEN {}", quote_ident(channel)))
            .await
            .ctx(|| format!("UNLISTEN {channel}"))
    }
}

/// Sends a notification (through `pg_notify`, so any channel name works).
pub async fn notify(client: &Client, channel: &str, payload: &str) -> Result<()> {
    client.execute("SELECT pg_notify($1, $2)", &[&channel, &payload]).await.ctx(|| format!("notifying {channel}"))?;
    Ok(())
}
