use super::*;
use crate::store::suite::{store_suite, Fixture};

/// A redb store in a temporary data directory.
struct TempStore(tempfile::TempDir);

impl Fixture for TempStore {
    type Store = RedbStore;

    fn new() -> TempStore {
        TempStore(tempfile::tempdir().unwrap())
    }

    fn open(&self) -> RedbStore {
        RedbStore::open(self.0.path()).unwrap()
    }
}

store_suite!(TempStore);

#[test]
fn refuses_a_newer_format() {
    let place = TempStore::new();
    {
        let store = place.open();
        let txn = store.db.begin_write().unwrap();
        txn.open_table(META)
            .unwrap()
            .insert("format_version", FORMAT_VERSION + 1)
            .unwrap();
        txn.commit().unwrap();
    }
    match RedbStore::open(place.0.path()) {
        Err(StoreError::NewerFormat { found, supported }) => {
            assert_eq!((found, supported), (FORMAT_VERSION + 1, FORMAT_VERSION))
        }
        other => panic!("expected NewerFormat, got {:?}", other.err()),
    }
}

/// A store with a few rooms: a self room, messages with and without a
/// `clientMessageId`, one seen, a profile.
fn filled(place: &TempStore) -> RedbStore {
    let store = place.open();
    let ab = RoomKey::new("alice", "bob");
    let aa = RoomKey::new("alice", "alice");
    let mut txn = store.begin().unwrap();
    txn.append(&ab, "alice", "hi", Some("c1"), 1_000).unwrap();
    txn.append(&ab, "bob", "hello", None, 2_000).unwrap();
    txn.append(&ab, "alice", "how are you", Some("c2"), 3_000)
        .unwrap();
    txn.append(&aa, "alice", "note to self", Some("c1"), 4_000)
        .unwrap();
    txn.mark_seen(&ab, "bob", 1, 5_000, 5_000).unwrap();
    txn.put_profile(&SessionUser {
        id: "alice".into(),
        name: "Alice".into(),
    })
    .unwrap();
    txn.commit().unwrap();
    store
}

