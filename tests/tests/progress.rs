//! Progress reports of long work when stderr is not a terminal: periodic
//! `progress:` lines in the log (at level normal), and one when done.

use ibex_tests::{Ibex, Setup};

/// The progress lines of `stderr` about `task`.
fn progress_lines<'a>(stderr: &'a str, task: &str) -> Vec<&'a str> {
    stderr.lines().filter(|l| l.contains("progress: ") && l.contains(task)).collect()
}

/// The CLI with progress lines every 10 ms instead of every 5 s (a run of
/// the catch-up test takes well under 100 ms).
fn quick(s: &Setup) -> Ibex {
    let mut ibex = s.ibex.clone();
    ibex.envs.push(("IBEX_PROGRESS_INTERVAL_MS".into(), "10".into()));
    ibex
}

#[test]
fn onetimecopy_and_compare_report_progress_off_a_terminal() {
    let s = Setup::new();
    for db in ["src", "dst"] {
        s.cluster.create_db(db).unwrap();
        s.sql(db, "CREATE TABLE big (id int PRIMARY KEY, payload text)");
        s.add_db(db, db).ok();
    }
    s.sql("src", "INSERT INTO big SELECT i, repeat(md5(i::text), 3) FROM generate_series(1, 300000) i");
    s.ibex.sh("add table big db=src herd=h").ok();
    s.ibex.sh("add sync copy herd=h dbs=src:source,dst:target onetimecopy=1").ok();
    let ibex = quick(&s);

    let run = ibex.sh("--log-level normal sync run copy").ok();
    let lines = progress_lines(&run.stderr, "full copy of public.big");
    let periodic: Vec<&&str> = lines.iter().filter(|l| !l.contains(": done,")).collect();
    assert!(periodic.len() >= 2, "expected two or more progress lines, got:\n{}", run.stderr);
    for line in &periodic {
        assert!(line.contains(" rows/s") && line.contains(" rows"), "no rate in {line:?}");
    }
    assert!(
        lines.iter().any(|l| l.contains(": done, 300,000 rows in ") && l.contains(" rows/s")),
        "no final progress line in:\n{}",
        run.stderr
    );
    assert_eq!(s.sql("dst", "SELECT count(*) FROM big"), "300000");
    s.assert_same(&["src", "dst"], &["big"]);

    // compare: stdout keeps its shape; progress goes to the log only.
    let terse = s.ibex.sh("compare copy").ok();
    assert!(!terse.stderr.contains("progress: "), "progress at level terse:\n{}", terse.stderr);
    let compared = ibex.sh("--log-level normal compare copy").ok();
    assert_eq!(compared.stdout, terse.stdout);
    assert!(compared.stdout.contains("public.big: identical (300000 rows each on 2 dbs)"), "{}", compared.stdout);
    let lines = progress_lines(&compared.stderr, "sync copy: compare");
    assert!(
        lines.iter().any(|l| l.contains(": done, 600,000 rows in ")),
        "no final compare progress line in:\n{}",
        compared.stderr
    );
}

#[test]
fn catch_up_reports_progress_over_its_runs() {
    let s = Setup::new();
    for db in ["src", "dst"] {
        s.cluster.create_db(db).unwrap();
        s.sql(db, "CREATE TABLE big (id int PRIMARY KEY, v text)");
        s.add_db(db, db).ok();
    }
    s.ibex.sh("add table big db=src herd=h").ok();
    s.ibex.sh("add sync cu herd=h dbs=src:source,dst:target").ok();
    // A backlog of 100,000 delta rows in 20 transactions, applied 20,000 a run.
    for part in 0..20 {
        let first = part * 5000 + 1;
        s.sql(
            "src",
            &format!("INSERT INTO big SELECT i, md5(i::text) FROM generate_series({first}, {}) i", first + 4999),
        );
    }
    s.ibex.sh("set window_rows=20000").ok();
    let out = quick(&s).sh("--log-level normal sync run cu").ok();
    let lines = progress_lines(&out.stderr, "sync cu: catching up");
    let periodic: Vec<&&str> = lines.iter().filter(|l| !l.contains(": done,")).collect();
    assert!(periodic.len() >= 2, "expected two or more progress lines, got:\n{}", out.stderr);
    for line in &periodic {
        assert!(line.contains(" of ") && line.contains(" delta rows/s") && line.contains("ETA"), "{line:?}");
    }
    assert!(lines.iter().any(|l| l.contains(": done, 100,000 delta rows in ")), "no final line in:\n{}", out.stderr);
    assert_eq!(s.sql("dst", "SELECT count(*) FROM big"), "100000");
}
