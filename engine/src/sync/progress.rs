//! Progress of long work (whole-table copies, catch-up, compare): a bar with
//! rate and ETA when stderr is a terminal, otherwise an `info` line at most
//! every few seconds and one when done. Work that ends within a second shows
//! nothing.

use std::io::IsTerminal;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Lines in the log come at most this often unless `IBEX_PROGRESS_INTERVAL_MS` says otherwise.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
/// Work shorter than this is not worth a bar or a line.
const QUIET: Duration = Duration::from_secs(1);

fn interval() -> Duration {
    static INTERVAL: OnceLock<Duration> = OnceLock::new();
    *INTERVAL.get_or_init(|| {
        std::env::var("IBEX_PROGRESS_INTERVAL_MS")
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|&ms| ms > 0)
            .map(Duration::from_millis)
            .unwrap_or(DEFAULT_INTERVAL)
    })
}

/// One set of bars for the process, so concurrent work (syncs in a
/// foreground daemon) stacks its bars instead of drawing over each other.
/// None when stderr is not a terminal.
fn bars() -> Option<&'static MultiProgress> {
    static BARS: OnceLock<Option<MultiProgress>> = OnceLock::new();
    BARS.get_or_init(|| {
        std::io::stderr().is_terminal().then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()))
    })
    .as_ref()
}

/// Runs `f` (which prints) with the bars taken off the terminal meanwhile.
pub fn suspend<R>(f: impl FnOnce() -> R) -> R {
    match bars() {
        Some(bars) => bars.suspend(f),
        None => f(),
    }
}

/// The progress of one piece of work, counted in `unit`s.
pub struct Progress {
    label: String,
    unit: &'static str,
    total: Option<u64>,
    /// Whether `total` is a guess (shown with a `~`).
    estimated: bool,
    done: u64,
    started: Instant,
    last_line: Instant,
    bar: Option<ProgressBar>,
    finished: bool,
    /// What the work is at (a table), shown after the numbers.
    detail: Option<String>,
}

impl Progress {
    pub fn new(label: impl Into<String>, unit: &'static str, total: Option<u64>) -> Self {
        let now = Instant::now();
        Progress {
            label: label.into(),
            unit,
            total,
            estimated: false,
            done: 0,
            started: now,
            last_line: now,
            bar: None,
            finished: false,
            detail: None,
        }
    }

    /// Counts time from `started` (work begun before the total was known).
    pub fn since(mut self, started: Instant) -> Self {
        self.started = started;
        self.last_line = started;
        self
    }

    /// Marks the total as an estimate.
    pub fn estimated(mut self) -> Self {
        self.estimated = true;
        self
    }

    pub fn done(&self) -> u64 {
        self.done
    }

    pub fn total(&self) -> Option<u64> {
        self.total
    }

    /// A new total (a better estimate, or a backlog that grew).
    pub fn set_total(&mut self, total: Option<u64>, estimated: bool) {
        self.total = total;
        self.estimated = estimated;
        if let (Some(bar), Some(total)) = (&self.bar, self.shown_total()) {
            bar.set_length(total);
        }
    }

    /// What the work is at now, for the next report.
    pub fn set_detail(&mut self, detail: impl Into<String>) {
        self.detail = Some(detail.into());
    }

    fn detail(&self) -> String {
        self.detail.as_ref().map(|d| format!(" ({d})")).unwrap_or_default()
    }

    pub fn advance(&mut self, n: u64) {
        self.done = self.done.saturating_add(n);
        self.report();
    }

    /// Sets the count done so far (when the worker counts, not increments).
    pub fn set_done(&mut self, done: u64) {
        self.done = done;
        self.report();
    }

    /// The total, never below what is done (estimates can be low).
    fn shown_total(&self) -> Option<u64> {
        self.total.map(|t| t.max(self.done))
    }

    fn rate(&self, elapsed: Duration) -> f64 {
        let secs = elapsed.as_secs_f64();
        if secs > 0.0 { self.done as f64 / secs } else { 0.0 }
    }

    fn report(&mut self) {
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(self.started);
        if elapsed < QUIET.min(interval()) {
            return;
        }
        if let Some(bars) = bars() {
            let message = format!("{}, {}/s{}", self.unit, count(self.rate(elapsed) as u64), self.detail());
            let (total, label) = (self.shown_total(), &self.label);
            let bar = self.bar.get_or_insert_with(|| {
                let bar = bars.add(new_bar(total));
                bar.set_prefix(label.clone());
                bar.enable_steady_tick(Duration::from_millis(200));
                bar
            });
            if let Some(total) = total {
                bar.set_length(total);
            }
            bar.set_position(self.done);
            bar.set_message(message);
            return;
        }
        if now.saturating_duration_since(self.last_line) >= interval() {
            self.last_line = now;
            self.line(elapsed);
        }
    }

