//! COPY plumbing: streaming `COPY ... TO STDOUT` from one database into
//! `COPY ... FROM STDIN` on several at once without decoding rows, and
//! building binary COPY data from raw field bytes (keys travel that way).

use std::pin::{Pin, pin};
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::stream::Fuse;
use futures_util::{SinkExt, Stream, StreamExt, future::try_join_all};
use tokio::io::AsyncWriteExt;
use tokio_postgres::types::{FromSql, Type};

use super::Client;
use super::prepared::Prepared;
use crate::error::{PgContext, Result};

/// The fixed header of PostgreSQL's binary COPY format (no OIDs, no extension).
pub const BINARY_HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";
/// The file trailer: a field count of -1.
pub const BINARY_TRAILER: &[u8] = &[0xff, 0xff];

/// Forwarded data is gathered into pieces this large before it is sent on,
/// so a million small rows are not a million messages per target.
const FORWARD_CHUNK: usize = 256 * 1024;

/// A field's value exactly as the server sent it in binary form.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RawValue(pub Vec<u8>);

impl<'a> FromSql<'a> for RawValue {
    fn from_sql(_: &Type, raw: &'a [u8]) -> std::result::Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(RawValue(raw.to_vec()))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

/// Builds binary COPY data from rows of raw (binary) field values.
pub struct BinaryCopyBuilder {
    buf: BytesMut,
    rows: u64,
}

impl Default for BinaryCopyBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl BinaryCopyBuilder {
    pub fn new() -> Self {
        let mut buf = BytesMut::with_capacity(64 * 1024);
        buf.put_slice(BINARY_HEADER);
        BinaryCopyBuilder { buf, rows: 0 }
    }

    pub fn push_row<'a>(&mut self, fields: impl ExactSizeIterator<Item = &'a [u8]>) {
        self.buf.put_i16(fields.len() as i16);
        for field in fields {
            self.buf.put_i32(field.len() as i32);
            self.buf.put_slice(field);
        }
        self.rows += 1;
    }

    pub fn rows(&self) -> u64 {
        self.rows
    }

    pub fn finish(mut self) -> Bytes {
        self.buf.put_slice(BINARY_TRAILER);
        self.buf.freeze()
    }
}

/// Loads ready-made COPY data into one database.
pub async fn copy_in_bytes(client: &Client, copy_in_sql: &str, data: Bytes) -> Result<u64> {
    copy_in_receiver(&Receiver { client, sql: copy_in_sql.to_string(), prepared: None }, data).await
}

/// One receiver of [`copy_fanout`]: a connection and the `COPY ... FROM
/// STDIN` it runs, kept prepared on it when `prepared` is given.
pub struct Receiver<'a> {
    pub client: &'a Client,
    pub sql: String,
    pub prepared: Option<&'a Prepared>,
}

impl<'a> Receiver<'a> {
    /// Starts the COPY. With a kept statement nothing is awaited before
    /// the request is sent, so a request polled before this one on the same
    /// connection still runs first.
    async fn start(&self) -> Result<tokio_postgres::CopyInSink<Bytes>> {
        let sql = self.sql.as_str();
        match self.prepared {
            Some(prepared) => {
                let statement = prepared.statement(self.client, sql).await.ctx(|| format!("preparing {sql}"))?;
                self.client.copy_in(&statement).await
            }
            None => self.client.copy_in(sql).await,
        }
        .ctx(|| format!("starting {sql}"))
    }
}

/// Loads ready-made COPY data into one database through a receiver.
pub async fn copy_in_receiver(receiver: &Receiver<'_>, data: Bytes) -> Result<u64> {
    let sql = &receiver.sql;
    let sink = receiver.start().await?;
    let mut sink = pin!(sink);
    sink.send(data).await.ctx(|| format!("sending data for {sql}"))?;
    sink.as_mut().finish().await.ctx(|| format!("finishing {sql}"))
}

