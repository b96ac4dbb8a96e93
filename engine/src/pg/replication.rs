//! A logical replication connection (`replication=database`): the
//! walsender's START_REPLICATION on a slot, and the copy-both stream that
//! follows. The walsender keeps its decoding state from message to
//! message, so each change is decoded once, as it is written; the SQL
//! functions (`pg_logical_slot_peek_changes`) decode again from the slot's
//! restart point on every call. tokio-postgres has no copy-both mode, so
//! this speaks the protocol with postgres-protocol's codecs, over the same
//! hosts, TLS rules, passwords, pinned settings and
//! `target_session_attrs=read-write` check as `pg::open`.
//!
//! SCRAM binds itself to the TLS session as tokio-postgres does for every
//! other connection (`SCRAM-SHA-256-PLUS` when the server offers it and
//! channel_binding is not disable; with channel_binding=require, no other
//! login is taken).

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{self, SCRAM_SHA_256, SCRAM_SHA_256_PLUS, ScramSha256};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect, TlsStream};

use super::conninfo::{ChannelBinding, Resolved, Target};
use super::{Attempt, ConnInfo, session, tls};
use crate::error::{Error, Result};

/// A position in the WAL.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Lsn(pub u64);

impl Lsn {
    /// Reads PostgreSQL's `X/Y` text form.
    pub fn parse(text: &str) -> Option<Lsn> {
        let (high, low) = text.split_once('/')?;
        let high = u32::from_str_radix(high, 16).ok()?;
        let low = u32::from_str_radix(low, 16).ok()?;
        Some(Lsn((u64::from(high) << 32) | u64::from(low)))
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xffff_ffff)
    }
}

/// What the stream brought.
#[derive(Debug)]
pub enum Message {
    /// One message of the output plugin, at the position the plugin gave
    /// it (for test_decoding: a transaction's first change, a change, the
    /// end of its commit).
    Data { lsn: Lsn, data: Bytes },
    /// The server read the WAL this far ([`ReplicationStream::read_to`]).
    Progress,
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// One walsender session streaming a slot.
pub struct ReplicationStream {
    io: Box<dyn Io>,
    input: BytesMut,
    output: BytesMut,
    /// Where the server has read the WAL to: every transaction that
    /// committed before it was sent (its keepalives say so).
    read_to: Lsn,
    /// The furthest position confirmed: a lower one would move the slot
    /// back (before 17 the server does not refuse it).
    confirmed: Lsn,
    /// The server asked for an answer (a keepalive with its reply flag).
    reply_due: bool,
    /// host:port/dbname, for messages.
    target: String,
    /// The walsender's process id (BackendKeyData): the `active_pid` of
    /// the slot it streams.
    backend_pid: i32,
    /// When a message last went to the server.
    last_sent: tokio::time::Instant,
    /// How often an idle stream tells the server it is there (see
    /// [`ReplicationStream::keep_alive`]).
    keepalive_every: Duration,
}

/// How long a read may wait for the server before asking it where it
/// stands (a keepalive that requests a reply).
const ASK_AFTER: Duration = Duration::from_millis(20);

/// The bounds of the keepalive interval (see
/// `ReplicationStream::settle`).
const KEEPALIVE_LEAST: Duration = Duration::from_millis(200);
const KEEPALIVE_MOST: Duration = Duration::from_secs(10);

/// How long a status message may wait for the server to take it.
const WRITE_PATIENCE: Duration = Duration::from_secs(30);

impl ReplicationStream {
    /// Connects to the first host of `info` that takes a replication
    /// connection (each with the plaintext/TLS order its sslmode asks for)
    /// and runs `command`, a START_REPLICATION. The session is named
    /// `application_name` whatever `info` says, so that other sessions can
    /// tell it.
    pub async fn start(info: &ConnInfo, application_name: &str, command: &str) -> Result<ReplicationStream> {
        let fail = |reason: String| Error::Connect { target: info.describe(), reason };
        let resolved = info.resolve().map_err(|err| fail(err.to_string()))?;
        let tls = tls::setup(&resolved).map_err(|err| fail(err.to_string()))?;
        let mut failures = Vec::new();
        for target in &resolved.targets {
            let (password, _) = super::password_for(&resolved, target);
            for &attempt in super::attempts(&resolved, target) {
                let opened = tokio::time::timeout(
                    resolved.connect_timeout,
                    open(&resolved, &tls, target, attempt, password.as_deref(), application_name),
                )
                .await
                .unwrap_or_else(|_| Err(format!("no answer within {} s", resolved.connect_timeout.as_secs())));
                let opened = match opened {
                    Ok(mut stream) => {
                        tokio::time::timeout(resolved.connect_timeout, stream.settle(resolved.read_write))
                            .await
                            .unwrap_or_else(|_| {
                                Err(format!("no answer to SHOW within {} s", resolved.connect_timeout.as_secs()))
                            })
                            .map(|usable| usable.then_some(stream))
                    }
                    Err(why) => Err(why),
                };
                match opened {
                    Ok(Some(mut stream)) => {
                        tokio::time::timeout(resolved.connect_timeout, stream.command(command))
                            .await
                            .unwrap_or_else(|_| {
                                Err(format!(
                                    "no answer to START_REPLICATION within {} s",
                                    resolved.connect_timeout.as_secs()
                                ))
                            })
                            .map_err(fail)?;
                        return Ok(stream);
                    }
                    Ok(None) => {
                        // The next sslmode attempt would find the same.
                        failures.push(format!(
                            "{}:{}: the server is read-only (target_session_attrs=read-write wants a primary)",
                            target.host, target.port
                        ));
                        break;
                    }
                    Err(why) => failures.push(format!("{}:{}: {why}", target.host, target.port)),
                }
            }
        }
        Err(fail(failures.join("; ")))
    }

