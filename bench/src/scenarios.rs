//! The scenarios of the side-by-side comparison. Each starts its own
//! cluster; Bucardo and ibex get identical databases in it (copies of one
//! template) and the same workload, one engine at a time.
//!
//! Long on purpose: one function per scenario of the bench, each running
//! Bucardo and ibex on identical data side by side.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ibex_tests::{Cluster, Daemon, Setup};

use crate::bucardo::{Bucardo, RssSampler};
use crate::measure::{percentile, run_measured, timed};
use crate::profile;
use crate::provenance::bucardo_version;
use crate::report::{Better, Figure, Goal, Measure, Results};

const PGBENCH_TABLES: &[&str] = &["pgbench_accounts", "pgbench_branches", "pgbench_tellers"];

/// What every scenario shares: the results being filled in and whether to
/// print ibex's per-phase profile as it goes.
pub struct Bench {
    pub results: Results,
    pub print_profiles: bool,
}

impl Bench {
    fn add(&mut self, m: Measure) {
        self.results.add(m);
    }

    /// A fresh cluster with the catalog; the first one also records the
    /// server's version and the settings that bear on the figures.
    fn setup(&mut self) -> Result<Setup> {
        let s = Setup::new();
        if self.results.provenance.postgres.is_none() {
            self.results.provenance.postgres = Some(s.cluster.psql("postgres", "SHOW server_version")?);
            for setting in ["fsync", "synchronous_commit", "shared_buffers", "max_wal_size"] {
                let value = s.cluster.psql("postgres", &format!("SHOW {setting}"))?;
                self.results.provenance.postgres_settings.push((setting.to_string(), value));
            }
        }
        Ok(s)
    }

    /// Installs Bucardo into the scenario's cluster; its version is read
    /// only now, after the package is surely there.
    fn bucardo(&mut self, s: &Setup) -> Result<Bucardo> {
        let b = Bucardo::install(&s.cluster)?;
        if self.results.provenance.bucardo.is_none() {
            self.results.provenance.bucardo = Some(bucardo_version()?);
        }
        Ok(b)
    }

    /// Keeps (and with --profile prints) the phases of ibex's runs of `sync`.
    fn profile(&mut self, s: &Setup, scenario: &str, label: &str, sync: &str) -> Result<()> {
        let p = profile::collect(&s.cluster, scenario, label, sync)?;
        if self.print_profiles {
            eprint!("{}", p.text());
        }
        self.results.profiles.push(p);
        Ok(())
    }
}

fn scale_for(rows: u64) -> u32 {
    rows.div_ceil(100_000).max(1) as u32
}

/// `pgbench ARGS` on each db at once.
fn pgbench_all(cluster: &Cluster, dbs: &[&str], args: &[&str]) -> Result<()> {
    let children: Vec<_> = dbs
        .iter()
        .map(|db| {
            Command::new("pgbench")
                .args(["-h", "127.0.0.1", "-U", "postgres", "-p", &cluster.port().to_string()])
                .args(args)
                .arg(db)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
        })
        .collect::<std::io::Result<_>>()?;
    for mut child in children {
        if !child.wait()?.success() {
            bail!("pgbench {} failed", args.join(" "));
        }
    }
    Ok(())
}

