//! The README's benchmark table, drawn from one results file and nothing
//! else: the rows issue 17 asks for, in a fixed order, each with ibex,
//! Bucardo and the reference side by side and the ratio its goal is stated
//! in. A figure the file lacks prints as "not measured" with a numbered
//! note giving the file's reason.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::provenance::repo_root;
use crate::report::{Figure, Goal, Results, Row, number};

const BEGIN: &str = "<!-- bench:begin -->";
const END: &str = "<!-- bench:end -->";

/// The table's rows: (row id, the scenario that measures it, what the row
/// is called when the file has no such row).
const LAYOUT: &[(&str, &str, &str)] = &[
    ("tutorial", "tutorial", "seed tutorial: converge after 4 x N pgbench txns"),
    ("tutorial_floor", "tutorial", "seed tutorial, against its writes alone"),
    ("tutorial_copy_floor", "tutorial", "seed tutorial, against raw delete + copy"),
    ("bulk", "bulk", "bulk one-way: changed rows applied"),
    ("bulk_floor", "bulk", "bulk one-way, against raw delete + copy"),
    ("bulk_keyed_floor", "bulk", "bulk one-way, against raw keyed delete + copy"),
    ("memory_rows", "bulk", "memory: peak RSS, bulk size"),
    ("memory_rss_rows", "bulk", "memory: peak RSS, large size"),
    ("capture_update", "capture", "capture cost: bulk UPDATE"),
    ("capture_insert", "capture", "capture cost: bulk INSERT"),
    ("capture_delete", "capture", "capture cost: bulk DELETE"),
    ("capture_tps", "capture", "capture cost: pgbench TPS"),
    ("capture_update_floor", "capture", "capture cost: bulk UPDATE, against the trigger floor"),
    ("capture_insert_floor", "capture", "capture cost: bulk INSERT, against the trigger floor"),
    ("capture_delete_floor", "capture", "capture cost: bulk DELETE, against the trigger floor"),
    ("capture_tps_floor", "capture", "capture cost: pgbench TPS, against the trigger floor"),
    (
        "capture_tps_delta_floor",
        "capture",
        "capture cost: pgbench TPS, against the trigger floor with a minimal delta row",
    ),
    ("capture_tps_nokick", "capture", "capture cost: pgbench TPS, autokick=false (no NOTIFY)"),
    ("capture_wal_update", "capture", "capture cost, capture=wal: bulk UPDATE"),
    ("capture_wal_insert", "capture", "capture cost, capture=wal: bulk INSERT"),
    ("capture_wal_delete", "capture", "capture cost, capture=wal: bulk DELETE"),
    ("capture_wal_tps", "capture", "capture cost, capture=wal: pgbench TPS"),
    ("capture_wal_tps_nokick", "capture", "capture cost, capture=wal: pgbench TPS, autokick=false"),
    ("latency_oneway_p50", "latency", "autokick latency: one-way p50"),
    ("latency_oneway_p99", "latency", "autokick latency: one-way p99"),
    ("latency_3master_p50", "latency", "autokick latency: 3-master p50"),
    ("latency_3master_p99", "latency", "autokick latency: 3-master p99"),
    ("latency_wal_oneway_p50", "latency", "autokick latency, capture=wal: one-way p50"),
    ("latency_wal_oneway_p99", "latency", "autokick latency, capture=wal: one-way p99"),
    ("latency_wal_3master_p50", "latency", "autokick latency, capture=wal: 3-master p50"),
    ("latency_wal_3master_p99", "latency", "autokick latency, capture=wal: 3-master p99"),
    ("catchup", "catchup", "catch-up after a backlog"),
    ("onetimecopy", "copy", "initial copy: onetimecopy"),
    ("plugin_rows_false", "plugin", "WebAssembly plugin, rows=false"),
    ("plugin_rows_true", "plugin", "WebAssembly plugin, with rows"),
    ("plugin_rows_floor", "plugin", "WebAssembly plugin, with rows, against rows=false plus reading the rows"),
];

/// Numbered notes under the table, one per distinct reason.
#[derive(Default)]
struct Notes(Vec<String>);

impl Notes {
    fn cite(&mut self, reason: &str) -> usize {
        let reason = cell_text(reason);
        match self.0.iter().position(|r| *r == reason) {
            Some(i) => i + 1,
            None => {
                self.0.push(reason);
                self.0.len()
            }
        }
    }
}

/// Text safe inside a Markdown table cell: one line, no column breaks.
fn cell_text(text: &str) -> String {
    let one_line = text.split_whitespace().collect::<Vec<_>>().join(" ").replace('|', "\\|");
    if one_line.chars().count() > 400 {
        format!("{}…", one_line.chars().take(400).collect::<String>())
    } else {
        one_line
    }
}

