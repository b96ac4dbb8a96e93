//! `ibex status [SYNC]`: Bucardo's overview and detail views.

use chrono::{DateTime, Local, Utc};
use serde::Serialize;

use super::{Context, Output, StatusArgs};
use crate::catalog::{self, RunRecord, RunState, sync::format_duration};
use crate::error::Result;
use crate::pg::{self, activity::Activity};

#[derive(Serialize)]
struct SyncStatus {
    name: String,
    state: &'static str,
    status: String,
    last_good: Option<RunRecord>,
    last_bad: Option<RunRecord>,
    /// Which daemon runs the sync (its lease), if one does.
    lease: Option<catalog::lease::LeaseView>,
    /// Tables its ddl policy holds back (`ddl=pause`).
    paused: Vec<catalog::paused::PausedTable>,
}

/// "3m2s" style: the two largest units.
fn ago(t: DateTime<Utc>) -> String {
    let secs = (Utc::now() - t).num_seconds().max(0);
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}d{h}h")
    } else if h > 0 {
        format!("{h}h{m}m")
    } else if m > 0 {
        format!("{m}m{s}s")
    } else {
        format!("{s}s")
    }
}

fn seconds(run: &RunRecord) -> String {
    let ms = run.duration().num_milliseconds();
    if ms < 10_000 { format!("{:.2}s", ms as f64 / 1000.0) } else { humantime_secs(ms / 1000) }
}

fn humantime_secs(secs: i64) -> String {
    format_duration(Some(std::time::Duration::from_secs(secs.max(0) as u64)))
}

fn state(good: &Option<RunRecord>, bad: &Option<RunRecord>) -> &'static str {
    match (good, bad) {
        (None, None) => "No records",
        (Some(_), None) => "Good",
        (None, Some(_)) => "Bad",
        (Some(g), Some(b)) => {
            if g.started_at >= b.started_at {
                "Good"
            } else {
                "Bad"
            }
        }
    }
}

async fn collect(c: &tokio_postgres::Client, name: &str, status: String) -> Result<SyncStatus> {
    let last_good = catalog::runs::last(c, name, RunState::Good).await?;
    let last_bad = catalog::runs::last(c, name, RunState::Bad).await?;
    let lease = catalog::lease::list(c).await?.into_iter().find(|l| l.sync == name && l.live);
    let paused = catalog::paused::list(c, name).await?;
    let state = match state(&last_good, &last_bad) {
        "Good" if paused.iter().any(|p| p.whole_sync) => "Paused",
        "Good" if !paused.is_empty() => "Good, tables paused",
        other => other,
    };
    Ok(SyncStatus { name: name.to_string(), state, status, last_good, last_bad, lease, paused })
}

