//! Restart: how long a server with a big store takes to answer `/healthz`, and whether its
//! memory after start depends on the store's size.
//!
//! The store is filled directly through `WriteStore::begin` / `WriteTxn::append` in big
//! batches: going through the socket would make filling a million messages the slow part.

use std::path::Path;
use std::time::{Duration, Instant};

use chat_server::model::RoomKey;
use chat_server::store::redb::RedbStore;
use chat_server::store::WriteStore;

use crate::client;
use crate::target::{wait_healthy, Launch, Target};

/// Messages per write transaction while filling.
const FILL_BATCH: usize = 20_000;
/// Messages per room: a long history per room, as a busy server would have.
pub const PER_ROOM: usize = 1_000;

/// Writes `messages` messages (about 100 bytes of text each) into a store at `dir`.
pub fn fill(dir: &Path, messages: usize) -> Result<Duration, String> {
    let started = Instant::now();
    let store = RedbStore::open(dir).map_err(|e| e.to_string())?;
    let rooms = messages.div_ceil(PER_ROOM).max(1);
    let keys: Vec<RoomKey> = (0..rooms)
        .map(|r| RoomKey::new(&client::user(2 * r), &client::user(2 * r + 1)))
        .collect();
    let text = "x".repeat(96);
    let mut written = 0usize;
    let now = chat_server::protocol::time::now_millis();
    while written < messages {
        let mut batch = store.begin().map_err(|e| e.to_string())?;
        let n = FILL_BATCH.min(messages - written);
        for i in written..written + n {
            let room = &keys[i % rooms];
            let sender = if i % 2 == 0 { &room.low } else { &room.high };
            batch
                .append(room, sender, &text, None, now)
                .map_err(|e| e.to_string())?;
        }
        batch.commit().map_err(|e| e.to_string())?;
        written += n;
    }
    Ok(started.elapsed())
}

pub struct Restart {
    /// From spawning the process to the first `/healthz` 200.
    pub to_healthy: Duration,
    /// Server RSS half a second after it became healthy.
    pub rss: u64,
}

/// Starts the server on an existing store and times it.
pub fn measure(launch: &Launch) -> Result<Restart, String> {
    let started = Instant::now();
    let target = Target::start(launch, None)?;
    wait_healthy(target.addr)?;
    let to_healthy = started.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    let rss = target.rss_bytes();
    target.stop();
    Ok(Restart { to_healthy, rss })
}
