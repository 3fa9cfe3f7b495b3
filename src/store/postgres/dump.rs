//! The PostgreSQL store's [`Walk`], for export and backup in cluster mode: the same items,
//! in the same order, as the embedded store's walk, so a dump is the same lines for the
//! same data whichever store it came from.
//!
//! One `REPEATABLE READ READ ONLY` transaction on a connection of its own (not the pool's,
//! which the requests need): every page reads the same snapshot, so the dump is one
//! consistent moment while nodes go on sending. Rows come in keyset pages of [`PAGE`]
//! (`WHERE key > last ORDER BY key LIMIT n`, an index range each time, no sort), so
//! memory holds one page however large a table is. The walk goes at its consumer's pace
//! (an HTTP client reading the export), so the transaction may idle longer than the
//! store's sessions allow; it sets its own, longer limit ([`IDLE_LIMIT`]). A long export
//! holds back vacuum while it runs, as any long PostgreSQL transaction does.

use std::future::Future;

use tokio_postgres::types::ToSql;
use tokio_postgres::{IsolationLevel, Row, Statement, Transaction};

use super::{message_from, wait, PgStore, MESSAGE_COLUMNS, OP_TIMEOUT};
use crate::model::{RoomKey, SessionUser};
use crate::store::dump::{Item, RoomState, Walk};
use crate::store::{Result, StoreError};

/// Rows read per statement: a few hundred KiB of messages at most.
const PAGE: i64 = 500;

/// How long the walk's transaction may wait on its consumer between two pages.
const IDLE_LIMIT: &str = "10min";

/// `$1` is the user a data-access export is restricted to, or NULL for everything; the
/// rest is the last key of the previous page. Ids sort bytewise (`COLLATE "C"` in the
/// schema), as the embedded store's keys do; `''` sorts before every valid id.
const PROFILES: &str = "SELECT user_id, name FROM profiles \
     WHERE ($1::text IS NULL OR user_id = $1) AND user_id > $2 ORDER BY user_id LIMIT $3";
/// A user's export holds the blocks they made, not who blocks them (the blocker's data).
const BLOCKS: &str = "SELECT blocker, blocked, since_ms FROM blocks \
     WHERE ($1::text IS NULL OR blocker = $1) AND (blocker, blocked) > ($2, $3) \
     ORDER BY blocker, blocked LIMIT $4";
const ERASED: &str = "SELECT user_id, at_ms FROM erased \
     WHERE ($1::text IS NULL OR user_id = $1) AND user_id > $2 ORDER BY user_id LIMIT $3";
/// Rooms by number, which is the order they were made in, as in the embedded store. A row
/// with no message yet (a round that made it stored none, then committed) is no room a
/// dump knows: the embedded store makes a room with its first message.
const ROOMS: &str = "SELECT num, low, high, last_id, last_sent_ms, unread_low, unread_high, \
     change, delivered_low, delivered_high FROM rooms \
     WHERE last_id > 0 AND ($1::text IS NULL OR low = $1 OR high = $1) AND num > $2 \
     ORDER BY num LIMIT $3";

impl Walk for PgStore {
    fn walk<E: From<StoreError>>(
        &self,
        user: Option<&str>,
        mut each: impl FnMut(Item<'_>) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        let mut client = self.client()?;
        let txn = run(client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start())?;
        run(txn.batch_execute(&format!(
            "SET LOCAL idle_in_transaction_session_timeout = '{IDLE_LIMIT}'"
        )))?;
        let page = Pages::new(&txn)?;

        let mut after = String::new();
        loop {
            let rows = page.rows(&page.profiles, &[&user, &after, &PAGE])?;
            for r in &rows {
                each(Item::Profile(&SessionUser {
                    id: r.get(0),
                    name: r.get(1),
                }))?;
            }
            match last_page(&rows) {
                Some(last) => after = last.get(0),
                None => break,
            }
        }

        let (mut blocker, mut blocked) = (String::new(), String::new());
        loop {
            let rows = page.rows(&page.blocks, &[&user, &blocker, &blocked, &PAGE])?;
            for r in &rows {
                each(Item::Block(r.get(0), r.get(1), r.get(2)))?;
            }
            match last_page(&rows) {
                Some(last) => (blocker, blocked) = (last.get(0), last.get(1)),
                None => break,
            }
        }

        let mut after = String::new();
        loop {
            let rows = page.rows(&page.erased, &[&user, &after, &PAGE])?;
            for r in &rows {
                each(Item::Erased(r.get(0), r.get(1)))?;
            }
            match last_page(&rows) {
                Some(last) => after = last.get(0),
                None => break,
            }
        }

        let mut after_num = 0i64;
        loop {
            let rows = page.rows(&page.rooms, &[&user, &after_num, &PAGE])?;
            for r in &rows {
                let room = room_from(r);
                each(Item::Room(&room))?;
                let num: i64 = r.get(0);
                let mut after_id = 0i64;
                loop {
                    let messages = page.rows(&page.messages, &[&num, &after_id, &PAGE])?;
                    for m in &messages {
                        each(Item::Message(&room, &message_from(m, 0)))?;
                    }
                    match last_page(&messages) {
                        Some(last) => after_id = last.get(0),
                        None => break,
                    }
                }
            }
            match last_page(&rows) {
                Some(last) => after_num = last.get(0),
                None => break,
            }
        }
        // Read-only: nothing to keep, and ending it frees the snapshot at once.
        run(txn.rollback())?;
        Ok(())
    }
}

/// The walk's statements, prepared once on its transaction.
struct Pages<'t> {
    txn: &'t Transaction<'t>,
    profiles: Statement,
    blocks: Statement,
    erased: Statement,
    rooms: Statement,
    messages: Statement,
}

impl<'t> Pages<'t> {
    fn new(txn: &'t Transaction<'t>) -> Result<Pages<'t>> {
        let messages = format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE room = $1 AND id > $2 \
             ORDER BY id LIMIT $3"
        );
        Ok(Pages {
            txn,
            profiles: run(txn.prepare(PROFILES))?,
            blocks: run(txn.prepare(BLOCKS))?,
            erased: run(txn.prepare(ERASED))?,
            rooms: run(txn.prepare(ROOMS))?,
            messages: run(txn.prepare(&messages))?,
        })
    }

    fn rows(&self, statement: &Statement, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>> {
        run(self.txn.query(statement, params))
    }
}

/// The last row of a full page (more may follow), or `None` once a page came back short.
fn last_page(rows: &[Row]) -> Option<&Row> {
    if (rows.len() as i64) < PAGE {
        None
    } else {
        rows.last()
    }
}

fn room_from(r: &Row) -> RoomState {
    let count = |at: usize| r.get::<_, i64>(at) as u64;
    RoomState {
        key: RoomKey {
            low: r.get(1),
            high: r.get(2),
        },
        last_id: count(3),
        last_sent_ms: r.get(4),
        unread_low: count(5),
        unread_high: count(6),
        change: count(7),
        delivered_low: count(8),
        delivered_high: count(9),
    }
}

/// One request on the walk's own connection, within [`OP_TIMEOUT`].
fn run<T>(
    request: impl Future<Output = std::result::Result<T, tokio_postgres::Error>>,
) -> Result<T> {
    Ok(wait(request, OP_TIMEOUT)??)
}
