//! The conformance suite against a throwaway PostgreSQL, and what only a database shared
//! by several nodes can get wrong: ids under concurrent writers, lock order, a refused
//! newer schema, a database that goes away and comes back.

use std::sync::Arc;

use super::PgStore;
use crate::model::RoomKey;
use crate::store::suite::{store_suite, Fixture};
use crate::store::{Appended, RoomLock, StoreError, WriteStore};

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
    txn.lock_rooms(&locks).unwrap();
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
    let mut txn = store.begin()?;
    let locks: Vec<RoomLock<'_>> = rooms
        .iter()
        .map(|room| RoomLock { room, create: true })
        .collect();
    txn.lock_rooms(&locks)?;
    let mut ids = Vec::new();
    for _ in 0..per_room {
        for room in rooms {
            let sender = room.low.as_str();
            let partner = room.partner_of(sender);
            if txn.blocked_since(sender, partner)?.is_some()
                || txn.blocked_since(partner, sender)?.is_some()
            {
                continue;
            }
            match txn.append(room, sender, "x", None, 1)? {
                Appended::New(m) => ids.push(m.id),
                Appended::Duplicate(m) => panic!("not a retry: {m:?}"),
            }
        }
    }
    txn.commit()?;
    Ok(ids)
}

#[test]
fn a_round_of_sends_costs_two_round_trips_however_many_sends() {
    let pg = TestPostgres::start();
    let store = PgStore::open(&pg.url(), 2).unwrap();
    let rooms: Vec<RoomKey> = (0..10).map(|i| room(&format!("u{i}"), "z")).collect();
    // The first round prepares the statements on the connection.
    assert_eq!(send_round(&store, &rooms, 1).unwrap().len(), 10);
    // A block made meanwhile by another node is seen by the next round's checks.
    pg.psql("INSERT INTO blocks (blocker, blocked, since_ms) VALUES ('z', 'u3', 5)");
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
    txn.lock_rooms(&[RoomLock {
        room: &ab,
        create: true,
    }])
    .unwrap();
    assert_eq!(txn.blocked_since("b", "a").unwrap(), None);
    txn.put_block("b", "a", 7).unwrap();
    assert_eq!(txn.blocked_since("b", "a").unwrap(), Some(7));
    assert!(txn.remove_block("b", "a").unwrap());
    assert_eq!(txn.blocked_since("b", "a").unwrap(), None);
    txn.put_block("b", "a", 9).unwrap();
    txn.commit().unwrap();
    let mut txn = store.begin().unwrap();
    txn.lock_rooms(&[RoomLock {
        room: &ab,
        create: true,
    }])
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
