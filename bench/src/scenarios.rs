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
use crate::measure::{Better, Measure, Report, machine, run_measured, timed};

const PGBENCH_TABLES: &[&str] = &["pgbench_accounts", "pgbench_branches", "pgbench_tellers"];

fn setup(report: &mut Report) -> Result<Setup> {
    let s = Setup::new();
    if report.machine.is_empty() {
        report.machine = machine();
        report.postgres = s.cluster.psql("postgres", "SHOW server_version")?;
        report.date = String::from_utf8_lossy(&Command::new("date").args(["-u", "+%Y-%m-%d"]).output()?.stdout)
            .trim()
            .to_string();
        let version = |cmd: &mut Command| cmd.output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
        report.bucardo =
            version(Command::new("bucardo").arg("--version")).unwrap_or_else(|_| "bucardo (not installed)".into());
        report.ibex = version(&mut s.ibex.command(&["--version"]))?.replace("ibex ", "");
    }
    Ok(s)
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
/// target, pgbench on every source, one kick: time to converge.
pub fn tutorial(report: &mut Report, transactions: u64) -> Result<()> {
    eprintln!("== seed tutorial: 4 sources + 1 target, pgbench -n -t {transactions} on each source");
    let s = setup(report)?;
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

    let b = Bucardo::install(&s.cluster)?;
    let names = ["b1", "b2", "b3", "b4", "b5"];
    bucardo_dbs(&s, &b, "tmpl", &names)?;
    b.cmd(&["add", "table", "pgbench_accounts", "pgbench_branches", "pgbench_tellers", "db=b1", "relgroup=therd"])?;
    b.cmd(&["add", "dbgroup", "tgroup", "b1:source", "b2:source", "b3:source", "b4:source", "b5:target"])?;
    b.cmd(&["add", "sync", "foobar", "relgroup=therd", "dbs=tgroup", "autokick=0"])?;
    b.start()?;
    pgbench_all(&s.cluster, &names[..4], &["-n", "-t", &t])?;
    let bucardo_time = b.kick_and_wait(&s.cluster, "foobar", Duration::from_secs(1800))?;
    b.stop();
    check_same(&s, "Bucardo", &names, PGBENCH_TABLES)?;
    report.add(
        Measure::new("seed tutorial", format!("converge after 4 x {transactions} txns"), "s", Better::Lower)
            .bucardo(bucardo_time.map(|d| d.as_secs_f64()))
            .ibex(ibex_time)
            .goal("5x faster than Bucardo"),
    );
    Ok(())
}

/// Scenarios 2 and 7: one-way apply of `rows` changed rows: rows/s against the raw
/// pipe, and each engine's peak RSS, again at `rss_rows`.
pub fn bulk(report: &mut Report, rows: u64, rss_rows: u64) -> Result<()> {
    for (n, size) in [rows, rss_rows].into_iter().enumerate() {
        eprintln!("== bulk one-way: {size} changed rows");
        let s = setup(report)?;
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
        // Bucardo
        let b = Bucardo::install(&s.cluster)?;
        bucardo_dbs(&s, &b, "tmpl", &["bsrc", "bdst"])?;
        b.cmd(&["add", "table", "pgbench_accounts", "db=bsrc", "relgroup=h"])?;
        b.cmd(&["add", "sync", "bulk", "relgroup=h", "dbs=bsrc:source,bdst:target", "autokick=0"])?;
        s.sql("bsrc", &format!("UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid <= {size}"));
        s.sql("bsrc", "VACUUM ANALYZE");
        s.sql("bdst", "VACUUM ANALYZE");
        b.start()?;
        let home_pids = {
            let pids = b.pids();
            move || pids.iter().copied().filter(|p| std::path::Path::new(&format!("/proc/{p}")).exists()).collect()
        };
        let sampler = RssSampler::start(home_pids);
        let bucardo_time = b.kick_and_wait(&s.cluster, "bulk", Duration::from_secs(3600))?;
        let bucardo_rss = sampler.finish();
        b.stop();
        if bucardo_time.is_some() {
            check_same(&s, "Bucardo", &["bsrc", "bdst"], &["pgbench_accounts"])?;
        }
        let note = if bucardo_time.is_none() { "did not finish in 60 min" } else { "" };
        if n == 0 {
            s.sql("idst", "CREATE TABLE raw_copy (LIKE pgbench_accounts INCLUDING ALL)");
            let raw = raw_pipe(
                &s.cluster,
                "isrc",
                &format!("COPY (SELECT * FROM pgbench_accounts WHERE aid <= {size}) TO STDOUT WITH (FORMAT binary)"),
                "idst",
                "COPY raw_copy FROM STDIN WITH (FORMAT binary)",
            )?;
            report.add(
                Measure::new("bulk one-way", format!("{size} changed rows applied"), "rows/s", Better::Higher)
                    .bucardo(bucardo_time.map(|d| size as f64 / d.as_secs_f64()))
                    .ibex(size as f64 / ibex_secs)
                    .raw(size as f64 / raw.as_secs_f64())
                    .goal(">= 0.5 of raw")
                    .note(note),
            );
        }
        report.add(
            Measure::new("memory", format!("peak RSS, {size} changed rows"), "MiB", Better::Lower)
                .bucardo(Some(bucardo_rss as f64 / 1024.0))
                .ibex(cost.peak_rss_kib as f64 / 1024.0)
                .goal("< 128 MiB, flat")
                .note(note),
        );
    }
    Ok(())
}

/// Scenario 3: What capture costs the application: a bulk UPDATE and pgbench TPS,
/// with each engine's triggers, against the same without any.
pub fn capture(report: &mut Report, rows: u64) -> Result<()> {
    eprintln!("== capture cost: UPDATE of {rows} rows, pgbench TPS");
    let s = setup(report)?;
    s.cluster.create_pgbench_db("bare", scale_for(rows))?;
    s.dbs_from("bare", &["ib", "ib_sink"]);
    s.ibex.sh("add all tables db=ib herd=h");
    s.ibex.sh("add sync cap herd=h dbs=ib:source,ib_sink:target").ok();
    let b = Bucardo::install(&s.cluster)?;
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
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let [mut bare, mut ib, mut bu] = times;
    report.add(
        Measure::new("capture cost", format!("UPDATE of {rows} rows"), "s", Better::Lower)
            .bucardo(Some(median(&mut bu)))
            .ibex(median(&mut ib))
            .raw(median(&mut bare))
            .goal("<= 1.3x of no triggers"),
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
    report.add(
        Measure::new("capture cost", "pgbench TPS (-c 2 -j 2 -T 20)", "tps", Better::Higher)
            .bucardo(Some(bu_tps))
            .ibex(ib_tps)
            .raw(bare_tps)
            .goal(">= 0.9 of no triggers"),
    );
    Ok(())
}

async fn marks(cluster: &Cluster, names: &[&str], masters: usize, samples: u64) -> Result<Vec<f64>> {
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
                    bail!("mark {id} never arrived on {}", names[i]);
                }
                tokio::time::sleep(Duration::from_micros(500)).await;
            }
        }
        out.push(started.elapsed().as_secs_f64() * 1000.0);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    out.sort_by(f64::total_cmp);
    Ok(out)
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

