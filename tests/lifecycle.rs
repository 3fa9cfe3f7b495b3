//! The message lifecycle over the plain dialect and HTTP: delivered marks, edits, deletes
//! and catch-up (`messages` with `after`, `changes`).

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::load::history;
use common::{ids, Client, Server};
use serde_json::{json, Value};

const QUIET: Duration = Duration::from_millis(300);

async fn received(client: &mut Client, room: &str, id: u64) -> Value {
    client
        .request(
            "message:received",
            json!([{ "roomId": room, "messageId": id }]),
        )
        .await
}

async fn edit(client: &mut Client, room: &str, id: u64, text: &str) -> Value {
    client
        .request(
            "message:edit",
            json!({ "roomId": room, "messageId": id, "message": text }),
        )
        .await
}

async fn delete(client: &mut Client, room: &str, id: u64) -> Value {
    client
        .request("message:delete", json!({ "roomId": room, "messageId": id }))
        .await
}

/// Sends and drains the `message:sent` each of `clients` gets.
async fn send(from: &mut Client, room: &str, text: &str, others: &mut [&mut Client]) -> Value {
    let ack = from.send_message(room, text).await;
    assert_eq!(ack["ok"], true, "{ack}");
    from.recv_event("message:sent").await;
    for c in others.iter_mut() {
        c.recv_event("message:sent").await;
    }
    ack["message"].clone()
}

#[tokio::test]
async fn received_marks_reach_the_sender_once_and_show_in_history_and_inbox() {
    let server = Server::start();
    let mut alice = server.connect("alice").await;
    let mut bob = server.connect("bob").await;
    for text in ["one", "two"] {
        send(&mut alice, "alice-bob", text, &mut [&mut bob]).await;
    }
    let reply = received(&mut bob, "alice-bob", 2).await;
    assert_eq!(reply, json!({ "ok": true, "rejected": [] }));
    let delivered = alice.recv_event("message:delivered").await;
    let receipts = delivered.as_array().unwrap();
    assert_eq!(receipts.len(), 2, "{delivered}");
    for (receipt, id) in receipts.iter().zip([1, 2]) {
        assert_eq!(receipt["userId"], "bob");
        assert_eq!(receipt["roomId"], "alice-bob");
        assert_eq!(receipt["messageId"], id);
        assert!(receipt["deliveredAt"].is_string());
    }
    let at = receipts[0]["deliveredAt"].clone();
    bob.expect_silence(QUIET).await;

    // The mark only moves forward: again, or lower, changes nothing and tells no one.
    assert_eq!(
        received(&mut bob, "alice-bob", 1).await["rejected"],
        json!([])
    );
    assert_eq!(
        received(&mut bob, "alice-bob", 2).await["rejected"],
        json!([])
    );
    alice.expect_silence(QUIET).await;

    let page = alice
        .request("messages", json!({ "roomId": "alice-bob" }))
        .await;
    for m in page["room"]["messages"].as_array().unwrap() {
        assert_eq!(m["deliveredAt"], at, "{m}");
    }
    let rooms = bob.request("rooms", json!({})).await;
    assert_eq!(
        rooms["rooms"][0]["lastMessage"]["deliveredAt"], at,
        "{rooms}"
    );
    let (status, body) = server
        .get(
            "/api/rooms/alice-bob/messages",
            Some(&server.token("alice")),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["room"]["messages"][0]["deliveredAt"], at);
}

/// A client that marks every message as it arrives sends marks faster than they are
/// written; those of one room that meet in the writer's queue are written as one.
#[tokio::test]
async fn a_burst_of_marks_delivers_each_message_once_and_answers_every_mark() {
    let server = Server::start();
    let mut alice = server.connect("alice").await;
    let mut bob = server.connect("bob").await;
    for i in 0..30 {
        send(&mut alice, "alice-bob", &format!("m{i}"), &mut [&mut bob]).await;
    }
    for id in 1..=30u64 {
        let item = json!([{ "roomId": "alice-bob", "messageId": id }]);
        bob.send_json(json!({ "event": "message:received", "ack": 1000 + id, "data": item }))
            .await;
    }
    let mut acked = Vec::new();
    while acked.len() < 30 {
        let frame = bob.recv().await;
        assert_eq!(frame["event"], "ack", "{frame}");
        assert_eq!(frame["data"], json!({ "ok": true, "rejected": [] }));
        acked.push(frame["ack"].as_u64().unwrap() - 1000);
    }
    acked.sort();
    assert_eq!(acked, (1..=30).collect::<Vec<_>>());
    // Every mark is answered once durable: by now each message has its one receipt.
    let mut delivered = Vec::new();
    while delivered.len() < 30 {
        let receipts = alice.recv_event("message:delivered").await;
        for receipt in receipts.as_array().unwrap() {
            delivered.push(receipt["messageId"].as_u64().unwrap());
        }
    }
    assert_eq!(delivered, (1..=30).collect::<Vec<_>>());
    alice.expect_silence(QUIET).await;
    let stored = history(&mut alice, "alice-bob").await;
    assert_eq!(stored.len(), 30);
    assert!(stored.iter().all(|m| m["deliveredAt"].is_string()));
}

