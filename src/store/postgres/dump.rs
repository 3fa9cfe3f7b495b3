//! The PostgreSQL store's [`Walk`], for export and backup in cluster mode: the same items,
//! in the same order, as the embedded store's walk, so a dump is the same lines for the
//! same data whichever store it came from. And its [`Load`] ([`PgLoader`]), for import
//! and restore into an empty database.
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
use crate::model::{ChatMessage, RoomKey, SessionUser};
use crate::store::dump::{Item, Load, LoadError, RoomState, Taken, Walk};
use crate::store::{Result, StoreError};

/// Rows read per statement, and so held at a time: 500 messages at most.
const PAGE: i64 = 500;

/// How long the walk's transaction may wait on its consumer between two pages.
const IDLE_LIMIT: &str = "10min";

/// `$1` is the user a data-access export is restricted to, or NULL for everything; the
/// rest is the last key of the previous page. Ids sort bytewise (`COLLATE "C"` in the
/// schema), as the embedded store's keys do; `''` sorts before every valid id.
const PROFILES: &str = "SELECT user_id, name FROM profiles \
     WHERE ($1::text IS NULL OR user_id = $1) AND user_id > $2 ORDER BY user_id LIMIT $3";
/// A user's export holds the blocks they made, not who blocks them (the blocker's data).
/// A lifted block's tombstone is no block: a dump holds standing blocks only, and a load
/// numbers them afresh.
const BLOCKS: &str = "SELECT blocker, blocked, since_ms FROM blocks \
     WHERE ($1::text IS NULL OR blocker = $1) AND (blocker, blocked) > ($2, $3) \
     AND since_ms IS NOT NULL \
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

/// Rows of all tables gathered before they are written: one multi-row `INSERT` per table
/// per batch, so a load makes a handful of round trips per thousand rows. The batch is
/// what a load holds in memory (with messages of the largest size, a few MiB).
const LOAD_BATCH: usize = 1000;

const INSERT_PROFILES: &str = "INSERT INTO profiles (user_id, name) \
     SELECT * FROM unnest($1::text[], $2::text[]) ON CONFLICT DO NOTHING RETURNING user_id";
/// Each block gets minus its line as a change number, unique until the load's `finish`
/// numbers them 1.. per blocker (`number_blocks`).
const INSERT_BLOCKS: &str = "INSERT INTO blocks (blocker, blocked, since_ms, change, changed_ms) \
     SELECT b, d, s, -n, s FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[]) \
     AS v(b, d, s, n) ON CONFLICT DO NOTHING RETURNING blocker, blocked";
const INSERT_ERASED: &str = "INSERT INTO erased (user_id, at_ms) \
     SELECT * FROM unnest($1::text[], $2::bigint[]) ON CONFLICT DO NOTHING RETURNING user_id";
/// Rooms keep the numbers the load gives them (1, 2, … in dump order, so a re-export
/// walks them in the same order); the identity is moved past them at the end.
const INSERT_ROOMS: &str = "INSERT INTO rooms (num, low, high, last_id, last_sent_ms, \
     unread_low, unread_high, change, delivered_low, delivered_high) OVERRIDING SYSTEM VALUE \
     SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::bigint[], $5::bigint[], \
     $6::bigint[], $7::bigint[], $8::bigint[], $9::bigint[], $10::bigint[]) \
     ON CONFLICT DO NOTHING RETURNING num";
/// A message the `clientMessageId` index refuses is left out, and missing from what comes
/// back: that is how a reused `clientMessageId` is found.
const INSERT_MESSAGES: &str = "INSERT INTO messages (room, id, user_id, message, sent_ms, \
     seen_ms, client_message_id, delivered_ms, edited_ms, deleted_ms, change) \
     SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::bigint[], \
     $6::bigint[], $7::text[], $8::bigint[], $9::bigint[], $10::bigint[], $11::bigint[]) \
     ON CONFLICT DO NOTHING RETURNING room, id";
/// Change-log positions of the batch that two messages of a room hold (no index enforces
/// it; the live store hands each position out once under the room's lock).
const SHARED_CHANGES: &str = "SELECT room, change FROM messages \
     WHERE (room, change) IN (SELECT * FROM unnest($1::bigint[], $2::bigint[])) \
     GROUP BY room, change HAVING count(*) > 1";
/// In both participants' inboxes: the room's newest message is there.
const LIST_ROOMS: &str = "UPDATE rooms SET listed = true WHERE num = ANY($1::bigint[])";