    /// After the login: false when target_session_attrs=read-write passes
    /// this server over (its sessions are read-only, as libpq checks: a
    /// standby, or default_transaction_read_only). Sets how often
    /// [`keep_alive`](Self::keep_alive) speaks from the session's
    /// `wal_sender_timeout`: well within it, so that one late message does
    /// not end the session (0, no timeout: every 10 s).
    async fn settle(&mut self, read_write: bool) -> std::result::Result<bool, String> {
        if read_write && self.show("transaction_read_only").await? == "on" {
            return Ok(false);
        }
        let timeout = self.show("wal_sender_timeout").await?;
        self.keepalive_every = match setting_duration(&timeout) {
            Some(timeout) if timeout.is_zero() => KEEPALIVE_MOST,
            Some(timeout) => (timeout / 4).clamp(KEEPALIVE_LEAST, KEEPALIVE_MOST),
            None => {
                tracing::info!(
                    wal_sender_timeout = %timeout,
                    "could not read the WAL stream's wal_sender_timeout; its status messages go every {} ms",
                    KEEPALIVE_LEAST.as_millis()
                );
                KEEPALIVE_LEAST
            }
        };
        Ok(true)
    }

    /// Sends a status message when none went out for the keepalive
    /// interval; true when it did. Between reads nobody reads the stream,
    /// and the server ends a walsender that heard nothing for
    /// `wal_sender_timeout`. What it sent meanwhile waits in the socket
    /// for the next read (the server holds back once that fills).
    pub async fn keep_alive(&mut self) -> Result<bool> {
        if self.last_sent.elapsed() < self.keepalive_every {
            return Ok(false);
        }
        self.status(None, false).await?;
        Ok(true)
    }

    /// The walsender's process id.
    pub fn backend_pid(&self) -> i32 {
        self.backend_pid
    }

    /// Where the server has read the WAL to (see [`Message::Progress`]).
    pub fn read_to(&self) -> Lsn {
        self.read_to
    }

    /// The next message; None when none came within `wait`. After
    /// [`ASK_AFTER`] without one, the server is asked where it stands.
    pub async fn next(&mut self, wait: Duration) -> Result<Option<Message>> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut asked = false;
        loop {
            let message = self.take_message()?;
            if std::mem::take(&mut self.reply_due) {
                // Unanswered, the server ends the session after
                // wal_sender_timeout.
                self.status(None, false).await?;
            }
            if let Some(message) = message {
                return Ok(Some(message));
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            let pause = if asked { deadline - now } else { ASK_AFTER.min(deadline - now) };
            match tokio::time::timeout(pause, self.io.read_buf(&mut self.input)).await {
                Ok(Ok(0)) => return Err(self.broken("the server closed the connection")),
                Ok(Ok(_)) => {}
                Ok(Err(err)) => return Err(self.broken(&err.to_string())),
                Err(_) if !asked => {
                    asked = true;
                    self.status(None, true).await?;
                }
                Err(_) => {}
            }
        }
    }

    /// Tells the server what was received and, when `flushed` is given,
    /// that every transaction that committed before it is kept: the slot's
    /// confirmed position moves there (never back).
    pub async fn status(&mut self, flushed: Option<Lsn>, reply: bool) -> Result<()> {
        let flushed = match flushed {
            Some(lsn) => {
                self.confirmed = self.confirmed.max(lsn);
                self.confirmed
            }
            // Nothing new: 0 leaves the slot where it is.
            None => Lsn(0),
        };
        let written = self.read_to.max(flushed);
        let mut body = BytesMut::with_capacity(34);
        body.put_u8(b'r');
        body.put_u64(written.0);
        body.put_u64(flushed.0);
        body.put_u64(flushed.0);
        body.put_i64(pg_now());
        body.put_u8(u8::from(reply));
        frontend::CopyData::new(body.freeze()).map_err(|err| self.broken(&err.to_string()))?.write(&mut self.output);
        self.flush().await
    }

    fn broken(&self, why: &str) -> Error {
        Error::Sync(format!("the WAL stream from {} ended: {why}", self.target))
    }

