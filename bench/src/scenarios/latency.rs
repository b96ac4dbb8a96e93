//! Autokick latency under load, one-way and 3-master, and why Bucardo gave
//! no figure when it gave none.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use ibex_tests::{Cluster, Daemon, Setup};

use super::{Bench, bucardo_dbs, ibex_dbs, keep_daemon_log};
use crate::bucardo::Bucardo;
use crate::measure::percentile;
use crate::report::{Better, Figure, Goal, Measure};

/// A mark that did not reach every db within the minute.
struct LostMark {
    id: i32,
    db: String,
}

/// Inserts `samples` marks, in turn on each master, and times each until
/// it is visible on every other db. Stops at the first mark that is not.
async fn marks(
    cluster: &Cluster,
    names: &[&str],
    masters: usize,
    samples: u64,
) -> Result<(Vec<f64>, Option<LostMark>)> {
    let mut clients = Vec::new();
    for db in names {
        clients.push(cluster.connect(db).await?);
    }
    let mut out = Vec::new();
    for id in 0..samples as i32 {
        let from = id as usize % masters;
        let started = Instant::now();
        clients[from].execute("INSERT INTO marks VALUES ($1, $2)", &[&id, &names[from]]).await?;
        for (i, client) in clients.iter().enumerate() {
            if i == from {
                continue;
            }
            loop {
                let n: i64 = client.query_one("SELECT count(*) FROM marks WHERE id = $1", &[&id]).await?.get(0);
                if n == 1 {
                    break;
                }
                if started.elapsed() > Duration::from_secs(60) {
                    out.sort_by(f64::total_cmp);
                    return Ok((out, Some(LostMark { id, db: names[i].to_string() })));
                }
                tokio::time::sleep(Duration::from_micros(500)).await;
            }
        }
        out.push(started.elapsed().as_secs_f64() * 1000.0);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    out.sort_by(f64::total_cmp);
    Ok((out, None))
}

/// Waits (up to `timeout`) for mark `id` on `db`; how long it took.
fn wait_for_mark(cluster: &Cluster, db: &str, id: i32, timeout: Duration) -> Result<Option<f64>> {
    let started = Instant::now();
    while started.elapsed() < timeout {
        if cluster.psql(db, &format!("SELECT count(*) FROM marks WHERE id = {id}"))? == "1" {
            return Ok(Some(started.elapsed().as_secs_f64()));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(None)
}

fn steady_load(cluster: &Cluster, dbs: &[&str]) -> Result<Vec<std::process::Child>> {
    dbs.iter()
        .map(|db| {
            Command::new("pgbench")
                .args(["-n", "-c", "1", "-R", "100", "-T", "3600", "-h", "127.0.0.1", "-U", "postgres"])
                .arg("-p")
                .arg(cluster.port().to_string())
                .arg(db)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting pgbench")
        })
        .collect()
}

fn stop_load(loads: Vec<std::process::Child>) {
    for mut l in loads {
        let _ = l.kill();
        let _ = l.wait();
    }
}

/// Why Bucardo delivered no latency figure, from what the run recorded:
/// its own `syncrun` table while the load ran, its log, and whether the
/// lost mark arrived once the load was stopped.
fn bucardo_latency_failure(
    s: &Setup,
    b: &Bucardo,
    loads: Vec<std::process::Child>,
    since: &str,
    lost: &LostMark,
) -> Result<String> {
    let during = b.runs_since(&s.cluster, "lat", since)?;
    stop_load(loads);
    let after_load = wait_for_mark(&s.cluster, &lost.db, lost.id, Duration::from_secs(120))?;
    let arrival = match after_load {
        Some(t) => format!("the mark arrived {t:.1} s after the load was stopped"),
        None => "the mark had still not arrived 120 s after the load was stopped".to_string(),
    };
    let verdict = if during.runs == 0 {
        "the bench's driving: Bucardo started no run of the sync while the masters were written".to_string()
    } else if during.completed == 0 && during.failed > 0 {
        format!(
            "Bucardo: all {} of its runs failed while the masters were written, none completed; its kid died {} times \
             (first failure: {})",
            during.runs,
            during.kid_deaths,
            // Bucardo appends per-db states after "Line:"; the error is before.
            during.first_failure.split(" Line:").next().unwrap_or_default().trim()
        )
    } else {
        format!(
            "undetermined: {} runs, {} completed, {} failed while the masters were written",
            during.runs, during.completed, during.failed
        )
    };
    Ok(format!("mark {} never arrived on {} within 60 s. At fault: {verdict}; {arrival}", lost.id, lost.db))
}

/// What the daemon said while the marks were timed: its warnings and
/// errors (a failed run explains a slow mark), and how many runs retried.
fn report_daemon_log(log: &str, label: &str) {
    let retried = log.lines().filter(|l| l.contains("retrying with the tables locked")).count();
    let bad: Vec<&str> = log.lines().filter(|l| l.contains("WARN") || l.contains("ERROR")).collect();
    eprintln!("  daemon, {label}: {retried} retries after a write conflict, {} warnings or errors", bad.len());
    for line in bad.iter().take(3) {
        eprintln!("    {line}");
    }
    keep_daemon_log(log, label);
}

/// `name:source` for the first `masters` of `names`, `name:target` for the rest.
fn roles(names: &[&str], masters: usize) -> String {
    names
        .iter()
        .enumerate()
        .map(|(i, n)| format!("{n}:{}", if i < masters { "source" } else { "target" }))
        .collect::<Vec<_>>()
        .join(",")
}

/// One ibex latency run: dbs `names` (the sources on WAL capture when `wal`), sync `sync` kept by the daemon while the
/// masters are under load; the marks' times in ms, or why one never came,
/// and the run phases profiled under `label`. The sync is deactivated after.
#[allow(clippy::too_many_arguments)]
fn ibex_latency(
    bench: &mut Bench,
    s: &Setup,
    runtime: &tokio::runtime::Runtime,
    names: &[&str],
    sync: &str,
    masters: usize,
    samples: u64,
    wal: bool,
    label: &str,
) -> Result<(Vec<f64>, Option<String>)> {
    if wal {
        for db in &names[..masters] {
            s.ibex.run(&["update", "db", db, "capture=wal"]).ok();
        }
    }
    s.ibex.run(&["add", "sync", sync, "herd=h", &format!("dbs={}", roles(names, masters))]).ok();
    let mut daemon = Daemon::configure(&s.ibex)?;
    daemon.start()?;
    let loads = steady_load(&s.cluster, &names[..masters])?;
    let result = runtime.block_on(marks(&s.cluster, names, masters, samples));
    stop_load(loads);
    report_daemon_log(&daemon.log(), label);
    drop(daemon);
    let (ms, lost) = result?;
    bench.profile(s, "latency", label, sync)?;
    s.ibex.run(&["deactivate", sync]).ok();
    Ok((ms, lost.map(|l| format!("mark {} never arrived on {} within 60 s", l.id, l.db))))
}

/// Scenario 4: Autokick latency under a steady pgbench load (100 tps per source):
/// commit on a source to visible on every other db.
pub fn latency(bench: &mut Bench, samples: u64) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    for masters in [1usize, 3] {
        let (label, key, p50_goal, p99_goal) =
            if masters == 1 { ("one-way", "oneway", 20.0, 100.0) } else { ("3-master", "3master", 40.0, 150.0) };
        eprintln!("== autokick latency, {label}");
        let s = bench.setup()?;
        s.cluster.create_pgbench_db("tmpl", 1)?;
        s.sql("tmpl", "CREATE TABLE marks (id int PRIMARY KEY, src text)");
        ibex_dbs(&s, "tmpl", &["l1", "l2", "l3", "w1", "w2", "w3"]);
        s.ibex.sh("add all tables db=l1 herd=h");
        let (ibex_ms, ibex_missing) = ibex_latency(
            bench,
            &s,
            &runtime,
            &["l1", "l2", "l3"],
            "lat",
            masters,
            samples,
            false,
            &format!("{label}, every run under load"),
        )?;
        let (wal_ms, wal_missing) = ibex_latency(
            bench,
            &s,
            &runtime,
            &["w1", "w2", "w3"],
            "latw",
            masters,
            samples,
            true,
            &format!("{label}, capture=wal, every run under load"),
        )?;
        // Bucardo
        let b = bench.bucardo(&s)?;
        let bnames = ["k1", "k2", "k3"];
        bucardo_dbs(&s, &b, "tmpl", &bnames)?;
        b.cmd(&[
            "add",
            "table",
            "pgbench_accounts",
            "pgbench_branches",
            "pgbench_tellers",
            "marks",
            "db=k1",
            "relgroup=h",
        ])?;
        let members: Vec<String> = roles(&bnames, masters).split(',').map(str::to_string).collect();
        let mut args = vec!["add", "dbgroup", "g"];
        args.extend(members.iter().map(String::as_str));
        b.cmd(&args)?;
        b.cmd(&["add", "sync", "lat", "relgroup=h", "dbs=g"])?;
        b.start()?;
        let since = b.now(&s.cluster)?;
        let loads = steady_load(&s.cluster, &bnames[..masters])?;
        let (bucardo_ms, bucardo_missing) = match runtime.block_on(marks(&s.cluster, &bnames, masters, samples))? {
            (ms, None) => {
                stop_load(loads);
                (ms, None)
            }
            (ms, Some(lost)) => {
                let why = bucardo_latency_failure(&s, &b, loads, &since, &lost)?;
                eprintln!("  Bucardo, {label}: {why}");
                (ms, Some(why))
            }
        };
        b.stop();
        for (name, q, goal, goal_text) in [
            ("p50", 0.5, Some(p50_goal), format!("< {p50_goal} ms")),
            ("p90", 0.9, None, String::new()),
            ("p99", 0.99, Some(p99_goal), format!("< {p99_goal} ms")),
            ("max", 1.0, None, String::new()),
        ] {
            let figure = |ms: &[f64], missing: &Option<String>| match missing {
                Some(why) => Figure::missing(why.clone()),
                None => Figure::or_missing(percentile(ms, q), "no samples"),
            };
            let rows = [
                (
                    format!("latency_wal_{key}_{name}"),
                    ", capture=wal",
                    figure(&wal_ms, &wal_missing),
                    Figure::missing("Bucardo has no WAL capture"),
                ),
                (
                    format!("latency_{key}_{name}"),
                    "",
                    figure(&ibex_ms, &ibex_missing),
                    figure(&bucardo_ms, &bucardo_missing),
                ),
            ];
            for (id, capture, ibex, bucardo) in rows {
                let mut m = Measure::new(
                    &id,
                    "autokick latency",
                    format!("{label} {name}{capture} ({samples} marks, 100 tps pgbench per master)"),
                    "ms",
                    Better::Lower,
                )
                .ibex(ibex)
                .bucardo(bucardo)
                .reference(Figure::missing("no raw reference: the goal is absolute"), "");
                if let Some(limit) = goal {
                    m = m.goal(Goal::Below(limit), &goal_text);
                }
                bench.add(m);
            }
        }
    }
    Ok(())
}
