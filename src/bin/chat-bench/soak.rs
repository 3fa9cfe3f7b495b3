//! Soak: does the server's memory stay flat under a steady load for a long time?
//!
//! The latency scenario's open-loop load ([`OpenLoop`]) runs at a fixed rate for many
//! minutes while the server's RSS is sampled every few seconds. A share of the users also
//! hold a second connection that never reads (a frozen tab): their queues fill until the
//! server cuts them off as slow consumers (1008), which is the case that made memory grow
//! before there was a bound. They send a WebSocket ping every few seconds so the server's
//! idle timeout cannot cut them first.
//!
//! The verdict is the RSS slope over the last two thirds of the run (the first third is
//! the caches and queues filling up), with its standard error, so "flat" is a number with
//! its noise next to it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chat_server::auth::Auth;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{self, Dialect, Ws};
use crate::latency::OpenLoop;
use crate::stats::{fit_line, percentile};
use crate::target;

#[derive(Clone, Copy)]
pub struct SoakConfig {
    pub users: usize,
    /// Users that also hold a connection that never reads.
    pub stalled: usize,
    pub rate: f64,
    pub warmup: Duration,
    pub duration: Duration,
    /// Width of a latency window.
    pub window: Duration,
    /// How often the server's RSS is read.
    pub sample_every: Duration,
}

pub struct SoakResult {
    /// (seconds since the load started, server RSS in bytes).
    pub rss: Vec<(f64, u64)>,
    /// The server's peak RSS: its `VmHWM` at the end or the highest sample, whichever is
    /// higher.
    pub peak_rss: u64,
    /// Least-squares RSS slope over the last two thirds, MiB per minute, and its standard
    /// error.
    pub slope_mib_per_min: f64,
    pub slope_stderr: f64,
    pub windows: Vec<Window>,
    /// Messages offered after the warm-up, and how many reached the partner.
    pub offered: u64,
    pub delivered: u64,
    /// The rate the pacer achieved.
    pub offered_rate: f64,
    pub stalled: StalledOutcome,
    /// Growth of the server's `chat_slow_consumers_total` over the run.
    pub slow_consumers: f64,
}

/// Latency and delivery in one time window.
pub struct Window {
    pub start_secs: f64,
    pub delivered: usize,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

/// What became of the connections that never read, seen from the client.
#[derive(Default)]
pub struct StalledOutcome {
    pub opened: usize,
    /// Ended with the server's close frame 1008 (policy: too slow).
    pub closed_1008: usize,
    /// Ended with another close code.
    pub closed_other: usize,
    /// Ended without a close frame: the server's close frame could not get through the
    /// full socket within its grace period, so it dropped the connection.
    pub dropped: usize,
    /// Still open at the end.
    pub open: usize,
}

/// How often a stalled connection pings the server to stay clear of its idle timeout.
const STALLED_PING: Duration = Duration::from_secs(5);
/// A stalled connection being drained at the end is still open if it is silent this long.
const DRAIN_SILENCE: Duration = Duration::from_secs(2);

pub async fn run(
    addr: SocketAddr,
    pid: u32,
    auth: &Auth,
    config: SoakConfig,
) -> Result<SoakResult, String> {
    let users = config.users.max(2) & !1;
    let mut load =
        OpenLoop::start(&[addr], auth, users, config.warmup, Some(config.window)).await?;
    // The stalled connections bind to source addresses after the users', as if they were
    // further users of the same generator.
    let stalled_conns = client::connect_users(
        &[addr],
        auth,
        0..config.stalled.min(users),
        users,
        4096,
        Dialect::Plain,
    )
    .await?;
    let opened = stalled_conns.len();
    let stalled: Vec<_> = stalled_conns.into_iter().map(stall).collect();
    let slow_before = target::metric(addr, "chat_slow_consumers_total")?;

    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (stop, every) = (stop.clone(), config.sample_every);
        std::thread::spawn(move || sample_rss(pid, every, &stop))
    };
    let total = (config.rate * (config.warmup + config.duration).as_secs_f64()) as u64;
    let paced = load.pace(total, config.rate).await;
    stop.store(true, Ordering::Relaxed);
    let rss = sampler
        .join()
        .map_err(|_| "the RSS sampler panicked".to_string())?;
    // The kernel updates VmHWM lazily (when memory is unmapped, not when the allocator
    // hands pages back with madvise), so it can miss a peak the samples saw.
    let hwm = target::proc_kib(&format!("/proc/{pid}/status"), "VmHWM:").unwrap_or(0) * 1024;
    let peak_rss = rss.iter().map(|s| s.1).fold(hwm, u64::max);
    let (offered, took) = paced?;
    let (mut latencies, _) = load.finish().await;
    // The clock starts a little before the pacer, so the last few messages may spill
    // into a window past the end: they belong to the last one.
    let count = (config.duration.as_secs_f64() / config.window.as_secs_f64()).ceil() as usize;
    if latencies.len() > count.max(1) {
        let spill: Vec<f64> = latencies.drain(count.max(1)..).flatten().collect();
        latencies[count.max(1) - 1].extend(spill);
    }

    let mut outcome = StalledOutcome {
        opened,
        ..StalledOutcome::default()
    };
    for end in futures_util::future::join_all(stalled.into_iter().map(drain)).await {
        match end {
            End::Closed(CloseCode::Policy) => outcome.closed_1008 += 1,
            End::Closed(_) => outcome.closed_other += 1,
            End::Dropped => outcome.dropped += 1,
            End::Open => outcome.open += 1,
        }
    }
    let slow_consumers = target::metric(addr, "chat_slow_consumers_total")? - slow_before;