    async fn flush(&mut self) -> Result<()> {
        let output = self.output.split();
        let written = async {
            self.io.write_all(&output).await?;
            self.io.flush().await
        };
        match tokio::time::timeout(WRITE_PATIENCE, written).await {
            Ok(done) => {
                done.map_err(|err| self.broken(&err.to_string()))?;
                self.last_sent = tokio::time::Instant::now();
                Ok(())
            }
            Err(_) => Err(self.broken("the server took no message for 30 s")),
        }
    }

    /// A whole message of the copy-both stream from the input, if one is there.
    fn take_message(&mut self) -> Result<Option<Message>> {
        loop {
            let Some((tag, mut body)) = frame(&mut self.input).map_err(|why| self.broken(&why))? else {
                return Ok(None);
            };
            match tag {
                b'd' if body.first() == Some(&b'w') && body.len() >= 25 => {
                    body.advance(1);
                    let start = Lsn(body.get_u64());
                    body.advance(16); // the end of the WAL and the send time
                    self.read_to = self.read_to.max(start);
                    return Ok(Some(Message::Data { lsn: start, data: body }));
                }
                b'd' if body.first() == Some(&b'k') && body.len() >= 18 => {
                    body.advance(1);
                    let end = Lsn(body.get_u64());
                    body.advance(8); // the send time
                    self.reply_due |= body.first() == Some(&1);
                    self.read_to = self.read_to.max(end);
                    return Ok(Some(Message::Progress));
                }
                b'E' => return Err(self.broken(&server_error(&body))),
                b'c' => return Err(self.broken("the server ended the stream")),
                // Notices and anything a later protocol adds.
                _ => continue,
            }
        }
    }

    /// Reads messages until one of `wanted` tags (or an error) comes.
    async fn until(&mut self, wanted: &[u8]) -> std::result::Result<(u8, Bytes), String> {
        loop {
            if let Some((tag, body)) = frame(&mut self.input)? {
                if tag == b'E' {
                    return Err(server_error(&body));
                }
                if wanted.contains(&tag) {
                    return Ok((tag, body));
                }
                continue;
            }
            if self.io.read_buf(&mut self.input).await.map_err(|err| err.to_string())? == 0 {
                return Err("the server closed the connection".into());
            }
        }
    }

    async fn send(&mut self) -> std::result::Result<(), String> {
        let output = self.output.split();
        self.io.write_all(&output).await.map_err(|err| err.to_string())?;
        self.io.flush().await.map_err(|err| err.to_string())
    }

    /// The startup packet and the password exchange, up to ReadyForQuery.
    async fn login(
        &mut self,
        r: &Resolved,
        password: Option<&str>,
        transport: Transport,
        application_name: &str,
    ) -> std::result::Result<(), String> {
        let options = session::startup_options(r.options.as_deref());
        let parameters = [
            ("user", r.user.as_str()),
            ("database", r.dbname.as_str()),
            ("application_name", application_name),
            ("options", options.as_str()),
            ("replication", "database"),
        ];
        frontend::startup_message(parameters.iter().copied(), &mut self.output).map_err(|err| err.to_string())?;
        self.send().await?;
        let mut auth = Authentication::new(r, password, transport);
        loop {
            let (_, body) = self.until(b"R").await?;
            match auth.answer(body)? {
                Step::Reply(reply) => {
                    self.output.extend_from_slice(&reply);
                    self.send().await?;
                }
                Step::Wait => {}
                Step::Done => break,
            }
        }
        loop {
            match self.until(b"KZ").await? {
                (b'K', mut key) if key.len() >= 8 => self.backend_pid = key.get_i32(),
                (b'Z', _) => return Ok(()),
                _ => {}
            }
        }
    }

    /// A setting of the walsender's session (`SHOW name`).
    async fn show(&mut self, name: &str) -> std::result::Result<String, String> {
        frontend::query(&format!("SHOW {name}"), &mut self.output).map_err(|err| err.to_string())?;
        self.send().await?;
        let mut value = None;
        loop {
            match self.until(b"DZ").await? {
                (b'D', mut row) if row.len() >= 6 => {
                    // Column count (1), then the length and bytes of the value.
                    row.advance(2);
                    let len = row.get_i32();
                    if let Ok(len) = usize::try_from(len)
                        && row.len() >= len
                    {
                        value = Some(String::from_utf8_lossy(&row[..len]).into_owned());
                    }
                }
                (b'Z', _) => break,
                _ => {}
            }
        }
        value.ok_or_else(|| format!("the server did not answer SHOW {name}"))
    }

