//! The behaviour every storage backend must show, written once against the traits.
//!
//! A backend runs it from its own tests with `store_suite!(ItsFixture)`, which turns each
//! function here into a `#[tokio::test]`. Only what a backend cannot share (its file
//! format, say) is tested beside the backend.

use super::*;

/// What the suite needs from a backend: a place for one store, opened as often as asked
/// (a reopen must see everything committed before).
pub trait Fixture {
    type Store: ReadStore + WriteStore;
    /// A new, empty place.
    fn new() -> Self;
    /// Opens the store at this place.
    fn open(&self) -> Self::Store;
}

/// Runs every test of the suite against the backend of `$fixture`.
macro_rules! store_suite {
    ($fixture:ty) => {
        $crate::store::suite::store_suite!(@tests $fixture;
            ids_are_sequential_per_room_and_time_never_goes_back,
            client_message_id_is_exactly_once_per_sender_and_room,
            seen_is_clamped_counted_and_first_wins,
            inbox_lists_latest_activity_first_and_pages_by_cursor,
            pairs_sharing_an_id_string_are_separate_rooms,
            profiles_default_to_the_id_and_keep_the_latest_name,
            a_transaction_sees_its_own_writes_and_only_commit_keeps_them,
            reopen_keeps_committed_data,
            blocks_are_per_direction_listed_in_id_order_and_mask_unread,
            the_webhook_outbox_is_per_hook_in_commit_order_and_dead_letters_keep_why,
            delivered_marks_only_move_forward_and_mark_partner_messages_once,
            only_the_sender_edits_within_the_window_and_deletes_into_a_tombstone,
            changes_list_each_changed_message_once_in_change_order_and_page,
            messages_after_an_id_come_oldest_first,
            erasing_a_user_tombstones_their_messages_everywhere_and_keeps_the_rest,
            rooms_active_since_a_time_come_most_recent_first_within_the_limit,
            erasures_of_many_users_come_from_one_read,
            changes_and_page_answer_as_the_two_reads_do
        );
    };
    (@tests $fixture:ty; $($test:ident),* $(,)?) => {$(
        #[tokio::test]
        async fn $test() {
            $crate::store::suite::$test::<$fixture>().await;
        }
    )*};
}
pub(crate) use store_suite;

fn send(
    store: &dyn WriteStore,
    room: &RoomKey,
    from: &str,
    text: &str,
    cmid: Option<&str>,
    now: i64,
) -> Appended {
    let mut txn = store.begin().unwrap();
    let out = txn.append(room, from, text, cmid, now).unwrap();
    txn.commit().unwrap();
    out
}

fn new_message(a: Appended) -> ChatMessage {
    match a {
        Appended::New(m) => m,
        Appended::Duplicate(m) => panic!("unexpected duplicate {m:?}"),
    }
}

fn ids(messages: &[ChatMessage]) -> Vec<u64> {
    messages.iter().map(|m| m.id).collect()
}

/// `user`'s unread count in the room with this id, as the inbox shows it.
async fn unread(store: &dyn ReadStore, user: &str, room_id: &str) -> u64 {
    let rooms = store.inbox_page(user, None, 100).await.unwrap();
    let row = rooms.iter().find(|r| r.room_id == room_id);
    row.unwrap_or_else(|| panic!("{user} has no room {room_id}"))
        .unread
}

pub async fn ids_are_sequential_per_room_and_time_never_goes_back<F: Fixture>() {
    let place = F::new();
    let store = place.open();
    let ab = RoomKey::new("b", "a");
    let ac = RoomKey::new("a", "c");
    assert_eq!(new_message(send(&store, &ab, "a", "1", None, 1000)).id, 1);
    assert_eq!(new_message(send(&store, &ac, "a", "x", None, 1000)).id, 1);
    let second = new_message(send(&store, &ab, "b", "2", None, 500));
    assert_eq!((second.id, second.sent_ms), (2, 1000));
    let page = |before, limit| store.messages_page(&ab, "a", before, limit);
    assert_eq!(ids(&page(None, 50).await.unwrap().messages), [2, 1]);
    assert_eq!(ids(&page(Some(2), 50).await.unwrap().messages), [1]);
    assert_eq!(ids(&page(Some(99), 1).await.unwrap().messages), [2]);
    assert!(page(Some(1), 50).await.unwrap().messages.is_empty());
}

