//! `chat-server verify` in cluster mode: the invariants the writers keep, checked in the
//! PostgreSQL database while the nodes run.
//!
//! PostgreSQL checks its own pages and constraints (`amcheck`, the unique index behind
//! exactly-once sends); what it cannot know is the chat's own bookkeeping, which the
//! embedded store's verify checks in its file. The same rules here: every room's ids are
//! one run ending at its last id (retention deletes the oldest, so the run may start past
//! 1; a room it emptied keeps its last id, with no message and out of the inboxes),
//! unread counts equal the partner's unseen messages, a room's time is its newest
//! message's and never goes back, no message's change is past its room's counter, every
//! sender is a participant, and an erased user's earlier messages are tombstones. The
//! counts are the embedded report's, so one chat verified in both stores reads the same.
//!
//! One `REPEATABLE READ READ ONLY` transaction on a connection of its own: every check sees
//! the same moment while sends go on. Each rule is one statement that the database answers
//! with the rooms breaking it, streamed, so a damaged database's report is bounded (the
//! first problems in full, then only their number) however many rows break a rule.

use std::time::Duration;

use futures_util::{pin_mut, StreamExt};
use tokio_postgres::types::ToSql;
use tokio_postgres::IsolationLevel;

use super::{wait, PgStore, OP_TIMEOUT};
use crate::store::verified::Verified;
use crate::store::Result;

/// Longest one rule's scan may take: a large database is read whole.
const SCAN_WAIT: Duration = Duration::from_secs(3600);

/// Each room with its messages summed up, for the rules below. A row that no round ever
/// stored a message in (`last_id` 0, no message) is no room, as for the dump.
const ROOMS: &str = "WITH summed AS (
        SELECT r.num, r.low, r.high, r.last_id, r.last_sent_ms, r.unread_low, r.unread_high,
            r.change, r.listed,
            count(m.id) AS n, min(m.id) AS first, max(m.id) AS newest,
            count(*) FILTER (WHERE m.user_id = r.high AND m.seen_ms IS NULL AND r.low <> r.high)
                AS unseen_low,
            count(*) FILTER (WHERE m.user_id = r.low AND m.seen_ms IS NULL AND r.low <> r.high)
                AS unseen_high,
            max(m.change) AS top_change,
            count(*) FILTER (WHERE m.user_id <> r.low AND m.user_id <> r.high) AS strangers
        FROM rooms r LEFT JOIN messages m ON m.room = r.num
        GROUP BY r.num
    )
    SELECT format('room %s (%s, %s): %s', num, low, high, problem) FROM summed,
    LATERAL (VALUES
        (CASE WHEN n > 0 AND newest <> last_id
            THEN format('last id is %s but its newest message is %s', last_id, newest) END),
        (CASE WHEN n > 0 AND newest - first + 1 <> n
            THEN format('ids %s..%s hold %s messages: a gap', first, newest, n) END),
        (CASE WHEN n > 0 AND first < 1 THEN format('message id %s', first) END),
        (CASE WHEN n = 0 AND listed THEN 'in the inboxes with no message' END),
        (CASE WHEN n > 0 AND NOT listed THEN 'has messages but is in no inbox' END),
        (CASE WHEN n > 0 AND last_sent_ms <>
                (SELECT sent_ms FROM messages WHERE room = num AND id = newest)
            THEN 'its time is not its last message''s' END),
        (CASE WHEN (unread_low, unread_high) <> (unseen_low, unseen_high)
            THEN format('unread counts are (%s, %s) but unseen messages (%s, %s)',
                unread_low, unread_high, unseen_low, unseen_high) END),
        (CASE WHEN top_change > change
            THEN format('a message has change %s, past the room''s counter %s',
                top_change, change) END),
        (CASE WHEN strangers > 0
            THEN format('%s messages from someone not a participant', strangers) END)
    ) AS rules (problem)
    WHERE problem IS NOT NULL AND (last_id > 0 OR n > 0)
    ORDER BY num";

/// Messages sent earlier than the one before them in their room.
const BACK_IN_TIME: &str = "SELECT format('room %s: message %s goes back in time', room, id)
    FROM (SELECT room, id, sent_ms,
            lag(sent_ms) OVER (PARTITION BY room ORDER BY id) AS before FROM messages) m
    WHERE sent_ms < before ORDER BY room, id";

/// An erased user's messages from before the erasure that still have their text or key.
const ERASED_KEPT: &str = "SELECT format(
        'room %s: message %s of erased %s still has its text or clientMessageId',
        m.room, m.id, m.user_id)
    FROM messages m JOIN erased e ON e.user_id = m.user_id
    WHERE m.sent_ms < e.at_ms AND (m.deleted_ms IS NULL OR m.client_message_id IS NOT NULL)
    ORDER BY m.room, m.id";

/// The counts of the report, as the embedded store counts them: an inbox row per
/// participant of each listed room, a change row per message changed.
const COUNTS: &str = "SELECT
    (SELECT count(*) FROM rooms WHERE last_id > 0),
    (SELECT count(*) FROM messages),
    (SELECT count(client_message_id) FROM messages),
    (SELECT coalesce(sum(CASE WHEN low = high THEN 1 ELSE 2 END), 0)::bigint
        FROM rooms WHERE listed),
    (SELECT count(*) FROM profiles),
    (SELECT count(*) FROM messages WHERE change > 0),
    (SELECT count(*) FROM erased)";

impl PgStore {
    /// Checks the database's chat invariants (see the module docs); a report with no
    /// problem is sound. Fails only when the database cannot be read.
    pub fn verify(&self) -> Result<Verified> {
        let mut client = self.client()?;
        let txn = wait(
            client
                .build_transaction()
                .isolation_level(IsolationLevel::RepeatableRead)
                .read_only(true)
                .start(),
            OP_TIMEOUT,
        )??;
        // A large database takes a while to scan: no statement limit here.
        wait(
            txn.batch_execute("SET LOCAL statement_timeout = 0"),
            OP_TIMEOUT,
        )??;
        let mut found = Verified::default();
        for rule in [ROOMS, BACK_IN_TIME, ERASED_KEPT] {
            let rows = wait(
                txn.query_raw(rule, std::iter::empty::<&dyn ToSql>()),
                SCAN_WAIT,
            )??;
            pin_mut!(rows);
            while let Some(row) = wait(rows.next(), SCAN_WAIT)? {
                found.problem(row?.get(0));
            }
        }
        let counts = wait(txn.query_one(COUNTS, &[]), SCAN_WAIT)??;
        let count = |at: usize| counts.get::<_, i64>(at) as u64;
        found.rooms = count(0);
        found.messages = count(1);
        found.client_ids = count(2);
        found.inbox_rows = count(3);
        found.profiles = count(4);
        found.change_rows = count(5);
        found.erased_users = count(6);
        wait(txn.commit(), OP_TIMEOUT)??;
        Ok(found)
    }
}