    /// Runs a START_REPLICATION, up to the server's CopyBothResponse.
    async fn command(&mut self, command: &str) -> std::result::Result<(), String> {
        frontend::query(command, &mut self.output).map_err(|err| err.to_string())?;
        self.send().await?;
        self.until(b"W").await.map(|_| ())
    }
}

/// What a login does after one authentication request.
#[derive(Debug)]
enum Step {
    /// Sends this.
    Reply(BytesMut),
    /// Sends nothing and reads the next request (after the server's proof).
    Wait,
    /// The server said the login is done.
    Done,
}

/// What a login runs over, as far as SCRAM cares.
enum Transport {
    Plain,
    /// With the session's tls-server-end-point data (None when its
    /// certificate's signature algorithm gives none, e.g. Ed25519).
    Tls {
        end_point: Option<Vec<u8>>,
    },
}

/// The password exchange of a login, one authentication request at a time,
/// with libpq's rules: channel_binding=require takes nothing but a
/// SCRAM-SHA-256-PLUS exchange that ended with the server's proof, and
/// PLUS offered without TLS means something took TLS away. Stricter than
/// libpq, as tokio-postgres is for every other connection: a SCRAM
/// exchange, once begun, must end with the server's proof before the
/// server may say the login is done, and takes no other request meanwhile
/// (a PostgreSQL server never sends one).
struct Authentication<'r> {
    user: &'r str,
    password: Option<&'r str>,
    transport: Transport,
    binding: ChannelBinding,
    scram: Scram,
}

/// Where a SCRAM exchange stands.
enum Scram {
    NotBegun,
    Begun {
        exchange: ScramSha256,
        bound: bool,
    },
    /// The server proved it knows the password.
    Proven {
        bound: bool,
    },
}

impl<'r> Authentication<'r> {
    fn new(r: &'r Resolved, password: Option<&'r str>, transport: Transport) -> Self {
        Authentication { user: &r.user, password, transport, binding: r.channel_binding, scram: Scram::NotBegun }
    }

    fn password(&self) -> std::result::Result<&'r str, String> {
        self.password.ok_or_else(|| {
            "the server asks for a password and none was given (password=, PGPASSWORD or a password file)".to_string()
        })
    }

    /// The SCRAM mechanism and channel binding to answer `offered` with.
    fn choose(&mut self, offered: &[&[u8]]) -> std::result::Result<(&'static str, sasl::ChannelBinding), String> {
        let plus = offered.contains(&SCRAM_SHA_256_PLUS.as_bytes());
        let plain = offered.contains(&SCRAM_SHA_256.as_bytes());
        if !plus && !plain {
            return Err("the server offers no SASL mechanism ibex speaks (SCRAM-SHA-256)".into());
        }
        let (on_tls, end_point) = match &mut self.transport {
            Transport::Plain if plus => {
                return Err(super::TLS_TAKEN_AWAY.to_string());
            }
            Transport::Plain => (false, None),
            Transport::Tls { end_point } => (true, end_point.take()),
        };
        if self.binding == ChannelBinding::Disable {
            if !plain {
                return Err("the server offers only SCRAM-SHA-256-PLUS, which channel_binding=disable forbids: drop channel_binding=disable".into());
            }
            return Ok((SCRAM_SHA_256, sasl::ChannelBinding::unsupported()));
        }
        // As libpq: bound when both sides can; "y" (bindable, but not
        // offered) lets a server that binds see a stripped PLUS.
        Ok(match (end_point, plus) {
            (Some(data), true) => (SCRAM_SHA_256_PLUS, sasl::ChannelBinding::tls_server_end_point(data)),
            (None, true) if !plain => {
                return Err("the server offers only SCRAM-SHA-256-PLUS, and its certificate gives no tls-server-end-point data to bind to (its signature algorithm has no hash, e.g. Ed25519): give the server an RSA or ECDSA certificate".into());
            }
            // TLS, but nothing to bind to: as prefer allows, unbound.
            (None, true) => (SCRAM_SHA_256, sasl::ChannelBinding::unsupported()),
            (_, false) if on_tls => (SCRAM_SHA_256, sasl::ChannelBinding::unrequested()),
            (_, false) => (SCRAM_SHA_256, sasl::ChannelBinding::unsupported()),
        })
    }

    /// What to do about one authentication request (`body`, an `R`
    /// message's).
    fn answer(&mut self, mut body: Bytes) -> std::result::Result<Step, String> {
        if body.len() < 4 {
            return Err("a malformed authentication request".into());
        }
        let code = body.get_i32();
        let require = self.binding == ChannelBinding::Require;
        let mut reply = BytesMut::new();
        match (code, &mut self.scram) {
            (0, Scram::NotBegun) if require => Err(super::UNBOUND_LOGIN.to_string()),
            (0, Scram::Proven { bound: false }) if require => Err(super::UNBOUND_LOGIN.to_string()),
            (0, Scram::Begun { .. }) | (3 | 5 | 10, Scram::Begun { .. }) => Err("the server broke off its SCRAM exchange with another request; ibex takes no login from a server that has not proven it knows the password".into()),
            (0, _) => Ok(Step::Done),
            (3 | 5, Scram::NotBegun) if require => Err(super::UNBOUND_LOGIN.to_string()),
            (3, Scram::NotBegun) => {
                frontend::password_message(self.password()?.as_bytes(), &mut reply).map_err(|e| e.to_string())?;
                Ok(Step::Reply(reply))
            }
            (5, Scram::NotBegun) => {
                if body.len() < 4 {
                    return Err("a malformed md5 password request".into());
                }
                let salt = [body[0], body[1], body[2], body[3]];
                let hashed = md5_hash(self.user.as_bytes(), self.password()?.as_bytes(), salt);
                frontend::password_message(hashed.as_bytes(), &mut reply).map_err(|e| e.to_string())?;
                Ok(Step::Reply(reply))
            }
            (10, Scram::NotBegun) => {
                let offered: Vec<&[u8]> = body.split(|b| *b == 0).filter(|m| !m.is_empty()).collect();
                let (mechanism, channel) = self.choose(&offered)?;
                let bound = mechanism == SCRAM_SHA_256_PLUS;
                if require && !bound {
                    return Err(super::UNBOUND_LOGIN.to_string());
                }
                let exchange = ScramSha256::new(self.password()?.as_bytes(), channel);
                frontend::sasl_initial_response(mechanism, exchange.message(), &mut reply)
                    .map_err(|e| e.to_string())?;
                self.scram = Scram::Begun { exchange, bound };
                Ok(Step::Reply(reply))
            }
            (11, Scram::Begun { exchange, .. }) => {
                exchange.update(&body).map_err(|e| {
                    let text = e.to_string();
                    super::scram_refusal(&text).map_or(text, str::to_string)
                })?;
                frontend::sasl_response(exchange.message(), &mut reply).map_err(|e| e.to_string())?;
                Ok(Step::Reply(reply))
            }
            (12, Scram::Begun { exchange, bound }) => {
                exchange.finish(&body).map_err(|e| format!("the server's SCRAM proof is wrong: {e}"))?;
                self.scram = Scram::Proven { bound: *bound };
                // Nothing to send: the server's AuthenticationOk follows.
                Ok(Step::Wait)
            }
            (3 | 5 | 10, Scram::Proven { .. }) => {
                Err("the server asked for another login after its SCRAM proof; ibex takes no such login".into())
            }
            (11 | 12, _) => Err("the server sent a SCRAM message out of turn".into()),
            (other, _) => Err(format!("the server asks for an authentication ibex does not speak (code {other})")),
        }
    }
}

