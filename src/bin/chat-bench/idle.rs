//! Idle connections: how much server memory one authenticated, silent WebSocket costs, in
//! either dialect (a Socket.IO connection is websocket-only and answers Engine.IO's pings).
//!
//! Connections are held by worker processes (`chat-bench idle-worker`), each under the
//! same open-file cap as the server, so a machine whose hard limit allows more than one
//! generator process's worth gets several workers; past 25,000 connections they bind to
//! further loopback source addresses (see `client::source_address`).

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use chat_server::auth::Auth;
use clap::ValueEnum;

use crate::client::{self, Dialect};
use crate::stats::fit_line;
use crate::target::{wait_healthy, Launch, Target};

pub struct IdleResult {
    /// (connections, server RSS minus RSS before any connection, in bytes).
    pub points: Vec<(usize, u64)>,
    pub rss_before: u64,
    /// Fitted bytes per connection, and the line's intercept.
    pub slope: f64,
    pub intercept: f64,
    pub workers: usize,
}

/// One worker process and the connections it holds.
struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    open: usize,
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn run(
    launch: &Launch,
    secret: &str,
    counts: &[usize],
    per_process: usize,
    settle: Duration,
    dialect: Dialect,
    data_dir: std::path::PathBuf,
) -> Result<IdleResult, String> {
    let target = Target::start(launch, Some(data_dir))?;
    wait_healthy(target.addr)?;
    std::thread::sleep(Duration::from_millis(500));
    let rss_before = target.rss_bytes();
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut workers: Vec<Worker> = Vec::new();
    let mut points = Vec::new();
    let mut total = 0usize;
    for &count in counts {
        while total < count {
            if workers.last().is_none_or(|w| w.open >= per_process) {
                workers.push(spawn_worker(&exe, target.addr, secret, total, dialect)?);
            }
            let worker = workers.last_mut().expect("just pushed");
            let k = (count - total).min(per_process - worker.open);
            writeln!(worker.stdin, "open {k}").map_err(|e| e.to_string())?;
            let mut line = String::new();
            worker
                .stdout
                .read_line(&mut line)
                .map_err(|e| e.to_string())?;
            if !line.starts_with("ok ") {
                return Err(format!("idle worker: {}", line.trim()));
            }
            worker.open += k;
            total += k;
        }
        std::thread::sleep(settle);
        let rss = target.rss_bytes();
        points.push((count, rss.saturating_sub(rss_before)));
    }
    let line: Vec<(f64, f64)> = points.iter().map(|&(n, b)| (n as f64, b as f64)).collect();
    let (slope, intercept) = fit_line(&line);
    let workers_used = workers.len();
    drop(workers);
    target.stop();
    Ok(IdleResult {
        points,
        rss_before,
        slope,
        intercept,
        workers: workers_used,
    })
}

fn spawn_worker(
    exe: &std::path::Path,
    addr: SocketAddr,
    secret: &str,
    first: usize,
    dialect: Dialect,
) -> Result<Worker, String> {
    let dialect = dialect.to_possible_value().expect("no variant is skipped");
    let mut child = Command::new(exe)
        .args(["idle-worker", "--addr", &addr.to_string(), "--first"])
        .arg(first.to_string())
        .args(["--dialect", dialect.get_name()])
        .env("CHAT_BENCH_SECRET", secret)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start an idle worker: {e}"))?;
    Ok(Worker {
        stdin: child.stdin.take().expect("piped"),
        stdout: BufReader::new(child.stdout.take().expect("piped")),
        child,
        open: 0,
    })
}

/// The worker process: on each `open K` line, opens K more connections (users from
/// `first` on, source addresses from the same global index) and answers `ok TOTAL`; exits
/// when its input closes. Each connection is held by [`client::hold`], so pings are answered.
pub fn worker(addr: SocketAddr, secret: &str, first: usize, dialect: Dialect) {
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let auth = Auth::new(secret.as_bytes());
    let mut open = 0usize;
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        let Some(k) = line
            .strip_prefix("open ")
            .and_then(|k| k.trim().parse::<usize>().ok())
        else {
            continue;
        };
        let range = first + open..first + open + k;
        let opened = runtime.block_on(client::connect_users(
            &[addr],
            &auth,
            range,
            first + open,
            4096,
            dialect,
        ));
        match opened {
            Ok(conns) => {
                for ws in conns {
                    runtime.spawn(client::hold(ws, dialect));
                }
                open += k;
                println!("ok {open}");
            }
            Err(e) => println!("err {e}"),
        }
    }
}