pub async fn show(ctx: &Context, args: StatusArgs) -> Result<()> {
    let cat = ctx.catalog().await?;
    match args.sync {
        None => {
            let mut all = Vec::new();
            for sync in catalog::sync::list(cat.client()).await? {
                all.push(collect(cat.client(), &sync.name, sync.params.status.clone()).await?);
            }
            if ctx.out.json {
                ctx.out.print_json(&all);
                return Ok(());
            }
            if all.is_empty() {
                ctx.out.line("No syncs: add one with `ibex add sync NAME herd=HERD dbs=GROUP`");
                return Ok(());
            }
            let when = |r: &Option<RunRecord>| match r {
                Some(r) => (
                    r.ended_at.unwrap_or(r.started_at).with_timezone(&Local).format("%H:%M:%S").to_string(),
                    ago(r.ended_at.unwrap_or(r.started_at)),
                ),
                None => ("none".into(), String::new()),
            };
            let rows: Vec<Vec<String>> = all
                .iter()
                .map(|s| {
                    let (good, good_ago) = when(&s.last_good);
                    let (bad, bad_ago) = when(&s.last_bad);
                    let idc = s
                        .last_good
                        .as_ref()
                        .map(|r| format!("{}/{}/{}", r.inserted, r.deleted, r.conflicts))
                        .unwrap_or_default();
                    let catching_up =
                        s.last_good.as_ref().and_then(|r| r.backlog).filter(|b| *b > 0).map(|_| "Catching up");
                    let state = if s.status == "inactive" { "Inactive" } else { catching_up.unwrap_or(s.state) };
                    vec![s.name.clone(), state.into(), good, good_ago, idc, bad, bad_ago]
                })
                .collect();
            ctx.out.table(&["Name", "State", "Last good", "Time", "Last I/D/C", "Last bad", "Time"], &rows);
        }
        Some(name) => {
            let sync = catalog::sync::get(cat.client(), &name).await?;
            let group = catalog::dbgroup::get(cat.client(), &sync.dbgroup).await?;
            let herd = catalog::herd::get(cat.client(), &sync.herd).await?;
            let status = collect(cat.client(), &name, sync.params.status.clone()).await?;
            let running = running(cat.client(), &name, &status, &group).await?;
            if ctx.out.json {
                ctx.out.print_json(&serde_json::json!({
                    "status": status,
                    "running": running,
                    "sync": sync.view(Some(&group)),
                    "tables": herd.members,
                }));
                return Ok(());
            }
            let when = |r: &Option<RunRecord>| match r {
                Some(r) => format!(
                    "{} (time to run: {})",
                    r.started_at.with_timezone(&Local).format("%b %d, %Y %H:%M:%S"),
                    seconds(r)
                ),
                None => "none".into(),
            };
            let p = &sync.params;
            let dbs: Vec<String> = group.members.iter().map(|m| m.spec()).collect();
            let last_error = status
                .last_bad
                .as_ref()
                .filter(|_| status.state == "Bad")
                .and_then(|r| r.error.clone())
                .unwrap_or_default();
            let counts = status
                .last_good
                .as_ref()
                .map(|r| format!("{} / {} / {}", r.deleted, r.inserted, r.conflicts))
                .unwrap_or_else(|| "none".into());
            let progress = match status.last_good.as_ref().and_then(|r| r.backlog.map(|b| (r.window_rows, b))) {
                Some((done, left)) if left > 0 => {
                    format!("catching up: {} delta rows applied in the last run, {left} pending", done.unwrap_or(0))
                }
                _ => "caught up".to_string(),
            };
            let lines = [
                ("Last good", when(&status.last_good)),
                ("Progress", progress),
                ("Rows deleted/inserted/conflicts", counts),
                ("Last bad", when(&status.last_bad)),
                ("Sync name", sync.name.clone()),
                ("Current state", status.state.to_string()),
                ("Herd / dbs", format!("{} / {}", sync.herd, dbs.join(" "))),
                ("Tables in sync", herd.members.len().to_string()),
                ("Status", p.status.clone()),
                (
                    "Run by daemon",
                    match &status.lease {
                        Some(l) => format!("{} (lease token {})", l.holder.as_deref().unwrap_or(""), l.token),
                        None => "none (no daemon holds its lease)".into(),
                    },
                ),
                ("Conflict strategy", p.conflict_strategy.to_string()),
                ("Check time", format_duration(p.checktime)),
                ("Autokick / kidsalive", format!("{} / {}", yes(p.autokick), yes(p.kidsalive))),
                ("Onetimecopy", p.onetimecopy.to_string()),
                ("Lock timeout", format_duration(p.lock_timeout)),
                ("Isolation level", p.isolation_level.as_sql().to_string()),
                ("Last error", last_error),
            ];
            for (label, value) in lines {
                ctx.out.line(format!("{label:<32}: {value}"));
            }
            for p in &status.paused {
                let what = if p.whole_sync { "the whole sync waits" } else { "this table waits" };
                let since = p.since.map(|t| format!(", since {} ago", ago(t))).unwrap_or_default();
                let label = format!("Table {}", p.table);
                ctx.out.line(format!("{label:<32}: paused: {} ({what}{since})", p.reason));
            }
            if let Some(run) = &running {
                ctx.out.line(format!("{:<32}: run {} started {} ago", "Running now", run.run, ago(run.started_at)));
                for db in &run.dbs {
                    let label = format!("  on db {}", db.db);
                    match (&db.error, db.sessions.as_slice()) {
                        (Some(err), _) => ctx.out.line(format!("{label:<32}: cannot look: {err}")),
                        (None, []) => ctx.out.line(format!("{label:<32}: no ibex session")),
                        (None, sessions) => {
                            for s in sessions {
                                ctx.out.line(format!("{label:<32}: {}", s.describe()));
                            }
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

/// A run in progress, and what its sessions are doing on each db.
#[derive(Serialize)]
struct Running {
    run: i64,
    started_at: DateTime<Utc>,
    dbs: Vec<DbActivity>,
}

#[derive(Serialize)]
struct DbActivity {
    db: String,
    sessions: Vec<Activity>,
    /// Why this db could not be looked at (the run goes on regardless).
    error: Option<String>,
}

/// The sync's run in progress (newer than its last finished run), with
/// each db's view of the KID's sessions; None when no run is in progress.
async fn running(
    c: &tokio_postgres::Client,
    sync: &str,
    status: &SyncStatus,
    group: &catalog::DbGroup,
) -> Result<Option<Running>> {
    let Some(run) = catalog::runs::last(c, sync, RunState::Running).await? else { return Ok(None) };
    let finished = [&status.last_good, &status.last_bad].into_iter().flatten().map(|r| r.started_at).max();
    if finished.is_some_and(|f| f >= run.started_at) {
        return Ok(None);
    }
    let app = crate::sync::kid_application_name(sync);
    let mut dbs = Vec::new();
    for member in &group.members {
        let looked = async {
            let record = catalog::dbs::get(c, &member.db).await?;
            let client = pg::connect(&record.conn, "ibex status").await?;
            let caps = pg::version::detect(&client).await?;
            pg::activity::sessions(&client, &caps, &app).await
        };
        // A db that is down or slow must not hold up the status of the rest.
        let (sessions, error) = match tokio::time::timeout(LOOK_TIMEOUT, looked).await {
            Ok(Ok(sessions)) => (sessions, None),
            Ok(Err(err)) => (Vec::new(), Some(err.to_string())),
            Err(_) => (Vec::new(), Some(format!("no answer within {}s", LOOK_TIMEOUT.as_secs()))),
        };
        dbs.push(DbActivity { db: member.db.clone(), sessions, error });
    }
    Ok(Some(Running { run: run.id, started_at: run.started_at, dbs }))
}

const LOOK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

/// One run's summary, as `ibex sync run` prints it.
pub fn print_run(out: &Output, run: &RunRecord) {
    let state = match run.state {
        RunState::Good => "good",
        RunState::Bad => "bad",
        RunState::Running => "running",
    };
    out.line(format!(
        "Sync {}: run {} {state} in {}: {} inserted, {} deleted, {} conflicts{}",
        run.sync,
        run.id,
        seconds(run),
        run.inserted,
        run.deleted,
        run.conflicts,
        if run.attempts > 1 { format!(" ({} attempts)", run.attempts) } else { String::new() }
    ));
    if let Some(left) = run.backlog.filter(|b| *b > 0) {
        out.line(format!(
            "  catching up: {} delta rows applied, {left} pending (window_rows bounds each run)",
            run.window_rows.unwrap_or(0)
        ));
    }
    for t in run.tables.iter().filter(|t| t.inserted + t.deleted > 0) {
        out.line(format!("  {} on {}: {} deleted, {} inserted", t.table, t.db, t.deleted, t.inserted));
    }
}