/// A mark without an ack gets no reply (the server does not wait for its commit), but it
/// is written all the same: the sender hears of it, and it survives `kill -9`.
#[tokio::test]
async fn an_ack_less_mark_notifies_the_sender_and_is_durable() {
    let mut server = Server::start();
    let mut alice = server.connect("alice").await;
    let mut bob = server.connect("bob").await;
    for text in ["a", "b", "c"] {
        send(&mut alice, "alice-bob", text, &mut [&mut bob]).await;
    }
    bob.emit(
        "message:received",
        json!([{ "roomId": "alice-bob", "messageId": 2 }]),
    )
    .await;
    let delivered = alice.recv_event("message:delivered").await;
    let ids: Vec<_> = delivered
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["messageId"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, [1, 2], "{delivered}");
    bob.expect_silence(QUIET).await;

    // The sender heard of it only once it was durable.
    server.kill9();
    server.restart();
    let mut alice = server.connect("alice").await;
    let stored = history(&mut alice, "alice-bob").await;
    let marked: Vec<_> = stored
        .iter()
        .map(|m| (m["id"].as_u64().unwrap(), m["deliveredAt"].is_string()))
        .collect();
    assert_eq!(marked, [(3, false), (2, true), (1, true)]);
    assert_eq!(stored[2]["deliveredAt"], delivered[0]["deliveredAt"]);
}