/// Streams the output of `copy_out_sql` on `source` into each receiver's
/// `COPY ... FROM STDIN` at the same time; memory stays at one chunk.
/// Returns the rows each receiver took, in order.
pub async fn copy_fanout(source: &Client, copy_out_sql: &str, receivers: &[Receiver<'_>]) -> Result<Vec<u64>> {
    copy_fanout_with_progress(source, copy_out_sql, receivers, |_| {}).await
}

/// `copy_fanout`, calling `forwarded` with each piece of COPY data once
/// every receiver has taken it (for progress reports).
pub async fn copy_fanout_with_progress(
    source: &Client,
    copy_out_sql: &str,
    receivers: &[Receiver<'_>],
    mut forwarded: impl FnMut(&[u8]) + Send,
) -> Result<Vec<u64>> {
    // The source and the receivers start at once: each start is a prepare
    // and an execute, two round trips that would otherwise add up.
    let (stream, sinks) = futures_util::future::try_join(
        async { source.copy_out(copy_out_sql).await.ctx(|| format!("starting {copy_out_sql}")) },
        try_join_all(receivers.iter().map(Receiver::start)),
    )
    .await?;
    let mut sinks: Vec<_> = sinks.into_iter().map(Box::pin).collect();
    let stream = pin!(stream.fuse());
    let mut pieces = Pieces::new(stream, copy_out_sql);
    while let Some(piece) = pieces.next().await? {
        try_join_all(sinks.iter_mut().zip(receivers).map(|(sink, receiver)| {
            let piece = piece.clone();
            async move { sink.send(piece).await.ctx(|| format!("writing {}", receiver.sql)) }
        }))
        .await?;
        forwarded(&piece);
    }
    try_join_all(sinks.iter_mut().zip(receivers).map(|(sink, receiver)| async move {
        sink.as_mut().finish().await.ctx(|| format!("finishing {}", receiver.sql))
    }))
    .await
}

/// The output of a `COPY ... TO STDOUT` regrouped into pieces of at least
/// [`FORWARD_CHUNK`] bytes (the last one may be smaller).
struct Pieces<'a, S> {
    /// Fused: the call after the last piece asks once more, and a
    /// `CopyOutStream` polled past its CopyDone takes the statement's next
    /// reply for an unexpected message.
    stream: Pin<&'a mut Fuse<S>>,
    pending: BytesMut,
    copy_out_sql: &'a str,
}

impl<'a, S: Stream<Item = std::result::Result<Bytes, tokio_postgres::Error>>> Pieces<'a, S> {
    fn new(stream: Pin<&'a mut Fuse<S>>, copy_out_sql: &'a str) -> Self {
        Pieces { stream, pending: BytesMut::with_capacity(FORWARD_CHUNK), copy_out_sql }
    }

    /// The next piece, or `None` once the output is over.
    async fn next(&mut self) -> Result<Option<Bytes>> {
        while self.pending.len() < FORWARD_CHUNK {
            match self.stream.next().await {
                Some(chunk) => self.pending.put_slice(&chunk.ctx(|| format!("reading {}", self.copy_out_sql))?),
                None => break,
            }
        }
        Ok((!self.pending.is_empty()).then(|| self.pending.split().freeze()))
    }
}

/// The output of one `COPY ... TO STDOUT`, held so that several databases
/// can load it later: in memory up to a limit, the rest in a temporary file
/// in TMPDIR that has no name (mode 0600, unlinked from the start), so a
/// chunk of wide rows cannot take the process's memory, and a crash leaves
/// no file behind.
#[derive(Default)]
pub struct Spool {
    pieces: Vec<Bytes>,
    in_memory: usize,
    spilled: Option<Spilled>,
}

struct Spilled {
    /// Read by position ([`SpoolReader`]): readers share no offset.
    file: Arc<std::fs::File>,
    /// Appends, through its own handle of the same file.
    writer: tokio::fs::File,
    bytes: u64,
}

impl Spool {
    /// Holds `piece` after what is held already.
    async fn push(&mut self, piece: Bytes, memory_limit: usize) -> Result<()> {
        if self.spilled.is_none() && self.in_memory + piece.len() <= memory_limit {
            self.in_memory += piece.len();
            self.pieces.push(piece);
            return Ok(());
        }
        let spilled = match &mut self.spilled {
            Some(spilled) => spilled,
            None => {
                let file = tempfile::tempfile().map_err(spool_error)?;
                let writer = tokio::fs::File::from_std(file.try_clone().map_err(spool_error)?);
                self.spilled.insert(Spilled { file: Arc::new(file), writer, bytes: 0 })
            }
        };
        spilled.writer.write_all(&piece).await.map_err(spool_error)?;
        spilled.bytes += piece.len() as u64;
        Ok(())
    }

    /// Everything pushed is readable once this returns.
    async fn finish_writing(&mut self) -> Result<()> {
        match &mut self.spilled {
            Some(spilled) => spilled.writer.flush().await.map_err(spool_error),
            None => Ok(()),
        }
    }

    /// Bytes held in memory (the rest, if any, is in the file).
    pub fn in_memory(&self) -> usize {
        self.in_memory
    }

    /// Whether part of it went to a temporary file.
    pub fn spilled(&self) -> bool {
        self.spilled.is_some()
    }

    pub fn reader(&self) -> SpoolReader<'_> {
        SpoolReader { spool: self, next_piece: 0, file_offset: 0 }
    }
}

