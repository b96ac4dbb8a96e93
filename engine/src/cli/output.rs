//! How the CLI prints: aligned tables (comfy-table) for people, JSON with `--json`,
//! warnings and one-line errors on stderr.

use std::io::{IsTerminal, Write};
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

    /// Prints rows under headers: a header rule and column separators, no
    /// outer borders, so the first line starts with the first header (scripts
    /// and tests grep it). Cells are never wrapped or cut, and never colored.
    pub fn table(&self, headers: &[&str], rows: &[Vec<String>]) {
        self.line(render_table(headers, rows, std::io::stdout().is_terminal()));
    }
}

/// Box-drawing lines in a terminal; plain ASCII when piped or logged.
fn render_table(headers: &[&str], rows: &[Vec<String>], terminal: bool) -> String {
    use comfy_table::{ContentArrangement, ContentLineStyle, LineStyle, Table, TableStyle};

    let (bar, rule, cross) = if terminal { ('│', '─', '┼') } else { ('|', '-', '+') };
    let style = TableStyle::new()
        .header_lines(ContentLineStyle::none().junction(bar))
        .header_separator(LineStyle::none().fill(rule).junction(cross))
        .content_lines(ContentLineStyle::none().junction(bar));
    let mut table = Table::new();
    table.load_style(style).set_content_arrangement(ContentArrangement::Disabled).set_header(headers.to_vec());
    for row in rows {
        table.add_row(row.clone());
    }
    // No padding left of the first column: lines start with their first cell.
    if let Some(first) = table.column_mut(0) {
        first.set_padding((0, 1));
    }
    table.trim_fmt()
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