fn figure(f: &Figure, unit: &str, notes: &mut Notes) -> String {
    match (f.value, &f.missing) {
        (Some(v), _) => format!("{} {unit}", number(v)),
        (None, Some(reason)) => format!("not measured [{}]", notes.cite(reason)),
        (None, None) => format!("not measured [{}]", notes.cite("no reason recorded")),
    }
}

/// The ratio in the goal's own terms, e.g. "0.094 of raw COPY pipe",
/// "1.54x no triggers", "1/2.1 of Bucardo".
fn ratio(row: &Row) -> String {
    let (Some(r), Some(goal)) = (row.ratio, row.goal) else { return "—".into() };
    match goal {
        Goal::ReferenceAtLeast(_) => format!("{r:.3} of {}", row.reference_is),
        Goal::ReferenceAtMost(_) => format!("{r:.2}x {}", row.reference_is),
        Goal::BucardoAtMost(_) | Goal::Below(_) if r > 0.0 && r < 1.0 => format!("1/{:.1} of Bucardo", 1.0 / r),
        Goal::BucardoAtMost(_) | Goal::Below(_) => format!("{r:.2}x Bucardo"),
    }
}

fn met(m: Option<bool>) -> &'static str {
    match m {
        Some(true) => "yes",
        Some(false) => "no",
        None => "—",
    }
}

/// The Markdown between the markers, for `results` read from `source`.
pub fn table(results: &Results, source: &Path) -> String {
    let p = &results.provenance;
    let mut notes = Notes::default();
    let source = source.strip_prefix(repo_root()).unwrap_or(source);
    let mut out = String::new();
    if !p.full_scale {
        out.push_str("**Small-scale run: not the scales the goals are stated for.**\n\n");
    }
    if p.ibex.contains("/debug/") {
        out.push_str("**Debug build of ibex: build with `--release` for figures to publish.**\n\n");
    }
    let settings: Vec<String> = p.postgres_settings.iter().map(|(k, v)| format!("{k}={v}")).collect();
    out.push_str(&format!(
        "From [`{}`]({}): `{}`, started {} on commit `{}`{}; {} cores ({}), {} GiB RAM; PostgreSQL {} ({}); {}; ibex {}.\n\n",
        source.display(),
        source.display(),
        p.command,
        p.started,
        p.commit_short,
        if p.dirty { " with uncommitted changes" } else { "" },
        p.machine.cores,
        p.machine.cpu_model,
        p.machine.ram_gib,
        p.postgres.as_deref().unwrap_or("(no cluster started)"),
        settings.join(", "),
        p.bucardo.as_deref().unwrap_or("Bucardo not installed in this run"),
        p.ibex.split(" (").next().unwrap_or(&p.ibex),
    ));
    out.push_str("| workload | ibex | Bucardo | reference | ratio, as the goal states it | goal | met |\n");
    out.push_str("|---|---|---|---|---|---|---|\n");
    for (id, scenario, fallback) in LAYOUT {
        match results.row(id) {
            Some(row) => {
                // A row without a reference by design (reference_is empty)
                // shows n/a; the file still says why.
                let reference = match (&row.reference.value, row.reference_is.as_str()) {
                    (Some(_), what) => format!("{} ({what})", figure(&row.reference, &row.unit, &mut notes)),
                    (None, "") => "n/a".to_string(),
                    (None, _) => figure(&row.reference, &row.unit, &mut notes),
                };
                out.push_str(&format!(
                    "| {}: {} | {} | {} | {} | {} | {} | {} |\n",
                    cell_text(&row.scenario),
                    cell_text(&row.measure),
                    figure(&row.ibex, &row.unit, &mut notes),
                    figure(&row.bucardo, &row.unit, &mut notes),
                    reference,
                    ratio(row),
                    cell_text(&row.goal_text),
                    met(row.met),
                ));
            }
            None => {
                let reason = match results.scenario(scenario) {
                    Some(run) => match &run.error {
                        Some(error) => format!("scenario {scenario} failed: {error}"),
                        None => format!("scenario {scenario} ran but recorded no row {id}"),
                    },
                    None => format!("scenario {scenario} was not run for this file"),
                };
                let n = notes.cite(&reason);
                out.push_str(&format!(
                    "| {fallback} | not measured [{n}] | not measured [{n}] | not measured [{n}] | — | — | — |\n"
                ));
            }
        }
    }
    if !notes.0.is_empty() {
        out.push_str("\nNotes:\n\n");
        for (i, note) in notes.0.iter().enumerate() {
            out.push_str(&format!("{}. {note}\n", i + 1));
        }
    }
    out
}

/// Reads a results file.
pub fn load(path: &Path) -> Result<Results> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not a bench results file", path.display()))
}