pub async fn client_message_id_is_exactly_once_per_sender_and_room<F: Fixture>() {
    let place = F::new();
    let store = place.open();
    let ab = RoomKey::new("a", "b");
    let first = new_message(send(&store, &ab, "a", "hi", Some("k1"), 1));
    match send(&store, &ab, "a", "other text", Some("k1"), 2) {
        Appended::Duplicate(m) => assert_eq!(m, first),
        Appended::New(m) => panic!("stored twice: {m:?}"),
    }
    // The same key from the other participant, or in another room, is another message.
    assert_eq!(
        new_message(send(&store, &ab, "b", "hi", Some("k1"), 3)).id,
        2
    );
    let ac = RoomKey::new("a", "c");
    assert_eq!(
        new_message(send(&store, &ac, "a", "hi", Some("k1"), 3)).id,
        1
    );
    // Two sends with one key in one transaction store one message.
    let mut txn = store.begin().unwrap();
    let once = new_message(txn.append(&ab, "a", "x", Some("k2"), 4).unwrap());
    assert!(matches!(
        txn.append(&ab, "a", "x", Some("k2"), 5).unwrap(),
        Appended::Duplicate(m) if m == once
    ));
    txn.commit().unwrap();
    assert_eq!(
        store.find_by_client_id(&ab, "a", "k1").await.unwrap(),
        Some(first)
    );
    assert_eq!(
        store.find_by_client_id(&ab, "a", "k2").await.unwrap(),
        Some(once)
    );
    assert_eq!(store.find_by_client_id(&ab, "a", "k3").await.unwrap(), None);
    let unknown = RoomKey::new("x", "y");
    assert_eq!(
        store.find_by_client_id(&unknown, "x", "k1").await.unwrap(),
        None
    );
    assert_eq!(
        ids(&store
            .messages_page(&ab, "a", None, 50)
            .await
            .unwrap()
            .messages),
        [3, 2, 1]
    );
}

pub async fn seen_is_clamped_counted_and_first_wins<F: Fixture>() {
    let place = F::new();
    let store = place.open();
    let ab = RoomKey::new("a", "b");
    new_message(send(&store, &ab, "a", "1", None, 1000));
    new_message(send(&store, &ab, "a", "2", None, 2000));
    assert_eq!(unread(&store, "b", "a-b").await, 2);
    assert_eq!(unread(&store, "a", "a-b").await, 0);

    let mut txn = store.begin().unwrap();
    let early = txn.mark_seen(&ab, "b", 1, 10, 5000).unwrap();
    let late = txn.mark_seen(&ab, "b", 2, 9_999_999, 5000).unwrap();
    let again = txn.mark_seen(&ab, "b", 1, 4000, 5000).unwrap();
    let own = txn.mark_seen(&ab, "a", 1, 4000, 5000).unwrap();
    let missing = txn.mark_seen(&ab, "b", 3, 4000, 5000).unwrap();
    let no_room = txn
        .mark_seen(&RoomKey::new("b", "c"), "b", 1, 0, 0)
        .unwrap();
    txn.commit().unwrap();
    assert!(matches!(early, SeenOutcome::Changed(ref m) if m.seen_ms == Some(1000)));
    assert!(matches!(late, SeenOutcome::Changed(ref m) if m.seen_ms == Some(5000)));
    assert!(matches!(again, SeenOutcome::AlreadySeen));
    assert!(matches!(own, SeenOutcome::OwnMessage));
    assert!(matches!(missing, SeenOutcome::NotFound));
    assert!(matches!(no_room, SeenOutcome::NotFound));
    assert_eq!(unread(&store, "b", "a-b").await, 0);
    let page = store.messages_page(&ab, "b", None, 50).await.unwrap();
    let seen: Vec<_> = page.messages.iter().map(|m| m.seen_ms).collect();
    assert_eq!(seen, [Some(5000), Some(1000)]);

    // Every message of a self room is the reader's own, and nothing is ever unread there.
    let me = RoomKey::new("a", "a");
    new_message(send(&store, &me, "a", "note", None, 6000));
    let mut txn = store.begin().unwrap();
    assert!(matches!(
        txn.mark_seen(&me, "a", 1, 6000, 6000).unwrap(),
        SeenOutcome::OwnMessage
    ));
    txn.commit().unwrap();
    assert_eq!(unread(&store, "a", "a-a").await, 0);
}

pub async fn inbox_lists_latest_activity_first_and_pages_by_cursor<F: Fixture>() {
    let place = F::new();
    let store = place.open();
    for (i, partner) in ["b", "c", "d"].iter().enumerate() {
        let room = RoomKey::new("a", partner);
        send(&store, &room, partner, "hi", None, 100 + i as i64);
    }
    send(&store, &RoomKey::new("a", "b"), "a", "again", None, 200);
    let all = store.inbox_page("a", None, 10).await.unwrap();
    let room_ids: Vec<_> = all.iter().map(|r| r.room_id.as_str()).collect();
    assert_eq!(room_ids, ["a-b", "a-d", "a-c"]);
    assert_eq!(all[0].unread, 1);
    assert_eq!(all[0].updated_ms, 200);
    assert_eq!(all[0].last_message.message, "again");
    assert_eq!(all[0].partner, SessionUser::unnamed("b"));
    let first = store.inbox_page("a", None, 2).await.unwrap();
    assert_eq!(first.len(), 2);
    let cursor = first[1].cursor();
    let rest = store.inbox_page("a", Some(&cursor), 2).await.unwrap();
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].room_id, "a-c");
    let end = rest[0].cursor();
    assert!(store
        .inbox_page("a", Some(&end), 2)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(store.inbox_page("b", None, 10).await.unwrap().len(), 1);
    assert!(store.inbox_page("z", None, 10).await.unwrap().is_empty());
}

