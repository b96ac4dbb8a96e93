//! The real `ibex` daemon in a test: started with its own ibex.toml (pid
//! file, log file, metrics port in a temp dir), stopped on drop.

use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::Ibex;

pub struct Daemon {
    pub ibex: Ibex,
    pub dir: tempfile::TempDir,
    pub metrics_port: u16,
    child: Option<Child>,
}

impl Daemon {
    /// Writes an ibex.toml for this control database and returns a CLI
    /// that uses it. The daemon is not started yet.
    pub fn configure(ibex: &Ibex) -> Result<Daemon> {
        let dir = tempfile::tempdir()?;
        let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let toml = format!(
            "control = \"{}\"\npid_file = \"{}\"\nmetrics_address = \"127.0.0.1:{metrics_port}\"\n[log]\nfile = \"{}\"\n",
            ibex.control,
            dir.path().join("ibex.pid").display(),
            dir.path().join("ibex.log").display()
        );
        std::fs::write(dir.path().join("ibex.toml"), toml)?;
        Ok(Daemon { ibex: ibex.clone(), dir, metrics_port, child: None })
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("ibex.toml")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("ibex.log")).unwrap_or_default()
    }

    /// `ibex --config FILE ARGS...`
    pub fn run(&self, args: &[&str]) -> crate::Outcome {
        let config = self.config_path().display().to_string();
        let mut full = vec!["--config", config.as_str()];
        full.extend_from_slice(args);
        self.ibex.run(&full)
    }

    /// Starts `ibex start --foreground` as a child and waits for a pong.
    pub fn start(&mut self) -> Result<()> {
        let config = self.config_path().display().to_string();
        let child = self
            .ibex
            .command(&["--config", &config, "start", "--foreground"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self.child = Some(child);
        self.wait_until_up()
    }

    pub fn wait_until_up(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!("the daemon exited at start ({status}):\n{}", self.log());
            }
            if self.run(&["ping", "--timeout", "1"]).success() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the daemon did not answer within 30 s:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// kill -9, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits for the child to exit after `ibex stop`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        let Some(child) = self.child.as_mut() else { bail!("no daemon child") };
        loop {
            if let Some(status) = child.try_wait()? {
                self.child = None;
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("the daemon did not exit within {timeout:?}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// GET /metrics.
    pub fn metrics(&self) -> Result<String> {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.metrics_port))?;
        stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")?;
        let mut out = String::new();
        stream.read_to_string(&mut out)?;
        Ok(out)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = std::process::Command::new("kill").arg(child.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
