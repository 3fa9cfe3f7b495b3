//! History reads from a large store: what a `messages` page costs when it comes from disk.
//!
//! A store is filled directly (as the restart scenario does) with rooms of a thousand
//! messages, then a fresh server pages backwards (`before`, `limit` 50) through rooms
//! nobody has read since it started, so every page goes through redb's page cache cold.
//! The server's cache size is what the comparison varies; the OS page cache is dropped
//! before each server start when the bench may do so (root), and each run reads other
//! rooms, so even without the drop no page was read by an earlier run.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use chat_server::auth::Auth;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::client::{self, Dialect, Ws};

/// How long one page may take before the run is called failed.
const PAGE_TIMEOUT: Duration = Duration::from_secs(30);

/// Rooms `count` rooms apart among `rooms`, shifted by `run` so no two runs share one.
pub fn pick_rooms(rooms: usize, count: usize, run: usize) -> Vec<usize> {
    let step = (rooms / count.max(1)).max(1);
    (0..count.min(rooms))
        .map(|k| (k * step + run) % rooms)
        .collect()
}

/// Pages backwards through each room (as user `2r`, a member of room `r`) until an empty
/// page; returns each page's round trip in ms and the messages read per room.
pub async fn page_through(
    addr: SocketAddr,
    auth: &Auth,
    rooms: &[usize],
) -> Result<(Vec<f64>, Vec<usize>), String> {
    let (mut pages, mut counts) = (Vec::new(), Vec::new());
    for &r in rooms {
        let me = client::user(2 * r);
        let token = auth.mint(&me, None, Duration::from_secs(3600));
        let mut ws = client::connect(addr, &token, &me, None, 64 * 1024, Dialect::Plain).await?;
        let room = client::room_of(2 * r);
        let (mut before, mut read, mut ack) = (None::<u64>, 0usize, 0u64);
        loop {
            ack += 1;
            let mut data = json!({ "roomId": room, "limit": 50 });
            if let Some(id) = before {
                data["before"] = json!(id);
            }
            let request = json!({ "event": "messages", "data": data, "ack": ack });
            let started = Instant::now();
            ws.send(Message::text(request.to_string()))
                .await
                .map_err(|e| e.to_string())?;
            let reply = tokio::time::timeout(PAGE_TIMEOUT, ack_reply(&mut ws, ack))
                .await
                .map_err(|_| format!("history: no reply to a page of {room} in 30 s"))??;
            pages.push(started.elapsed().as_secs_f64() * 1000.0);
            let messages = reply["room"]["messages"]
                .as_array()
                .ok_or_else(|| format!("history: unexpected reply {reply}"))?;
            let Some(oldest) = messages.last() else { break };
            read += messages.len();
            before = Some(
                oldest["id"]
                    .as_u64()
                    .ok_or_else(|| format!("history: message without an id: {oldest}"))?,
            );
        }
        counts.push(read);
    }
    Ok((pages, counts))
}

/// The data of the `ack` reply numbered `ack`, which must be `ok`.
async fn ack_reply(ws: &mut Ws, ack: u64) -> Result<Value, String> {
    while let Some(frame) = ws.next().await {
        let Message::Text(text) = frame.map_err(|e| e.to_string())? else {
            continue;
        };
        let mut frame: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
        if frame["event"] == "ack" && frame["ack"] == ack {
            return match frame["data"]["ok"].as_bool() {
                Some(true) => Ok(frame["data"].take()),
                _ => Err(format!("history: request failed: {}", frame["data"])),
            };
        }
    }
    Err("history: the server closed the connection".into())
}

/// Writes back dirty pages and drops the OS page cache, so the next reads come from the
/// disk; false when this process may not (not root, or no `/proc/sys/vm`).
pub fn drop_page_cache() -> bool {
    // SAFETY: sync(2) has no preconditions.
    unsafe { libc::sync() };
    std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_read_disjoint_rooms_spread_over_the_store() {
        let first = pick_rooms(10_000, 20, 0);
        let second = pick_rooms(10_000, 20, 1);
        assert_eq!(first.len(), 20);
        assert_eq!((first[0], first[1], first[19]), (0, 500, 9500));
        assert!(first.iter().all(|r| !second.contains(r)));
        assert_eq!(pick_rooms(3, 20, 0), vec![0, 1, 2]);
    }
}