/// The newest file in bench/results (by the time its run started).
pub fn newest_results() -> Result<PathBuf> {
    let dir = repo_root().join("bench/results");
    let mut newest: Option<(String, PathBuf)> = None;
    for entry in std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "json")
            && let Ok(results) = load(&path)
            && newest.as_ref().is_none_or(|(started, _)| results.provenance.started > *started)
        {
            newest = Some((results.provenance.started, path));
        }
    }
    newest.map(|(_, p)| p).with_context(|| format!("no results file in {}: run `ibex-bench all` first", dir.display()))
}

/// Replaces the README's text between the bench markers with the table.
pub fn rewrite(readme: &Path, results: &Results, source: &Path) -> Result<()> {
    let text = std::fs::read_to_string(readme).with_context(|| format!("reading {}", readme.display()))?;
    let (Some(a), Some(b)) = (text.find(BEGIN), text.find(END)) else {
        bail!("{} has no {BEGIN} ... {END} section: add both markers where the table goes", readme.display());
    };
    if b < a {
        bail!("{} has {END} before {BEGIN}: put the begin marker first", readme.display());
    }
    let updated = format!("{}{BEGIN}\n{}{}", &text[..a], table(results, source), &text[b..]);
    std::fs::write(readme, updated).with_context(|| format!("writing {}", readme.display()))?;
    eprintln!("rewrote the benchmark table in {} from {}", readme.display(), source.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provenance::{Machine, Provenance, Scales};
    use crate::report::{Better, Measure, ScenarioRun};

    fn results() -> Results {
        Results::new(Provenance {
            started: "2026-12-02T03:00:00Z".into(),
            command: "ibex-bench all".into(),
            scales: Scales::FULL,
            full_scale: true,
            machine: Machine { cores: 2, ram_gib: 23.4, cpu_model: "cpu".into(), kernel: "6".into() },
            commit: "0123456789abcdef".into(),
            commit_short: "012345678".into(),
            dirty: false,
            dirty_paths: Vec::new(),
            ibex: "0.1.0 (target/release/ibex)".into(),
            postgres: Some("15.20".into()),
            postgres_settings: vec![("fsync".into(), "off".into())],
            bucardo: Some("bucardo version 5.6.0".into()),
        })
    }

    #[test]
    fn figures_ratios_and_reasons_come_from_the_file() {
        let mut r = results();
        r.add(
            Measure::new("bulk", "bulk one-way", "1000 changed rows applied", "rows/s", Better::Higher)
                .ibex(Figure::of(100.0))
                .bucardo(Figure::of(20.0))
                .reference(Figure::of(400.0), "raw COPY pipe")
                .goal(Goal::ReferenceAtLeast(0.5), ">= 0.5 of the raw pipe"),
        );
        r.add(
            Measure::new("latency_3master_p50", "autokick latency", "3-master p50", "ms", Better::Lower)
                .ibex(Figure::of(30.0))
                .bucardo(Figure::missing("At fault: Bucardo | its kid died"))
                .goal(Goal::Below(40.0), "< 40 ms"),
        );
        r.scenarios.push(ScenarioRun { name: "plugin".into(), seconds: 1.0, error: Some("boom".into()) });
        let table = table(&r, Path::new("bench/results/x.json"));
        assert!(
            table.contains("| 100.0 rows/s | 20.0 rows/s | 400.0 rows/s (raw COPY pipe) | 0.250 of raw COPY pipe |"),
            "{table}"
        );
        assert!(table.contains("| no |"), "{table}");
        assert!(table.contains("| 30.0 ms | not measured [5] | n/a |"), "{table}");
        assert!(table.contains("5. At fault: Bucardo \\| its kid died"), "{table}");
        assert!(table.contains("scenario plugin failed: boom"), "{table}");
        assert!(table.contains("scenario tutorial was not run for this file"), "{table}");
        assert!(!table.contains("Small-scale") && !table.contains("Debug build"), "{table}");
    }

    #[test]
    fn rewrite_keeps_the_text_around_the_markers() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let readme = dir.path().join("README.md");
        std::fs::write(&readme, format!("before\n{BEGIN}\nold\n{END}\nafter\n")).expect("writing");
        rewrite(&readme, &results(), Path::new("r.json")).expect("rewriting");
        let text = std::fs::read_to_string(&readme).expect("reading");
        assert!(text.starts_with(&format!("before\n{BEGIN}\nFrom [`r.json`]")), "{text}");
        assert!(text.ends_with(&format!("{END}\nafter\n")), "{text}");
        assert!(!text.contains("old"), "{text}");
        std::fs::write(&readme, "no markers").expect("writing");
        let err = rewrite(&readme, &results(), Path::new("r.json")).expect_err("no markers");
        assert!(format!("{err:#}").contains("add both markers"), "{err:#}");
    }
}