#[test]
fn a_backup_holds_every_table_and_verifies() {
    use crate::store::Maintenance;
    let place = TempStore::new();
    let store = filled(&place);
    let dest = place.0.path().join("copy.redb");
    // A tiny buffer, so that the copy is committed in many pieces.
    let counts = store.backup_into(&dest, 64).unwrap();
    assert_eq!(
        counts,
        crate::store::StoreCounts {
            rooms: 2,
            messages: 4,
            highest_message_id: 3
        }
    );
    // A backup refuses to overwrite.
    assert!(store.backup_into(&dest, 1 << 20).is_err());

    // Table by table, row for row the same: compare every table's length.
    let copy = redb::ReadOnlyDatabase::open(&dest).unwrap();
    let (a, b) = (store.db.begin_read().unwrap(), copy.begin_read().unwrap());
    use redb::TableHandle;
    let names = |t: &redb::ReadTransaction| {
        let mut v: Vec<String> = t
            .list_tables()
            .unwrap()
            .map(|h| h.name().to_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(&a), names(&b));
    assert_eq!(names(&a).len(), 7);
    use redb::ReadableTableMetadata;
    assert_eq!(
        a.open_table(MESSAGES).unwrap().len().unwrap(),
        b.open_table(MESSAGES).unwrap().len().unwrap()
    );
    assert_eq!(b.open_table(CLIENT_IDS).unwrap().len().unwrap(), 3);
    assert_eq!(b.open_table(INBOX).unwrap().len().unwrap(), 3);
    drop((a, b, copy));

    let found = verify(&dest).unwrap();
    assert!(found.ok(), "{found:?}");
    assert_eq!(
        (
            found.rooms,
            found.messages,
            found.client_ids,
            found.inbox_rows,
            found.profiles
        ),
        (2, 4, 3, 3, 1)
    );
    // The copy opens as a store and serves what the original did.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(&dest, dir.path().join(DB_FILE)).unwrap();
    let restored = RedbStore::open(dir.path()).unwrap();
    let ab = RoomKey::new("alice", "bob");
    let page = restored.messages_page_now(&ab, "bob", None, 50).unwrap();
    assert_eq!(page.messages.len(), 3);
    assert_eq!(page.partner.name, "Alice");
    assert!(restored
        .find_by_client_id_now(&ab, "alice", "c2")
        .unwrap()
        .is_some());
}

#[test]
fn a_backup_refuses_a_store_with_a_table_it_does_not_know() {
    use crate::store::Maintenance;
    let place = TempStore::new();
    let store = filled(&place);
    let txn = store.db.begin_write().unwrap();
    txn.open_table(TableDefinition::<u64, u64>::new("new_table"))
        .unwrap()
        .insert(1, 1)
        .unwrap();
    txn.commit().unwrap();
    let dest = place.0.path().join("copy.redb");
    let e = store.backup_into(&dest, 1 << 20).unwrap_err().to_string();
    assert!(e.contains("new_table"), "{e}");
    assert!(!dest.exists());
}

/// Damages the store through redb, closes it, and returns what verify says.
fn verify_after(damage: impl FnOnce(&redb::WriteTransaction)) -> Verified {
    let place = TempStore::new();
    let store = filled(&place);
    let txn = store.db.begin_write().unwrap();
    damage(&txn);
    txn.commit().unwrap();
    drop(store);
    let found = verify(&place.0.path().join(DB_FILE)).unwrap();
    assert!(!found.ok());
    assert_eq!(found.problem_count as usize, found.problems.len());
    found
}

#[test]
fn verify_finds_each_kind_of_damage() {
    let place = TempStore::new();
    drop(filled(&place));
    let found = verify(&place.0.path().join(DB_FILE)).unwrap();
    assert!(found.ok(), "{found:?}");

    // A message row deleted: a gap in the ids, a dangling index row, an unread count off.
    let found = verify_after(|t| {
        t.open_table(MESSAGES).unwrap().remove((1, 2)).unwrap();
    });
    let text = found.problems.join("\n");
    assert!(text.contains("message id 3 where 2 was expected"), "{text}");
    assert!(text.contains("unread counts"), "{text}");

    // An index row naming a message that is not its.
    let found = verify_after(|t| {
        t.open_table(CLIENT_IDS)
            .unwrap()
            .insert((1, "alice", "c9"), 2)
            .unwrap();
    });
    assert!(
        found.problems[0].contains("client_ids (1, alice, c9)"),
        "{found:?}"
    );

    // An inbox row of someone who is not in the room.
    let found = verify_after(|t| {
        t.open_table(INBOX)
            .unwrap()
            .insert(("carol", 5, "alice-bob", 1), ())
            .unwrap();
    });
    assert!(
        found.problems.iter().any(|p| p.contains("inbox of carol")),
        "{found:?}"
    );

    // A message of a room that does not exist.
    let found = verify_after(|t| {
        t.open_table(MESSAGES)
            .unwrap()
            .insert((9, 1), b"x".as_slice())
            .unwrap();
    });
    assert!(
        found
            .problems
            .iter()
            .any(|p| p.contains("room 9, which has no record")),
        "{found:?}"
    );
}

#[test]
fn verify_refuses_a_store_a_server_holds() {
    let place = TempStore::new();
    let store = filled(&place);
    let e = verify(&place.0.path().join(DB_FILE))
        .unwrap_err()
        .to_string();
    assert!(e.contains("already open"), "{e}");
    drop(store);
    assert!(verify(&place.0.path().join("missing.redb")).is_err());
}

#[test]
fn compact_shrinks_a_store_with_free_pages() {
    let place = TempStore::new();
    {
        let store = place.open();
        let room = RoomKey::new("a", "b");
        let big = "x".repeat(4000);
        for round in 0..20 {
            let mut txn = store.begin().unwrap();
            for i in 0..50 {
                txn.append(&room, "a", &big, None, round * 100 + i).unwrap();
            }
            txn.commit().unwrap();
        }
        // Free most of it again.
        let txn = store.db.begin_write().unwrap();
        txn.delete_table(MESSAGES).unwrap();
        txn.open_table(MESSAGES).unwrap();
        txn.commit().unwrap();
    }
    let (before, after) = compact(place.0.path()).unwrap();
    assert!(after < before, "{before} -> {after}");
    place.open();
}
