//! The write side: one PostgreSQL transaction per writer round, on the writer's own
//! connection, READ COMMITTED.
//!
//! **Gap-free ids with writers on several nodes.** A room's row holds its counters (last
//! id, change counter, unread counts, delivered marks). A round takes the row lock of each
//! room it touches (`SELECT … FOR UPDATE`) before touching it and keeps it to its commit,
//! so while this round assigns `last_id + 1` no other node's round can: theirs waits, and
//! then reads the committed row (READ COMMITTED re-reads a row after waiting for its
//! lock). The counters are kept in memory for the round and written back in one statement
//! before COMMIT. No sequence is involved: a sequence hands out numbers that a rolled-back
//! round never uses.
//!
//! **Exactly once.** The `clientMessageId` lookup runs under the same room lock (and
//! among the round's own new messages), so two nodes cannot both store one key; the
//! unique index is the backstop, failing the round rather than storing a key twice.
//!
//! **Round trips.** A round's statements are pipelined (`Db`): `BEGIN` rides with the
//! room locks, the block checks of its sends and the lookup of all their
//! `clientMessageId`s (one statement, after the locks) and what its webhook events will
//! carry: their users' profiles and, for a recipient not connected to this node, whether
//! another live node lists them in `presence` ([`WriteTxn::read_hook_users`], one
//! statement); new messages and webhook events are held back and stored in one
//! multi-row statement each, with the room rows and `COMMIT`. A round of sends costs
//! two round trips however many it holds, with or without `clientMessageId`s or webhook
//! events, `offline_only` ones included; a retry (a key found) adds one, to read the
//! stored message as it is now. Profiles and presence are read in the round, not cached
//! across rounds: a user renamed on another node (a reconnect with a new name) is read
//! as renamed by the next round on every node, and one renamed earlier in the round by
//! the round's own write; a recipient who connected to or left another node, or whose
//! node stopped beating, counts as such from the next round on.
//!
//! **Block changes.** A blocker's blocks and unblocks are numbered gap-free like a room's
//! ids: the round takes the blocker's `block_counters` row lock and `last + 1` in the
//! statement that writes the pair's row (an unblock leaves a tombstone row that says
//! so), so the numbering costs no round trip of its own. Both take the counter's lock
//! before the pair's row.
//!
//! **Deadlocks.** Two nodes whose rounds lock rooms A then B and B then A would deadlock.
//! The writer hands the round every room its commands name ([`WriteTxn::lock_rooms`])
//! before the first command runs: the rooms a send creates are inserted, then all are
//! locked in one statement, both ordered by the pair, so every node takes them in one
//! order. What is left (profile and webhook-counter rows, an erasure's rooms, which are
//! found as it goes) is rare; PostgreSQL then aborts one round (40P01), whose callers get
//! an error and may retry.
//!
//! **Failures.** A failed statement aborts the PostgreSQL transaction, and with it the
//! whole round: COMMIT would roll back without an error, so the round remembers the
//! failure and [`WriteTxn::commit`] reports it. Its connection is then dropped (it may be
//! broken) and the next round opens a new one.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::future::try_join_all;

use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row, Statement};

use super::{backend, limit_param, message_from, wait, OP_TIMEOUT};
use crate::model::{ChatMessage, RoomKey, SessionUser};
use crate::store::{
    Appended, ClientKey, DeleteOutcome, EditOutcome, Erasure, Expired, HookUser, Lifted,
    OutboxEvent, ReceivedOutcome, Result, RoomLock, SeenOutcome, WriteTxn,
};

/// The message columns, in [`message_from`]'s order.
macro_rules! message_columns {
    () => {
        "id, user_id, message, sent_ms, seen_ms, client_message_id, delivered_ms, \
         edited_ms, deleted_ms, change"
    };
}

/// The room columns, in [`RoomRow::from`]'s order.
macro_rules! room_columns {
    () => {
        "num, low, high, last_id, last_sent_ms, unread_low, unread_high, change, \
         delivered_low, delivered_high, listed"
    };
}

/// Messages of an erased user read at a time, so an erasure's memory stays flat however
/// much the user sent.
const ERASE_CHUNK: i64 = 1024;

/// A connection and its prepared statements (each statement is prepared once per
/// connection, then only bound and executed).
pub(super) struct Conn {
    client: Client,
    statements: HashMap<&'static str, Statement>,
    round_trips: Arc<AtomicU64>,
}