pub async fn pairs_sharing_an_id_string_are_separate_rooms<F: Fixture>() {
    let place = F::new();
    let store = place.open();
    let one = RoomKey::new("a-b", "c");
    let two = RoomKey::new("a", "b-c");
    assert_eq!(one.id(), two.id());
    send(&store, &one, "c", "for a-b", None, 1);
    let page = store.messages_page(&two, "a", None, 50).await.unwrap();
    assert!(page.messages.is_empty());
    assert_eq!(page.partner, SessionUser::unnamed("b-c"));
    let page = store.messages_page(&one, "c", None, 50).await.unwrap();
    assert_eq!(page.messages[0].message, "for a-b");
}

pub async fn profiles_default_to_the_id_and_keep_the_latest_name<F: Fixture>() {
    let place = F::new();
    let store = place.open();
    assert_eq!(store.profile("b").await.unwrap(), SessionUser::unnamed("b"));
    for name in ["Bea", "Beatrice"] {
        let mut txn = store.begin().unwrap();
        let user = SessionUser {
            id: "b".into(),
            name: name.into(),
        };
        txn.put_profile(&user).unwrap();
        txn.commit().unwrap();
        assert_eq!(store.profile("b").await.unwrap(), user);
    }
    // Pages name the partner by the remembered name.
    let ab = RoomKey::new("a", "b");
    send(&store, &ab, "a", "hi", None, 1);
    let page = store.messages_page(&ab, "a", None, 50).await.unwrap();
    assert_eq!(page.partner.name, "Beatrice");
    let inbox = store.inbox_page("a", None, 10).await.unwrap();
    assert_eq!(inbox[0].partner.name, "Beatrice");
    let own_side = store.messages_page(&ab, "b", None, 50).await.unwrap();
    assert_eq!(own_side.partner, SessionUser::unnamed("a"));
}

pub async fn a_transaction_sees_its_own_writes_and_only_commit_keeps_them<F: Fixture>() {
    let place = F::new();
    let store = place.open();
    let ab = RoomKey::new("a", "b");
    send(&store, &ab, "a", "1", None, 1);
    {
        let mut txn = store.begin().unwrap();
        new_message(txn.append(&ab, "b", "2", Some("k"), 2).unwrap());
        txn.put_profile(&SessionUser {
            id: "a".into(),
            name: "Ann".into(),
        })
        .unwrap();
        assert_eq!(ids(&txn.latest(&ab, 50).unwrap()), [2, 1]);
        assert_eq!(ids(&txn.latest(&ab, 1).unwrap()), [2]);
        assert!(txn.latest(&RoomKey::new("a", "c"), 50).unwrap().is_empty());
        // Readers see only what is committed.
        let page = store.messages_page(&ab, "a", None, 50).await.unwrap();
        assert_eq!(ids(&page.messages), [1]);
        // Dropped without commit: nothing of it is kept.
    }
    let page = store.messages_page(&ab, "a", None, 50).await.unwrap();
    assert_eq!(ids(&page.messages), [1]);
    assert_eq!(store.find_by_client_id(&ab, "b", "k").await.unwrap(), None);
    assert_eq!(store.profile("a").await.unwrap(), SessionUser::unnamed("a"));
    assert_eq!(unread(&store, "a", "a-b").await, 0);
    // The id the dropped transaction used is given out again.
    assert_eq!(new_message(send(&store, &ab, "b", "2", None, 3)).id, 2);
}

pub async fn reopen_keeps_committed_data<F: Fixture>() {
    let place = F::new();
    let ab = RoomKey::new("a", "b");
    {
        let store = place.open();
        send(&store, &ab, "a", "kept", Some("k"), 1);
        let mut txn = store.begin().unwrap();
        txn.put_profile(&SessionUser {
            id: "a".into(),
            name: "Ann".into(),
        })
        .unwrap();
        txn.commit().unwrap();
    }
    let store = place.open();
    let page = store.messages_page(&ab, "b", None, 50).await.unwrap();
    assert_eq!(page.messages[0].message, "kept");
    assert_eq!(page.partner.name, "Ann");
    assert!(store
        .find_by_client_id(&ab, "a", "k")
        .await
        .unwrap()
        .is_some());
    assert_eq!(unread(&store, "b", "a-b").await, 1);
    // Ids go on from where they were.
    assert_eq!(new_message(send(&store, &ab, "b", "next", None, 2)).id, 2);
}