/// Opens one connection to `target` and logs in.
async fn open(
    r: &Resolved,
    tls: &tls::Tls,
    target: &Target,
    attempt: Attempt,
    password: Option<&str>,
    application_name: &str,
) -> std::result::Result<ReplicationStream, String> {
    let mut transport = Transport::Plain;
    let io: Box<dyn Io> = if target.is_socket() {
        let path = format!("{}/.s.PGSQL.{}", target.host, target.port);
        Box::new(tokio::net::UnixStream::connect(&path).await.map_err(|err| format!("{path}: {err}"))?)
    } else {
        let mut tcp =
            tokio::net::TcpStream::connect((target.host.as_str(), target.port)).await.map_err(|err| err.to_string())?;
        // Status messages are small and must go out at once.
        tcp.set_nodelay(true).map_err(|err| err.to_string())?;
        if attempt == Attempt::Plain {
            Box::new(tcp)
        } else {
            let mut request = BytesMut::new();
            frontend::ssl_request(&mut request);
            tcp.write_all(&request).await.map_err(|err| err.to_string())?;
            let mut answer = [0u8; 1];
            tcp.read_exact(&mut answer).await.map_err(|err| err.to_string())?;
            if answer[0] == b'S' {
                let mut maker = tls.connector();
                let connect = MakeTlsConnect::<tokio::net::TcpStream>::make_tls_connect(&mut maker, &target.host)
                    .map_err(|err| err.to_string())?;
                let stream = connect.connect(tcp).await.map_err(|err| {
                    let err: Box<dyn std::error::Error + Send + Sync> = err.into();
                    format!("TLS failed: {err}")
                })?;
                let end_point = stream.channel_binding().tls_server_end_point_data().map(<[u8]>::to_vec);
                transport = Transport::Tls { end_point };
                Box::new(stream)
            } else if attempt == Attempt::Tls {
                return Err("the server does not accept TLS connections, and sslmode asks for TLS".into());
            } else {
                Box::new(tcp)
            }
        }
    };
    let mut stream = ReplicationStream {
        io,
        input: BytesMut::with_capacity(64 << 10),
        output: BytesMut::new(),
        read_to: Lsn(0),
        confirmed: Lsn(0),
        reply_due: false,
        target: format!("{}:{}/{}", target.host, target.port, r.dbname),
        backend_pid: 0,
        last_sent: tokio::time::Instant::now(),
        keepalive_every: KEEPALIVE_MOST,
    };
    stream.login(r, password, transport, application_name).await?;
    Ok(stream)
}

/// A duration setting as SHOW prints it (`500ms`, `10s`, `1min`, `0`).
fn setting_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let digits = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let number: u64 = number.parse().ok()?;
    let unit_ms = match unit.trim() {
        "" | "ms" => 1,
        "s" => 1_000,
        "min" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    Some(Duration::from_millis(number.checked_mul(unit_ms)?))
}