/// One statement of a pipeline: plain SQL (transaction control) or a kept-prepared query.
enum Step<'a> {
    Simple(&'static str),
    Query(&'static str, &'a [&'a (dyn ToSql + Sync)]),
}

impl Conn {
    pub(super) fn new(client: Client, round_trips: Arc<AtomicU64>) -> Conn {
        Conn {
            client,
            statements: HashMap::new(),
            round_trips,
        }
    }

    fn trip(&self) {
        self.round_trips.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// Runs statements without parameters (transaction control, migrations).
    pub(super) fn batch(&mut self, sql: &str) -> Result<()> {
        self.trip();
        Ok(wait(self.client.batch_execute(sql), OP_TIMEOUT)??)
    }

    /// Runs a statement that is not kept prepared (run once, at start).
    pub(super) fn query_raw(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>> {
        self.trip();
        Ok(wait(self.client.query(sql, params), OP_TIMEOUT)??)
    }

    /// Sends `steps` together and waits for all their answers: one round trip, however
    /// many steps. tokio-postgres writes a request when its future is first polled, and
    /// `try_join_all` polls a handful of futures in order, so PostgreSQL runs them in
    /// this order. Rows come back per step (none for a `Simple` one). After a failed
    /// step PostgreSQL refuses the rest of the transaction, so the first error is the
    /// one that counts.
    fn pipeline(&mut self, steps: &[Step<'_>]) -> Result<Vec<Vec<Row>>> {
        let mut missing: Vec<&'static str> = Vec::new();
        for step in steps {
            if let Step::Query(sql, _) = step {
                if !self.statements.contains_key(sql) && !missing.contains(sql) {
                    missing.push(sql);
                }
            }
        }
        if !missing.is_empty() {
            self.trip();
            let prepared = wait(
                try_join_all(missing.iter().map(|sql| self.client.prepare(sql))),
                OP_TIMEOUT,
            )??;
            self.statements.extend(missing.into_iter().zip(prepared));
        }
        self.trip();
        let client = &self.client;
        let statements = &self.statements;
        let requests = steps.iter().map(|step| -> Pending<'_> {
            match *step {
                Step::Simple(sql) => {
                    Box::pin(async move { client.batch_execute(sql).await.map(|()| Vec::new()) })
                }
                Step::Query(sql, params) => Box::pin(client.query(&statements[sql], params)),
            }
        });
        Ok(wait(try_join_all(requests), OP_TIMEOUT)??)
    }
}

/// A step's answer, still to come.
type Pending<'a> =
    Pin<Box<dyn Future<Output = std::result::Result<Vec<Row>, tokio_postgres::Error>> + 'a>>;

/// A new message of the round, not yet sent to PostgreSQL (see [`Db`]).
struct NewMessage {
    room: i64,
    message: ChatMessage,
}

/// Stores a round's new messages in one statement. No `ON CONFLICT`: each was checked
/// for a retry under its room's lock, so a clash with the unique index is a fault, and
/// failing the round is the backstop.
const INSERT_MESSAGES: &str = "INSERT INTO messages (room, id, user_id, message, sent_ms, \
     client_message_id, change) \
     SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::bigint[], \
                          $6::text[], $7::bigint[])";

/// Stores a round's held-back webhook events in one statement, with seqs taken in
/// their order from the one seq row; its lock, held to the commit, makes seqs follow
/// commit order across nodes. `$6` is the number of events.
const INSERT_OUTBOX: &str = "WITH s AS (INSERT INTO webhook_seq (last) VALUES ($6) \
       ON CONFLICT (one) DO UPDATE SET last = webhook_seq.last + $6 RETURNING last) \
     INSERT INTO webhook_outbox (hook, seq, recipient, id, created_ms, body) \
     SELECT v.hook, s.last - $6 + v.n, v.recipient, v.id, v.created_ms, v.body \
     FROM s, unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[]) \
       WITH ORDINALITY AS v(hook, recipient, id, created_ms, body, n)";

/// Whether the user `$user` is listed by a node other than this one (`$node`) whose
/// heartbeat is recent (`$expiry` seconds, `presence.rs`): connected to another live node.
macro_rules! connected_elsewhere {
    ($user:literal, $expiry:literal, $node:literal) => {
        concat!(
            "EXISTS (SELECT 1 FROM presence p JOIN cluster_nodes n ON n.name = p.node \
             WHERE p.user_id = ",
            $user,
            " AND p.node <> ",
            $node,
            " AND n.seen > now() - make_interval(secs => ",
            $expiry,
            "))"
        )
    };
}

/// Reads the users the round's webhook events will need ([`WriteTxn::read_hook_users`]):
/// one row per user in `$1`, with their name if they have a profile and, where `$2` says
/// so, whether they are connected to another live node.
const READ_HOOK_USERS: &str = concat!(
    "SELECT w.user_id, pr.name, CASE WHEN w.presence THEN ",
    connected_elsewhere!("w.user_id", "$3", "$4"),
    " END FROM unnest($1::text[], $2::bool[]) AS w(user_id, presence) \
     LEFT JOIN profiles pr ON pr.user_id = w.user_id"
);

/// [`WriteTxn::online_elsewhere`] for a user the round did not name.
const ONLINE_ELSEWHERE: &str = concat!("SELECT ", connected_elsewhere!("$1", "$2", "$3"));

/// The round's connection; a failure marks the round failed.
///
/// Round trips, not PostgreSQL's work, are what a round waited on: so `BEGIN` is not
/// sent alone but in front of the round's first statement, the users named to the round
/// (profiles and presence) are read in front of it too, and the round's new messages
/// (`pending`) are held back and stored in one multi-row statement, sent in front of the
/// next statement, or of the commit: every statement sees the rows written before it, as if each had been
/// inserted at once. Its webhook events (`outbox`) are held back to the commit itself
/// (no statement of a round reads its own events): their statement takes the one seq
/// row's lock, which every node's events wait for, so it is held for the commit's round
/// trip alone, not across the round's later statements (a round that reloads its rooms'
/// latest messages, say, which another node wrote, makes one read per room).
/// Holding them back is safe because nothing is acknowledged before the commit: a failed
/// insert fails the round and every command of it, and an event commits with what it
/// describes or not at all. `pending` holds at most one round's sends
/// (`writer.max_batch`); `outbox` one event per send and hook, or one dead-letter retry
/// (at most 500).
struct Db {
    conn: RefCell<Option<Conn>>,
    failed: Cell<bool>,
    /// Whether `BEGIN` went out.
    begun: Cell<bool>,
    pending: RefCell<Vec<NewMessage>>,
    /// Held-back webhook events, with their hooks.
    outbox: RefCell<Vec<(String, OutboxEvent)>>,
    /// Users to be read with the next statement.
    wanted: RefCell<Wanted>,
    /// The profiles read so, then as this round changed them (`None`: no profile). At
    /// most one per user named to the round: two per command of it.
    profiles: RefCell<HashMap<String, Option<String>>>,
    /// Whether each user named for their presence is connected to another live node, as
    /// read so. At most one per user named to the round.
    online: RefCell<HashMap<String, bool>>,
}

/// Users named to the round and not read yet ([`READ_HOOK_USERS`]'s `$1` and `$2`).
#[derive(Default)]
struct Wanted {
    users: Vec<String>,
    presence: Vec<bool>,
}

impl Db {
    /// Runs `steps` in one round trip, behind `BEGIN` and the held-back messages if those
    /// are still to be sent; the rows of `steps`, in their order.
    fn run(&self, steps: &[Step<'_>]) -> Result<Vec<Vec<Row>>> {
        self.send(steps, false)
    }

    /// [`Db::run`] for the round's last steps (its `COMMIT`), behind its webhook events.
    fn run_last(&self, steps: &[Step<'_>]) -> Result<Vec<Vec<Row>>> {
        self.send(steps, true)
    }

    fn send(&self, steps: &[Step<'_>], last: bool) -> Result<Vec<Vec<Row>>> {
        if self.failed.get() {
            return Err(backend(
                "PostgreSQL: an earlier statement of this round failed; nothing of it is kept"
                    .into(),
            ));
        }
        let mut conn = self.conn.borrow_mut();
        let conn = conn
            .as_mut()
            .ok_or_else(|| backend("PostgreSQL: the round has no connection".into()))?;
        let pending = std::mem::take(&mut *self.pending.borrow_mut());
        let columns = InsertColumns::of(&pending);
        let params = columns.params();
        let outbox = if last {
            std::mem::take(&mut *self.outbox.borrow_mut())
        } else {
            Vec::new()
        };
        let events = OutboxColumns::of(&outbox);
        let event_params = events.params();
        let wanted = std::mem::take(&mut *self.wanted.borrow_mut());
        let (expiry, node) = (
            super::presence::NODE_EXPIRY.as_secs_f64(),
            super::presence::this_node(),
        );
        let wanted_params: [&(dyn ToSql + Sync); 4] =
            [&wanted.users, &wanted.presence, &expiry, &node];
        let mut all = Vec::with_capacity(steps.len() + 4);
        if !self.begun.get() {
            all.push(Step::Simple("BEGIN"));
        }
        let wanted_at = all.len();
        if !wanted.users.is_empty() {
            all.push(Step::Query(READ_HOOK_USERS, &wanted_params));
        }
        if !pending.is_empty() {
            all.push(Step::Query(INSERT_MESSAGES, &params));
        }
        if !outbox.is_empty() {
            all.push(Step::Query(INSERT_OUTBOX, &event_params));
        }
        let before = all.len();
        all.extend(steps.iter().map(|step| match *step {
            Step::Simple(sql) => Step::Simple(sql),
            Step::Query(sql, params) => Step::Query(sql, params),
        }));
        match conn.pipeline(&all) {
            Ok(mut rows) => {
                self.begun.set(true);
                if !wanted.users.is_empty() {
                    let (mut profiles, mut online) =
                        (self.profiles.borrow_mut(), self.online.borrow_mut());
                    for row in &rows[wanted_at] {
                        let user: String = row.get(0);
                        if let Some(elsewhere) = row.get::<_, Option<bool>>(2) {
                            online.insert(user.clone(), elsewhere);
                        }
                        profiles.insert(user, row.get(1));
                    }
                }
                Ok(rows.split_off(before))
            }
            Err(e) => {
                self.failed.set(true);
                Err(e)
            }
        }
    }

    fn q(&self, sql: &'static str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>> {
        let mut rows = self.run(&[Step::Query(sql, params)])?;
        Ok(rows.pop().unwrap_or_default())
    }

    fn one(&self, sql: &'static str, params: &[&(dyn ToSql + Sync)]) -> Result<Option<Row>> {
        Ok(self.q(sql, params)?.into_iter().next())
    }

    /// A message held back in this round under the sender's `clientMessageId`.
    fn pending_retry(&self, room: i64, sender: &str, key: &str) -> Option<ChatMessage> {
        self.pending
            .borrow()
            .iter()
            .find(|p| {
                p.room == room
                    && p.message.user_id == sender
                    && p.message.client_message_id.as_deref() == Some(key)
            })
            .map(|p| p.message.clone())
    }
}

/// [`INSERT_MESSAGES`]' parameters: the held-back messages, column by column.
struct InsertColumns<'a> {
    rooms: Vec<i64>,
    ids: Vec<i64>,
    senders: Vec<&'a str>,
    texts: Vec<&'a str>,
    sent: Vec<i64>,
    keys: Vec<Option<&'a str>>,
    changes: Vec<i64>,
}

impl<'a> InsertColumns<'a> {
    fn of(pending: &'a [NewMessage]) -> InsertColumns<'a> {
        let m = |p: &'a NewMessage| &p.message;
        InsertColumns {
            rooms: pending.iter().map(|p| p.room).collect(),
            ids: pending.iter().map(|p| m(p).id as i64).collect(),
            senders: pending.iter().map(|p| m(p).user_id.as_str()).collect(),
            texts: pending.iter().map(|p| m(p).message.as_str()).collect(),
            sent: pending.iter().map(|p| m(p).sent_ms).collect(),
            keys: pending
                .iter()
                .map(|p| m(p).client_message_id.as_deref())
                .collect(),
            changes: pending.iter().map(|p| m(p).change as i64).collect(),
        }
    }

    fn params(&self) -> [&(dyn ToSql + Sync); 7] {
        [
            &self.rooms,
            &self.ids,
            &self.senders,
            &self.texts,
            &self.sent,
            &self.keys,
            &self.changes,
        ]
    }
}

/// [`INSERT_OUTBOX`]' parameters: the held-back events, column by column.
struct OutboxColumns<'a> {
    hooks: Vec<&'a str>,
    recipients: Vec<&'a str>,
    ids: Vec<&'a str>,
    created: Vec<i64>,
    bodies: Vec<&'a str>,
    count: i64,
}

impl<'a> OutboxColumns<'a> {
    fn of(outbox: &'a [(String, OutboxEvent)]) -> OutboxColumns<'a> {
        OutboxColumns {
            hooks: outbox.iter().map(|(hook, _)| hook.as_str()).collect(),
            recipients: outbox.iter().map(|(_, e)| e.recipient.as_str()).collect(),
            ids: outbox.iter().map(|(_, e)| e.id.as_str()).collect(),
            created: outbox.iter().map(|(_, e)| e.created_ms).collect(),
            bodies: outbox.iter().map(|(_, e)| e.body.as_str()).collect(),
            count: outbox.len() as i64,
        }
    }

    fn params(&self) -> [&(dyn ToSql + Sync); 6] {
        [
            &self.hooks,
            &self.recipients,
            &self.ids,
            &self.created,
            &self.bodies,
            &self.count,
        ]
    }
}

/// A room's row, locked for the round; written back before COMMIT when `dirty`.
#[derive(Debug, Clone)]
struct RoomRow {
    num: i64,
    low: String,
    high: String,
    last_id: i64,
    last_sent_ms: i64,
    unread_low: i64,
    unread_high: i64,
    change: i64,
    delivered_low: i64,
    delivered_high: i64,
    listed: bool,
    dirty: bool,
}

impl RoomRow {
    fn from(r: &Row) -> RoomRow {
        RoomRow {
            num: r.get(0),
            low: r.get(1),
            high: r.get(2),
            last_id: r.get(3),
            last_sent_ms: r.get(4),
            unread_low: r.get(5),
            unread_high: r.get(6),
            change: r.get(7),
            delivered_low: r.get(8),
            delivered_high: r.get(9),
            listed: r.get(10),
            dirty: false,
        }
    }

    fn key(&self) -> RoomKey {
        RoomKey {
            low: self.low.clone(),
            high: self.high.clone(),
        }
    }

    fn unread_mut(&mut self, user: &str) -> &mut i64 {
        if self.low == user {
            &mut self.unread_low
        } else {
            &mut self.unread_high
        }
    }

    fn delivered_mut(&mut self, user: &str) -> &mut i64 {
        if self.low == user {
            &mut self.delivered_low
        } else {
            &mut self.delivered_high
        }
    }
}

/// One writer round.
pub(super) struct Round {
    db: Db,
    /// Where the connection goes back after the round, unless it failed.
    home: Arc<Mutex<Option<Conn>>>,
    /// The rooms locked so far, with their counters as this round changed them.
    rooms: HashMap<RoomKey, RoomRow>,
    /// Blocks between the members of the rooms this round sends to, read with their
    /// locks (`None`: no block), so a send's block check costs no round trip. At most
    /// two per room of the round.
    blocks: HashMap<(String, String), Option<i64>>,
    /// The sends' idempotency keys, by (room number, sender, `clientMessageId`): the id
    /// of the message stored under it when the locks were taken, or `None`; then each
    /// key this round stored. So a send's lookup costs no round trip. At most one per
    /// send of the round.
    retries: HashMap<(i64, String, String), Option<u64>>,
}

const SELECT_ROOM: &str = concat!(
    "SELECT ",
    room_columns!(),
    " FROM rooms WHERE low = $1 AND high = $2 FOR UPDATE"
);
const INSERT_ROOM: &str = concat!(
    "INSERT INTO rooms (low, high) VALUES ($1, $2) ON CONFLICT (low, high) DO NOTHING \
     RETURNING ",
    room_columns!()
);
/// Creates missing rooms, in the order [`LOCK_ROOMS`] locks them.
const CREATE_ROOMS: &str = "INSERT INTO rooms (low, high) \
     SELECT * FROM unnest($1::text[], $2::text[]) AS v(low, high) \
     ORDER BY v.low COLLATE \"C\", v.high COLLATE \"C\" ON CONFLICT (low, high) DO NOTHING";
/// The messages stored under the sends' idempotency keys, run after [`LOCK_ROOMS`] so
/// that it reads under the locks.
const FIND_RETRIES: &str = "SELECT m.room, m.user_id, m.client_message_id, m.id \
     FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS k(low, high, sender, key) \
     JOIN rooms r ON r.low = k.low AND r.high = k.high \
     JOIN messages m ON m.room = r.num AND m.user_id = k.sender \
                    AND m.client_message_id = k.key";
/// Locks rooms in one order on every node: by the pair, bytewise.
const LOCK_ROOMS: &str = concat!(
    "SELECT ",
    room_columns!(),
    " FROM rooms WHERE (low, high) IN (SELECT * FROM unnest($1::text[], $2::text[])) \
     ORDER BY low, high FOR UPDATE"
);
const SELECT_MESSAGE: &str = concat!(
    "SELECT ",
    message_columns!(),
    " FROM messages WHERE room = $1 AND id = $2"
);
/// Records a block: takes the blocker's next change number under its counter's row lock
/// (made for their first block) and writes the pair's row with it, in one statement.
const PUT_BLOCK: &str = "WITH counter AS ( \
         INSERT INTO block_counters AS c (blocker, last) VALUES ($1, 1) \
         ON CONFLICT (blocker) DO UPDATE SET last = c.last + 1 RETURNING last) \
     INSERT INTO blocks (blocker, blocked, since_ms, change, changed_ms) \
     SELECT $1::text, $2::text, $3::bigint, last, $3::bigint FROM counter \
     ON CONFLICT (blocker, blocked) DO UPDATE SET since_ms = EXCLUDED.since_ms, \
         change = EXCLUDED.change, changed_ms = EXCLUDED.changed_ms \
     RETURNING change";
/// Takes the blocker's counter lock before [`LIFT_BLOCK`] looks at the pair, so that the
/// look sees every lift committed before (READ COMMITTED: a new snapshot per statement),
/// and in the order [`PUT_BLOCK`] takes its locks. A blocker without a counter blocks
/// no one.
const LOCK_BLOCK_COUNTER: &str = "SELECT 1 FROM block_counters WHERE blocker = $1 FOR UPDATE";
/// Lifts a standing block: the next change number, and the pair's row becomes a
/// tombstone (`since_ms` NULL) that says so. Nothing when the pair has no standing block.
const LIFT_BLOCK: &str = "WITH counter AS ( \
         UPDATE block_counters SET last = last + 1 WHERE blocker = $1 AND EXISTS ( \
             SELECT 1 FROM blocks WHERE blocker = $1 AND blocked = $2 \
             AND since_ms IS NOT NULL) \
         RETURNING last) \
     UPDATE blocks b SET since_ms = NULL, change = counter.last, changed_ms = $3 \
     FROM counter WHERE b.blocker = $1 AND b.blocked = $2 RETURNING b.change";
const UPDATE_MESSAGE: &str = "UPDATE messages SET message = $3, seen_ms = $4, \
     client_message_id = $5, delivered_ms = $6, edited_ms = $7, deleted_ms = $8, change = $9 \
     WHERE room = $1 AND id = $2";

impl Round {
    /// A round on `conn`; its `BEGIN` goes out with its first statement.
    pub(super) fn new(conn: Conn, home: Arc<Mutex<Option<Conn>>>) -> Round {
        Round {
            db: Db {
                conn: RefCell::new(Some(conn)),
                failed: Cell::new(false),
                begun: Cell::new(false),
                pending: RefCell::new(Vec::new()),
                outbox: RefCell::new(Vec::new()),
                wanted: RefCell::default(),
                profiles: RefCell::new(HashMap::new()),
                online: RefCell::new(HashMap::new()),
            },
            home,
            rooms: HashMap::new(),
            blocks: HashMap::new(),
            retries: HashMap::new(),
        }
    }

    /// Locks and loads the room unless this round has it; `create` makes a missing one.
    /// Returns whether the room exists.
    fn load_room(&mut self, room: &RoomKey, create: bool) -> Result<bool> {
        if self.rooms.contains_key(room) {
            return Ok(true);
        }
        let params: [&(dyn ToSql + Sync); 2] = [&room.low, &room.high];
        let mut row = self.db.one(SELECT_ROOM, &params)?;
        if row.is_none() && create {
            row = self.db.one(INSERT_ROOM, &params)?;
            if row.is_none() {
                // Another node created it since the SELECT: wait for its lock.
                row = self.db.one(SELECT_ROOM, &params)?;
            }
        }
        match row {
            Some(row) => {
                self.rooms.insert(room.clone(), RoomRow::from(&row));
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// The room number of a room this round has not locked, or `None`.
    fn room_num(&self, room: &RoomKey) -> Result<Option<i64>> {
        if let Some(row) = self.rooms.get(room) {
            return Ok(Some(row.num));
        }
        let row = self.db.one(
            "SELECT num FROM rooms WHERE low = $1 AND high = $2",
            &[&room.low, &room.high],
        )?;
        Ok(row.map(|r| r.get(0)))
    }

    fn message(&self, num: i64, id: u64) -> Result<Option<ChatMessage>> {
        let id = super::id_param(id);
        Ok(self
            .db
            .one(SELECT_MESSAGE, &[&num, &id])?
            .map(|r| message_from(&r, 0)))
    }

    /// A locked room and one of its messages.
    fn locked_message(&mut self, room: &RoomKey, id: u64) -> Result<Option<ChatMessage>> {
        if !self.load_room(room, false)? {
            return Ok(None);
        }
        let num = self.rooms[room].num;
        self.message(num, id)
    }

    /// Stores a changed message under the room's next change.
    fn put_message(db: &Db, row: &mut RoomRow, message: &mut ChatMessage) -> Result<()> {
        row.change += 1;
        row.dirty = true;
        message.change = row.change as u64;
        let id = message.id as i64;
        let change = message.change as i64;
        db.q(
            UPDATE_MESSAGE,
            &[
                &row.num,
                &id,
                &message.message,
                &message.seen_ms,
                &message.client_message_id,
                &message.delivered_ms,
                &message.edited_ms,
                &message.deleted_ms,
                &change,
            ],
        )?;
        Ok(())
    }

    /// Writes the changed room rows back and commits: the held-back messages, the room
    /// rows (one statement) and `COMMIT` in one round trip.
    fn flush_and_commit(&mut self) -> Result<()> {
        let dirty: Vec<&RoomRow> = self.rooms.values().filter(|r| r.dirty).collect();
        let column = |f: fn(&RoomRow) -> i64| dirty.iter().map(|r| f(r)).collect::<Vec<i64>>();
        let columns = [
            column(|r| r.num),
            column(|r| r.last_id),
            column(|r| r.last_sent_ms),
            column(|r| r.unread_low),
            column(|r| r.unread_high),
            column(|r| r.change),
            column(|r| r.delivered_low),
            column(|r| r.delivered_high),
        ];
        let listed: Vec<bool> = dirty.iter().map(|r| r.listed).collect();
        let params: [&(dyn ToSql + Sync); 9] = [
            &columns[0],
            &columns[1],
            &columns[2],
            &columns[3],
            &columns[4],
            &columns[5],
            &columns[6],
            &columns[7],
            &listed,
        ];
        let mut steps = Vec::with_capacity(2);
        if !dirty.is_empty() {
            steps.push(Step::Query(
                "UPDATE rooms r SET last_id = v.last_id, last_sent_ms = v.last_sent_ms, \
                   unread_low = v.unread_low, unread_high = v.unread_high, change = v.change, \
                   delivered_low = v.delivered_low, delivered_high = v.delivered_high, \
                   listed = v.listed \
                 FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[], \
                             $5::bigint[], $6::bigint[], $7::bigint[], $8::bigint[], \
                             $9::bool[]) \
                   AS v(num, last_id, last_sent_ms, unread_low, unread_high, change, \
                        delivered_low, delivered_high, listed) \
                 WHERE r.num = v.num",
                &params,
            ));
        }
        if self.db.begun.get()
            || !self.db.pending.borrow().is_empty()
            || !self.db.outbox.borrow().is_empty()
            || !steps.is_empty()
        {
            steps.push(Step::Simple("COMMIT"));
            self.db.run_last(&steps)?;
        }
        Ok(())
    }

    /// Holds a webhook event back until the round's commit ([`Db`]).
    fn enqueue(&self, hook: &str, event: &OutboxEvent) {
        self.db
            .outbox
            .borrow_mut()
            .push((hook.to_owned(), event.clone()));
    }

    /// The message `sender` stored in the room under `key` before this send, in its
    /// current state. Known from [`WriteTxn::lock_rooms`] when the writer named the key
    /// (no round trip unless it is a retry, whose message is read again: this round may
    /// have changed it since, or erased the key, or expired it); else looked up now.
    fn stored_retry(&self, num: i64, sender: &str, key: &str) -> Result<Option<ChatMessage>> {
        match self.retries.get(&(num, sender.to_owned(), key.to_owned())) {
            Some(None) => return Ok(None),
            Some(Some(id)) => {
                if let Some(message) = self.message(num, *id)? {
                    if message.client_message_id.as_deref() == Some(key) {
                        return Ok(Some(message));
                    }
                }
            }
            None => {}
        }
        let stored = self.db.one(
            concat!(
                "SELECT ",
                message_columns!(),
                " FROM messages WHERE room = $1 AND user_id = $2 AND client_message_id = $3"
            ),
            &[&num, &sender, &key],
        )?;
        Ok(stored.map(|r| message_from(&r, 0)))
    }
}

impl WriteTxn for Round {
    fn lock_rooms(&mut self, rooms: &[RoomLock<'_>], sends: &[ClientKey<'_>]) -> Result<()> {
        let todo: Vec<&RoomLock<'_>> = rooms
            .iter()
            .filter(|r| !self.rooms.contains_key(r.room))
            .collect();
        let pairs = |keep: fn(&RoomLock<'_>) -> bool| -> (Vec<&str>, Vec<&str>) {
            todo.iter()
                .filter(|r| keep(r))
                .map(|r| (r.room.low.as_str(), r.room.high.as_str()))
                .unzip()
        };
        // Rooms a send creates are made first, in the same order as the locks: a new row
        // is locked by its inserter, so this is taking those locks in order too.
        let (new_lows, new_highs) = pairs(|r| r.create);
        let (lows, highs) = pairs(|_| true);
        if lows.is_empty() && sends.is_empty() {
            return Ok(());
        }
        // The block checks of the sends, both ways, read once the locks are held (the
        // statements run in order).
        let mut blockers = Vec::new();
        let mut blocked = Vec::new();
        for r in todo.iter().filter(|r| r.create && !r.room.is_self_room()) {
            let (low, high) = (r.room.low.as_str(), r.room.high.as_str());
            blockers.extend([low, high]);
            blocked.extend([high, low]);
        }
        // The sends' idempotency keys, looked up once the locks are held.
        let key_lows: Vec<&str> = sends.iter().map(|k| k.room.low.as_str()).collect();
        let key_highs: Vec<&str> = sends.iter().map(|k| k.room.high.as_str()).collect();
        let key_senders: Vec<&str> = sends.iter().map(|k| k.sender).collect();
        let key_ids: Vec<&str> = sends.iter().map(|k| k.client_message_id).collect();
        let create: [&(dyn ToSql + Sync); 2] = [&new_lows, &new_highs];
        let lock: [&(dyn ToSql + Sync); 2] = [&lows, &highs];
        let check: [&(dyn ToSql + Sync); 2] = [&blockers, &blocked];
        let find: [&(dyn ToSql + Sync); 4] = [&key_lows, &key_highs, &key_senders, &key_ids];
        let mut steps = Vec::with_capacity(4);
        if !new_lows.is_empty() {
            steps.push(Step::Query(CREATE_ROOMS, &create));
        }
        if !lows.is_empty() {
            steps.push(Step::Query(LOCK_ROOMS, &lock));
        }
        if !blockers.is_empty() {
            steps.push(Step::Query(
                "SELECT blocker, blocked, since_ms FROM blocks \
                 WHERE (blocker, blocked) IN (SELECT * FROM unnest($1::text[], $2::text[])) \
                 AND since_ms IS NOT NULL",
                &check,
            ));
        }
        if !sends.is_empty() {
            steps.push(Step::Query(FIND_RETRIES, &find));
        }
        let mut answers = self.db.run(&steps)?;
        let stored = if sends.is_empty() {
            Vec::new()
        } else {
            answers.pop().unwrap_or_default()
        };
        let found = if blockers.is_empty() {
            Vec::new()
        } else {
            answers.pop().unwrap_or_default()
        };
        let locked = if lows.is_empty() {
            Vec::new()
        } else {
            answers.pop().unwrap_or_default()
        };
        for row in &locked {
            let row = RoomRow::from(row);
            self.rooms.insert(row.key(), row);
        }
        // A key whose room is not locked (none can be: the writer names every send's
        // room) is looked up by its send instead.
        for send in sends {
            if let Some(room) = self.rooms.get(send.room) {
                self.retries.insert(
                    (
                        room.num,
                        send.sender.to_owned(),
                        send.client_message_id.to_owned(),
                    ),
                    None,
                );
            }
        }
        for row in &stored {
            let id = row.get::<_, i64>(3) as u64;
            self.retries
                .insert((row.get(0), row.get(1), row.get(2)), Some(id));
        }
        for (blocker, blocked) in blockers.iter().zip(&blocked) {
            self.blocks
                .insert(((*blocker).to_owned(), (*blocked).to_owned()), None);
        }
        for row in &found {
            self.blocks
                .insert((row.get(0), row.get(1)), Some(row.get(2)));
        }
        Ok(())
    }

    fn append(
        &mut self,
        room: &RoomKey,
        sender: &str,
        text: &str,
        client_message_id: Option<&str>,
        now_ms: i64,
    ) -> Result<Appended> {
        self.load_room(room, true)?;
        let num = self.rooms[room].num;
        // Under the room's lock: a retry stored before, or earlier in this round.
        if let Some(key) = client_message_id {
            if let Some(earlier) = self.db.pending_retry(num, sender, key) {
                return Ok(Appended::Duplicate(earlier));
            }
            if let Some(stored) = self.stored_retry(num, sender, key)? {
                return Ok(Appended::Duplicate(stored));
            }
        }
        let row = self.rooms.get_mut(room).expect("loaded");
        let message = ChatMessage {
            id: (row.last_id + 1) as u64,
            user_id: sender.to_owned(),
            message: text.to_owned(),
            sent_ms: now_ms.max(row.last_sent_ms),
            client_message_id: client_message_id.map(str::to_owned),
            change: (row.change + 1) as u64,
            ..ChatMessage::default()
        };
        if !room.is_self_room() {
            *row.unread_mut(room.partner_of(sender)) += 1;
        }
        row.last_id = message.id as i64;
        row.last_sent_ms = message.sent_ms;
        row.change = message.change as i64;
        row.listed = true;
        row.dirty = true;
        if let Some(key) = client_message_id {
            // Once held-back messages went out, `pending_retry` no longer finds it.
            self.retries
                .insert((num, sender.to_owned(), key.to_owned()), Some(message.id));
        }
        self.db.pending.borrow_mut().push(NewMessage {
            room: num,
            message: message.clone(),
        });
        Ok(Appended::New(message))
    }

    fn latest(&self, room: &RoomKey, limit: usize) -> Result<Vec<ChatMessage>> {
        let Some(num) = self.room_num(room)? else {
            return Ok(Vec::new());
        };
        let rows = self.db.q(
            concat!(
                "SELECT ",
                message_columns!(),
                " FROM messages WHERE room = $1 ORDER BY id DESC LIMIT $2"
            ),
            &[&num, &limit_param(limit)],
        )?;
        Ok(rows.iter().map(|r| message_from(r, 0)).collect())
    }

    fn mark_seen(
        &mut self,
        room: &RoomKey,
        reader: &str,
        message_id: u64,
        seen_date_ms: i64,
        now_ms: i64,
    ) -> Result<SeenOutcome> {
        let Some(mut message) = self.locked_message(room, message_id)? else {
            return Ok(SeenOutcome::NotFound);
        };
        if message.user_id == reader {
            return Ok(SeenOutcome::OwnMessage);
        }
        if message.seen_ms.is_some() {
            return Ok(SeenOutcome::AlreadySeen);
        }
        message.seen_ms = Some(seen_date_ms.clamp(message.sent_ms, message.sent_ms.max(now_ms)));
        let row = self.rooms.get_mut(room).expect("locked");
        let unread = row.unread_mut(reader);
        *unread = (*unread - 1).max(0);
        Round::put_message(&self.db, row, &mut message)?;
        Ok(SeenOutcome::Changed(message))
    }

    fn mark_received(
        &mut self,
        room: &RoomKey,
        reader: &str,
        up_to: u64,
        now_ms: i64,
    ) -> Result<ReceivedOutcome> {
        if !self.load_room(room, false)? {
            return Ok(ReceivedOutcome::NotFound);
        }
        let row = self.rooms.get_mut(room).expect("loaded");
        let up_to = super::id_param(up_to);
        if up_to == 0 || up_to > row.last_id {
            return Ok(ReceivedOutcome::NotFound);
        }
        let mark = *row.delivered_mut(reader);
        if up_to <= mark {
            return Ok(ReceivedOutcome::Unchanged);
        }
        // Only the messages past the old mark can be new to the reader.
        let rows = self.db.q(
            concat!(
                "SELECT ",
                message_columns!(),
                " FROM messages WHERE room = $1 AND id > $2 AND id <= $3 \
                  AND user_id <> $4 AND delivered_ms IS NULL ORDER BY id"
            ),
            &[&row.num, &mark, &up_to, &reader],
        )?;
        let mut delivered: Vec<ChatMessage> = rows.iter().map(|r| message_from(r, 0)).collect();
        if !delivered.is_empty() {
            let mut ids = Vec::with_capacity(delivered.len());
            let mut times = Vec::with_capacity(delivered.len());
            let mut changes = Vec::with_capacity(delivered.len());
            for message in &mut delivered {
                row.change += 1;
                message.change = row.change as u64;
                message.delivered_ms = Some(now_ms.max(message.sent_ms));
                ids.push(message.id as i64);
                times.push(message.delivered_ms);
                changes.push(row.change);
            }
            self.db.q(
                "UPDATE messages m SET delivered_ms = v.delivered_ms, change = v.change \
                 FROM unnest($2::bigint[], $3::bigint[], $4::bigint[]) \
                   AS v(id, delivered_ms, change) \
                 WHERE m.room = $1 AND m.id = v.id",
                &[&row.num, &ids, &times, &changes],
            )?;
        }
        *row.delivered_mut(reader) = up_to;
        row.dirty = true;
        Ok(ReceivedOutcome::Moved(delivered))
    }

    fn edit(
        &mut self,
        room: &RoomKey,
        editor: &str,
        message_id: u64,
        text: &str,
        window_ms: i64,
        now_ms: i64,
    ) -> Result<EditOutcome> {
        let Some(message) = self.locked_message(room, message_id)? else {
            return Ok(EditOutcome::NotFound);
        };
        let outcome = crate::store::apply_edit(message, editor, text, window_ms, now_ms);
        let EditOutcome::Changed(mut message) = outcome else {
            return Ok(outcome);
        };
        let row = self.rooms.get_mut(room).expect("locked");
        Round::put_message(&self.db, row, &mut message)?;
        Ok(EditOutcome::Changed(message))
    }

    fn delete(
        &mut self,
        room: &RoomKey,
        deleter: &str,
        message_id: u64,
        now_ms: i64,
    ) -> Result<DeleteOutcome> {
        let Some(message) = self.locked_message(room, message_id)? else {
            return Ok(DeleteOutcome::NotFound);
        };
        let outcome = crate::store::apply_delete(message, deleter, now_ms);
        let DeleteOutcome::Deleted(mut message) = outcome else {
            return Ok(outcome);
        };
        let row = self.rooms.get_mut(room).expect("locked");
        Round::put_message(&self.db, row, &mut message)?;
        Ok(DeleteOutcome::Deleted(message))
    }

    fn put_profile(&mut self, user: &SessionUser) -> Result<()> {
        self.db.q(
            "INSERT INTO profiles (user_id, name) VALUES ($1, $2) ON CONFLICT (user_id) \
             DO UPDATE SET name = EXCLUDED.name WHERE profiles.name <> EXCLUDED.name",
            &[&user.id, &user.name],
        )?;
        self.db
            .profiles
            .borrow_mut()
            .insert(user.id.clone(), Some(user.name.clone()));
        Ok(())
    }

    fn blocked_since(&self, blocker: &str, blocked: &str) -> Result<Option<i64>> {
        let pair = (blocker.to_owned(), blocked.to_owned());
        if let Some(known) = self.blocks.get(&pair) {
            return Ok(*known);
        }
        Ok(self
            .db
            .one(
                "SELECT since_ms FROM blocks WHERE blocker = $1 AND blocked = $2 \
                 AND since_ms IS NOT NULL",
                &[&blocker, &blocked],
            )?
            .map(|r| r.get(0)))
    }

    fn count_blocks(&self, blocker: &str) -> Result<usize> {
        let row = self.db.one(
            "SELECT count(*) FROM blocks WHERE blocker = $1 AND since_ms IS NOT NULL",
            &[&blocker],
        )?;
        Ok(row.map_or(0, |r| r.get::<_, i64>(0) as usize))
    }

    fn put_block(&mut self, blocker: &str, blocked: &str, since_ms: i64) -> Result<Option<u64>> {
        let pair = (blocker.to_owned(), blocked.to_owned());
        if let Some(known) = self.blocks.get_mut(&pair) {
            *known = Some(since_ms);
        }
        let row = self.db.one(PUT_BLOCK, &[&blocker, &blocked, &since_ms])?;
        Ok(row.map(|r| r.get::<_, i64>(0) as u64))
    }

    fn remove_block(&mut self, blocker: &str, blocked: &str, now_ms: i64) -> Result<Lifted> {
        let pair = (blocker.to_owned(), blocked.to_owned());
        if let Some(known) = self.blocks.get_mut(&pair) {
            *known = None;
        }
        let params: [&(dyn ToSql + Sync); 3] = [&blocker, &blocked, &now_ms];
        let mut answers = self.db.run(&[
            Step::Query(LOCK_BLOCK_COUNTER, &params[..1]),
            Step::Query(LIFT_BLOCK, &params),
        ])?;
        Ok(match answers.pop().unwrap_or_default().first() {
            Some(row) => Lifted::Lifted {
                change: Some(row.get::<_, i64>(0) as u64),
            },
            None => Lifted::NotBlocked,
        })
    }

    fn read_hook_users(&mut self, users: &[HookUser<'_>]) -> Result<()> {
        let (profiles, online) = (self.db.profiles.borrow(), self.db.online.borrow());
        let mut wanted = self.db.wanted.borrow_mut();
        for named in users {
            let presence = named.presence && !online.contains_key(named.user);
            match wanted.users.iter().position(|w| w == named.user) {
                Some(at) => wanted.presence[at] |= presence,
                None if presence || !profiles.contains_key(named.user) => {
                    wanted.users.push(named.user.to_owned());
                    wanted.presence.push(presence);
                }
                None => {}
            }
        }
        Ok(())
    }

    fn profile(&self, user: &str) -> Result<SessionUser> {
        let known = self.db.profiles.borrow().get(user).cloned();
        let name = match known {
            Some(name) => name,
            None => self
                .db
                .one("SELECT name FROM profiles WHERE user_id = $1", &[&user])?
                .map(|r| r.get(0)),
        };
        Ok(SessionUser {
            id: user.to_owned(),
            name: name.unwrap_or_else(|| user.to_owned()),
        })
    }

    fn enqueue_webhook(&mut self, hook: &str, event: &OutboxEvent) -> Result<()> {
        self.enqueue(hook, event);
        Ok(())
    }

    fn remove_webhooks(&mut self, hook: &str, seqs: &[u64]) -> Result<Vec<u64>> {
        let seqs: Vec<i64> = seqs.iter().map(|&seq| super::id_param(seq)).collect();
        let rows = self.db.q(
            "DELETE FROM webhook_outbox WHERE hook = $1 AND seq = ANY($2) RETURNING seq",
            &[&hook, &seqs],
        )?;
        Ok(rows.iter().map(|r| r.get::<_, i64>(0) as u64).collect())
    }

    fn dead_letter_webhook(
        &mut self,
        hook: &str,
        seq: u64,
        reason: &str,
        now_ms: i64,
    ) -> Result<bool> {
        let seq = super::id_param(seq);
        Ok(self
            .db
            .one(
                "WITH gone AS (DELETE FROM webhook_outbox WHERE hook = $1 AND seq = $2 \
                               RETURNING *) \
                 INSERT INTO webhook_dead (hook, seq, recipient, id, created_ms, body, reason, \
                                           dead_ms) \
                 SELECT hook, seq, recipient, id, created_ms, body, $3, $4 FROM gone \
                 RETURNING 1",
                &[&hook, &seq, &reason, &now_ms],
            )?
            .is_some())
    }

    fn retry_dead_webhooks(&mut self, hook: &str, max: usize, now_ms: i64) -> Result<u64> {
        let rows = self.db.q(
            "DELETE FROM webhook_dead WHERE hook = $1 AND seq IN \
               (SELECT seq FROM webhook_dead WHERE hook = $1 ORDER BY seq LIMIT $2) \
             RETURNING seq, recipient, id, created_ms, body",
            &[&hook, &limit_param(max)],
        )?;
        let mut events: Vec<OutboxEvent> = rows.iter().map(|r| super::outbox_event(r, 0)).collect();
        events.sort_by_key(|e| e.seq);
        for event in &events {
            let event = OutboxEvent {
                created_ms: now_ms,
                ..event.clone()
            };
            self.enqueue(hook, &event);
        }
        Ok(events.len() as u64)
    }

    fn webhook_gone(&mut self, hook: &str) -> Result<()> {
        self.db.q(
            "INSERT INTO webhook_gone (hook) VALUES ($1) ON CONFLICT (hook) DO NOTHING",
            &[&hook],
        )?;
        Ok(())
    }

    /// Listed by another node whose heartbeat is recent (`presence.rs`): as read with the
    /// round's first statement if the round named the user, else read now.
    fn online_elsewhere(&mut self, user: &str) -> Result<bool> {
        if let Some(&elsewhere) = self.db.online.borrow().get(user) {
            return Ok(elsewhere);
        }
        let expiry = super::presence::NODE_EXPIRY.as_secs_f64();
        let row = self.db.one(
            ONLINE_ELSEWHERE,
            &[&user, &expiry, &super::presence::this_node()],
        )?;
        Ok(row.is_some_and(|r| r.get(0)))
    }

    fn expire(&mut self, room: &RoomKey, cutoff_ms: i64, max: usize) -> Result<Expired> {
        if !self.load_room(room, false)? {
            return Ok(Expired {
                deleted: 0,
                more: false,
            });
        }
        let row = self.rooms.get_mut(room).expect("loaded");
        // Ids and `sentAt` rise together in a room, so the old messages are its first ones.
        let rows = self.db.q(
            "WITH old AS (SELECT id FROM messages WHERE room = $1 ORDER BY id LIMIT $2) \
             DELETE FROM messages m USING old \
             WHERE m.room = $1 AND m.id = old.id AND m.sent_ms < $3 \
             RETURNING m.id, m.user_id, m.seen_ms",
            &[&row.num, &limit_param(max), &cutoff_ms],
        )?;
        let mut newest_gone = 0;
        for r in &rows {
            let id: i64 = r.get(0);
            let sender: String = r.get(1);
            let seen: Option<i64> = r.get(2);
            newest_gone = newest_gone.max(id);
            if seen.is_none() && !room.is_self_room() {
                let unread = row.unread_mut(room.partner_of(&sender));
                *unread = (*unread - 1).max(0);
            }
        }
        let deleted = rows.len() as u64;
        if deleted > 0 {
            row.dirty = true;
            if newest_gone == row.last_id {
                row.listed = false;
            }
        }
        Ok(Expired {
            deleted,
            more: deleted == max as u64,
        })
    }

    fn erase_user(&mut self, user: &str, now_ms: i64) -> Result<Erasure> {
        let rooms: Vec<RoomKey> = self
            .db
            .q(
                "SELECT low, high FROM rooms WHERE listed AND (low = $1 OR high = $1) \
                 ORDER BY low, high",
                &[&user],
            )?
            .iter()
            .map(|r| RoomKey {
                low: r.get(0),
                high: r.get(1),
            })
            .collect();
        let locks: Vec<RoomLock<'_>> = rooms
            .iter()
            .map(|room| RoomLock {
                room,
                create: false,
            })
            .collect();
        self.lock_rooms(&locks, &[])?;
        let mut erasure = Erasure::default();
        for room in &rooms {
            let Some(row) = self.rooms.get_mut(room) else {
                continue;
            };
            let mut touched = false;
            let mut next_id = 1i64;
            loop {
                let chunk = self.db.q(
                    concat!(
                        "SELECT ",
                        message_columns!(),
                        " FROM messages WHERE room = $1 AND user_id = $2 AND id >= $3 \
                          AND (deleted_ms IS NULL OR client_message_id IS NOT NULL) \
                          ORDER BY id LIMIT $4"
                    ),
                    &[&row.num, &user, &next_id, &ERASE_CHUNK],
                )?;
                let Some(last) = chunk.last() else {
                    break;
                };
                next_id = last.get::<_, i64>(0) + 1;
                for r in &chunk {
                    let mut message = message_from(r, 0);
                    if !message.is_deleted() {
                        message.erase(now_ms);
                        erasure.messages += 1;
                    }
                    message.client_message_id = None;
                    Round::put_message(&self.db, row, &mut message)?;
                    touched = true;
                }
            }
            if touched {
                erasure.rooms.push(room.clone());
            }
        }
        self.db
            .q("DELETE FROM profiles WHERE user_id = $1", &[&user])?;
        self.db.profiles.borrow_mut().insert(user.to_owned(), None);
        // Never backwards: a clock stepped back must not re-admit tokens refused before.
        self.db.q(
            "INSERT INTO erased (user_id, at_ms) VALUES ($1, $2) ON CONFLICT (user_id) \
             DO UPDATE SET at_ms = GREATEST(erased.at_ms, EXCLUDED.at_ms)",
            &[&user, &now_ms],
        )?;
        Ok(erasure)
    }

    fn erased_at(&self, user: &str) -> Result<Option<i64>> {
        Ok(self
            .db
            .one("SELECT at_ms FROM erased WHERE user_id = $1", &[&user])?
            .map(|r| r.get(0)))
    }

    fn commit(mut self: Box<Self>) -> Result<()> {
        if self.db.failed.get() {
            return Err(backend(
                "PostgreSQL: a statement of this round failed; the round was rolled back".into(),
            ));
        }
        self.flush_and_commit()?;
        let conn = self
            .db
            .conn
            .borrow_mut()
            .take()
            .expect("a round commits once");
        *self.home.lock().unwrap() = Some(conn);
        Ok(())
    }
}

impl Drop for Round {
    /// A round dropped without commit is rolled back; its connection goes back only if it
    /// is known to be healthy.
    fn drop(&mut self) {
        let Some(mut conn) = self.db.conn.borrow_mut().take() else {
            return;
        };
        if self.db.failed.get() {
            return;
        }
        if !self.db.begun.get() || conn.batch("ROLLBACK").is_ok() {
            *self.home.lock().unwrap() = Some(conn);
        }
    }
}