pub async fn blocks_are_per_direction_listed_in_id_order_and_mask_unread<F: Fixture>() {
    let place = F::new();
    let store = place.open();
    let ab = RoomKey::new("a", "b");
    send(&store, &ab, "b", "1", None, 1);
    send(&store, &ab, "b", "2", None, 2);
    let mut txn = store.begin().unwrap();
    txn.put_profile(&SessionUser {
        id: "c".into(),
        name: "Cy".into(),
    })
    .unwrap();
    // "a-" sorts between "a" and "b": a prefix of the blocker must not leak into its list.
    for (blocker, blocked, since) in [("a", "c", 10), ("a", "b", 20), ("a-", "x", 30)] {
        txn.put_block(blocker, blocked, since).unwrap();
    }
    // The transaction sees its own blocks.
    assert_eq!(txn.blocked_since("a", "b").unwrap(), Some(20));
    assert_eq!(txn.blocked_since("b", "a").unwrap(), None);
    assert_eq!(txn.count_blocks("a").unwrap(), 2);
    assert_eq!(txn.count_blocks("a-").unwrap(), 1);
    txn.commit().unwrap();

    let list = store.blocks("a").await.unwrap();
    assert_eq!(
        list,
        [
            BlockedUser {
                user: SessionUser::unnamed("b"),
                since_ms: 20
            },
            BlockedUser {
                user: SessionUser {
                    id: "c".into(),
                    name: "Cy".into()
                },
                since_ms: 10
            },
        ]
    );
    assert!(store.blocks("b").await.unwrap().is_empty());
    assert!(store.blocked_between("a", "b").await.unwrap());
    assert!(store.blocked_between("b", "a").await.unwrap());
    assert!(!store.blocked_between("b", "c").await.unwrap());

    // The blocker's row says so and counts nothing; the blocked user's row is unchanged.
    let rows = store.inbox_page("a", None, 10).await.unwrap();
    assert!(rows[0].blocked);
    assert_eq!(rows[0].unread, 0);
    assert!(!store.inbox_page("b", None, 10).await.unwrap()[0].blocked);

    let mut txn = store.begin().unwrap();
    assert!(matches!(
        txn.remove_block("a", "b", 40).unwrap(),
        Lifted::Lifted { .. }
    ));
    assert_eq!(txn.remove_block("a", "b", 41).unwrap(), Lifted::NotBlocked);
    // A lifted block counts for nothing, in this transaction and after.
    assert_eq!(txn.blocked_since("a", "b").unwrap(), None);
    assert_eq!(txn.count_blocks("a").unwrap(), 1);
    txn.commit().unwrap();
    assert!(!store.inbox_page("a", None, 10).await.unwrap()[0].blocked);
    let txn = store.begin().unwrap();
    assert_eq!(txn.blocked_since("a", "b").unwrap(), None);
    assert_eq!(txn.count_blocks("a").unwrap(), 1);
    drop(txn);
    // The stored count was kept: both messages are still unseen.
    assert_eq!(unread(&store, "a", "a-b").await, 2);
    assert!(!store.blocked_between("a", "b").await.unwrap());
    assert_eq!(store.blocks("a").await.unwrap().len(), 1);
    drop(store);
    let store = place.open();
    assert_eq!(store.blocks("a").await.unwrap()[0].user.id, "c");
}

fn event(recipient: &str, id: &str) -> OutboxEvent {
    OutboxEvent {
        seq: 0,
        recipient: recipient.into(),
        id: id.into(),
        created_ms: 7,
        body: format!("{{\"id\":\"{id}\"}}"),
    }
}

pub async fn the_webhook_outbox_is_per_hook_in_commit_order_and_dead_letters_keep_why<
    F: Fixture,