/// One whole message (tag, body) off the front of `input`, if it is there.
fn frame(input: &mut BytesMut) -> std::result::Result<Option<(u8, Bytes)>, String> {
    if input.len() < 5 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([input[1], input[2], input[3], input[4]]);
    let len =
        usize::try_from(len).ok().filter(|l| *l >= 4).ok_or_else(|| format!("a malformed message length {len}"))?;
    if input.len() < 1 + len {
        input.reserve(1 + len - input.len());
        return Ok(None);
    }
    let mut message = input.split_to(1 + len).freeze();
    let tag = message[0];
    message.advance(5);
    Ok(Some((tag, message)))
}

/// An ErrorResponse's severity, message and SQLSTATE.
fn server_error(body: &[u8]) -> String {
    let (mut severity, mut code, mut message, mut detail) = ("ERROR", "", "", "");
    for field in body.split(|b| *b == 0).filter(|f| !f.is_empty()) {
        let text = std::str::from_utf8(&field[1..]).unwrap_or("");
        match field[0] {
            b'S' => severity = text,
            b'C' => code = text,
            b'M' => message = text,
            b'D' => detail = text,
            _ => {}
        }
    }
    let detail = if detail.is_empty() { String::new() } else { format!(" ({detail})") };
    format!("{severity}: {message}{detail} [SQLSTATE {code}]")
}

