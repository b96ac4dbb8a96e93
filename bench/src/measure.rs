//! Timing: a child process's peak RSS (wait4), a closure's wall time, and
//! percentiles of samples.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// What one child process cost.
#[derive(Debug, Clone, Copy)]
pub struct Cost {
    pub peak_rss_kib: i64,
}

/// Runs a command to completion and measures its peak RSS with wait4(2),
/// so it is this child's own.
pub fn run_measured(mut cmd: Command) -> Result<Cost> {
    let child = cmd.spawn().context("starting a measured command")?;
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: rusage is plain data; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    if waited != pid {
        bail!("wait4 failed for {cmd:?}");
    }
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!("{cmd:?} failed (status {status})");
    }
    Ok(Cost { peak_rss_kib: usage.ru_maxrss })
}

pub fn timed<T>(f: impl FnOnce() -> Result<T>) -> Result<(T, Duration)> {
    let started = Instant::now();
    let value = f()?;
    Ok((value, started.elapsed()))
}

/// The value at quantile `q` (0..=1) of sorted samples.
pub fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    sorted.get(((sorted.len() as f64 - 1.0) * q).round() as usize).copied()
}

/// The median of samples in any order.
pub fn median(samples: &[f64]) -> Option<f64> {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    percentile(&sorted, 0.5)
}
