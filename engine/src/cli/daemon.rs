//! `ibex start|stop|restart|reload|ping|kick`: talking to the daemon
//! through the control database (NOTIFY) and its pid file.

use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::{Context, KickArgs, StartArgs, TimeoutArgs, status};
use crate::catalog::{self, Catalog, RunState};
use crate::config::Loaded;
use crate::daemon::{self, DaemonOptions, pidfile};
use crate::error::{Error, PgContext, Result};
use crate::logging::{self, LogFormat, LogLevel};
use crate::pg::listen::{Listener, notify};
use crate::sync::syncdone_channel;

/// Set in the environment of the detached daemon process.
const DETACHED: &str = "IBEX_DETACHED";

fn pid_file(ctx: &Context, loaded: &Loaded) -> PathBuf {
    loaded.toml.pid_file.clone().unwrap_or_else(|| pidfile::default_path(&ctx.control))
}

fn log_file(loaded: &Loaded, pid_file: &std::path::Path) -> Option<PathBuf> {
    loaded.toml.log.file.clone().or_else(|| {
        // A detached daemon has no terminal: log next to the pid file.
        std::env::var_os(DETACHED).map(|_| pid_file.with_extension("log"))
    })
}

/// The daemons serving this catalog (several, for availability): those
/// whose catalog connection is alive, oldest first.
async fn running_daemons(cat: &Catalog) -> Result<Vec<catalog::daemons::DaemonRecord>> {
    catalog::daemons::list(cat.client()).await
}

