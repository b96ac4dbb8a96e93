//! The scenarios. Each builds its own databases on one throwaway cluster.

use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use ibex_tests::{Cluster, Setup};

use crate::measure::{Report, machine, run_measured, timed};

fn setup(report: &mut Report) -> Result<Setup> {
    let s = Setup::new();
    if report.machine.is_empty() {
        report.machine = machine();
        report.postgres = s.cluster.psql("postgres", "SHOW server_version")?;
    }
    Ok(s)
}

fn scale_for(rows: u64) -> u64 {
    rows.div_ceil(100_000).max(1)
}

/// `psql -c "COPY (...) TO STDOUT" | psql -c "COPY ... FROM STDIN"`, binary.
fn raw_pipe(cluster: &Cluster, from_db: &str, out_sql: &str, to_db: &str, in_sql: &str) -> Result<std::time::Duration> {
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

/// One-way apply of `rows` changed rows against a raw COPY pipe of the
/// same rows; then the KID's peak RSS at `rss_rows` changed rows.
pub fn bulk(report: &mut Report, rows: u64, rss_rows: u64) -> Result<()> {
    eprintln!("== bulk one-way: {rows} changed rows");
    let mut rss = Vec::new();
    for (n, size) in [rows, rss_rows].into_iter().enumerate() {
        let s = setup(report)?;
        let scale = scale_for(size);
        s.cluster.create_pgbench_db("bsrc", scale as u32)?;
        s.dbs_from("bsrc", &["bsrc", "bdst"]);
        s.ibex.sh("add table pgbench_accounts db=bsrc herd=h").ok();
        s.ibex.sh("add sync bulk herd=h dbs=bsrc:source,bdst:target autokick=false").ok();
        s.sql("bsrc", &format!("UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid <= {size}"));
        s.sql("bsrc", "VACUUM ANALYZE");
        s.sql("bdst", "VACUUM ANALYZE");
        let cost = run_measured(s.ibex.command(&["sync", "run", "bulk"]))?;
        s.assert_same(&["bsrc", "bdst"], &["pgbench_accounts"]);
        rss.push((size, cost.peak_rss_kib));
        if n == 0 {
            s.sql("bdst", "CREATE TABLE raw_copy (LIKE pgbench_accounts INCLUDING ALL)");
            let raw = raw_pipe(
                &s.cluster,
                "bsrc",
                &format!("COPY (SELECT * FROM pgbench_accounts WHERE aid <= {size}) TO STDOUT WITH (FORMAT binary)"),
                "bdst",
                "COPY raw_copy FROM STDIN WITH (FORMAT binary)",
            )?;
            let ibex_rate = size as f64 / cost.wall.as_secs_f64();
            let raw_rate = size as f64 / raw.as_secs_f64();
            report.add(
                "bulk one-way",
                &format!("{size} changed rows applied"),
                ibex_rate,
                Some((raw_rate, "raw COPY pipe")),
                "rows/s",
                ">= 0.5 of raw",
            );
        }
    }
    for (size, kib) in rss {
        report.add(
            "bulk one-way",
            &format!("KID peak RSS at {size} rows"),
            kib as f64 / 1024.0,
            None,
            "MiB",
            "< 128 MiB, flat",
        );
    }
    Ok(())
}

/// The cost of capture on the source: a bulk UPDATE, and pgbench TPS,
/// each with ibex's triggers against the same without.
pub fn capture(report: &mut Report, rows: u64) -> Result<()> {
    eprintln!("== capture cost: UPDATE of {rows} rows and pgbench TPS");
    let s = setup(report)?;
    let scale = scale_for(rows);
    s.cluster.create_pgbench_db("bare", scale as u32)?;
    s.dbs_from("bare", &["bare", "captured", "sink"]);
    s.ibex.sh("add all tables db=captured herd=h").ok();
    s.ibex.sh("add sync cap herd=h dbs=captured:source,sink:target autokick=true").ok();
    let update = format!("UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid <= {rows}");
    let mut bare = Vec::new();
    let mut captured = Vec::new();
    for _ in 0..3 {
        for (db, out) in [("bare", &mut bare), ("captured", &mut captured)] {
            s.sql(db, "VACUUM ANALYZE pgbench_accounts");
            let (_, t) = timed(|| Ok(s.sql(db, &update)))?;
            out.push(t.as_secs_f64());
        }
        // Keep the delta table from growing between rounds (VAC's job in the daemon).
        let delta = s.sql("captured", "SELECT delta_table FROM ibex.captured WHERE rel_name = 'pgbench_accounts'");
        s.sql("captured", &format!("TRUNCATE ibex.\"{delta}\""));
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    report.add(
        "capture cost",
        &format!("UPDATE of {rows} rows"),
        median(&mut captured),
        Some((median(&mut bare), "no triggers")),
        "s",
        "<= 1.3x",
    );
    let tps = |db: &str| -> Result<f64> {
        let out = s.cluster.pgbench(db, &["-n", "-c", "2", "-j", "2", "-T", "15"])?;
        out.lines()
            .find(|l| l.starts_with("tps"))
            .and_then(|l| l.split_whitespace().nth(2))
            .and_then(|v| v.parse().ok())
            .context("no tps in pgbench output")
    };
    let bare_tps = tps("bare")?;
    let captured_tps = tps("captured")?;
    report.add(
        "capture cost",
        "pgbench TPS (-c 2 -j 2)",
        captured_tps,
        Some((bare_tps, "no triggers")),
        "tps",
        ">= 0.9x",
    );
    Ok(())
}

/// Autokick latency under a steady pgbench load: commit on a source to
/// visible on every other db, one-way and 3-master, with the daemon.
pub fn latency(report: &mut Report, samples: u64) -> Result<()> {
    for masters in [1usize, 3] {
        eprintln!("== autokick latency, {} master{}", masters, if masters == 1 { "" } else { "s" });
        let s = setup(report)?;
        s.cluster.create_pgbench_db("l1", 1)?;
        s.sql("l1", "CREATE TABLE marks (id int PRIMARY KEY, src text)");
        let names = ["l1", "l2", "l3"];
        s.dbs_from("l1", &names);
        s.ibex.sh("add all tables db=l1 herd=h").ok();
        let dbs: Vec<String> = names
            .iter()
            .enumerate()
            .map(|(i, n)| format!("{n}:{}", if i < masters { "source" } else { "target" }))
            .collect();
        s.ibex.run(&["add", "sync", "lat", "herd=h", &format!("dbs={}", dbs.join(","))]).ok();
        let mut daemon = ibex_tests::Daemon::configure(&s.ibex)?;
        daemon.start()?;
        // A steady load on every source: 100 transactions a second each.
        let loads: Vec<_> = names[..masters]
            .iter()
            .map(|db| {
                let mut c = Command::new("pgbench");
                c.args(["-n", "-c", "1", "-R", "100", "-T", "3600", "-h", "127.0.0.1", "-U", "postgres"])
                    .arg("-p")
                    .arg(s.cluster.port().to_string())
                    .arg(db)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null());
                c.spawn()
            })
            .collect::<std::io::Result<_>>()?;
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
        let mut latencies = runtime.block_on(measure_latency(&s.cluster, &names, masters, samples))?;
        for mut load in loads {
            let _ = load.kill();
            let _ = load.wait();
        }
        eprintln!(
            "  runs: {}",
            s.sql("ibex", "SELECT count(*) || ' runs, avg ' || round(avg(extract(epoch FROM ended_at - started_at)) * 1000, 1) || ' ms, avg attempts ' || round(avg(attempts), 2) FROM ibex.run")
        );
        latencies.sort_by(f64::total_cmp);

        let pick = |q: f64| latencies[((latencies.len() as f64 - 1.0) * q).round() as usize];
        let label = if masters == 1 { "one-way" } else { "3-master" };
        for (name, q, goal) in [("p50", 0.5, "< 20 ms"), ("p90", 0.9, ""), ("p99", 0.99, "< 100 ms"), ("max", 1.0, "")]
        {
            report.add("autokick latency", &format!("{label} {name}"), pick(q), None, "ms", goal);
        }
    }
    Ok(())
}

async fn measure_latency(cluster: &Cluster, names: &[&str], masters: usize, samples: u64) -> Result<Vec<f64>> {
    let mut clients = Vec::new();
    for db in names {
        clients.push(cluster.connect(db).await?);
    }
    let mut out = Vec::new();
    for id in 0..samples as i32 {
        let from = id as usize % masters;
        let started = std::time::Instant::now();
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
                if started.elapsed() > std::time::Duration::from_secs(30) {
                    bail!("mark {id} never arrived on {}", names[i]);
                }
                tokio::time::sleep(std::time::Duration::from_micros(500)).await;
            }
        }
        out.push(started.elapsed().as_secs_f64() * 1000.0);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    Ok(out)
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
        s.sql("c1", &format!("CREATE TABLE acct (id int PRIMARY KEY, note text, n int); INSERT INTO acct SELECT i, 'x', 0 FROM generate_series(1, {keys}) i"));
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
        s.sql("c1", "UPDATE acct SET note = 'c1', n = 1");
        s.sql("c2", "UPDATE acct SET note = 'c2', n = 2");
        let cost = run_measured(s.ibex.command(&["sync", "run", "mm"]))?;
        s.assert_same(&["c1", "c2"], &["acct"]);
        let conflicts = s.sql("ibex", "SELECT conflicts FROM ibex.run ORDER BY id DESC LIMIT 1");
        if conflicts != keys.to_string() {
            bail!("expected {keys} conflicts, the run counted {conflicts}");
        }
        times.push(cost.wall.as_secs_f64());
    }
    let batches = keys.div_ceil(1000) as f64;
    for (i, label) in [(1, "plugin, rows=false"), (2, "plugin, with rows")] {
        report.add(
            "conflicts",
            &format!("one cycle, {keys} conflicting keys, {label}"),
            times[i],
            Some((times[0], "built-in latest")),
            "s",
            "<= 1.3x",
        );
        report.add(
            "conflicts",
            &format!("cost per batch of 1000 conflicts, {label}"),
            (times[i] - times[0]) * 1000.0 / batches,
            None,
            "ms",
            "",
        );
    }
    Ok(())
}
