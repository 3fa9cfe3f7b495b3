//! The conformance suite against a throwaway PostgreSQL, and what only a database shared
//! by several nodes can get wrong: ids under concurrent writers, lock order, a refused
//! newer schema, a database that goes away and comes back.

use std::sync::Arc;

use super::PgStore;
use crate::model::RoomKey;
use crate::store::dump::Load;
use crate::store::suite::{store_suite, Fixture};
use crate::store::{
    Appended, BlockCursor, BlockFrom, ClientKey, HookUser, Lifted, Maintenance, OutboxEvent,
    ReadStore, RoomLock, StoreError, WriteStore,
};

#[path = "../../../tests/common/postgres.rs"]
mod testdb;

use testdb::TestPostgres;

/// One throwaway PostgreSQL per test.
pub struct TempPg(TestPostgres);

impl Fixture for TempPg {
    type Store = PgStore;

    fn new() -> TempPg {
        TempPg(TestPostgres::start())
    }

    fn open(&self) -> PgStore {
        PgStore::open(&self.0.url(), 4).unwrap()
    }
}

store_suite!(TempPg);

fn room(a: &str, b: &str) -> RoomKey {
    RoomKey::new(a, b)
}

/// Appends one message in its own round, the way the writer does: rooms locked first.
fn append_round(store: &PgStore, rooms: &[&RoomKey], sender: &str) -> Vec<u64> {
    let mut txn = store.begin().unwrap();
    let locks: Vec<RoomLock<'_>> = rooms
        .iter()
        .map(|room| RoomLock { room, create: true })
        .collect();
    txn.lock_rooms(&locks, &[]).unwrap();
    let mut ids = Vec::new();
    for room in rooms {
        match txn.append(room, sender, "x", None, 1).unwrap() {
            Appended::New(m) => ids.push(m.id),
            Appended::Duplicate(m) => panic!("not a retry: {m:?}"),
        }
    }
    txn.commit().unwrap();
    ids
}

#[test]
fn two_nodes_appending_to_the_same_rooms_keep_ids_gap_free() {
    let pg = TestPostgres::start();
    let (ab, cd) = (room("a", "b"), room("c", "d"));
    let rounds = 150;
    // Two stores are two nodes: each its own writer connection, racing on both rooms, one
    // naming them in the opposite order of the other.
    let nodes: Vec<_> = [("a", false), ("b", true)]
        .into_iter()
        .map(|(sender, reversed)| {
            let store = PgStore::open(&pg.url(), 2).unwrap();
            let (ab, cd) = (ab.clone(), cd.clone());
            std::thread::spawn(move || {
                let order = if reversed { [&cd, &ab] } else { [&ab, &cd] };
                (0..rounds)
                    .flat_map(|_| append_round(&store, &order, sender))
                    .count()
            })
        })
        .collect();
    let stored: usize = nodes.into_iter().map(|n| n.join().unwrap()).sum();
    assert_eq!(stored, 4 * rounds);
    let ids = pg.psql(
        "SELECT string_agg(m.id::text, ',' ORDER BY m.id) FROM messages m \
         JOIN rooms r ON r.num = m.room GROUP BY r.low ORDER BY r.low",
    );
    let expected: Vec<String> = (1..=2 * rounds).map(|i| i.to_string()).collect();
    let expected = expected.join(",");
    assert_eq!(ids.lines().collect::<Vec<_>>(), [&expected, &expected]);
}

#[test]
fn rooms_taken_one_by_one_in_opposite_orders_deadlock_into_a_clear_error() {
    let pg = TestPostgres::start();
    let (one, two) = (
        PgStore::open(&pg.url(), 2).unwrap(),
        PgStore::open(&pg.url(), 2).unwrap(),
    );
    let (ab, cd) = (room("a", "b"), room("c", "d"));
    append_round(&one, &[&ab, &cd], "a");
    // Without lock_rooms each round locks a room when it first touches it: a takes ab then
    // cd while b takes cd then ab. PostgreSQL breaks the cycle by failing one round.
    let barrier = Arc::new(std::sync::Barrier::new(2));
    let race = |store: PgStore, first: RoomKey, second: RoomKey| {
        let barrier = barrier.clone();
        std::thread::spawn(move || {
            let mut txn = store.begin().unwrap();
            txn.append(&first, "a", "x", None, 1).unwrap();
            barrier.wait();
            let out = txn.append(&second, "a", "x", None, 1);
            out.and_then(|_| txn.commit())
        })
    };
    let left = race(one, ab.clone(), cd.clone());
    let right = race(two, cd, ab);
    let outcomes = [left.join().unwrap(), right.join().unwrap()];
    let failed: Vec<String> = outcomes
        .iter()
        .filter_map(|o| o.as_ref().err().map(|e| e.to_string()))
        .collect();
    assert_eq!(failed.len(), 1, "one round must lose: {outcomes:?}");
    assert!(failed[0].contains("deadlock"), "{}", failed[0]);
    assert!(matches!(
        outcomes.iter().find(|o| o.is_err()),
        Some(Err(StoreError::Backend(_)))
    ));
}