/// Microseconds since 2000-01-01, the protocol's clock.
fn pg_now() -> i64 {
    const PG_EPOCH_UNIX_SECS: u64 = 946_684_800;
    let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since.as_micros()).unwrap_or(i64::MAX) - (PG_EPOCH_UNIX_SECS as i64) * 1_000_000
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Step {
        fn into_reply(self) -> BytesMut {
            match self {
                Step::Reply(reply) => reply,
                other => panic!("expected a reply, got {other:?}"),
            }
        }
    }

    /// An authentication request: its code, then `rest`.
    fn request(code: i32, rest: &[u8]) -> Bytes {
        let mut body = BytesMut::new();
        body.put_i32(code);
        body.put_slice(rest);
        body.freeze()
    }

    fn resolved(binding: &str) -> Resolved {
        ConnInfo::from_dsn(&format!(
            "host=db.example port=5432 dbname=d user=u sslmode=require channel_binding={binding}"
        ))
        .and_then(|info| info.resolve())
        .expect("settings")
    }

    const TLS_DATA: &[u8] = &[7; 32];

    fn tls() -> Transport {
        Transport::Tls { end_point: Some(TLS_DATA.to_vec()) }
    }

    /// The server's side of SCRAM-SHA-256 (RFC 5802, 5929) for the tests,
    /// from the verifier PostgreSQL would store for `password`.
    struct ScramServer {
        salt: String,
        iterations: u32,
        stored_key: Vec<u8>,
        server_key: Vec<u8>,
    }

    /// The data of a frontend message (`p`, with its length) after `skip`
    /// bytes of it.
    fn message_data(message: &[u8], skip: usize) -> &[u8] {
        &message[5 + skip..]
    }

    impl ScramServer {
        fn new(password: &str) -> ScramServer {
            use base64::Engine;
            let verifier = postgres_protocol::password::scram_sha_256(password.as_bytes());
            // SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>
            let (_, rest) = verifier.split_once('$').expect("a verifier");
            let (head, keys) = rest.split_once('$').expect("keys");
            let (iterations, salt) = head.split_once(':').expect("salt");
            let (stored, server) = keys.split_once(':').expect("server key");
            let b64 = base64::engine::general_purpose::STANDARD;
            ScramServer {
                salt: salt.to_string(),
                iterations: iterations.parse().expect("iterations"),
                stored_key: b64.decode(stored).expect("stored key"),
                server_key: b64.decode(server).expect("server key"),
            }
        }

        fn hmac(key: &[u8], text: &str) -> Vec<u8> {
            use hmac::Mac;
            let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).expect("any key length");
            mac.update(text.as_bytes());
            mac.finalize().into_bytes().to_vec()
        }

        /// Runs the exchange against `auth` from its SASLInitialResponse
        /// (`initial`); checks the client's binding data and proof, and
        /// returns the server's final message for `auth` to check.
        fn exchange(&self, auth: &mut Authentication<'_>, initial: &[u8], binding: Option<&[u8]>) -> Bytes {
            use base64::Engine;
            let b64 = base64::engine::general_purpose::STANDARD;
            let data = message_data(initial, 0);
            let nul = data.iter().position(|b| *b == 0).expect("a mechanism name");
            let client_first = std::str::from_utf8(&data[nul + 5..]).expect("utf-8").to_string();
            let bare_at = client_first.find("n=").expect("a bare message");
            let (gs2, bare) = client_first.split_at(bare_at);
            let client_nonce = bare.split_once(",r=").expect("a nonce").1;
            let server_first = format!("r={client_nonce}srv0nce,s={},i={}", self.salt, self.iterations);
            let reply = auth.answer(request(11, server_first.as_bytes())).expect("answered").into_reply();
            let client_final = std::str::from_utf8(message_data(&reply, 0)).expect("utf-8").to_string();
            let (without_proof, proof) = client_final.split_once(",p=").expect("a proof");
            let mut cbind = gs2.as_bytes().to_vec();
            cbind.extend_from_slice(binding.unwrap_or_default());
            assert!(without_proof.starts_with(&format!("c={},", b64.encode(&cbind))), "{without_proof}");
            let auth_message = format!("{bare},{server_first},{without_proof}");
            let signature = Self::hmac(&self.stored_key, &auth_message);
            let client_key: Vec<u8> =
                b64.decode(proof).expect("base64").iter().zip(&signature).map(|(p, s)| p ^ s).collect();
            use sha2::Digest;
            assert_eq!(sha2::Sha256::digest(&client_key).to_vec(), self.stored_key, "the client's proof is wrong");
            let server_final = format!("v={}", b64.encode(Self::hmac(&self.server_key, &auth_message)));
            request(12, server_final.as_bytes())
        }
    }

    #[test]
    fn a_proven_plus_exchange_satisfies_require_and_a_forged_proof_does_not() {
        let r = resolved("require");
        let server = ScramServer::new("secret");
        let mut auth = Authentication::new(&r, Some("secret"), tls());
        let initial = auth.answer(request(10, PLUS_AND_PLAIN)).expect("answered").into_reply();
        let last = server.exchange(&mut auth, &initial, Some(TLS_DATA));
        assert!(matches!(auth.answer(last).expect("the proof holds"), Step::Wait), "nothing to send after it");
        let again = auth.answer(request(10, PLUS_AND_PLAIN)).expect_err("a second login");
        assert!(again.contains("after its SCRAM proof"), "{again}");
        // A server that cannot prove it knows the password.
        let mut auth = Authentication::new(&r, Some("secret"), tls());
        let initial = auth.answer(request(10, PLUS_AND_PLAIN)).expect("answered").into_reply();
        let _ = server.exchange(&mut auth, &initial, Some(TLS_DATA));
        let forged = auth.answer(request(12, b"v=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="));
        assert!(forged.expect_err("a forged proof").contains("SCRAM proof is wrong"));
        assert!(auth.answer(request(0, b"")).is_err(), "no login after a refused proof");
        // Under prefer, an unbound exchange ends the same way.
        let r = resolved("prefer");
        let mut auth = Authentication::new(&r, Some("secret"), Transport::Plain);
        let initial = auth.answer(request(10, b"SCRAM-SHA-256\0\0")).expect("answered").into_reply();
        let last = server.exchange(&mut auth, &initial, None);
        auth.answer(last).expect("the proof holds");
        assert!(matches!(auth.answer(request(0, b"")).expect("logged in"), Step::Done));
    }

    const PLUS_AND_PLAIN: &[u8] = b"SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0";

    #[test]
    fn an_iteration_count_past_the_cap_is_refused_with_the_fix_and_no_proof_goes_out() {
        let r = resolved("prefer");
        for (iterations, taken) in [(100_000, true), (100_001, false)] {
            let server = ScramServer { iterations, ..ScramServer::new("secret") };
            let mut auth = Authentication::new(&r, Some("secret"), Transport::Plain);
            let initial = auth.answer(request(10, b"SCRAM-SHA-256\0\0")).expect("answered").into_reply();
            let data = message_data(&initial, 0);
            let nul = data.iter().position(|b| *b == 0).expect("a mechanism name");
            let client_first = std::str::from_utf8(&data[nul + 5..]).expect("utf-8");
            let nonce = client_first.split_once(",r=").expect("a nonce").1;
            let first = format!("r={nonce}srv0nce,s={},i={iterations}", server.salt);
            match auth.answer(request(11, first.as_bytes())) {
                Ok(step) => {
                    assert!(taken, "{iterations} iterations taken");
                    assert!(matches!(step, Step::Reply(_)), "a proof goes out at {iterations}");
                }
                Err(why) => {
                    assert!(!taken, "{iterations} iterations refused: {why}");
                    assert!(why.contains("more than 100000 SCRAM iterations"), "{why}");
                    assert!(why.contains("SET scram_iterations = 4096"), "{why}");
                }
            }
        }
    }

    #[test]
    fn require_takes_no_login_but_a_proven_plus_exchange() {
        let r = resolved("require");
        let unbound = |outcome: std::result::Result<Step, String>| {
            outcome.expect_err("must be refused").contains("did not authenticate by SCRAM bound")
        };
        // Let in without a password, or asked for a plain or md5 one.
        for (code, rest) in [(0, &b""[..]), (3, &b""[..]), (5, &b"salt"[..])] {
            let mut auth = Authentication::new(&r, Some("secret"), tls());
            assert!(unbound(auth.answer(request(code, rest))), "code {code}");
        }
        // Only unbound SCRAM offered, or TLS with no data to bind to.
        let mut auth = Authentication::new(&r, Some("secret"), tls());
        assert!(unbound(auth.answer(request(10, b"SCRAM-SHA-256\0\0"))));
        let mut auth = Authentication::new(&r, Some("secret"), Transport::Tls { end_point: None });
        assert!(unbound(auth.answer(request(10, PLUS_AND_PLAIN))));
        // PLUS begun: the first message carries the binding flag.
        let mut auth = Authentication::new(&r, Some("secret"), tls());
        let first = auth.answer(request(10, PLUS_AND_PLAIN)).expect("answered").into_reply();
        let text = String::from_utf8_lossy(&first);
        assert!(text.contains("SCRAM-SHA-256-PLUS") && text.contains("p=tls-server-end-point"), "{text}");
        // ...and the server may not end it, nor switch to a password, before its proof.
        for (code, rest) in [(0, &b""[..]), (3, &b""[..]), (5, &b"salt"[..]), (10, PLUS_AND_PLAIN)] {
            let mut auth = Authentication::new(&r, Some("secret"), tls());
            auth.answer(request(10, PLUS_AND_PLAIN)).expect("begun");
            let err = auth.answer(request(code, rest)).expect_err("must be refused");
            assert!(err.contains("has not proven it knows the password"), "code {code}: {err}");
        }
    }

    #[test]
    fn a_begun_scram_exchange_must_end_with_the_servers_proof() {
        let r = resolved("prefer");
        let mut auth = Authentication::new(&r, Some("secret"), Transport::Plain);
        let first = auth.answer(request(10, b"SCRAM-SHA-256\0\0")).expect("answered").into_reply();
        assert!(String::from_utf8_lossy(&first).contains("n,,n="), "no binding: the n flag");
        let err = auth.answer(request(3, b"")).expect_err("a plain password midway");
        assert!(!err.contains("secret"), "{err}");
        let mut auth = Authentication::new(&r, Some("secret"), tls());
        let first = auth.answer(request(10, b"SCRAM-SHA-256\0\0")).expect("answered").into_reply();
        assert!(String::from_utf8_lossy(&first).contains("y,,n="), "bindable but not offered: the y flag");
        assert!(auth.answer(request(0, b"")).is_err(), "done before the proof");
        // Without SCRAM, prefer takes what the server asks for.
        let mut auth = Authentication::new(&r, Some("secret"), Transport::Plain);
        assert!(matches!(auth.answer(request(0, b"")).expect("trust"), Step::Done));
        let mut auth = Authentication::new(&r, None, Transport::Plain);
        assert!(auth.answer(request(12, b"v=x")).is_err(), "a SCRAM end without a start");
        // PLUS offered where there is no TLS: something took TLS away.
        for offered in [&b"SCRAM-SHA-256-PLUS\0\0"[..], PLUS_AND_PLAIN] {
            let mut auth = Authentication::new(&r, Some("secret"), Transport::Plain);
            let err = auth.answer(request(10, offered)).expect_err("PLUS without TLS");
            assert!(err.contains("took TLS away"), "{err}");
        }
        // channel_binding=disable: never PLUS, and so no login where only PLUS is offered.
        let r = resolved("disable");
        let mut auth = Authentication::new(&r, Some("secret"), tls());
        let first = auth.answer(request(10, PLUS_AND_PLAIN)).expect("answered").into_reply();
        assert!(String::from_utf8_lossy(&first).contains("n,,n="), "disable: the n flag");
        let mut auth = Authentication::new(&r, Some("secret"), tls());
        let err = auth.answer(request(10, b"SCRAM-SHA-256-PLUS\0\0")).expect_err("PLUS only");
        assert!(err.contains("which channel_binding=disable forbids"), "{err}");
    }

    #[test]
    fn lsn_reads_and_prints_postgres_form() {
        let lsn = Lsn::parse("16/B374D848").expect("an lsn");
        assert_eq!(lsn.0, 0x16_B374_D848);
        assert_eq!(lsn.to_string(), "16/B374D848");
        assert!(Lsn::parse("0/0").expect("zero") < lsn);
        assert_eq!(Lsn::parse("nonsense"), None);
    }

    #[test]
    fn duration_settings_read_as_show_prints_them() {
        for (text, ms) in [("0", 0), ("500ms", 500), ("10s", 10_000), ("1min", 60_000), ("2h", 7_200_000), ("750", 750)]
        {
            assert_eq!(setting_duration(text), Some(Duration::from_millis(ms)), "{text}");
        }
        for text in ["", "s", "1 fortnight", "-1s"] {
            assert_eq!(setting_duration(text), None, "{text}");
        }
    }

    #[test]
    fn frames_wait_for_whole_messages() {
        let mut input = BytesMut::from(&b"k\x00\x00\x00\x06ab"[..]);
        let (tag, body) = frame(&mut input).expect("well formed").expect("whole");
        assert_eq!((tag, &body[..]), (b'k', &b"ab"[..]));
        let mut partial = BytesMut::from(&b"d\x00\x00\x00\x09ab"[..]);
        assert!(frame(&mut partial).expect("well formed").is_none());
        let mut bad = BytesMut::from(&b"d\xff\xff\xff\xff"[..]);
        assert!(frame(&mut bad).is_err());
    }
}