/// A load into an empty database, in one transaction on a connection of its own: nothing
/// is visible until [`Load::finish`] commits, and dropping it unfinished closes the
/// connection, which rolls everything back. The tables stay locked against writes
/// (`EXCLUSIVE`: reads go on) from the emptiness check to the commit, so a node running on
/// the database cannot slip a row in between; its sends wait, and fail after their
/// statement timeout, until the load ends.
pub struct PgLoader<'s> {
    /// The store whose runtime runs the connection's task.
    _store: &'s PgStore,
    client: tokio_postgres::Client,
    statements: LoadStatements,
    profiles: Vec<(usize, SessionUser)>,
    blocks: Vec<(usize, String, String, i64)>,
    erased: Vec<(usize, String, i64)>,
    rooms: Vec<(usize, i64, RoomState)>,
    messages: Vec<PendingMessage>,
    /// Rooms whose newest message is in the batch.
    listed: Vec<i64>,
    /// The room messages go to now: its number and state.
    current: Option<(i64, RoomState)>,
    /// Rooms loaded so far; the next one is numbered one more.
    rooms_loaded: i64,
}

struct PendingMessage {
    line: usize,
    room: i64,
    room_id: String,
    message: ChatMessage,
}

struct LoadStatements {
    profiles: Statement,
    blocks: Statement,
    erased: Statement,
    rooms: Statement,
    messages: Statement,
    shared_changes: Statement,
    list_rooms: Statement,
}

impl PgStore {
    /// Starts a load into this database, which must hold no chat data (no room, profile,
    /// block or erasure): a load builds a new store, it does not merge.
    pub fn loader(&self) -> Result<PgLoader<'_>> {
        let client = self.client()?;
        run(client.batch_execute(&format!(
            "BEGIN; SET LOCAL idle_in_transaction_session_timeout = '{IDLE_LIMIT}'; \
             LOCK TABLE rooms, messages, profiles, blocks, block_counters, erased IN EXCLUSIVE MODE"
        )))?;
        let held = run(client.query_one(
            "SELECT (SELECT count(*) FROM rooms), (SELECT count(*) FROM profiles), \
             (SELECT count(*) FROM blocks), (SELECT count(*) FROM erased)",
            &[],
        ))?;
        let counts: Vec<i64> = (0..4).map(|at| held.get(at)).collect();
        if counts.iter().any(|&n| n > 0) {
            return Err(super::backend(format!(
                "the PostgreSQL database is not empty ({} rooms, {} profiles, {} blocks, \
                 {} erased users): import loads into an empty database only",
                counts[0], counts[1], counts[2], counts[3]
            )));
        }
        let statements = LoadStatements {
            profiles: run(client.prepare(INSERT_PROFILES))?,
            blocks: run(client.prepare(INSERT_BLOCKS))?,
            erased: run(client.prepare(INSERT_ERASED))?,
            rooms: run(client.prepare(INSERT_ROOMS))?,
            messages: run(client.prepare(INSERT_MESSAGES))?,
            shared_changes: run(client.prepare(SHARED_CHANGES))?,
            list_rooms: run(client.prepare(LIST_ROOMS))?,
        };
        Ok(PgLoader {
            _store: self,
            client,
            statements,
            profiles: Vec::new(),
            blocks: Vec::new(),
            erased: Vec::new(),
            rooms: Vec::new(),
            messages: Vec::new(),
            listed: Vec::new(),
            current: None,
            rooms_loaded: 0,
        })
    }
}

