//! The daemon's status page (`GET /` on the metrics port) rendered by a real
//! headless browser (Debian's chromium), and `/metrics` through the
//! prometheus-client exporter: a sync goes Good, then Bad with an error
//! that holds HTML specials (a table named `x<y&z` dropped on the target),
//! and the page shows both, escaped.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use ibex_tests::{Daemon, Setup};

/// Polls `check` every 100 ms until it holds or `limit` passes.
fn eventually(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let started = Instant::now();
    while !check() {
        assert!(started.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        thread::sleep(Duration::from_millis(100));
    }
}

/// `GET path` on the daemon's metrics port: the whole response.
fn get(d: &Daemon, path: &str) -> String {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", d.metrics_port)).expect("connecting to the daemon");
    write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").expect("sending a request");
    let mut out = String::new();
    stream.read_to_string(&mut out).expect("reading the response");
    out
}

/// The DOM of `url` after load, as headless chromium serializes it.
/// Chromium runs as root in CI, hence --no-sandbox.
fn chromium_dom(url: &str) -> String {
    let profile = tempfile::tempdir().expect("a temp dir for the browser profile");
    let spawned = Command::new("chromium")
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(["--dump-dom", url])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(err) => panic!(
            "cannot start chromium ({err}): the status page test needs a headless browser; \
             install Debian's chromium (scripts/install-deps.sh does, as root)"
        ),
    };
    // Read stdout on a thread so a large DOM cannot block the browser on a full pipe.
    let mut stdout = child.stdout.take().expect("chromium's stdout");
    let reader = thread::spawn(move || {
        let mut out = String::new();
        let _ = stdout.read_to_string(&mut out);
        out
    });
    let deadline = Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for chromium") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not render {url} within 90 s");
        }
        thread::sleep(Duration::from_millis(100));
    };
    let dom = reader.join().expect("reading chromium's output");
    let mut stderr = String::new();
    if let Some(mut err) = child.stderr.take() {
        let _ = err.read_to_string(&mut stderr);
    }
    assert!(status.success() && !dom.is_empty(), "chromium failed ({status}) on {url}:\n{stderr}");
    dom
}

/// Escapes text the way a DOM serializer writes a text node.
fn text_node(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('\u{a0}', "&nbsp;")
}

#[test]
fn status_page_in_a_browser_shows_good_then_bad_escaped_and_metrics_are_exposed() {
    let s = Setup::new();
    s.cluster.create_db("a").unwrap();
    // Sync names are kept plain by the CLI (letters, digits, _ - .), so the
    // HTML specials come in through a table name, which errors quote.
    s.sql("a", r#"CREATE TABLE t (id int PRIMARY KEY, v text); CREATE TABLE "x<y&z" (id int PRIMARY KEY)"#);
    s.dbs_from("a", &["a", "b"]);
    s.ibex.sh("add table t db=a herd=h").ok();
    s.ibex.run(&["add", "table", "x<y&z", "db=a", "herd=h"]).ok();
    s.ibex.sh("add sync to_b herd=h dbs=a:source,b:target").ok();
    // A lag sample every second, so the chart has points soon.
    s.ibex.sh("set vac_interval=1s").ok();
    let mut d = Daemon::configure(&s.ibex).unwrap();
    d.start().unwrap();
    let url = format!("http://127.0.0.1:{}/", d.metrics_port);

    // Good.
    s.sql("a", r#"INSERT INTO t VALUES (1, 'x'); INSERT INTO "x<y&z" VALUES (1)"#);
    eventually(Duration::from_secs(10), "b to get the rows", || {
        s.sql("b", r#"SELECT (SELECT count(*) FROM t) + (SELECT count(*) FROM "x<y&z")"#) == "2"
    });
    eventually(Duration::from_secs(20), "a lag sample on the page", || get(&d, "/").contains("<polyline"));
    let raw = get(&d, "/");
    assert!(raw.starts_with("HTTP/1.1 200 OK") && raw.contains("Content-Type: text/html"), "{raw}");
    assert!(raw.contains(r#"<meta http-equiv="refresh" content="10">"#), "{raw}");
    let dom = chromium_dom(&url);
    assert!(dom.contains("<td class=\"name\">to_b</td>"), "{dom}");
    assert!(dom.contains(">Good<"), "{dom}");
    assert!(dom.contains("<svg") && dom.contains("<polyline"), "{dom}");
    assert!(dom.contains("Last good run") && dom.contains("Conflicts (1 h)"), "{dom}");

    // Bad: the target lost a table; the error names it.
    s.sql("b", r#"DROP TABLE "x<y&z""#);
    s.sql("a", r#"INSERT INTO "x<y&z" VALUES (2)"#);
    eventually(Duration::from_secs(20), "to_b to go Bad", || {
        d.run(&["status", "to_b", "--json"]).ok().json()["status"]["state"] == "Bad"
    });
    eventually(Duration::from_secs(10), "the page to show Bad", || get(&d, "/").contains(">Bad<"));
    // Retries change the error's wording at first (a failed write, then a
    // refused start): compare with the last error the catalog has.
    let mut seen = Vec::new();
    let dom = loop {
        let status = d.run(&["status", "to_b", "--json"]).ok().json();
        let error = status["status"]["last_bad"]["error"].as_str().unwrap_or_default().to_string();
        assert!(error.contains("x<y&z"), "the error should name the table: {error}");
        let dom = chromium_dom(&url);
        if dom.contains(&text_node(&error)) {
            break dom;
        }
        seen.push(format!("escaped error {:?} not in:\n{dom}", text_node(&error)));
        assert!(seen.len() < 5, "{}", seen.join("\n\n"));
    };
    assert!(dom.contains(">Bad<"), "{dom}");
    assert!(dom.contains("x&lt;y&amp;z") && !dom.contains("x<y&z"), "{dom}");
    // The last good run is still shown next to the bad one.
    assert_eq!(dom.matches("class=\"when\"").count(), 2, "{dom}");

    // The metrics, same names as the hand-written exporter had, plus the new histograms.
    let metrics = get(&d, "/metrics");
    assert!(metrics.starts_with("HTTP/1.1 200 OK") && metrics.contains("text/plain; version=0.0.4"), "{metrics}");
    for needle in [
        "# TYPE ibex_runs_total counter",
        "ibex_runs_total{sync=\"to_b\",state=\"good\"}",
        "ibex_runs_total{sync=\"to_b\",state=\"bad\"}",
        "ibex_run_failures_total{sync=\"to_b\"}",
        "ibex_rows_total{sync=\"to_b\",op=\"insert\"}",
        "ibex_rows_total{sync=\"to_b\",op=\"delete\"}",
        "ibex_conflicts_total{sync=\"to_b\"} 0",
        "ibex_sync_good{sync=\"to_b\"} 0",
        "# TYPE ibex_run_duration_seconds histogram",
        "ibex_run_duration_seconds_bucket{sync=\"to_b\",le=\"+Inf\"}",
        "ibex_run_duration_seconds_count{sync=\"to_b\"}",
        "ibex_delta_backlog{sync=\"to_b\",table=\"public.t\"}",
        "ibex_replication_lag_seconds{sync=\"to_b\"}",
        "# TYPE ibex_replication_lag_seconds_histogram histogram",
        "ibex_replication_lag_seconds_histogram_count{sync=\"to_b\"}",
    ] {
        assert!(metrics.contains(needle), "{needle} missing from:\n{metrics}");
    }
    assert!(!metrics.contains("_total_total"), "{metrics}");
    assert!(get(&d, "/nosuch").starts_with("HTTP/1.1 404"));
}