pub async fn start(ctx: &Context, loaded: &Loaded, args: StartArgs, cli_log_level: Option<&str>) -> Result<ExitCode> {
    let pid_path = pid_file(ctx, loaded);
    if let Some(pid) = pidfile::running(&pid_path).filter(|p| *p != std::process::id()) {
        return Err(Error::Refused(format!("ibex is already running (pid {pid}); stop it with `ibex stop`")));
    }
    let cat = Catalog::open(&ctx.control).await?;
    let others = running_daemons(&cat).await?;
    if !others.is_empty() {
        let shown: Vec<String> = others.iter().map(|d| format!("pid {} on {}", d.pid, d.host)).collect();
        ctx.out.line(format!(
            "Joining {} running daemon(s) of this catalog ({}): each sync is run by the daemon that holds its lease",
            others.len(),
            shown.join(", ")
        ));
    }
    let level_name = match cli_log_level {
        Some(l) => l.to_string(),
        None => catalog::setting::get(cat.client(), "log_level").await?.value,
    };
    drop(cat);
    if args.foreground || std::env::var_os(DETACHED).is_some() {
        let level: LogLevel = level_name.parse()?;
        let format: LogFormat = loaded.toml.log.format.as_deref().unwrap_or("plain").parse()?;
        let log_path = log_file(loaded, &pid_path);
        // The default log lives beside the pid file, in the private state directory.
        if let Some(dir) = log_path.as_deref().and_then(|p| p.parent()).filter(|d| !d.as_os_str().is_empty()) {
            crate::config::prepare_dir(dir)?;
        }
        let handle = logging::init(level, format, log_path.as_deref())?;
        let options = DaemonOptions {
            control: ctx.control.clone(),
            pid_file: pid_path,
            metrics_address: loaded.toml.metrics_address.clone(),
            log_level: Some(handle),
        };
        daemon::run(options).await.inspect_err(|err| tracing::error!(error = %err, "ibex stopped on an error"))?;
        return Ok(ExitCode::SUCCESS);
    }
    // Detach: the same command in the foreground, in its own process group,
    // with no terminal; wait until it is up (or has failed).
    let exe = std::env::current_exe().map_err(|e| Error::Config(format!("cannot find the ibex binary: {e}")))?;
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--foreground")
        .map(|a| if a == "restart" { "start".to_string() } else { a })
        .collect();

    let log_path = log_file(loaded, &pid_path).unwrap_or_else(|| pid_path.with_extension("log"));
    if let Some(dir) = log_path.parent().filter(|d| !d.as_os_str().is_empty()) {
        crate::config::prepare_dir(dir)?;
    }
    let mut command = std::process::Command::new(exe);
    command.args(&args).env(DETACHED, "1").stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let mut child = command.spawn().map_err(|e| Error::Config(format!("cannot start the daemon: {e}")))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().map_err(|e| Error::Config(e.to_string()))? {
            let tail = std::fs::read_to_string(&log_path).unwrap_or_default();
            let last = tail.lines().rev().find(|l| l.contains("ERROR") || l.contains("error")).unwrap_or("").trim();
            return Err(Error::Refused(format!(
                "the daemon exited at start ({status}){}; see {}",
                if last.is_empty() { String::new() } else { format!(": {last}") },
                log_path.display()
            )));
        }
        if pidfile::running(&pid_path) == Some(child.id()) {
            ctx.out.done(format!(
                "Started ibex (pid {}); log: {}; pid file: {}",
                child.id(),
                log_path.display(),
                pid_path.display()
            ));
            return Ok(ExitCode::SUCCESS);
        }
        if Instant::now() > deadline {
            return Err(Error::Refused(format!("the daemon did not come up within 30 s; see {}", log_path.display())));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn stop(ctx: &Context, loaded: &Loaded, args: TimeoutArgs) -> Result<ExitCode> {
    let pid_path = pid_file(ctx, loaded);
    let cat = Catalog::open(&ctx.control).await?;
    let remote = running_daemons(&cat).await?;
    // The pid file's process is signalled only if it is an ibex daemon
    // that this catalog says serves it, on this host.
    let host = crate::config::hostname();
    let local = pidfile::running(&pid_path).filter(|pid| remote.iter().any(|d| d.pid as u32 == *pid && d.host == host));
    if local.is_none() && remote.is_empty() {
        ctx.out.done("ibex is not running");
        return Ok(ExitCode::SUCCESS);
    }
    notify(cat.client(), daemon::STOP, "").await?;
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    loop {
        let local_gone = local.is_none_or(|pid| !pidfile::alive(pid));
        let remote_gone = running_daemons(&cat).await?.is_empty();
        if local_gone && remote_gone {
            let pids: Vec<String> = local
                .map(|p| p.to_string())
                .into_iter()
                .chain(remote.iter().map(|d| d.pid.to_string()))
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            ctx.out.done(match pids.len() {
                0 => "Stopped ibex".into(),
                1 => format!("Stopped ibex (pid {})", pids[0]),
                _ => format!("Stopped {} ibex daemons (pids {})", pids.len(), pids.join(", ")),
            });
            return Ok(ExitCode::SUCCESS);
        }
        if Instant::now() > deadline {
            if let Some(pid) = local.filter(|p| pidfile::alive(*p) && pidfile::is_ibex(*p)) {
                // It did not answer in time: SIGTERM, as `kill` would.
                // SAFETY: kill has no memory preconditions; pid was checked to be ibex.
                if unsafe { libc::kill(pid as i32, libc::SIGTERM) } != 0 {
                    tracing::warn!(pid, error = %std::io::Error::last_os_error(), "cannot send SIGTERM");
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
                if !pidfile::alive(pid) {
                    ctx.out.done(format!("Stopped ibex (pid {pid}) with SIGTERM"));
                    return Ok(ExitCode::SUCCESS);
                }
            }
            return Err(Error::Refused(format!("ibex did not stop within {} s", args.timeout)));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sends `channel` and waits for an answer on `reply` (payload matching if given).
async fn ask(ctx: &Context, channel: &str, reply: &str, token: &str, timeout: Duration) -> Result<Option<String>> {
    let listener = Listener::connect(&ctx.control, "ibex").await?;
    let mut listener = listener;
    listener.listen(reply).await?;
    notify(&listener.client, channel, token).await?;
    let deadline = tokio::time::Instant::now() + timeout;
    // Asked again each second: a notification sent while the daemon is
    // between control connections (it lost one and is listening again)
    // reaches no one. Pings and reloads may be answered twice.
    let mut again = tokio::time::Instant::now() + ASK_AGAIN;
    loop {
        match tokio::time::timeout_at(deadline.min(again), listener.notices.recv()).await {
            Ok(Some(n)) if n.channel == reply && (token.is_empty() || n.payload == token) => {
                return Ok(Some(n.payload));
            }
            Ok(Some(_)) => continue,
            Err(_) if again < deadline => {
                notify(&listener.client, channel, token).await?;
                again += ASK_AGAIN;
            }
            Ok(None) | Err(_) => return Ok(None),
        }
    }
}

/// How long `ask` waits for an answer before it asks again.
const ASK_AGAIN: Duration = Duration::from_secs(1);

pub async fn ping(ctx: &Context, args: TimeoutArgs) -> Result<ExitCode> {
    drop(Catalog::open(&ctx.control).await?);
    let token = format!("{}-{}", std::process::id(), Utc::now().timestamp_micros());
    let started = Instant::now();
    match ask(ctx, daemon::PING, daemon::PONG, &token, Duration::from_secs(args.timeout)).await? {
        Some(_) => {
            ctx.out.done(format!("Pong from ibex in {} ms", started.elapsed().as_millis()));
            Ok(ExitCode::SUCCESS)
        }
        None => {
            ctx.out
                .error(&format!("no response from the daemon within {} s: start it with `ibex start`", args.timeout));
            Ok(ExitCode::FAILURE)
        }
    }
}

pub async fn reload(ctx: &Context, args: TimeoutArgs) -> Result<ExitCode> {
    drop(Catalog::open(&ctx.control).await?);
    match ask(ctx, daemon::RELOAD, daemon::RELOADED, "", Duration::from_secs(args.timeout)).await? {
        Some(summary) => {
            ctx.out.done(format!("Reloaded: {summary}"));
            Ok(ExitCode::SUCCESS)
        }
        None => {
            ctx.out.error(&format!("no response from the daemon within {} s: is it running?", args.timeout));
            Ok(ExitCode::FAILURE)
        }
    }
}

pub async fn kick(ctx: &Context, args: KickArgs) -> Result<ExitCode> {
    let cat = Catalog::open(&ctx.control).await?;
    for sync in &args.syncs {
        let record = catalog::sync::get(cat.client(), sync).await?;
        if record.params.status != "active" {
            return Err(Error::Refused(format!("sync {sync} is inactive: activate it with `ibex activate {sync}`")));
        }
    }
    if running_daemons(&cat).await?.is_empty() {
        return Err(Error::Refused(
            "ibex is not running: start it with `ibex start`, or run a cycle now with `ibex sync run SYNC`".into(),
        ));
    }
    let Some(wait) = args.wait else {
        for sync in &args.syncs {
            notify(cat.client(), &daemon::kick_channel(sync), "").await?;
            ctx.out.done(format!("Kicked sync {sync}"));
        }
        return Ok(ExitCode::SUCCESS);
    };
    let mut listener = Listener::connect(&ctx.control, "ibex kick").await?;
    for sync in &args.syncs {
        listener.listen(&syncdone_channel(sync)).await?;
    }
    let kicked_at: DateTime<Utc> =
        cat.client().query_one("SELECT now()", &[]).await.ctx(|| "reading the time".into())?.get(0);
    for sync in &args.syncs {
        notify(cat.client(), &daemon::kick_channel(sync), "").await?;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(wait);
    let mut pending: Vec<String> = args.syncs.clone();
    let mut failed = false;
    while !pending.is_empty() {
        let notice = match tokio::time::timeout_at(deadline, listener.notices.recv()).await {
            Ok(Some(n)) => n,
            Ok(None) => return Err(Error::Refused("lost the connection to the control database".into())),
            Err(_) => {
                ctx.out.error(&format!("timed out after {wait} s waiting for sync {}", pending.join(", ")));
                return Ok(ExitCode::FAILURE);
            }
        };
        let Some(sync) = notice.channel.strip_prefix("ibex_syncdone_").map(str::to_string) else { continue };
        let Ok(id) = notice.payload.parse::<i64>() else { continue };
        let run = catalog::runs::get(cat.client(), id).await?;
        // A run that was already going when we kicked does not count.
        if run.started_at < kicked_at || !pending.contains(&sync) {
            continue;
        }
        pending.retain(|s| *s != sync);
        if ctx.out.json {
            ctx.out.print_json(&run);
        } else {
            status::print_run(&ctx.out, &run);
        }
        if run.state != RunState::Good {
            failed = true;
            ctx.out.error(&format!("run of sync {sync} failed: {}", run.error.as_deref().unwrap_or("unknown error")));
        }
    }
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

/// `ibex list daemons`: every live daemon, and the syncs it runs.
pub async fn list(ctx: &Context) -> Result<()> {
    let cat = ctx.catalog().await?;
    let daemons = running_daemons(&cat).await?;
    if ctx.out.json {
        ctx.out.print_json(&daemons);
        return Ok(());
    }
    if daemons.is_empty() {
        ctx.out.line("No daemon is running: start one with `ibex start`");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = daemons
        .iter()
        .map(|d| {
            vec![
                d.id.clone(),
                d.host.clone(),
                d.pid.to_string(),
                d.version.clone(),
                d.started_at.with_timezone(&chrono::Local).format("%b %d %H:%M:%S").to_string(),
                d.syncs.join(" "),
            ]
        })
        .collect();
    ctx.out.table(&["Id", "Host", "Pid", "Version", "Started", "Syncs"], &rows);
    Ok(())
}