/// The handler checks a mark against the writer's hints (the room's newest id and the
/// reader's mark as of the last commit) before the store: the answers stay the same. A
/// stale mark is answered without a write, an id past the newest is refused, and a
/// message marked as soon as it arrives is known.
#[tokio::test]
async fn marks_checked_from_the_writers_hints_answer_as_the_store_would() {
    let server = Server::start();
    let mut alice = server.connect("alice").await;
    let mut bob = server.connect("bob").await;
    for text in ["a", "b", "c"] {
        send(&mut alice, "alice-bob", text, &mut [&mut bob]).await;
    }
    let ok = json!({ "ok": true, "rejected": [] });
    let receipt_ids = |receipts: Value| -> Vec<u64> {
        receipts
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["messageId"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(received(&mut bob, "alice-bob", 3).await, ok);
    let receipts = alice.recv_event("message:delivered").await;
    assert_eq!(receipt_ids(receipts), [1, 2, 3]);

    assert_eq!(received(&mut bob, "alice-bob", 2).await, ok);
    alice.expect_silence(QUIET).await;
    let past = received(&mut bob, "alice-bob", 4).await;
    assert_eq!(past["rejected"][0]["code"], "not_found", "{past}");

    send(&mut alice, "alice-bob", "d", &mut [&mut bob]).await;
    assert_eq!(received(&mut bob, "alice-bob", 4).await, ok);
    let receipts = alice.recv_event("message:delivered").await;
    assert_eq!(receipt_ids(receipts), [4]);
    let stored = history(&mut alice, "alice-bob").await;
    assert!(stored.iter().all(|m| m["deliveredAt"].is_string()));
}

#[tokio::test]
async fn received_rejects_bad_items_and_keeps_the_good_ones() {
    let server = Server::start();
    let mut alice = server.connect("alice").await;
    let mut bob = server.connect("bob").await;
    send(&mut alice, "alice-bob", "hi", &mut [&mut bob]).await;
    let reply = bob
        .request(
            "message:received",
            json!([
                { "roomId": "alice-bob", "messageId": 9 },
                { "roomId": "alice-carol", "messageId": 1 },
                { "roomId": "alice-bob", "messageId": 0 },
                { "roomId": "alice-bob", "messageId": 1, "userId": "alice" },
                { "roomId": "alice-bob", "messageId": 1, "userId": "bob" },
            ]),
        )
        .await;
    let codes: Vec<_> = reply["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["index"].as_u64().unwrap(), r["code"].as_str().unwrap()))
        .collect();
    assert_eq!(
        codes,
        [
            (0, "not_found"),
            (1, "forbidden"),
            (2, "bad_request"),
            (3, "forbidden")
        ],
        "{reply}"
    );
    assert_eq!(
        alice.recv_event("message:delivered").await[0]["messageId"],
        1
    );
    for bad in [json!([]), json!({ "roomId": "alice-bob", "messageId": 1 })] {
        let reply = bob.request("message:received", bad).await;
        assert_eq!(reply["error"]["code"], "bad_request", "{reply}");
    }
    // Without an ack, rejected items come back as an `error` event, as for message:read.
    bob.emit(
        "message:received",
        json!([{ "roomId": "alice-bob", "messageId": 5 }]),
    )
    .await;
    let error = bob.recv_event("error").await;
    assert_eq!(error["code"], "not_found", "{error}");
}

#[tokio::test]
async fn a_read_implies_received_and_delivered_comes_before_seen() {
    let server = Server::start();
    let mut alice = server.connect("alice").await;
    let mut bob = server.connect("bob").await;
    send(&mut alice, "alice-bob", "a", &mut [&mut bob]).await;
    send(&mut alice, "alice-bob", "b", &mut [&mut bob]).await;
    let reply = bob
        .request(
            "message:read",
            json!([{ "userId": "bob", "roomId": "alice-bob", "messageId": 2, "seenDate": "2000-01-01T00:00:00Z" }]),
        )
        .await;
    assert_eq!(reply["rejected"], json!([]), "{reply}");
    let delivered = alice.recv_event("message:delivered").await;
    let delivered_ids: Vec<_> = delivered
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["messageId"].as_u64().unwrap())
        .collect();
    assert_eq!(delivered_ids, [1, 2]);
    let seen = alice.recv_event("message:seen").await;
    assert_eq!(seen[0]["messageId"], 2);
    // The snapshot of the next send carries both marks.
    let sent = {
        bob.send_message("alice-bob", "c").await;
        bob.recv_event("message:sent").await
    };
    let second = &sent["messages"][1];
    assert_eq!(second["id"], 2);
    assert!(
        second["deliveredAt"].is_string() && second["seenAt"].is_string(),
        "{second}"
    );
    assert!(sent["messages"][2]["seenAt"].is_null());
}

#[tokio::test]
async fn the_sender_edits_and_deletes_and_both_sides_see_it() {
    let server = Server::start();
    let mut alice = server.connect("alice").await;
    let mut bob = server.connect("bob").await;
    let first = send(&mut alice, "alice-bob", "helo", &mut [&mut bob]).await;
    send(&mut bob, "alice-bob", "hi", &mut [&mut alice]).await;
    assert_eq!(first["id"], 1);

    let reply = edit(&mut alice, "alice-bob", 1, "hello").await;
    assert_eq!(reply["ok"], true, "{reply}");
    let edited = reply["message"].clone();
    assert_eq!(edited["message"], "hello");
    assert!(edited["editedAt"].is_string());
    assert_eq!(edited["sentAt"], first["sentAt"]);
    for c in [&mut alice, &mut bob] {
        let update = c.recv_event("message:updated").await;
        assert_eq!(update, json!({ "roomId": "alice-bob", "message": edited }));
    }
    // The same text again is a no-op: ok, the message as it is, no event.
    assert_eq!(
        edit(&mut alice, "alice-bob", 1, "hello").await["message"],
        edited
    );

    // Refusals change nothing.
    let refusals = [
        (
            edit(&mut bob, "alice-bob", 1, "mine now").await,
            "forbidden",
        ),
        (edit(&mut alice, "alice-bob", 2, "yours").await, "forbidden"),
        (edit(&mut alice, "alice-bob", 7, "x").await, "not_found"),
        (
            edit(&mut alice, "alice-bob", 1, "").await,
            "invalid_message",
        ),
        (
            edit(&mut alice, "alice-bob", 1, &"x".repeat(8193)).await,
            "message_too_large",
        ),
        (edit(&mut alice, "alice-carol", 1, "x").await, "not_found"),
        (edit(&mut alice, "bob-carol", 1, "x").await, "forbidden"),
        (delete(&mut bob, "alice-bob", 1).await, "forbidden"),
        (delete(&mut alice, "alice-bob", 9).await, "not_found"),
        (
            alice
                .request(
                    "message:edit",
                    json!({ "roomId": "alice-bob", "messageId": 0, "message": "x" }),
                )
                .await,
            "bad_request",
        ),
    ];
    for (reply, code) in refusals {
        assert_eq!(reply["error"]["code"], code, "{reply}");
    }
    alice.expect_silence(QUIET).await;
    bob.expect_silence(QUIET).await;

    let reply = delete(&mut alice, "alice-bob", 1).await;
    let tombstone = reply["message"].clone();
    assert_eq!(tombstone["id"], 1);
    assert_eq!(tombstone["userId"], "alice");
    assert_eq!(tombstone["message"], "");
    assert_eq!(tombstone["deleted"], true);
    assert_eq!(tombstone["sentAt"], first["sentAt"]);
    assert!(tombstone["deletedAt"].is_string());
    for c in [&mut alice, &mut bob] {
        let update = c.recv_event("message:updated").await;
        assert_eq!(update["message"], tombstone);
    }
    // A second delete is ok and quiet; an edit of a tombstone is refused.
    assert_eq!(
        delete(&mut alice, "alice-bob", 1).await["message"],
        tombstone
    );
    let reply = edit(&mut alice, "alice-bob", 1, "back").await;
    assert_eq!(reply["error"]["code"], "message_deleted", "{reply}");
    alice.expect_silence(QUIET).await;
    bob.expect_silence(QUIET).await;

    // The latest-50 snapshot and the stored history both show the tombstone.
    bob.send_message("alice-bob", "what?").await;
    let sent = bob.recv_event("message:sent").await;
    assert_eq!(ids(&sent["messages"]), [3, 2, 1]);
    assert_eq!(sent["messages"][2], tombstone);
    assert_eq!(history(&mut alice, "alice-bob").await[2], tombstone);
}

#[tokio::test]
async fn edits_in_the_snapshot_survive_a_cache_miss() {
    // With a tiny cache every send reads its snapshot from the store.
    let server = Server::start_with(&[("CHAT_MEMORY_RECENT_CACHE_BYTES", "1")]);
    let mut alice = server.connect("alice").await;
    send(&mut alice, "alice-bob", "draft", &mut []).await;
    let edited = edit(&mut alice, "alice-bob", 1, "final").await["message"].clone();
    alice.recv_event("message:updated").await;
    alice.send_message("alice-bob", "next").await;
    let sent = alice.recv_event("message:sent").await;
    assert_eq!(sent["messages"][1], edited);
}

#[tokio::test]
async fn edits_close_with_the_window() {
    let server = Server::start_with(&[("CHAT_LIMITS_EDIT_WINDOW_SECS", "1")]);
    let mut alice = server.connect("alice").await;
    send(&mut alice, "alice-bob", "typo", &mut []).await;
    assert_eq!(edit(&mut alice, "alice-bob", 1, "fixed").await["ok"], true);
    alice.recv_event("message:updated").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let late = edit(&mut alice, "alice-bob", 1, "again").await;
    assert_eq!(late["error"]["code"], "edit_window_closed", "{late}");
    // A retry of the edit that went through still answers ok; deleting has no window.
    assert_eq!(edit(&mut alice, "alice-bob", 1, "fixed").await["ok"], true);
    assert_eq!(delete(&mut alice, "alice-bob", 1).await["ok"], true);

    let off = Server::start_with(&[("CHAT_LIMITS_EDIT_WINDOW_SECS", "0")]);
    let mut alice = off.connect("alice").await;
    send(&mut alice, "alice-bob", "typo", &mut []).await;
    let refused = edit(&mut alice, "alice-bob", 1, "fixed").await;
    assert_eq!(refused["error"]["code"], "edit_window_closed", "{refused}");
}

#[tokio::test]
async fn messages_after_an_id_page_forward_over_sockets_and_http() {
    let server = Server::start();
    let mut alice = server.connect("alice").await;
    for i in 0..5 {
        send(&mut alice, "alice-bob", &format!("m{i}"), &mut []).await;
    }
    let reply = alice
        .request(
            "messages",
            json!({ "roomId": "alice-bob", "after": 2, "limit": 2 }),
        )
        .await;
    assert_eq!(ids(&reply["room"]["messages"]), [3, 4]);
    let (status, body) = server
        .get(
            "/api/rooms/alice-bob/messages?after=3",
            Some(&server.token("bob")),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(ids(&body["room"]["messages"]), [4, 5]);
    let both = alice
        .request(
            "messages",
            json!({ "roomId": "alice-bob", "after": 1, "before": 4 }),
        )
        .await;
    assert_eq!(both["error"]["code"], "bad_request");
    let (status, _) = server
        .get(
            "/api/rooms/alice-bob/changes?since=x",
            Some(&server.token("bob")),
        )
        .await;
    assert_eq!(status, 400);
}

/// A client's copy of a room: message id → the message as last heard of.
type Copy = BTreeMap<u64, Value>;

/// Pages through `changes` from `position` into `copy`; returns the new position.
async fn catch_up(client: &mut Client, room: &str, copy: &mut Copy, position: Value) -> Value {
    let mut position = position;
    loop {
        let reply = client
            .request(
                "changes",
                json!({ "roomId": room, "since": position, "limit": 50 }),
            )
            .await;
        assert_eq!(reply["ok"], true, "{reply}");
        for m in reply["room"]["messages"].as_array().unwrap() {
            copy.insert(m["id"].as_u64().unwrap(), m.clone());
        }
        position = reply["position"].clone();
        if reply["more"] == false {
            return position;
        }
    }
}

/// The server's state of a room, read forward with `messages` `after`.
async fn server_state(client: &mut Client, room: &str) -> Copy {
    let mut state = Copy::new();
    let mut after = 0;
    loop {
        let reply = client
            .request("messages", json!({ "roomId": room, "after": after }))
            .await;
        let page = reply["room"]["messages"].as_array().unwrap();
        let Some(last) = page.last() else {
            return state;
        };
        after = last["id"].as_u64().unwrap();
        for m in page {
            state.insert(m["id"].as_u64().unwrap(), m.clone());
        }
    }
}

#[tokio::test]
async fn a_client_back_from_offline_catches_up_to_exactly_the_servers_state() {
    let server = Server::start();
    let mut alice = server.connect("alice").await;
    let mut copy = Copy::new();
    let position = {
        let mut bob = server.connect("bob").await;
        for i in 0..3 {
            send(
                &mut alice,
                "alice-bob",
                &format!("before {i}"),
                &mut [&mut bob],
            )
            .await;
        }
        let position = catch_up(&mut bob, "alice-bob", &mut copy, Value::Null).await;
        assert_eq!(copy.len(), 3);
        position
    };
    // Bob's tab is gone. Meanwhile: 120 messages, 3 edits, 2 deletes, and a read and a
    // delivered mark from bob's other device.
    for i in 0..120 {
        send(&mut alice, "alice-bob", &format!("while away {i}"), &mut []).await;
    }
    for id in [2, 50, 123] {
        assert_eq!(
            edit(&mut alice, "alice-bob", id, "edited").await["ok"],
            true
        );
    }
    for id in [3, 60] {
        assert_eq!(delete(&mut alice, "alice-bob", id).await["ok"], true);
    }
    let mut phone = server.connect("bob").await;
    assert_eq!(
        received(&mut phone, "alice-bob", 100).await["rejected"],
        json!([])
    );
    let read = phone
        .request(
            "message:read",
            json!([{ "userId": "bob", "roomId": "alice-bob", "messageId": 1, "seenDate": "2000-01-01T00:00:00Z" }]),
        )
        .await;
    assert_eq!(read["rejected"], json!([]));

    let mut bob = server.connect("bob").await;
    let next = catch_up(&mut bob, "alice-bob", &mut copy, position.clone()).await;
    let state = server_state(&mut bob, "alice-bob").await;
    assert_eq!(state.len(), 123);
    assert_eq!(copy, state);
    assert!(copy[&1]["seenAt"].is_string());
    assert_eq!(copy[&60]["deleted"], true);
    assert_eq!(copy[&50]["message"], "edited");
    assert!(copy[&100]["deliveredAt"].is_string() && copy[&101].get("deliveredAt").is_none());
    // Nothing more to hear until something changes; HTTP answers the same.
    let quiet = bob
        .request("changes", json!({ "roomId": "alice-bob", "since": next }))
        .await;
    assert_eq!(
        (quiet["room"]["messages"].clone(), quiet["more"].clone()),
        (json!([]), json!(false))
    );
    let path = format!(
        "/api/rooms/alice-bob/changes?since={}&limit=2",
        position.as_str().unwrap()
    );
    let (status, body) = server.get(&path, Some(&server.token("bob"))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["more"], true);
    assert_eq!(body["room"]["messages"].as_array().unwrap().len(), 2);
}
