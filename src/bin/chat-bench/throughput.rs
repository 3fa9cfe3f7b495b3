//! The throughput load: pairs of users in their own rooms, every user a sender that keeps
//! a window of messages in flight. A message counts once its `message:sent` reached both
//! participants. The same load runs against the bare relay for the ceiling.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chat_server::auth::Auth;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use crate::client::{self, Dialect, Ws};
use crate::cluster::CpuUse;

/// The shape of one throughput run.
#[derive(Clone, Copy)]
pub struct LoadConfig {
    pub users: usize,
    pub window: usize,
    pub warmup: Duration,
    pub duration: Duration,
    /// Whether each partner acknowledges every message it gets with `message:received`,
    /// as a client showing delivered ticks does: one more write per message.
    pub received: bool,
    /// Whether each message carries a `clientMessageId`: its text (unique per sender)
    /// after the run's start time, so that a later run on the same database is not taken
    /// for retries.
    pub client_message_ids: bool,
}

pub struct LoadResult {
    /// Messages per second whose `message:sent` reached both participants.
    pub msgs_per_sec: f64,
    pub completed: u64,
    /// Mean size of a received `message:sent` frame.
    pub avg_frame_bytes: f64,
    /// Frames that were not a `message:sent` (errors from the server).
    pub other_frames: u64,
    pub first_other: Option<String>,
    /// CPU time spent per completed message, in µs, when the bench started the servers:
    /// steadier than the rate on a shared machine, since others' load adds little.
    pub cpu_us_per_msg: Option<CpuUse>,
}

/// What the connection tasks count, per sender.
struct Counters {
    /// `message:sent` of sender `s` received by `s` itself.
    own: Vec<AtomicU64>,
    /// `message:sent` of sender `s` received by its partner.
    partner: Vec<AtomicU64>,
    frame_bytes: AtomicU64,
    frames: AtomicU64,
    other_frames: AtomicU64,
    first_other: Mutex<Option<String>>,
}

impl Counters {
    /// Messages that reached both: per sender both sides see them in send order, so the
    /// smaller of the two counts.
    fn completed(&self) -> u64 {
        self.own
            .iter()
            .zip(&self.partner)
            .map(|(a, b)| a.load(Ordering::Relaxed).min(b.load(Ordering::Relaxed)))
            .sum()
    }
}

/// Runs the load against `addrs` (users spread with [`crate::cluster::node_of`]); `cpu`
/// reads the CPU the servers have used so far.
pub async fn run(
    addrs: &[SocketAddr],
    cpu: &dyn Fn() -> Option<CpuUse>,
    auth: &Auth,
    config: LoadConfig,
) -> Result<LoadResult, String> {
    let users = config.users.max(2) & !1;
    let conns = client::connect_users(addrs, auth, 0..users, 0, 64 * 1024, Dialect::Plain).await?;
    let counters = Arc::new(Counters {
        own: (0..users).map(|_| AtomicU64::new(0)).collect(),
        partner: (0..users).map(|_| AtomicU64::new(0)).collect(),
        frame_bytes: AtomicU64::new(0),
        frames: AtomicU64::new(0),
        other_frames: AtomicU64::new(0),
        first_other: Mutex::new(None),
    });
    let stop = Arc::new(AtomicBool::new(false));
    let run_id = config.client_message_ids.then(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis())
    });
    let tasks: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(i, ws)| {
            let (counters, stop) = (counters.clone(), stop.clone());
            tokio::spawn(sender(i, ws, config, run_id, counters, stop))
        })
        .collect();

    tokio::time::sleep(config.warmup).await;
    let (before, start, cpu_before) = (counters.completed(), Instant::now(), cpu());
    tokio::time::sleep(config.duration).await;
    let (after, elapsed, cpu_after) = (counters.completed(), start.elapsed(), cpu());
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = task.await;
    }

    let frames = counters.frames.load(Ordering::Relaxed).max(1);
    let first_other = counters.first_other.lock().expect("not poisoned").take();
    Ok(LoadResult {
        msgs_per_sec: (after - before) as f64 / elapsed.as_secs_f64(),
        completed: after - before,
        avg_frame_bytes: counters.frame_bytes.load(Ordering::Relaxed) as f64 / frames as f64,
        other_frames: counters.other_frames.load(Ordering::Relaxed),
        first_other,
        cpu_us_per_msg: cpu_before
            .zip(cpu_after)
            .map(|(b, a)| CpuUse::per_message_us(b, a, after - before)),
    })
}

