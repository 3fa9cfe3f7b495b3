use super::*;
use crate::store::suite::{store_suite, Fixture};
use crate::store::verified::Verified;
use crate::store::Appended;
use crate::store::WriteStore;

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

#[tokio::test]
async fn the_expiry_scan_pages_through_every_room_and_names_the_old_ones() {
    let place = TempStore::new();
    let store = place.open();
    let mut txn = store.begin().unwrap();
    for (partner, sent) in [("b", 10), ("c", 1_000), ("d", 20)] {
        txn.append(&RoomKey::new("a", partner), "a", "x", None, sent)
            .unwrap();
    }
    txn.commit().unwrap();
    let mut found = Vec::new();
    let mut after = None;
    let mut steps = 0;
    loop {
        let scan = store.rooms_to_expire(100, after, 1).await.unwrap();
        steps += 1;
        found.extend(scan.rooms.into_iter().map(|r| r.id()));
        match scan.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(steps, 3);
    assert_eq!(found, ["a-b", "a-d"]);
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
    assert_eq!(names(&a).len(), 12);
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

/// A store as format 1 left it: its records in the old layout, no `changes` table.
#[tokio::test]
async fn a_format_1_store_opens_reads_and_takes_lifecycle_changes() {
    #[derive(serde::Serialize)]
    struct V1Room<'a>(&'a str, &'a str, u64, i64, u64, u64);
    #[derive(serde::Serialize)]
    struct V1Message<'a>(&'a str, &'a str, i64, Option<i64>, Option<&'a str>);

    let place = TempStore::new();
    {
        let db = Database::create(place.0.path().join(DB_FILE)).unwrap();
        let txn = db.begin_write().unwrap();
        {
            txn.open_table(META)
                .unwrap()
                .insert("format_version", 1)
                .unwrap();
            txn.open_table(META)
                .unwrap()
                .insert("next_room_num", 2)
                .unwrap();
            txn.open_table(ROOM_NUMS)
                .unwrap()
                .insert(("a", "b"), 1)
                .unwrap();
            let room = postcard::to_stdvec(&V1Room("a", "b", 2, 2000, 0, 1)).unwrap();
            txn.open_table(ROOMS)
                .unwrap()
                .insert(1, room.as_slice())
                .unwrap();
            let mut messages = txn.open_table(MESSAGES).unwrap();
            let first =
                postcard::to_stdvec(&V1Message("b", "old", 1000, Some(1500), None)).unwrap();
            messages.insert((1, 1), first.as_slice()).unwrap();
            let second = postcard::to_stdvec(&V1Message("a", "hi", 2000, None, Some("c"))).unwrap();
            messages.insert((1, 2), second.as_slice()).unwrap();
            let mut inbox = txn.open_table(INBOX).unwrap();
            for user in ["a", "b"] {
                inbox
                    .insert((user, newest_first(2000), "a-b", 1), ())
                    .unwrap();
            }
        }
        txn.commit().unwrap();
    }

    let store = place.open();
    let ab = RoomKey::new("a", "b");
    let page = store.messages_page(&ab, "a", None, 50).await.unwrap();
    let texts: Vec<_> = page.messages.iter().map(|m| m.message.as_str()).collect();
    assert_eq!(texts, ["hi", "old"]);
    assert_eq!(page.messages[1].seen_ms, Some(1500));
    assert_eq!(page.messages[0].client_message_id.as_deref(), Some("c"));
    assert!(page
        .messages
        .iter()
        .all(|m| m.delivered_ms.is_none() && m.change == 0));
    let inbox = store.inbox_page("b", None, 10).await.unwrap();
    assert_eq!((inbox[0].unread, inbox[0].last_message.id), (1, 2));
    // Nothing changed since the upgrade, so the change log is empty.
    assert!(store
        .changes(&ab, "a", 0, 50)
        .await
        .unwrap()
        .messages
        .is_empty());

    let mut txn = store.begin().unwrap();
    txn.mark_received(&ab, "b", 2, 3000).unwrap();
    let next = txn.append(&ab, "b", "new", None, 4000).unwrap();
    txn.commit().unwrap();
    assert!(matches!(next, Appended::New(ref m) if m.id == 3 && m.sent_ms == 4000));
    let changed = store.changes(&ab, "a", 0, 50).await.unwrap();
    let ids: Vec<_> = changed.messages.iter().map(|m| m.id).collect();
    assert_eq!(ids, [2, 3]);
    assert_eq!(changed.messages[0].delivered_ms, Some(3000));
    assert_eq!(store.inbox_page("a", None, 10).await.unwrap()[0].unread, 1);
    drop(store);
    let db = Database::open(place.0.path().join(DB_FILE)).unwrap();
    let version = db
        .begin_read()
        .unwrap()
        .open_table(META)
        .unwrap()
        .get("format_version")
        .unwrap()
        .unwrap()
        .value();
    assert_eq!(version, FORMAT_VERSION);
}

#[test]
fn verify_knows_erasures_and_the_change_log() {
    let place = TempStore::new();
    let store = filled(&place);
    let mut txn = store.begin().unwrap();
    txn.erase_user("alice", 10_000).unwrap();
    txn.commit().unwrap();
    drop(store);
    let found = verify(&place.0.path().join(DB_FILE)).unwrap();
    assert!(found.ok(), "{found:?}");
    // Every message got a change row when sent; alice's profile and keys are gone.
    assert_eq!(
        (
            found.erased_users,
            found.change_rows,
            found.client_ids,
            found.profiles
        ),
        (1, 4, 0, 0)
    );

    // bob marked as erased after his message was sent, while it still has its text.
    let found = verify_after(|t| {
        t.open_table(ERASED).unwrap().insert("bob", 10_000).unwrap();
    });
    assert!(
        found.problems[0].contains("message 2 of erased bob still has its text"),
        "{found:?}"
    );
    // A change row naming a message at another change.
    let found = verify_after(|t| {
        t.open_table(CHANGES).unwrap().insert((1, 99), 1).unwrap();
    });
    let text = found.problems.join("\n");
    assert!(text.contains("changes (1, 99) names message 1"), "{text}");
    assert!(text.contains("5 changes rows for 4 messages"), "{text}");
}

/// [`filled`], then swept by retention: alice-bob loses its two oldest of five messages,
/// and the self room its only one (so it keeps its record and last id, and leaves the
/// inbox).
fn swept(place: &TempStore) -> RedbStore {
    let store = filled(place);
    let ab = RoomKey::new("alice", "bob");
    let mut txn = store.begin().unwrap();
    txn.append(&ab, "bob", "later", Some("c3"), 6_000).unwrap();
    txn.append(&ab, "alice", "latest", None, 7_000).unwrap();
    txn.commit().unwrap();
    let mut txn = store.begin().unwrap();
    assert_eq!(txn.expire(&ab, 2_500, 100).unwrap().deleted, 2);
    let aa = RoomKey::new("alice", "alice");
    assert_eq!(txn.expire(&aa, 5_000, 100).unwrap().deleted, 1);
    txn.commit().unwrap();
    store
}

/// What verify says of a [`swept`] store after `damage`.
fn verify_swept(damage: impl FnOnce(&redb::WriteTransaction)) -> Verified {
    let place = TempStore::new();
    let store = swept(&place);
    let txn = store.db.begin_write().unwrap();
    damage(&txn);
    txn.commit().unwrap();
    drop(store);
    verify(&place.0.path().join(DB_FILE)).unwrap()
}

#[test]
fn verify_accepts_what_retention_leaves_and_still_finds_gaps() {
    let place = TempStore::new();
    let store = swept(&place);
    // The change log forgot the deleted messages: catching up from the start reads only
    // what is left (a row naming a deleted one would be an error here).
    let page = store
        .changes_now(&RoomKey::new("alice", "bob"), "bob", 0, 50)
        .unwrap();
    let mut changed: Vec<u64> = page.messages.iter().map(|m| m.id).collect();
    changed.sort_unstable();
    assert_eq!(changed, [3, 4, 5]);
    drop(store);
    let found = verify(&place.0.path().join(DB_FILE)).unwrap();
    assert!(found.ok(), "{found:?}");
    assert_eq!(
        (
            found.rooms,
            found.messages,
            found.inbox_rows,
            found.client_ids
        ),
        (2, 3, 2, 2)
    );

    // A gap inside the run that is left.
    let found = verify_swept(|t| {
        t.open_table(MESSAGES).unwrap().remove((1, 4)).unwrap();
    });
    let text = found.problems.join("\n");
    assert!(text.contains("message id 5 where 4 was expected"), "{text}");

    // The newest message gone while older ones stay: retention never does that.
    let found = verify_swept(|t| {
        t.open_table(MESSAGES).unwrap().remove((1, 5)).unwrap();
    });
    let text = found.problems.join("\n");
    assert!(
        text.contains("last id is 5 but its newest message is 4"),
        "{text}"
    );

    // An emptied room still in an inbox.
    let found = verify_swept(|t| {
        t.open_table(INBOX)
            .unwrap()
            .insert(("alice", newest_first(4_000), "alice-alice", 2), ())
            .unwrap();
    });
    let text = found.problems.join("\n");
    assert!(text.contains("3 inbox rows for 2"), "{text}");
}
