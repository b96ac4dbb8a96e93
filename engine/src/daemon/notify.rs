//! systemd's notify protocol (Type=notify): READY, RELOADING, STOPPING,
//! STATUS and the watchdog. Every call is a no-op without NOTIFY_SOCKET, and
//! a failure to notify is logged, never fatal: the daemon's work matters more
//! than telling systemd about it.

use std::time::Duration;

use sd_notify::NotifyState;

fn send(states: &[NotifyState]) {
    if let Err(err) = try_send(states) {
        let what: Vec<String> = states.iter().map(ToString::to_string).collect();
        tracing::warn!(error = %err, states = %what.join(" "), "cannot notify systemd (NOTIFY_SOCKET)");
    }
}

fn try_send(states: &[NotifyState]) -> std::io::Result<()> {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return Ok(());
    }
    sd_notify::notify(states)
}

/// The daemon is up: it is registered in the catalog and has started the syncs it leases.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A reload (SIGHUP, `ibex reload`) begins; `ready` ends it.
pub fn reloading() {
    let mut states = vec![NotifyState::Reloading, NotifyState::Status("reloading the catalog")];
    // systemd matches a reload by this timestamp (required by Type=notify-reload).
    match NotifyState::monotonic_usec_now() {
        Ok(now) => states.push(now),
        Err(err) => tracing::debug!(error = %err, "no monotonic clock for MONOTONIC_USEC"),
    }
    send(&states);
}

pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping: running cycles finish or roll back")]);
}

/// When systemd asks for a watchdog (WatchdogSec= sets WATCHDOG_USEC), pings
/// it at half the interval from a task of the daemon's runtime, so a wedged
/// runtime gets the daemon restarted. Returns the interval, if any.
pub fn spawn_watchdog() -> Option<Duration> {
    std::env::var_os("NOTIFY_SOCKET")?;
    let timeout = sd_notify::watchdog_enabled().filter(|t| !t.is_zero())?;
    let every = timeout / 2;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // A failing socket is reported when it starts and stops failing, not every tick.
        let mut failing = false;
        loop {
            tick.tick().await;
            match try_send(&[NotifyState::Watchdog]) {
                Ok(()) if failing => {
                    failing = false;
                    tracing::info!("the systemd watchdog is reachable again");
                }
                Ok(()) => {}
                Err(err) if !failing => {
                    failing = true;
                    tracing::warn!(error = %err, "cannot notify systemd's watchdog (NOTIFY_SOCKET); systemd may restart ibex");
                }
                Err(_) => {}
            }
        }
    });
    Some(every)
}
