//! The latency load: many connected users, messages offered at a fixed rate whatever the
//! server does (open loop), latency measured from the *intended* send time to the moment
//! the partner receives the `message:sent`, so a stalled server cannot hide its delay.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chat_server::auth::Auth;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{self, Ws};
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
}

struct Shared {
    epoch: Instant,
    warmup_us: u64,
    samples: Mutex<Vec<f64>>,
}

pub async fn run(
    addr: SocketAddr,
    auth: &Auth,
    config: LatencyConfig,
) -> Result<LatencyResult, String> {
    let users = config.users.max(2) & !1;
    let conns = client::connect_users(addr, auth, 0..users, 0, 16 * 1024).await?;
    let shared = Arc::new(Shared {
        epoch: Instant::now(),
        warmup_us: config.warmup.as_micros() as u64,
        samples: Mutex::new(Vec::new()),
    });
    let (mut senders, mut tasks) = (Vec::with_capacity(users), Vec::with_capacity(users));
    for (i, ws) in conns.into_iter().enumerate() {
        let (tx, rx) = mpsc::unbounded_channel();
        senders.push(tx);
        tasks.push(tokio::spawn(connection(i, ws, rx, shared.clone())));
    }

    let total = (config.rate * (config.warmup + config.duration).as_secs_f64()) as u64;
    let offered = AtomicU64::new(0);
    let start = tokio::time::Instant::now();
    let start_us = start.into_std().duration_since(shared.epoch).as_micros() as u64;
    for k in 0..total {
        let due = Duration::from_secs_f64(k as f64 / config.rate);
        tokio::time::sleep_until(start + due).await;
        let sender = ((k as usize).wrapping_mul(7919) + (k as usize) / users) % users;
        let intended_us = start_us + due.as_micros() as u64;
        if intended_us >= shared.warmup_us {
            offered.fetch_add(1, Ordering::Relaxed);
        }
        let _ = senders[sender].send(intended_us);
    }
    let scheduled_for = start.elapsed();
    // Late deliveries still count; give them a moment, then stop everything.
    tokio::time::sleep(Duration::from_secs(2)).await;
    drop(senders);
    for task in &tasks {
        task.abort();
    }

    let mut samples = std::mem::take(&mut *shared.samples.lock().expect("not poisoned"));
    samples.sort_by(f64::total_cmp);
    Ok(LatencyResult {
        p50: percentile(&samples, 0.50),
        p99: percentile(&samples, 0.99),
        p999: percentile(&samples, 0.999),
        max: samples.last().copied().unwrap_or(0.0),
        offered: offered.load(Ordering::Relaxed),
        delivered: samples.len() as u64,
        offered_rate: total as f64 / scheduled_for.as_secs_f64(),
    })
}

async fn connection(
    me: usize,
    ws: Ws,
    mut sends: mpsc::UnboundedReceiver<u64>,
    shared: Arc<Shared>,
) {
    let (room, _) = client::room_of(me);
    let my_id = client::user(me);
    let (mut sink, mut stream) = ws.split();
    let mut seq = 0u64;
    loop {
        tokio::select! {
            intended = sends.recv() => {
                let Some(intended_us) = intended else { return };
                seq += 1;
                let text = client::message_text(me, seq, intended_us);
                let frame = client::message_frame(&my_id, &room, &text);
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
                shared.samples.lock().expect("not poisoned").push(ms);
            }
        }
    }
}
