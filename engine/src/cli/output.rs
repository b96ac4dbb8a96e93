//! How the CLI prints: aligned tables for people, JSON with `--json`,
//! warnings and one-line errors on stderr.

use std::io::Write;
use std::process::ExitCode;

use serde::Serialize;

#[derive(Debug, Clone, Copy)]
pub struct Output {
    pub json: bool,
}

impl Output {
    pub fn new(json: bool) -> Self {
        Output { json }
    }

    pub fn line(&self, text: impl AsRef<str>) {
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "{}", text.as_ref());
    }

    /// A confirmation such as "Added db t1"; with --json, an object instead.
    pub fn done(&self, text: impl AsRef<str>) {
        if self.json {
            self.print_json(&serde_json::json!({ "ok": true, "message": text.as_ref() }));
        } else {
            self.line(text);
        }
    }

    pub fn print_json<T: Serialize>(&self, value: &T) {
        match serde_json::to_string_pretty(value) {
            Ok(text) => self.line(text),
            Err(err) => self.error(&format!("cannot print JSON: {err}")),
        }
    }

    pub fn warn(&self, text: impl AsRef<str>) {
        let mut stderr = std::io::stderr().lock();
        let _ = writeln!(stderr, "warning: {}", text.as_ref());
    }

    pub fn error(&self, text: &str) {
        let mut stderr = std::io::stderr().lock();
        let one_line = text.replace('\n', " ");
        let _ = writeln!(stderr, "error: {one_line}");
    }

    /// What every `list` prints: JSON with --json; a hint when there is
    /// nothing; else a table with one row per item.
    pub fn listing<T: Serialize>(&self, items: &[T], empty: &str, headers: &[&str], row: impl Fn(&T) -> Vec<String>) {
        if self.json {
            self.print_json(&items);
        } else if items.is_empty() {
            self.line(empty);
        } else {
            let rows: Vec<Vec<String>> = items.iter().map(row).collect();
            self.table(headers, &rows);
        }
    }

    /// Prints rows under headers, columns padded to their widest cell.
    pub fn table(&self, headers: &[&str], rows: &[Vec<String>]) {
        let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
        for row in rows {
            for (i, cell) in row.iter().enumerate() {
                if let Some(w) = widths.get_mut(i) {
                    *w = (*w).max(cell.chars().count());
                }
            }
        }
        let render = |cells: Vec<&str>| {
            let mut line = String::new();
            for (i, cell) in cells.iter().enumerate() {
                if i > 0 {
                    line.push_str(" | ");
                }
                line.push_str(cell);
                if i + 1 < cells.len() {
                    line.push_str(&" ".repeat(widths[i].saturating_sub(cell.chars().count())));
                }
            }
            line.trim_end().to_string()
        };
        self.line(render(headers.to_vec()));
        for row in rows {
            self.line(render(row.iter().map(String::as_str).collect()));
        }
    }
}

/// Prints a clap error as one line (help and version as they are) and
/// returns the exit code.
pub fn clap_error(err: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match err.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = err.print();
            ExitCode::SUCCESS
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = err.print();
            ExitCode::from(2)
        }
        _ => {
            let rendered = err.render().to_string();
            let mut paragraphs = rendered.split("\n\n");
            let first = paragraphs.next().unwrap_or_default();
            let message =
                first.split_whitespace().collect::<Vec<_>>().join(" ").trim_start_matches("error: ").to_string();
            let command = rendered
                .lines()
                .find_map(|l| l.strip_prefix("Usage: "))
                .map(|usage| {
                    usage.split_whitespace().take_while(|w| !w.starts_with(['<', '['])).collect::<Vec<_>>().join(" ")
                })
                .unwrap_or_else(|| "ibex".into());
            let mut stderr = std::io::stderr().lock();
            let _ = writeln!(stderr, "error: {message} (see `{command} --help`)");
            ExitCode::from(2)
        }
    }
}