fn percentile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * q).round() as usize]
}

/// Scenario 4: Autokick latency under a steady pgbench load (100 tps per source):
/// commit on a source to visible on every other db.
pub fn latency(report: &mut Report, samples: u64) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    for masters in [1usize, 3] {
        let label = if masters == 1 { "one-way" } else { "3-master" };
        eprintln!("== autokick latency, {label}");
        let s = setup(report)?;
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
        for mut l in loads {
            let _ = l.kill();
            let _ = l.wait();
        }
        drop(daemon);
        let ibex_ms = ibex_ms?;
        // Bucardo
        let b = Bucardo::install(&s.cluster)?;
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
        let loads = steady_load(&s.cluster, &bnames[..masters])?;
        let bucardo_ms = runtime.block_on(marks(&s.cluster, &bnames, masters, samples));
        for mut l in loads {
            let _ = l.kill();
            let _ = l.wait();
        }
        b.stop();
        let note = match &bucardo_ms {
            Ok(_) => String::new(),
            Err(e) => format!("Bucardo: {e}"),
        };
        let bucardo_ms = bucardo_ms.ok();
        for (name, q, goal) in [("p50", 0.5, "< 20 ms"), ("p90", 0.9, ""), ("p99", 0.99, "< 100 ms"), ("max", 1.0, "")]
        {
            report.add(
                Measure::new("autokick latency", format!("{label} {name}"), "ms", Better::Lower)
                    .bucardo(bucardo_ms.as_ref().map(|v| percentile(v, q)))
                    .ibex(percentile(&ibex_ms, q))
                    .goal(goal)
                    .note(note.clone()),
            );
        }
    }
    Ok(())
}

