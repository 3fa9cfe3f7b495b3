use super::*;
use crate::store::suite::{store_suite, Fixture};
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
