//! The read-only status page served at `GET /` next to `/metrics`: one row
//! per sync with its state, replication lag, last good and bad runs,
//! conflicts in the last hour and a lag chart (inline SVG) drawn from the
//! samples the VAC records. Plain HTML and CSS, no script; the browser
//! reloads it every 10 s. Every string from the catalog or a run (sync
//! names, errors) is HTML-escaped; nothing secret is in its inputs.

use std::collections::BTreeMap;
use std::fmt::Write;

use chrono::{DateTime, Utc};

use super::metrics::{CONFLICT_WINDOW, RunSummary, SyncStatus};
use crate::catalog::RunState;

const CHART_WIDTH: f64 = 240.0;
const CHART_HEIGHT: f64 = 40.0;

const STYLE: &str = "
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5rem; color: #1d2329; background: #f7f8fa; }
h1 { font-size: 1.3rem; margin: 0 0 .2rem; }
.meta { color: #5c6670; margin: 0 0 1rem; }
table { border-collapse: collapse; background: #fff; box-shadow: 0 1px 2px #0002; }
th, td { padding: .45rem .7rem; border-bottom: 1px solid #e3e6ea; text-align: left; vertical-align: top; }
th { font-weight: 600; background: #eef0f3; white-space: nowrap; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.name { font-weight: 600; font-family: ui-monospace, monospace; }
.state { display: inline-block; padding: .05rem .5rem; border-radius: .8rem; font-weight: 600; }
.state.good { background: #d7f5dd; color: #116329; }
.state.bad { background: #ffdcd7; color: #a40e26; }
.state.unknown { background: #eaeef2; color: #57606a; }
.running { color: #0550ae; font-size: .85em; margin-left: .3rem; }
.when { white-space: nowrap; }
.ago, .none { color: #6e7781; }
.error { color: #a40e26; font-family: ui-monospace, monospace; font-size: .85em; white-space: pre-wrap;
         word-break: break-word; max-width: 40rem; max-height: 8rem; overflow: auto; margin-top: .2rem; }
svg.lag { display: block; background: #fafbfc; border: 1px solid #e3e6ea; }
svg.lag polyline { fill: none; stroke: #0969da; stroke-width: 1.5; }
svg.lag text { font: 10px sans-serif; fill: #6e7781; }
";

/// Escapes text for HTML element content and quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// 0.4 s, 12 s, 3.5 min, 2.0 h.
fn seconds(s: f64) -> String {
    if s < 10.0 {
        format!("{s:.1} s")
    } else if s < 120.0 {
        format!("{s:.0} s")
    } else if s < 7200.0 {
        format!("{:.1} min", s / 60.0)
    } else {
        format!("{:.1} h", s / 3600.0)
    }
}

fn when(at: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let ago = (now - at).num_milliseconds().max(0) as f64 / 1000.0;
    format!(
        "<span class=\"when\">{}</span> <span class=\"ago\">({} ago)</span>",
        at.format("%Y-%m-%d %H:%M:%S UTC"),
        seconds(ago)
    )
}

fn run_cell(run: Option<&RunSummary>, now: DateTime<Utc>) -> String {
    let Some(run) = run else { return "<span class=\"none\">none yet</span>".to_string() };
    let mut out = format!(
        "{}<br><span class=\"ago\">{}, {} rows</span>",
        when(run.ended_at, now),
        seconds(run.seconds),
        run.rows
    );
    if let Some(error) = &run.error {
        let _ = write!(out, "<div class=\"error\">{}</div>", escape(error));
    }
    out
}

/// A line chart of the lag samples (up to LAG_SAMPLES, oldest at the left);
/// the y axis goes from 0 to the largest sample (at least 1 s, so an idle
/// sync shows a flat line at the bottom).
fn lag_chart(sync: &str, status: &SyncStatus) -> String {
    let samples = &status.lag_samples;
    let label = escape(&format!("replication lag of sync {sync}, last {} samples", samples.len()));
    let mut out = format!(
        "<svg class=\"lag\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{CHART_WIDTH}\" height=\"{CHART_HEIGHT}\" \
         viewBox=\"0 0 {CHART_WIDTH} {CHART_HEIGHT}\" role=\"img\" aria-label=\"{label}\"><title>{label}</title>"
    );
    if samples.is_empty() {
        let _ = write!(out, "<text x=\"6\" y=\"{}\">no samples yet</text>", CHART_HEIGHT / 2.0 + 3.0);
    } else {
        let max = samples.iter().map(|(_, lag)| *lag).fold(1.0_f64, f64::max);
        // The samples present fill the width (one sample: a flat line).
        let step = CHART_WIDTH / (samples.len().max(2) - 1) as f64;
        let lone = samples.front().copied().filter(|_| samples.len() == 1);
        let points: Vec<String> = samples
            .iter()
            .chain(lone.as_ref())
            .enumerate()
            .map(|(i, (_, lag))| {
                let x = i as f64 * step;
                let y = CHART_HEIGHT - 2.0 - (lag.max(0.0) / max) * (CHART_HEIGHT - 14.0);
                format!("{x:.1},{y:.1}")
            })
            .collect();
        let _ = write!(
            out,
            "<polyline points=\"{}\"/><text x=\"{}\" y=\"10\" text-anchor=\"end\">max {}</text>",
            points.join(" "),
            CHART_WIDTH - 4.0,
            escape(&seconds(max))
        );
    }
    out.push_str("</svg>");
    out
}

fn state_cell(status: &SyncStatus, now: DateTime<Utc>) -> String {
    let mut out = match status.last_state {
        Some(RunState::Good) => "<span class=\"state good\">Good</span>".to_string(),
        Some(RunState::Bad) => "<span class=\"state bad\">Bad</span>".to_string(),
        Some(RunState::Running) | None => "<span class=\"state unknown\">no run yet</span>".to_string(),
    };
    if let Some(since) = status.running_since {
        let for_s = (now - since).num_milliseconds().max(0) as f64 / 1000.0;
        let _ = write!(out, "<span class=\"running\">running for {}</span>", seconds(for_s));
    }
    out
}

/// The whole page.
pub fn render(syncs: &BTreeMap<String, SyncStatus>, now: DateTime<Utc>) -> String {
    let window = chrono::Duration::from_std(CONFLICT_WINDOW).unwrap_or(chrono::Duration::hours(1));
    let bad = syncs.values().filter(|s| s.last_state == Some(RunState::Bad)).count();
    let count = if syncs.len() == 1 { "1 sync".to_string() } else { format!("{} syncs", syncs.len()) };
    let mut out = String::with_capacity(4096 + syncs.len() * 2048);
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"10\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>ibex: {count}, {bad} Bad</title><style>{STYLE}</style></head><body>\
         <h1>ibex status</h1><p class=\"meta\">{count}, {bad} Bad &middot; as of {} &middot; refreshes every 10 s \
         &middot; <a href=\"/metrics\">/metrics</a></p>",
        now.format("%Y-%m-%d %H:%M:%S UTC")
    );
    if syncs.is_empty() {
        out.push_str("<p class=\"none\">No syncs yet: add one with <code>ibex add sync</code>.</p></body></html>\n");
        return out;
    }
    out.push_str(
        "<table><thead><tr><th>Sync</th><th>State</th><th>Lag</th><th>Lag history</th><th>Last good run</th>\
         <th>Last bad run</th><th>Conflicts (1 h)</th></tr></thead><tbody>",
    );
    for (name, status) in syncs {
        let lag = status.lag.map_or_else(|| "<span class=\"none\">&ndash;</span>".to_string(), seconds);
        let _ = write!(
            out,
            "<tr class=\"sync\" data-sync=\"{n}\"><td class=\"name\">{n}</td><td>{}</td><td class=\"num\">{lag}</td>\
             <td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td></tr>",
            state_cell(status, now),
            lag_chart(name, status),
            run_cell(status.last_good.as_ref(), now),
            run_cell(status.last_bad.as_ref(), now),
            status.conflicts_since(now - window),
            n = escape(name),
        );
    }
    out.push_str("</tbody></table></body></html>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_names_and_errors() {
        let mut syncs = BTreeMap::new();
        let now = Utc::now();
        let mut status = SyncStatus::default();
        status.last_state = Some(RunState::Bad);
        status.last_bad = Some(RunSummary {
            ended_at: now,
            seconds: 0.5,
            rows: 0,
            error: Some("relation \"x<y&z\" does not exist".into()),
        });
        status.lag = Some(3.0);
        status.lag_samples = [(now, 1.0), (now, 3.0)].into_iter().collect();
        syncs.insert("a<b&c".to_string(), status);
        let page = render(&syncs, now);
        assert!(page.contains("a&lt;b&amp;c"), "{page}");
        assert!(!page.contains("a<b"), "{page}");
        assert!(page.contains("relation &quot;x&lt;y&amp;z&quot; does not exist"), "{page}");
        assert!(page.contains("<polyline points="), "{page}");
        assert!(page.contains(">Bad<"), "{page}");
    }

    #[test]
    fn empty_page_and_idle_chart() {
        assert!(render(&BTreeMap::new(), Utc::now()).contains("No syncs yet"));
        let chart = lag_chart("s", &SyncStatus::default());
        assert!(chart.starts_with("<svg") && chart.contains("no samples yet"));
    }
}