/// Scenario 5: Catch-up: pgbench runs while the engine is stopped; then it starts:
/// time until the target matches the source.
pub fn catchup(report: &mut Report, seconds: u64, cap: Duration) -> Result<()> {
    eprintln!("== catch-up after {seconds} s of pgbench with the engine stopped");
    let s = setup(report)?;
    s.cluster.create_pgbench_db("tmpl", 1)?;
    let wait_same = |src: &str, dst: &str| -> Result<Option<f64>> {
        let started = Instant::now();
        loop {
            if same(&s, &[src, dst], PGBENCH_TABLES)? {
                return Ok(Some(started.elapsed().as_secs_f64()));
            }
            if started.elapsed() > cap {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let secs = seconds.to_string();
    ibex_dbs(&s, "tmpl", &["csrc", "cdst"]);
    s.ibex.sh("add all tables db=csrc herd=h");
    s.ibex.sh("add sync c herd=h dbs=csrc:source,cdst:target").ok();
    pgbench_all(&s.cluster, &["csrc"], &["-n", "-c", "2", "-T", &secs])?;
    let mut daemon = Daemon::configure(&s.ibex)?;
    daemon.start()?;
    let ibex_time = wait_same("csrc", "cdst")?;
    drop(daemon);
    let b = Bucardo::install(&s.cluster)?;
    bucardo_dbs(&s, &b, "tmpl", &["bsrc", "bdst"])?;
    b.cmd(&["add", "table", "pgbench_accounts", "pgbench_branches", "pgbench_tellers", "db=bsrc", "relgroup=h"])?;
    b.cmd(&["add", "sync", "c", "relgroup=h", "dbs=bsrc:source,bdst:target"])?;
    pgbench_all(&s.cluster, &["bsrc"], &["-n", "-c", "2", "-T", &secs])?;
    b.start()?;
    let bucardo_time = wait_same("bsrc", "bdst")?;
    b.stop();
    let mut m = Measure::new("catch-up", format!("after {seconds} s of pgbench, engine stopped"), "s", Better::Lower)
        .bucardo(bucardo_time)
        .goal("seconds, not minutes");
    if bucardo_time.is_none() {
        m = m.note(format!("not caught up after {} s", cap.as_secs()));
    }
    match ibex_time {
        Some(t) => report.add(m.ibex(t)),
        None => report.add(m.note(format!("ibex not caught up after {} s", cap.as_secs()))),
    }
    Ok(())
}

/// Scenario 6: Initial copy: onetimecopy of `rows` rows into an empty target.
pub fn initial_copy(report: &mut Report, rows: u64) -> Result<()> {
    eprintln!("== onetimecopy of {rows} rows into an empty target");
    let s = setup(report)?;
    s.cluster.create_pgbench_db("tmpl", scale_for(rows))?;
    s.cluster.clone_db("tmpl", "empty")?;
    s.sql("empty", "TRUNCATE pgbench_accounts, pgbench_branches, pgbench_tellers, pgbench_history");
    ibex_dbs(&s, "tmpl", &["osrc"]);
    s.cluster.clone_db("empty", "odst")?;
    s.add_db("odst", "odst").ok();
    s.ibex.sh("add table pgbench_accounts db=osrc herd=h").ok();
    s.ibex.sh("add sync otc herd=h dbs=osrc:source,odst:target onetimecopy=1 autokick=false").ok();
    run_measured(s.ibex.command(&["sync", "run", "otc"]))?;
    let ibex_secs = last_ibex_run(&s)?;
    check_same(&s, "ibex", &["osrc", "odst"], &["pgbench_accounts"])?;
    let b = Bucardo::install(&s.cluster)?;
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
    report.add(
        Measure::new("initial copy", format!("onetimecopy of {rows} rows"), "rows/s", Better::Higher)
            .bucardo(bucardo_time.map(|d| rows as f64 / d.as_secs_f64()))
            .ibex(rows as f64 / ibex_secs)
            .raw(rows as f64 / raw.as_secs_f64())
            .goal(">= 0.8 of raw"),
    );
    Ok(())
}

/// One cycle with `keys` conflicting keys: the built-in `latest` against
/// the latest-wins plugin (the same rule as a WebAssembly component).
pub fn plugin(report: &mut Report, keys: u64) -> Result<()> {
    eprintln!("== conflicts: {keys} keys changed on two masters, built-in latest vs plugin");
    let wasm = ibex_tests::plugins::official("latest-wins")?;
    let mut times = Vec::new();
    // The plugin gets no rows (it needs none), then every version's row.
    for (strategy, rows) in [("latest", "rows=false"), ("plugin:lw", "rows=false"), ("plugin:lw", "rows=true")] {
        let s = setup(report)?;
        s.cluster.create_db("c1")?;
        s.sql(
            "c1",
            &format!("CREATE TABLE acct (id int PRIMARY KEY, note text, n int); INSERT INTO acct SELECT i, 'x', 0 FROM generate_series(1, {keys}) i"),
        );
        s.dbs_from("c1", &["c1", "c2"]);
        s.ibex.sh("add table acct db=c1 herd=h").ok();
        s.ibex.run(&["add", "plugin", "lw", wasm.to_str().unwrap_or_default(), rows]).ok();
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
    }
    for (i, label) in [(1, "plugin, rows=false"), (2, "plugin, with rows")] {
        report.add(
            Measure::new(
                "WebAssembly plugin",
                format!("cycle with {keys} conflicts, {label}, vs built-in latest"),
                "s",
                Better::Lower,
            )
            .ibex(times[i])
            .raw(times[0])
            .goal("<= 1.3x of built-in"),
        );
    }
    Ok(())
}
