//! The latency load: many connected users, messages offered at a fixed rate whatever the
//! server does (open loop), latency measured from the *intended* send time to the moment
//! the partner receives the `message:sent`, so a stalled server cannot hide its delay.
//!
//! [`OpenLoop`] is the load itself, shared with the soak scenario, which runs it for much
//! longer and reads its latencies per time window.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chat_server::auth::Auth;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{self, Dialect, Ws};
use crate::cluster::CpuUse;
use crate::stats::percentile;

#[derive(Clone, Copy)]
pub struct LatencyConfig {
    pub users: usize,
    pub rate: f64,
    pub warmup: Duration,
    pub duration: Duration,
}

pub struct LatencyResult {
    /// Milliseconds.
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    /// Messages offered after the warm-up, and how many reached the partner.
    pub offered: u64,
    pub delivered: u64,
    /// The rate the scheduler actually achieved.
    pub offered_rate: f64,
    /// Mean size of the measured `message:sent` frames.
    pub avg_frame_bytes: f64,
    /// CPU per offered message (warm-up included), in µs, when the bench started the
    /// servers: at a fixed rate, what each message costs the servers.
    pub cpu_us_per_msg: Option<CpuUse>,
}

/// Runs the load against `addrs` (users spread with [`crate::cluster::node_of`]); `cpu`
/// reads the CPU the servers have used so far.
pub async fn run(
    addrs: &[SocketAddr],
    cpu: &dyn Fn() -> Option<CpuUse>,
    auth: &Auth,
    config: LatencyConfig,
) -> Result<LatencyResult, String> {
    let mut load = OpenLoop::start(addrs, auth, config.users, config.warmup, None).await?;
    let total = (config.rate * (config.warmup + config.duration).as_secs_f64()) as u64;
    let cpu_before = cpu();
    let (offered, scheduled_for) = load.pace(total, config.rate).await?;
    let (windows, frame_bytes) = load.finish().await;
    let cpu_us_per_msg = cpu_before
        .zip(cpu())
        .map(|(b, a)| CpuUse::per_message_us(b, a, total));
    let mut samples: Vec<f64> = windows.into_iter().flatten().collect();
    samples.sort_by(f64::total_cmp);
    Ok(LatencyResult {
        p50: percentile(&samples, 0.50),
        p99: percentile(&samples, 0.99),
        p999: percentile(&samples, 0.999),
        max: samples.last().copied().unwrap_or(0.0),
        offered,
        delivered: samples.len() as u64,
        offered_rate: total as f64 / scheduled_for.as_secs_f64(),
        avg_frame_bytes: frame_bytes as f64 / samples.len().max(1) as f64,
        cpu_us_per_msg,
    })
}

/// What the connection tasks record.
struct Shared {
    epoch: Instant,
    warmup_us: u64,
    /// Width of a reporting window: a sample belongs to the window of its intended send
    /// time (counted from the end of the warm-up), so a late delivery is charged to the
    /// moment the server fell behind, not to when it caught up.
    window_us: u64,
    /// Latencies in ms, per window.
    windows: Mutex<Vec<Vec<f64>>>,
    /// Bytes of the measured `message:sent` frames, so the relay can send the same.
    frame_bytes: AtomicU64,
}

impl Shared {
    fn record(&self, sent_us: u64, ms: f64) {
        let window = ((sent_us - self.warmup_us) / self.window_us) as usize;
        let mut windows = self.windows.lock().expect("not poisoned");
        if windows.len() <= window {
            windows.resize_with(window + 1, Vec::new);
        }
        windows[window].push(ms);
    }
}

/// An open-loop load in progress: `users` connected users (pairs share a room), each
/// sending what the pacer hands it and timing the `message:sent` of its partner's messages.
pub struct OpenLoop {
    shared: Arc<Shared>,
    /// One per user; the pacer hands a message's intended send time to its sender.
    senders: Vec<mpsc::UnboundedSender<u64>>,
    tasks: Vec<JoinHandle<()>>,
}