fn spool_error(e: std::io::Error) -> crate::error::Error {
    crate::error::Error::Sync(format!(
        "holding rows in a temporary file in {}: {e}; free space there, point TMPDIR at a directory with room, \
         or raise merge_memory_mib",
        std::env::temp_dir().display()
    ))
}

/// Reads the whole output of `copy_out_sql` on `source` into a spool,
/// at most `memory_limit` bytes of it in memory.
pub async fn copy_out_spooled(source: &Client, copy_out_sql: &str, memory_limit: usize) -> Result<Spool> {
    let stream = source.copy_out(copy_out_sql).await.ctx(|| format!("starting {copy_out_sql}"))?;
    let stream = pin!(stream.fuse());
    let mut pieces = Pieces::new(stream, copy_out_sql);
    let mut spool = Spool::default();
    while let Some(piece) = pieces.next().await? {
        spool.push(piece, memory_limit).await?;
    }
    spool.finish_writing().await?;
    Ok(spool)
}

/// Reads a spool's pieces back in order, memory first, then the file.
pub struct SpoolReader<'s> {
    spool: &'s Spool,
    next_piece: usize,
    file_offset: u64,
}

impl SpoolReader<'_> {
    pub async fn next(&mut self) -> Result<Option<Bytes>> {
        if let Some(piece) = self.spool.pieces.get(self.next_piece) {
            self.next_piece += 1;
            return Ok(Some(piece.clone()));
        }
        let Some(spilled) = &self.spool.spilled else { return Ok(None) };
        let left = spilled.bytes.saturating_sub(self.file_offset);
        if left == 0 {
            return Ok(None);
        }
        let (file, offset) = (Arc::clone(&spilled.file), self.file_offset);
        let size = left.min(FORWARD_CHUNK as u64) as usize;
        let piece = tokio::task::spawn_blocking(move || {
            let mut piece = vec![0; size];
            std::os::unix::fs::FileExt::read_exact_at(&*file, &mut piece, offset).map(|()| piece)
        })
        .await
        .map_err(|e| crate::error::Error::Sync(format!("reading back a temporary file of rows: {e}")))?
        .map_err(spool_error)?;
        self.file_offset += size as u64;
        Ok(Some(Bytes::from(piece)))
    }
}

/// Loads what `spool` holds through `receiver`, calling `forwarded` with
/// each piece once it is sent; returns the rows the receiver took.
pub async fn copy_in_spool(receiver: &Receiver<'_>, spool: &Spool, mut forwarded: impl FnMut(&[u8])) -> Result<u64> {
    let sql = &receiver.sql;
    let sink = receiver.start().await?;
    let mut sink = pin!(sink);
    let mut pieces = spool.reader();
    while let Some(piece) = pieces.next().await? {
        sink.send(piece.clone()).await.ctx(|| format!("sending data for {sql}"))?;
        forwarded(&piece);
    }
    sink.as_mut().finish().await.ctx(|| format!("finishing {sql}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_binary_copy_frames() {
        let mut b = BinaryCopyBuilder::new();
        b.push_row([&[0u8, 0, 0, 7][..], b"ab"].into_iter());
        let data = b.finish();
        assert_eq!(&data[..19], BINARY_HEADER);
        assert_eq!(&data[19..21], &[0, 2]);
        assert_eq!(&data[21..25], &[0, 0, 0, 4]);
        assert_eq!(&data[data.len() - 2..], BINARY_TRAILER);
    }

    #[tokio::test]
    async fn a_spool_past_its_memory_limit_reads_back_whole_and_in_order() {
        let pieces: Vec<Bytes> = (0u8..40).map(|i| Bytes::from(vec![i; 1000 + i as usize])).collect();
        let mut spool = Spool::default();
        for piece in &pieces {
            spool.push(piece.clone(), 10_000).await.expect("spooling");
        }
        assert!(spool.spilled(), "40 kB past a 10 kB limit must spill");
        assert!(spool.in_memory() <= 10_000, "{} bytes in memory", spool.in_memory());
        spool.finish_writing().await.expect("flushing");
        let expected: Vec<u8> = pieces.concat();
        // Two readers, interleaved: each has its own offset in the file.
        let (mut a, mut b) = (spool.reader(), spool.reader());
        let (mut read_a, mut read_b) = (Vec::new(), Vec::new());
        loop {
            let (x, y) = (a.next().await.expect("reading"), b.next().await.expect("reading"));
            if x.is_none() && y.is_none() {
                break;
            }
            read_a.extend_from_slice(x.as_deref().unwrap_or_default());
            read_b.extend_from_slice(y.as_deref().unwrap_or_default());
        }
        assert_eq!(read_a, expected);
        assert_eq!(read_b, expected);
    }
}