impl PgLoader<'_> {
    fn pending(&self) -> usize {
        self.profiles.len()
            + self.blocks.len()
            + self.erased.len()
            + self.rooms.len()
            + self.messages.len()
    }

    /// Counts a row, writing the batch when it is full.
    fn added(&mut self) -> std::result::Result<(), LoadError> {
        if self.pending() >= LOAD_BATCH {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes the batch, rooms before their messages, and reports the first row (by line)
    /// of each table that clashed with one already loaded.
    fn flush(&mut self) -> std::result::Result<(), LoadError> {
        let st = &self.statements;
        let client = &self.client;
        if !self.profiles.is_empty() {
            let ids: Vec<&str> = self.profiles.iter().map(|(_, p)| p.id.as_str()).collect();
            let names: Vec<&str> = self.profiles.iter().map(|(_, p)| p.name.as_str()).collect();
            let stored = run(client.query(&st.profiles, &[&ids, &names]))?;
            let stored = stored.iter().map(|r| r.get::<_, String>(0)).collect();
            if let Some((line, p)) =
                first_clash(&self.profiles, stored, |(l, p)| (*l, p.id.clone()))
            {
                return taken(line, Taken::Profile(p.1.id.clone()));
            }
            self.profiles.clear();
        }
        if !self.blocks.is_empty() {
            let blockers: Vec<&str> = self.blocks.iter().map(|b| b.1.as_str()).collect();
            let blocked: Vec<&str> = self.blocks.iter().map(|b| b.2.as_str()).collect();
            let since: Vec<i64> = self.blocks.iter().map(|b| b.3).collect();
            let lines: Vec<i64> = self.blocks.iter().map(|b| b.0 as i64).collect();
            let stored = run(client.query(&st.blocks, &[&blockers, &blocked, &since, &lines]))?;
            let stored = stored
                .iter()
                .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1)))
                .collect();
            if let Some((line, b)) =
                first_clash(&self.blocks, stored, |b| (b.0, (b.1.clone(), b.2.clone())))
            {
                return taken(
                    line,
                    Taken::Block {
                        blocker: b.1.clone(),
                        blocked: b.2.clone(),
                    },
                );
            }
            self.blocks.clear();
        }
        if !self.erased.is_empty() {
            let users: Vec<&str> = self.erased.iter().map(|e| e.1.as_str()).collect();
            let at: Vec<i64> = self.erased.iter().map(|e| e.2).collect();
            let stored = run(client.query(&st.erased, &[&users, &at]))?;
            let stored = stored.iter().map(|r| r.get::<_, String>(0)).collect();
            if let Some((line, e)) = first_clash(&self.erased, stored, |e| (e.0, e.1.clone())) {
                return taken(line, Taken::Erased(e.1.clone()));
            }
            self.erased.clear();
        }
        if !self.rooms.is_empty() {
            let column = |f: fn(&RoomState) -> u64| -> Vec<i64> {
                self.rooms.iter().map(|(_, _, r)| f(r) as i64).collect()
            };
            let nums: Vec<i64> = self.rooms.iter().map(|(_, num, _)| *num).collect();
            let lows: Vec<&str> = self.rooms.iter().map(|r| r.2.key.low.as_str()).collect();
            let highs: Vec<&str> = self.rooms.iter().map(|r| r.2.key.high.as_str()).collect();
            let last_sent: Vec<i64> = self.rooms.iter().map(|r| r.2.last_sent_ms).collect();
            let stored = run(client.query(
                &st.rooms,
                &[
                    &nums,
                    &lows,
                    &highs,
                    &column(|r| r.last_id),
                    &last_sent,
                    &column(|r| r.unread_low),
                    &column(|r| r.unread_high),
                    &column(|r| r.change),
                    &column(|r| r.delivered_low),
                    &column(|r| r.delivered_high),
                ],
            ))?;
            let stored = stored.iter().map(|r| r.get::<_, i64>(0)).collect();
            if let Some((line, room)) = first_clash(&self.rooms, stored, |r| (r.0, r.1)) {
                return taken(line, Taken::Room(room.2.key.id()));
            }
            self.rooms.clear();
        }
        if !self.messages.is_empty() {
            let ms = &self.messages;
            let rooms: Vec<i64> = ms.iter().map(|m| m.room).collect();
            let ids: Vec<i64> = ms.iter().map(|m| m.message.id as i64).collect();
            let senders: Vec<&str> = ms.iter().map(|m| m.message.user_id.as_str()).collect();
            let texts: Vec<&str> = ms.iter().map(|m| m.message.message.as_str()).collect();
            let sent: Vec<i64> = ms.iter().map(|m| m.message.sent_ms).collect();
            let seen: Vec<Option<i64>> = ms.iter().map(|m| m.message.seen_ms).collect();
            let keys: Vec<Option<&str>> = ms
                .iter()
                .map(|m| m.message.client_message_id.as_deref())
                .collect();
            let delivered: Vec<Option<i64>> = ms.iter().map(|m| m.message.delivered_ms).collect();
            let edited: Vec<Option<i64>> = ms.iter().map(|m| m.message.edited_ms).collect();
            let deleted: Vec<Option<i64>> = ms.iter().map(|m| m.message.deleted_ms).collect();
            let changes: Vec<i64> = ms.iter().map(|m| m.message.change as i64).collect();
            let stored = run(client.query(
                &st.messages,
                &[
                    &rooms, &ids, &senders, &texts, &sent, &seen, &keys, &delivered, &edited,
                    &deleted, &changes,
                ],
            ))?;
            let stored = stored
                .iter()
                .map(|r| (r.get::<_, i64>(0), r.get::<_, i64>(1)))
                .collect();
            if let Some((line, m)) =
                first_clash(ms, stored, |m| (m.line, (m.room, m.message.id as i64)))
            {
                return taken(
                    line,
                    Taken::ClientId {
                        room_id: m.room_id.clone(),
                        user_id: m.message.user_id.clone(),
                        client_message_id: m.message.client_message_id.clone().unwrap_or_default(),
                    },
                );
            }
            let (rooms, changes): (Vec<i64>, Vec<i64>) = ms
                .iter()
                .filter(|m| m.message.change > 0)
                .map(|m| (m.room, m.message.change as i64))
                .unzip();
            let shared = run(client.query(&st.shared_changes, &[&rooms, &changes]))?;
            // The clash is the later of the two messages, which is in this batch: the
            // earlier batches were checked when they were written.
            let clash = shared
                .iter()
                .filter_map(|r| {
                    let (room, change) = (r.get::<_, i64>(0), r.get::<_, i64>(1) as u64);
                    ms.iter()
                        .filter(|m| m.room == room && m.message.change == change)
                        .max_by_key(|m| m.message.id)
                })
                .min_by_key(|m| m.line);
            if let Some(m) = clash {
                return taken(
                    m.line,
                    Taken::Change {
                        room_id: m.room_id.clone(),
                        change: m.message.change,
                    },
                );
            }
            self.messages.clear();
        }
        if !self.listed.is_empty() {
            run(client.execute(&st.list_rooms, &[&self.listed]))?;
            self.listed.clear();
        }
        Ok(())
    }
}