>() {
    let place = F::new();
    let (h1, h2) = ("http://one.example", "http://two.example");
    {
        let store = place.open();
        let mut txn = store.begin().unwrap();
        txn.enqueue_webhook(h1, &event("b", "e1")).unwrap();
        txn.enqueue_webhook(h2, &event("b", "e1")).unwrap();
        txn.commit().unwrap();
        // Not committed: never seen.
        let mut dropped = store.begin().unwrap();
        dropped.enqueue_webhook(h1, &event("c", "lost")).unwrap();
        drop(dropped);
        let mut txn = store.begin().unwrap();
        txn.enqueue_webhook(h1, &event("c", "e2")).unwrap();
        txn.enqueue_webhook(h1, &event("b", "e3")).unwrap();
        txn.commit().unwrap();
    }
    // Reopened: everything committed is still there, in commit order, per hook, and the
    // seqs rise across hooks in enqueue order.
    let store = place.open();
    let pending = store.webhook_outbox(h1, None, 10).await.unwrap();
    let ids: Vec<&str> = pending.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, ["e1", "e2", "e3"]);
    let seqs: Vec<u64> = pending.iter().map(|e| e.seq).collect();
    let other = store.webhook_outbox(h2, None, 10).await.unwrap()[0].seq;
    assert!(
        seqs[0] < other && other < seqs[1] && seqs[1] < seqs[2],
        "{seqs:?} {other}"
    );
    assert_eq!(
        pending[1],
        OutboxEvent {
            seq: seqs[1],
            ..event("c", "e2")
        }
    );
    let after_first = store.webhook_outbox(h1, Some(seqs[0]), 1).await.unwrap();
    assert_eq!(after_first[0].id, "e2");
    assert_eq!(store.webhook_outbox(h2, None, 10).await.unwrap().len(), 1);
    assert_eq!(
        store.webhook_counts(h1).await.unwrap(),
        WebhookCounts {
            pending: 3,
            dead: 0
        }
    );

    let mut txn = store.begin().unwrap();
    assert_eq!(txn.remove_webhooks(h1, &seqs[..1]).unwrap(), [seqs[0]]);
    // Removed already, or never queued: not there.
    assert!(txn
        .remove_webhooks(h1, &[seqs[0], 12345])
        .unwrap()
        .is_empty());
    assert!(txn
        .dead_letter_webhook(h1, seqs[2], "answered 500", 99)
        .unwrap());
    assert!(!txn
        .dead_letter_webhook(h1, 12345, "never queued", 99)
        .unwrap());
    txn.commit().unwrap();
    let left = store.webhook_outbox(h1, None, 10).await.unwrap();
    assert_eq!(
        left.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        ["e2"]
    );
    let dead = store.webhook_dead_letters(h1, None, 10).await.unwrap();
    assert_eq!(
        dead,
        [DeadLetter {
            event: OutboxEvent {
                seq: seqs[2],
                ..event("b", "e3")
            },
            reason: "answered 500".into(),
            dead_ms: 99,
        }]
    );
    assert_eq!(
        store.webhook_counts(h1).await.unwrap(),
        WebhookCounts {
            pending: 1,
            dead: 1
        }
    );
    // The other hook's copy is untouched.
    assert_eq!(
        store.webhook_counts(h2).await.unwrap(),
        WebhookCounts {
            pending: 1,
            dead: 0
        }
    );

    // A second dead letter, then both back: oldest first, each behind every event queued
    // so far, with the same id and body and a new give-up clock.
    let mut txn = store.begin().unwrap();
    assert!(txn
        .dead_letter_webhook(h1, seqs[1], "timeout", 100)
        .unwrap());
    txn.commit().unwrap();
    let page = store
        .webhook_dead_letters(h1, Some(seqs[1]), 10)
        .await
        .unwrap();
    assert_eq!(
        page.iter().map(|d| d.event.seq).collect::<Vec<_>>(),
        [seqs[2]]
    );
    let mut txn = store.begin().unwrap();
    assert_eq!(txn.retry_dead_webhooks(h1, 1, 500).unwrap(), 1);
    assert_eq!(txn.retry_dead_webhooks(h1, 10, 600).unwrap(), 1);
    assert_eq!(txn.retry_dead_webhooks(h1, 10, 700).unwrap(), 0);
    txn.commit().unwrap();
    let back = store.webhook_outbox(h1, None, 10).await.unwrap();
    assert_eq!(
        back.iter()
            .map(|e| (e.id.as_str(), e.created_ms))
            .collect::<Vec<_>>(),
        [("e2", 500), ("e3", 600)]
    );
    assert!(back[0].seq > seqs[2] && back[1].seq > back[0].seq);
    assert_eq!(back[1].body, event("b", "e3").body);
    assert_eq!(
        store.webhook_counts(h1).await.unwrap(),
        WebhookCounts {
            pending: 2,
            dead: 0
        }
    );
    assert_eq!(store.webhook_counts(h2).await.unwrap().pending, 1);
}

fn commit<T>(store: &dyn WriteStore, op: impl FnOnce(&mut dyn WriteTxn) -> T) -> T {
    let mut txn = store.begin().unwrap();
    let out = op(txn.as_mut());
    txn.commit().unwrap();
    out
}

pub async fn delivered_marks_only_move_forward_and_mark_partner_messages_once<F: Fixture>() {
    let place = F::new();
    let store = place.open();
    let ab = RoomKey::new("a", "b");
    assert_eq!(store.delivered_mark(&ab, "b").await.unwrap(), None);
    for (from, at) in [("a", 1000), ("b", 1100), ("a", 1200), ("a", 1300)] {
        new_message(send(&store, &ab, from, "x", None, at));
    }
    let unmarked = store.delivered_mark(&ab, "b").await.unwrap();
    assert_eq!(
        unmarked,
        Some(MarkState {
            mark: 0,
            last_id: 4
        })
    );
    let first = commit(&store, |t| t.mark_received(&ab, "b", 3, 5000).unwrap());
    let delivered = match first {
        ReceivedOutcome::Moved(ms) => ms,
        other => panic!("expected a move, got {other:?}"),
    };
    // b's own message 2 needs no mark; a's 1 and 3 get one.
    assert_eq!(ids(&delivered), [1, 3]);
    assert!(delivered.iter().all(|m| m.delivered_ms == Some(5000)));
    let back = commit(&store, |t| t.mark_received(&ab, "b", 2, 6000).unwrap());
    assert!(matches!(back, ReceivedOutcome::Unchanged));
    let beyond = commit(&store, |t| t.mark_received(&ab, "b", 5, 6000).unwrap());
    assert!(matches!(beyond, ReceivedOutcome::NotFound));
    // Each reader's own mark.
    commit(&store, |t| t.mark_received(&ab, "a", 1, 6500).unwrap());
    let marks = [
        store.delivered_mark(&ab, "b").await.unwrap(),
        store.delivered_mark(&ab, "a").await.unwrap(),
    ];
    assert_eq!(
        marks[0],
        Some(MarkState {
            mark: 3,
            last_id: 4
        })
    );
    assert_eq!(
        marks[1],
        Some(MarkState {
            mark: 1,
            last_id: 4
        })
    );
    let next = commit(&store, |t| t.mark_received(&ab, "b", 4, 7000).unwrap());
    assert!(matches!(next, ReceivedOutcome::Moved(ref ms) if ids(ms) == [4]));
    let page = store.messages_page(&ab, "a", None, 50).await.unwrap();
    let marks: Vec<_> = page.messages.iter().map(|m| m.delivered_ms).collect();
    assert_eq!(marks, [Some(7000), Some(5000), None, Some(5000)]);
    // A message delivered before the mark reached it keeps its first time.
    let a_marks = commit(&store, |t| t.mark_received(&ab, "a", 4, 8000).unwrap());
    assert!(matches!(a_marks, ReceivedOutcome::Moved(ref ms) if ids(ms) == [2]));
    // Unread counts are the seen marks' business alone.
    assert_eq!(unread(&store, "b", "a-b").await, 3);
}

