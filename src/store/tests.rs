use super::batch::{Appended, SeenOutcome};
use super::*;

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    (dir, store)
}

fn send(
    store: &Store,
    room: &RoomKey,
    from: &str,
    text: &str,
    cmid: Option<&str>,
    now: i64,
) -> Appended {
    let mut batch = store.begin().unwrap();
    let out = batch.append(room, from, text, cmid, now).unwrap();
    batch.commit().unwrap();
    out
}

fn new_id(a: Appended) -> ChatMessage {
    match a {
        Appended::New(m) => m,
        Appended::Duplicate(m) => panic!("unexpected duplicate {m:?}"),
    }
}

#[test]
fn ids_are_sequential_per_room_and_time_never_goes_back() {
    let (_dir, store) = store();
    let ab = RoomKey::new("b", "a");
    let ac = RoomKey::new("a", "c");
    assert_eq!(new_id(send(&store, &ab, "a", "1", None, 1000)).id, 1);
    assert_eq!(new_id(send(&store, &ac, "a", "x", None, 1000)).id, 1);
    let second = new_id(send(&store, &ab, "b", "2", None, 500));
    assert_eq!((second.id, second.sent_ms), (2, 1000));
    let page = store.messages_page(&ab, "a", None, 50).unwrap().messages;
    assert_eq!(page.iter().map(|m| m.id).collect::<Vec<_>>(), vec![2, 1]);
    assert_eq!(
        store
            .messages_page(&ab, "a", Some(2), 50)
            .unwrap()
            .messages
            .len(),
        1
    );
    assert_eq!(
        store.messages_page(&ab, "a", Some(99), 1).unwrap().messages[0].id,
        2
    );
}

#[test]
fn client_message_id_is_exactly_once_per_sender_and_room() {
    let (_dir, store) = store();
    let ab = RoomKey::new("a", "b");
    let first = new_id(send(&store, &ab, "a", "hi", Some("k1"), 1));
    match send(&store, &ab, "a", "other text", Some("k1"), 2) {
        Appended::Duplicate(m) => assert_eq!(m, first),
        Appended::New(m) => panic!("stored twice: {m:?}"),
    }
    // The same key from the other participant is a different message.
    assert_eq!(new_id(send(&store, &ab, "b", "hi", Some("k1"), 3)).id, 2);
    assert_eq!(
        store.find_by_client_id(&ab, "a", "k1").unwrap(),
        Some(first)
    );
}

#[test]
fn seen_is_clamped_counted_and_first_wins() {
    let (_dir, store) = store();
    let ab = RoomKey::new("a", "b");
    new_id(send(&store, &ab, "a", "1", None, 1000));
    new_id(send(&store, &ab, "a", "2", None, 2000));
    assert_eq!(store.unread(&ab, "b").unwrap(), 2);
    assert_eq!(store.unread(&ab, "a").unwrap(), 0);

    let mut batch = store.begin().unwrap();
    let early = batch.mark_seen(&ab, "b", 1, 10, 5000).unwrap();
    let late = batch.mark_seen(&ab, "b", 2, 9_999_999, 5000).unwrap();
    let again = batch.mark_seen(&ab, "b", 1, 4000, 5000).unwrap();
    let own = batch.mark_seen(&ab, "a", 1, 4000, 5000).unwrap();
    let missing = batch.mark_seen(&ab, "b", 3, 4000, 5000).unwrap();
    batch.commit().unwrap();
    assert!(matches!(early, SeenOutcome::Changed(ref m) if m.seen_ms == Some(1000)));
    assert!(matches!(late, SeenOutcome::Changed(ref m) if m.seen_ms == Some(5000)));
    assert!(matches!(again, SeenOutcome::AlreadySeen));
    assert!(matches!(own, SeenOutcome::OwnMessage));
    assert!(matches!(missing, SeenOutcome::NotFound));
    assert_eq!(store.unread(&ab, "b").unwrap(), 0);
}

#[test]
fn inbox_lists_latest_activity_first_and_pages_by_cursor() {
    let (_dir, store) = store();
    for (i, partner) in ["b", "c", "d"].iter().enumerate() {
        send(
            &store,
            &RoomKey::new("a", partner),
            partner,
            "hi",
            None,
            100 + i as i64,
        );
    }
    send(&store, &RoomKey::new("a", "b"), "a", "again", None, 200);
    let all = store.inbox_page("a", None, 10).unwrap();
    let ids: Vec<_> = all.iter().map(|r| r.room_id.as_str()).collect();
    assert_eq!(ids, ["a-b", "a-d", "a-c"]);
    assert_eq!(all[0].unread, 1);
    assert_eq!(all[0].last_message.message, "again");
    let first = store.inbox_page("a", None, 2).unwrap();
    let cursor = InboxCursor {
        updated_ms: first[1].updated_ms,
        room_id: first[1].room_id.clone(),
        room_num: 3,
    };
    let rest = store.inbox_page("a", Some(&cursor), 2).unwrap();
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].room_id, "a-c");
    assert_eq!(store.inbox_page("b", None, 10).unwrap().len(), 1);
}

#[test]
fn pairs_sharing_an_id_string_are_separate_rooms() {
    let (_dir, store) = store();
    let one = RoomKey::new("a-b", "c");
    let two = RoomKey::new("a", "b-c");
    assert_eq!(one.id(), two.id());
    send(&store, &one, "c", "for a-b", None, 1);
    assert!(store
        .messages_page(&two, "a", None, 50)
        .unwrap()
        .messages
        .is_empty());
}

#[test]
fn reopen_keeps_data_and_refuses_newer_format() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        send(&store, &RoomKey::new("a", "b"), "a", "kept", None, 1);
    }
    {
        let store = Store::open(dir.path()).unwrap();
        let page = store
            .messages_page(&RoomKey::new("a", "b"), "a", None, 50)
            .unwrap()
            .messages;
        assert_eq!(page[0].message, "kept");
        let txn = store.db.begin_write().unwrap();
        txn.open_table(META)
            .unwrap()
            .insert("format_version", FORMAT_VERSION + 1)
            .unwrap();
        txn.commit().unwrap();
    }
    match Store::open(dir.path()) {
        Err(StoreError::NewerFormat(v)) => assert_eq!(v, FORMAT_VERSION + 1),
        other => panic!("expected NewerFormat, got {:?}", other.err()),
    }
}
