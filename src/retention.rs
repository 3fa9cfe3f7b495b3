//! Retention: deleting messages older than `retention.max_age_days`.
//!
//! A background task sweeps at start and then every [`SWEEP_EVERY`] (in cluster mode on the
//! one node running the duties, [`crate::duties`], from when it took them). A sweep scans
//! the rooms a page at a time with the read store (a room's oldest message is its first
//! key, because ids and `sentAt` rise together), and deletes each old room's messages
//! through the writer, at most [`MESSAGES_PER_COMMAND`] per command: the writer stays the
//! only code that writes, and one command never holds a round for long, so sends keep their
//! latency while a large backlog is deleted. Each command also drops the room from the
//! latest-50 cache, which would otherwise still show the deleted messages.
//!
//! Deleting keeps a room's last id, so a new message never reuses an id; history simply
//! starts later, and a room with nothing left leaves the inbox until its next message.

use std::sync::Arc;
use std::time::Duration;

use crate::metrics;
use crate::model::RoomKey;
use crate::protocol::time::now_millis;
use crate::protocol::ChatError;
use crate::store::{Expired, ReadStore, RoomLock, WriteTxn};
use crate::writer::{outcome, Command, Context, Writer};

/// Time between sweeps. Ages are set in days, so an hour late is within the policy's
/// precision, and a sweep that finds nothing costs one key read per room.
pub const SWEEP_EVERY: Duration = Duration::from_secs(3600);
/// Most messages one writer command deletes: a few milliseconds of a round.
pub const MESSAGES_PER_COMMAND: usize = 500;
/// Rooms looked at per read of a scan.
const ROOMS_PER_SCAN: usize = 256;

const MS_PER_DAY: i64 = 86_400_000;

/// Starts the sweeping task, unless `max_age_days` is 0 (keep everything).
pub fn spawn(
    store: Arc<dyn ReadStore>,
    writer: Writer,
    max_age_days: u64,
) -> Option<tokio::task::JoinHandle<()>> {
    if max_age_days == 0 {
        return None;
    }
    // The setting is at most `config::MAX_RETENTION_DAYS`, so this cannot overflow.
    let max_age_ms = max_age_days as i64 * MS_PER_DAY;
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(SWEEP_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match sweep(store.as_ref(), &writer, now_millis() - max_age_ms).await {
                Ok(deleted) => {
                    metrics::retention_swept();
                    tracing::info!(deleted, max_age_days, "retention sweep done")
                }
                Err(e) => tracing::warn!(error = %e.message, "retention sweep stopped"),
            }
        }
    }))
}

/// Deletes every message sent before `cutoff_ms`; returns how many it deleted.
pub async fn sweep(
    store: &dyn ReadStore,
    writer: &Writer,
    cutoff_ms: i64,
) -> Result<u64, ChatError> {
    let mut deleted = 0;
    let mut after = None;
    loop {
        let scan = store
            .rooms_to_expire(cutoff_ms, after, ROOMS_PER_SCAN)
            .await
            .map_err(ChatError::internal)?;
        for room in scan.rooms {
            loop {
                let command = Expire {
                    room: room.clone(),
                    cutoff_ms,
                };
                let expired = outcome(writer.submit(command).await).await?;
                metrics::retention_deleted(expired.deleted);
                deleted += expired.deleted;
                if !expired.more {
                    break;
                }
            }
        }
        match scan.next {
            Some(next) => after = Some(next),
            None => return Ok(deleted),
        }
    }
}

/// Deletes up to [`MESSAGES_PER_COMMAND`] of a room's messages sent before `cutoff_ms`.
struct Expire {
    room: RoomKey,
    cutoff_ms: i64,
}

impl Command for Expire {
    type Output = Expired;

    fn rooms<'a>(&'a self, out: &mut Vec<RoomLock<'a>>) {
        out.push(RoomLock {
            room: &self.room,
            create: false,
        });
    }

    fn apply(self, txn: &mut dyn WriteTxn, cx: &mut Context<'_>) -> Result<Expired, ChatError> {
        let expired = txn
            .expire(&self.room, self.cutoff_ms, MESSAGES_PER_COMMAND)
            .map_err(ChatError::internal)?;
        if expired.deleted > 0 {
            cx.cache().forget(&self.room);
            cx.hint_forget(&self.room);
        }
        Ok(expired)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fanout::hub::Hub;
    use crate::protocol::event::MAX_MESSAGES_LIMIT;
    use crate::store::redb::RedbStore;
    use crate::store::WriteStore;
    use crate::writer::WriterConfig;

    /// The room's latest-50 snapshot as the writer's cache serves it.
    struct Snapshot(RoomKey);

    impl Command for Snapshot {
        type Output = Vec<u64>;

        fn apply(
            self,
            txn: &mut dyn WriteTxn,
            cx: &mut Context<'_>,
        ) -> Result<Vec<u64>, ChatError> {
            let json = cx
                .cache()
                .snapshot(&self.0, || txn.latest(&self.0, MAX_MESSAGES_LIMIT))
                .map_err(ChatError::internal)?;
            let messages: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap();
            Ok(messages.iter().map(|m| m["id"].as_u64().unwrap()).collect())
        }
    }

    #[tokio::test]
    async fn a_sweep_deletes_in_bounded_commands_and_the_cache_forgets_the_room() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(RedbStore::open(dir.path()).unwrap());
        let room = RoomKey::new("a", "b");
        let quiet = RoomKey::new("a", "c");
        let mut txn = store.begin().unwrap();
        // More old messages than two commands delete, then three that stay.
        for i in 0..1200 {
            txn.append(&room, "a", "old", None, 1_000 + i).unwrap();
        }
        for _ in 0..3 {
            txn.append(&room, "b", "new", None, 10_000_000).unwrap();
        }
        txn.append(&quiet, "c", "new", None, 10_000_000).unwrap();
        txn.commit().unwrap();

        let thread = Writer::spawn(
            store.clone(),
            Hub::new(1 << 20, 1 << 10),
            Arc::new(crate::webhook::Hooks::none()),
            WriterConfig {
                recent_cache_bytes: 1 << 20,
                max_batch: 16,
                mark_hint_rooms: 1024,
            },
        );
        let writer = thread.writer();
        let cached = outcome(writer.submit(Snapshot(room.clone())).await)
            .await
            .unwrap();
        assert_eq!(cached.len(), MAX_MESSAGES_LIMIT);

        assert_eq!(
            sweep(store.as_ref(), &writer, 5_000_000).await.unwrap(),
            1200
        );
        let after = outcome(writer.submit(Snapshot(room.clone())).await)
            .await
            .unwrap();
        assert_eq!(
            after,
            [1203, 1202, 1201],
            "the cache still had deleted messages"
        );
        // Nothing is left to delete: a second sweep finds nothing.
        assert_eq!(sweep(store.as_ref(), &writer, 5_000_000).await.unwrap(), 0);
        thread.shutdown().await;

        let unread = |user: &'static str| {
            let store = store.clone();
            async move {
                let page = store.inbox_page(user, None, 10).await.unwrap();
                page.iter()
                    .map(|r| (r.room_id.clone(), r.unread))
                    .collect::<Vec<_>>()
            }
        };
        assert_eq!(unread("b").await, [("a-b".to_owned(), 0)]);
        assert_eq!(
            unread("a").await,
            [("a-b".to_owned(), 3), ("a-c".to_owned(), 1)]
        );
    }
}