pub async fn only_the_sender_edits_within_the_window_and_deletes_into_a_tombstone<F: Fixture>() {
    let place = F::new();
    let store = place.open();
    let ab = RoomKey::new("a", "b");
    new_message(send(&store, &ab, "a", "helo", Some("c1"), 1000));
    new_message(send(&store, &ab, "b", "hi", None, 1100));
    let window = 60_000;
    let edit = |by: &str, id: u64, text: &str, now: i64| {
        commit(&store, |t| t.edit(&ab, by, id, text, window, now).unwrap())
    };
    match edit("a", 1, "hello", 2000) {
        EditOutcome::Changed(m) => {
            assert_eq!((m.message.as_str(), m.edited_ms), ("hello", Some(2000)))
        }
        other => panic!("expected an edit, got {other:?}"),
    }
    assert!(
        matches!(edit("a", 1, "hello", 999_999), EditOutcome::Unchanged(ref m) if m.edited_ms == Some(2000))
    );
    assert!(matches!(edit("b", 1, "mine", 2000), EditOutcome::NotSender));
    assert!(matches!(edit("a", 9, "x", 2000), EditOutcome::NotFound));
    assert!(matches!(
        edit("a", 1, "late", 1000 + window),
        EditOutcome::WindowClosed
    ));

    let delete = |by: &str, id: u64| commit(&store, |t| t.delete(&ab, by, id, 3000).unwrap());
    assert!(matches!(delete("b", 1), DeleteOutcome::NotSender));
    assert!(matches!(delete("a", 7), DeleteOutcome::NotFound));
    let tombstone = match delete("a", 1) {
        DeleteOutcome::Deleted(m) => m,
        other => panic!("expected a delete, got {other:?}"),
    };
    assert_eq!(tombstone.message, "");
    assert_eq!(tombstone.deleted_ms, Some(3000));
    assert_eq!(tombstone.client_message_id.as_deref(), Some("c1"));
    assert!(
        matches!(delete("a", 1), DeleteOutcome::AlreadyDeleted(ref m) if m.deleted_ms == Some(3000))
    );
    assert!(matches!(edit("a", 1, "back", 3500), EditOutcome::Deleted));
    // A retry of the original send finds the tombstone and stores nothing.
    assert!(matches!(
        send(&store, &ab, "a", "helo", Some("c1"), 4000),
        Appended::Duplicate(ref m) if m.id == 1 && m.is_deleted()
    ));
    let page = store.messages_page(&ab, "b", None, 50).await.unwrap();
    assert_eq!(ids(&page.messages), [2, 1]);
    assert_eq!(page.messages[1], tombstone);
}

pub async fn changes_list_each_changed_message_once_in_change_order_and_page<F: Fixture>() {
    let place = F::new();
    let store = place.open();
    let ab = RoomKey::new("a", "b");
    let empty = store.changes(&ab, "a", 0, 10).await.unwrap();
    assert!(empty.messages.is_empty() && !empty.more);
    for at in 1..=4 {
        new_message(send(&store, &ab, "a", "x", None, at));
    }
    let start = store.changes(&ab, "a", 0, 10).await.unwrap();
    assert_eq!(
        (ids(&start.messages), start.more),
        (vec![1, 2, 3, 4], false)
    );
    let position = start.position;
    commit(&store, |t| {
        t.edit(&ab, "a", 2, "y", i64::MAX, 10).unwrap();
        t.mark_seen(&ab, "b", 1, 10, 10).unwrap();
        t.delete(&ab, "a", 2, 11).unwrap();
    });
    new_message(send(&store, &ab, "b", "z", None, 12));
    let page = store.changes(&ab, "b", position, 2).await.unwrap();
    // Message 2 changed twice but is listed once, at its latest change.
    assert_eq!((ids(&page.messages), page.more), (vec![1, 2], true));
    assert!(page.messages[1].is_deleted());
    let rest = store.changes(&ab, "b", page.position, 2).await.unwrap();
    assert_eq!((ids(&rest.messages), rest.more), (vec![5], false));
    let none = store.changes(&ab, "b", rest.position, 2).await.unwrap();
    assert!(none.messages.is_empty() && none.position == rest.position);
    // The change log survives a reopen.
    drop(store);
    let store = place.open();
    let again = store.changes(&ab, "a", position, 10).await.unwrap();
    assert_eq!(ids(&again.messages), [1, 2, 5]);
}