#[test]
fn a_database_migrated_by_a_newer_binary_is_refused() {
    let pg = TestPostgres::start();
    drop(PgStore::open(&pg.url(), 1).unwrap());
    pg.psql("UPDATE schema_version SET version = version + 1");
    match PgStore::open(&pg.url(), 1) {
        Err(StoreError::NewerFormat { found, supported }) => {
            assert_eq!(
                (found, supported),
                (super::SCHEMA_VERSION + 1, super::SCHEMA_VERSION)
            );
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("a newer schema was opened"),
    }
}

#[test]
fn writes_fail_clearly_while_postgres_is_down_and_resume_when_it_is_back() {
    let pg = TestPostgres::start();
    let store = PgStore::open(&pg.url(), 2).unwrap();
    let ab = room("a", "b");
    assert_eq!(append_round(&store, &[&ab], "a"), [1]);
    pg.stop_immediate();
    let started = std::time::Instant::now();
    let down = store
        .begin()
        .and_then(|mut txn| {
            txn.append(&ab, "a", "x", None, 1)?;
            txn.commit()
        })
        .expect_err("PostgreSQL is down");
    assert!(
        started.elapsed() < super::OP_TIMEOUT,
        "took {:?}",
        started.elapsed()
    );
    assert!(down.to_string().contains("PostgreSQL"), "{down}");
    pg.start_again();
    // The next round connects anew: nothing committed was lost, and ids go on.
    assert_eq!(append_round(&store, &[&ab], "a"), [2]);
}

/// A round of sends as the writer makes it: the rooms locked, then per send the block
/// checks both ways and the append.
fn send_round(store: &PgStore, rooms: &[RoomKey], per_room: usize) -> Result<Vec<u64>, StoreError> {
    let sends = keyed_round(store, rooms, per_room, |_, _| None, false)?;
    Ok(sends
        .into_iter()
        .map(|(id, duplicate)| {
            assert!(!duplicate, "not a retry: {id}");
            id
        })
        .collect())
}

/// [`send_round`] with a `clientMessageId` per send (`key(turn, room index)`), named to
/// the round's `lock_rooms` as the writer names them, and with a webhook event per new
/// message if `events`: (id, whether it was a retry) per send not blocked.
fn keyed_round(
    store: &PgStore,
    rooms: &[RoomKey],
    per_room: usize,
    key: impl Fn(usize, usize) -> Option<String>,
    events: bool,
) -> Result<Vec<(u64, bool)>, StoreError> {
    let mut txn = store.begin()?;
    let locks: Vec<RoomLock<'_>> = rooms
        .iter()
        .map(|room| RoomLock { room, create: true })
        .collect();
    let keys: Vec<(usize, Option<String>)> = (0..per_room)
        .flat_map(|turn| (0..rooms.len()).map(move |at| (turn, at)))
        .map(|(turn, at)| (at, key(turn, at)))
        .collect();
    let named: Vec<ClientKey<'_>> = keys
        .iter()
        .filter_map(|(at, key)| {
            Some(ClientKey {
                room: &rooms[*at],
                sender: &rooms[*at].low,
                client_message_id: key.as_deref()?,
            })
        })
        .collect();
    txn.lock_rooms(&locks, &named)?;
    let mut sends = Vec::new();
    for (at, key) in &keys {
        let room = &rooms[*at];
        let sender = room.low.as_str();
        let partner = room.partner_of(sender);
        if txn.blocked_since(sender, partner)?.is_some()
            || txn.blocked_since(partner, sender)?.is_some()
        {
            continue;
        }
        match txn.append(room, sender, "x", key.as_deref(), 1)? {
            Appended::New(m) => {
                if events {
                    let event = OutboxEvent {
                        seq: 0,
                        recipient: partner.to_owned(),
                        id: format!("{}:{}", room.id(), m.id),
                        created_ms: 1,
                        body: "{}".into(),
                    };
                    txn.enqueue_webhook("http://hook.example", &event)?;
                }
                sends.push((m.id, false));
            }
            Appended::Duplicate(m) => sends.push((m.id, true)),
        }
    }
    txn.commit()?;
    Ok(sends)
}

#[test]
fn a_round_of_sends_costs_two_round_trips_however_many_sends() {
    let pg = TestPostgres::start();
    let store = PgStore::open(&pg.url(), 2).unwrap();
    let rooms: Vec<RoomKey> = (0..10).map(|i| room(&format!("u{i}"), "z")).collect();
    // The first round prepares the statements on the connection.
    assert_eq!(send_round(&store, &rooms, 1).unwrap().len(), 10);
    // A block made meanwhile by another node is seen by the next round's checks.
    pg.psql(
        "INSERT INTO blocks (blocker, blocked, since_ms, change, changed_ms) \
         VALUES ('z', 'u3', 5, 1, 5)",
    );
    let before = store.round_trips();
    let ids = send_round(&store, &rooms, 4).unwrap();
    // BEGIN, the room locks and the block checks; then the 36 inserts, the room rows
    // and COMMIT.
    assert_eq!(store.round_trips() - before, 2);
    assert_eq!(ids.len(), 9 * 4);
    assert_eq!(
        pg.psql(
            "SELECT string_agg(r.low || ':' || r.last_id || ':' || \
               (SELECT string_agg(id::text, ',' ORDER BY id) FROM messages WHERE room = r.num), \
               ' ' ORDER BY r.low) FROM rooms r"
        )
        .trim(),
        "u0:5:1,2,3,4,5 u1:5:1,2,3,4,5 u2:5:1,2,3,4,5 u3:1:1 u4:5:1,2,3,4,5 \
         u5:5:1,2,3,4,5 u6:5:1,2,3,4,5 u7:5:1,2,3,4,5 u8:5:1,2,3,4,5 u9:5:1,2,3,4,5"
    );
}

#[test]
fn a_block_and_an_unblock_earlier_in_the_round_decide_its_later_sends() {
    let pg = TestPostgres::start();
    let store = PgStore::open(&pg.url(), 2).unwrap();
    let ab = room("a", "b");
    let mut txn = store.begin().unwrap();
    txn.lock_rooms(
        &[RoomLock {
            room: &ab,
            create: true,
        }],
        &[],
    )
    .unwrap();
    assert_eq!(txn.blocked_since("b", "a").unwrap(), None);
    txn.put_block("b", "a", 7).unwrap();
    assert_eq!(txn.blocked_since("b", "a").unwrap(), Some(7));
    assert!(matches!(
        txn.remove_block("b", "a", 8).unwrap(),
        Lifted::Lifted { change: Some(2) }
    ));
    assert_eq!(txn.blocked_since("b", "a").unwrap(), None);
    txn.put_block("b", "a", 9).unwrap();
    txn.commit().unwrap();
    let mut txn = store.begin().unwrap();
    txn.lock_rooms(
        &[RoomLock {
            room: &ab,
            create: true,
        }],
        &[],
    )
    .unwrap();
    assert_eq!(txn.blocked_since("b", "a").unwrap(), Some(9));
    assert_eq!(txn.blocked_since("a", "b").unwrap(), None);
}

#[test]
fn a_held_back_insert_that_fails_fails_the_round_and_keeps_nothing_of_it() {
    let pg = TestPostgres::start();
    let store = PgStore::open(&pg.url(), 2).unwrap();
    let (ab, cd) = (room("a", "b"), room("c", "d"));
    assert_eq!(
        send_round(&store, &[ab.clone(), cd.clone()], 1).unwrap(),
        [1, 1]
    );
    // A row the room's counter does not know of: the round's message 2 in ab clashes.
    pg.psql(
        "INSERT INTO messages (room, id, user_id, message, sent_ms, change) \
         SELECT num, 2, 'a', 'planted', 1, 99 FROM rooms WHERE low = 'a'",
    );
    let failed = send_round(&store, &[ab.clone(), cd.clone()], 1).expect_err("clashes");
    assert!(
        failed.to_string().contains("PostgreSQL") && failed.to_string().contains("duplicate key"),
        "{failed}"
    );
    // Nothing of the round: not cd's message either, and no counter moved.
    assert_eq!(
        pg.psql(
            "SELECT string_agg(r.low || ':' || r.last_id || ':' || \
               (SELECT count(*) FROM messages WHERE room = r.num), ' ' ORDER BY r.low) \
             FROM rooms r"
        )
        .trim(),
        "a:1:2 c:1:1"
    );
    pg.psql("DELETE FROM messages WHERE message = 'planted'");
    assert_eq!(send_round(&store, &[ab, cd], 1).unwrap(), [2, 2]);
}

#[test]
fn a_round_of_sends_with_client_message_ids_costs_two_round_trips_however_many_sends() {
    let pg = TestPostgres::start();
    let store = PgStore::open(&pg.url(), 2).unwrap();
    let rooms: Vec<RoomKey> = (0..10).map(|i| room(&format!("u{i}"), "z")).collect();
    let key = |turn: usize, at: usize| Some(format!("k{turn}-{at}"));
    // The first round prepares the statements; it stores turn 0's keys.
    assert_eq!(
        keyed_round(&store, &rooms, 1, key, false).unwrap().len(),
        10
    );
    let before = store.round_trips();
    // 50 sends, the last two turns sending the first two's keys again: 30 new, 20
    // retries of this round's own sends.
    let again = |turn: usize, at: usize| key(turn.min(3) - usize::from(turn == 4), at);
    let sends = keyed_round(&store, &rooms, 5, |turn, at| again(turn + 1, at), false).unwrap();
    // BEGIN, the room locks, the block checks and the 50 key lookups; then the 30
    // inserts, the room rows and COMMIT.
    assert_eq!(store.round_trips() - before, 2);
    assert_eq!(sends.len(), 50);
    assert_eq!(sends.iter().filter(|(_, retry)| *retry).count(), 20);
    let room0: Vec<(u64, bool)> = sends.iter().step_by(10).copied().collect();
    assert_eq!(
        room0,
        [(2, false), (3, false), (4, false), (3, true), (4, true)]
    );
    // A retry of a send stored in an earlier round answers it: one more round trip per
    // retry, to read it as it is now (the first one also prepares that read).
    assert_eq!(
        keyed_round(&store, &rooms[..1], 1, key, false).unwrap(),
        [(1, true)]
    );
    let before = store.round_trips();
    let retried = keyed_round(&store, &rooms[..2], 1, key, false).unwrap();
    assert_eq!(retried, [(1, true), (1, true)]);
    assert_eq!(store.round_trips() - before, 2 + 2);
    assert_eq!(
        pg.psql("SELECT count(*), count(DISTINCT (room, client_message_id)) FROM messages")
            .trim(),
        "40|40"
    );
}

#[test]
fn a_key_named_to_the_round_and_stored_meanwhile_by_another_node_is_a_retry() {
    let pg = TestPostgres::start();
    let (one, two) = (
        PgStore::open(&pg.url(), 2).unwrap(),
        PgStore::open(&pg.url(), 2).unwrap(),
    );
    let ab = room("a", "b");
    // Node two holds the room's lock while it stores the key; node one's round, named
    // the same key, waits for the lock and then must find it, not store it again.
    let mut held = two.begin().unwrap();
    held.lock_rooms(
        &[RoomLock {
            room: &ab,
            create: true,
        }],
        &[],
    )
    .unwrap();
    assert!(matches!(
        held.append(&ab, "a", "x", Some("k"), 1).unwrap(),
        Appended::New(_)
    ));
    let racing = std::thread::spawn(move || {
        keyed_round(&one, &[room("a", "b")], 1, |_, _| Some("k".into()), false).unwrap()
    });
    std::thread::sleep(std::time::Duration::from_millis(300));
    held.commit().unwrap();
    assert_eq!(racing.join().unwrap(), [(1, true)]);
    assert_eq!(pg.psql("SELECT count(*) FROM messages").trim(), "1");
}

#[test]
fn a_round_s_webhook_events_ride_with_its_commit_in_order() {
    let pg = TestPostgres::start();
    let store = PgStore::open(&pg.url(), 2).unwrap();
    let rooms: Vec<RoomKey> = (0..10).map(|i| room(&format!("u{i}"), "z")).collect();
    keyed_round(&store, &rooms, 1, |_, _| None, true).unwrap();
    let before = store.round_trips();
    keyed_round(&store, &rooms, 3, |_, _| None, true).unwrap();
    // 30 events: no round trip of their own.
    assert_eq!(store.round_trips() - before, 2);
    // Seqs 1..40 in enqueue order, with no gap.
    let order = pg.psql(
        "SELECT string_agg(seq::text || '=' || id, ',' ORDER BY seq) FROM webhook_outbox \
         WHERE id LIKE 'u0-z:%' OR id LIKE 'u9-z:%'",
    );
    assert_eq!(
        order.trim(),
        "1=u0-z:1,10=u9-z:1,11=u0-z:2,20=u9-z:2,21=u0-z:3,30=u9-z:3,31=u0-z:4,40=u9-z:4"
    );
    assert_eq!(
        pg.psql("SELECT count(*), max(seq) FROM webhook_outbox")
            .trim(),
        "40|40"
    );
    // A round that fails keeps none of its events.
    pg.psql(
        "INSERT INTO messages (room, id, user_id, message, sent_ms, change) \
         SELECT num, 5, 'u0', 'planted', 1, 99 FROM rooms WHERE low = 'u0'",
    );
    keyed_round(&store, &rooms, 1, |_, _| None, true).expect_err("clashes");
    assert_eq!(
        pg.psql("SELECT count(*), max(seq) FROM webhook_outbox")
            .trim(),
        "40|40"
    );
}

/// A blocker's block changes, as a node reading past `after` sees them: (blocked,
/// standing, change).
async fn changes_after(store: &PgStore, blocker: &str, after: u64) -> Vec<(String, bool, u64)> {
    let cursor = [BlockCursor {
        blocker: blocker.to_owned(),
        from: BlockFrom::After(after),
    }];
    store
        .block_changes(&cursor)
        .await
        .unwrap()
        .into_iter()
        .map(|c| {
            assert_eq!(c.blocker, blocker);
            (c.blocked, c.since_ms.is_some(), c.change)
        })
        .collect()
}

#[tokio::test]
async fn block_changes_are_numbered_per_blocker_and_a_lifted_block_leaves_a_tombstone() {
    let pg = TestPostgres::start();
    let store = PgStore::open(&pg.url(), 2).unwrap();
    // A block round costs what it did before the numbering: the look-up, the count and
    // the write, then the commit; an unblock its write and the commit. (Measured once
    // the writer's connection has its statements prepared.)
    let mut txn = store.begin().unwrap();
    txn.blocked_since("w", "x").unwrap();
    txn.count_blocks("w").unwrap();
    txn.put_block("w", "x", 1).unwrap();
    txn.remove_block("w", "x", 1).unwrap();
    txn.commit().unwrap();
    let before = store.round_trips();
    let mut txn = store.begin().unwrap();
    assert_eq!(txn.blocked_since("a", "b").unwrap(), None);
    assert_eq!(txn.count_blocks("a").unwrap(), 0);
    assert_eq!(txn.put_block("a", "b", 10).unwrap(), Some(1));
    txn.commit().unwrap();
    assert_eq!(store.round_trips() - before, 4);
    let before = store.round_trips();
    let mut txn = store.begin().unwrap();
    assert_eq!(
        txn.remove_block("a", "b", 11).unwrap(),
        Lifted::Lifted { change: Some(2) }
    );
    txn.commit().unwrap();
    assert_eq!(store.round_trips() - before, 2);

    let mut txn = store.begin().unwrap();
    // Lifting what is not blocked takes no number; another blocker counts on their own.
    assert_eq!(txn.remove_block("a", "b", 12).unwrap(), Lifted::NotBlocked);
    assert_eq!(
        txn.remove_block("a", "zed", 12).unwrap(),
        Lifted::NotBlocked
    );
    assert_eq!(txn.put_block("a", "c", 13).unwrap(), Some(3));
    assert_eq!(txn.put_block("q", "a", 13).unwrap(), Some(1));
    assert_eq!(txn.put_block("a", "b", 14).unwrap(), Some(4));
    txn.commit().unwrap();
    // The tombstone of b was replaced by the new block: one row per pair, its latest.
    assert_eq!(
        changes_after(&store, "a", 0).await,
        [("c".to_owned(), true, 3), ("b".to_owned(), true, 4)]
    );
    let mut txn = store.begin().unwrap();
    assert!(matches!(
        txn.remove_block("a", "c", 15).unwrap(),
        Lifted::Lifted { change: Some(5) }
    ));
    txn.commit().unwrap();
    assert_eq!(
        changes_after(&store, "a", 3).await,
        [("b".to_owned(), true, 4), ("c".to_owned(), false, 5)]
    );
    // By time, for a node that knows no number: the changes made at or after it.
    let since = [BlockCursor {
        blocker: "a".into(),
        from: BlockFrom::Since(14),
    }];
    let by_time: Vec<u64> = store
        .block_changes(&since)
        .await
        .unwrap()
        .iter()
        .map(|c| c.change)
        .collect();
    assert_eq!(by_time, [4, 5]);

    // The tombstone is no block to any reader: the list, the check, the count, the
    // inbox, an export.
    assert_eq!(store.blocks("a").await.unwrap().len(), 1);
    assert!(!store.blocked_between("a", "c").await.unwrap());
    assert!(!store.blocked_between("c", "a").await.unwrap());
    let txn = store.begin().unwrap();
    assert_eq!(txn.blocked_since("a", "c").unwrap(), None);
    assert_eq!(txn.count_blocks("a").unwrap(), 1);
    drop(txn);
    let mut dump = Vec::new();
    let exported = store.export_dump(None, &mut dump).unwrap();
    assert_eq!(exported.blocks, 2, "a blocks b, q blocks a");
    let dump = String::from_utf8(dump).unwrap();
    assert!(!dump.contains(r#""c""#), "{dump}");
}

#[test]
fn two_nodes_blocking_for_one_blocker_at_once_number_the_changes_gap_free() {
    let pg = TestPostgres::start();
    let nodes = [
        Arc::new(PgStore::open(&pg.url(), 2).unwrap()),
        Arc::new(PgStore::open(&pg.url(), 2).unwrap()),
    ];
    let threads: Vec<_> = nodes
        .iter()
        .enumerate()
        .map(|(n, store)| {
            let store = Arc::clone(store);
            std::thread::spawn(move || {
                let mut taken = Vec::new();
                for i in 0..20i64 {
                    let mut txn = store.begin().unwrap();
                    let blocked = format!("u{}", i % 5);
                    // Each node blocks and lifts the same few users: every change counts.
                    if (i as usize / 5 + n).is_multiple_of(2) {
                        taken.extend(txn.put_block("a", &blocked, i).unwrap());
                    } else if let Lifted::Lifted { change } =
                        txn.remove_block("a", &blocked, i).unwrap()
                    {
                        taken.extend(change);
                    }
                    txn.commit().unwrap();
                }
                taken
            })
        })
        .collect();
    let mut taken: Vec<u64> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    taken.sort_unstable();
    let expected: Vec<u64> = (1..=taken.len() as u64).collect();
    assert_eq!(taken, expected);
    assert_eq!(
        pg.psql("SELECT last FROM block_counters WHERE blocker = 'a'")
            .trim(),
        taken.len().to_string()
    );
}

#[tokio::test]
async fn a_database_at_migration_3_with_blocks_migrates_and_numbers_them() {
    let pg = TestPostgres::start();
    let mut sql = String::from(super::schema::PREPARE);
    for migration in &super::schema::MIGRATIONS[..3] {
        sql.push_str(migration);
    }
    sql.push_str(
        "INSERT INTO schema_version (version) VALUES (3); \
         INSERT INTO blocks (blocker, blocked, since_ms) \
         VALUES ('a', 'c', 20), ('a', 'b', 10), ('z', 'a', 5);",
    );
    pg.psql(&sql);
    let store = PgStore::open(&pg.url(), 2).unwrap();
    assert_eq!(pg.psql("SELECT version FROM schema_version").trim(), "4");
    let list: Vec<(String, i64)> = store
        .blocks("a")
        .await
        .unwrap()
        .into_iter()
        .map(|b| (b.user.id, b.since_ms))
        .collect();
    assert_eq!(list, [("b".to_owned(), 10), ("c".to_owned(), 20)]);
    assert!(store.blocked_between("a", "z").await.unwrap());
    // Numbered in the order they were made; the next change goes on from there.
    assert_eq!(
        changes_after(&store, "a", 0).await,
        [("b".to_owned(), true, 1), ("c".to_owned(), true, 2)]
    );
    assert_eq!(
        changes_after(&store, "z", 0).await,
        [("a".to_owned(), true, 1)]
    );
    let mut txn = store.begin().unwrap();
    assert_eq!(
        txn.remove_block("a", "b", 30).unwrap(),
        Lifted::Lifted { change: Some(3) }
    );
    assert_eq!(txn.put_block("z", "b", 30).unwrap(), Some(2));
    txn.commit().unwrap();
}

#[tokio::test]
async fn an_import_numbers_its_blocks_and_the_next_change_goes_on_from_there() {
    let pg = TestPostgres::start();
    let store = PgStore::open(&pg.url(), 2).unwrap();
    let mut load = store.loader().unwrap();
    load.block(1, "a", "c", 20).unwrap();
    load.block(2, "a", "b", 10).unwrap();
    load.block(3, "z", "a", 5).unwrap();
    load.finish().unwrap();
    assert_eq!(
        changes_after(&store, "a", 0).await,
        [("b".to_owned(), true, 1), ("c".to_owned(), true, 2)]
    );
    let mut txn = store.begin().unwrap();
    assert_eq!(txn.put_block("a", "d", 30).unwrap(), Some(3));
    assert_eq!(txn.put_block("z", "d", 30).unwrap(), Some(2));
    txn.commit().unwrap();
}

#[test]
fn a_round_s_webhook_events_read_their_recipients_profiles_with_its_locks() {
    let pg = TestPostgres::start();
    let store = PgStore::open(&pg.url(), 2).unwrap();
    let rooms: Vec<RoomKey> = (0..10).map(|i| room("a", &format!("u{i}"))).collect();
    let recipients: Vec<HookUser<'_>> = rooms
        .iter()
        .map(|r| HookUser {
            user: &r.high,
            presence: false,
        })
        .collect();
    // Each send's event reads its recipient's profile, as `message.created` does; u1
    // reconnects with a new name earlier in the round.
    let round = |rename: bool| -> Vec<String> {
        let mut txn = store.begin().unwrap();
        txn.read_hook_users(&recipients).unwrap();
        let locks: Vec<RoomLock<'_>> = rooms
            .iter()
            .map(|room| RoomLock { room, create: true })
            .collect();
        txn.lock_rooms(&locks, &[]).unwrap();
        if rename {
            txn.put_profile(&crate::model::SessionUser {
                id: "u1".into(),
                name: "Una".into(),
            })
            .unwrap();
        }
        let names = rooms
            .iter()
            .map(|room| {
                txn.append(room, "a", "x", None, 1).unwrap();
                txn.profile(&room.high).unwrap().name
            })
            .collect();
        txn.commit().unwrap();
        names
    };
    pg.psql(
        "INSERT INTO profiles (user_id, name) \
         SELECT 'u' || i, 'Name ' || i FROM generate_series(0, 8) AS i",
    );
    // The first round prepares the statements.
    round(false);
    // Renamed meanwhile by another node: the next round reads the new name.
    pg.psql("UPDATE profiles SET name = 'Zed' WHERE user_id = 'u2'");
    let before = store.round_trips();
    let names = round(false);
    // BEGIN, the profiles and the room locks; then the inserts, the room rows and COMMIT.
    assert_eq!(store.round_trips() - before, 2);
    let mut expected: Vec<String> = (0..9).map(|i| format!("Name {i}")).collect();
    expected[2] = "Zed".into();
    // A user with no profile is named by their id.
    expected.push("u9".into());
    assert_eq!(names, expected);
    // A name the round itself stores is the one its later events carry.
    let before = store.round_trips();
    let names = round(true);
    // One more to store it (and one to prepare that statement, its first use).
    assert_eq!(store.round_trips() - before, 2 + 2);
    expected[1] = "Una".into();
    assert_eq!(names, expected);
}

#[test]
fn a_round_s_webhook_events_read_their_recipients_presence_with_its_locks() {
    let pg = TestPostgres::start();
    let store = PgStore::open(&pg.url(), 2).unwrap();
    let rooms: Vec<RoomKey> = (0..8).map(|i| room("a", &format!("u{i}"))).collect();
    let named: Vec<HookUser<'_>> = rooms
        .iter()
        .map(|r| HookUser {
            user: &r.high,
            presence: true,
        })
        .collect();
    // Each send to an offline-only recipient: its event is written only if they are not
    // connected to another node, as `message.created` with an `offline_only` hook does.
    // `hooked` says whether the round has the hook; `asked` is a user the round did not
    // name but asks about anyway. Answers who was taken for online.
    let round = |hooked: bool, asked: Option<&str>| -> Vec<String> {
        let mut txn = store.begin().unwrap();
        if hooked {
            txn.read_hook_users(&named).unwrap();
        }
        let locks: Vec<RoomLock<'_>> = rooms
            .iter()
            .map(|room| RoomLock { room, create: true })
            .collect();
        txn.lock_rooms(&locks, &[]).unwrap();
        let mut online = Vec::new();
        for room in &rooms {
            txn.append(room, "a", "x", None, 1).unwrap();
            if !hooked {
                continue;
            }
            if txn.online_elsewhere(&room.high).unwrap() {
                online.push(room.high.clone());
            } else {
                txn.profile(&room.high).unwrap();
                txn.enqueue_webhook("http://hook.example", &hook_event(&room.high, "e"))
                    .unwrap();
            }
        }
        if let Some(user) = asked {
            if txn.online_elsewhere(user).unwrap() {
                online.push(user.to_owned());
            }
        }
        txn.commit().unwrap();
        online
    };
    // A live node (`live`), one whose heartbeat stopped (`dead`) and this one: u1 is on
    // the live node, u2 on the dead one, u3 here only (the hub answers for this node's
    // rows), u4 on the live and the dead one, u9 (named by no send) on the live one.
    pg.psql(&format!(
        "INSERT INTO cluster_nodes (name, seen) VALUES ('live', now()), \
           ('dead', now() - interval '1 minute'), ('{here}', now()); \
         INSERT INTO presence (user_id, node) VALUES ('u1', 'live'), ('u2', 'dead'), \
           ('u3', '{here}'), ('u4', 'live'), ('u4', 'dead'), ('u9', 'live')",
        here = super::presence::this_node()
    ));
    // The first rounds prepare the statements.
    round(false, None);
    round(true, Some("u9"));
    let before = store.round_trips();
    assert!(round(false, None).is_empty());
    let without_hook = store.round_trips() - before;
    // BEGIN, the room locks; then the inserts, the room rows and COMMIT.
    assert_eq!(without_hook, 2);
    let before = store.round_trips();
    assert_eq!(round(true, None), ["u1", "u4"]);
    // The same two: presence and profiles ride with the locks, the events with COMMIT.
    assert_eq!(store.round_trips() - before, without_hook);
    // Read in the round, not cached: u1 left the live node, u2's node is back.
    pg.psql(
        "DELETE FROM presence WHERE user_id = 'u1'; \
         UPDATE cluster_nodes SET seen = now() WHERE name = 'dead'",
    );
    let before = store.round_trips();
    assert_eq!(round(true, None), ["u2", "u4"]);
    assert_eq!(store.round_trips() - before, without_hook);
    // A user the round did not name is still answered right, with a read of its own.
    let before = store.round_trips();
    assert_eq!(round(true, Some("u9")), ["u2", "u4", "u9"]);
    assert_eq!(store.round_trips() - before, without_hook + 1);
}

fn hook_event(recipient: &str, id: &str) -> OutboxEvent {
    OutboxEvent {
        seq: 0,
        recipient: recipient.into(),
        id: id.into(),
        created_ms: 1,
        body: "{}".into(),
    }
}

#[test]
fn a_round_s_webhook_events_hold_no_other_node_up_before_its_commit() {
    let pg = TestPostgres::start();
    let (one, two) = (
        PgStore::open(&pg.url(), 2).unwrap(),
        PgStore::open(&pg.url(), 2).unwrap(),
    );
    let ab = room("a", "b");
    // Node one: a send and its event, then more statements of the round (a reload of
    // the room's latest messages), not yet committed.
    let mut held = one.begin().unwrap();
    held.lock_rooms(
        &[RoomLock {
            room: &ab,
            create: true,
        }],
        &[],
    )
    .unwrap();
    held.append(&ab, "a", "x", None, 1).unwrap();
    held.enqueue_webhook("http://hook.example", &hook_event("b", "one"))
        .unwrap();
    assert_eq!(held.latest(&ab, 50).unwrap().len(), 1);
    // Node two, in another room, commits an event of its own meanwhile: it must not
    // wait for node one's round (the events' seq row is taken with the commit).
    let racing = std::thread::spawn(move || {
        let cd = room("c", "d");
        let mut txn = two.begin().unwrap();
        txn.lock_rooms(
            &[RoomLock {
                room: &cd,
                create: true,
            }],
            &[],
        )
        .unwrap();
        txn.append(&cd, "c", "x", None, 1).unwrap();
        txn.enqueue_webhook("http://hook.example", &hook_event("d", "two"))
            .unwrap();
        txn.commit().unwrap();
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !racing.is_finished() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let finished = racing.is_finished();
    held.commit().unwrap();
    racing.join().unwrap();
    assert!(finished, "node two waited for node one's round");
    // Seqs in commit order.
    assert_eq!(
        pg.psql("SELECT string_agg(id || '=' || seq, ',' ORDER BY seq) FROM webhook_outbox")
            .trim(),
        "two=1,one=2"
    );
}