impl OpenLoop {
    /// Connects the users. Messages intended before `warmup` are not measured; `window`
    /// splits the measured latencies by time (`None`: one window).
    pub async fn start(
        addrs: &[SocketAddr],
        auth: &Auth,
        users: usize,
        warmup: Duration,
        window: Option<Duration>,
    ) -> Result<OpenLoop, String> {
        let users = users.max(2) & !1;
        let conns =
            client::connect_users(addrs, auth, 0..users, 0, 16 * 1024, Dialect::Plain).await?;
        let shared = Arc::new(Shared {
            epoch: Instant::now(),
            warmup_us: warmup.as_micros() as u64,
            window_us: window.map_or(u64::MAX, |w| (w.as_micros() as u64).max(1)),
            windows: Mutex::new(Vec::new()),
            frame_bytes: AtomicU64::new(0),
        });
        let (mut senders, mut tasks) = (Vec::with_capacity(users), Vec::with_capacity(users));
        for (i, ws) in conns.into_iter().enumerate() {
            let (tx, rx) = mpsc::unbounded_channel();
            senders.push(tx);
            tasks.push(tokio::spawn(connection(i, ws, rx, shared.clone())));
        }
        Ok(OpenLoop {
            shared,
            senders,
            tasks,
        })
    }

    /// Offers `total` messages at `rate` per second from the start of the load's clock;
    /// returns how many were offered after the warm-up and how long it took.
    pub async fn pace(&mut self, total: u64, rate: f64) -> Result<(u64, Duration), String> {
        let senders = std::mem::take(&mut self.senders);
        let shared = self.shared.clone();
        // Paced from an OS thread: tokio's timer rounds every sleep up to the next whole
        // millisecond, which at 2,000 msgs/s would add up to a millisecond of latency that
        // is the generator's, not the server's. `thread::sleep` wakes within tens of µs.
        let pacer = std::thread::spawn(move || pace(senders, total, rate, &shared));
        let (offered, took, senders) = tokio::task::spawn_blocking(move || pacer.join())
            .await
            .map_err(|e| e.to_string())?
            .map_err(|_| "the pacing thread panicked".to_string())?;
        self.senders = senders;
        Ok((offered, took))
    }

    /// Gives late deliveries a moment, ends the connections and returns the latencies
    /// (ms) of each window and the bytes of the measured frames.
    pub async fn finish(self) -> (Vec<Vec<f64>>, u64) {
        tokio::time::sleep(Duration::from_secs(2)).await;
        // The senders live until here: dropping them would end the connections before
        // late deliveries arrive.
        drop(self.senders);
        for task in &self.tasks {
            task.abort();
        }
        let windows = std::mem::take(&mut *self.shared.windows.lock().expect("not poisoned"));
        (windows, self.shared.frame_bytes.load(Ordering::Relaxed))
    }
}

/// Hands message `k` to its sender at `k / rate` seconds, whatever happened to the
/// earlier ones. Returns how many were offered after the warm-up, how long it took, and
/// the senders.
fn pace(
    senders: Vec<mpsc::UnboundedSender<u64>>,
    total: u64,
    rate: f64,
    shared: &Shared,
) -> (u64, Duration, Vec<mpsc::UnboundedSender<u64>>) {
    let users = senders.len();
    let start = Instant::now();
    let start_us = start.duration_since(shared.epoch).as_micros() as u64;
    let mut offered = 0;
    for k in 0..total {
        let due = Duration::from_secs_f64(k as f64 / rate);
        if let Some(wait) = due.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
        let sender = ((k as usize).wrapping_mul(7919) + (k as usize) / users) % users;
        let intended_us = start_us + due.as_micros() as u64;
        if intended_us >= shared.warmup_us {
            offered += 1;
        }
        let _ = senders[sender].send(intended_us);
    }
    (offered, start.elapsed(), senders)
}

async fn connection(
    me: usize,
    ws: Ws,
    mut sends: mpsc::UnboundedReceiver<u64>,
    shared: Arc<Shared>,
) {
    let room = client::room_of(me);
    let my_id = client::user(me);
    let (mut sink, mut stream) = ws.split();
    let mut seq = 0u64;
    loop {
        tokio::select! {
            intended = sends.recv() => {
                let Some(intended_us) = intended else { return };
                seq += 1;
                let text = client::message_text(me, seq, intended_us);
                let frame = client::message_frame(&my_id, &room, &text, None);
                if sink.send(Message::text(frame)).await.is_err() {
                    return;
                }
            }
            frame = stream.next() => {
                let text = match frame {
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(_)) => continue,
                    _ => return,
                };
                let Some(sent) = client::parse_sent(&text) else { continue };
                if sent.sender == me || sent.sent_us < shared.warmup_us {
                    continue;
                }
                let now_us = shared.epoch.elapsed().as_micros() as u64;
                let ms = now_us.saturating_sub(sent.sent_us) as f64 / 1000.0;
                shared.record(sent.sent_us, ms);
                shared.frame_bytes.fetch_add(text.len() as u64, Ordering::Relaxed);
            }
        }
    }
}