pub async fn messages_after_an_id_come_oldest_first<F: Fixture>() {
    let place = F::new();
    let store = place.open();
    let ab = RoomKey::new("a", "b");
    for at in 1..=5 {
        new_message(send(&store, &ab, "a", "x", None, at));
    }
    let page = store.messages_after(&ab, "b", 2, 2).await.unwrap();
    assert_eq!(ids(&page.messages), [3, 4]);
    assert_eq!(page.partner.id, "a");
    let tail = store.messages_after(&ab, "b", 4, 50).await.unwrap();
    assert_eq!(ids(&tail.messages), [5]);
    assert!(store
        .messages_after(&ab, "b", 5, 50)
        .await
        .unwrap()
        .messages
        .is_empty());
    let none = RoomKey::new("a", "z");
    assert!(store
        .messages_after(&none, "a", 0, 50)
        .await
        .unwrap()
        .messages
        .is_empty());
}

pub async fn erasing_a_user_tombstones_their_messages_everywhere_and_keeps_the_rest<F: Fixture>() {
    let place = F::new();
    let store = place.open();
    let (ab, ac, aa, bc) = (
        RoomKey::new("a", "b"),
        RoomKey::new("a", "c"),
        RoomKey::new("a", "a"),
        RoomKey::new("b", "c"),
    );
    new_message(send(&store, &ab, "a", "secret 1", Some("k1"), 1000));
    new_message(send(&store, &ab, "b", "reply", Some("k1"), 1100));
    new_message(send(&store, &ab, "a", "secret 2", None, 1200));
    new_message(send(&store, &ac, "c", "only c", None, 1300));
    new_message(send(&store, &aa, "a", "note", Some("k2"), 1400));
    new_message(send(&store, &bc, "b", "not a's", None, 1500));
    commit(&store, |t| {
        t.delete(&ab, "a", 3, 1600).unwrap();
        t.put_profile(&SessionUser {
            id: "a".into(),
            name: "Alice".into(),
        })
        .unwrap();
    });
    let changes_before = store.changes(&ab, "b", 0, 50).await.unwrap().position;
    let unread_before = unread(&store, "b", "a-b").await;
    assert_eq!(store.erased_at("a").await.unwrap(), None);

    let erasure = commit(&store, |t| t.erase_user("a", 2000).unwrap());
    // Messages 1 of a-b and 1 of a-a become tombstones; the deleted 3 only loses nothing
    // more (it had no key). a-c holds nothing of a's.
    assert_eq!(erasure.messages, 2);
    let mut rooms: Vec<String> = erasure.rooms.iter().map(RoomKey::id).collect();
    rooms.sort();
    assert_eq!(rooms, ["a-a", "a-b"]);
    assert_eq!(store.erased_at("a").await.unwrap(), Some(2000));
    assert_eq!(store.erased_at("b").await.unwrap(), None);

    let page = store.messages_page(&ab, "b", None, 50).await.unwrap();
    assert_eq!(ids(&page.messages), [3, 2, 1]);
    for m in [&page.messages[0], &page.messages[2]] {
        assert!(m.is_deleted() && m.message.is_empty(), "{m:?}");
        assert_eq!(
            (m.user_id.as_str(), m.client_message_id.as_deref()),
            ("a", None)
        );
    }
    assert_eq!(page.messages[2].deleted_ms, Some(2000));
    // The earlier delete keeps its own time.
    assert_eq!(page.messages[0].deleted_ms, Some(1600));
    assert_eq!(page.messages[1].message, "reply");
    assert_eq!(page.messages[1].client_message_id.as_deref(), Some("k1"));
    // The profile is gone; the partner's key stays; the erased keys are free again.
    assert_eq!(page.partner.name, "a");
    assert!(store
        .find_by_client_id(&ab, "b", "k1")
        .await
        .unwrap()
        .is_some());
    assert!(store
        .find_by_client_id(&ab, "a", "k1")
        .await
        .unwrap()
        .is_none());
    assert!(store
        .find_by_client_id(&aa, "a", "k2")
        .await
        .unwrap()
        .is_none());
    let fresh = new_message(send(&store, &ab, "a", "new start", Some("k1"), 3000));
    assert_eq!(fresh.id, 4);
    // Untouched: unread counts and the other rooms.
    assert_eq!(unread_before, unread(&store, "b", "a-b").await - 1);
    let ac_page = store.messages_page(&ac, "c", None, 50).await.unwrap();
    assert_eq!(ac_page.messages[0].message, "only c");
    let bc_page = store.messages_page(&bc, "c", None, 50).await.unwrap();
    assert_eq!(bc_page.messages[0].message, "not a's");
    // Each tombstone is a change, as a delete is.
    let changed = store.changes(&ab, "b", changes_before, 50).await.unwrap();
    assert_eq!(ids(&changed.messages), [1, 4]);

    // Again later: what was sent since goes too, nothing is counted twice, and the time
    // moves forward but never back.
    let again = commit(&store, |t| t.erase_user("a", 4000).unwrap());
    assert_eq!((again.messages, again.rooms.len()), (1, 1));
    assert_eq!(store.erased_at("a").await.unwrap(), Some(4000));
    commit(&store, |t| t.erase_user("a", 10).unwrap());
    assert_eq!(store.erased_at("a").await.unwrap(), Some(4000));
    // Durable across a reopen.
    drop(store);
    let store = place.open();
    assert_eq!(store.erased_at("a").await.unwrap(), Some(4000));
    let page = store.messages_page(&ab, "b", None, 50).await.unwrap();
    assert!(page.messages[0].is_deleted());
}