    /// A periodic line: done of total, rate, ETA.
    fn line(&self, elapsed: Duration) {
        let rate = self.rate(elapsed);
        let (of, pct, eta) = match self.shown_total() {
            Some(total) => {
                let tilde = if self.estimated { "~" } else { "" };
                let pct = if total > 0 { self.done as f64 * 100.0 / total as f64 } else { 100.0 };
                let eta = if rate > 0.0 {
                    format!(", ETA {}", seconds(total.saturating_sub(self.done) as f64 / rate))
                } else {
                    String::new()
                };
                (format!(" of {tilde}{}", count(total)), format!(" ({pct:.0}%)"), eta)
            }
            None => (String::new(), String::new(), String::new()),
        };
        tracing::info!(
            done = self.done,
            total = self.total,
            "progress: {}: {}{of} {}{pct}, {} {}/s{eta}{}",
            self.label,
            count(self.done),
            self.unit,
            count(rate as u64),
            self.unit,
            self.detail()
        );
    }

    /// The work is complete: the bar stays at its end, or one last line.
    pub fn finish(mut self) {
        self.close(true);
    }

    /// `finish` with the final count (no periodic line for it first).
    pub fn finish_at(mut self, done: u64) {
        self.done = done;
        self.close(true);
    }

    fn close(&mut self, completed: bool) {
        if self.finished {
            return;
        }
        self.finished = true;
        if let Some(bar) = self.bar.take() {
            if completed {
                bar.set_position(self.done);
                bar.finish();
            } else {
                // Failed work: the error that follows says why.
                bar.finish_and_clear();
            }
            return;
        }
        let elapsed = self.started.elapsed();
        if !completed || bars().is_some() || elapsed < QUIET.min(interval()) {
            return;
        }
        let rate = self.rate(elapsed);
        tracing::info!(
            done = self.done,
            "progress: {}: done, {} {} in {}, {} {}/s",
            self.label,
            count(self.done),
            self.unit,
            seconds(elapsed.as_secs_f64()),
            count(rate as u64),
            self.unit
        );
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.close(false);
    }
}

fn new_bar(total: Option<u64>) -> ProgressBar {
    match total {
        Some(total) => {
            let bar = ProgressBar::new(total);
            if let Ok(style) = ProgressStyle::with_template(
                "{prefix} [{wide_bar}] {human_pos}/{human_len} {msg} ({percent}%, ETA {eta}, {elapsed})",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar
        }
        None => {
            let bar = ProgressBar::new_spinner();
            if let Ok(style) = ProgressStyle::with_template("{spinner} {prefix}: {human_pos} {msg} ({elapsed})") {
                bar.set_style(style);
            }
            bar
        }
    }
}

/// 1234567 -> "1,234,567".
fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// "0.4s", "12s", "3m05s", "2h10m".
fn seconds(secs: f64) -> String {
    if !secs.is_finite() {
        return "?".into();
    }
    if secs < 10.0 {
        return format!("{secs:.1}s");
    }
    let s = secs.round() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s / 60 % 60),
    }
}

/// Counts the rows in COPY data as it passes (text: one line per row;
/// binary: walks the field lengths), without holding any of it.
#[derive(Debug)]
pub struct CopyRows {
    binary: bool,
    want: Want,
    /// Bytes of a header or length read so far, when split across pieces.
    partial: Vec<u8>,
    skip: u64,
    fields_left: u16,
    rows: u64,
    bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    Header,
    FieldCount,
    FieldLength,
    End,
}

/// Signature, flags and header-extension length of binary COPY.
const BINARY_HEADER_LEN: usize = 19;

impl CopyRows {
    pub fn new(binary: bool) -> Self {
        CopyRows {
            binary,
            want: Want::Header,
            partial: Vec::with_capacity(BINARY_HEADER_LEN),
            skip: 0,
            fields_left: 0,
            rows: 0,
            bytes: 0,
        }
    }

