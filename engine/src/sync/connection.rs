//! One db's connection as a KID keeps it from run to run, with what
//! belongs to that connection and goes with it: its server's abilities,
//! the statements it keeps prepared, and its backend.

use std::sync::Arc;

use tokio_postgres::Client;

use crate::pg::activity::Backend;
use crate::pg::prepared::Prepared;
use crate::pg::version::Capabilities;

pub struct DbConnection {
    pub client: Arc<Client>,
    /// What its server can do, read at connect.
    pub server: Capabilities,
    /// The statements it keeps prepared between runs (they exist only on
    /// this connection).
    pub prepared: Prepared,
    /// Its backend: ended at the next connect if the connection is dropped
    /// without the server noticing (`Kid::end_dropped`).
    pub backend: Backend,
}