fn same(s: &Setup, dbs: &[&str], tables: &[&str]) -> Result<bool> {
    for t in tables {
        let first = s.cluster.table_hash(dbs[0], t)?;
        for db in &dbs[1..] {
            if s.cluster.table_hash(db, t)? != first {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

fn check_same(s: &Setup, engine: &str, dbs: &[&str], tables: &[&str]) -> Result<()> {
    if !same(s, dbs, tables)? {
        bail!("{engine}: the databases differ after the run");
    }
    Ok(())
}

/// The duration of the newest ibex run, by the catalog (as Bucardo's syncrun).
fn last_ibex_run(s: &Setup) -> Result<f64> {
    s.cluster
        .psql("ibex", "SELECT extract(epoch FROM ended_at - started_at) FROM ibex.run ORDER BY id DESC LIMIT 1")?
        .trim()
        .parse()
        .context("reading the last run")
}

fn ibex_dbs(s: &Setup, template: &str, names: &[&str]) {
    s.dbs_from(template, names);
}

fn bucardo_dbs(s: &Setup, b: &Bucardo, template: &str, names: &[&str]) -> Result<()> {
    for name in names {
        s.cluster.clone_db(template, name)?;
        b.add_db(name, name)?;
    }
    Ok(())
}

/// `psql -c "COPY (...) TO STDOUT" | psql -c "COPY ... FROM STDIN"`, binary.
fn raw_pipe(cluster: &Cluster, from_db: &str, out_sql: &str, to_db: &str, in_sql: &str) -> Result<Duration> {
    let port = cluster.port().to_string();
    let psql = |db: &str, sql: &str| {
        let mut c = Command::new("psql");
        c.args(["-X", "-q", "-h", "127.0.0.1", "-U", "postgres", "-p", &port, "-d", db, "-c", sql]);
        c
    };
    let (_, wall) = timed(|| {
        let mut reader = psql(from_db, out_sql).stdout(Stdio::piped()).spawn()?;
        let out = reader.stdout.take().context("no stdout")?;
        let writer = psql(to_db, in_sql).stdin(out).output()?;
        if !reader.wait()?.success() || !writer.status.success() {
            bail!("raw COPY pipe failed: {}", String::from_utf8_lossy(&writer.stderr));
        }
        Ok(())
    })?;
    Ok(wall)
}

/// Scenario 1: The seed tutorial: five pgbench databases, four sources and a
/// target, pgbench on every source, one kick: time to converge, each engine
/// timed by its own run record.
pub fn tutorial(bench: &mut Bench, transactions: u64) -> Result<()> {
    eprintln!("== seed tutorial: 4 sources + 1 target, pgbench -n -t {transactions} on each source");
    let s = bench.setup()?;
    s.cluster.create_pgbench_db("tmpl", 1)?;
    let t = transactions.to_string();
    let ibex_names = ["i1", "i2", "i3", "i4", "i5"];
    ibex_dbs(&s, "tmpl", &ibex_names);
    s.ibex.sh("add all tables db=i1 herd=therd");
    s.ibex.sh("add sync foobar herd=therd dbs=i1:source,i2:source,i3:source,i4:source,i5:target autokick=false").ok();
    // A running daemon, as Bucardo's is: connections open, tables checked.
    let mut daemon = Daemon::configure(&s.ibex)?;
    daemon.start()?;
    pgbench_all(&s.cluster, &ibex_names[..4], &["-n", "-t", &t])?;
    if !daemon.run(&["kick", "foobar", "--wait", "1800"]).success() {
        bail!("ibex: the tutorial run failed:\n{}", daemon.log());
    }
    drop(daemon);
    let ibex_time = last_ibex_run(&s)?;
    check_same(&s, "ibex", &ibex_names, PGBENCH_TABLES)?;
    bench.profile(&s, "tutorial", "the converging run", "foobar")?;

    let b = bench.bucardo(&s)?;
    let names = ["b1", "b2", "b3", "b4", "b5"];
    bucardo_dbs(&s, &b, "tmpl", &names)?;
    b.cmd(&["add", "table", "pgbench_accounts", "pgbench_branches", "pgbench_tellers", "db=b1", "relgroup=therd"])?;
    b.cmd(&["add", "dbgroup", "tgroup", "b1:source", "b2:source", "b3:source", "b4:source", "b5:target"])?;
    b.cmd(&["add", "sync", "foobar", "relgroup=therd", "dbs=tgroup", "autokick=0"])?;
    b.start()?;
    pgbench_all(&s.cluster, &names[..4], &["-n", "-t", &t])?;
    let bucardo_time = b.kick_and_wait(&s.cluster, "foobar", Duration::from_secs(1800))?;
    b.stop();
    if bucardo_time.is_some() {
        check_same(&s, "Bucardo", &names, PGBENCH_TABLES)?;
    }
    bench.add(
        Measure::new(
            "tutorial",
            "seed tutorial",
            format!("converge after 4 x {transactions} txns"),
            "s",
            Better::Lower,
        )
        .ibex(Figure::of(ibex_time))
        .bucardo(Figure::or_missing(bucardo_time.map(|d| d.as_secs_f64()), "its run did not end in 1800 s"))
        .reference(Figure::missing("no raw reference: the goal is stated against Bucardo"), "")
        .goal(Goal::BucardoAtMost(0.2), "<= 1/5 of Bucardo's time"),
    );
    Ok(())
}

/// Scenarios 2 and 7: one-way apply of `rows` changed rows: rows/s against the raw
/// pipe, and each engine's peak RSS, again at `rss_rows`.
pub fn bulk(bench: &mut Bench, rows: u64, rss_rows: u64) -> Result<()> {
    for (id, size) in [("memory_rows", rows), ("memory_rss_rows", rss_rows)] {
        eprintln!("== bulk one-way: {size} changed rows");
        let s = bench.setup()?;
        s.cluster.create_pgbench_db("tmpl", scale_for(size))?;
        // ibex
        ibex_dbs(&s, "tmpl", &["isrc", "idst"]);
        s.ibex.sh("add table pgbench_accounts db=isrc herd=h").ok();
        s.ibex.sh("add sync bulk herd=h dbs=isrc:source,idst:target autokick=false").ok();
        s.sql("isrc", &format!("UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid <= {size}"));
        s.sql("isrc", "VACUUM ANALYZE");
        s.sql("idst", "VACUUM ANALYZE");
        let cost = run_measured(s.ibex.command(&["sync", "run", "bulk"]))?;
        let ibex_secs = last_ibex_run(&s)?;
        check_same(&s, "ibex", &["isrc", "idst"], &["pgbench_accounts"])?;
        bench.profile(&s, "bulk", &format!("{size} changed rows"), "bulk")?;
        // Bucardo
        let b = bench.bucardo(&s)?;
        bucardo_dbs(&s, &b, "tmpl", &["bsrc", "bdst"])?;
        b.cmd(&["add", "table", "pgbench_accounts", "db=bsrc", "relgroup=h"])?;
        b.cmd(&["add", "sync", "bulk", "relgroup=h", "dbs=bsrc:source,bdst:target", "autokick=0"])?;
        s.sql("bsrc", &format!("UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid <= {size}"));
        s.sql("bsrc", "VACUUM ANALYZE");
        s.sql("bdst", "VACUUM ANALYZE");
        b.start()?;
        let sampler = RssSampler::start(b.home());
        let bucardo_time = b.kick_and_wait(&s.cluster, "bulk", Duration::from_secs(3600))?;
        let (bucardo_rss, processes) = sampler.finish();
        eprintln!("  Bucardo: up to {processes} processes in one RSS sample");
        b.stop();
        if bucardo_time.is_some() {
            check_same(&s, "Bucardo", &["bsrc", "bdst"], &["pgbench_accounts"])?;
        }
        let unfinished = "its run did not end in 60 min";
        if id == "memory_rows" {
            s.sql("idst", "CREATE TABLE raw_copy (LIKE pgbench_accounts INCLUDING ALL)");
            let raw = raw_pipe(
                &s.cluster,
                "isrc",
                &format!("COPY (SELECT * FROM pgbench_accounts WHERE aid <= {size}) TO STDOUT WITH (FORMAT binary)"),
                "idst",
                "COPY raw_copy FROM STDIN WITH (FORMAT binary)",
            )?;
            bench.add(
                Measure::new("bulk", "bulk one-way", format!("{size} changed rows applied"), "rows/s", Better::Higher)
                    .ibex(Figure::of(size as f64 / ibex_secs))
                    .bucardo(Figure::or_missing(bucardo_time.map(|d| size as f64 / d.as_secs_f64()), unfinished))
                    .reference(Figure::of(size as f64 / raw.as_secs_f64()), "raw COPY pipe")
                    .goal(Goal::ReferenceAtLeast(0.5), ">= 0.5 of the raw pipe"),
            );
        }
        let bucardo_mib = bucardo_rss as f64 / 1024.0;
        bench.add(
            Measure::new(id, "memory", format!("peak RSS, {size} changed rows"), "MiB", Better::Lower)
                .ibex(Figure::of(cost.peak_rss_kib as f64 / 1024.0))
                .bucardo(match bucardo_time {
                    Some(_) => Figure::of(bucardo_mib),
                    None => Figure::missing(format!("{unfinished} (peak until then {bucardo_mib:.0} MiB)")),
                })
                .reference(Figure::missing("no raw reference: the goal is absolute"), "")
                .goal(Goal::Below(128.0), "< 128 MiB, flat"),
        );
    }
    Ok(())
}

/// Scenario 3: What capture costs the application: a bulk UPDATE and pgbench TPS,
/// with each engine's triggers, against the same without any.
pub fn capture(bench: &mut Bench, rows: u64) -> Result<()> {
    eprintln!("== capture cost: UPDATE of {rows} rows, pgbench TPS");
    let s = bench.setup()?;
    s.cluster.create_pgbench_db("bare", scale_for(rows))?;
    s.dbs_from("bare", &["ib", "ib_sink"]);
    s.ibex.sh("add all tables db=ib herd=h");
    s.ibex.sh("add sync cap herd=h dbs=ib:source,ib_sink:target").ok();
    let b = bench.bucardo(&s)?;
    bucardo_dbs(&s, &b, "bare", &["bu", "bu_sink"])?;
    b.cmd(&["add", "table", "pgbench_accounts", "pgbench_branches", "pgbench_tellers", "db=bu", "relgroup=h"])?;
    b.cmd(&["add", "sync", "cap", "relgroup=h", "dbs=bu:source,bu_sink:target"])?;
    let update = format!("UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid <= {rows}");
    let empty_deltas = |db: &str| -> Result<()> {
        s.cluster.psql(
            db,
            "DO $$ DECLARE t text; BEGIN
               FOR t IN SELECT format('%I.%I', schemaname, tablename) FROM pg_tables
                         WHERE (schemaname = 'ibex' AND tablename LIKE 'delta%')
                            OR (schemaname = 'bucardo' AND (tablename LIKE 'delta%' OR tablename LIKE 'track%')) LOOP
                 EXECUTE 'TRUNCATE ' || t;
               END LOOP; END $$",
        )?;
        Ok(())
    };
    let mut times: [Vec<f64>; 3] = Default::default();
    for _ in 0..3 {
        for (i, db) in ["bare", "ib", "bu"].into_iter().enumerate() {
            empty_deltas(db)?;
            s.sql(db, "VACUUM ANALYZE pgbench_accounts");
            let (_, t) = timed(|| Ok(s.sql(db, &update)))?;
            times[i].push(t.as_secs_f64());
        }
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        percentile(&v, 0.5)
    };
    let [bare, ib, bu] = times;
    let no_median = "no timing";
    bench.add(
        Measure::new(
            "capture_update",
            "capture cost",
            format!("UPDATE of {rows} rows (median of 3)"),
            "s",
            Better::Lower,
        )
        .ibex(Figure::or_missing(median(ib), no_median))
        .bucardo(Figure::or_missing(median(bu), no_median))
        .reference(Figure::or_missing(median(bare), no_median), "no triggers")
        .goal(Goal::ReferenceAtMost(1.3), "<= 1.3x of no triggers"),
    );
    let tps = |db: &str| -> Result<f64> {
        empty_deltas(db)?;
        let out = s.cluster.pgbench(db, &["-n", "-c", "2", "-j", "2", "-T", "20"])?;
        out.lines()
            .find(|l| l.starts_with("tps"))
            .and_then(|l| l.split_whitespace().nth(2))
            .and_then(|v| v.parse().ok())
            .context("no tps in pgbench output")
    };
    let (bare_tps, ib_tps, bu_tps) = (tps("bare")?, tps("ib")?, tps("bu")?);
    bench.add(
        Measure::new("capture_tps", "capture cost", "pgbench TPS (-c 2 -j 2 -T 20)", "tps", Better::Higher)
            .ibex(Figure::of(ib_tps))
            .bucardo(Figure::of(bu_tps))
            .reference(Figure::of(bare_tps), "no triggers")
            .goal(Goal::ReferenceAtLeast(0.9), ">= 0.9 of no triggers"),
    );
    Ok(())
}

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
        let roles = |names: &[&str]| -> String {
            names
                .iter()
                .enumerate()
                .map(|(i, n)| format!("{n}:{}", if i < masters { "source" } else { "target" }))
                .collect::<Vec<_>>()
                .join(",")
        };
        // ibex
        let inames = ["l1", "l2", "l3"];
        ibex_dbs(&s, "tmpl", &inames);
        s.ibex.sh("add all tables db=l1 herd=h");
        s.ibex.run(&["add", "sync", "lat", "herd=h", &format!("dbs={}", roles(&inames))]).ok();
        let mut daemon = Daemon::configure(&s.ibex)?;
        daemon.start()?;
        let loads = steady_load(&s.cluster, &inames[..masters])?;
        let ibex_ms = runtime.block_on(marks(&s.cluster, &inames, masters, samples));
        stop_load(loads);
        drop(daemon);
        let (ibex_ms, ibex_lost) = ibex_ms?;
        let ibex_missing = ibex_lost.map(|l| format!("mark {} never arrived on {} within 60 s", l.id, l.db));
        bench.profile(&s, "latency", &format!("{label}, every run under load"), "lat")?;
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
        let members: Vec<String> = roles(&bnames).split(',').map(str::to_string).collect();
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
            let mut m = Measure::new(
                &format!("latency_{key}_{name}"),
                "autokick latency",
                format!("{label} {name} ({samples} marks, 100 tps pgbench per master)"),
                "ms",
                Better::Lower,
            )
            .ibex(figure(&ibex_ms, &ibex_missing))
            .bucardo(figure(&bucardo_ms, &bucardo_missing))
            .reference(Figure::missing("no raw reference: the goal is absolute"), "");
            if let Some(limit) = goal {
                m = m.goal(Goal::Below(limit), &goal_text);
            }
            bench.add(m);
        }
    }
    Ok(())
}

/// Scenario 5: Catch-up: pgbench runs while the engine is stopped; then it
/// starts. Both engines get the same backlog (ibex's is made for `seconds`,
/// Bucardo's is the same number of transactions) and the same clock: from
/// just before the engine's start command to the first comparison that
/// finds the target equal to the source.
pub fn catchup(bench: &mut Bench, seconds: u64, cap: Duration) -> Result<()> {
    eprintln!("== catch-up after {seconds} s of pgbench with the engine stopped");
    let s = bench.setup()?;
    s.cluster.create_pgbench_db("tmpl", 1)?;
    let wait_same = |src: &str, dst: &str, started: Instant| -> Result<Option<f64>> {
        loop {
            let checked_at = started.elapsed();
            if same(&s, &[src, dst], PGBENCH_TABLES)? {
                return Ok(Some(checked_at.as_secs_f64()));
            }
            if started.elapsed() > cap {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    ibex_dbs(&s, "tmpl", &["csrc", "cdst"]);
    s.ibex.sh("add all tables db=csrc herd=h");
    s.ibex.sh("add sync c herd=h dbs=csrc:source,cdst:target").ok();
    pgbench_all(&s.cluster, &["csrc"], &["-n", "-c", "2", "-T", &seconds.to_string()])?;
    let backlog: u64 = s.sql("csrc", "SELECT count(*) FROM pgbench_history").parse().context("counting the backlog")?;
    let mut daemon = Daemon::configure(&s.ibex)?;
    let started = Instant::now();
    daemon.start()?;
    let ibex_time = wait_same("csrc", "cdst", started)?;
    drop(daemon);
    bench.profile(&s, "catchup", &format!("catching up {backlog} txns"), "c")?;
    let b = bench.bucardo(&s)?;
    bucardo_dbs(&s, &b, "tmpl", &["bsrc", "bdst"])?;
    b.cmd(&["add", "table", "pgbench_accounts", "pgbench_branches", "pgbench_tellers", "db=bsrc", "relgroup=h"])?;
    b.cmd(&["add", "sync", "c", "relgroup=h", "dbs=bsrc:source,bdst:target"])?;
    let per_client = (backlog / 2).max(1).to_string();
    pgbench_all(&s.cluster, &["bsrc"], &["-n", "-c", "2", "-t", &per_client])?;
    let started = Instant::now();
    b.launch()?;
    let bucardo_time = wait_same("bsrc", "bdst", started)?;
    b.stop();
    let capped = |engine: &str| format!("{engine} had not caught up after {} s", cap.as_secs());
    bench.add(
        Measure::new(
            "catchup",
            "catch-up",
            format!("{backlog} pgbench txns made while stopped, start to equal"),
            "s",
            Better::Lower,
        )
        .ibex(Figure::or_missing(ibex_time, capped("ibex")))
        .bucardo(Figure::or_missing(bucardo_time, capped("Bucardo")))
        .reference(Figure::missing("no raw reference: the goal is absolute"), "")
        .goal(Goal::Below(60.0), "seconds, not minutes (< 60 s)"),
    );
    Ok(())
}

/// Scenario 6: Initial copy: onetimecopy of `rows` rows into an empty target.
pub fn initial_copy(bench: &mut Bench, rows: u64) -> Result<()> {
    eprintln!("== onetimecopy of pgbench_accounts (at least {rows} rows) into an empty target");
    let s = bench.setup()?;
    s.cluster.create_pgbench_db("tmpl", scale_for(rows))?;
    s.cluster.clone_db("tmpl", "empty")?;
    s.sql("empty", "TRUNCATE pgbench_accounts, pgbench_branches, pgbench_tellers, pgbench_history");
    ibex_dbs(&s, "tmpl", &["osrc"]);
    s.cluster.clone_db("empty", "odst")?;
    s.add_db("odst", "odst").ok();
    s.ibex.sh("add table pgbench_accounts db=osrc herd=h").ok();
    s.ibex.sh("add sync otc herd=h dbs=osrc:source,odst:target onetimecopy=1 autokick=false").ok();
    // The whole table is copied: pgbench's scale rounds `rows` up.
    let rows: u64 = s.sql("osrc", "SELECT count(*) FROM pgbench_accounts").parse().context("counting the rows")?;
    run_measured(s.ibex.command(&["sync", "run", "otc"]))?;
    let ibex_secs = last_ibex_run(&s)?;
    check_same(&s, "ibex", &["osrc", "odst"], &["pgbench_accounts"])?;
    bench.profile(&s, "copy", &format!("onetimecopy of {rows} rows"), "otc")?;
    let b = bench.bucardo(&s)?;
    bucardo_dbs(&s, &b, "tmpl", &["psrc"])?;
    s.cluster.clone_db("empty", "pdst")?;
    b.add_db("pdst", "pdst")?;
    b.cmd(&["add", "table", "pgbench_accounts", "db=psrc", "relgroup=h"])?;
    b.cmd(&["add", "sync", "otc", "relgroup=h", "dbs=psrc:source,pdst:target", "onetimecopy=1", "autokick=0"])?;
    b.start()?;
    let bucardo_time = b.kick_and_wait(&s.cluster, "otc", Duration::from_secs(1800))?;
    b.stop();
    if bucardo_time.is_some() {
        check_same(&s, "Bucardo", &["psrc", "pdst"], &["pgbench_accounts"])?;
    }
    s.cluster.clone_db("empty", "rawdst")?;
    let raw = raw_pipe(
        &s.cluster,
        "osrc",
        "COPY pgbench_accounts TO STDOUT WITH (FORMAT binary)",
        "rawdst",
        "COPY pgbench_accounts FROM STDIN WITH (FORMAT binary)",
    )?;
    bench.add(
        Measure::new("onetimecopy", "initial copy", format!("onetimecopy of {rows} rows"), "rows/s", Better::Higher)
            .ibex(Figure::of(rows as f64 / ibex_secs))
            .bucardo(Figure::or_missing(
                bucardo_time.map(|d| rows as f64 / d.as_secs_f64()),
                "its run did not end in 1800 s",
            ))
            .reference(Figure::of(rows as f64 / raw.as_secs_f64()), "raw COPY pipe")
            .goal(Goal::ReferenceAtLeast(0.8), ">= 0.8 of the raw pipe"),
    );
    Ok(())
}

/// One cycle with `keys` conflicting keys: the latest-wins plugin (the same
/// rule as a WebAssembly component) held against the built-in `latest`,
/// which is this row's reference.
pub fn plugin(bench: &mut Bench, keys: u64) -> Result<()> {
    eprintln!("== conflicts: {keys} keys changed on two masters, built-in latest vs plugin");
    let wasm = ibex_tests::plugins::official("latest-wins")?;
    let wasm = wasm.to_str().context("the plugin's path is not UTF-8")?.to_string();
    let mut times = Vec::new();
    // The plugin gets no rows (it needs none), then every version's row.
    for (strategy, rows) in [("latest", "rows=false"), ("plugin:lw", "rows=false"), ("plugin:lw", "rows=true")] {
        let s = bench.setup()?;
        s.cluster.create_db("c1")?;
        s.sql(
            "c1",
            &format!("CREATE TABLE acct (id int PRIMARY KEY, note text, n int); INSERT INTO acct SELECT i, 'x', 0 FROM generate_series(1, {keys}) i"),
        );
        s.dbs_from("c1", &["c1", "c2"]);
        s.ibex.sh("add table acct db=c1 herd=h").ok();
        s.ibex.run(&["add", "plugin", "lw", &wasm, rows]).ok();
        s.ibex
            .run(&[
                "add",
                "sync",
                "mm",
                "herd=h",
                "dbs=c1:source,c2:source",
                "autokick=false",
                &format!("conflict_strategy={strategy}"),
            ])
            .ok();
        // A running daemon: the plugin is loaded and the tables checked
        // by its first run, as in production.
        let mut daemon = Daemon::configure(&s.ibex)?;
        daemon.start()?;
        s.sql("c1", "UPDATE acct SET note = 'c1', n = 1");
        s.sql("c2", "UPDATE acct SET note = 'c2', n = 2");
        if !daemon.run(&["kick", "mm", "--wait", "600"]).success() {
            bail!("ibex: the conflict run failed:\n{}", daemon.log());
        }
        drop(daemon);
        check_same(&s, "ibex", &["c1", "c2"], &["acct"])?;
        let conflicts = s.sql("ibex", "SELECT conflicts FROM ibex.run ORDER BY id DESC LIMIT 1");
        if conflicts != keys.to_string() {
            bail!("expected {keys} conflicts, the run counted {conflicts}");
        }
        times.push(last_ibex_run(&s)?);
        bench.profile(&s, "plugin", &format!("{strategy}, {rows}"), "mm")?;
    }
    for (i, id, label) in [(1, "plugin_rows_false", "plugin, rows=false"), (2, "plugin_rows_true", "plugin, with rows")]
    {
        bench.add(
            Measure::new(id, "WebAssembly plugin", format!("cycle with {keys} conflicts, {label}"), "s", Better::Lower)
                .ibex(Figure::of(times[i]))
                .bucardo(Figure::missing("Bucardo has no WebAssembly plugins (its conflict code is Perl)"))
                .reference(Figure::of(times[0]), "built-in latest")
                .goal(Goal::ReferenceAtMost(1.3), "<= 1.3x of built-in"),
        );
    }
    Ok(())
}