/// How long a connection keeps draining after the stop before it gives up.
const DRAIN: Duration = Duration::from_secs(3);

/// `run_id`: the run's start time, in front of each message's `clientMessageId`; none
/// without them.
async fn sender(
    me: usize,
    mut ws: Ws,
    config: LoadConfig,
    run_id: Option<u128>,
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
) {
    let window = config.window.max(1);
    let room = client::room_of(me);
    let my_id = client::user(me);
    let mut seq = 0u64;
    let mut in_flight = 0usize;
    let frame = |seq: u64| {
        let text = client::message_text(me, seq, 0);
        let key = run_id.map(|run| format!("{run:x}.{text}"));
        Message::text(client::message_frame(&my_id, &room, &text, key.as_deref()))
    };
    for _ in 0..window {
        seq += 1;
        if ws.send(frame(seq)).await.is_err() {
            return;
        }
        in_flight += 1;
    }
    let mut drain_until = None;
    loop {
        if stop.load(Ordering::Relaxed) && drain_until.is_none() {
            drain_until = Some(tokio::time::Instant::now() + DRAIN);
        }
        let next = match drain_until {
            Some(deadline) => match tokio::time::timeout_at(deadline, ws.next()).await {
                Ok(next) => next,
                Err(_) => return,
            },
            None => match tokio::time::timeout(Duration::from_millis(200), ws.next()).await {
                Ok(next) => next,
                Err(_) => continue,
            },
        };
        let text = match next {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(_)) => continue,
            _ => return,
        };
        if text.starts_with(r#"{"event":"message:delivered""#) {
            // The marks' answer to the sender; what they cost is in the rate itself.
            continue;
        }
        let Some(sent) = client::parse_sent(&text) else {
            counters.other_frames.fetch_add(1, Ordering::Relaxed);
            let mut first = counters.first_other.lock().expect("not poisoned");
            first.get_or_insert_with(|| text.as_str().chars().take(300).collect());
            continue;
        };
        counters.frames.fetch_add(1, Ordering::Relaxed);
        counters
            .frame_bytes
            .fetch_add(text.len() as u64, Ordering::Relaxed);
        if sent.sender != me {
            counters.partner[sent.sender].fetch_add(1, Ordering::Relaxed);
            if let Some(id) = newest_id(&text).filter(|_| config.received) {
                let mark = format!(
                    r#"{{"event":"message:received","data":[{{"roomId":"{room}","messageId":{id}}}]}}"#
                );
                if ws.send(Message::text(mark)).await.is_err() {
                    return;
                }
            }
            continue;
        }
        counters.own[me].fetch_add(1, Ordering::Relaxed);
        in_flight = in_flight.saturating_sub(1);
        if drain_until.is_none() {
            seq += 1;
            if ws.send(frame(seq)).await.is_err() {
                return;
            }
            in_flight += 1;
        } else if in_flight == 0 {
            // Our own are all back; the partner's last few may still be coming.
            drain_until = Some(tokio::time::Instant::now() + Duration::from_millis(300));
        }
    }
}

/// The id of the newest message of a `message:sent` frame: the first `"id":` after
/// `"messages":[`.
fn newest_id(frame: &str) -> Option<u64> {
    const MESSAGES: &str = r#""messages":[{"id":"#;
    let start = frame.find(MESSAGES)? + MESSAGES.len();
    let rest = &frame[start..];
    rest[..rest.find(|c: char| !c.is_ascii_digit())?]
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn newest_id_reads_the_first_message() {
        let frame = r#"{"event":"message:sent","data":{"roomId":"u0-u1","user":{"id":"u0","name":"u0"},"messages":[{"id":42,"userId":"u0"},{"id":41}]}}"#;
        assert_eq!(super::newest_id(frame), Some(42));
        assert_eq!(super::newest_id(r#"{"event":"typing"}"#), None);
    }
}