impl Load for PgLoader<'_> {
    fn profile(&mut self, line: usize, user: &SessionUser) -> std::result::Result<(), LoadError> {
        self.profiles.push((line, user.clone()));
        self.added()
    }

    fn block(
        &mut self,
        line: usize,
        blocker: &str,
        blocked: &str,
        since_ms: i64,
    ) -> std::result::Result<(), LoadError> {
        self.blocks
            .push((line, blocker.to_owned(), blocked.to_owned(), since_ms));
        self.added()
    }

    fn erased(
        &mut self,
        line: usize,
        user: &str,
        at_ms: i64,
    ) -> std::result::Result<(), LoadError> {
        self.erased.push((line, user.to_owned(), at_ms));
        self.added()
    }

    fn room(&mut self, line: usize, room: &RoomState) -> std::result::Result<(), LoadError> {
        for (what, n) in [
            ("lastId", room.last_id),
            ("unread", room.unread_low.max(room.unread_high)),
            ("change", room.change),
        ] {
            bigint(what, n)?;
        }
        self.rooms_loaded += 1;
        let num = self.rooms_loaded;
        self.rooms.push((line, num, room.clone()));
        self.current = Some((num, room.clone()));
        self.added()
    }

    fn message(
        &mut self,
        line: usize,
        message: &ChatMessage,
    ) -> std::result::Result<(), LoadError> {
        let Some((room, state)) = &self.current else {
            return Err(StoreError::Corrupt("a message before any room".into()).into());
        };
        if message.id == state.last_id {
            self.listed.push(*room);
        }
        self.messages.push(PendingMessage {
            line,
            room: *room,
            room_id: state.key.id(),
            message: message.clone(),
        });
        self.added()
    }

    fn finish(mut self) -> std::result::Result<(), LoadError> {
        self.flush()?;
        if self.rooms_loaded > 0 {
            run(self.client.query_one(
                "SELECT setval(pg_get_serial_sequence('rooms', 'num'), $1)",
                &[&self.rooms_loaded],
            ))?;
        }
        run(self.client.batch_execute(super::schema::number_blocks!()))?;
        // Synchronous commit (the store's sessions): durable once this returns.
        run(self.client.batch_execute("COMMIT"))?;
        Ok(())
    }
}

/// The first row, in line order, whose key `stored` does not hold (or holds for an
/// earlier row only): the row the database refused as a duplicate.
fn first_clash<T, K: std::hash::Hash + Eq>(
    batch: &[T],
    mut stored: std::collections::HashSet<K>,
    key: impl Fn(&T) -> (usize, K),
) -> Option<(usize, &T)> {
    batch.iter().find_map(|row| {
        let (line, k) = key(row);
        (!stored.remove(&k)).then_some((line, row))
    })
}

fn taken(line: usize, taken: Taken) -> std::result::Result<(), LoadError> {
    Err(LoadError::Taken { line, taken })
}

/// PostgreSQL stores counters as `bigint`: a dump's larger number is refused, not wrapped.
fn bigint(what: &str, n: u64) -> std::result::Result<i64, LoadError> {
    i64::try_from(n).map_err(|_| {
        LoadError::Store(super::backend(format!(
            "{what} {n} is past PostgreSQL's bigint"
        )))
    })
}
