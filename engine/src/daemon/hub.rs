//! One LISTEN connection per source db for the whole daemon, shared by the
//! CTLs that read it (a hundred syncs on one db need one connection, not a
//! hundred). A lost connection is re-opened with backoff; after each
//! (re)connect subscribers get an empty notice, meaning "changes may have
//! been missed: run".

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

use super::backoff;
use crate::capture::KICK_CHANNEL;
use crate::pg::ConnInfo;
use crate::pg::listen::{Listener, Notice};

#[derive(Default)]
pub struct Hub {
    channels: Mutex<HashMap<String, broadcast::Sender<Notice>>>,
}

impl Hub {
    /// Notices from db `name` (kick payloads `schema.table`, or "" after a reconnect).
    pub fn subscribe(self: &Arc<Self>, name: &str, conn: &ConnInfo) -> broadcast::Receiver<Notice> {
        let key = format!("{name}\u{0}{}", conn.describe());
        let Ok(mut channels) = self.channels.lock() else {
            // A poisoned map only loses sharing: a private channel still works.
            let (tx, rx) = broadcast::channel(1024);
            spawn_listener(Arc::clone(self), key, name.to_string(), conn.clone(), tx);
            return rx;
        };
        if let Some(tx) = channels.get(&key) {
            return tx.subscribe();
        }
        let (tx, rx) = broadcast::channel(1024);
        channels.insert(key.clone(), tx.clone());
        spawn_listener(Arc::clone(self), key, name.to_string(), conn.clone(), tx);
        rx
    }

    fn forget(&self, key: &str) {
        if let Ok(mut channels) = self.channels.lock() {
            channels.remove(key);
        }
    }
}

fn spawn_listener(hub: Arc<Hub>, key: String, name: String, conn: ConnInfo, tx: broadcast::Sender<Notice>) {
    tokio::spawn(async move {
        let mut failures = 0;
        loop {
            if tx.receiver_count() == 0 {
                hub.forget(&key);
                return;
            }
            match Listener::connect(&conn, "ibex listener").await {
                Ok(mut listener) => match listener.listen(KICK_CHANNEL).await {
                    Ok(()) => {
                        if failures > 0 {
                            tracing::info!(db = %name, "autokick listener connected again; running its syncs in case changes were missed");
                        }
                        // No receiver is fine: they come and go with their CTLs.
                        let _ = tx.send(Notice { channel: KICK_CHANNEL.into(), payload: String::new() });
                        loop {
                            tokio::select! {
                                notice = listener.notices.recv() => match notice {
                                    Some(n) => { let _ = tx.send(n); }
                                    None => break,
                                },
                                // Nobody listens any more: let the connection go.
                                _ = tokio::time::sleep(std::time::Duration::from_secs(5)), if tx.receiver_count() == 0 => break,
                            }
                        }
                        if tx.receiver_count() == 0 {
                            continue; // nobody listens: the loop's top lets it go
                        }
                        tracing::warn!(db = %name, "autokick connection closed; reconnecting");
                        failures = 1;
                    }
                    Err(err) => {
                        failures += 1;
                        if failures == 1 {
                            tracing::warn!(db = %name, error = %err, "cannot LISTEN for changes; syncs reading it run on kicks and checktime until it works (retrying)");
                        }
                    }
                },
                Err(err) => {
                    failures += 1;
                    if failures == 1 {
                        tracing::warn!(db = %name, error = %err, "autokick listener cannot connect; syncs reading it run on kicks and checktime until it does (retrying)");
                    }
                }
            }
            tokio::time::sleep(backoff(failures.max(1))).await;
        }
    });
}
