//! Backups during the latency scenario (`--latency-backups`): what an online backup costs
//! the sends that run beside it.
//!
//! A thread asks the server for one backup after another (`POST /admin/backup`, through
//! the same client as `chat-server backup`) until the run ends, and records how long each
//! took, so the latency figures can be read against how much of the run had a backup
//! running.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chat_server::admin::client;

/// The admin secret the bench gives the servers it starts.
pub const ADMIN_SECRET: &str = "chat-bench-admin-secret";

/// Backups taken back to back until stopped.
pub struct BackupLoop {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Result<Vec<Duration>, String>>,
}

impl BackupLoop {
    pub fn start(addr: SocketAddr) -> BackupLoop {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut took = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    match client::post(addr, "/admin/backup", ADMIN_SECRET) {
                        Ok((200, _)) => took.push(started.elapsed()),
                        Ok((status, body)) => return Err(format!("backup: {status} {body}")),
                        Err(e) => return Err(format!("backup: {e}")),
                    }
                }
                Ok(took)
            })
        };
        BackupLoop { stop, thread }
    }

    /// Stops after the backup under way; how long each backup took.
    pub fn finish(self) -> Result<Vec<Duration>, String> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .map_err(|_| "the backup thread panicked".to_owned())?
    }
}
