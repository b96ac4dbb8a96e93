//! A TCP fault proxy for the tests: sits between ibex and a database and,
//! on command, cuts every connection, stalls them, or black-holes them
//! (new connections go nowhere, open ones stall) until healed.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use anyhow::Result;

const PASS: u8 = 0;
const STALL: u8 = 1;
const BLACKHOLE: u8 = 2;

pub struct FaultProxy {
    pub port: u16,
    mode: Arc<AtomicU8>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

fn pump(mut from: TcpStream, mut to: TcpStream, mode: Arc<AtomicU8>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        // Stalled or black-holed: hold the bytes until healed (or cut).
        while mode.load(Ordering::Relaxed) != PASS {
            thread::sleep(Duration::from_millis(10));
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

impl FaultProxy {
    /// Listens on a free port of 127.0.0.1 and forwards to `upstream`.
    pub fn start(upstream: u16) -> Result<FaultProxy> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let mode = Arc::new(AtomicU8::new(PASS));
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::new(Mutex::new(Vec::new()));
        let (m, o) = (mode.clone(), open.clone());
        thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let (m, o) = (m.clone(), o.clone());
                thread::spawn(move || {
                    // A black hole takes the connection and never answers.
                    while m.load(Ordering::Relaxed) == BLACKHOLE {
                        thread::sleep(Duration::from_millis(10));
                    }
                    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                        let _ = client.shutdown(Shutdown::Both);
                        return;
                    };
                    let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else { return };
                    if let Ok(mut list) = o.lock() {
                        list.retain(|s: &TcpStream| s.peer_addr().is_ok());
                        if let (Ok(a), Ok(b)) = (client.try_clone(), server.try_clone()) {
                            list.push(a);
                            list.push(b);
                        }
                    }
                    let m2 = m.clone();
                    thread::spawn(move || pump(c2, server, m2));
                    pump(s2, client, m);
                });
            }
        });
        Ok(FaultProxy { port, mode, open })
    }

    /// Closes every open connection (new ones work).
    pub fn cut(&self) {
        if let Ok(mut list) = self.open.lock() {
            for s in list.drain(..) {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }

    /// Holds all traffic until healed.
    pub fn stall(&self) {
        self.mode.store(STALL, Ordering::Relaxed);
    }

    /// New connections hang, open ones stall, until healed.
    pub fn blackhole(&self) {
        self.mode.store(BLACKHOLE, Ordering::Relaxed);
    }

    pub fn heal(&self) {
        self.mode.store(PASS, Ordering::Relaxed);
    }
}

/// Every packet to and from a local TCP port dropped by the kernel
/// (iptables, as root): no RST, no ACK, the peer just goes silent, as on a
/// dead network path. The rules go on `heal` or drop (also when the test
/// panics).
pub struct PacketDrop {
    port: u16,
    active: bool,
}

fn iptables(action: &str, port: u16, direction: &str) -> Result<()> {
    let out = std::process::Command::new("iptables")
        .args([action, "INPUT", "-p", "tcp", direction, &port.to_string(), "-j", "DROP"])
        .output()
        .map_err(|e| anyhow::anyhow!("cannot run iptables ({e}): install it (apt-get install iptables)"))?;
    if !out.status.success() {
        anyhow::bail!("iptables {action} ... {direction} {port} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

impl PacketDrop {
    /// Drops every packet whose source or destination port is `port`.
    pub fn start(port: u16) -> Result<PacketDrop> {
        let mut drop = PacketDrop { port, active: true };
        iptables("-A", port, "--dport")?;
        if let Err(e) = iptables("-A", port, "--sport") {
            drop.active = false;
            let _ = iptables("-D", port, "--dport");
            return Err(e);
        }
        Ok(drop)
    }

    /// Lets packets through again.
    pub fn heal(&mut self) -> Result<()> {
        if self.active {
            iptables("-D", self.port, "--dport")?;
            iptables("-D", self.port, "--sport")?;
            self.active = false;
        }
        Ok(())
    }
}

impl Drop for PacketDrop {
    fn drop(&mut self) {
        if self.active {
            let _ = iptables("-D", self.port, "--dport");
            let _ = iptables("-D", self.port, "--sport");
        }
    }
}

/// The kernel's TCP keepalive probing (`net.ipv4.tcp_keepalive_intvl` and
/// `_probes`: what a socket that sets only its idle time, as ibex's do,
/// gets) set for a test and put back on drop.
pub struct KeepaliveProbes {
    saved: Vec<(&'static str, String)>,
}

const KEEPALIVE_KEYS: [&str; 2] = ["/proc/sys/net/ipv4/tcp_keepalive_intvl", "/proc/sys/net/ipv4/tcp_keepalive_probes"];

impl KeepaliveProbes {
    /// Probes every `interval_s` seconds, `probes` unanswered ones kill the connection.
    pub fn set(interval_s: u32, probes: u32) -> Result<KeepaliveProbes> {
        let mut guard = KeepaliveProbes { saved: Vec::new() };
        for (key, value) in KEEPALIVE_KEYS.iter().zip([interval_s, probes]) {
            let old = std::fs::read_to_string(key)?.trim().to_string();
            std::fs::write(key, value.to_string()).map_err(|e| anyhow::anyhow!("writing {key}: {e}"))?;
            guard.saved.push((key, old));
        }
        Ok(guard)
    }
}

impl Drop for KeepaliveProbes {
    fn drop(&mut self) {
        for (key, old) in &self.saved {
            let _ = std::fs::write(key, old);
        }
    }
}
