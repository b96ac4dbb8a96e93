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