    let (slope, stderr) = rss_slope(&rss, config.warmup + config.duration);
    let window_secs = config.window.as_secs_f64();
    let windows = latencies
        .into_iter()
        .enumerate()
        .map(|(i, mut ms)| {
            ms.sort_by(f64::total_cmp);
            Window {
                start_secs: i as f64 * window_secs,
                delivered: ms.len(),
                p50: percentile(&ms, 0.50),
                p99: percentile(&ms, 0.99),
                max: ms.last().copied().unwrap_or(0.0),
            }
        })
        .collect::<Vec<_>>();
    Ok(SoakResult {
        rss,
        peak_rss,
        slope_mib_per_min: slope,
        slope_stderr: stderr,
        offered,
        delivered: windows.iter().map(|w| w.delivered as u64).sum(),
        windows,
        offered_rate: total as f64 / took.as_secs_f64(),
        stalled: outcome,
        slow_consumers,
    })
}

/// Reads the server's RSS every `every` until `stop`.
fn sample_rss(pid: u32, every: Duration, stop: &AtomicBool) -> Vec<(f64, u64)> {
    let start = Instant::now();
    let mut samples = Vec::new();
    let mut next = start;
    while !stop.load(Ordering::Relaxed) {
        if Instant::now() >= next {
            samples.push((start.elapsed().as_secs_f64(), target::rss_bytes(pid)));
            next += every;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    samples.push((start.elapsed().as_secs_f64(), target::rss_bytes(pid)));
    samples
}

/// The least-squares slope of RSS over the last two thirds of `run`, in MiB per minute,
/// and its standard error (0 with fewer than three points).
pub fn rss_slope(samples: &[(f64, u64)], run: Duration) -> (f64, f64) {
    let from = run.as_secs_f64() / 3.0;
    let points: Vec<(f64, f64)> = samples
        .iter()
        .filter(|(t, _)| *t >= from)
        .map(|&(t, bytes)| (t / 60.0, bytes as f64 / 1048576.0))
        .collect();
    let (slope, intercept) = fit_line(&points);
    let n = points.len() as f64;
    if points.len() < 3 {
        return (slope, 0.0);
    }
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mean_x).powi(2)).sum();
    let residuals: f64 = points
        .iter()
        .map(|p| (p.1 - slope * p.0 - intercept).powi(2))
        .sum();
    let stderr = if sxx == 0.0 {
        0.0
    } else {
        (residuals / (n - 2.0) / sxx).sqrt()
    };
    (slope, stderr)
}

/// A connection that never reads, pinging until asked to hand it back.
struct Stalled {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Option<Ws>>,
}

/// Starts pinging on `ws` without ever reading it; `None` from the task means a ping
/// could not be written, so the server has dropped the connection.
fn stall(mut ws: Ws) -> Stalled {
    let (stop, mut stopped) = oneshot::channel();
    let task = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = &mut stopped => return Some(ws),
                _ = tokio::time::sleep(STALLED_PING) => {}
            }
            // A write only: the ping's pong waits unread with everything else. A write
            // stuck on a full socket is the server not reading either, which it does not
            // do to a connection it still serves.
            let ping =
                tokio::time::timeout(STALLED_PING, ws.send(Message::Ping(Default::default())));
            if !matches!(ping.await, Ok(Ok(()))) {
                return None;
            }
        }
    });
    Stalled { stop, task }
}

enum End {
    Closed(CloseCode),
    Dropped,
    Open,
}

/// Reads a stalled connection to its end, or until it has been silent a while.
async fn drain(stalled: Stalled) -> End {
    let _ = stalled.stop.send(());
    let Ok(Some(mut ws)) = stalled.task.await else {
        return End::Dropped;
    };
    loop {
        match tokio::time::timeout(DRAIN_SILENCE, ws.next()).await {
            Err(_) => return End::Open,
            Ok(Some(Ok(Message::Close(frame)))) => {
                return frame.map_or(End::Dropped, |f| End::Closed(f.code))
            }
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(_)) | None) => return End::Dropped,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slope_ignores_the_first_third_and_comes_with_its_error() {
        // 90 s: a climb over the first 30 s, then flat at 100 MiB with ±1 MiB of noise.
        let samples: Vec<(f64, u64)> = (0..=90)
            .map(|t| {
                let mib = if t < 30 {
                    10.0 + 3.0 * t as f64
                } else {
                    100.0 + if t % 2 == 0 { 1.0 } else { -1.0 }
                };
                (t as f64, (mib * 1048576.0) as u64)
            })
            .collect();
        let (slope, stderr) = rss_slope(&samples, Duration::from_secs(90));
        assert!(slope.abs() < 0.1, "slope {slope}");
        assert!(stderr > 0.0 && stderr < 1.0, "stderr {stderr}");
        // A steady 2 MiB a minute is found exactly.
        let growing: Vec<(f64, u64)> = (0..=90)
            .map(|t| {
                (
                    t as f64,
                    ((50.0 + 2.0 * t as f64 / 60.0) * 1048576.0) as u64,
                )
            })
            .collect();
        let (slope, _) = rss_slope(&growing, Duration::from_secs(90));
        assert!((slope - 2.0).abs() < 1e-3, "slope {slope}");
    }
}