pub async fn rooms_active_since_a_time_come_most_recent_first_within_the_limit<F: Fixture>() {
    let place = F::new();
    let store = place.open();
    let (ab, ac, aa, bc, ad) = (
        RoomKey::new("a", "b"),
        RoomKey::new("a", "c"),
        RoomKey::new("a", "a"),
        RoomKey::new("b", "c"),
        RoomKey::new("0", "a"),
    );
    send(&store, &ab, "b", "old", None, 100);
    send(&store, &ac, "c", "newer", None, 300);
    send(&store, &aa, "a", "note", None, 400);
    send(&store, &bc, "b", "not a's", None, 500);
    // `a` is the high side of this one.
    send(&store, &ad, "0", "newest", None, 600);
    assert_eq!(
        store.rooms_active_since("a", 300, 10).await.unwrap(),
        [ad.clone(), aa.clone(), ac.clone()]
    );
    assert_eq!(
        store.rooms_active_since("a", 0, 2).await.unwrap(),
        [ad.clone(), aa]
    );
    assert_eq!(
        store
            .rooms_active_since("a", i64::MIN, 10)
            .await
            .unwrap()
            .len(),
        4
    );
    assert!(store
        .rooms_active_since("a", 601, 10)
        .await
        .unwrap()
        .is_empty());
    assert!(store
        .rooms_active_since("z", 0, 10)
        .await
        .unwrap()
        .is_empty());
    // A new message moves the room to the front.
    send(&store, &ab, "a", "again", None, 700);
    assert_eq!(
        store.rooms_active_since("a", 600, 10).await.unwrap(),
        [ab, ad]
    );
}

pub async fn erasures_of_many_users_come_from_one_read<F: Fixture>() {
    let place = F::new();
    let store = place.open();
    commit(&store, |t| {
        t.erase_user("a", 2000).unwrap();
    });
    commit(&store, |t| {
        t.erase_user("c", 3000).unwrap();
    });
    let users: Vec<String> = ["a", "b", "c", "d"].map(String::from).into();
    let mut erased = store.erasures(&users).await.unwrap();
    erased.sort();
    assert_eq!(erased, [("a".to_owned(), 2000), ("c".to_owned(), 3000)]);
    assert!(store.erasures(&[]).await.unwrap().is_empty());
}

pub async fn changes_and_page_answer_as_the_two_reads_do<F: Fixture>() {
    let place = F::new();
    let store = place.open();
    let ab = RoomKey::new("a", "b");
    for n in 1..=6 {
        send(&store, &ab, "a", &format!("{n}"), None, 100 + n);
    }
    commit(&store, |t| {
        t.edit(&ab, "a", 2, "2, edited", 1_000, 200).unwrap();
    });
    let cases = [
        (0, 50, None, 50),
        (3, 2, None, 50),
        (3, 50, Some(5), 2),
        (7, 50, Some(2), 50),
        (100, 50, None, 50),
    ];
    for (since, limit, before, page_limit) in cases {
        let (changes, page) = store
            .changes_and_page(&ab, "b", since, limit, before, page_limit)
            .await
            .unwrap();
        let alone = store.changes(&ab, "b", since, limit).await.unwrap();
        assert_eq!(
            ids(&changes.messages),
            ids(&alone.messages),
            "{since} {limit}"
        );
        assert_eq!(
            (changes.position, changes.more),
            (alone.position, alone.more),
            "{since} {limit}"
        );
        assert_eq!(changes.partner, alone.partner);
        let alone = store
            .messages_page(&ab, "b", before, page_limit)
            .await
            .unwrap();
        assert_eq!(
            ids(&page.messages),
            ids(&alone.messages),
            "{before:?} {page_limit}"
        );
        assert_eq!(page.position, alone.position);
        assert_eq!(page.messages[0], alone.messages[0]);
    }
    let (changes, page) = store
        .changes_and_page(&RoomKey::new("a", "z"), "a", 4, 50, None, 50)
        .await
        .unwrap();
    assert!(changes.messages.is_empty() && page.messages.is_empty());
    assert_eq!(changes.position, 4);
}
