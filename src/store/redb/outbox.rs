//! The webhook outbox's tables: events waiting for a hook, and the ones given up on.
//!
//! Kept apart from `records.rs` (the chat data's format) because nothing of the chat data
//! depends on it: the outbox only ever holds events not yet delivered, so a change of its
//! record is a matter of draining it, never of migrating messages.

use redb::{Database, ReadableDatabase, ReadableTable, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::records;
use super::{META, WEBHOOK_DEAD, WEBHOOK_OUTBOX};
use crate::store::{DeadLetter, OutboxEvent, Result, StoreError, WebhookCounts};

/// An event waiting in the outbox; its hook and seq are the key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OutboxRecord {
    /// The user the event is for: events of one recipient are posted in `seq` order.
    pub recipient: String,
    /// The event's `id`, sent again unchanged on every attempt.
    pub id: String,
    /// Commit time (ms since the epoch): delivery gives up relative to it.
    pub created_ms: i64,
    /// The JSON body exactly as posted and signed.
    pub body: String,
}

/// An event given up on; its hook and seq are the key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeadRecord {
    /// The event as it waited in the outbox.
    pub event: OutboxRecord,
    /// Why delivery stopped.
    pub reason: String,
    /// When (ms since the epoch).
    pub dead_ms: i64,
}

impl OutboxRecord {
    fn into_event(self, seq: u64) -> OutboxEvent {
        OutboxEvent {
            seq,
            recipient: self.recipient,
            id: self.id,
            created_ms: self.created_ms,
            body: self.body,
        }
    }
}

fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8], what: &str) -> Result<T> {
    postcard::from_bytes(bytes).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

pub(super) fn enqueue(txn: &WriteTransaction, hook: &str, event: &OutboxEvent) -> Result<()> {
    let seq = {
        let mut meta = txn.open_table(META)?;
        let seq = meta.get("next_webhook_seq")?.map_or(1, |g| g.value());
        meta.insert("next_webhook_seq", seq + 1)?;
        seq
    };
    let record = OutboxRecord {
        recipient: event.recipient.clone(),
        id: event.id.clone(),
        created_ms: event.created_ms,
        body: event.body.clone(),
    };
    txn.open_table(WEBHOOK_OUTBOX)?
        .insert((hook, seq), records::encode(&record).as_slice())?;
    Ok(())
}

pub(super) fn remove(txn: &WriteTransaction, hook: &str, seq: u64) -> Result<bool> {
    Ok(txn
        .open_table(WEBHOOK_OUTBOX)?
        .remove((hook, seq))?
        .is_some())
}

pub(super) fn dead_letter(
    txn: &WriteTransaction,
    hook: &str,
    seq: u64,
    reason: &str,
    now_ms: i64,
) -> Result<bool> {
    let Some(bytes) = txn
        .open_table(WEBHOOK_OUTBOX)?
        .remove((hook, seq))?
        .map(|g| g.value().to_vec())
    else {
        return Ok(false);
    };
    let dead = DeadRecord {
        event: decode(&bytes, "webhook event")?,
        reason: reason.to_owned(),
        dead_ms: now_ms,
    };
    txn.open_table(WEBHOOK_DEAD)?
        .insert((hook, seq), records::encode(&dead).as_slice())?;
    Ok(true)
}

pub(super) fn retry_dead(
    txn: &WriteTransaction,
    hook: &str,
    max: usize,
    now_ms: i64,
) -> Result<u64> {
    let mut dead = Vec::new();
    {
        let mut table = txn.open_table(WEBHOOK_DEAD)?;
        for row in table.range((hook, 0)..=(hook, u64::MAX))?.take(max) {
            let (key, value) = row?;
            let record: DeadRecord = decode(value.value(), "webhook dead letter")?;
            dead.push((key.value().1, record.event));
        }
        for (seq, _) in &dead {
            table.remove((hook, *seq))?;
        }
    }
    for (_, record) in &dead {
        let event = OutboxEvent {
            created_ms: now_ms,
            ..record.clone().into_event(0)
        };
        enqueue(txn, hook, &event)?;
    }
    Ok(dead.len() as u64)
}

pub(super) fn pending(
    db: &Database,
    hook: &str,
    after: Option<u64>,
    limit: usize,
) -> Result<Vec<OutboxEvent>> {
    let txn = db.begin_read()?;
    let table = txn.open_table(WEBHOOK_OUTBOX)?;
    let from = after.map_or(0, |seq| seq.saturating_add(1));
    let mut page = Vec::with_capacity(limit.min(256));
    for row in table.range((hook, from)..=(hook, u64::MAX))?.take(limit) {
        let (key, value) = row?;
        let record: OutboxRecord = decode(value.value(), "webhook event")?;
        page.push(record.into_event(key.value().1));
    }
    Ok(page)
}

pub(super) fn dead_letters(
    db: &Database,
    hook: &str,
    after: Option<u64>,
    limit: usize,
) -> Result<Vec<DeadLetter>> {
    let txn = db.begin_read()?;
    let table = txn.open_table(WEBHOOK_DEAD)?;
    let from = after.map_or(0, |seq| seq.saturating_add(1));
    let mut page = Vec::with_capacity(limit.min(256));
    for row in table.range((hook, from)..=(hook, u64::MAX))?.take(limit) {
        let (key, value) = row?;
        let record: DeadRecord = decode(value.value(), "webhook dead letter")?;
        page.push(DeadLetter {
            event: record.event.into_event(key.value().1),
            reason: record.reason,
            dead_ms: record.dead_ms,
        });
    }
    Ok(page)
}

/// Counts by walking the hook's keys: run once per hook at startup, after which the
/// delivery task keeps the count itself.
pub(super) fn counts(db: &Database, hook: &str) -> Result<WebhookCounts> {
    let txn = db.begin_read()?;
    let mut counts = WebhookCounts::default();
    for (table, count) in [
        (WEBHOOK_OUTBOX, &mut counts.pending),
        (WEBHOOK_DEAD, &mut counts.dead),
    ] {
        for row in txn.open_table(table)?.range((hook, 0)..=(hook, u64::MAX))? {
            row?;
            *count += 1;
        }
    }
    Ok(counts)
}