    pub fn rows(&self) -> u64 {
        self.rows
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Gathers `need` bytes into `partial` from the front of `data`;
    /// true once they are all there.
    fn take(&mut self, data: &mut &[u8], need: usize) -> bool {
        let n = (need - self.partial.len()).min(data.len());
        self.partial.extend_from_slice(&data[..n]);
        *data = &data[n..];
        self.partial.len() == need
    }

    pub fn feed(&mut self, mut data: &[u8]) {
        self.bytes += data.len() as u64;
        if !self.binary {
            // Text COPY escapes newlines inside values: each row is one line.
            self.rows += data.iter().filter(|&&b| b == b'\n').count() as u64;
            return;
        }
        loop {
            if self.skip > 0 {
                let n = self.skip.min(data.len() as u64);
                data = &data[n as usize..];
                self.skip -= n;
            }
            if data.is_empty() || self.want == Want::End {
                return;
            }
            match self.want {
                Want::Header => {
                    if !self.take(&mut data, BINARY_HEADER_LEN) {
                        return;
                    }
                    let ext = &self.partial[15..19];
                    self.skip = u32::from_be_bytes([ext[0], ext[1], ext[2], ext[3]]) as u64;
                    self.partial.clear();
                    self.want = Want::FieldCount;
                }
                Want::FieldCount => {
                    if !self.take(&mut data, 2) {
                        return;
                    }
                    let fields = i16::from_be_bytes([self.partial[0], self.partial[1]]);
                    self.partial.clear();
                    if fields < 0 {
                        self.want = Want::End;
                        continue;
                    }
                    self.rows += 1;
                    self.fields_left = fields as u16;
                    if self.fields_left > 0 {
                        self.want = Want::FieldLength;
                    }
                }
                Want::FieldLength => {
                    if !self.take(&mut data, 4) {
                        return;
                    }
                    let len = i32::from_be_bytes([self.partial[0], self.partial[1], self.partial[2], self.partial[3]]);
                    self.partial.clear();
                    // -1 is NULL: no bytes follow.
                    self.skip = len.max(0) as u64;
                    self.fields_left -= 1;
                    if self.fields_left == 0 {
                        self.want = Want::FieldCount;
                    }
                }
                Want::End => return,
            }
        }
    }
}

/// Progress of a whole-table copy, in rows counted from the COPY data.
/// The total is the source's `reltuples`; when the table was never
/// analyzed, it is guessed from its size and the row width seen so far.
pub struct CopyProgress {
    progress: Progress,
    rows: CopyRows,
    table_bytes: Option<u64>,
}

/// Bytes a heap row takes beyond its COPY form: tuple header and line pointer.
const HEAP_ROW_OVERHEAD: f64 = 28.0;

impl CopyProgress {
    /// `reltuples` and `table_bytes` as the source's catalog has them
    /// (`pg_class.reltuples`, `pg_table_size`): negative or zero is unknown.
    pub fn new(label: impl Into<String>, binary: bool, reltuples: f64, table_bytes: i64) -> Self {
        let known = reltuples >= 1.0;
        let progress = Progress::new(label, "rows", known.then_some(reltuples as u64)).estimated();
        let table_bytes = (!known && table_bytes > 0).then_some(table_bytes as u64);
        CopyProgress { progress, rows: CopyRows::new(binary), table_bytes }
    }

    /// A piece of COPY data went to the receivers.
    pub fn forwarded(&mut self, piece: &[u8]) {
        self.rows.feed(piece);
        if let Some(size) = self.table_bytes
            && self.rows.rows() > 0
        {
            let per_row = self.rows.bytes() as f64 / self.rows.rows() as f64 + HEAP_ROW_OVERHEAD;
            self.progress.set_total(Some((size as f64 / per_row) as u64), true);
        }
        self.progress.set_done(self.rows.rows());
    }

    /// The copy is complete; `rows` is what the receivers took (some may
    /// have gone through a row transform, which this did not see).
    pub fn finish(self, rows: u64) {
        let done = rows.max(self.progress.done());
        self.progress.finish_at(done);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::copy::BinaryCopyBuilder;

    #[test]
    fn counts_binary_rows_across_any_split() {
        let mut b = BinaryCopyBuilder::new();
        for i in 0..50u32 {
            let text = "x".repeat(i as usize);
            b.push_row([&i.to_be_bytes()[..], text.as_bytes()].into_iter());
        }
        let data = b.finish();
        for piece in [1, 2, 3, 7, 64, data.len()] {
            let mut rows = CopyRows::new(true);
            for chunk in data.chunks(piece) {
                rows.feed(chunk);
            }
            assert_eq!(rows.rows(), 50, "pieces of {piece}");
            assert_eq!(rows.bytes(), data.len() as u64);
        }
    }

    #[test]
    fn counts_text_rows() {
        let mut rows = CopyRows::new(false);
        rows.feed(b"1\ta\\nb\n2\t");
        rows.feed(b"c\n");
        assert_eq!(rows.rows(), 2);
    }

    #[test]
    fn formats_counts_and_durations() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1000), "1,000");
        assert_eq!(count(1234567), "1,234,567");
        assert_eq!(seconds(0.42), "0.4s");
        assert_eq!(seconds(75.0), "1m15s");
        assert_eq!(seconds(7300.0), "2h01m");
    }
}
